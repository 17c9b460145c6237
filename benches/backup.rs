//! Backups under load, against a real `whatsd serve` process on loopback.
//!
//! `cargo bench --profile dev --bench backup` (env `BACKUP_BENCH_SESSIONS`,
//! default 1000, and `BACKUP_BENCH_DELETES`, see [`writer`]; not `WHATSD_…`:
//! the daemon refuses unknown `WHATSD_` variables. Prints numbers, asserts
//! nothing).
//!
//! The store holds `SESSIONS` sessions (records made through the API, then
//! synthetic device data written through the store API while the daemon is
//! stopped: a device, `PREKEYS` prekeys and `PEERS` Signal sessions each,
//! about 100 KB). With the daemon running again, `WRITERS` API clients
//! create and delete sessions in a loop (store writes on the daemon's
//! workers), one client polls `GET /healthz` and one WebSocket client sends
//! pings and waits for each pong. First a quiet phase, then `BACKUPS`
//! backups (`POST /v1/admin/backup`) one after another; every sample is
//! counted in the phase it was sent in.

#[path = "../tests/common/mod.rs"]
mod common;

mod stats;
use stats::percentile;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ADMIN, Daemon, Options, request, ws_connect};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use wacore::store::Device;
use wacore::store::traits::{DeviceStore, SignalStore};
use whatsd::store::{MasterKey, Store};

const PREKEYS: u32 = 812;
const PREKEY_BYTES: usize = 80;
const PEERS: usize = 24;
const PEER_BYTES: usize = 1024;
const WRITERS: usize = 2;
const QUIET_FOR: Duration = Duration::from_secs(4);
const BACKUPS: usize = 3;
const HEALTHZ_EVERY: Duration = Duration::from_millis(10);
const PING_EVERY: Duration = Duration::from_millis(20);

/// (sent at, latency in ms)
type Samples = Arc<Mutex<Vec<(Instant, f64)>>>;

fn summary(samples: &[(Instant, f64)], windows: &[(Instant, Instant)]) -> String {
    let mut picked: Vec<f64> = samples
        .iter()
        .filter(|(at, _)| windows.iter().any(|(from, to)| at >= from && at <= to))
        .map(|(_, ms)| *ms)
        .collect();
    picked.sort_by(f64::total_cmp);
    format!(
        "n={:>5}  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        picked.len(),
        percentile(&picked, 50.0),
        percentile(&picked, 99.0),
        picked.last().copied().unwrap_or(f64::NAN)
    )
}

async fn fill_devices(store: &Store, n: usize) {
    for i in 0..n {
        let backend = store.device_backend(&format!("b{i}")).expect("backend");
        backend.create().await.expect("create device");
        let mut device = backend
            .load()
            .await
            .expect("load")
            .unwrap_or_else(Device::new);
        device.login_counter = i as i32;
        backend.save(&device).await.expect("save device");
        let prekeys: Vec<(u32, Bytes)> = (1..=PREKEYS)
            .map(|k| (k, Bytes::from(vec![(k ^ i as u32) as u8; PREKEY_BYTES])))
            .collect();
        backend
            .store_prekeys_batch(&prekeys, false)
            .await
            .expect("prekeys");
        let peers: Vec<(Arc<str>, Bytes)> = (0..PEERS)
            .map(|p| {
                let address: Arc<str> = format!("1555{i:04}{p:03}.0:1@s.whatsapp.net").into();
                (address, Bytes::from(vec![p as u8; PEER_BYTES]))
            })
            .collect();
        backend.put_sessions_batch(&peers).await.expect("sessions");
        if (i + 1) % 200 == 0 {
            println!("  {} devices written", i + 1);
        }
    }
}

async fn healthz_poller(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, out: Samples) {
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let r = request(addr, "GET", "/healthz", None, None).await;
        assert_eq!(r.status, 200);
        out.lock()
            .await
            .push((sent, sent.elapsed().as_secs_f64() * 1e3));
        tokio::time::sleep(HEALTHZ_EVERY).await;
    }
}

