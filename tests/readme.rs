//! The README's configuration reference names every key of
//! `config/example.toml` (as `` `section.key` ``), `whatsd
//! validate-config` accepts that file, and the walkthrough's webhook
//! receiver verifies signatures with the README's Python example, verbatim.
//! (`tests/readme_walkthrough.sh` runs the README's commands.)

use std::path::Path;

fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value.as_table() {
            Some(inner) => keys(inner, &path, out),
            None => out.push(path),
        }
    }
}

#[test]
fn the_readme_documents_every_example_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config/example.toml")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table: toml::Table = toml::from_str(&example).unwrap();
    let mut all = Vec::new();
    keys(&table, "", &mut all);
    assert!(all.len() > 20, "{all:?}");
    let missing: Vec<&String> = all
        .iter()
        .filter(|key| !readme.contains(&format!("| `{key}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys without a row in the README's configuration reference: {missing:?}"
    );
}

#[test]
fn validate_config_accepts_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_whatsd"))
        .arg("validate-config")
        .arg(&example)
        .env_remove("WHATSD_DATA_DIR")
        .output()
        .expect("run whatsd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_example_receiver_uses_the_readme_verification_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let receiver = std::fs::read_to_string(root.join("examples/webhook_receiver.py")).unwrap();
    let start = readme
        .find("```python\n")
        .expect("the README has a Python verification example")
        + "```python\n".len();
    let block = &readme[start..];
    let block = &block[..block.find("```").unwrap()];
    let function = &block[block.find("def verify").expect("a verify function")..];
    assert!(
        receiver.contains(function),
        "examples/webhook_receiver.py must contain the README's verify() verbatim:\n{function}"
    );
}
