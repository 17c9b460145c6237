//! Storage benchmark: the same operation mix on whatsd's encrypted sled
//! backend and on whatsapp-rust-sqlite-storage's `SqliteStore`.
//!
//! `cargo bench --manifest-path benches/store-vs-sqlite/Cargo.toml` (prints
//! numbers; asserts nothing).
//! Durable paths on sled flush (fsync) before returning; SqliteStore runs
//! WAL with `synchronous = NORMAL`, its default, which does not fsync each
//! commit. Both go through the same `Backend` trait calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wacore::store::Device;
use wacore::store::traits::Backend;
use whatsapp_rust_sqlite_storage::SqliteStore;
use whatsd::store::{MasterKey, Store};

const SESSION_BATCH: usize = 64;
const SESSION_BYTES: usize = 1024;
const PREKEY_BATCH: usize = 812;
const PREKEY_BYTES: usize = 80;
/// Each measurement runs for about this long (after one warm-up call).
const RUN_FOR: Duration = Duration::from_secs(3);

struct Figures {
    sessions_batch: f64,
    point_reads: f64,
    prekeys_batch: f64,
    device_save: f64,
}

/// Calls `op` repeatedly for `RUN_FOR` and returns calls per second.
async fn measure<F, Fut>(mut op: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    op(0).await;
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < RUN_FOR {
        calls += 1;
        op(calls).await;
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

fn session_batch(round: u64) -> Vec<(Arc<str>, Bytes)> {
    (0..SESSION_BATCH)
        .map(|i| {
            let address: Arc<str> = format!("1555{:07}:{}@s.whatsapp.net", i, round % 3).into();
            let mut blob = vec![(round as u8) ^ (i as u8); SESSION_BYTES];
            blob[0] = i as u8;
            (address, Bytes::from(blob))
        })
        .collect()
}

async fn run<B: Backend>(backend: &B) -> Figures {
    let sessions_batch = measure(|round| {
        let batch = session_batch(round);
        async move {
            backend
                .put_sessions_batch(&batch)
                .await
                .expect("sessions batch")
        }
    })
    .await;

    let addresses: Vec<Arc<str>> = session_batch(0).into_iter().map(|(a, _)| a).collect();
    let point_reads = measure(|round| {
        let address = Arc::clone(&addresses[round as usize % addresses.len()]);
        async move {
            let got = backend.get_session(&address).await.expect("get session");
            assert!(got.is_some());
        }
    })
    .await;

    let prekeys_batch = measure(|round| {
        let base = (round as u32 % 1000) * PREKEY_BATCH as u32;
        let keys: Vec<(u32, Bytes)> = (0..PREKEY_BATCH as u32)
            .map(|i| (base + i + 1, Bytes::from(vec![i as u8; PREKEY_BYTES])))
            .collect();
        async move {
            backend
                .store_prekeys_batch(&keys, false)
                .await
                .expect("prekeys")
        }
    })
    .await;

    backend.create().await.expect("create device");
    let mut device = backend
        .load()
        .await
        .expect("load")
        .unwrap_or_else(Device::new);
    let device_save = measure(|round| {
        device.login_counter = round as i32;
        let device = device.clone();
        async move { backend.save(&device).await.expect("save device") }
    })
    .await;

    Figures {
        sessions_batch,
        point_reads,
        prekeys_batch,
        device_save,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");

        let sled_dir = dir.path().join("sled");
        let store =
            Store::open(&sled_dir, &MasterKey::generate().expect("key")).expect("open sled store");
        let sled_backend = store.device_backend("bench").expect("backend");
        let sled = run(&*sled_backend).await;

        let sqlite_path = dir.path().join("sqlite.db");
        let sqlite_store = SqliteStore::new(sqlite_path.to_str().expect("utf-8 path"))
            .await
            .expect("open SqliteStore");
        let sqlite = run(&sqlite_store).await;

        println!(
            "operation                                   sled+AES-GCM     SQLite   sled/SQLite"
        );
        for (name, unit, s, q) in [
            (
                "put_sessions_batch (64 x 1 KiB, durable)",
                "batch/s",
                sled.sessions_batch,
                sqlite.sessions_batch,
            ),
            (
                "get_session point read",
                "op/s",
                sled.point_reads,
                sqlite.point_reads,
            ),
            (
                "store_prekeys_batch (812 x 80 B)",
                "batch/s",
                sled.prekeys_batch,
                sqlite.prekeys_batch,
            ),
            (
                "DeviceStore::save",
                "op/s",
                sled.device_save,
                sqlite.device_save,
            ),
        ] {
            println!("{name:<42} {s:>10.0} {q:>10.0}   {:>6.2}x  ({unit})", s / q);
        }
    });
}
