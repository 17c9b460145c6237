//! Shared helpers for the API tests: boot the real `whatsd` binary on
//! 127.0.0.1:0 with a temp data dir against an in-process fakewa, a small
//! HTTP/1.1 client, and a WebSocket client for `/v1/events`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Pinned so sessions never fetch the version from the internet.
pub const VERSION: &str = "2.3000.1023456789";
/// The admin token every test daemon gets through `WHATSD_ADMIN_TOKEN`.
pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Options for booting a daemon.
#[derive(Clone, Default)]
pub struct Options {
    /// Extra TOML appended to the generated config (after the `[whatsapp]` table).
    pub extra_toml: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Do not set `WHATSD_ADMIN_TOKEN` (the daemon generates one).
    pub no_admin_token: bool,
    /// Extra arguments after `serve --config FILE` (e.g. `--demo`).
    pub args: Vec<String>,
    /// The CA (PEM) the daemon's media client trusts
    /// (`whatsapp.media_ca_file`, written to `DIR/media-ca.pem`). `None`: the
    /// media CA of the in-process fakewa at `ws_url`, if there is one.
    pub media_ca_pem: Option<String>,
}

/// A `whatsd serve` process. Killed (SIGKILL) on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// Lines the daemon printed on stdout before `listening on`.
    pub stdout_lines: Vec<String>,
    options: Options,
}

impl Daemon {
    /// Boots a daemon with a fresh temp dir.
    pub async fn start(ws_url: &str) -> (tempfile::TempDir, Daemon) {
        Self::start_with(ws_url, Options::default()).await
    }

    /// Boots a daemon whose webhooks may target this machine (the tests'
    /// receivers listen on loopback).
    pub async fn start_with_local_webhooks(ws_url: &str) -> (tempfile::TempDir, Daemon) {
        let options = Options {
            extra_toml: "\n[webhooks]\nallow_private_targets = true\n".into(),
            ..Options::default()
        };
        Self::start_with(ws_url, options).await
    }

