//! Sessions end when told: a client that is stopped, deleted or reset takes
//! every task the library spawned for it along, within moments, and its
//! WhatsApp connection closes. One test per binary: the library task count
//! is process-wide.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fakewa::FakeWa;
use whatsd::session::{SessionConfig, Supervisor};
use whatsd::store::{MasterKey, Store};
use whatsd::wa::{WaConfig, live_library_tasks};

const SESSIONS: usize = 20;

/// Established TCP connections of this process from a client to `server`
/// (read from /proc/net/tcp: the client side's remote address).
fn connections_to(server: SocketAddr) -> usize {
    let port = format!("{:04X}", server.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3 && cols[2].rsplit(':').next() == Some(port.as_str()) && cols[3] == "01"
        })
        .count()
}

/// Polls `done` every 10 ms for at most `within`; returns how long it took.
async fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?} (library tasks {}, connections left)",
            live_library_tasks()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_sessions_in_qr_leave_no_task_and_no_connection() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &MasterKey::from_bytes([9; 32])).unwrap();
    let config = SessionConfig {
        wa: WaConfig {
            ws_url: Some(fake.ws_url()),
            version: Some((2, 3000, 1_023_456_789)),
            device_os: "whatsd-test".into(),
            media_ca_file: None,
        },
        shutdown_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let supervisor = Supervisor::start(store, config).await.unwrap();
    let ids: Vec<String> = (0..SESSIONS).map(|i| format!("q{i}")).collect();
    for id in &ids {
        supervisor
            .create(Some(id.clone()), "t".into(), true)
            .await
            .unwrap();
    }
    for id in &ids {
        let (_, qr) = supervisor
            .wait_qr(id, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(qr.is_some(), "{id} shows a QR code");
    }
    let server = fake.ws_addr();
    assert_eq!(
        connections_to(server),
        SESSIONS,
        "positive control: one connection each"
    );
    let tasks_before = live_library_tasks();
    assert!(
        tasks_before >= SESSIONS,
        "positive control: {tasks_before} library tasks"
    );

    let started = Instant::now();
    let deletes = ids.iter().map(|id| supervisor.delete(id));
    for result in futures_util::future::join_all(deletes).await {
        result.unwrap();
    }
    let deleted_in = started.elapsed();
    let closed_in = wait_until(Duration::from_secs(2), "connections closed", || {
        connections_to(server) == 0
    })
    .await;
    let tasks_in = wait_until(Duration::from_secs(2), "library tasks ended", || {
        live_library_tasks() == 0
    })
    .await;
    println!(
        "{SESSIONS} sessions in qr deleted in {deleted_in:?}; then connections closed within {closed_in:?}, \
         library tasks {tasks_before} -> 0 within {tasks_in:?}"
    );
    supervisor.shutdown().await;
}
