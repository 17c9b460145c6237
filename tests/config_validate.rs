//! `whatsd validate-config` accepts the example configuration and refuses
//! bad ones with exit code 78 and a message naming the problem.

mod common;

use std::process::Command;
use std::time::Duration;

fn validate(path: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_whatsd"));
    command.arg("validate-config").arg(path);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run whatsd")
}

#[test]
fn the_example_config_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let out = validate(&example, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_example_config_sets_every_key() {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml"),
    )
    .unwrap();
    let table: toml::Table = toml::from_str(&example).unwrap();
    let count = |t: &toml::Table| {
        t.values()
            .map(|v| v.as_table().map_or(1, |t| t.len()))
            .sum::<usize>()
    };
    // Every key of whatsd::config::Config: 3 top-level, 6 auth, 10 api, 3 whatsapp,
    // 10 sessions, 7 limits, 15 webhooks, 8 media, 2 log.
    assert_eq!(count(&table), 64, "config/example.toml must show every key");
}

#[test]
fn bad_configs_exit_78_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for (text, env, needle) in [
        ("listen = 8080\n", vec![], "listen"),
        ("[api]\nbody_limt = \"1MiB\"\n", vec![], "body_limt"),
        (
            "[sessions]\nactivation_timeout = \"soon\"\n",
            vec![],
            "sessions.activation_timeout",
        ),
        ("[whatsapp]\nws_url = \"http://x\"\n", vec![], "ws_url"),
        (
            "",
            vec![("WHATSD_API_MAX_CONNECTIONS", "lots")],
            "WHATSD_API_MAX_CONNECTIONS",
        ),
        ("not toml at all", vec![], "line 1"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = validate(&path, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}: {stderr}");
        assert!(stderr.contains(needle), "{text}: {stderr}");
    }
    let out = validate(&dir.path().join("missing.toml"), &[]);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn serve_with_a_bad_config_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[log]\nformat = \"xml\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_whatsd"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run whatsd");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("format"));
}

/// A mistyped line may hold a secret: the error names file, line, column
/// and key, never the value or the line (issue 12, finding 7).
#[test]
fn config_errors_never_echo_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "wd_5e3c7a9b1d2f4e6a8c0b2d4f6e8a0c2e4b6d8f0a1c3e5a7b9d1f3e5c7a9b1d2f";
    for (text, needle) in [
        // Syntax: the unquoted token is no TOML value.
        (
            format!("[auth]\nfailure_limit = 3\nadmin_token_file = {secret}\n"),
            "line 3, column 20, key `auth.admin_token_file`",
        ),
        // Type: a string where a list is expected.
        (
            format!("[webhooks]\nevents = \"{secret}\"\n"),
            "line 2, column 10, key `webhooks.events`",
        ),
        // A custom parser (durations) refusing the value.
        (
            format!("[api]\nidle_timeout = \"{secret}\"\n"),
            "line 2, column 16, key `api.idle_timeout`",
        ),
    ] {
        let path = dir.path().join("secret.toml");
        std::fs::write(&path, &text).unwrap();
        let out = validate(&path, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}: {stderr}");
        assert!(stderr.contains("secret.toml"), "names the file: {stderr}");
        assert!(stderr.contains(needle), "{text}: {stderr}");
        assert!(
            !stderr.contains(&secret[3..20]),
            "echoed the secret: {stderr}"
        );
    }
}

/// The same on SIGHUP: a refused reload is logged by place and key, and
/// the secret on the broken line never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_logs_no_secret() {
    common::init_tracing();
    let secret = "wd_9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
    // Nothing connects to WhatsApp: there are no sessions.
    let (_dir, mut daemon) = common::Daemon::start("ws://127.0.0.1:9/ws/chat").await;
    let original = std::fs::read_to_string(&daemon.config_path).unwrap();
    std::fs::write(
        &daemon.config_path,
        format!("{original}\n[webhooks]\nsecret = {secret}\n"),
    )
    .unwrap();
    let pid = daemon.child.as_ref().unwrap().id().unwrap().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = daemon.log();
        if let Some(line) = log.lines().find(|l| l.contains("reload refused")) {
            break line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refused reload within 10 s:\n{}",
            common::tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line.contains("key `webhooks.secret`"), "{line}");
    assert!(line.contains("column 10"), "{line}");
    assert!(
        !daemon.log().contains(&secret[3..20]),
        "the secret reached the log"
    );
    assert!(daemon.terminate().await.success());
}

/// `serve --listen ADDR` wins over the file and `WHATSD_LISTEN`; a bad one
/// is a configuration error (78) that names the key.
#[test]
fn serve_listen_overrides_the_file_and_the_environment() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("whatsd.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &path,
        format!(
            "listen = \"not an address\"\ndata_dir = {:?}\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let serve = |listen: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_whatsd"));
        command
            .args(["serve", "--listen", listen, "--config"])
            .arg(&path)
            .env("WHATSD_LISTEN", "also not an address")
            .env("WHATSD_ADMIN_TOKEN", common::ADMIN)
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null());
        command
    };

    let out = serve("nowhere").output().expect("run whatsd");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen = \"nowhere\""));

    let mut child = serve("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn whatsd");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("listening on "));
    child.kill().ok();
    child.wait().ok();
    let addr: std::net::SocketAddr = line
        .expect("whatsd exited without listening")
        .trim_start_matches("listening on ")
        .parse()
        .expect("an address");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
}
