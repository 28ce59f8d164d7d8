//! Conversions from store rows to proto messages. Stored bodies are encoded
//! `Record`s; a body that does not decode is reported, not hidden.

use prost::Message;
use tonic::Status;
use tributary::{
    clock,
    proto::{
        Average, DeadLetter, Latency, MetricAggregate, ParserStats, Record, SenderProgress,
        SmsProgress, Stats, StoredRecord,
    },
    store::{AggregateRow, AverageRow, Counts, DeadLetterRow, LatencyRow, SmsRow, StoredRow},
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

pub fn average(row: AverageRow) -> Average {
    Average {
        window_start: Some(clock::from_micros(row.window_start)),
        window_ms: row.window_ms,
        count: row.count,
        sum: row.sum,
        average: row.sum as f64 / row.count.max(1) as f64,
    }
}

pub fn latency(row: LatencyRow, window_micros: i64, now: i64) -> Latency {
    Latency {
        highest_number: row.highest_number.unwrap_or(0),
        stored: row.stored,
        recent: row.recent,
        avg_to_ingest_ms: row.avg_to_ingest_us.unwrap_or(0.0) / 1000.0,
        avg_to_store_ms: row.avg_to_store_us.unwrap_or(0.0) / 1000.0,
        window_ms: (window_micros / 1000) as u32,
        read_at: Some(clock::from_micros(now)),
    }
}

pub fn aggregate(row: AggregateRow) -> MetricAggregate {
    MetricAggregate {
        sensor_id: row.sensor_id,
        count: row.count,
        avg: row.avg,
        min: row.min,
        max: row.max,
        p50: row.p50,
        p95: row.p95,
        p99: row.p99,
        unit: row.unit,
    }
}

/// Per-sender rows and their exact totals (sums of counts and of times).
pub fn sms_progress(rows: Vec<SmsRow>) -> SmsProgress {
    let avg_ms = |total_us: i64, n: u64| {
        if n == 0 {
            0.0
        } else {
            total_us as f64 / n as f64 / 1000.0
        }
    };
    let sent = rows.iter().map(|r| r.sent).sum();
    let failed = rows.iter().map(|r| r.failed).sum();
    let total_us = rows.iter().map(|r| r.total_us).sum();
    SmsProgress {
        sent,
        failed,
        avg_ms: avg_ms(total_us, sent + failed),
        senders: rows
            .into_iter()
            .map(|r| SenderProgress {
                avg_ms: avg_ms(r.total_us, r.sent + r.failed),
                sender: r.sender,
                sent: r.sent,
                failed: r.failed,
            })
            .collect(),
        read_at: Some(clock::now_timestamp()),
    }
}
