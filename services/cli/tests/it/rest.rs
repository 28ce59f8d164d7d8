//! The REST face of `tributary up`, over real HTTP/1.1: every annotated
//! method answers as its gRPC method does, server streams arrive as
//! Server-Sent Events and NDJSON, and bad input gets a 4xx JSON error.

use std::{collections::BTreeSet, time::Duration};

use futures::StreamExt;
use serde_json::{Value, json};
use tributary::{
    clock,
    proto::{
        AggregateMetricRequest, GetLatencyRequest, GetSmsProgressRequest, GetStatsRequest,
        ListAveragesRequest, ListDeadLettersRequest, ListRecordsRequest, PublishBatchRequest,
        TailRecordsRequest, WatchStatsRequest, ingest_client::IngestClient,
        query_client::QueryClient,
    },
};

use crate::support::{Mesh, wait_stored};

/// Every parser whose query has a REST route, each in its own group.
const PARSERS: &str =
    r#"raw;average;probe;sensor;{"type":"sms_sender","mean_ms":1,"failure_rate":0.5}"#;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A batch with every payload kind, and one record the server must refuse
/// (no payload).
fn mixed_batch(source: &str) -> Value {
    let now = clock::now_micros();
    let at = |offset_ms: i64| rfc3339(now - offset_ms * 1000);
    let mut records = Vec::new();
    for seq in 0..4u64 {
        records.push(
            json!({"source": source, "seq": seq.to_string(), "sentAt": at(1),
            "randomNumber": {"value": (seq * 100 + 7).to_string(),
                "tick": clock::tick_of(now).to_string()}}),
        );
    }
    for seq in 4..7u64 {
        records.push(
            json!({"source": source, "seq": seq.to_string(), "sentAt": at(300),
            "probe": {"number": (seq - 4).to_string()}}),
        );
    }
    for seq in 7..15u64 {
        records.push(
            json!({"source": source, "seq": seq.to_string(), "sentAt": at(2),
            "sensorReading": {"sensorId": format!("s{}", seq % 2), "metric": "temperature",
                "value": 20.0 + seq as f64 / 4.0, "unit": "C", "measuredAt": at(2)}}),
        );
    }
    for seq in 15..19u64 {
        records.push(
            json!({"source": source, "seq": seq.to_string(), "sentAt": at(1),
            "sms": {"phoneNumber": "+15550100", "body": "hello"}}),
        );
    }
    records.push(
        json!({"source": source, "seq": "19", "attributes": {"k": "v"},
        "text": {"body": "plain"}}),
    );
    records.push(json!({"source": source, "seq": "20"}));
    json!({ "records": records })
}

