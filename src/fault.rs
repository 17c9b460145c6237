//! Test-only fault points: kill the process between two steps of an
//! operation, to prove the steps are crash-safe.
//!
//! `WHATSD_FAULTS=name=arg[,name=arg…]` aborts the process (as a `kill -9`
//! would: no destructors, no flushes) when point `name` is reached for
//! `arg` (e.g. `session.delete.after_wipe=shop-1`). Compiled in debug builds
//! only (the test builds); a release binary has no fault points.

/// The variable that arms fault points.
pub const ENV: &str = "WHATSD_FAULTS";

/// Aborts the process if `name` is armed for `arg`.
#[cfg(debug_assertions)]
pub fn point(name: &str, arg: &str) {
    let Ok(armed) = std::env::var(ENV) else {
        return;
    };
    let hit = armed
        .split(',')
        .filter_map(|entry| entry.split_once('='))
        .any(|(n, a)| n.trim() == name && a.trim() == arg);
    if hit {
        eprintln!("fault point {name} reached for {arg}: aborting");
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str, _arg: &str) {}
