//! JSON and blob records end to end, on both store backends: published over
//! gRPC and over REST, stored by `raw`, and read back over both as sent;
//! hostile JSON refused with the path at fault; and `AggregateField`
//! answering the same over both faces. SQLite runs under `tributary up`;
//! PostgreSQL under the distributed services behind Envoy.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::transport::Channel;
use tributary::{
    proto::{
        AggregateFieldRequest, Blob, PublishBatchRequest, Record, ingest_client::IngestClient,
        query_client::QueryClient, record::Payload,
    },
    testkit,
};

use crate::{
    cluster::{Backends, Cluster},
    support::{Mesh, all_records, wait_stored},
};

#[tokio::test]
async fn json_and_blob_records_round_trip_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", "raw"]).await;
    round_trip(&mesh.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_blob_records_round_trip_on_postgres() {
    let backends = Backends::fresh(&testkit::postgres_admin_url()).await;
    let cluster = Cluster::start(backends, 1, 1).await;
    round_trip(&cluster.entry).await;
}

/// Numbers as doubles, so that `7` sent and `7.0` read back compare equal
/// (a JSON payload holds doubles, as proto3's `Struct` does).
fn numbers_as_doubles(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_doubles).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), numbers_as_doubles(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn object(value: Value) -> pbjson_types::Struct {
    serde_json::from_value(value).unwrap()
}

async fn round_trip(url: &str) {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let http = reqwest::Client::builder().http1_only().build().unwrap();

    // Over REST: a JSON record as the README shows it, a blob, one whose
    // field is not a number and one without it.
    let order = json!({"order": 7, "price": 12.5, "tags": ["a", null, true], "at": {"x": -3}});
    let rest_records = json!({"records": [
        {"source": "rest-open", "seq": "0", "json": order},
        {"source": "rest-open", "seq": "1",
         "blob": {"contentType": "image/png", "data": "AAEC/w=="}},
        {"source": "rest-open", "seq": "2", "json": {"price": "n/a", "region": "eu"}},
        {"source": "rest-open", "seq": "3", "json": {"order": 1}},
    ]});
    let response = http
        .post(format!("{url}/v1/records"))
        .json(&rest_records)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["accepted"], 4, "{answer}");

    // Over gRPC: a JSON record and a blob.
    let grpc_records = vec![
        Record {
            source: "grpc-open".into(),
            seq: 0,
            payload: Some(Payload::Json(object(json!({"price": 3, "region": "eu"})))),
            ..Default::default()
        },
        Record {
            source: "grpc-open".into(),
            seq: 1,
            payload: Some(Payload::Blob(Blob {
                content_type: "application/octet-stream".into(),
                data: (0..=255).collect(),
            })),
            ..Default::default()
        },
    ];
    let mut ingest = IngestClient::new(channel.clone());
    let answer = ingest
        .publish_batch(PublishBatchRequest {
            records: grpc_records.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.accepted, answer.rejected), (2, 0), "{answer:?}");

    refuses_hostile_json(url, &http, &mut ingest).await;

    wait_stored(&channel, "raw", 6, Duration::from_secs(60)).await;

    // Read back over gRPC: the payloads as sent.
    let stored = all_records(&channel, "raw").await;
    for sent in &grpc_records {
        let back = stored
            .iter()
            .find(|r| r.source == sent.source && r.seq == sent.seq)
            .unwrap_or_else(|| panic!("{}/{} stored", sent.source, sent.seq));
        assert_eq!(back.payload, sent.payload);
    }

    // Read back over REST: the JSON as sent (numbers as doubles), the blob's
    // bytes as base64.
    let page: Value = http
        .get(format!("{url}/v1/records?parser=raw&source=rest-open"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let records = page["records"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"));
    let by_seq = |seq: &str| {
        records
            .iter()
            .find(|r| r["record"]["seq"].as_str().unwrap_or("0") == seq)
            .map(|r| r["record"].clone())
            .unwrap_or_else(|| panic!("seq {seq} in {page}"))
    };
    assert_eq!(
        numbers_as_doubles(&by_seq("0")["json"]),
        numbers_as_doubles(&order)
    );
    assert_eq!(
        by_seq("1")["blob"],
        json!({"contentType": "image/png", "data": "AAEC/w=="})
    );

    aggregates_over_both_faces(url, &http, &channel).await;
}

/// NaN (gRPC only: JSON cannot spell it), deep nesting and NUL are
/// refused per record, naming the path; the good record beside them is
/// accepted.
async fn refuses_hostile_json(
    url: &str,
    http: &reqwest::Client,
    ingest: &mut IngestClient<Channel>,
) {
    let items: pbjson_types::Value = vec![
        pbjson_types::Value::from(object(json!({"price": 1}))),
        pbjson_types::Value::from(
            [("price".to_owned(), pbjson_types::Value::from(f64::NAN))]
                .into_iter()
                .collect::<pbjson_types::Struct>(),
        ),
    ]
    .into();
    let order: pbjson_types::Struct = [("items".to_owned(), items)].into_iter().collect();
    let nan = Record {
        source: "hostile".into(),
        seq: 0,
        payload: Some(Payload::Json(
            [("order".to_owned(), order.into())].into_iter().collect(),
        )),
        ..Default::default()
    };
    let answer = ingest
        .publish_batch(PublishBatchRequest { records: vec![nan] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.rejected, 1, "{answer:?}");
    let rejection = &answer.rejections[0];
    assert_eq!(rejection.code, tonic::Code::InvalidArgument as i32);
    assert!(
        rejection.reason.contains("order.items[1].price"),
        "{rejection:?}"
    );

    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let batch = json!({"records": [
        {"source": "hostile", "seq": "1", "json": {"deep": deep}},
        {"source": "hostile", "seq": "2", "json": {"k\u{0}": 1}},
        {"source": "hostile", "seq": "3", "blob": {"contentType": "a\nb", "data": ""}},
    ]});
    let answer: Value = http
        .post(format!("{url}/v1/records"))
        .json(&batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["rejected"], 3, "{answer}");
    let reasons: Vec<&str> = answer["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or(""))
        .collect();
    assert!(reasons[0].contains("deeper than 32"), "{answer}");
    assert!(reasons[1].contains("NUL"), "{answer}");
    assert!(reasons[2].contains("content_type"), "{answer}");
}

/// `AggregateField` over the records above: the same answer over gRPC
/// and REST; missing and non-numeric values counted; a bad path refused.
async fn aggregates_over_both_faces(url: &str, http: &reqwest::Client, channel: &Channel) {
    let mut query = QueryClient::new(channel.clone());
    for group_by in ["", "region"] {
        let grpc = query
            .aggregate_field(AggregateFieldRequest {
                parser: "raw".into(),
                field: "price".into(),
                group_by: group_by.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let rest: Value = http
            .get(format!(
                "{url}/v1/parsers/raw/fields/price/aggregate?groupBy={group_by}"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(rest, serde_json::to_value(&grpc).unwrap());
        if group_by.is_empty() {
            // 12.5 and 3; "n/a" is not a number; {"order": 1} has no price.
            let g = &grpc.groups[0];
            assert_eq!(
                (g.count, g.avg, g.min, g.max, g.p50, g.p99),
                (2, 7.75, 3.0, 12.5, 3.0, 12.5)
            );
            assert_eq!((grpc.missing, grpc.non_numeric), (1, 1));
        } else {
            // Only the gRPC record has both a price and a region.
            assert_eq!(grpc.groups.len(), 1, "{grpc:?}");
            assert_eq!(
                (grpc.groups[0].group.as_str(), grpc.groups[0].count),
                ("\"eu\"", 1)
            );
            assert_eq!((grpc.missing, grpc.non_numeric), (2, 1));
        }
    }
    for bad in ["a..b", "a%20b", "$.x"] {
        let response = http
            .get(format!("{url}/v1/parsers/raw/fields/{bad}/aggregate"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    let status = query
        .aggregate_field(AggregateFieldRequest {
            parser: "raw".into(),
            field: "x'; DROP TABLE records; --".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("field"), "{status:?}");
}

/// `tributary send --kind json` publishes orders that `raw` stores and
/// `AggregateField` groups by region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_kind_json_orders_aggregate_by_region() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", "raw"]).await;
    let summary = crate::support::send(&mesh.url(), &["-n", "200", "--kind", "json"]).await;
    assert_eq!(summary["accepted"], 200, "{summary}");
    let channel = mesh.channel().await;
    wait_stored(&channel, "raw", 200, Duration::from_secs(30)).await;
    let answer = QueryClient::new(channel)
        .aggregate_field(AggregateFieldRequest {
            parser: "raw".into(),
            field: "total".into(),
            group_by: "region".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let groups: Vec<(&str, u64)> = answer
        .groups
        .iter()
        .map(|g| (g.group.as_str(), g.count))
        .collect();
    assert_eq!(
        groups,
        [
            ("\"ap\"", 50),
            ("\"eu\"", 50),
            ("\"sa\"", 50),
            ("\"us\"", 50)
        ]
    );
    assert_eq!((answer.missing, answer.non_numeric), (0, 0));
    for group in &answer.groups {
        assert!(group.min >= 1.0 && group.max < 500.0, "{group:?}");
        assert!(
            group.min <= group.p50 && group.p50 <= group.max,
            "{group:?}"
        );
    }
}
