//! The command-line client of the API, for scripts: `whatsd sessions …`,
//! `whatsd qr ID`, `whatsd tenants …`. The token comes from `$WHATSD_TOKEN`
//! or a file (`--token-file` / `$WHATSD_TOKEN_FILE`), never from argv.
//! Plain `http://` only: run it on the daemon's host or through a tunnel.

use std::io::Write;
use std::path::PathBuf;
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
        let text = response.into_body().read_to_string().map_err(unavailable)?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
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