async fn pinger(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, out: Samples) {
    let mut ws = ws_connect(addr, "/v1/events", Some(ADMIN))
        .await
        .expect("socket");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let payload = n.to_be_bytes().to_vec();
        let sent = Instant::now();
        ws.send(Message::Ping(payload.clone().into()))
            .await
            .expect("ping");
        loop {
            match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                Ok(Some(Ok(Message::Pong(p)))) if p.as_ref() == payload.as_slice() => break,
                Ok(Some(Ok(_))) => continue,
                other => panic!("no pong: {other:?}"),
            }
        }
        out.lock()
            .await
            .push((sent, sent.elapsed().as_secs_f64() * 1e3));
        tokio::time::sleep(PING_EVERY).await;
    }
}

/// Creates and deletes sessions (record writes and a device wipe under the
/// store's gate, on the daemon's workers) until `stop`; with
/// `BACKUP_BENCH_DELETES=0` only creates (one gate user at a time: the
/// supervisor serializes creates, so one worker at most waits on the gate).
async fn writer(addr: std::net::SocketAddr, w: usize, stop: Arc<AtomicBool>) -> u64 {
    let deletes = std::env::var("BACKUP_BENCH_DELETES").map_or(true, |v| v != "0");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w{w}-{n}");
        let body = (
            "application/json",
            json!({ "id": id, "start": false }).to_string().into_bytes(),
        );
        let r = request(addr, "POST", "/v1/sessions", Some(ADMIN), Some(body)).await;
        assert_eq!(r.status, 201, "{}", r.text());
        if deletes {
            let path = format!("/v1/sessions/{id}");
            let r = request(addr, "DELETE", &path, Some(ADMIN), None).await;
            assert!(r.status < 300, "{}", r.text());
        }
        n += 1;
    }
    n
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let n: usize = std::env::var("BACKUP_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let options = Options {
        extra_toml: "[sessions]\nmax_per_tenant = 1000000\n".into(),
        ..Options::default()
    };
    // Sessions are never started: no WhatsApp connection is made.
    let (dir, mut daemon) = Daemon::start_with("ws://127.0.0.1:9/ws", options).await;
    println!("creating {n} sessions through the API ...");
    for i in 0..n {
        let r = daemon
            .post(
                "/v1/sessions",
                Some(ADMIN),
                Some(json!({ "id": format!("b{i}"), "start": false })),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    daemon.terminate().await;
    println!("writing their device data through the store API ...");
    let data = dir.path().join("data");
    {
        let key = MasterKey::from_file(&data.join("master.key")).expect("master key");
        let store = Store::open(&data, &key).expect("open store");
        fill_devices(&store, n).await;
        store.flush().await.expect("flush");
    }
    daemon.restart().await;
    let addr = daemon.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let healthz: Samples = Arc::default();
    let pings: Samples = Arc::default();
    let tasks = vec![
        tokio::spawn(healthz_poller(addr, stop.clone(), healthz.clone())),
        tokio::spawn(pinger(addr, stop.clone(), pings.clone())),
    ];
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(addr, w, stop.clone())))
        .collect();

    let quiet_from = Instant::now();
    tokio::time::sleep(QUIET_FOR).await;
    let quiet = vec![(quiet_from, Instant::now())];

    let mut during = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..BACKUPS {
        let from = Instant::now();
        let r = daemon.post("/v1/admin/backup", Some(ADMIN), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let to = Instant::now();
        during.push((from, to));
        sizes.push((r.body.len(), (to - from).as_secs_f64()));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }
    let mut writes = 0;
    for w in writers {
        writes += w.await.expect("writer");
    }
    let elapsed = quiet_from.elapsed().as_secs_f64();
    let load = load_average();
    daemon.terminate().await;

    println!();
    println!(
        "store: {n} sessions with device data; {WRITERS} API writers ({:.0} writes/s)",
        writes as f64 / elapsed
    );
    for (i, (bytes, secs)) in sizes.iter().enumerate() {
        println!(
            "backup {}: {:.1} MiB in {:.2} s",
            i + 1,
            *bytes as f64 / (1024.0 * 1024.0),
            secs
        );
    }
    let healthz = healthz.lock().await;
    let pings = pings.lock().await;
    println!(
        "GET /healthz   without backup  {}",
        summary(&healthz, &quiet)
    );
    println!(
        "GET /healthz   during backup   {}",
        summary(&healthz, &during)
    );
    println!("ws ping->pong  without backup  {}", summary(&pings, &quiet));
    println!(
        "ws ping->pong  during backup   {}",
        summary(&pings, &during)
    );
    println!("load average (1/5/15 min): {load}");
}
