//! Outbound queue benchmark against a real `whatsd serve` process and an
//! in-process fakewa, on loopback.
//!
//! `cargo bench -p whatsd --bench queue` (prints numbers; asserts nothing).
//! `BENCH_QUEUE_N` sets how many sends (default 2,000).
//!
//! 1. Enqueue latency: `N` sends queued one after another while the
//!    session is stopped (each answer means stored and flushed); p50, p99,
//!    max.
//! 2. Queue throughput: the session is started and sends its `N` queued
//!    messages; from the start call until fakewa's contact has all `N`:
//!    sends/s.
//! 3. The ceiling beside it: `N / 4` sends with `?wait=sent` (no queue, one
//!    at a time, as fast as a client can make them): sends/s. The ratio
//!    queue / ceiling says what the queue costs.

#[path = "../tests/common/mod.rs"]
mod common;

mod stats;
use stats::{loadavg as load, percentile};

use std::time::{Duration, Instant};

use common::{ADMIN, Daemon, pair};
use serde_json::json;

const PHONE: &str = "15551260001";
const ADA: &str = "15557800001";

fn delivered(fake: &fakewa::FakeWa) -> usize {
    fake.server
        .outbox(Some(PHONE))
        .iter()
        .filter(|m| m.to.starts_with(ADA))
        .count()
}

async fn send(daemon: &Daemon, path: &str, text: &str) -> u16 {
    daemon
        .post(path, Some(ADMIN), Some(json!({ "to": ADA, "text": text })))
        .await
        .status
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BENCH_QUEUE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    println!("queue bench: {n} sends; load average {}", load());
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    // The default rate limits (20 a minute) would measure the limiter.
    let options = common::Options {
        extra_toml: "[limits]\nsends_per_minute = 1000000\nsends_per_hour = 1000000\nsends_per_day = 1000000\n".into(),
        ..common::Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    pair(&daemon, &fake, "shop-1", None, PHONE).await;
    let stopped = daemon
        .post("/v1/sessions/shop-1/stop", Some(ADMIN), None)
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    daemon.wait_state("shop-1", "stopped", 10).await;

    // 1. Enqueue latency.
    let mut latencies = Vec::with_capacity(n);
    let began = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let status = send(
            &daemon,
            "/v1/sessions/shop-1/messages",
            &format!("queued {i}"),
        )
        .await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 202);
    }
    let enqueue_s = began.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    println!(
        "enqueue: {n} in {enqueue_s:.2} s ({:.0}/s); latency ms p50 {:.2} p99 {:.2} max {:.2}",
        n as f64 / enqueue_s,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0.0)
    );

    // 2. The queue sends them.
    let started = Instant::now();
    let r = daemon
        .post("/v1/sessions/shop-1/start", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(600);
    while delivered(&fake) < n {
        assert!(
            Instant::now() < deadline,
            "the queue did not drain in 10 min"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queue_s = started.elapsed().as_secs_f64();
    let queue_rate = n as f64 / queue_s;
    println!(
        "queue: {n} sent in {queue_s:.2} s from the start call (reconnect included): {queue_rate:.0} sends/s"
    );

    // 3. The ceiling: synchronous sends, no queue.
    let m = (n / 4).max(1);
    let before = delivered(&fake);
    let began = Instant::now();
    for i in 0..m {
        let status = send(
            &daemon,
            "/v1/sessions/shop-1/messages?wait=sent",
            &format!("now {i}"),
        )
        .await;
        assert_eq!(status, 200);
    }
    let sync_s = began.elapsed().as_secs_f64();
    let sync_rate = m as f64 / sync_s;
    assert_eq!(delivered(&fake) - before, m);
    println!("ceiling: {m} sent with ?wait=sent in {sync_s:.2} s: {sync_rate:.0} sends/s");
    println!(
        "ratio queue / ceiling: {:.2}; load average {}",
        queue_rate / sync_rate,
        load()
    );
}
