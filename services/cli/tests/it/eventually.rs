//! The test support's `eventually`: it returns once its probe holds, and
//! fails naming what it awaited and what it saw last. Both tests run on
//! paused time, so the deadline passes without the test waiting for it.

use std::time::Duration;

use crate::support::{eventually, ready_if};

#[tokio::test(start_paused = true)]
async fn eventually_returns_what_the_probe_answered_once_it_holds() {
    let mut polls = 0;
    let answer = eventually("the third poll", Duration::from_secs(5), async || {
        polls += 1;
        ready_if(polls == 3, polls)
    })
    .await;
    assert_eq!(answer, 3);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "for the impossible; last seen: 41")]
async fn eventually_fails_naming_what_it_awaited_and_the_last_value_seen() {
    let mut polls = 0;
    eventually("the impossible", Duration::from_secs(1), async || {
        polls += 1;
        ready_if(false, 40 + polls.min(1))
    })
    .await;
}
