//! `whatsd validate-config` accepts the example configuration and refuses
//! bad ones with exit code 78 and a message naming the problem.

use std::process::Command;

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
    // Every key of whatsd::config::Config: 3 top-level, 5 auth, 5 api, 3 whatsapp,
    // 9 sessions, 14 webhooks, 2 log.
    assert_eq!(count(&table), 41, "config/example.toml must show every key");
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
            "soon",
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
