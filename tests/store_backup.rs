//! `whatsd store backup` while the daemon runs (through the API), then
//! `whatsd store restore` into a new data dir: a session paired against
//! fakewa comes back `connected` there without a QR. Also the offline
//! backup, and restores that must be refused.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{ADMIN, Daemon, Options, next_json, ws_connect};

fn whatsd(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_whatsd"));
    command
        .args(args)
        .env_remove("WHATSD_TOKEN")
        .env_remove("WHATSD_DATA_DIR")
        .env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run whatsd")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_running_restores_a_paired_session() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (dir, mut daemon) = Daemon::start(&fake.ws_url()).await;
    common::pair(&daemon, &fake, "keep", None, "15557654321").await;
    let data = dir.path().join("data");

    // Backups need the admin token. The daemon holds sled's lock, so the
    // CLI, given the data dir, falls back to the API.
    let stranger = daemon
        .post("/v1/admin/backup", Some("wd_not-a-token"), None)
        .await;
    assert_eq!(stranger.status, 401);
    let backups = tempfile::tempdir().unwrap();
    let remote = [
        ("WHATSD_URL", format!("http://{}", daemon.addr)),
        ("WHATSD_TOKEN", ADMIN.to_string()),
    ];
    let out = ok(&whatsd(
        &[
            "store",
            "backup",
            "--data-dir",
            path(&data),
            "--out",
            path(backups.path()),
        ],
        &remote,
    ));
    assert!(out.contains("taken by the running daemon"), "{out}");
    let file = std::fs::read_dir(backups.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wdb"))
        .expect("a .wdb file in the output directory");

    // The original stops for good; the phone keeps its linked device.
    let status = daemon.terminate().await;
    assert!(status.success(), "{status:?}");

    // Offline, the CLI reads the data dir itself.
    let offline = backups.path().join("offline.wdb");
    let out = ok(&whatsd(
        &[
            "store",
            "backup",
            "--data-dir",
            path(&data),
            "--out",
            path(&offline),
        ],
        &[],
    ));
    assert!(out.contains("read offline"), "{out}");

    // Restores: refused with the wrong key or over a store, else checked.
    let restored = tempfile::tempdir().unwrap();
    let new_data = restored.path().join("data");
    let wrong_key = restored.path().join("wrong.key");
    std::fs::write(&wrong_key, "11".repeat(32)).unwrap();
    let refused = whatsd(
        &[
            "store",
            "restore",
            "--data-dir",
            path(&new_data),
            "--in",
            path(&file),
            "--master-key-file",
            path(&wrong_key),
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("master key"),
        "{refused:?}"
    );
    let key = data.join("master.key");
    let out = ok(&whatsd(
        &[
            "store",
            "restore",
            "--data-dir",
            path(&new_data),
            "--in",
            path(&file),
            "--master-key-file",
            path(&key),
        ],
        &[],
    ));
    assert!(out.contains("opens it"), "{out}");
    let again = whatsd(
        &[
            "store",
            "restore",
            "--data-dir",
            path(&new_data),
            "--in",
            path(&offline),
        ],
        &[],
    );
    assert!(!again.status.success(), "never over an existing store");

    // The master key is not in the backup: the operator brings it along.
    std::fs::copy(&key, new_data.join("master.key")).unwrap();
    let options = Options {
        env: vec![("WHATSD_DATA_DIR".into(), path(&new_data).to_string())],
        ..Options::default()
    };
    let (_dir2, mut restored_daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let mut ws = ws_connect(restored_daemon.addr, "/v1/events?session=keep", Some(ADMIN))
        .await
        .expect("socket opens");
    let snapshot = next_json(&mut ws, 10).await;
    assert_eq!(snapshot["sessions"][0]["id"], "keep", "{snapshot}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    if snapshot["sessions"][0]["state"] != "connected" {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "the restored session did not connect");
            let frame = next_json(&mut ws, left.as_secs().max(1)).await;
            assert_ne!(
                frame["type"], "session.qr",
                "a restored session needs no QR"
            );
            if frame["type"] == "session.connected" {
                break;
            }
        }
    }
    let shown = restored_daemon.wait_state("keep", "connected", 10).await;
    assert_eq!(shown["phone"], "15557654321");
    let status = restored_daemon.terminate().await;
    assert!(status.success(), "{status:?}");
}
