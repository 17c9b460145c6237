//! Webhooks end to end: fakewa → the real daemon binary → a real HTTP
//! receiver in the test that checks every signature.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{ADMIN, Daemon, Options, control, pair};
use ring::hmac;
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret-0123456789";
const CLOUD_SECRET: &str = "cloud-secret-0123456789abc";
const PHONE: &str = "15551230001";
const ADA: &str = "15557770001";

/// One received request: path, parsed body, whether its signature verified.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    body: Value,
    event_id: String,
    signed: bool,
    /// When the receiver got it.
    at: std::time::Instant,
}

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Received>>,
    /// Status to answer with (200 unless set).
    status: AtomicU16,
    /// How long each answer takes, in ms (a slow receiver).
    delay_ms: AtomicU16,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn verify_whatsd(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers
        .get("x-whatsd-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_string()),
            Some(("v1", x)) => v1 = Some(x.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = t.into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(body);
    hex(hmac::sign(&key, &signed).as_ref()) == v1
}

fn verify_hub(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, CLOUD_SECRET.as_bytes());
    sig == format!("sha256={}", hex(hmac::sign(&key, body).as_ref()))
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_string();
    let signed = if path == "/cloud" {
        verify_hub(&headers, &body)
    } else {
        verify_whatsd(&headers, &body)
    };
    match rx.delay_ms.load(Ordering::SeqCst) {
        0 => {}
        ms => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
    }
    let status = match rx.status.load(Ordering::SeqCst) {
        0 => 200,
        s => s,
    };
    let event_id = headers
        .get("x-whatsd-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if status == 200 {
        rx.got.lock().unwrap().push(Received {
            path,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            event_id,
            signed,
            at: std::time::Instant::now(),
        });
    }
    StatusCode::from_u16(status).unwrap()
}

/// Serves the receiver on `listener` until the test ends.
fn serve(listener: tokio::net::TcpListener, rx: Arc<Receiver>) {
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .route("/cloud", post(receive))
        .with_state(rx);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

async fn start_receiver() -> (SocketAddr, Arc<Receiver>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rx = Arc::new(Receiver::default());
    serve(listener, Arc::clone(&rx));
    (addr, rx)
}

fn webhook_toml(extra: &str) -> String {
    format!(
        "\n[webhooks]\nallow_private_targets = true\ninitial_backoff = \"100ms\"\nmax_backoff = \"1s\"\ntimeout = \"2s\"\n{extra}\n"
    )
}

/// A daemon whose tenant `acme` has its webhook at `http://{addr}/hook`, and
/// its session `shop` paired as PHONE. `global` goes in `[webhooks]`.
async fn hooked_shop(
    fake: &fakewa::FakeWa,
    global: &str,
    addr: SocketAddr,
) -> (tempfile::TempDir, Daemon) {
    let options = Options {
        extra_toml: webhook_toml(global),
        ..Default::default()
    };
    let (dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    create_tenant(&daemon, "acme").await;
    put_hook(&daemon, "acme", &format!("http://{addr}/hook")).await;
    pair(&daemon, fake, "shop", Some("acme"), PHONE).await;
    (dir, daemon)
}

async fn create_tenant(daemon: &Daemon, tenant: &str) {
    let r = daemon
        .post("/v1/tenants", Some(ADMIN), Some(json!({ "id": tenant })))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

async fn put_hook(daemon: &Daemon, tenant: &str, url: &str) {
    let r = daemon
        .put(
            &format!("/v1/tenants/{tenant}/webhooks/crm"),
            json!({ "url": url, "secret": SECRET }),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text());
}

async fn send(fake: &fakewa::FakeWa, from: &str, text: &str, kind: &str) {
    let r = control(
        fake.control_addr(),
        "/control/messages",
        json!({ "to_phone": PHONE, "from_phone": from, "text": text, "kind": kind }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Waits until `cond` holds for what the receiver got (bounded).
async fn wait_for(rx: &Receiver, secs: u64, what: &str, cond: impl Fn(&[Received]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if cond(&rx.got.lock().unwrap()) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let got = rx.got.lock().unwrap();
            panic!(
                "{what}: not reached in {secs} s; {} received, last: {:?}",
                got.len(),
                got.last()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn texts(got: &[Received], kind: &str) -> Vec<String> {
    got.iter()
        .filter(|r| r.path == "/hook" && r.body["type"] == kind)
        .map(|r| {
            r.body["data"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The numbers in `n-<i>` texts, first occurrences in order.
fn first_seen(got: &[Received]) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    texts(got, "message.received")
        .iter()
        .filter_map(|t| t.strip_prefix("n-")?.parse().ok())
        .filter(|n| seen.insert(*n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_session_events_arrive_signed_in_both_formats() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let (addr, rx) = start_receiver().await;
    let global = format!(
        "url = \"http://{addr}/cloud\"\nsecret = \"{CLOUD_SECRET}\"\nformat = \"cloud_api\"\n"
    );
    let (_dir, daemon) = hooked_shop(&fake, &global, addr).await;

    // session.connected, not on pair success alone.
    wait_for(&rx, 30, "session.connected", |got| {
        got.iter().any(|r| r.body["type"] == "session.connected")
    })
    .await;
    send(&fake, ADA, "hello from Ada", "dm").await;
    send(&fake, ADA, "sent from the phone", "from_me").await;
    send(&fake, ADA, "my status", "status").await;
    wait_for(&rx, 30, "dm, from_me, status and the cloud copy", |got| {
        texts(got, "message.received").len() >= 2
            && !texts(got, "message.status").is_empty()
            && got.iter().any(|r| r.path == "/cloud")
    })
    .await;

    let got = rx.got.lock().unwrap().clone();
    assert!(
        got.iter().all(|r| r.signed),
        "every request verifies: {got:?}"
    );
    assert!(
        got.iter()
            .filter(|r| r.path == "/hook")
            .all(|r| r.event_id == r.body["id"])
    );
    let dm = got
        .iter()
        .find(|r| r.path == "/hook" && r.body["data"]["text"] == "hello from Ada")
        .expect("the DM");
    let b = &dm.body;
    assert_eq!(b["type"], "message.received");
    assert_eq!(b["session"], "shop");
    assert_eq!(b["tenant"], "acme");
    assert_eq!(b["me"]["phone"], PHONE);
    assert_eq!(b["data"]["from_me"], false);
    assert_eq!(b["data"]["sender"]["phone"], ADA);
    assert_eq!(b["data"]["type"], "text");
    assert!(
        b["data"]["message_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let mine = got
        .iter()
        .find(|r| r.path == "/hook" && r.body["data"]["text"] == "sent from the phone")
        .expect("the from_me message");
    assert_eq!(mine.body["data"]["from_me"], true);
    assert_eq!(
        mine.body["data"]["chat"],
        format!("{ADA}@s.whatsapp.net"),
        "the chat is the contact"
    );
    let status = got
        .iter()
        .find(|r| r.body["type"] == "message.status")
        .expect("the status post");
    assert_eq!(status.body["data"]["chat"], "status@broadcast");
    assert_eq!(status.body["data"]["text"], "my status");

    // Cloud API: only the DM (no from_me, no status, no session events).
    let cloud: Vec<_> = got.iter().filter(|r| r.path == "/cloud").collect();
    assert_eq!(cloud.len(), 1, "{cloud:?}");
    let c = &cloud[0].body;
    assert_eq!(c["object"], "whatsapp_business_account");
    let value = &c["entry"][0]["changes"][0]["value"];
    assert_eq!(c["entry"][0]["changes"][0]["field"], "messages");
    assert_eq!(value["metadata"]["display_phone_number"], PHONE);
    assert_eq!(value["metadata"]["phone_number_id"], "shop");
    assert_eq!(value["contacts"][0]["wa_id"], ADA);
    assert_eq!(value["messages"][0]["from"], ADA);
    assert_eq!(value["messages"][0]["type"], "text");
    assert_eq!(value["messages"][0]["text"]["body"], "hello from Ada");
    assert_eq!(value["messages"][0]["id"], dm.body["data"]["message_id"]);

    // No QR or pairing code ever left through a webhook.
    assert!(!got.iter().any(|r| r.body["type"] == "session.qr"));
    // The queue drains: an event the session emits late (its push name, a
    // receipt) may be in flight at the first look, so look until it is
    // empty (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let endpoints = loop {
        let status = daemon
            .get("/v1/tenants/acme/webhooks/status", Some(ADMIN))
            .await;
        assert_eq!(status.status, 200);
        let endpoints = status.json()["endpoints"].clone();
        if endpoints[0]["queue_depth"] == 0 || tokio::time::Instant::now() > deadline {
            break endpoints;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(endpoints[0]["queue_depth"], 0, "{endpoints}");
    assert!(
        endpoints[0]["delivered"].as_u64().unwrap() >= 4,
        "{endpoints}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_and_bad_endpoints_are_refused() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    create_tenant(&daemon, "acme").await;
    let r = daemon
        .put(
            "/v1/tenants/nobody/webhooks/crm",
            json!({ "url": "https://hooks.example.com/x", "secret": SECRET }),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let cases = [
        (
            json!({ "url": "http://127.0.0.1:9/x", "secret": SECRET }),
            "private_target",
        ),
        (
            json!({ "url": "http://localhost:9/x", "secret": SECRET }),
            "private_target",
        ),
        (
            json!({ "url": "http://169.254.169.254/x", "secret": SECRET }),
            "private_target",
        ),
        (
            json!({ "url": "https://u:p@hooks.example.com/x", "secret": SECRET }),
            "invalid_webhook",
        ),
        (
            json!({ "url": "ftp://hooks.example.com/x", "secret": SECRET }),
            "invalid_webhook",
        ),
        (
            json!({ "url": "https://hooks.example.com/x", "secret": "short" }),
            "invalid_webhook",
        ),
        (
            json!({ "url": "https://hooks.example.com/x", "secret": SECRET, "events": ["session.qr"] }),
            "invalid_webhook",
        ),
    ];
    for (body, code) in cases {
        let r = daemon
            .put("/v1/tenants/acme/webhooks/crm", body.clone())
            .await;
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert_eq!(r.error_code(), code, "{body}");
    }
    let r = daemon
        .put(
            "/v1/tenants/acme/webhooks/status",
            json!({ "url": "https://hooks.example.com/x", "secret": SECRET }),
        )
        .await;
    assert_eq!(r.status, 405, "a reserved name is a route of its own");
    let r = daemon
        .get("/v1/tenants/acme/webhooks/crm", Some(ADMIN))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_then_failing_gets_everything_once_back() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    // A port with nothing behind it yet: connections are refused.
    let parked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = parked.local_addr().unwrap();
    drop(parked);
    let (_dir, daemon) = hooked_shop(&fake, "", addr).await;
    for i in 0..100 {
        send(&fake, ADA, &format!("n-{i}"), "dm").await;
    }
    // Up, but answering 503.
    let rx = Arc::new(Receiver::default());
    rx.status.store(503, Ordering::SeqCst);
    serve(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        Arc::clone(&rx),
    );
    for i in 100..200 {
        send(&fake, ADA, &format!("n-{i}"), "dm").await;
    }
    let status = daemon
        .get("/v1/tenants/acme/webhooks/status", Some(ADMIN))
        .await
        .json();
    let e = &status["endpoints"][0];
    assert!(e["queue_depth"].as_u64().unwrap() > 0, "{status}");
    assert!(e["last_error"].as_str().is_some(), "{status}");
    rx.status.store(200, Ordering::SeqCst);
    wait_for(&rx, 60, "all 200 messages", |got| {
        first_seen(got).len() == 200
    })
    .await;
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(
        first_seen(&got),
        (0..200).collect::<Vec<_>>(),
        "in order, none missing"
    );
    assert!(got.iter().all(|r| r.signed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_across_kill_9() {
    const N: u32 = 1000;
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let (addr, rx) = start_receiver().await;
    // A receiver slower than the stream (one queue delivers one at a time):
    // the outbox holds a backlog that is delivered, and forgotten, well
    // after the last incoming message was committed.
    rx.delay_ms.store(3, Ordering::SeqCst);
    let (_dir, mut daemon) = hooked_shop(&fake, "", addr).await;
    let sender = {
        let control = fake.control_addr();
        tokio::spawn(async move {
            for i in 0..N {
                let r = common::control(
                    control,
                    "/control/messages",
                    json!({ "to_phone": PHONE, "from_phone": ADA, "text": format!("n-{i}") }),
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        })
    };
    // Kill it late in the backlog, with deliveries in flight.
    wait_for(&rx, 60, "most deliveries", |got| {
        first_seen(got).len() >= 900
    })
    .await;
    daemon.kill().await;
    let killed_at = std::time::Instant::now();
    let at_kill = first_seen(&rx.got.lock().unwrap()).len();
    sender.await.unwrap();
    daemon.restart().await;
    wait_for(&rx, 120, "every message after the restart", |got| {
        first_seen(got).len() == N as usize
    })
    .await;
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(
        first_seen(&got),
        (0..N).collect::<Vec<_>>(),
        "in order, none missing"
    );
    // Duplicates (redeliveries) carry the same id.
    let mut ids = std::collections::HashMap::new();
    for r in got.iter().filter(|r| r.body["type"] == "message.received") {
        let text = r.body["data"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let id = r.body["id"].as_str().unwrap().to_string();
        assert_eq!(ids.entry(text.clone()).or_insert(id.clone()), &id, "{text}");
    }
    assert!(got.iter().all(|r| r.signed));
    assert!(
        at_kill < N as usize,
        "the kill happened mid-stream ({at_kill} delivered)"
    );
    // Delivered means forgotten: removals of delivered items are committed
    // within 100 ms, so only what arrived just before the kill comes again.
    let messages: Vec<&Received> = got
        .iter()
        .filter(|r| r.body["type"] == "message.received")
        .collect();
    let duplicates = messages.len() - N as usize;
    let last_second = messages
        .iter()
        .filter(|r| r.at <= killed_at && killed_at.duration_since(r.at) <= Duration::from_secs(1))
        .count();
    println!(
        "kill -9 after {at_kill} of {N} delivered: {duplicates} delivered again; \
         {last_second} received in the last second before the kill"
    );
    assert!(
        duplicates <= last_second,
        "{duplicates} duplicates, more than the {last_second} received in the last second before the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dead_lettered_at_once_and_can_be_redelivered() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let (addr, rx) = start_receiver().await;
    let (_dir, daemon) = Daemon::start_with(
        &fake.ws_url(),
        Options {
            extra_toml: webhook_toml(""),
            ..Default::default()
        },
    )
    .await;
    create_tenant(&daemon, "acme").await;
    pair(&daemon, &fake, "shop", Some("acme"), PHONE).await;
    put_hook(&daemon, "acme", &format!("http://{addr}/hook")).await;
    rx.status.store(400, Ordering::SeqCst);
    send(&fake, ADA, "refused once", "dm").await;
    let dead = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = daemon
                .get("/v1/tenants/acme/webhooks/dead-letters", Some(ADMIN))
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let list = r.json()["dead_letters"].clone();
            let message: Vec<Value> = list
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["event"]["type"] == "message.received")
                .cloned()
                .collect();
            if !message.is_empty() {
                break Value::Array(message);
            }
            assert!(tokio::time::Instant::now() < deadline, "no dead letter");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(dead[0]["attempts"], 1, "no retry after a 400: {dead}");
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("HTTP 400"),
        "{dead}"
    );
    assert_eq!(dead[0]["event"]["data"]["text"], "refused once");
    rx.status.store(200, Ordering::SeqCst);
    let id = dead[0]["id"].as_str().unwrap();
    let r = daemon
        .post(
            &format!("/v1/tenants/acme/webhooks/dead-letters/{id}/redeliver"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for(&rx, 30, "the redelivery", |got| {
        texts(got, "message.received") == ["refused once"]
    })
    .await;
    let r = daemon
        .get("/v1/tenants/acme/webhooks/dead-letters", Some(ADMIN))
        .await;
    let left = r.json()["dead_letters"].clone();
    assert!(
        !left.as_array().unwrap().iter().any(|d| d["id"] == id),
        "redelivered dead letters leave the list: {left}"
    );
    let r = daemon
        .post(
            &format!("/v1/tenants/acme/webhooks/dead-letters/{id}/redeliver"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
}
