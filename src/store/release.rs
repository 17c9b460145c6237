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
//! pool, in a task of the scope the caller gives (the supervisor's, after a
//! session's delete); and every [`PERIOD`] whatever happens
//! ([`periodically`]): traffic alone leaves freed memory in the arenas too,
//! and what a one-off burst freed should not stay with the process. In the
//! soak (200 sessions, 50 messages/s, two hours) one `malloc_trim(0)`
//! (called from gdb) took a daemon from 205 to 146 MiB; under the soak's
//! steady churn it was back at 186 MiB six minutes later.
//!
//! `malloc_trim` cannot return a page that still holds a chunk in use, and
//! glibc's per-thread cache (tcache) keeps up to 7 freed chunks of each
//! small size per thread as in use: after a burst, the tokio workers'
//! caches hold chunks of the deleted sessions spread over hundreds of
//! otherwise free pages (~4.5 MB in the churn bench). The binary therefore
//! runs with that cache off, and with one arena per core instead of eight
//! ([`allocator_settings`], set through [`restart_with_allocator_settings`]:
//! glibc reads them only at start-up).

use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crate::task::TaskScope;

/// Quiet time after a removal before the memory is given back: the
/// stopped client's last tasks and the actor's own state are freed by then.
pub const SETTLE: Duration = Duration::from_secs(1);

/// How often [`periodically`] gives free memory back.
pub const PERIOD: Duration = Duration::from_secs(10 * 60);

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
/// The wait runs in `scope` (cancelled with it) and holds no reference to
/// the store: a store dropped meanwhile closes its database (and frees it
/// all) as if nothing were scheduled.
pub fn session_removed(store: &super::Store, scope: &TaskScope) {
    let store = Arc::downgrade(&store.inner);
    RELEASER.schedule(scope, move || release_now(&store));
}

/// Gives free memory back every [`PERIOD`], as after a removal (sled's
/// deferred frees drained, then the hook), on the blocking pool, for as
/// long as the calling task runs. Holds no reference to the store.
pub async fn periodically(store: super::Store) {
    let store = Arc::downgrade(&store.inner);
    every(PERIOD, move || release_now(&store)).await;
}

/// One release, blocking: sled's deferred frees drained (if the store is
/// still open), then the hook (if one is installed).
fn release_now(store: &Weak<super::Inner>) {
    if let Some(inner) = store.upgrade() {
        drain_deferred_frees(&inner.records);
    }
    if let Some(release) = HOOK.get() {
        release();
    }
}

/// Runs `release` on the blocking pool every `period`, the first time one
/// period from now.
async fn every(period: Duration, release: impl Fn() + Clone + Send + 'static) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let release = release.clone();
        let _ = tokio::task::spawn_blocking(release).await;
    }
}

/// The glibc tunables whatsd runs with on `cores` cores, each unless the
/// environment sets it already (the operator's choice wins):
///
/// - `tcache_count=0`: no per-thread cache of freed chunks, so that freed
///   memory is in the arenas where `malloc_trim` finds it (see the module
///   docs);
/// - `arena_max=<cores>`: one arena per core instead of glibc's eight. A
///   thread that finds the arenas busy gets a new one while there are fewer
///   than the maximum, and a chunk freed in one arena is reused only by
///   that arena's threads: spread over up to 16 arenas on two cores (tokio
///   workers, the blocking pool's threads that come and go, sled's own),
///   the soak's daemon grew ~1.5 MiB a minute in the first hour with its
///   live heap flat (heaptrack: 87-97 MiB over two hours), and ~6 in the
///   second; with two arenas it sat 7-15 MiB lower through the first hour
///   and grew ~21 MiB in the second instead of ~100 (BENCHMARKS.md, "Sixth
///   run", "Seventh run").
pub fn allocator_settings(cores: usize) -> [(&'static str, String); 2] {
    [
        ("glibc.malloc.tcache_count", "0".to_owned()),
        ("glibc.malloc.arena_max", cores.max(1).to_string()),
    ]
}

/// The `GLIBC_TUNABLES` value to start the process with for
/// [`allocator_settings`], given the current one: the current settings,
/// then each of ours it does not set; `None` when it sets them all already.
pub fn glibc_tunables(current: Option<&OsStr>, cores: usize) -> Option<OsString> {
    let current = current.map(OsStr::to_string_lossy).unwrap_or_default();
    let mut settings: Vec<String> = current
        .split(':')
        .filter(|setting| !setting.is_empty())
        .map(str::to_owned)
        .collect();
    let set = |name: &str| {
        settings
            .iter()
            .any(|setting| setting.split_once('=').is_some_and(|(n, _)| n == name))
    };
    let missing: Vec<String> = allocator_settings(cores)
        .iter()
        .filter(|(name, _)| !set(name))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    if missing.is_empty() {
        return None;
    }
    settings.extend(missing);
    Some(settings.join(":").into())
}

/// Runs this program again, in this process (same pid, arguments and
/// environment), with [`allocator_settings`] in effect, unless it is already
/// (see [`glibc_tunables`]). Call it first thing, before any thread or file
/// is opened. Returns only when it did not restart: `Some` error when the
/// exec failed (the program goes on with glibc's defaults).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn restart_with_allocator_settings() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let tunables = glibc_tunables(std::env::var_os("GLIBC_TUNABLES").as_deref(), cores)?;
    let mut args = std::env::args_os();
    // The binary's own path, not `/proc/self/exe`: the kernel names the
    // process after the file it runs (`comm`, what `ps`, `top`, `pidof`
    // and the journal's `_COMM` show), and that link's name is `exe`.
    let program = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut command = std::process::Command::new(program);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    Some(command.args(args).env("GLIBC_TUNABLES", tunables).exec())
}

