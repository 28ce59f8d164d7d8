//! A parser written outside the crate, in this one module, and run through
//! the public registry: what `docs/extending.md` shows a team doing.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use prost::Message;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tributary::{
    proto::{Record, RecordKind, Text, record::Payload},
    store::{self, RecordFilter, Store},
};
use tributary_parser::{
    Tuning, Worker,
    parsers::{Outcome, Parser, ParserType, Registry},
};

use crate::{Limits, publish, start_ingest, text};

/// Options of `reverse`: how many times to repeat the reversed text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "one")]
    times: usize,
}

fn one() -> usize {
    1
}

impl ParserType for Config {
    const NAME: &'static str = "reverse";

    fn check(&self) -> Result<(), String> {
        if self.times == 0 {
            return Err("reverse: times must be at least 1".into());
        }
        Ok(())
    }

    fn build(&self) -> Arc<dyn Parser> {
        Arc::new(Reverse { times: self.times })
    }
}

/// Reverses the text of text records.
struct Reverse {
    times: usize,
}

#[async_trait]
impl Parser for Reverse {
    fn kinds(&self) -> Vec<RecordKind> {
        vec![RecordKind::Text]
    }

    async fn process(&self, record: &mut Record) -> Outcome {
        let Some(Payload::Text(text)) = &mut record.payload else {
            return Err("reverse takes only text".into());
        };
        text.body = text
            .body
            .chars()
            .rev()
            .collect::<String>()
            .repeat(self.times);
        Ok(None)
    }
}

#[test]
fn a_registered_type_is_named_checked_and_known() {
    let registry = Registry::builtin().with::<Config>();
    assert!(
        registry.names().contains(&"reverse"),
        "{:?}",
        registry.names()
    );
    let spec = registry.spec(r#"{"type":"reverse","times":2}"#).unwrap();
    assert_eq!(
        (spec.config.type_name(), spec.group.as_str()),
        ("reverse", "reverse")
    );
    let err = registry
        .spec(r#"{"type":"reverse","times":0}"#)
        .unwrap_err();
    assert!(err.contains("times must be at least 1"), "{err}");
    // The built-in registry does not know it, and says which it does know.
    let err = Registry::builtin().spec("reverse").unwrap_err();
    assert!(err.contains("known types: raw"), "{err}");
}

/// The toy parser runs in a real worker against a real ingest server and
/// SQLite store, and what it made is what was stored.
#[tokio::test]
async fn a_registered_parser_runs_in_a_worker() {
    let server = start_ingest(Limits::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
    let spec = Registry::builtin()
        .with::<Config>()
        .spec(r#"{"type":"reverse","group":"mirror"}"#)
        .unwrap();
    publish(&server.url, vec![text(0, "abc"), text(1, "tributary")]).await;
    let shutdown = CancellationToken::new();
    let worker = Worker {
        link: tributary::channel::Link::plain(server.url.clone()),
        group: spec.group.clone(),
        parser: spec.config.build(),
        store: store.clone(),
        tuning: Tuning {
            linger: Duration::from_millis(1),
            ..Tuning::default()
        },
    };
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let filter = RecordFilter {
        parser: Some("mirror".into()),
        limit: 10,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = store.records(&filter).await.unwrap();
        if rows.len() >= 2 {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored only {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let bodies: Vec<String> = rows
        .iter()
        .map(
            |row| match Record::decode(row.body.as_slice()).unwrap().payload {
                Some(Payload::Text(Text { body })) => body,
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(bodies, ["cba", "yratubirt"]);
    shutdown.cancel();
    running.await.unwrap().unwrap();
    server.shutdown.cancel();
}
