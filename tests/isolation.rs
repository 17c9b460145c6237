//! Tenant isolation through the daemon binary: what belongs to a session
//! or a tenant goes with it, ids re-created by someone else start empty,
//! dead letters are scoped by who owns the endpoint, quotas, reassignment.
//! Each test is a finding of issue 12 that reproduced on the old code.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    ADMIN, Daemon, Options, close_code, control, next_json, pair, request, webhook_receiver,
    ws_connect,
};
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret-0123456789";
const PHONE: &str = "15551239901";
const ADA: &str = "15557779901";

type Bodies = Arc<Mutex<Vec<Value>>>;

fn webhook_toml(extra: &str) -> String {
    format!(
        "\n[webhooks]\nallow_private_targets = true\ninitial_backoff = \"100ms\"\nmax_backoff = \"1s\"\ntimeout = \"2s\"\n{extra}\n"
    )
}

async fn daemon(fake: &fakewa::FakeWa, extra: &str) -> (tempfile::TempDir, Daemon) {
    let options = Options {
        extra_toml: webhook_toml(extra),
        ..Default::default()
    };
    Daemon::start_with(&fake.ws_url(), options).await
}

/// Creates a tenant; returns its token.
async fn tenant(daemon: &Daemon, id: &str) -> String {
    let r = daemon
        .post("/v1/tenants", Some(ADMIN), Some(json!({ "id": id })))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_string()
}

async fn call(
    daemon: &Daemon,
    method: &str,
    path: &str,
    token: &str,
    body: Value,
) -> common::Response {
    let body = (!body.is_null()).then(|| ("application/json", body.to_string().into_bytes()));
    request(daemon.addr, method, path, Some(token), body).await
}

/// `POST /v1/sessions` creating `id` (not started), as `token`.
async fn create_session(daemon: &Daemon, token: &str, id: &str) -> common::Response {
    let body = json!({ "id": id, "start": false });
    call(daemon, "POST", "/v1/sessions", token, body).await
}

/// `PATCH /v1/sessions/{id}` moving the session to `tenant`, as `token`.
async fn move_session(daemon: &Daemon, id: &str, token: &str, tenant: &str) -> common::Response {
    let path = format!("/v1/sessions/{id}");
    call(daemon, "PATCH", &path, token, json!({ "tenant": tenant })).await
}