/// Other platforms: nothing to set.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn restart_with_allocator_settings() -> Option<std::io::Error> {
    None
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

    /// A task of `scope` that ends itself after [`SETTLE`] and one release.
    fn schedule(&'static self, scope: &TaskScope, release: impl FnOnce() + Send + 'static) {
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        scope.spawn_until_cancelled(async move {
            // Dropped after the wait, or when the scope is cancelled during
            // it: requests from then on schedule the next release.
            let pending = Pending(&self.pending);
            tokio::time::sleep(SETTLE).await;
            drop(pending);
            let _ = tokio::task::spawn_blocking(release).await;
        });
    }
}

/// Clears the pending mark when dropped.
struct Pending(&'static AtomicBool);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
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

    #[test]
    fn our_settings_are_added_once_and_never_over_the_operators() {
        let ours = "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=2";
        assert_eq!(glibc_tunables(None, 2), Some(ours.into()));
        assert_eq!(glibc_tunables(Some(OsStr::new("")), 2), Some(ours.into()));
        // One arena per core, at least one.
        assert_eq!(
            glibc_tunables(None, 16),
            Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=16".into())
        );
        assert_eq!(
            glibc_tunables(None, 0),
            Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1".into())
        );
        // The operator's own settings stay, first; ours fill what they leave.
        assert_eq!(
            glibc_tunables(Some(OsStr::new("glibc.malloc.arena_max=4")), 2),
            Some("glibc.malloc.arena_max=4:glibc.malloc.tcache_count=0".into())
        );
        assert_eq!(
            glibc_tunables(
                Some(OsStr::new(
                    "glibc.malloc.tcache_count=7:glibc.malloc.trim_threshold=65536"
                )),
                2
            ),
            Some(
                "glibc.malloc.tcache_count=7:glibc.malloc.trim_threshold=65536:\
                 glibc.malloc.arena_max=2"
                    .into()
            )
        );
        // What the restart sets is complete: no second restart.
        let restarted = glibc_tunables(None, 2).unwrap();
        assert_eq!(glibc_tunables(Some(&restarted), 2), None);
        assert_eq!(
            glibc_tunables(
                Some(OsStr::new(
                    "glibc.malloc.arena_max=1:glibc.malloc.tcache_count=7"
                )),
                2
            ),
            None
        );
        // A name that only starts like ours is not ours.
        assert_eq!(
            glibc_tunables(
                Some(OsStr::new(
                    "glibc.malloc.arena_max_x=1:glibc.malloc.tcache_count=0"
                )),
                2
            ),
            Some(
                "glibc.malloc.arena_max_x=1:glibc.malloc.tcache_count=0:glibc.malloc.arena_max=2"
                    .into()
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn releases_every_period_also_without_removals() {
        static RELEASES: AtomicUsize = AtomicUsize::new(0);
        let task = tokio::spawn(every(PERIOD, || {
            RELEASES.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(PERIOD / 2).await;
        assert_eq!(RELEASES.load(Ordering::SeqCst), 0, "not before a period");
        let deadline = tokio::time::Instant::now() + PERIOD * 10;
        while RELEASES.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(RELEASES.load(Ordering::SeqCst) >= 2, "one release a period");
        task.abort();
    }

    #[tokio::test]
    async fn a_burst_of_removals_releases_once_after_settling() {
        let scope = TaskScope::root();
        static RELEASER: Releaser = Releaser::new();
        for _ in 0..50 {
            RELEASER.schedule(&scope, count);
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 0, "not before settling");
        let deadline = tokio::time::Instant::now() + SETTLE * 10;
        while CALLS.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 1, "one release for the burst");
        // A later removal gets its own release.
        RELEASER.schedule(&scope, count);
        let deadline = tokio::time::Instant::now() + SETTLE * 10;
        while CALLS.load(Ordering::SeqCst) == 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 2);
    }
}
