//! Delivered bytes that hold no record: an ingest server that hands the
//! worker exactly the deliveries a test gives it (a real server passes on
//! what its queue holds, so this is what a corrupt queue message looks
//! like to a parser).

use std::{pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::Stream;
use prost::Message;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming, transport::Server};
use tributary::{
    proto::{
        DeleteGroupRequest, DeleteGroupResponse, ListGroupsRequest, ListGroupsResponse,
        PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse, PullRequest,
        PullResponse, Record, RecordKind,
        ingest_server::{Ingest, IngestServer},
    },
    store::{self, Store},
    wire::Delivery,
};
use tributary_parser::{Tuning, Worker, parsers::raw::Raw};

use super::text;

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Hands out its deliveries on the first Pull stream, then passes on what
/// the worker answers.
struct Handing {
    deliveries: Mutex<Vec<Delivery>>,
    answers: mpsc::Sender<PullRequest>,
}

#[tonic::async_trait]
impl Ingest for Handing {
    type PublishStream = Responses<PublishResponse>;
    type PullStream = Responses<PullResponse>;

    async fn publish(
        &self,
        _: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        Err(Status::unimplemented("a pull-only server"))
    }

    async fn publish_batch(
        &self,
        _: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        Err(Status::unimplemented("a pull-only server"))
    }

    async fn pull(
        &self,
        request: Request<Streaming<PullRequest>>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let mut inbound = request.into_inner();
        let answers = self.answers.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = inbound.next().await {
                if answers.send(request).await.is_err() {
                    return;
                }
            }
        });
        let deliveries = std::mem::take(&mut *self.deliveries.lock().await);
        let first = futures::stream::iter([Ok(PullResponse {
            deliveries,
            refusals: Vec::new(),
        })]);
        // Kept open, as a server's stream is while it has nothing to send.
        Ok(Response::new(Box::pin(
            first.chain(futures::stream::pending()),
        )))
    }

    async fn list_groups(
        &self,
        _: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        Err(Status::unimplemented("a pull-only server"))
    }

    async fn delete_group(
        &self,
        _: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        Err(Status::unimplemented("a pull-only server"))
    }
}

fn delivery(ack_id: &str, attempt: u32, records: Vec<Bytes>) -> Delivery {
    Delivery {
        ack_id: ack_id.into(),
        records,
        attempt,
        max_attempts: 3,
        kind: RecordKind::Text as i32,
        ..Default::default()
    }
}

fn encoded(record: &Record) -> Bytes {
    Bytes::from(record.encode_to_vec())
}

/// A record whose bytes cannot be decoded fails alone: the good records
/// beside it are stored; its delivery is nacked while it has attempts
/// left, and on its last the bytes are dead-lettered as they came, named
/// after the delivery, and the delivery acked.
#[tokio::test]
async fn bytes_that_hold_no_record_are_retried_then_dead_lettered_as_they_came() {
    // A length-delimited field 1 (`source`) that claims 5 bytes and has 1.
    let garbage = Bytes::from_static(&[0x0a, 0x05, b'x']);
    let (answers, mut answered) = mpsc::channel(16);
    let handing = Handing {
        deliveries: Mutex::new(vec![
            delivery(
                "early",
                1,
                vec![
                    encoded(&text(1, "one")),
                    garbage.clone(),
                    encoded(&text(2, "two")),
                ],
            ),
            delivery("last", 3, vec![garbage.clone(), encoded(&text(3, "three"))]),
        ]),
        answers,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        Server::builder()
            .add_service(IngestServer::new(handing))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
    let shutdown = CancellationToken::new();
    let worker = Worker {
        link: tributary::channel::Link::plain(url),
        group: "raw".into(),
        parser: Arc::new(Raw),
        store: store.clone(),
        tuning: Tuning {
            linger: Duration::from_millis(1),
            ..Tuning::default()
        },
    };
    let running = tokio::spawn(worker.run(shutdown.clone()));

    let (mut acks, mut nacks) = (Vec::new(), Vec::new());
    while acks.len() + nacks.len() < 2 {
        let request = tokio::time::timeout(Duration::from_secs(20), answered.recv())
            .await
            .expect("the worker answers both deliveries within 20 s")
            .unwrap();
        acks.extend(request.ack_ids);
        nacks.extend(request.nacks);
    }
    assert_eq!(acks, vec!["last".to_string()]);
    assert_eq!(nacks.len(), 1, "{nacks:?}");
    assert_eq!(nacks[0].ack_id, "early");
    assert!(
        nacks[0].error.contains("cannot be decoded"),
        "{}",
        nacks[0].error
    );

    let rows = store
        .records(&store::RecordFilter {
            parser: Some("raw".into()),
            source: None,
            after_id: 0,
            limit: 10,
        })
        .await
        .unwrap();
    let mut stored: Vec<Record> = rows
        .iter()
        .map(|row| Record::decode(row.body.as_slice()).unwrap())
        .collect();
    stored.sort_by_key(|r| r.seq);
    assert_eq!(
        stored,
        vec![text(1, "one"), text(2, "two"), text(3, "three")],
        "the good records are stored, as delivered"
    );
    let dead = store
        .dead_letters(&store::DeadLetterFilter {
            parser: Some("raw".into()),
            after_id: 0,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].body, garbage.to_vec());
    assert!(
        dead[0].error.contains("cannot be decoded"),
        "{}",
        dead[0].error
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