fn rfc3339(micros: i64) -> String {
    // pbjson-types formats timestamps itself; this round-trips through it.
    serde_json::to_value(clock::from_micros(micros))
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// The canonical proto3 JSON of a gRPC answer, as pbjson writes it.
fn canonical<T: serde::Serialize>(message: &T) -> Value {
    serde_json::to_value(message).unwrap()
}

/// Drops a field both answers carry but that differs between two reads
/// (the time of reading).
fn without(mut value: Value, field: &str) -> Value {
    value.as_object_mut().unwrap().remove(field);
    value
}

struct Rest {
    client: reqwest::Client,
    base: String,
    /// (verb, OpenAPI path) of every route called.
    called: BTreeSet<(String, String)>,
}

impl Rest {
    async fn get(&mut self, route: &str, path_and_query: &str) -> Value {
        self.called.insert(("get".into(), route.into()));
        let response = self
            .client
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .unwrap();
        answer(response, path_and_query).await
    }

    async fn delete(&mut self, route: &str, path: &str) -> reqwest::Response {
        self.called.insert(("delete".into(), route.into()));
        self.client
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn post(&mut self, route: &str, path: &str, body: &Value) -> Value {
        self.called.insert(("post".into(), route.into()));
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        answer(response, path).await
    }
}

async fn answer(response: reqwest::Response, what: &str) -> Value {
    let status = response.status();
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].clone();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{what} answered {status}: {text}");
    assert!(
        content_type
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{what} answered {content_type:?}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_annotated_method_answers_over_rest_as_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", PARSERS]).await;
    let channel = mesh.channel().await;
    let mut rest = Rest {
        client: http(),
        base: mesh.url(),
        called: BTreeSet::new(),
    };

    // Publish over REST: 20 good records of every kind and one refused.
    let batch = mixed_batch("rest-it");
    let first = rest.post("/v1/records", "/v1/records", &batch).await;
    assert_eq!(first["accepted"], 20, "{first}");
    assert_eq!(first["rejections"][0]["index"], 20, "{first}");
    assert_eq!(
        first["rejections"][0]["seq"], "20",
        "uint64 is a JSON string: {first}"
    );
    assert_eq!(first["rejections"][0]["code"], 3, "{first}");

    // The same batch again, over gRPC and over REST: the same answer (every
    // good record a duplicate, the same rejection).
    let request: PublishBatchRequest = serde_json::from_value(batch.clone()).unwrap();
    let grpc = IngestClient::new(channel.clone())
        .publish_batch(request)
        .await
        .unwrap()
        .into_inner();
    let again = rest.post("/v1/records", "/v1/records", &batch).await;
    assert_eq!(again["duplicates"], 20, "{again}");
    assert_eq!(again, canonical(&grpc));

    for (parser, n) in [("raw", 20), ("average", 4), ("probe", 3), ("sensor", 8)] {
        wait_stored(&channel, parser, n, Duration::from_secs(30)).await;
    }
    wait_stored(&channel, "sms_sender", 4, Duration::from_secs(30)).await;

    let mut query = QueryClient::new(channel.clone());

    let grpc = query
        .get_stats(GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let body = rest.get("/v1/stats", "/v1/stats").await;
    assert_eq!(
        without(body.clone(), "readAt"),
        without(canonical(&grpc), "readAt")
    );
    // RFC 3339 in UTC. pbjson-types writes the offset as `+00:00` where the
    // proto3 mapping prefers `Z`; both are RFC 3339 and both parse back.
    let read_at = body["readAt"].as_str().unwrap();
    assert!(
        read_at.ends_with("+00:00") || read_at.ends_with('Z'),
        "RFC 3339 in UTC: {body}"
    );
    assert_eq!(read_at.as_bytes()[10], b'T', "RFC 3339: {body}");
    assert!(
        body["parsers"][0]["stored"].is_string(),
        "uint64 is a JSON string: {body}"
    );

    let grpc = query
        .list_records(ListRecordsRequest {
            parser: "raw".into(),
            limit: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let body = rest
        .get("/v1/records", "/v1/records?parser=raw&limit=7")
        .await;
    assert_eq!(body, canonical(&grpc));
    assert_eq!(body["records"].as_array().unwrap().len(), 7, "{body}");
    assert!(
        body["nextAfterId"].is_string(),
        "int64 is a JSON string: {body}"
    );
    let grpc = query
        .list_records(ListRecordsRequest {
            parser: "raw".into(),
            after_id: grpc.next_after_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let next = body["nextAfterId"].as_str().unwrap();
    let body = rest
        .get(
            "/v1/records",
            &format!("/v1/records?parser=raw&afterId={next}"),
        )
        .await;
    assert_eq!(body, canonical(&grpc));
    assert_eq!(body["records"].as_array().unwrap().len(), 13, "{body}");

    let grpc = query
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let body = rest
        .get("/v1/dead-letters", "/v1/dead-letters?limit=10")
        .await;
    assert_eq!(body, canonical(&grpc));

    let grpc = query
        .list_averages(ListAveragesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let body = rest.get("/v1/averages", "/v1/averages").await;
    assert_eq!(body, canonical(&grpc));
    assert!(
        !grpc.averages.is_empty(),
        "the average parser stored windows"
    );

    let grpc = query
        .get_latency(GetLatencyRequest::default())
        .await
        .unwrap()
        .into_inner();
    let body = rest.get("/v1/latency", "/v1/latency").await;
    assert_eq!(
        without(body.clone(), "readAt"),
        without(canonical(&grpc), "readAt")
    );
    assert_eq!(body["highestNumber"], "2", "{body}");

    for grouped in [false, true] {
        let grpc = query
            .aggregate_metric(AggregateMetricRequest {
                metric: "temperature".into(),
                group_by_sensor: grouped,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let body = rest
            .get(
                "/v1/metrics/{metric}/aggregate",
                &format!("/v1/metrics/temperature/aggregate?groupBySensor={grouped}"),
            )
            .await;
        assert_eq!(body, canonical(&grpc));
        assert_eq!(
            body["metric"], "temperature",
            "the path binds `metric`: {body}"
        );
        assert_eq!(
            body["groups"].as_array().unwrap().len(),
            1 + grouped as usize
        );
    }
    // A time range in the query string, as RFC 3339.
    let from = rfc3339(clock::now_micros() - 3_600_000_000);
    let to = rfc3339(clock::now_micros() + 3_600_000_000);
    let grpc = query
        .aggregate_metric(AggregateMetricRequest {
            metric: "temperature".into(),
            from: Some(serde_json::from_value(json!(from)).unwrap()),
            to: Some(serde_json::from_value(json!(to)).unwrap()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let body = rest
        .get(
            "/v1/metrics/{metric}/aggregate",
            &format!(
                "/v1/metrics/temperature/aggregate?from={}&to={}",
                // `+` in a query string means a space.
                from.replace('+', "%2B"),
                to.replace('+', "%2B")
            ),
        )
        .await;
    assert_eq!(body, canonical(&grpc));
    assert_eq!(body["groups"][0]["count"], "8", "{body}");

    // Field aggregation of JSON records: none were published here, so the
    // answer is empty both ways; tests/it/open_records.rs checks figures.
    let grpc = query
        .aggregate_field(tributary::proto::AggregateFieldRequest {
            parser: "raw".into(),
            field: "order.total".into(),
            group_by: "region".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let body = rest
        .get(
            "/v1/parsers/{parser}/fields/{field}/aggregate",
            "/v1/parsers/raw/fields/order.total/aggregate?groupBy=region",
        )
        .await;
    assert_eq!(body, canonical(&grpc));
    assert_eq!(
        body["field"], "order.total",
        "the path binds `field`: {body}"
    );

    let grpc = query
        .get_sms_progress(GetSmsProgressRequest::default())
        .await
        .unwrap()
        .into_inner();
    let body = rest.get("/v1/sms/progress", "/v1/sms/progress").await;
    assert_eq!(without(body, "readAt"), without(canonical(&grpc), "readAt"));

    // The queue's groups: the same names and kinds both ways (lag and idle
    // time move between two reads). An idle group is deleted over REST,
    // and a second delete is NOT_FOUND both ways.
    let mut ingest = IngestClient::new(channel.clone());
    let subscribe = tributary::proto::PullRequest {
        subscribe: Some(tributary::proto::Subscription {
            parser: "rest-idle".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut pull = ingest
        .pull(futures::stream::iter(vec![subscribe]))
        .await
        .unwrap()
        .into_inner();
    while pull.next().await.is_some() {}
    let grpc = ingest
        .list_groups(tributary::proto::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner();
    let body = rest.get("/v1/groups", "/v1/groups").await;
    let names_and_kinds = |v: &Value| -> Vec<(Value, Value)> {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| (g["name"].clone(), g["kinds"].clone()))
            .collect()
    };
    assert_eq!(names_and_kinds(&body), names_and_kinds(&canonical(&grpc)));
    assert!(
        names_and_kinds(&body)
            .iter()
            .any(|(name, _)| name == "rest-idle"),
        "{body}"
    );
    let deleted = rest
        .delete("/v1/groups/{group}", "/v1/groups/rest-idle")
        .await;
    assert_eq!(deleted.status(), 200);
    let again = rest
        .delete("/v1/groups/{group}", "/v1/groups/rest-idle")
        .await;
    assert_eq!(again.status(), 404);
    let status = ingest
        .delete_group(tributary::proto::DeleteGroupRequest {
            group: "rest-idle".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // The server stream: its first message over SSE equals the first over gRPC.
    let mut stream = query
        .watch_stats(WatchStatsRequest { interval_ms: 100 })
        .await
        .unwrap()
        .into_inner();
    let grpc = stream.next().await.unwrap().unwrap();
    rest.called.insert(("get".into(), "/v1/stats:watch".into()));
    let events = sse_events(
        &rest.client,
        &format!("{}/v1/stats:watch?intervalMs=100", rest.base),
        2,
    )
    .await;
    for event in &events {
        assert_eq!(
            without(event.clone(), "readAt"),
            without(canonical(&grpc), "readAt")
        );
    }

    // The dashboard's stream, as the page reads it: canonical JSON per event.
    rest.called
        .insert(("get".into(), "/v1/dashboard:watch".into()));
    let events = sse_events(
        &rest.client,
        &format!("{}/v1/dashboard:watch?intervalMs=100", rest.base),
        2,
    )
    .await;
    for event in &events {
        assert_eq!(event["sensorWindowMs"], 60_000, "{event}");
        assert_eq!(
            event["fleet"]["state"], "FLEET_REPORT_STATE_NOT_CONFIGURED",
            "{event}"
        );
        let metrics: Vec<&str> = event["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["metric"].as_str().unwrap())
            .collect();
        assert_eq!(metrics, ["temperature", "humidity", "pressure"], "{event}");
        assert!(event["readAt"].is_string(), "{event}");
    }

    // Tailing: the backlog over SSE is the backlog over gRPC, record for
    // record (the tail test follows new records).
    let tail_request = TailRecordsRequest {
        parser: "raw".into(),
        backlog: 3,
        ..Default::default()
    };
    let mut tail = query.tail_records(tail_request).await.unwrap().into_inner();
    let mut grpc = Vec::new();
    for _ in 0..3 {
        grpc.push(canonical(&tail.next().await.unwrap().unwrap()));
    }
    rest.called
        .insert(("get".into(), "/v1/records:tail".into()));
    let events = sse_events(
        &rest.client,
        &format!(
            "{}/v1/records:tail?parser=raw&backlog=3&pollMs=50",
            rest.base
        ),
        3,
    )
    .await;
    assert_eq!(events, grpc);
    assert!(
        events.iter().all(|event| event["parser"] == "raw"),
        "{events:?}"
    );
    // Every route of the OpenAPI document that `up` serves was called.
    let openapi: Value = rest
        .client
        .get(format!("{}/openapi.json", rest.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let documented: BTreeSet<(String, String)> = openapi["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |verb| (verb.clone(), path.clone()))
        })
        .filter(|(_, path)| path != "/v1/fleet/status")
        .collect();
    assert_eq!(
        rest.called, documented,
        "every documented route served by `up` was called"
    );
}

/// The first `n` Server-Sent Events of `url`, as JSON.
async fn sse_events(client: &reqwest::Client, url: &str, n: usize) -> Vec<Value> {
    let response = client
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("an event arrives within 10 s")
            .expect("the stream stays open")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data: String = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if !data.is_empty() {
                events.push(serde_json::from_str(&data).unwrap());
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streams_are_ndjson_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let response = http()
        .get(format!("{}/v1/stats:watch?intervalMs=100", mesh.url()))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while text.matches('\n').count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("a line arrives within 10 s")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    for line in text.lines().take(3) {
        let stats: Value = serde_json::from_str(line).unwrap();
        assert!(stats["readAt"].is_string(), "{line}");
    }
}

/// Bad REST input: each gets a 4xx with a JSON `{code, message}`, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rest_input_gets_a_4xx_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let client = http();
    let base = mesh.url();
    let post = |body: &'static str| {
        client
            .post(format!("{base}/v1/records"))
            .header("content-type", "application/json")
            .body(body)
    };
    let get = |path: &str| client.get(format!("{base}{path}"));
    let cases = [
        ("malformed JSON", post(r#"{"records": [{"#), 400),
        ("not JSON at all", post("records=1"), 400),
        ("wrong type", post(r#"{"records": "none"}"#), 400),
        (
            "wrong nested type",
            post(r#"{"records": [{"seq": "x"}]}"#),
            400,
        ),
        ("unknown field", post(r#"{"recordz": []}"#), 400),
        (
            "unknown nested field",
            post(r#"{"records": [{"sauce": "a"}]}"#),
            400,
        ),
        (
            "bad timestamp",
            post(r#"{"records": [{"source": "a", "sentAt": "yesterday"}]}"#),
            400,
        ),
        ("unknown path", get("/v1/nothing-here"), 404),
        (
            "unknown verb on a known path",
            client.delete(format!("{base}/v1/stats")),
            405,
        ),
        (
            "POST without a body",
            client.post(format!("{base}/v1/records")),
            400,
        ),
        (
            "a group name no queue backend takes",
            get("/v1/records?parser=orders.eu"),
            400,
        ),
        ("missing path parameter", get("/v1/metrics//aggregate"), 404),
        ("missing path segment", get("/v1/metrics/aggregate"), 404),
        (
            "bad boolean in the query",
            get("/v1/metrics/t/aggregate?groupBySensor=maybe"),
            400,
        ),
        (
            "bad query parameter type",
            get("/v1/records?limit=many"),
            400,
        ),
        (
            "negative unsigned query parameter",
            get("/v1/records?limit=-1"),
            400,
        ),
        (
            "query parameter out of range",
            get("/v1/records?limit=5000"),
            400,
        ),
        (
            "unknown query parameter",
            get("/v1/records?colour=blue"),
            400,
        ),
        (
            "bad timestamp in the query",
            get("/v1/metrics/t/aggregate?from=soon"),
            400,
        ),
        (
            "inverted time range",
            get("/v1/metrics/t/aggregate?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z"),
            400,
        ),
    ];
    for (what, request, want) in cases {
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status.as_u16(), want, "{what}: {status} {text}");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: the error body is not JSON ({e}): {text}"));
        assert!(body["code"].is_i64(), "{what}: no numeric code in {text}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: no message in {text}"
        );
    }
}

/// HTTP's answers for verbs: `OPTIONS` lists what a path takes, another
/// verb gets 405 with the same list, and the document states the ranges
/// the server enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_and_wrong_verbs_name_the_verbs_a_path_takes() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let client = http();
    let base = mesh.url();
    let options = client
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/records"))
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    assert_eq!(options.headers()["allow"], "GET, HEAD, POST, OPTIONS");
    let put = client
        .put(format!("{base}/v1/groups/raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);
    assert_eq!(put.headers()["allow"], "DELETE");
    let openapi: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let limit = &openapi["paths"]["/v1/records"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()["schema"];
    assert_eq!(limit["maximum"], 1000, "{limit}");
}
