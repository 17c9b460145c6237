//! Gives memory that removed sessions freed back to the system.
//!
//! A session that showed a QR code and was deleted frees what it
//! allocated in two steps that do not happen by themselves once the daemon
//! goes quiet (the churn benchmark, 200 sessions × 3 rounds, see
//! BENCHMARKS.md):
//!
//! - sled frees the pages of dropped trees and every replaced page version
//!   through crossbeam-epoch: the frees wait in a global queue that is
//!   worked off only 8 bags at a time on every 128th sled operation of a
//!   thread. After a burst of deletes that queue holds megabytes until
//!   later traffic drains it; [`DRAIN_PINS`] cheap reads drain it now.
//! - glibc keeps freed pages in the arenas of the threads that used them
//!   (~18 MB in the two tokio workers' arenas after 200 QR sessions).
//!   Only `malloc_trim` hands them back, and this library forbids `unsafe`:
//!   the binary installs that call ([`set_hook`]).
//!
//! Both run once removals have settled, once per burst, on the blocking
//! pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Quiet time after a removal before the memory is given back: the
/// stopped client's last tasks and the actor's own state are freed by then.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Reads that drive sled's deferred frees: every 128th operation of a
/// thread frees up to 8 × 64 retired objects, so this drains ~130,000
/// (the churn bench: 16 times as many free nothing more).
pub const DRAIN_PINS: usize = 32 * 1024;

static HOOK: OnceLock<fn()> = OnceLock::new();
static RELEASER: Releaser = Releaser::new();

/// Installs the function that returns free memory to the system (e.g.
/// glibc's `malloc_trim(0)`). The first one wins; returns whether it was
/// this one.
pub fn set_hook(release: fn()) -> bool {
    HOOK.set(release).is_ok()
}

/// A session's data is gone: schedules one release [`SETTLE`] from now,
/// unless one is already waiting (it covers this removal too): sled's
/// deferred frees are drained, then the hook runs if one is installed.
/// Needs a tokio runtime; without one, does nothing.
///
/// The wait holds no reference to the store: a store dropped meanwhile
/// closes its database (and frees it all) as if nothing were scheduled.
pub(crate) fn session_removed(store: &super::Store) {
    let store = Arc::downgrade(&store.inner);
    RELEASER.schedule(move || {
        if let Some(inner) = store.upgrade() {
            drain_deferred_frees(&inner.records);
        }
        if let Some(release) = HOOK.get() {
            release();
        }
    });
}

/// Pins sled's epoch [`DRAIN_PINS`] times (reads of a key that does not
/// exist), which runs the collection of retired pages.
fn drain_deferred_frees(tree: &sled::Tree) {
    for _ in 0..DRAIN_PINS {
        if tree.get([]).is_err() {
            return;
        }
    }
}

/// Coalesces the requests of a burst into one release.
struct Releaser {
    /// A release is scheduled and has not started yet.
    pending: AtomicBool,
}

impl Releaser {
    const fn new() -> Self {
        Self {
            pending: AtomicBool::new(false),
        }
    }

    /// A spawned task that ends itself after [`SETTLE`] and one release
    /// (not in a task scope: the store has none).
    fn schedule(&'static self, release: impl FnOnce() + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(async move {
            tokio::time::sleep(SETTLE).await;
            // Requests from now on schedule the next release.
            self.pending.store(false, Ordering::Release);
            let _ = tokio::task::spawn_blocking(release).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn count() {
        CALLS.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn a_burst_of_removals_releases_once_after_settling() {
        static RELEASER: Releaser = Releaser::new();
        for _ in 0..50 {
            RELEASER.schedule(count);
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 0, "not before settling");
        let deadline = tokio::time::Instant::now() + SETTLE * 10;
        while CALLS.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 1, "one release for the burst");
        // A later removal gets its own release.
        RELEASER.schedule(count);
        let deadline = tokio::time::Instant::now() + SETTLE * 10;
        while CALLS.load(Ordering::SeqCst) == 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 2);
    }
}
