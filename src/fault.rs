//! Test-only fault points: kill the process between two steps of an
//! operation, to prove the steps are crash-safe, or make one write fail.
//!
//! `WHATSD_FAULTS=name=arg[,name=arg…]` arms them. A [`point`] aborts the
//! process (as a `kill -9` would: no destructors, no flushes) when `name`
//! is reached for `arg` (e.g. `session.delete.after_wipe=shop-1`); a
//! [`fails`] check makes its caller fail instead (e.g.
//! `store.put_record=shop-1:qr`); a [`stall`] holds its caller while a
//! file exists (e.g. `store.gate=/tmp/x/stuck`: every holder of the store's
//! gate hangs while `/tmp/x/stuck` exists); a [`skew_ms`] moves a clock by
//! the milliseconds written in a file (e.g.
//! `limits.clock_skew_file=/tmp/x/skew` for the rate limits' clock). Compiled in debug builds only
//! (the test builds); a release binary has no fault points.

/// The variable that arms fault points.
pub const ENV: &str = "WHATSD_FAULTS";

/// The armed (name, argument) pairs, read once per process: the test
/// harness sets the variable when it spawns the daemon.
#[cfg(debug_assertions)]
fn armed_points() -> &'static [(String, String)] {
    static ARMED: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(ENV)
            .unwrap_or_default()
            .split(',')
            .filter_map(|entry| entry.split_once('='))
            .map(|(n, a)| (n.trim().to_owned(), a.trim().to_owned()))
            .collect()
    })
}

/// The arguments `name` is armed for.
#[cfg(debug_assertions)]
fn armed_for(name: &str) -> impl Iterator<Item = &'static str> {
    armed_points()
        .iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, a)| a.as_str())
}

#[cfg(debug_assertions)]
fn armed(name: &str, arg: &str) -> bool {
    armed_for(name).any(|a| a == arg)
}

/// Aborts the process if `name` is armed for `arg`.
#[cfg(debug_assertions)]
pub fn point(name: &str, arg: &str) {
    if armed(name, arg) {
        eprintln!("fault point {name} reached for {arg}: aborting");
        std::process::abort();
    }
}

/// Whether the caller should fail here: `name` is armed for `arg`
/// (`format_args!`, formatted only when `name` is armed at all).
#[cfg(debug_assertions)]
pub fn fails(name: &str, arg: std::fmt::Arguments<'_>) -> bool {
    if armed_for(name).next().is_none() {
        return false;
    }
    let arg = arg.to_string();
    let hit = armed(name, &arg);
    if hit {
        eprintln!("fault {name} injected for {arg}");
    }
    hit
}

/// Blocks the calling thread while the file named by `name`'s argument
/// exists. The variable is read once per process: a stall point sits on
/// hot paths.
#[cfg(debug_assertions)]
pub fn stall(name: &str) {
    for path in armed_for(name).map(std::path::Path::new) {
        let mut said = false;
        while path.exists() {
            if !said {
                eprintln!("fault {name} stalling while {} exists", path.display());
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Milliseconds to add to a clock: the number written in the file named
/// by `name`'s argument (0 when unarmed, absent or unreadable). Read at
/// every call, so a test moves the clock by rewriting the file.
#[cfg(debug_assertions)]
pub fn skew_ms(name: &str) -> i64 {
    armed_for(name)
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .filter_map(|text| text.trim().parse::<i64>().ok())
        .sum()
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn skew_ms(_name: &str) -> i64 {
    0
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn stall(_name: &str) {}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str, _arg: &str) {}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fails(_name: &str, _arg: std::fmt::Arguments<'_>) -> bool {
    false
}