    pub async fn start_with(ws_url: &str, options: Options) -> (tempfile::TempDir, Daemon) {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("whatsd.toml");
        let media_ca = match options
            .media_ca_pem
            .clone()
            .or_else(|| fakewa::media_ca_pem_for_ws_url(ws_url))
        {
            Some(pem) => {
                let path = dir.path().join("media-ca.pem");
                std::fs::write(&path, pem).expect("write media CA");
                format!("media_ca_file = {:?}\n", path.display().to_string())
            }
            None => String::new(),
        };
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n[whatsapp]\nws_url = {ws_url:?}\nversion = {VERSION:?}\n{media_ca}\n[log]\nfilter = \"info,whatsd=debug\"\n{extra}\n",
            data = dir.path().join("data").display().to_string(),
            extra = options.extra_toml,
        );
        std::fs::write(&config_path, config).expect("write config");
        let daemon = Self::spawn(dir.path(), &config_path, options).await;
        (dir, daemon)
    }

    async fn spawn(dir: &Path, config_path: &Path, options: Options) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .expect("open daemon log");
        // A bench may run a copy of the binary (`BENCH_WHATSD_BIN`), so a
        // build in the same target dir cannot swap it under a long soak.
        let binary = std::env::var_os("BENCH_WHATSD_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_whatsd").into());
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(config_path)
            .args(&options.args)
            .env_remove("RUST_LOG")
            .env_remove("WHATSD_ADMIN_TOKEN")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if !options.no_admin_token {
            command.env("WHATSD_ADMIN_TOKEN", ADMIN);
        }
        for (k, v) in &options.env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn whatsd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut stdout_lines = Vec::new();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return addr.trim().parse::<SocketAddr>().expect("address");
                }
                stdout_lines.push(line);
            }
            panic!(
                "whatsd exited before listening; log:\n{}",
                std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
            );
        })
        .await
        .expect("whatsd did not print `listening on` within 60 s");
        // Keep draining stdout so the daemon never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Daemon {
            child: Some(child),
            addr,
            dir: dir.to_path_buf(),
            config_path: config_path.to_path_buf(),
            stdout_lines,
            options,
        }
    }

    /// Starts the daemon again on the same data dir and config.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon first");
        let fresh = Self::spawn(&self.dir, &self.config_path, self.options.clone()).await;
        *self = fresh;
    }

    /// SIGTERM, then waits for a clean exit (bounded).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("pid");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("whatsd did not exit within 30 s of SIGTERM")
            .expect("wait")
    }

    /// The options the next [`Daemon::restart`] uses.
    pub fn options_mut(&mut self) -> &mut Options {
        &mut self.options
    }

    /// Waits (bounded) for the daemon to exit by itself and returns how.
    pub async fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        tokio::time::timeout(Duration::from_secs(secs), child.wait())
            .await
            .unwrap_or_else(|_| panic!("whatsd did not exit within {secs} s"))
            .expect("wait")
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.expect("kill");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        request(self.addr, "GET", path, token, None).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        request(self.addr, "DELETE", path, token, None).await
    }

    /// `PUT` with a JSON body, as the admin.
    pub async fn put(&self, path: &str, body: Value) -> Response {
        let body = ("application/json", body.to_string().into_bytes());
        request(self.addr, "PUT", path, Some(ADMIN), Some(body)).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> Response {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        request(self.addr, "POST", path, token, body).await
    }

    /// Waits until the session is in `state`, polling (bounded).
    pub async fn wait_state(&self, id: &str, state: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.get(&format!("/v1/sessions/{id}"), Some(ADMIN)).await;
            if r.status == 200 && r.json()["state"] == state {
                return r.json();
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "session {id} not {state} within {secs} s; last: {} {}\nlog:\n{}",
                    r.status,
                    r.text(),
                    tail(&self.log())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error code of an `{"error":{"code","message"}}` answer.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(
            v["error"]["message"].is_string(),
            "not an API error: {}",
            self.text()
        );
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = match body {
        Some((content_type, bytes)) => {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
            bytes
        }
        None => Vec::new(),
    };
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    raw_request(addr, head.into_bytes(), body).await
}

/// Sends `head` and `body` (the body from a separate task, so an early
/// answer, e.g. 413, is read even if the server stops reading) and parses
/// the answer.
pub async fn raw_request(addr: SocketAddr, head: Vec<u8>, body: Vec<u8>) -> Response {
    let stream = TcpStream::connect(addr).await.expect("connect whatsd");
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&head).await;
        let _ = writer.write_all(&body).await;
        let _ = writer.flush().await;
        writer
    });
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut raw))
        .await
        .expect("response within 30 s")
        .ok();
    drop(writing);
    parse_response(&raw)
        .unwrap_or_else(|| panic!("bad HTTP response: {:?}", String::from_utf8_lossy(&raw)))
}

pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        let mut rest = rest;
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16)
                    .ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens `/v1/events…`; `Err((status, body))` when the upgrade is refused.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<Ws, (u16, Value)> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("ws request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    let tcp = TcpStream::connect(addr).await.expect("connect whatsd");
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("websocket handshake failed: {e}"),
    }
}

/// The next JSON text frame (pings are answered by the library).
pub async fn next_json(ws: &mut Ws, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within {secs} s"));
        match frame {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).expect("JSON frame");
            }
            Some(Ok(Message::Close(frame))) => panic!("socket closed: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error: {e}"),
            None => panic!("socket ended"),
        }
    }
}

/// Skips frames until one of type `kind` arrives.
pub async fn wait_event(ws: &mut Ws, kind: &str, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            panic!("no {kind} frame within {secs} s");
        }
        let frame = next_json(ws, left.as_secs().max(1)).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// Waits for the server's close frame and returns its code.
pub async fn close_code(ws: &mut Ws, secs: u64) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close within {secs} s"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
        }
    }
}

pub async fn ws_send_text(ws: &mut Ws, text: &str) {
    let _ = ws.send(Message::Text(text.into())).await;
}

/// POST to fakewa's control API.
pub async fn control(addr: SocketAddr, path: &str, body: Value) -> Response {
    request(
        addr,
        "POST",
        path,
        None,
        Some(("application/json", body.to_string().into_bytes())),
    )
    .await
}

