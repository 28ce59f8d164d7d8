//! The OpenAPI document of the REST face, and what it says about methods and
//! bodies.
//!
//! The document is the one `rest_over_grpc` generates from the annotations,
//! with the read API's value ranges ([`crate::ranges`]) and the group-name
//! rule written into its parameters' schemas, so that a client (or
//! schemathesis) sees the bounds the server enforces.
//!
//! The transcoder only knows the routes' own verbs; [`methods_and_bodies`]
//! answers the rest the way HTTP asks: `OPTIONS` gets 204 with `Allow`, any
//! other verb on a known path gets 405 with `Allow`, and a documented body
//! that is missing gets 400 rather than being read as an empty message.

use std::sync::LazyLock;

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body::Body as _;
use serde_json::{Value, json};

use super::{OPENAPI_JSON, OPENAPI_PATH};
use crate::{queue::MAX_GROUP_BYTES, ranges, store::fields};

/// The document served at [`OPENAPI_PATH`].
pub fn document() -> &'static str {
    &DOCUMENT.0
}

struct Document(String, Vec<Operation>);

/// One documented path and what may be done on it.
struct Operation {
    /// `/v1/groups/{group}` split at `/`; `{…}` matches any one segment.
    segments: Vec<String>,
    /// Upper-case verbs, `HEAD` wherever `GET` is.
    methods: Vec<String>,
    /// Verbs whose request body is required.
    bodies: Vec<String>,
}

static DOCUMENT: LazyLock<Document> = LazyLock::new(|| {
    // The generated document is a build output checked by the REST tests;
    // if it ever failed to parse, serving it as generated is still right.
    let Ok(mut doc) = serde_json::from_str::<Value>(OPENAPI_JSON) else {
        return Document(OPENAPI_JSON.to_owned(), Vec::new());
    };
    let mut operations = vec![Operation {
        segments: split(OPENAPI_PATH),
        methods: vec!["GET".into(), "HEAD".into()],
        bodies: Vec::new(),
    }];
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            let mut operation = Operation {
                segments: split(path),
                methods: Vec::new(),
                bodies: Vec::new(),
            };
            for (verb, op) in item.iter_mut() {
                let verb = verb.to_ascii_uppercase();
                if op["requestBody"]["required"] == json!(true) {
                    operation.bodies.push(verb.clone());
                }
                let get = verb == "GET";
                operation.methods.push(verb);
                if get {
                    operation.methods.push("HEAD".into());
                }
                if let Some(parameters) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    parameters.iter_mut().for_each(bound);
                }
            }
            operations.push(operation);
        }
    }
    Document(doc.to_string(), operations)
});

fn split(path: &str) -> Vec<String> {
    path.split('/').map(str::to_owned).collect()
}

/// Writes the range the servers enforce into one parameter's schema.
fn bound(parameter: &mut Value) {
    let name = parameter["name"].as_str().unwrap_or_default().to_owned();
    let in_path = parameter["in"] == json!("path");
    let Some(schema) = parameter.get_mut("schema").and_then(Value::as_object_mut) else {
        return;
    };
    let extra = match name.as_str() {
        "limit" => json!({ "minimum": 0, "maximum": ranges::MAX_LIMIT }),
        "maxBytes" => json!({ "minimum": 0, "maximum": ranges::MAX_MAX_BYTES }),
        "intervalMs" => json!({ "minimum": 0, "maximum": ranges::MAX_INTERVAL_MS }),
        "pollMs" => json!({ "minimum": 0, "maximum": ranges::MAX_POLL_MS }),
        "backlog" => json!({ "minimum": 0, "maximum": ranges::MAX_BACKLOG }),
        "parser" => json!({ "maxLength": MAX_GROUP_BYTES, "pattern": ranges::GROUP_PATTERN }),
        "group" if in_path => json!({
            "minLength": 1,
            "maxLength": MAX_GROUP_BYTES,
            "pattern": "^[A-Za-z0-9_-]+$",
        }),
        "metric" if in_path => json!({ "minLength": 1 }),
        "field" if in_path => json!({
            "minLength": 1,
            "maxLength": fields::MAX_PATH_BYTES,
            "pattern": fields::FIELD_PATTERN,
        }),
        // Empty for no grouping.
        "groupBy" => json!({
            "maxLength": fields::MAX_PATH_BYTES,
            "pattern": format!("^$|{}", fields::FIELD_PATTERN),
        }),
        _ => return,
    };
    if let Value::Object(extra) = extra {
        schema.extend(extra);
    }
}

fn matches(operation: &Operation, path: &str) -> bool {
    let mut given = path.split('/');
    let fits = operation.segments.iter().all(|want| match given.next() {
        Some(segment) if want.starts_with('{') && want.ends_with('}') => !segment.is_empty(),
        Some(segment) => segment == want,
        None => false,
    });
    fits && given.next().is_none()
}

/// `OPTIONS`, verbs a path does not take, and missing bodies (see the
/// module doc); everything else goes on to the transcoder.
pub async fn methods_and_bodies(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let Some(operation) = DOCUMENT.1.iter().find(|op| matches(op, path)) else {
        return next.run(request).await;
    };
    let verb = request.method().as_str();
    let allow = operation.methods.join(", ");
    if request.method() == Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        if let Ok(allow) = HeaderValue::from_str(&format!("{allow}, OPTIONS")) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    }
    if !operation.methods.iter().any(|m| m == verb) {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            tonic::Code::Unimplemented,
            format!("{path} takes {allow}, not {verb}"),
        );
        if let Ok(allow) = HeaderValue::from_str(&allow) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    }
    if operation.bodies.iter().any(|m| m == verb) && request.body().size_hint().exact() == Some(0) {
        return error(
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            format!("{verb} {path} needs a JSON body"),
        );
    }
    next.run(request).await
}

/// The error body every REST refusal has: `{code, message}`.
fn error(status: StatusCode, code: tonic::Code, message: String) -> Response {
    let body = json!({ "code": code as i32, "message": message });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body.to_string()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_states_the_read_ranges() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        let parameters = doc["paths"]["/v1/records"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let limit = parameters.iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["maximum"], json!(ranges::MAX_LIMIT));
        let parser = parameters.iter().find(|p| p["name"] == "parser").unwrap();
        assert_eq!(parser["schema"]["pattern"], json!(ranges::GROUP_PATTERN));
        let group = &doc["paths"]["/v1/groups/{group}"]["delete"]["parameters"][0];
        assert_eq!(group["schema"]["maxLength"], json!(MAX_GROUP_BYTES));
    }

    #[test]
    fn templates_match_one_whole_segment() {
        let op = |path: &str| Operation {
            segments: split(path),
            methods: Vec::new(),
            bodies: Vec::new(),
        };
        assert!(matches(&op("/v1/groups/{group}"), "/v1/groups/raw"));
        assert!(!matches(&op("/v1/groups/{group}"), "/v1/groups/"));
        assert!(!matches(&op("/v1/groups/{group}"), "/v1/groups/raw/x"));
        assert!(!matches(&op("/v1/stats"), "/v1/stats:watch"));
        assert!(matches(&op("/v1/stats:watch"), "/v1/stats:watch"));
    }
}
