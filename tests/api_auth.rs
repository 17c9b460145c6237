//! Authentication and tenant isolation: tenant tokens see only their own
//! sessions on REST and WebSocket, tickets work once and expire, rotated
//! tokens stop working, and repeated failures from one address are slowed.

mod common;

use std::time::Duration;

use common::{ADMIN, Daemon, Options, next_json, ws_connect};
use serde_json::{Value, json};

async fn create_tenant(daemon: &Daemon, id: &str) -> String {
    let r = daemon
        .post("/v1/tenants", Some(ADMIN), Some(json!({ "id": id })))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("wd_"));
    token
}

async fn create_session(daemon: &Daemon, token: &str, body: Value) -> Value {
    let r = daemon.post("/v1/sessions", Some(token), Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn ids(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_only_see_their_own_sessions() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let ta = create_tenant(&daemon, "alpha").await;
    let tb = create_tenant(&daemon, "beta").await;
    let dup = daemon
        .post("/v1/tenants", Some(ADMIN), Some(json!({ "id": "alpha" })))
        .await;
    assert_eq!(dup.status, 409);

    let a1 = create_session(&daemon, &ta, json!({ "id": "a-1", "start": false })).await;
    assert_eq!(a1["tenant"], "alpha");
    create_session(&daemon, &tb, json!({ "id": "b-1", "start": false })).await;
    create_session(
        &daemon,
        ADMIN,
        json!({ "id": "b-2", "tenant": "beta", "start": false }),
    )
    .await;
    let unknown = daemon
        .post(
            "/v1/sessions",
            Some(ADMIN),
            Some(json!({ "tenant": "gamma", "start": false })),
        )
        .await;
    assert_eq!(unknown.status, 422);
    assert_eq!(unknown.error_code(), "unknown_tenant");

    // REST: B's sessions do not exist for A.
    for (method, path) in [
        ("GET", "/v1/sessions/b-1"),
        ("GET", "/v1/sessions/b-1/qr"),
        ("POST", "/v1/sessions/b-1/start"),
        ("POST", "/v1/sessions/b-1/stop"),
        ("POST", "/v1/sessions/b-1/reset"),
        ("POST", "/v1/sessions/b-1/logout"),
        ("DELETE", "/v1/sessions/b-1"),
        ("GET", "/v1/tenants/beta"),
        ("POST", "/v1/tenants/beta/token"),
    ] {
        let r = common::request(daemon.addr, method, path, Some(&ta), None).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        assert_eq!(r.error_code(), "not_found");
    }
    let list = daemon.get("/v1/sessions", Some(&ta)).await;
    assert_eq!(ids(&list.json()), ["a-1"]);
    assert_eq!(
        daemon
            .get("/v1/sessions?tenant=beta", Some(&ta))
            .await
            .status,
        403
    );
    let all = daemon.get("/v1/sessions", Some(ADMIN)).await.json();
    assert_eq!(ids(&all).len(), 3);
    assert_eq!(
        ids(&daemon
            .get("/v1/sessions?tenant=beta", Some(ADMIN))
            .await
            .json()),
        ["b-1", "b-2"]
    );
    let tenants = daemon.get("/v1/tenants", Some(&ta)).await.json();
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(
        daemon.get("/v1/tenants/alpha", Some(&ta)).await.json()["sessions"],
        1
    );
    // Tenant tokens cannot do admin things.
    let r = daemon
        .post("/v1/tenants", Some(&ta), Some(json!({ "id": "evil" })))
        .await;
    assert_eq!(r.status, 403);
    let r = daemon
        .post(
            "/v1/sessions",
            Some(&ta),
            Some(json!({ "tenant": "beta", "start": false })),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        daemon.delete("/v1/tenants/beta", Some(&ta)).await.status,
        403
    );
    // A tenant with sessions cannot be deleted.
    let r = daemon.delete("/v1/tenants/beta", Some(ADMIN)).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "tenant_not_empty");

    // WebSocket: A cannot follow B.
    let (status, body) = ws_connect(daemon.addr, "/v1/events?session=b-1", Some(&ta))
        .await
        .expect_err("refused");
    assert_eq!(status, 404, "{body}");
    let (status, _) = ws_connect(daemon.addr, "/v1/events?tenant=beta", Some(&ta))
        .await
        .expect_err("refused");
    assert_eq!(status, 403);

    // A's own socket shows only A's sessions, in the snapshot and after.
    let mut ws = ws_connect(daemon.addr, "/v1/events", Some(&ta))
        .await
        .expect("own socket");
    let snapshot = next_json(&mut ws, 10).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(ids(&snapshot), ["a-1"]);
    assert_eq!(
        daemon
            .post("/v1/sessions/b-1/start", Some(&tb), None)
            .await
            .status,
        200
    );
    assert_eq!(
        daemon
            .post("/v1/sessions/a-1/start", Some(&ta), None)
            .await
            .status,
        200
    );
    let first = next_json(&mut ws, 30).await;
    assert_eq!(first["session"], "a-1", "only A's events: {first}");
    assert_eq!(first["tenant"], "alpha");

    // Rotation: the old token stops working at once.
    let rotated = daemon
        .post("/v1/tenants/alpha/token", Some(ADMIN), None)
        .await;
    assert_eq!(rotated.status, 200);
    let new_token = rotated.json()["token"].as_str().unwrap().to_string();
    assert_ne!(new_token, ta);
    assert_eq!(daemon.get("/v1/sessions", Some(&ta)).await.status, 401);
    assert_eq!(
        daemon
            .get("/v1/sessions/a-1", Some(&new_token))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_work_once_and_expire() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = Options {
        extra_toml: "[auth]\nticket_ttl = \"1s\"\n".into(),
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let ta = create_tenant(&daemon, "alpha").await;
    create_session(&daemon, &ta, json!({ "id": "a-1", "start": false })).await;
    create_session(&daemon, ADMIN, json!({ "id": "other", "start": false })).await;

    let issued = daemon.post("/v1/ws-tickets", Some(&ta), None).await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    let ticket = issued.json()["ticket"].as_str().unwrap().to_string();
    assert!(issued.json()["expires_at"].is_string());
    // A ticket is no bearer token.
    assert_eq!(daemon.get("/v1/sessions", Some(&ticket)).await.status, 401);
    // Once: the ticket carries the tenant's scope.
    let mut ws = ws_connect(daemon.addr, &format!("/v1/events?ticket={ticket}"), None)
        .await
        .expect("ticket works");
    let snapshot = next_json(&mut ws, 10).await;
    assert_eq!(ids(&snapshot), ["a-1"]);
    // Twice: refused.
    let (status, body) = ws_connect(daemon.addr, &format!("/v1/events?ticket={ticket}"), None)
        .await
        .expect_err("a spent ticket is refused");
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    // A tenant's ticket cannot reach another tenant's session.
    let t2 = daemon.post("/v1/ws-tickets", Some(&ta), None).await.json()["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = ws_connect(
        daemon.addr,
        &format!("/v1/events?ticket={t2}&session=other"),
        None,
    )
    .await
    .expect_err("refused");
    assert_eq!(status, 404);
    // Expired: issue one, let its 1 s lifetime pass, then try.
    let t3 = daemon.post("/v1/ws-tickets", Some(&ta), None).await.json()["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = ws_connect(daemon.addr, &format!("/v1/events?ticket={t3}"), None)
        .await
        .expect_err("an expired ticket is refused");
    assert_eq!(status, 401);
    // Long-lived tokens never go in URLs.
    let (status, body) = ws_connect(daemon.addr, &format!("/v1/events?token={ta}"), None)
        .await
        .expect_err("refused");
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "token_in_url");
    assert!(!daemon.log().contains(&ta), "tokens never reach the log");
    assert!(
        !daemon.log().contains(&ticket),
        "tickets never reach the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_address_are_slowed_down() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = Options {
        extra_toml:
            "[auth]\nfailure_limit = 3\nfailure_window = \"1m\"\nmax_sockets_per_token = 2\n".into(),
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;

    // At most N sockets per token.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            ws_connect(daemon.addr, "/v1/events", Some(ADMIN))
                .await
                .expect("within the cap"),
        );
    }
    let (status, body) = ws_connect(daemon.addr, "/v1/events", Some(ADMIN))
        .await
        .expect_err("over the cap");
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_sockets");
    drop(held);

    for _ in 0..3 {
        assert_eq!(
            daemon.get("/v1/sessions", Some("wrong-token")).await.status,
            401
        );
    }
    let slowed = daemon.get("/v1/sessions", Some(ADMIN)).await;
    assert_eq!(slowed.status, 429, "{}", slowed.text());
    assert_eq!(slowed.error_code(), "too_many_auth_failures");
    assert!(slowed.header("retry-after").is_some());
    // Unauthenticated probes still work.
    assert_eq!(daemon.get("/healthz", None).await.status, 200);
}