/// Waits (up to `within`) until `GET path` of fakewa's control API at
/// `addr` answers 200 with what `pick` accepts; returns that answer.
pub async fn control_until(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    pick: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = request(addr, "GET", path, None, None).await;
        if got.status == 200 && pick(&got.json()) {
            return got.json();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: {}",
            got.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pairs session `id` with `phone` through the API only (create, start,
/// QR from the socket, fakewa scans) and waits for `connected`.
pub async fn pair(
    daemon: &Daemon,
    fake: &fakewa::FakeWa,
    id: &str,
    tenant: Option<&str>,
    phone: &str,
) {
    let mut body = serde_json::json!({ "id": id, "start": false });
    if let Some(tenant) = tenant {
        body["tenant"] = tenant.into();
    }
    let created = daemon.post("/v1/sessions", Some(ADMIN), Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let mut ws = ws_connect(
        daemon.addr,
        &format!("/v1/events?session={id}"),
        Some(ADMIN),
    )
    .await
    .expect("socket opens");
    assert_eq!(next_json(&mut ws, 10).await["type"], "snapshot");
    let started = daemon
        .post(&format!("/v1/sessions/{id}/start"), Some(ADMIN), None)
        .await;
    assert_eq!(started.status, 200, "{}", started.text());
    let qr = wait_event(&mut ws, "session.qr", 30).await;
    let scanned = control(
        fake.control_addr(),
        "/control/scan",
        serde_json::json!({ "qr": qr["code"], "phone": phone }),
    )
    .await;
    assert_eq!(scanned.status, 200, "{}", scanned.text());
    wait_event(&mut ws, "session.connected", 60).await;
}

/// Registers tenant `tenant`'s webhook `name` to `url` in `format`
/// (`whatsd` or `cloud_api`), as `token`.
pub async fn put_webhook(
    daemon: &Daemon,
    token: &str,
    tenant: &str,
    name: &str,
    url: &str,
    format: &str,
) {
    let put = request(
        daemon.addr,
        "PUT",
        &format!("/v1/tenants/{tenant}/webhooks/{name}"),
        Some(token),
        Some((
            "application/json",
            serde_json::json!({ "url": url, "secret": "webhook-secret-0123456789", "format": format })
                .to_string()
                .into_bytes(),
        )),
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text());
}

/// Waits (bounded) until `bodies` holds what `pick` finds; returns it.
pub async fn wait_for<T>(
    bodies: &std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    what: &str,
    pick: impl Fn(&[Value]) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(found) = pick(&bodies.lock().unwrap()) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:#?}",
            bodies.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A webhook receiver on 127.0.0.1:0 answering 200 to every POST to
/// `/hook`; keeps each body. Returns the URL to register and the bodies.
pub async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = std::sync::Arc::clone(&received);
            move |body: axum::Json<Value>| async move {
                received.lock().unwrap().push(body.0);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, received)
}

/// One HTTP/1.1 request on a fresh connection with extra headers.
pub async fn request_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    raw_request(addr, head.into_bytes(), Vec::new()).await
}

/// Creates tenant `id` as the admin and returns its token.
pub async fn create_tenant(daemon: &Daemon, id: &str) -> String {
    let r = daemon
        .post(
            "/v1/tenants",
            Some(ADMIN),
            Some(serde_json::json!({ "id": id })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["token"].as_str().expect("token").to_string()
}

/// Issues a WebSocket ticket with `token`; the whole answer.
pub async fn issue_ticket(daemon: &Daemon, token: &str) -> Response {
    daemon.post("/v1/ws-tickets", Some(token), None).await
}

/// The next frame of any kind, `None` on timeout: for watching a socket
/// that must stay silent or close.
pub async fn next_message(ws: &mut Ws, timeout: Duration) -> Option<Option<Message>> {
    match tokio::time::timeout(timeout, ws.next()).await {
        Err(_) => None,
        Ok(Some(Ok(message))) => Some(Some(message)),
        Ok(_) => Some(None),
    }
}

/// Raises this process's soft open-files limit to its hard limit (tests
/// that hold a thousand sockets); returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|soft| soft >= hard) {
        return hard;
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        },
    )
    .expect("raise RLIMIT_NOFILE");
    hard
}

/// A TCP connection to `addr` from the local address `from` (any
/// 127.0.0.0/8 address works on loopback: a second client address).
pub async fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// Waits until the server closes `stream` (EOF or reset), reading and
/// discarding anything it sends; `false` if it is still open after `within`.
pub async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}
