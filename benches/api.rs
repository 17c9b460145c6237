//! API benchmark against a real `whatsd serve` process and an in-process
//! fakewa, on loopback.
//!
//! `cargo bench -p whatsd --bench api` (prints numbers; asserts nothing).
//!
//! 1. QR latency: from fakewa sending `pair-device` to a WebSocket client
//!    receiving `session.qr`, over `QR_SESSIONS` sessions started one after
//!    another. fakewa stamps each QR ref with its wall-clock send time in
//!    milliseconds (`2@fakewa<conn><index><ms>`); the client stamps the
//!    frame when it reads it. Both clocks are this machine's.
//! 2. REST throughput: `GET /v1/sessions/{id}` over `CONNECTIONS` keep-alive
//!    connections for `RUN_FOR`; requests/s and latency percentiles. The
//!    load generator shares the two cores with the daemon.

#[path = "../tests/common/mod.rs"]
mod common;

mod stats;
use stats::percentile;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{ADMIN, Daemon, next_json, ws_connect};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const QR_SESSIONS: usize = 200;
const CONNECTIONS: usize = 16;
const RUN_FOR: Duration = Duration::from_secs(5);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// fakewa's send time, from the QR's ref: its last 13 digits.
fn sent_ms(code: &str) -> Option<i64> {
    let reference = code.split(',').next()?;
    let digits = reference.get(reference.len().checked_sub(13)?..)?;
    digits.parse().ok()
}

async fn qr_latency(daemon: &Daemon) -> Vec<f64> {
    for i in 0..QR_SESSIONS {
        let r = daemon
            .post(
                "/v1/sessions",
                Some(ADMIN),
                Some(json!({ "id": format!("q{i}"), "start": false })),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let mut ws = ws_connect(daemon.addr, "/v1/events", Some(ADMIN))
        .await
        .expect("socket");
    assert_eq!(next_json(&mut ws, 10).await["type"], "snapshot");
    // Read frames on their own task so stamps are taken as frames arrive.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(Ok(frame)) = ws.next().await {
            let received = now_ms();
            if let tokio_tungstenite::tungstenite::Message::Text(text) = frame
                && let Ok(event) = serde_json::from_str::<serde_json::Value>(&text)
                && event["type"] == "session.qr"
                && tx.send((event, received)).is_err()
            {
                break;
            }
        }
    });
    let mut latencies = Vec::with_capacity(QR_SESSIONS);
    let mut early: HashMap<String, (serde_json::Value, i64)> = HashMap::new();
    for i in 0..QR_SESSIONS {
        let id = format!("q{i}");
        let r = daemon
            .post(&format!("/v1/sessions/{id}/start"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let (event, received) = match early.remove(&id) {
            Some(found) => found,
            None => loop {
                let (event, received) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                    .await
                    .expect("a QR within 30 s")
                    .expect("socket open");
                let session = event["session"].as_str().unwrap_or_default().to_string();
                if session == id {
                    break (event, received);
                }
                early.insert(session, (event, received));
            },
        };
        let code = event["code"].as_str().expect("code");
        let sent = sent_ms(code).expect("fakewa ref carries its send time");
        latencies.push((received - sent) as f64);
        // Keep the daemon's load flat: one pairing attempt at a time.
        let r = daemon
            .post(&format!("/v1/sessions/{id}/stop"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    latencies
}

/// One keep-alive connection sending `GET` requests back to back.
async fn hammer(addr: SocketAddr, path: String, until: Instant) -> Vec<f64> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).ok();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN}\r\n\r\n");
    let mut latencies = Vec::new();
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    while Instant::now() < until {
        let started = Instant::now();
        stream.write_all(request.as_bytes()).await.expect("write");
        buf.clear();
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                if buf.len() >= end + 4 + length {
                    break;
                }
            }
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies
}

async fn rest_throughput(daemon: &Daemon) -> (f64, Vec<f64>) {
    let until = Instant::now() + RUN_FOR;
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            tokio::spawn(hammer(
                daemon.addr,
                format!("/v1/sessions/q{}", i % QR_SESSIONS),
                until,
            ))
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("load task"));
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (rate, all)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let fake = fakewa::FakeWa::start().await.expect("fakewa");
        let (_dir, daemon) = Daemon::start_with(
            &fake.ws_url(),
            common::Options {
                env: vec![("RUST_LOG".into(), "warn".into())],
                // All QR_SESSIONS sessions belong to the default tenant.
                extra_toml: "\n[sessions]\nmax_per_tenant = 1000\n".into(),
                ..Default::default()
            },
        )
        .await;

        let mut qr = qr_latency(&daemon).await;
        qr.sort_by(f64::total_cmp);
        println!(
            "QR latency, fakewa pair-device -> WebSocket session.qr, {} sessions (ms): p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}",
            qr.len(),
            percentile(&qr, 50.0),
            percentile(&qr, 90.0),
            percentile(&qr, 99.0),
            percentile(&qr, 100.0),
        );

        let (rate, latencies) = rest_throughput(&daemon).await;
        println!(
            "GET /v1/sessions/{{id}}, {CONNECTIONS} keep-alive connections, {:?}: {:.0} requests/s, latency (ms) p50 {:.2}  p99 {:.2}  max {:.2}",
            RUN_FOR,
            rate,
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            percentile(&latencies, 100.0),
        );
    });
}
