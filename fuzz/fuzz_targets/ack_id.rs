//! Ack ids as a subscriber sends them back, for both queue backends. The
//! oracle: parsing never panics, and an embedded ack id that parses writes
//! back to text that parses to the same id.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::queue::{embedded::AckId, jetstream};

fuzz_target!(|text: &str| {
    if let Ok(id) = AckId::parse(text) {
        assert!(!id.group.is_empty());
        let written = id.to_string();
        assert_eq!(AckId::parse(&written).ok(), Some(id), "{written:?}");
    }
    if let Some((stream, consumer)) = jetstream::reply_parts(text) {
        assert!(text.starts_with("$JS.ACK."));
        assert!(!stream.contains('.') && !consumer.contains('.'));
    }
    let _ = jetstream::delivered(text);
});
