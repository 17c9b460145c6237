//! Test-only fault points: kill the process between two steps of an
//! operation, to prove the steps are crash-safe, or make one write fail.
//!
//! `WHATSD_FAULTS=name=arg[,name=arg…]` arms them. A [`point`] aborts the
//! process (as a `kill -9` would: no destructors, no flushes) when `name`
//! is reached for `arg` (e.g. `session.delete.after_wipe=shop-1`); a
//! [`fails`] check makes its caller fail instead (e.g.
//! `store.put_record=shop-1:qr`). Compiled in debug builds only (the test
//! builds); a release binary has no fault points.

/// The variable that arms fault points.
pub const ENV: &str = "WHATSD_FAULTS";

#[cfg(debug_assertions)]
fn armed(name: &str, arg: &str) -> bool {
    let Ok(armed) = std::env::var(ENV) else {
        return false;
    };
    armed
        .split(',')
        .filter_map(|entry| entry.split_once('='))
        .any(|(n, a)| n.trim() == name && a.trim() == arg)
}

/// Aborts the process if `name` is armed for `arg`.
#[cfg(debug_assertions)]
pub fn point(name: &str, arg: &str) {
    if armed(name, arg) {
        eprintln!("fault point {name} reached for {arg}: aborting");
        std::process::abort();
    }
}

/// Whether the caller should fail here: `name` is armed for `arg`.
#[cfg(debug_assertions)]
pub fn fails(name: &str, arg: &str) -> bool {
    let hit = armed(name, arg);
    if hit {
        eprintln!("fault {name} injected for {arg}");
    }
    hit
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str, _arg: &str) {}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fails(_name: &str, _arg: &str) -> bool {
    false
}
