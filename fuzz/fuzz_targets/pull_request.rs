//! A Pull request from the wire: decoding, the subscription check, and the
//! ack ids it carries. The oracle: every request is either refused with
//! INVALID_ARGUMENT and a reason, or becomes a subscription inside the
//! server's limits, and every ack id parses or is refused cleanly.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tonic::Code;
use tributary::{
    proto::{PullRequest, RecordKind},
    queue::{self, embedded::AckId, jetstream},
};
use tributary_ingest::{Limits, pull};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = PullRequest::decode(data) else {
        return;
    };
    let limits = Limits::default();
    match pull::subscription(&request, &limits) {
        Ok(subscribed) => {
            assert!(queue::check_group(&subscribed.group).is_ok());
            assert!(
                subscribed
                    .kinds
                    .iter()
                    .all(|kind| *kind != RecordKind::Unspecified)
            );
            assert!((1..=limits.max_outstanding_cap).contains(&subscribed.max_outstanding));
            assert!(subscribed.ack_deadline >= Duration::from_millis(100));
        }
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(!status.message().is_empty());
        }
    }
    let ids = request
        .ack_ids
        .iter()
        .chain(&request.extend_ack_ids)
        .chain(request.nacks.iter().map(|nack| &nack.ack_id));
    for id in ids {
        if let Ok(parsed) = AckId::parse(id) {
            assert!(!parsed.group.is_empty());
        }
        let _ = jetstream::reply_parts(id);
        let _ = jetstream::delivered(id);
    }
});
