//! The durable outbound queue against fakewa: sends made while the session
//! is stopped are queued (202) and go out in order once it is connected;
//! a send's status moves queued → sent → delivered → read; a queued send
//! can be cancelled; an `Idempotency-Key` names one send, also across a
//! restart; a session never paired refuses; and a `kill -9` with 500 sends
//! queued loses none and repeats at most the one in flight.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{ADMIN, Daemon, control, pair, request};
use serde_json::{Value, json};

const PHONE: &str = "15551250001";
const ADA: &str = "15557790001";
/// Rate limits out of the way (see tests/rate_limits.rs for them).
const UNLIMITED: &str =
    "[limits]\nsends_per_minute = 1000000\nsends_per_hour = 1000000\nsends_per_day = 1000000\n";

async fn send(daemon: &Daemon, text: &str, key: Option<&str>) -> common::Response {
    let body = json!({ "to": ADA, "text": text }).to_string().into_bytes();
    let addr = daemon.addr;
    let mut head = format!(
        "POST /v1/sessions/shop-1/messages HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n"
    );
    if let Some(key) = key {
        head.push_str(&format!("Idempotency-Key: {key}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    common::raw_request(addr, head.into_bytes(), body).await
}

async fn status(daemon: &Daemon, id: &str) -> Value {
    let got = daemon
        .get(&format!("/v1/sessions/shop-1/messages/{id}"), Some(ADMIN))
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.json()
}

/// Waits (bounded) until `probe` holds.
async fn until(what: &str, secs: u64, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !probe().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What fakewa's contact received from `PHONE`, in order: (id, text).
fn received(fake: &fakewa::FakeWa) -> Vec<(String, String)> {
    fake.server
        .outbox(Some(PHONE))
        .into_iter()
        .filter(|m| m.to.starts_with(ADA))
        .map(|m| (m.id, m.text.unwrap_or_default()))
        .collect()
}

async fn stop(daemon: &Daemon) {
    let stopped = daemon
        .post("/v1/sessions/shop-1/stop", Some(ADMIN), None)
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    daemon.wait_state("shop-1", "stopped", 10).await;
}

async fn start(daemon: &Daemon) {
    let started = daemon
        .post("/v1/sessions/shop-1/start", Some(ADMIN), None)
        .await;
    assert_eq!(started.status, 200, "{}", started.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_queue_while_stopped_and_go_out_in_order() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;

    // Never paired: nothing to send from.
    let created = daemon
        .post(
            "/v1/sessions",
            Some(ADMIN),
            Some(json!({ "id": "idle", "start": false })),
        )
        .await;
    assert_eq!(created.status, 201);
    let refused = daemon
        .post(
            "/v1/sessions/idle/messages",
            Some(ADMIN),
            Some(json!({ "to": ADA, "text": "x" })),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "not_paired");

    pair(&daemon, &fake, "shop-1", None, PHONE).await;
    stop(&daemon).await;
    let texts: Vec<String> = (1..=5).map(|i| format!("queued message {i}")).collect();
    let mut ids = Vec::new();
    for text in &texts {
        let queued = send(&daemon, text, None).await;
        assert_eq!(queued.status, 202, "{}", queued.text());
        let body = queued.json();
        assert_eq!(body["status"], "queued");
        assert_eq!(body["to"], format!("{ADA}@s.whatsapp.net"));
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(status(&daemon, &ids[0]).await["status"], "queued");
    assert!(received(&fake).is_empty(), "nothing leaves while stopped");

    // The third is cancelled before the session comes back.
    let cancel = request(
        daemon.addr,
        "DELETE",
        &format!("/v1/sessions/shop-1/messages/{}", ids[2]),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(cancel.status, 200, "{}", cancel.text());
    assert_eq!(cancel.json()["status"], "cancelled");

    start(&daemon).await;
    until(
        "the four left in the queue reach the contact",
        30,
        async || received(&fake).len() >= 4,
    )
    .await;
    let expected: Vec<(String, String)> = [0, 1, 3, 4]
        .iter()
        .map(|&i| (ids[i].clone(), texts[i].clone()))
        .collect();
    assert_eq!(
        received(&fake),
        expected,
        "in order, exactly, the cancelled one left out"
    );

    // Statuses: the contact's phone confirms delivery; then it reads one.
    until("delivered", 30, async || {
        status(&daemon, &ids[0]).await["status"] == "delivered"
    })
    .await;
    let r = control(
        fake.control_addr(),
        "/control/receipts",
        json!({ "to_phone": PHONE, "from_phone": ADA, "message_id": ids[0], "status": "read" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    until("read", 30, async || {
        status(&daemon, &ids[0]).await["status"] == "read"
    })
    .await;
    assert_eq!(status(&daemon, &ids[2]).await["status"], "cancelled");
    let late = request(
        daemon.addr,
        "DELETE",
        &format!("/v1/sessions/shop-1/messages/{}", ids[1]),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(late.status, 409, "{}", late.text());
    assert_eq!(late.json()["error"]["code"], "not_queued");
    let unknown = daemon
        .get(
            "/v1/sessions/shop-1/messages/3EB0NOSUCHMESSAGE",
            Some(ADMIN),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let bad = daemon
        .get("/v1/sessions/shop-1/messages/no%20spaces", Some(ADMIN))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());

    // `?wait=sent` keeps the synchronous behaviour.
    let now = daemon
        .post(
            "/v1/sessions/shop-1/messages?wait=sent",
            Some(ADMIN),
            Some(json!({ "to": ADA, "text": "right now" })),
        )
        .await;
    assert_eq!(now.status, 200, "{}", now.text());
    // The contact's delivery receipt may already have moved it on.
    let now = now.json()["status"].as_str().unwrap().to_string();
    assert!(now == "sent" || now == "delivered", "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_names_one_send_across_a_restart() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, mut daemon) = Daemon::start(&fake.ws_url()).await;
    pair(&daemon, &fake, "shop-1", None, PHONE).await;

    let first = send(&daemon, "order 42 shipped", Some("order-42")).await;
    assert_eq!(first.status, 202, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_string();
    let again = send(&daemon, "order 42 shipped", Some("order-42")).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["id"], id.as_str());
    let bad = send(&daemon, "x", Some("has space")).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bad.json()["error"]["code"], "invalid_idempotency_key");
    until("the contact has it", 30, async || {
        received(&fake).iter().any(|(m, _)| *m == id)
    })
    .await;

    daemon.terminate().await;
    daemon.restart().await;
    let after = send(&daemon, "order 42 shipped", Some("order-42")).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.json()["id"], id.as_str());
    let other = send(&daemon, "order 43 shipped", Some("order-43")).await;
    assert_eq!(other.status, 202, "{}", other.text());
    let other_id = other.json()["id"].as_str().unwrap().to_string();
    until("the second order reaches the contact", 60, async || {
        received(&fake).iter().any(|(m, _)| *m == other_id)
    })
    .await;
    let order_42 = received(&fake).iter().filter(|(m, _)| *m == id).count();
    assert_eq!(order_42, 1, "one message for one key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_500_queued_loses_none() {
    const N: usize = 500;
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    // Far above the default rate limits, which would hold 480 back.
    let options = common::Options {
        extra_toml: UNLIMITED.into(),
        ..common::Options::default()
    };
    let (_dir, mut daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    pair(&daemon, &fake, "shop-1", None, PHONE).await;
    stop(&daemon).await;
    let mut queued = HashMap::new();
    for i in 0..N {
        let text = format!("bulk {i}");
        let r = send(&daemon, &text, None).await;
        assert_eq!(r.status, 202, "{}", r.text());
        queued.insert(r.json()["id"].as_str().unwrap().to_string(), text);
    }
    start(&daemon).await;
    until("a fifth is out", 60, async || {
        received(&fake).len() >= N / 5
    })
    .await;
    daemon.kill().await;
    let at_kill = received(&fake).len();
    daemon.restart().await;
    until("every queued send is out", 120, async || {
        let ids: HashSet<String> = received(&fake).into_iter().map(|(id, _)| id).collect();
        ids.len() >= N
    })
    .await;
    let got = received(&fake);
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (id, text) in &got {
        assert_eq!(
            queued.get(id),
            Some(text),
            "{id} is one of ours, with its text"
        );
        *seen.entry(id.as_str()).or_default() += 1;
    }
    assert_eq!(seen.len(), N, "every one, none lost");
    let repeated: usize = seen.values().map(|n| n - 1).sum();
    println!("kill -9 after {at_kill} of {N} sent: {repeated} sent again with the same id");
    assert!(
        repeated <= 1,
        "only the send in flight at the kill may go twice: {repeated}"
    );
}

/// Sends queued by a session are its own: deleting it drops them, and the
/// same id created again (by another tenant) sends none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_session_s_queue_goes_with_it() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    common::create_tenant(&daemon, "acme").await;
    common::create_tenant(&daemon, "evil").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    stop(&daemon).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = send(
            &daemon,
            &format!("acme's secret {i}"),
            Some(&format!("k{i}")),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let deleted = request(
        daemon.addr,
        "DELETE",
        "/v1/sessions/shop-1",
        Some(ADMIN),
        None,
    )
    .await;
    assert!(
        deleted.status == 200 || deleted.status == 204,
        "{}",
        deleted.text()
    );

    // The id again, another tenant, the same phone.
    pair(&daemon, &fake, "shop-1", Some("evil"), PHONE).await;
    for id in &ids {
        let gone = daemon
            .get(&format!("/v1/sessions/shop-1/messages/{id}"), Some(ADMIN))
            .await;
        assert_eq!(gone.status, 404, "{}", gone.text());
    }
    // The same idempotency key is a new send now, not acme's.
    let fresh = send(&daemon, "evil's own", Some("k0")).await;
    assert_eq!(fresh.status, 202, "{}", fresh.text());
    let fresh_id = fresh.json()["id"].as_str().unwrap().to_string();
    assert!(!ids.contains(&fresh_id));
    until("evil's own send goes out", 30, async || {
        received(&fake).iter().any(|(id, _)| *id == fresh_id)
    })
    .await;
    let leaked: Vec<_> = received(&fake)
        .into_iter()
        .filter(|(_, text)| text.starts_with("acme's secret"))
        .collect();
    assert!(leaked.is_empty(), "the old queue was sent: {leaked:?}");
}