/// Waits (bounded) until `cond` holds for the bodies received.
async fn wait_for(bodies: &Bodies, secs: u64, what: &str, cond: impl Fn(&[Value]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if cond(&bodies.lock().unwrap()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s; got {:?}",
            bodies.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(fake: &fakewa::FakeWa, text: &str) {
    let r = control(
        fake.control_addr(),
        "/control/messages",
        json!({ "to_phone": PHONE, "from_phone": ADA, "text": text, "kind": "dm" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

fn has_text(bodies: &[Value], text: &str) -> bool {
    bodies
        .iter()
        .any(|b| b["type"] == "message.received" && b["data"]["text"] == text)
}

/// Tenant `evil` makes `shop-1` with a session webhook to its own
/// receiver, sees its own events there (positive control), and deletes
/// it. Returns evil's receiver.
async fn evil_session_with_spy(daemon: &Daemon) -> Bodies {
    let evil = tenant(daemon, "evil").await;
    let (spy_url, spy) = webhook_receiver().await;
    let r = create_session(daemon, &evil, "shop-1").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = call(
        daemon,
        "PUT",
        "/v1/sessions/shop-1/webhooks/spy",
        &evil,
        json!({ "url": spy_url, "secret": SECRET }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = call(
        daemon,
        "POST",
        "/v1/sessions/shop-1/start",
        &evil,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for(
        &spy,
        30,
        "evil's own session.state (positive control)",
        |got| {
            got.iter()
                .any(|b| b["type"] == "session.state" && b["session"] == "shop-1")
        },
    )
    .await;
    spy
}

/// The victim pairs `shop-1` with its own tenant webhook and gets a
/// message there. Returns the victim's receiver.
async fn victim_pairs_shop_1(daemon: &Daemon, fake: &fakewa::FakeWa, text: &str) -> Bodies {
    tenant(daemon, "victim").await;
    let (url, got) = webhook_receiver().await;
    let r = daemon
        .put(
            "/v1/tenants/victim/webhooks/crm",
            json!({ "url": url, "secret": SECRET }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    pair(daemon, fake, "shop-1", Some("victim"), PHONE).await;
    send(fake, text).await;
    wait_for(&got, 30, "the victim's own message", |b| has_text(b, text)).await;
    got
}

/// Finding 1: a session webhook outlived its session and received the
/// next session with the same id (another tenant's) — QR-free, but paired,
/// connected and every message.
#[tokio::test]
async fn session_webhooks_die_with_their_session() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let (_dir, daemon) = daemon(&fake, "").await;
    let spy = evil_session_with_spy(&daemon).await;
    let mut socket = ws_connect(daemon.addr, "/v1/events?session=shop-1", Some(ADMIN))
        .await
        .expect("socket opens");
    let snapshot = next_json(&mut socket, 10).await;
    assert_eq!(
        snapshot["sessions"][0]["id"], "shop-1",
        "positive control: {snapshot}"
    );
    let r = daemon.delete("/v1/sessions/shop-1", Some(ADMIN)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        close_code(&mut socket, 5).await,
        Some(4404),
        "a socket following the deleted session ends"
    );
    let seen_before = spy.lock().unwrap().len();

    let victim = victim_pairs_shop_1(&daemon, &fake, "victim's secret text").await;
    assert!(
        victim
            .lock()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "session.connected")
    );
    let leaked: Vec<Value> = spy.lock().unwrap()[seen_before..].to_vec();
    assert!(
        leaked.is_empty(),
        "evil's receiver got the victim's events: {leaked:?}"
    );
    let sessions = daemon
        .get("/v1/sessions/shop-1/webhooks", Some(ADMIN))
        .await;
    assert_eq!(
        sessions.json()["webhooks"],
        json!([]),
        "the re-created id starts empty"
    );
}

/// A kill between the steps of a session delete (device keys wiped;
/// webhook data purged) must not leave anything a later session with that
/// id picks up: the id stays taken until the delete is done again.
#[tokio::test]
async fn a_crash_between_the_steps_of_a_delete_leaves_no_orphan() {
    for point in ["session.delete.after_wipe", "session.delete.after_purge"] {
        let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
        let mut options = Options {
            extra_toml: webhook_toml(""),
            ..Default::default()
        };
        options
            .env
            .push(("WHATSD_FAULTS".into(), format!("{point}=shop-1")));
        let (_dir, mut daemon) = Daemon::start_with(&fake.ws_url(), options).await;
        let spy = evil_session_with_spy(&daemon).await;

        let addr = daemon.addr;
        let deleting = tokio::spawn(async move {
            request(addr, "DELETE", "/v1/sessions/shop-1", Some(ADMIN), None).await
        });
        let status = daemon.wait_exit(30).await;
        assert!(
            !status.success(),
            "{point}: the fault point killed the daemon"
        );
        assert!(deleting.await.is_err(), "{point}: the delete got no answer");

        daemon.options_mut().env.clear();
        daemon.restart().await;
        let r = daemon.get("/v1/sessions/shop-1", Some(ADMIN)).await;
        assert_eq!(
            r.status, 200,
            "{point}: the id stays taken until the delete completes"
        );
        let r = call(
            &daemon,
            "POST",
            "/v1/sessions",
            ADMIN,
            json!({ "id": "shop-1", "tenant": "evil" }),
        )
        .await;
        assert_eq!(r.status, 409, "{point}: {}", r.text());
        let r = daemon.delete("/v1/sessions/shop-1", Some(ADMIN)).await;
        assert_eq!(
            r.status,
            204,
            "{point}: the delete can be finished: {}",
            r.text()
        );
        let seen_before = spy.lock().unwrap().len();

        victim_pairs_shop_1(&daemon, &fake, &format!("after {point}")).await;
        let leaked: Vec<Value> = spy.lock().unwrap()[seen_before..].to_vec();
        assert!(
            leaked.is_empty(),
            "{point}: evil's receiver got: {leaked:?}"
        );
    }
}

/// Finding 4: deleting a tenant left its endpoints and dead letters to
/// whoever re-created the id. Deleting needs it empty (409
/// `tenant_not_empty`); the default tenant cannot be deleted.
#[tokio::test]
async fn a_deleted_tenant_leaves_nothing_to_its_successor() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let (_dir, daemon) = daemon(&fake, "").await;
    let (url, _) = webhook_receiver().await;
    let missing = url.replace("/hook", "/missing");
    tenant(&daemon, "t1").await;
    tenant(&daemon, "t2").await;
    let r = daemon
        .put(
            "/v1/tenants/t1/webhooks/crm",
            json!({ "url": missing, "secret": SECRET }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = daemon
        .post(
            "/v1/sessions",
            Some(ADMIN),
            Some(json!({ "id": "s1", "tenant": "t1" })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // The receiver answers 404: the events die at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = daemon
            .get("/v1/tenants/t1/webhooks/dead-letters", Some(ADMIN))
            .await;
        if !r.json()["dead_letters"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let r = daemon.delete("/v1/tenants/t1", Some(ADMIN)).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "tenant_not_empty");
    let r = move_session(&daemon, "s1", ADMIN, "t2").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = daemon.delete("/v1/tenants/t1", Some(ADMIN)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = daemon.delete("/v1/tenants/default", Some(ADMIN)).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "default_tenant");

    tenant(&daemon, "t1").await;
    let r = daemon.get("/v1/tenants/t1/webhooks", Some(ADMIN)).await;
    assert_eq!(r.json()["webhooks"], json!([]), "{}", r.text());
    let r = daemon
        .get("/v1/tenants/t1/webhooks/dead-letters", Some(ADMIN))
        .await;
    assert_eq!(r.json()["dead_letters"], json!([]), "{}", r.text());
    let r = daemon.get("/v1/webhooks/dead-letters", Some(ADMIN)).await;
    let left: Vec<Value> = r.json()["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["endpoint"]
                .as_str()
                .unwrap_or("")
                .starts_with("tenant/t1/")
        })
        .cloned()
        .collect();
    assert!(left.is_empty(), "t1's dead letters were purged: {left:?}");
}

/// Finding 7: dead letters were filtered by the event's tenant, so a tenant
/// saw the admin's global endpoint's; sessions without a tenant had none
/// reachable (404 `no tenant "default"`).
#[tokio::test]
async fn dead_letters_belong_to_whoever_owns_the_endpoint() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let (url, _) = webhook_receiver().await;
    let missing = url.replace("/hook", "/missing");
    let global = format!("url = {missing:?}\nsecret = \"{SECRET}\"\n");
    let (_dir, daemon) = daemon(&fake, &global).await;
    let t1 = tenant(&daemon, "t1").await;
    let r = daemon
        .put(
            "/v1/tenants/t1/webhooks/crm",
            json!({ "url": missing, "secret": SECRET }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    for (id, tenant) in [("s1", json!("t1")), ("s0", Value::Null)] {
        let mut body = json!({ "id": id });
        if !tenant.is_null() {
            body["tenant"] = tenant;
        }
        let r = daemon.post("/v1/sessions", Some(ADMIN), Some(body)).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let endpoints_of = |r: &common::Response| -> Vec<String> {
        r.json()["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["endpoint"].as_str().unwrap().to_string())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all = endpoints_of(&daemon.get("/v1/webhooks/dead-letters", Some(ADMIN)).await);
        if all.iter().any(|e| e == "tenant/t1/crm") && all.iter().any(|e| e == "global/default") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let own = daemon
        .get("/v1/tenants/t1/webhooks/dead-letters", Some(&t1))
        .await;
    assert_eq!(own.status, 200, "{}", own.text());
    let own = endpoints_of(&own);
    assert!(!own.is_empty());
    assert!(
        own.iter().all(|e| e == "tenant/t1/crm"),
        "t1 sees only its own: {own:?}"
    );
    // The sessions keep pairing, so more may die after the purge: look only
    // at what existed before it (ids grow).
    let ids_of = |r: &common::Response, endpoint: &str| -> Vec<u64> {
        r.json()["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["endpoint"] == endpoint)
            .map(|d| d["id"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let before = daemon
        .get("/v1/webhooks/dead-letters?limit=1000", Some(ADMIN))
        .await;
    let last_seen = *ids_of(&before, "tenant/t1/crm").iter().max().unwrap();
    let r = call(
        &daemon,
        "DELETE",
        "/v1/tenants/t1/webhooks/dead-letters",
        &t1,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after = daemon
        .get("/v1/webhooks/dead-letters?limit=1000", Some(ADMIN))
        .await;
    let global_before = ids_of(&before, "global/default");
    let global_after = ids_of(&after, "global/default");
    assert!(
        global_before.iter().all(|id| global_after.contains(id)),
        "t1's purge spared the admin's: {global_before:?} vs {global_after:?}"
    );
    let left: Vec<u64> = ids_of(&after, "tenant/t1/crm")
        .into_iter()
        .filter(|id| *id <= last_seen)
        .collect();
    assert!(left.is_empty(), "t1's purge left {left:?}");
    let r = daemon.get("/v1/webhooks/dead-letters", Some(&t1)).await;
    assert_eq!(r.status, 403, "the all-tenants listing is the admin's");

    for path in [
        "/v1/tenants/default/webhooks/status",
        "/v1/tenants/default/webhooks/dead-letters",
    ] {
        let r = daemon.get(path, Some(ADMIN)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let r = daemon.get("/v1/tenants", Some(ADMIN)).await;
    assert!(
        r.json()["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "default"),
        "{}",
        r.text()
    );
}

/// Finding 7: 200 of 200 session creates by one tenant succeeded and
/// endpoints were unbounded.
#[tokio::test]
async fn quotas_bound_sessions_and_endpoints_per_tenant() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let options = Options {
        extra_toml: format!(
            "\n[sessions]\nmax_per_tenant = 2\n{}max_endpoints_per_tenant = 1\n",
            webhook_toml("")
        ),
        ..Default::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let a = tenant(&daemon, "qa").await;
    let b = tenant(&daemon, "qb").await;
    for id in ["a1", "a2"] {
        let r = create_session(&daemon, &a, id).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = create_session(&daemon, &a, "a3").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code(), "quota_exceeded");
    let r = daemon.get("/v1/sessions/a3", Some(ADMIN)).await;
    assert_eq!(r.status, 404, "a refused create leaves nothing");
    let r = create_session(&daemon, &b, "b1").await;
    assert_eq!(
        r.status,
        201,
        "another tenant is not affected: {}",
        r.text()
    );

    let (url, _) = webhook_receiver().await;
    let spec = json!({ "url": url, "secret": SECRET });
    let r = call(
        &daemon,
        "PUT",
        "/v1/tenants/qa/webhooks/one",
        &a,
        spec.clone(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = call(
        &daemon,
        "PUT",
        "/v1/tenants/qa/webhooks/one",
        &a,
        spec.clone(),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "replacing is not a new endpoint: {}",
        r.text()
    );
    let r = call(
        &daemon,
        "PUT",
        "/v1/sessions/a1/webhooks/two",
        &a,
        spec.clone(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code(), "quota_exceeded");
}

/// Creating an id another tenant holds answers 409 and says nothing about
/// the session that holds it; a new session's history does not start with
/// `created → created`.
#[tokio::test]
async fn a_taken_id_is_refused_without_describing_its_holder() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let (_dir, daemon) = daemon(&fake, "").await;
    let alpha = tenant(&daemon, "tenant-alpha-q7").await;
    let beta = tenant(&daemon, "tenant-beta").await;
    let r = create_session(&daemon, &alpha, "taken").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["transitions"], json!([]), "{}", r.text());
    let r = create_session(&daemon, &beta, "taken").await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "already_exists");
    let text = r.text();
    for secret in ["tenant-alpha-q7", "created", "state"] {
        assert!(
            !text.contains(secret),
            "409 describes the holder ({secret}): {text}"
        );
    }
}

/// Reassignment: from the moment the admin moves a session, its messages
/// reach only the new tenant; its session endpoints are gone.
#[tokio::test]
async fn a_reassigned_session_speaks_only_to_its_new_tenant() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let (_dir, daemon) = daemon(&fake, "").await;
    let a = tenant(&daemon, "ta").await;
    tenant(&daemon, "tb").await;
    let (a_url, a_got) = webhook_receiver().await;
    let (b_url, b_got) = webhook_receiver().await;
    let (s_url, s_got) = webhook_receiver().await;
    for (tenant, url) in [("ta", &a_url), ("tb", &b_url)] {
        let r = daemon
            .put(
                &format!("/v1/tenants/{tenant}/webhooks/crm"),
                json!({ "url": url, "secret": SECRET }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    pair(&daemon, &fake, "shop-1", Some("ta"), PHONE).await;
    let r = call(
        &daemon,
        "PUT",
        "/v1/sessions/shop-1/webhooks/own",
        &a,
        json!({ "url": s_url, "secret": SECRET }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    send(&fake, "before the move").await;
    wait_for(&s_got, 30, "the session endpoint (positive control)", |b| {
        has_text(b, "before the move")
    })
    .await;

    let mut a_session = ws_connect(daemon.addr, "/v1/events?session=shop-1", Some(&a))
        .await
        .expect("socket opens");
    let mut a_all = ws_connect(daemon.addr, "/v1/events", Some(&a))
        .await
        .expect("socket opens");
    for ws in [&mut a_session, &mut a_all] {
        let snapshot = next_json(ws, 10).await;
        assert_eq!(
            snapshot["sessions"][0]["id"], "shop-1",
            "positive control: {snapshot}"
        );
    }
    let r = move_session(&daemon, "shop-1", &a, "tb").await;
    assert_eq!(r.status, 403, "only the admin moves sessions: {}", r.text());
    let r = move_session(&daemon, "shop-1", ADMIN, "nobody").await;
    assert_eq!(r.status, 422, "{}", r.text());
    let r = move_session(&daemon, "shop-1", ADMIN, "tb").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tenant"], "tb");
    let (a_seen, s_seen) = (a_got.lock().unwrap().len(), s_got.lock().unwrap().len());
    assert_eq!(
        close_code(&mut a_session, 5).await,
        Some(4404),
        "the old tenant's session socket ends"
    );

    send(&fake, "after the move").await;
    wait_for(&b_got, 30, "the new tenant's message", |b| {
        has_text(b, "after the move")
    })
    .await;
    let msg = b_got
        .lock()
        .unwrap()
        .iter()
        .find(|b| has_text(std::slice::from_ref(b), "after the move"))
        .cloned()
        .unwrap();
    assert_eq!(msg["tenant"], "tb");
    // Give the old receivers the time the new one needed, and then some.
    let r = daemon
        .get("/v1/sessions/shop-1/webhooks", Some(ADMIN))
        .await;
    assert_eq!(
        r.json()["webhooks"],
        json!([]),
        "session endpoints removed: {}",
        r.text()
    );
    let r = daemon.get("/v1/sessions/shop-1", Some(&a)).await;
    assert_eq!(r.status, 404, "the old tenant no longer sees it");
    let late_a: Vec<Value> = a_got.lock().unwrap()[a_seen..].to_vec();
    let late_s: Vec<Value> = s_got.lock().unwrap()[s_seen..].to_vec();
    assert!(
        late_a
            .iter()
            .all(|b| !has_text(std::slice::from_ref(b), "after the move")),
        "{late_a:?}"
    );
    assert!(late_s.is_empty(), "{late_s:?}");
    // The old tenant's socket: whatever it still holds, nothing of the
    // moved session's new life.
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(
        Duration::from_millis(300),
        futures_util::StreamExt::next(&mut a_all),
    )
    .await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            let frame: Value = serde_json::from_str(&text).unwrap();
            assert_ne!(frame["tenant"], "tb", "the old tenant's socket got {frame}");
        }
    }
}

/// Graceful shutdown records a connected session as
/// `disconnected(shutdown)`, not `connected`.
#[tokio::test]
async fn shutdown_records_sessions_as_disconnected() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let (_dir, mut daemon) = daemon(&fake, "").await;
    pair(&daemon, &fake, "shop-1", None, PHONE).await;
    let status = daemon.terminate().await;
    assert!(status.success());
    daemon.restart().await;
    let r = daemon.get("/v1/sessions/shop-1", Some(ADMIN)).await;
    let transitions = r.json()["transitions"].as_array().unwrap().clone();
    assert!(
        transitions.iter().any(|t| t["from"] == "connected"
            && t["to"] == "disconnected"
            && t["reason"] == "shutdown"),
        "{transitions:?}"
    );
    daemon.wait_state("shop-1", "connected", 60).await;
}
