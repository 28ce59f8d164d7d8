//! Conversions from store rows to proto messages. Stored bodies are encoded
//! `Record`s; a body that does not decode is reported, not hidden.

use prost::Message;
use tonic::Status;
use tributary::{
    clock,
    proto::{DeadLetter, ParserStats, Record, Stats, StoredRecord},
    store::{Counts, DeadLetterRow, StoredRow},
};

fn decode(body: &[u8], what: &str) -> Result<Record, Status> {
    Record::decode(body).map_err(|e| {
        tracing::error!(error = %e, what, "stored body does not decode");
        Status::data_loss(format!("a stored {what} is corrupt"))
    })
}

pub fn stats(counts: Counts) -> Stats {
    Stats {
        parsers: counts
            .parsers
            .into_iter()
            .map(|(parser, stored)| ParserStats { parser, stored })
            .collect(),
        dead_letters: counts.dead_letters,
        read_at: Some(clock::now_timestamp()),
    }
}

pub fn stored_record(row: StoredRow) -> Result<StoredRecord, Status> {
    Ok(StoredRecord {
        id: row.id,
        record: Some(decode(&row.body, "record")?),
        parser: row.parser,
        received_at: Some(clock::from_micros(row.received_at)),
        stored_at: Some(clock::from_micros(row.stored_at)),
    })
}

pub fn dead_letter(row: DeadLetterRow) -> Result<DeadLetter, Status> {
    Ok(DeadLetter {
        record: Some(decode(&row.body, "dead letter")?),
        parser: row.parser,
        error: row.error,
        attempts: row.attempts,
        dead_at: Some(clock::from_micros(row.dead_at)),
    })
}
