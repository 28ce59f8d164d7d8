//! The kind of a record (its payload case) and sets of kinds.

use crate::proto::{Record, RecordKind, record::Payload};

/// Every kind a record can have, in enum order.
pub const ALL: [RecordKind; 7] = [
    RecordKind::RandomNumber,
    RecordKind::Probe,
    RecordKind::SensorReading,
    RecordKind::Sms,
    RecordKind::Text,
    RecordKind::Json,
    RecordKind::Blob,
];

/// The kind of a record, or `None` when no payload we know is set.
pub fn of(record: &Record) -> Option<RecordKind> {
    Some(match record.payload.as_ref()? {
        Payload::RandomNumber(_) => RecordKind::RandomNumber,
        Payload::Probe(_) => RecordKind::Probe,
        Payload::SensorReading(_) => RecordKind::SensorReading,
        Payload::Sms(_) => RecordKind::Sms,
        Payload::Text(_) => RecordKind::Text,
        Payload::Json(_) => RecordKind::Json,
        Payload::Blob(_) => RecordKind::Blob,
    })
}

/// A short lowercase name for logs, subjects and table rows.
pub fn name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Unspecified => "unspecified",
        RecordKind::RandomNumber => "random_number",
        RecordKind::Probe => "probe",
        RecordKind::SensorReading => "sensor_reading",
        RecordKind::Sms => "sms",
        RecordKind::Text => "text",
        RecordKind::Json => "json",
        RecordKind::Blob => "blob",
    }
}

/// Parses a name produced by [`name`].
pub fn from_name(name: &str) -> Option<RecordKind> {
    ALL.into_iter().find(|k| self::name(*k) == name)
}

/// A set of kinds, as a bit mask. The empty set is never stored: a
/// subscription to "no kinds" means every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KindSet(u8);

impl KindSet {
    /// Every kind.
    pub const ALL: KindSet = KindSet(0b111_1111);

    /// The set of the given kinds, or every kind when `kinds` is empty.
    /// Unspecified kinds are ignored.
    pub fn of(kinds: impl IntoIterator<Item = RecordKind>) -> Self {
        let bits = kinds
            .into_iter()
            .filter(|k| *k != RecordKind::Unspecified)
            .fold(0u8, |bits, k| bits | bit(k));
        if bits == 0 { Self::ALL } else { KindSet(bits) }
    }

    /// Whether the set holds `kind`.
    pub fn contains(self, kind: RecordKind) -> bool {
        self.0 & bit(kind) != 0
    }

    /// The kinds in the set, in enum order.
    pub fn kinds(self) -> impl Iterator<Item = RecordKind> {
        ALL.into_iter().filter(move |k| self.contains(*k))
    }

    /// The raw bit mask, for persistence.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Rebuilds a set from [`KindSet::bits`].
    pub fn from_bits(bits: u8) -> Self {
        if bits & Self::ALL.0 == 0 {
            Self::ALL
        } else {
            KindSet(bits & Self::ALL.0)
        }
    }
}

fn bit(kind: RecordKind) -> u8 {
    match kind {
        RecordKind::Unspecified => 0,
        other => 1 << (other as i32 - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_set_means_every_kind() {
        assert_eq!(KindSet::of([]), KindSet::ALL);
        assert_eq!(KindSet::of([RecordKind::Unspecified]), KindSet::ALL);
    }

    #[test]
    fn set_holds_exactly_its_kinds() {
        let set = KindSet::of([RecordKind::Text, RecordKind::Probe]);
        assert_eq!(
            set.kinds().collect::<Vec<_>>(),
            vec![RecordKind::Probe, RecordKind::Text]
        );
        assert!(!set.contains(RecordKind::Sms));
        assert_eq!(KindSet::from_bits(set.bits()), set);
    }

    #[test]
    fn names_round_trip() {
        for kind in ALL {
            assert_eq!(from_name(name(kind)), Some(kind));
        }
        assert_eq!(from_name("nonsense"), None);
    }
}
