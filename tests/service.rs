//! Running as a service: the systemd notification protocol (`READY=1` only
//! once `/readyz` answers 200, `WATCHDOG=1` at half of `WATCHDOG_USEC`,
//! `STOPPING=1` on SIGTERM), SIGHUP reloading the configuration, and
//! `--demo` refusing to run in a build without the `demo` feature.

mod common;

use std::time::Duration;

use common::{ADMIN, Daemon, Options};
use tokio::net::UnixDatagram;

/// Reads notifications until one equals or starts with `wanted`; returns
/// every message read, the match last.
async fn until(socket: &UnixDatagram, wanted: &str, secs: u64) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {wanted:?} within {secs} s; got {seen:?}"))
            .expect("recv");
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let hit = message.lines().any(|l| l == wanted);
        seen.push(message);
        if hit {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let options = Options {
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "200000".into()),
        ],
        ..Options::default()
    };
    let (_dir, mut daemon) = Daemon::start_with(&fake.ws_url(), options).await;

    let before_ready = until(&socket, "READY=1", 30).await;
    assert!(
        !before_ready.iter().any(|m| m.contains("WATCHDOG=1")),
        "no watchdog ping before READY: {before_ready:?}"
    );
    let ready = daemon.get("/readyz", None).await;
    assert_eq!(ready.status, 200, "READY=1 came before /readyz answers 200");

    // At half of 200 ms: two pings arrive well within a few seconds.
    let mut pings = 0;
    while pings < 2 {
        let got = until(&socket, "WATCHDOG=1", 5).await;
        assert!(!got.iter().any(|m| m.contains("STOPPING")), "{got:?}");
        pings += 1;
    }

    let status = daemon.terminate().await;
    assert!(status.success(), "{status:?}");
    until(&socket, "STOPPING=1", 5).await;
}

/// Every notification already queued on `socket`.
fn drain(socket: &UnixDatagram) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while let Ok(n) = socket.try_recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    seen
}

/// A stuck store (the debug-only `store.gate` fault: every holder of the
/// store's gate hangs while a file exists) stops the watchdog pings and
/// turns `/readyz` to 503; both come back once the store answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_stops_the_watchdog_and_readiness() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("notify.sock");
    let stuck = sockets.path().join("stuck");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let options = Options {
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "200000".into()),
            (
                "WHATSD_FAULTS".into(),
                format!("store.gate={}", stuck.display()),
            ),
        ],
        ..Options::default()
    };
    let (_dir, mut daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    until(&socket, "READY=1", 30).await;
    until(&socket, "WATCHDOG=1", 5).await;
    assert_eq!(daemon.get("/readyz", None).await.status, 200);

    std::fs::write(&stuck, b"").unwrap();
    // The watchdog's next probe takes the gate and hangs there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains("fault store.gate stalling") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store did not get stuck:\n{}",
            common::tail(&daemon.log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = daemon.get("/readyz", None).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.error_code(), "not_ready");
    assert!(ready.text().contains("store"), "{}", ready.text());
    // Pings sent before the store got stuck are behind us now; none may
    // follow for ten ping periods.
    drain(&socket);
    let mut buf = vec![0u8; 4096];
    let quiet = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let n = socket.recv(&mut buf).await.expect("recv");
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.lines().any(|l| l == "WATCHDOG=1") {
                return message;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "a watchdog ping while the store is stuck");

    std::fs::remove_file(&stuck).unwrap();
    until(&socket, "WATCHDOG=1", 5).await;
    let ready = daemon.get("/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    let status = daemon.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_survives_a_bad_file() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, mut daemon) = Daemon::start(&fake.ws_url()).await;
    let pid = daemon.child.as_ref().unwrap().id().unwrap().to_string();
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    };
    let wait_log = |needle: &'static str, after: usize| {
        let daemon = &daemon;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let log = daemon.log();
                let start = after.min(log.len());
                if let Some(found) = log[start..].find(needle) {
                    let at = start + found;
                    let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
                    let line_end = log[at..].find('\n').map_or(log.len(), |i| at + i);
                    return (log[line_start..line_end].to_string(), line_end);
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no {needle:?} in the log within 10 s:\n{}",
                    common::tail(&log)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // A live change and one that needs a restart.
    let original = std::fs::read_to_string(&daemon.config_path).unwrap();
    let changed = original
        .replace("filter = \"info,whatsd=debug\"", "filter = \"info\"")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    assert_ne!(changed, original);
    std::fs::write(&daemon.config_path, &changed).unwrap();
    hup();
    let (line, at) = wait_log("configuration reloaded", 0).await;
    assert!(line.contains("log.filter"), "{line}");
    let log = daemon.log();
    assert!(log.contains("needs_restart"), "{}", common::tail(&log));
    assert!(log.contains("SIGHUP"));

    // A bad file: logged, the daemon keeps serving with what it had.
    std::fs::write(&daemon.config_path, "listen = [not toml").unwrap();
    hup();
    wait_log("reload refused", at).await;
    let ready = daemon.get("/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let listed = daemon.get("/v1/sessions", Some(ADMIN)).await;
    assert_eq!(listed.status, 200);

    let status = daemon.terminate().await;
    assert!(status.success(), "{status:?}");
}

/// A signal that arrives while the daemon is still starting (here: as soon
/// as the store is open, before the listener) is handled, not fatal:
/// SIGHUP reloads once the daemon runs, SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_during_start_up_are_handled() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    for signal in ["HUP", "TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("whatsd.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[whatsapp]\nws_url = {:?}\nversion = {:?}\n",
                dir.path().join("data").display().to_string(),
                fake.ws_url(),
                common::VERSION,
            ),
        )
        .unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_whatsd"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("WHATSD_ADMIN_TOKEN", ADMIN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn whatsd");
        let pid = child.id().unwrap().to_string();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut log = Vec::new();
        let read_until =
            async |log: &mut Vec<String>, stderr: &mut tokio::io::Lines<_>, needle: &str| {
                while let Some(line) = stderr.next_line().await.expect("read stderr") {
                    let hit = line.contains(needle);
                    log.push(line);
                    if hit {
                        return true;
                    }
                }
                false
            };
        let bounded = Duration::from_secs(30);
        let opened = tokio::time::timeout(bounded, read_until(&mut log, &mut stderr, "store open"))
            .await
            .expect("no \"store open\" within 30 s");
        assert!(opened, "whatsd exited before opening the store: {log:#?}");
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.clone()])
            .status()
            .expect("run kill");
        assert!(sent.success());

        if signal == "HUP" {
            let reloaded = tokio::time::timeout(
                bounded,
                read_until(&mut log, &mut stderr, "configuration reloaded"),
            )
            .await
            .expect("no \"configuration reloaded\" within 30 s");
            assert!(reloaded, "a SIGHUP during start-up ended whatsd: {log:#?}");
            let listening = tokio::time::timeout(bounded, async {
                while let Some(line) = stdout.next_line().await.expect("read stdout") {
                    if line.starts_with("listening on ") {
                        return true;
                    }
                }
                false
            })
            .await
            .expect("not listening within 30 s");
            assert!(listening, "{log:#?}");
            let term = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("run kill");
            assert!(term.success());
        }
        // Keep the pipes drained until it exits.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let status = tokio::time::timeout(bounded, child.wait())
            .await
            .expect("whatsd did not exit within 30 s")
            .expect("wait");
        assert_eq!(
            (status.code(), status.signal()),
            (Some(0), None),
            "SIG{signal} during start-up: a clean exit, not death by signal"
        );
    }
}

