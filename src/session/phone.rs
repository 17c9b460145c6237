//! Learning the paired phone number when pairing did not tell us.
//!
//! `PairSuccess` carries it, but a session restored from an older record, or
//! one whose device state was written before the number was known, may
//! connect without it. The number is then polled from the client with
//! exponential backoff until a budget runs out, and the outcome is reported
//! either way: `session.phone` or `phone_unknown`, never silence.

use std::future::Future;
use std::time::{Duration, Instant};

use backoff::Clock;
use backoff::backoff::Backoff;
use backoff::exponential::ExponentialBackoff;

use super::event::Identity;

/// The backoff's clock follows tokio's, so `tokio::time::pause` drives it.
struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// The polling schedule: 250 ms doubling (±25 %) up to 10 s between tries,
/// for `budget` in total.
pub fn schedule(budget: Duration) -> ExponentialBackoff<impl Clock> {
    let mut policy = ExponentialBackoff {
        current_interval: Duration::from_millis(250),
        initial_interval: Duration::from_millis(250),
        randomization_factor: 0.25,
        multiplier: 2.0,
        max_interval: Duration::from_secs(10),
        max_elapsed_time: Some(budget),
        clock: TokioClock,
        start_time: Instant::now(),
    };
    policy.reset();
    policy
}

/// Calls `probe` until it yields an identity with a phone number, sleeping
/// per [`schedule`] in between; `None` once the budget is spent.
pub async fn poll_identity<F, Fut>(budget: Duration, mut probe: F) -> Option<Identity>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<Identity>>,
{
    let mut policy = schedule(budget);
    loop {
        if let Some(identity) = probe().await.filter(|i| !i.phone.is_empty()) {
            return Some(identity);
        }
        let delay = policy.next_backoff()?;
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn known() -> Identity {
        Identity {
            phone: "15551234567".into(),
            jid: "15551234567:2@s.whatsapp.net".into(),
            lid: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn found_on_a_later_try_after_backing_off() {
        let calls = Arc::new(AtomicU32::new(0));
        let started = tokio::time::Instant::now();
        let c = calls.clone();
        let found = poll_identity(Duration::from_secs(60), move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move { (n >= 4).then(known) }
        })
        .await;
        assert_eq!(found, Some(known()));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // Four waits of ~0.25, 0.5, 1, 2 s (±25 %): exponential, not a tight loop.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(2800) && waited <= Duration::from_millis(4700),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_budget_is_spent() {
        let calls = Arc::new(AtomicU32::new(0));
        let started = tokio::time::Instant::now();
        let c = calls.clone();
        let found = poll_identity(Duration::from_secs(60), move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { None }
        })
        .await;
        assert_eq!(found, None);
        // The schedule stops before a wait that would end past the budget:
        // the last one can be up to 12.5 s (10 s + 25 %), so it gives up
        // between 47.5 s and 60 s.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(47_500) && waited <= Duration::from_secs(61),
            "{waited:?}"
        );
        // Capped at 10 s between tries: about a dozen tries, not thousands.
        let n = calls.load(Ordering::SeqCst);
        assert!((8..=16).contains(&n), "{n} tries");
    }

    #[tokio::test(start_paused = true)]
    async fn an_identity_without_a_phone_does_not_count() {
        let found = poll_identity(Duration::from_secs(5), || async {
            Some(Identity {
                phone: String::new(),
                jid: String::new(),
                lid: "1@lid".into(),
            })
        })
        .await;
        assert_eq!(found, None);
    }
}
