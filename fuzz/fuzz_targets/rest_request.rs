//! The REST face as `tributary up` serves it: the Query and Ingest routes
//! the transcoder generates, over a real SQLite store and a real embedded
//! queue (in a temporary directory on tmpfs when there is one, so that the
//! queue's syncs cost little). The input picks a method and a route, fills
//! the route's path parameter, and supplies the query string and the JSON
//! body as bytes.
//!
//! The oracle: no request gets a 5xx, and every refusal is the JSON error
//! body `{code, message}` with a message.

#![no_main]

use std::{
    path::PathBuf,
    sync::OnceLock,
    time::Duration,
};

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{Method, Request},
};
use libfuzzer_sys::{arbitrary, fuzz_target};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tributary_api::QueryService;
use tributary_ingest::{IngestService, Limits};

/// Route templates: every annotated route of Query and Ingest, plus a few
/// near misses. `{}` takes the input's path parameter.
const ROUTES: &[&str] = &[
    "/v1/records",
    "/v1/stats",
    "/v1/stats:watch",
    "/v1/dead-letters",
    "/v1/averages",
    "/v1/latency",
    "/v1/metrics/{}/aggregate",
    "/v1/sms/progress",
    "/v1/dashboard:watch",
    "/v1/groups",
    "/v1/groups/{}",
    "/v1/fleet/status",
    "/openapi.json",
    "/v1/{}",
    "/{}",
];

const METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::DELETE,
    Method::HEAD,
    Method::PUT,
    Method::OPTIONS,
];

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    method: u8,
    route: u8,
    param: String,
    query: String,
    json_content_type: bool,
    body: Vec<u8>,
}

struct Served {
    runtime: Runtime,
    router: Router,
    _dir: PathBuf,
}

fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("tributary-fuzz-rest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let router = runtime.block_on(async {
            let shutdown = CancellationToken::new();
            let store = tributary::store::open(&format!("sqlite://{}", dir.join("store.db").display()))
                .await
                .expect("the store opens");
            let queue = tributary::queue::open("embedded", &dir)
                .await
                .expect("the queue opens");
            let query = QueryService::new(store, shutdown.clone());
            let ingest = IngestService::new(queue, Limits::default(), shutdown);
            tributary::rest::router(tributary::rest::Either(
                tributary_api::rest::transcoder(query),
                tributary_ingest::rest(ingest),
            ))
        });
        Served {
            runtime,
            router,
            _dir: dir,
        }
    })
}

fuzz_target!(|input: Input| {
    let served = served();
    let method = METHODS[usize::from(input.method) % METHODS.len()].clone();
    let template = ROUTES[usize::from(input.route) % ROUTES.len()];
    let path = template.replace("{}", &input.param);
    let uri = if input.query.is_empty() {
        path
    } else {
        format!("{path}?{}", input.query)
    };
    let mut request = Request::builder().method(method).uri(uri);
    if input.json_content_type {
        request = request.header("content-type", "application/json");
    }
    // A target that is not a valid URI never reaches the server: hyper
    // refuses it while parsing the request line.
    let Ok(request) = request.body(Body::from(input.body)) else {
        return;
    };
    served.runtime.block_on(async {
        let response = served
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        assert!(!status.is_server_error(), "{status} for {template}");
        // Streams (`:watch`, or many records as NDJSON) may not end: read
        // what comes within a moment, then drop the body, which ends them.
        let body = tokio::time::timeout(
            Duration::from_millis(100),
            to_bytes(response.into_body(), 1 << 20),
        )
        .await;
        if status.is_client_error() {
            let bytes = body
                .expect("an error body comes at once")
                .expect("an error body is small");
            if !bytes.is_empty() {
                let error: serde_json::Value =
                    serde_json::from_slice(&bytes).expect("an error body is JSON");
                assert!(error["code"].is_i64(), "{error}");
                assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
            }
        }
    });
});