/// Every log line the WhatsApp library writes for a session, also from the
/// tasks it spawns itself (handshake, keepalive, shutdown), carries the
/// session's id; the library's `log` records come out as JSON lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_log_lines_carry_the_session_id() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, mut daemon) = Daemon::start(&fake.ws_url()).await;
    common::pair(&daemon, &fake, "s1", None, "15550001212").await;
    // A drop and a reconnect: the library logs from its own tasks.
    let dropped = common::control(
        fake.control_addr(),
        "/control/drop",
        serde_json::json!({ "phone": "15550001212" }),
    )
    .await;
    assert_eq!(dropped.status, 200, "{}", dropped.text());
    daemon.wait_state("s1", "connected", 30).await;
    assert!(daemon.terminate().await.success());

    let log = daemon.log();
    let library: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("whatsapp_rust") || t.starts_with("wacore"))
        })
        .collect();
    assert!(
        library.len() > 5,
        "library lines are bridged: {}",
        common::tail(&log)
    );
    let without: Vec<&serde_json::Value> = library
        .iter()
        .filter(|line| line["span"]["id"] != "s1")
        .collect();
    assert!(
        without.is_empty(),
        "{} of {} library lines without the session id, e.g. {:#?}",
        without.len(),
        library.len(),
        &without[..without.len().min(5)]
    );
}

#[test]
fn demo_needs_the_demo_feature() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_whatsd"))
        .args(["serve", "--demo"])
        .output()
        .expect("run whatsd");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--features demo"),
        "the message says how to get a demo build: {stderr}"
    );
}

/// `whatsd serve` replaces itself once, same pid, with glibc's per-thread
/// cache off and one malloc arena per core (store::release), keeping what
/// the operator set in `GLIBC_TUNABLES`, and over the operator's value of
/// a setting it would add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_with_its_allocator_settings_and_the_operators() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let operators_arenas = format!("glibc.malloc.arena_max={}", cores + 5);
    for (operator, wanted, unwanted) in [
        (
            "glibc.malloc.trim_threshold=262144".to_owned(),
            vec![
                "glibc.malloc.trim_threshold=262144".to_owned(),
                "glibc.malloc.tcache_count=0".to_owned(),
                format!("glibc.malloc.arena_max={cores}"),
            ],
            None,
        ),
        (
            operators_arenas.clone(),
            vec![
                operators_arenas.clone(),
                "glibc.malloc.tcache_count=0".to_owned(),
            ],
            Some(format!("glibc.malloc.arena_max={cores}")),
        ),
    ] {
        let options = Options {
            env: vec![("GLIBC_TUNABLES".into(), operator)],
            ..Options::default()
        };
        let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
        let pid = daemon.child.as_ref().unwrap().id().unwrap();
        // The process answers on its port: the pid we started is the one
        // serving, and its environment is what it was started again with
        // (glibc may split the variable at its colons in this copy).
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
        let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
        for setting in &wanted {
            assert!(
                environ.lines().any(|l| l.contains(setting.as_str())),
                "{setting} in the daemon's environment:\n{environ}"
            );
        }
        if let Some(unwanted) = unwanted {
            assert!(
                !environ.contains(&unwanted),
                "the operator's arena_max wins:\n{environ}"
            );
        }
        // Started again under its own name, not `exe`.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("read comm");
        assert_eq!(comm.trim_end(), "whatsd");
        assert_eq!(daemon.get("/healthz", None).await.status, 200);
    }
}
