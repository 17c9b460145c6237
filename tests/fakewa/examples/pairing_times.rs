//! Measures scan → `Connected` over N QR pairings of fresh whatsapp-rust
//! clients against one in-process fakewa, one pairing at a time, and prints
//! every time plus max and p99. It asserts nothing: it is a measurement.
//!
//! ```sh
//! FAKEWA_PAIRINGS=30 cargo run --offline -p fakewa --example pairing_times
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{InMemoryBackend, init_tracing, start_client};
use fakewa::FakeWa;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    init_tracing();
    let n: usize = std::env::var("FAKEWA_PAIRINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let fake = FakeWa::start().await.expect("fakewa starts");
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let mut client = start_client(&fake.ws_url(), Arc::new(InMemoryBackend::new())).await;
        let qr = client.next_qr().await;
        let scanned = Instant::now();
        fake.server.scan(&qr, None).await.expect("scan accepted");
        client.connected(60).await;
        let took = scanned.elapsed();
        println!(
            "pairing {:>3}: scan -> Connected {:>6} ms",
            i + 1,
            took.as_millis()
        );
        times.push(took);
        client.shutdown().await;
    }
    times.sort();
    let p99 = times[(times.len() * 99).div_ceil(100).saturating_sub(1)];
    let over_5s = times
        .iter()
        .filter(|t| **t > Duration::from_secs(5))
        .count();
    println!(
        "{n} pairings: median {} ms, p99 {} ms, max {} ms, {over_5s} over 5 s",
        times[times.len() / 2].as_millis(),
        p99.as_millis(),
        times.last().map(|t| t.as_millis()).unwrap_or(0),
    );
}
