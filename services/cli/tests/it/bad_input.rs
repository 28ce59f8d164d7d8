use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, codegen::http::uri::PathAndQuery};
use tributary::proto::{
    PublishBatchRequest, PublishBatchResponse, PublishRequest, PullRequest, Record, Text,
    ingest_client::IngestClient, record::Payload,
};

use crate::support::{Mesh, stored};

/// A record as a newer producer might send it: field 99 is a payload kind
/// this server has never heard of.
#[derive(Clone, PartialEq, prost::Message)]
struct FutureRecord {
    #[prost(string, tag = "1")]
    source: String,
    #[prost(uint64, tag = "2")]
    seq: u64,
    #[prost(message, optional, tag = "14")]
    text: Option<Text>,
    #[prost(message, optional, tag = "99")]
    hologram: Option<Text>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FutureBatch {
    #[prost(message, repeated, tag = "1")]
    records: Vec<FutureRecord>,
}

fn text(source: &str, seq: u64, body: String) -> Record {
    Record {
        source: source.into(),
        seq,
        payload: Some(Payload::Text(Text { body })),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_records_are_rejected_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let mut grpc = tonic::client::Grpc::new(mesh.channel().await);
    grpc.ready().await.unwrap();
    let batch = FutureBatch {
        records: vec![
            FutureRecord {
                source: "good".into(),
                seq: 0,
                text: Some(Text {
                    body: "fine".into(),
                }),
                hologram: None,
            },
            FutureRecord {
                source: String::new(),
                seq: 1,
                text: Some(Text {
                    body: "who sent me?".into(),
                }),
                hologram: None,
            },
            FutureRecord {
                source: "future".into(),
                seq: 2,
                text: None,
                hologram: Some(Text { body: "3d".into() }),
            },
        ],
    };
    let response: PublishBatchResponse = grpc
        .unary(
            tonic::Request::new(batch),
            PathAndQuery::from_static("/tributary.v1.Ingest/PublishBatch"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect("a batch with bad records still succeeds as a call")
        .into_inner();
    assert_eq!(response.accepted, 1);
    let rejected: Vec<(u32, i32)> = response
        .rejections
        .iter()
        .map(|r| (r.index, r.code))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, Code::InvalidArgument as i32),
            (2, Code::InvalidArgument as i32)
        ]
    );
    assert!(response.rejections[0].reason.contains("source"));
    assert!(response.rejections[1].reason.contains("kind"));
}

#[tokio::test]
async fn oversized_requests_are_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let mut client = IngestClient::new(mesh.channel().await);
    let huge = text("big", 0, "x".repeat(5 << 20));

    let status = client
        .publish_batch(PublishBatchRequest {
            records: vec![huge.clone()],
        })
        .await
        .expect_err("5 MiB is over the 4 MiB request limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let request = PublishRequest {
        batch_id: 0,
        records: vec![huge],
        ..Default::default()
    };
    let mut responses = client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .expect("the stream opens")
        .into_inner();
    let status = responses.message().await.expect_err("the stream fails");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // One record over the per-record limit, in a request under the limit.
    let response = client
        .publish_batch(PublishBatchRequest {
            records: vec![
                text("big", 1, "y".repeat(100 << 10)),
                text("small", 0, "ok".into()),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.accepted, 1);
    assert_eq!(response.rejections[0].code, Code::ResourceExhausted as i32);
}

#[tokio::test]
async fn garbage_on_the_port_does_not_crash_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..65_536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x08\x00\x00\x00\x00\x00\xff\xff\xff\xff"
            .to_vec(),
    ] {
        let mut socket = tokio::net::TcpStream::connect(mesh.addr).await.unwrap();
        let _ = socket.write_all(&garbage).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut sink)).await;
    }
    // Still serving.
    assert_eq!(stored(&mesh.channel().await, "raw").await, 0);
}

#[tokio::test]
async fn a_pull_stream_must_subscribe_first() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let mut client = IngestClient::new(mesh.channel().await);
    let ack_only = PullRequest {
        ack_ids: vec!["1:raw".into()],
        ..Default::default()
    };
    let status = client
        .pull(tokio_stream::iter(vec![ack_only]))
        .await
        .expect_err("no subscription");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("subscribe"), "{status:?}");
}
