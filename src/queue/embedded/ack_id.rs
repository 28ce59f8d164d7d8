//! The embedded queue's ack ids: `STORE:ID:GROUP`, where STORE is the queue
//! file's random id in hex, ID the message id in decimal and GROUP the
//! consumer group the delivery was made to (it may itself hold `:`).
//!
//! An ack id comes back from a subscriber, so [`AckId::parse`] takes any
//! string and answers a clear error for anything that is not one; it is a
//! fuzz target (`fuzz/fuzz_targets/ack_id.rs`).

use std::fmt;

use crate::queue::QueueError;

/// A parsed ack id; it borrows the group from the text it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckId<'a> {
    /// The id of the queue file that made the delivery.
    pub store: u64,
    /// The message id.
    pub id: u64,
    /// The consumer group the delivery was made to; never empty.
    pub group: &'a str,
}

impl<'a> AckId<'a> {
    /// Splits `STORE:ID:GROUP`. Anything else is [`QueueError::Invalid`],
    /// quoting at most 80 characters of the text.
    pub fn parse(text: &'a str) -> Result<Self, QueueError> {
        let mut parts = text.splitn(3, ':');
        let store = parts.next().and_then(|s| u64::from_str_radix(s, 16).ok());
        let id = parts.next().and_then(|s| s.parse::<u64>().ok());
        match (store, id, parts.next()) {
            (Some(store), Some(id), Some(group)) if !group.is_empty() => {
                Ok(Self { store, id, group })
            }
            _ => Err(QueueError::Invalid(format!(
                "malformed ack id {:?}",
                text.chars().take(80).collect::<String>()
            ))),
        }
    }
}

impl fmt::Display for AckId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}:{}:{}", self.store, self.id, self.group)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_ack_id_names_its_store_message_and_group() {
        let id = AckId::parse("00000000000000ff:42:sms:sender").unwrap();
        assert_eq!((id.store, id.id, id.group), (255, 42, "sms:sender"));
        for bad in [
            "", "ff", "ff:1", "ff:1:", "zz:1:g", "ff:-1:g", "ff:x:g", ":1:g",
        ] {
            assert!(
                matches!(AckId::parse(bad), Err(QueueError::Invalid(_))),
                "{bad:?} was taken"
            );
        }
    }

    proptest! {
        /// What the queue writes parses back to itself.
        #[test]
        fn written_ids_parse_back(store: u64, id: u64, group in ".+") {
            let written = AckId { store, id, group: &group }.to_string();
            prop_assert_eq!(AckId::parse(&written).unwrap(), AckId { store, id, group: &group });
        }

        /// Any text either fails cleanly or parses to an id whose written
        /// form parses to the same id.
        #[test]
        fn any_text_parses_or_fails_cleanly(text in "\\PC*") {
            if let Ok(id) = AckId::parse(&text) {
                let written = id.to_string();
                prop_assert_eq!(AckId::parse(&written).unwrap(), id);
            }
        }
    }
}
