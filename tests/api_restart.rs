//! Restarting the daemon process (SIGTERM, then SIGKILL) brings a paired
//! session back to `connected` without a QR, and WebSocket clients that
//! reconnect get a fresh snapshot.

mod common;

use std::time::Duration;

use common::{ADMIN, Daemon, Ws, close_code, next_json, ws_connect};

/// Reads frames until `session.connected`, failing on any `session.qr`.
async fn connected_without_qr(ws: &mut Ws, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "not connected within {secs} s");
        let frame = next_json(ws, left.as_secs().max(1)).await;
        match frame["type"].as_str() {
            Some("session.qr") => panic!("a paired session must not show a QR after a restart"),
            Some("session.connected") => return,
            _ => {}
        }
    }
}

/// Opens a socket after a restart: the snapshot is fresh, and either shows
/// the session connected already or it connects without a QR.
async fn reconnect_and_expect_connected(daemon: &Daemon) {
    let mut ws = ws_connect(daemon.addr, "/v1/events?session=keep", Some(ADMIN))
        .await
        .expect("socket opens after restart");
    let snapshot = next_json(&mut ws, 10).await;
    assert_eq!(snapshot["type"], "snapshot");
    let session = &snapshot["sessions"][0];
    assert_eq!(session["id"], "keep");
    assert!(session["qr"].is_null(), "no QR in the snapshot: {snapshot}");
    if session["state"] != "connected" {
        connected_without_qr(&mut ws, 60).await;
    }
    let shown = daemon.wait_state("keep", "connected", 10).await;
    assert_eq!(shown["phone"], "15557654321");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_come_back_after_sigterm_and_sigkill() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, mut daemon) = Daemon::start(&fake.ws_url()).await;
    common::pair(&daemon, &fake, "keep", None, "15557654321").await;

    // A watcher of all sessions sees the daemon leave with 1001.
    let mut watcher = ws_connect(daemon.addr, "/v1/events", Some(ADMIN))
        .await
        .expect("socket opens");
    assert_eq!(next_json(&mut watcher, 10).await["type"], "snapshot");

    let status = daemon.terminate().await;
    assert!(
        status.success(),
        "SIGTERM exit: {status:?}\n{}",
        common::tail(&daemon.log())
    );
    assert_eq!(close_code(&mut watcher, 10).await, Some(1001));
    assert!(
        daemon.log().contains("SIGTERM"),
        "the signal is logged by name"
    );
    // The daemon returned only once every task it spawned had ended: the
    // session's, its client's, the socket's, the webhooks' and its own.
    assert!(
        daemon.log().contains("stopped; every task ended"),
        "tasks outlived the shutdown:\n{}",
        common::tail(&daemon.log())
    );

    daemon.restart().await;
    reconnect_and_expect_connected(&daemon).await;

    // No chance to clean up this time.
    daemon.kill().await;
    daemon.restart().await;
    reconnect_and_expect_connected(&daemon).await;
}
