//! The command-line client: `whatsd sessions …`, `whatsd tenants create`,
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
