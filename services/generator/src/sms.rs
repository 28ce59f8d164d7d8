//! The SMS producer (W4): N alerts, each to a random 10-digit number with 1
//! to 100 random characters, published as fast as the window allows.

use rand::{RngExt, distr::Alphanumeric};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary::{
    clock,
    proto::{Record, SmsMessage, record::Payload},
};

/// A random SMS alert.
pub fn message(source: &str, seq: u64) -> Record {
    let mut rng = rand::rng();
    let phone: String = std::iter::once(rng.random_range(b'1'..=b'9') as char)
        .chain((0..9).map(|_| rng.random_range(b'0'..=b'9') as char))
        .collect();
    let len = rng.random_range(1..=100);
    let body: String = (&mut rng)
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    Record {
        source: source.to_owned(),
        seq,
        sent_at: Some(clock::now_timestamp()),
        attributes: Default::default(),
        payload: Some(Payload::Sms(SmsMessage {
            phone_number: phone,
            body,
        })),
    }
}

/// Hands `count` alerts to the publisher.
pub async fn produce(
    source: String,
    count: u64,
    records: mpsc::Sender<Record>,
    shutdown: CancellationToken,
) {
    for seq in 0..count {
        tokio::select! {
            () = shutdown.cancelled() => return,
            sent = records.send(message(&source, seq)) => if sent.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_ten_digits_and_one_to_a_hundred_characters() {
        for seq in 0..2000 {
            let Some(Payload::Sms(sms)) = message("s", seq).payload else {
                panic!("not an SMS")
            };
            assert_eq!(sms.phone_number.len(), 10);
            assert!(sms.phone_number.bytes().all(|b| b.is_ascii_digit()));
            assert!(
                (1..=100).contains(&sms.body.chars().count()),
                "{}",
                sms.body
            );
        }
    }
}
