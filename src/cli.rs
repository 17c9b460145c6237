//! The command-line client of the API, for scripts: `whatsd sessions …`,
//! `whatsd qr ID`, `whatsd tenants …`. The token comes from `$WHATSD_TOKEN`
//! or a file (`--token-file` / `$WHATSD_TOKEN_FILE`), never from argv.
//! Plain `http://` only: run it on the daemon's host or through a tunnel.
//!
//! Also the store's offline tools: `whatsd store backup` (through the API
//! while the daemon runs), `whatsd store restore`, `whatsd store rekey`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Exit codes (`sysexits.h`).
pub const EXIT_API_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_UNAVAILABLE: u8 = 69;
pub const EXIT_NOPERM: u8 = 77;

/// A failed CLI command: a message for stderr and an exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub exit_code: u8,
}

impl CliError {
    fn new(exit_code: u8, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit_code,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where the daemon is and how to authenticate.
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `url` like `http://127.0.0.1:8080`; the token from `$WHATSD_TOKEN`,
    /// else from `token_file`.
    pub fn new(url: &str, token_file: Option<PathBuf>) -> Result<Self, CliError> {
        let base = url.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(CliError::new(
                EXIT_USAGE,
                format!("--url {base:?}: only http:// URLs are supported"),
            ));
        }
        let token = match (std::env::var("WHATSD_TOKEN"), token_file) {
            (Ok(token), _) if !token.trim().is_empty() => token.trim().to_string(),
            (_, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|e| {
                    CliError::new(
                        EXIT_NOPERM,
                        format!("cannot read token file {}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_string(),
            _ => {
                return Err(CliError::new(
                    EXIT_NOPERM,
                    "no token: set WHATSD_TOKEN or pass --token-file (or WHATSD_TOKEN_FILE)",
                ));
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Self { base, token, agent })
    }

    /// Calls the API; a non-2xx answer becomes a [`CliError`] carrying the
    /// server's error code and message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let bytes = self.call_bytes(method, path, body)?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()))
        })
    }

    /// [`Client::call`], returning the body as bytes (up to `MAX_BODY`).
    pub fn call_bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, CliError> {
        const MAX_BODY: u64 = 4 << 30;
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let unavailable = |e: ureq::Error| {
            CliError::new(
                EXIT_UNAVAILABLE,
                format!("cannot reach whatsd at {}: {e}", self.base),
            )
        };
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.map(Value::to_string).unwrap_or_default()),
        }
        .map_err(unavailable)?;
        let status = response.status();
        let bytes = response
            .into_body()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(unavailable)?;
        if status.is_success() {
            return Ok(bytes);
        }
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let code = value["error"]["code"].as_str().unwrap_or("error");
        let message = value["error"]["message"].as_str().unwrap_or("");
        let exit = if status.as_u16() == 401 || status.as_u16() == 403 {
            EXIT_NOPERM
        } else {
            EXIT_API_ERROR
        };
        Err(CliError::new(
            exit,
            format!("{} {code}: {message}", status.as_u16()),
        ))
    }

    fn ws_url(&self, path_and_query: &str) -> String {
        format!(
            "ws://{}{path_and_query}",
            self.base.trim_start_matches("http://")
        )
    }

