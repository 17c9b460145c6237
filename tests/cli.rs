//! The command-line client: `whatsd sessions …`, `whatsd tenants …`,
//! and `whatsd qr ID` following a pairing to its end, against a real daemon.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{ADMIN, Daemon, control};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn whatsd(daemon: &Daemon, token: Option<&str>, args: &[&str]) -> Out {
    let mut command = Command::new(env!("CARGO_BIN_EXE_whatsd"));
    command
        .args(args)
        .env("WHATSD_URL", format!("http://{}", daemon.addr))
        .env_remove("WHATSD_TOKEN")
        .env_remove("WHATSD_TOKEN_FILE");
    if let Some(token) = token {
        command.env("WHATSD_TOKEN", token);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the CLI finishes")
        .expect("run the CLI");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_api() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (dir, daemon) = Daemon::start(&fake.ws_url()).await;

    let out = whatsd(&daemon, Some(ADMIN), &["tenants", "create", "acme"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let tenant: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let tenant_token = tenant["token"].as_str().expect("token").to_string();

    // A tenant token from a file.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{tenant_token}\n")).unwrap();
    let out = whatsd(
        &daemon,
        None,
        &[
            "sessions",
            "create",
            "--id",
            "c1",
            "--no-start",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let created: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(created["tenant"], "acme");

    let out = whatsd(&daemon, Some(ADMIN), &["sessions", "list"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("c1 ") && l.contains("acme") && l.contains("created")),
        "{}",
        out.stdout
    );
    let out = whatsd(&daemon, Some(ADMIN), &["sessions", "show", "c1"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap()["id"],
        "c1"
    );
    let out = whatsd(&daemon, Some(ADMIN), &["sessions", "reset", "c1"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = whatsd(&daemon, Some(ADMIN), &["sessions", "delete", "c1"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    let out = whatsd(&daemon, Some(ADMIN), &["sessions", "show", "c1"]).await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("404 not_found"), "{}", out.stderr);
    let out = whatsd(&daemon, None, &["sessions", "list"]).await;
    assert_eq!(out.code, Some(77), "no token");
    let out = whatsd(&daemon, Some("wrong-token-xyz"), &["sessions", "list"]).await;
    assert_eq!(out.code, Some(77), "{}", out.stderr);

    // `whatsd qr` prints the QR and follows the pairing to its end.
    let created = daemon
        .post("/v1/sessions", Some(ADMIN), Some(json!({ "id": "q1" })))
        .await;
    assert_eq!(created.status, 201);
    let mut child = Command::new(env!("CARGO_BIN_EXE_whatsd"))
        .args(["qr", "q1"])
        .env("WHATSD_URL", format!("http://{}", daemon.addr))
        .env("WHATSD_TOKEN", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn whatsd qr");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Scan with WhatsApp") {
                return;
            }
        }
        panic!("whatsd qr ended without showing a QR");
    })
    .await
    .expect("a QR within 30 s");
    let qr = daemon.get("/v1/sessions/q1/qr", Some(ADMIN)).await.json();
    let scanned = control(
        fake.control_addr(),
        "/control/scan",
        json!({ "qr": qr["code"], "phone": "15550102030" }),
    )
    .await;
    assert_eq!(scanned.status, 200);
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rest = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    })
    .await
    .expect("whatsd qr ends once paired");
    assert!(rest.contains("paired with +15550102030"), "{rest}");
    let status = child.wait().await.unwrap();
    assert!(status.success());
}

/// `whatsd tenants list/show/rotate-token/delete`, session filters, and the
/// usage and connection errors, each with its exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_tenants_and_reports_usage_and_connection_errors() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (dir, daemon) = Daemon::start(&fake.ws_url()).await;

    let out = whatsd(&daemon, Some(ADMIN), &["tenants", "create", "t1"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let old_token = serde_json::from_str::<Value>(&out.stdout).expect("JSON")["token"]
        .as_str()
        .expect("token")
        .to_string();

    let out = whatsd(&daemon, Some(ADMIN), &["tenants", "list"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let list: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert!(
        list["tenants"]
            .as_array()
            .expect("tenants")
            .iter()
            .any(|t| t["id"] == "t1"),
        "{list}"
    );
    let out = whatsd(&daemon, Some(ADMIN), &["tenants", "show", "t1"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap()["id"],
        "t1"
    );

    let out = whatsd(
        &daemon,
        Some(&old_token),
        &["sessions", "create", "--id", "t1s", "--no-start"],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = whatsd(
        &daemon,
        Some(ADMIN),
        &["sessions", "create", "--id", "d1", "--no-start"],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = whatsd(
        &daemon,
        Some(ADMIN),
        &["sessions", "list", "--state", "created", "--tenant", "t1"],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("t1s ")),
        "{}",
        out.stdout
    );
    assert!(
        lines.iter().all(|l| !l.starts_with("c1 ")),
        "{}",
        out.stdout
    );

    // A rotated token replaces the old one at once.
    let out = whatsd(&daemon, Some(ADMIN), &["tenants", "rotate-token", "t1"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let new_token = serde_json::from_str::<Value>(&out.stdout).expect("JSON")["token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_ne!(new_token, old_token);
    let out = whatsd(&daemon, Some(&old_token), &["sessions", "list"]).await;
    assert_eq!(out.code, Some(77), "{}", out.stderr);
    let out = whatsd(&daemon, Some(&new_token), &["sessions", "list"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    // A tenant that owns a session stays; without it, it goes.
    let out = whatsd(&daemon, Some(ADMIN), &["tenants", "delete", "t1"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("409 tenant_not_empty"),
        "{}",
        out.stderr
    );
    let out = whatsd(&daemon, Some(ADMIN), &["sessions", "delete", "t1s"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = whatsd(&daemon, Some(ADMIN), &["tenants", "delete", "t1"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("deleted tenant t1"), "{}", out.stdout);
    let out = whatsd(&daemon, Some(ADMIN), &["tenants", "show", "t1"]).await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("404 not_found"), "{}", out.stderr);

    // Usage: only http:// URLs (exit 64); nobody listening: unavailable (69).
    let out = whatsd(
        &daemon,
        Some(ADMIN),
        &["sessions", "list", "--url", "https://127.0.0.1:1"],
    )
    .await;
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("only http:// URLs"), "{}", out.stderr);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = whatsd(
        &daemon,
        Some(ADMIN),
        &["sessions", "list", "--url", &closed_url],
    )
    .await;
    assert_eq!(out.code, Some(69), "{}", out.stderr);
    assert!(out.stderr.contains("cannot reach whatsd"), "{}", out.stderr);
    let missing = dir.path().join("no-such-token-file");
    let missing = missing.to_str().unwrap();
    let out = whatsd(
        &daemon,
        None,
        &["sessions", "list", "--token-file", missing],
    )
    .await;
    assert_eq!(out.code, Some(77), "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot read token file"),
        "{}",
        out.stderr
    );
}
