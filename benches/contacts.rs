//! The contacts directory at 100,000 people (issue 17): how long one page
//! of the list takes (p50/p99 over every page of a full walk, at the API's
//! default page of 100) and how fast the whole directory is read for the
//! CSV export, on the store directly (the HTTP handlers add one
//! `spawn_blocking` and the JSON or CSV text around these calls).
//!
//! `cargo bench --profile dev --bench contacts`; `BENCH_CONTACTS_N` sets
//! the size (default 100,000). Prints numbers, asserts nothing.

mod stats;

use std::time::Instant;

use stats::percentile;
use whatsd::session::contacts::{self, Seen};
use whatsd::store::{MasterKey, Store};

fn main() {
    let n: usize = std::env::var("BENCH_CONTACTS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &MasterKey::from_bytes([9; 32])).expect("store");
    let prefix = [42u8; 32];

    // Half seen by phone and LID, a quarter by phone only, a quarter by LID
    // only; one in ten in a group.
    let started = Instant::now();
    let seen: Vec<Seen> = (0..n)
        .map(|i| {
            let phone = if i % 4 == 3 {
                String::new()
            } else {
                format!("1555{i:07}")
            };
            let lid = if i % 4 == 2 {
                String::new()
            } else {
                format!("{}@lid", 100_000_000_000_000u64 + i as u64)
            };
            let group = (i % 10 == 0).then_some("120363000000000001@g.us");
            Seen::sender(
                &phone,
                &lid,
                &format!("Person {i}"),
                group,
                1_700_000_000_000,
            )
        })
        .collect();
    for chunk in seen.chunks(1000) {
        contacts::note(&store, &prefix, chunk).expect("note");
    }
    let fill = started.elapsed();
    println!(
        "filled {n} people in {:.1} s ({:.0} sightings/s)",
        fill.as_secs_f64(),
        n as f64 / fill.as_secs_f64()
    );

    // Every page of a walk at the default page size.
    let mut times = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    let mut people = 0;
    loop {
        let t = Instant::now();
        let (page, next) =
            contacts::page(&store, &prefix, None, after.as_deref(), 100).expect("page");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        people += page.len();
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "list, 100 a page: {} pages, {people} people; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        percentile(&times, 100.0)
    );

    // A filtered page: the filter reads rows until it has a page.
    let t = Instant::now();
    let (found, _) = contacts::page(&store, &prefix, Some("person 9999"), None, 100).expect("page");
    println!(
        "list, q=\"person 9999\" (scans the directory): {} found in {:.1} ms",
        found.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );

    // The export reads everything, 1,000 at a time.
    let t = Instant::now();
    let mut after: Option<Vec<u8>> = None;
    let mut exported = 0;
    loop {
        let (page, next) =
            contacts::page(&store, &prefix, None, after.as_deref(), 1000).expect("page");
        exported += page.len();
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "export read: {exported} people in {:.2} s ({:.0} people/s)",
        secs,
        exported as f64 / secs
    );
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