    fn host_port(&self) -> String {
        let authority = self.base.trim_start_matches("http://");
        let authority = authority.split('/').next().unwrap_or(authority);
        if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        }
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `whatsd sessions list`: one line per session.
pub fn sessions_list(
    client: &Client,
    state: Option<&str>,
    tenant: Option<&str>,
) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(s) = state {
        query.push(format!("state={s}"));
    }
    if let Some(t) = tenant {
        query.push(format!("tenant={t}"));
    }
    let path = if query.is_empty() {
        "/v1/sessions".to_string()
    } else {
        format!("/v1/sessions?{}", query.join("&"))
    };
    let value = client.call("GET", &path, None)?;
    let empty = Vec::new();
    let sessions = value["sessions"].as_array().unwrap_or(&empty);
    println!(
        "{:<24} {:<16} {:<13} {:<16} REASON",
        "ID", "TENANT", "STATE", "PHONE"
    );
    for s in sessions {
        println!(
            "{:<24} {:<16} {:<13} {:<16} {}",
            s["id"].as_str().unwrap_or(""),
            s["tenant"].as_str().unwrap_or(""),
            s["state"].as_str().unwrap_or(""),
            s["phone"].as_str().unwrap_or(""),
            s["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

pub fn sessions_show(client: &Client, id: &str) -> Result<(), CliError> {
    print_json(&client.call("GET", &format!("/v1/sessions/{id}"), None)?);
    Ok(())
}

pub fn sessions_create(
    client: &Client,
    id: Option<&str>,
    tenant: Option<&str>,
    start: bool,
) -> Result<(), CliError> {
    let mut body = json!({ "start": start });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    if let Some(tenant) = tenant {
        body["tenant"] = json!(tenant);
    }
    print_json(&client.call("POST", "/v1/sessions", Some(&body))?);
    Ok(())
}

/// `start`, `stop`, `reset` or `logout`.
pub fn sessions_action(client: &Client, id: &str, action: &str) -> Result<(), CliError> {
    print_json(&client.call("POST", &format!("/v1/sessions/{id}/{action}"), None)?);
    Ok(())
}

pub fn sessions_delete(client: &Client, id: &str) -> Result<(), CliError> {
    client.call("DELETE", &format!("/v1/sessions/{id}"), None)?;
    println!("deleted {id}");
    Ok(())
}

pub fn tenants_create(client: &Client, id: &str) -> Result<(), CliError> {
    let value = client.call("POST", "/v1/tenants", Some(&json!({ "id": id })))?;
    print_json(&value);
    eprintln!("the token is shown only this once; store it now");
    Ok(())
}

pub fn tenants_list(client: &Client) -> Result<(), CliError> {
    print_json(&client.call("GET", "/v1/tenants", None)?);
    Ok(())
}

pub fn tenants_show(client: &Client, id: &str) -> Result<(), CliError> {
    print_json(&client.call("GET", &format!("/v1/tenants/{id}"), None)?);
    Ok(())
}

pub fn tenants_delete(client: &Client, id: &str) -> Result<(), CliError> {
    client.call("DELETE", &format!("/v1/tenants/{id}"), None)?;
    println!("deleted tenant {id}");
    Ok(())
}

pub fn tenants_rotate(client: &Client, id: &str) -> Result<(), CliError> {
    print_json(&client.call("POST", &format!("/v1/tenants/{id}/token"), None)?);
    eprintln!("the old token no longer works; the new one is shown only this once");
    Ok(())
}

/// The QR as text for a terminal (two modules per character row).
pub fn terminal_qr(code: &str) -> Option<String> {
    let qr = qrcode::QrCode::new(code.as_bytes()).ok()?;
    Some(
        qr.render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

fn show_qr(code: &str, expires_at_ms: i64, index: i64) {
    let now = crate::api::qr::now_ms();
    let secs = (expires_at_ms - now).max(0) / 1000;
    let mut out = std::io::stdout().lock();
    // Clear the screen so each refresh replaces the last code.
    let _ = write!(out, "\x1b[2J\x1b[H");
    let _ = writeln!(
        out,
        "{}",
        terminal_qr(code).unwrap_or_else(|| "(cannot render the QR)".into())
    );
    let _ = writeln!(
        out,
        "Scan with WhatsApp > Linked devices. QR {index}, expires in {secs} s."
    );
    let _ = out.flush();
}

/// `whatsd qr ID`: prints the live QR and each refresh until the session is
/// paired (exit 0) or pairing ends otherwise (exit 1).
pub async fn follow_qr(client: &Client, id: &str) -> Result<(), CliError> {
    let url = client.ws_url(&format!("/v1/events?session={id}"));
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| CliError::new(EXIT_USAGE, format!("bad URL {url}: {e}")))?;
    let auth = format!("Bearer {}", client.token)
        .parse()
        .map_err(|_| CliError::new(EXIT_NOPERM, "the token is not a valid header value"))?;
    request.headers_mut().insert("Authorization", auth);
    let unavailable =
        |e: String| CliError::new(EXIT_UNAVAILABLE, format!("cannot reach whatsd: {e}"));
    let tcp = tokio::net::TcpStream::connect(client.host_port())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (mut ws, _) = match tokio_tungstenite::client_async(request, tcp).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .unwrap_or(Value::Null);
            let status = response.status().as_u16();
            let exit = if status == 401 || status == 403 {
                EXIT_NOPERM
            } else {
                EXIT_API_ERROR
            };
            return Err(CliError::new(
                exit,
                format!(
                    "{status} {}: {}",
                    body["error"]["code"].as_str().unwrap_or("error"),
                    body["error"]["message"].as_str().unwrap_or("")
                ),
            ));
        }
        Err(e) => return Err(unavailable(e.to_string())),
    };
    while let Some(frame) = ws.next().await {
        let frame = frame.map_err(|e| unavailable(e.to_string()))?;
        let text = match frame {
            Message::Text(text) => text,
            Message::Close(frame) => {
                return Err(CliError::new(
                    EXIT_UNAVAILABLE,
                    format!("the daemon closed the event stream: {frame:?}"),
                ));
            }
            _ => continue,
        };
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match event["type"].as_str().unwrap_or("") {
            "snapshot" => {
                let Some(session) = event["sessions"].get(0) else {
                    return Err(CliError::new(EXIT_API_ERROR, format!("no session {id}")));
                };
                let state = session["state"].as_str().unwrap_or("");
                match state {
                    "connected" | "connecting" | "paired" | "disconnected" => {
                        println!("session {id} is already paired ({state})");
                        return Ok(());
                    }
                    "created" | "stopped" | "failed" | "logged_out" => {
                        return Err(CliError::new(
                            EXIT_API_ERROR,
                            format!(
                                "session {id} is {state}; start it first: whatsd sessions start {id}"
                            ),
                        ));
                    }
                    _ => {}
                }
                let qr = &session["qr"];
                if let Some(code) = qr["code"].as_str() {
                    show_qr(
                        code,
                        qr["expires_at_ms"].as_i64().unwrap_or(0),
                        qr["index"].as_i64().unwrap_or(0),
                    );
                } else {
                    println!("waiting for a QR for session {id}…");
                }
            }
            "session.qr" => {
                if let Some(code) = event["code"].as_str() {
                    show_qr(
                        code,
                        event["expires_at_ms"].as_i64().unwrap_or(0),
                        event["index"].as_i64().unwrap_or(0),
                    );
                }
            }
            "session.pair_code" => {
                println!("pairing code: {}", event["code"].as_str().unwrap_or(""));
            }
            "session.paired" => {
                println!(
                    "paired with +{} ({})",
                    event["phone"].as_str().unwrap_or("?"),
                    event["jid"].as_str().unwrap_or("")
                );
                let _ = ws.send(Message::Close(None)).await;
                return Ok(());
            }
            "session.state" => {
                let to = event["to"].as_str().unwrap_or("");
                if matches!(to, "failed" | "stopped" | "logged_out") {
                    return Err(CliError::new(
                        EXIT_API_ERROR,
                        format!(
                            "pairing ended: session {id} is {to} ({})",
                            event["reason"].as_str().unwrap_or("no reason")
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    Err(CliError::new(EXIT_UNAVAILABLE, "the event stream ended"))
}

/// `whatsd store backup`: a consistent copy of the store into `out` (a file,
/// or a directory that gets `whatsd-backup-<time>.wdb`). With `data_dir` and
/// no daemon holding it, read directly; otherwise the running daemon takes
/// it (`POST /v1/admin/backup`, admin token). The master key is not in it.
pub fn store_backup(
    data_dir: Option<&Path>,
    out: &Path,
    client: impl FnOnce() -> Result<Client, CliError>,
) -> Result<(), CliError> {
    use crate::store::backup;
    let offline = match data_dir {
        Some(dir) => match backup::backup_offline(dir) {
            Ok(bytes) => Some(bytes),
            Err(e) if backup::is_locked(&e) => None,
            Err(e) => return Err(CliError::new(EXIT_API_ERROR, format!("backup: {e}"))),
        },
        None => None,
    };
    let (bytes, how) = match offline {
        Some(bytes) => (bytes, "read offline"),
        None => (
            client()?.call_bytes("POST", "/v1/admin/backup", None)?,
            "taken by the running daemon",
        ),
    };
    let summary = backup::inspect(&bytes).map_err(|e| {
        CliError::new(
            EXIT_API_ERROR,
            format!("the backup does not check out: {e}"),
        )
    })?;
    let path = if out.is_dir() {
        let stamp = crate::api::qr::rfc3339_ms(crate::api::qr::now_ms()).replace(':', "");
        out.join(format!("whatsd-backup-{stamp}.wdb"))
    } else {
        out.to_path_buf()
    };
    write_private(&path, &bytes)
        .map_err(|e| CliError::new(EXIT_API_ERROR, format!("{}: {e}", path.display())))?;
    println!(
        "backup {how}: {} ({} trees, {} entries, {} bytes)",
        path.display(),
        summary.trees,
        summary.entries,
        summary.bytes
    );
    eprintln!("the master key is not in the backup: keep it separately");
    Ok(())
}

/// Writes `bytes` to a new 0600 file next to `path`, syncs it, renames it
/// into place.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The master key for an offline tool, without ever generating one: the
/// given file, `$CREDENTIALS_DIRECTORY/master-key`, `<data_dir>/master.key`.
fn offline_key(
    data_dir: &Path,
    key_file: Option<&Path>,
) -> Result<Option<(crate::store::MasterKey, PathBuf)>, CliError> {
    use crate::store::crypto::{CREDENTIAL_NAME, GENERATED_KEY_FILE};
    let candidates = [
        key_file.map(Path::to_path_buf),
        std::env::var_os("CREDENTIALS_DIRECTORY").map(|d| PathBuf::from(d).join(CREDENTIAL_NAME)),
        Some(data_dir.join(GENERATED_KEY_FILE)),
    ];
    for (i, path) in candidates.into_iter().enumerate() {
        let Some(path) = path else { continue };
        if i > 0 && !path.exists() {
            continue;
        }
        let key = crate::store::MasterKey::from_file(&path)
            .map_err(|e| CliError::new(EXIT_NOPERM, e.to_string()))?;
        return Ok(Some((key, path)));
    }
    Ok(None)
}

/// `whatsd store restore`: a backup into an empty data dir (daemon
/// stopped). Checks the master key first when one is at hand.
pub fn store_restore(
    data_dir: &Path,
    input: &Path,
    key_file: Option<&Path>,
) -> Result<(), CliError> {
    let bytes = std::fs::read(input)
        .map_err(|e| CliError::new(EXIT_USAGE, format!("{}: {e}", input.display())))?;
    let key = offline_key(data_dir, key_file)?;
    if key.is_none() {
        eprintln!(
            "no master key given (--master-key-file, the credential master-key or {}/master.key): \
             restoring without checking that it opens the backup",
            data_dir.display()
        );
    }
    let summary = crate::store::backup::restore(data_dir, &bytes, key.as_ref().map(|(k, _)| k))
        .map_err(|e| CliError::new(EXIT_API_ERROR, format!("restore: {e}")))?;
    println!(
        "restored {} trees, {} entries into {}",
        summary.trees,
        summary.entries,
        data_dir.display()
    );
    match key {
        Some((_, path)) => println!("the master key at {} opens it", path.display()),
        None => println!("start whatsd with the master key the backup was taken with"),
    }
    Ok(())
}

/// `whatsd store rekey`: re-seals the store (daemon stopped) from the
/// current master key to `new_key_file`. A key kept in the data dir is
/// replaced there; a configured key or credential the operator replaces.
pub fn store_rekey(
    data_dir: &Path,
    old_key_file: Option<&Path>,
    new_key_file: &Path,
) -> Result<(), CliError> {
    let Some((old, old_path)) = offline_key(data_dir, old_key_file)? else {
        return Err(CliError::new(
            EXIT_USAGE,
            "no current master key: pass --old-key-file",
        ));
    };
    let new = crate::store::MasterKey::from_file(new_key_file)
        .map_err(|e| CliError::new(EXIT_USAGE, e.to_string()))?;
    let report = crate::store::rekey(data_dir, &old, &new).map_err(|e| {
        let hint = if crate::store::backup::is_locked(&e) {
            " (stop the daemon first)"
        } else {
            ""
        };
        CliError::new(EXIT_API_ERROR, format!("rekey: {e}{hint}"))
    })?;
    println!(
        "re-sealed {} values ({} already done, {} unreadable)",
        report.resealed, report.already_new, report.unreadable
    );
    let in_data_dir = data_dir.join(crate::store::crypto::GENERATED_KEY_FILE);
    if old_path == in_data_dir {
        new.install_file(&in_data_dir)
            .map_err(|e| CliError::new(EXIT_API_ERROR, e.to_string()))?;
        println!("installed the new key as {}", in_data_dir.display());
    } else {
        println!(
            "now install {} as the master key (config or credential) in place of {}",
            new_key_file.display(),
            old_path.display()
        );
    }
    Ok(())
}
