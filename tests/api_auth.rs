//! Authentication and tenant isolation: tenant tokens see only their own
//! sessions on REST and WebSocket, tickets work once and expire, rotated
//! tokens stop working, and repeated failures from one address are slowed.

mod common;

use std::time::Duration;

use common::{
    ADMIN, Daemon, Options, close_code, create_tenant as new_tenant, issue_ticket, next_json,
    next_message, request_with_headers, wait_event, ws_connect,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

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
    let slowed = daemon.get("/v1/sessions", Some("wrong-token")).await;
    assert_eq!(slowed.status, 429, "{}", slowed.text());
    assert_eq!(slowed.error_code(), "too_many_auth_failures");
    assert!(slowed.header("retry-after").is_some());
    // Only failures are throttled: the real token still works.
    assert_eq!(daemon.get("/v1/sessions", Some(ADMIN)).await.status, 200);
    // Unauthenticated probes still work.
    assert_eq!(daemon.get("/healthz", None).await.status, 200);
}

/// Finding 6: a flood of bad tokens from one address (all clients behind a
/// TLS proxy share one) must not lock out valid tokens; behind a trusted
/// proxy the client address comes from `X-Forwarded-For`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_auth_throttle_never_locks_out_valid_tokens() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = Options {
        extra_toml: "[api]\ntrusted_proxies = [\"127.0.0.1/32\"]\n".into(),
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let tenant = new_tenant(&daemon, "alpha").await;

    // 30 bad tokens from one client: 401 up to the limit (10), then 429.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(daemon.get("/v1/sessions", Some("wd_wrong")).await.status);
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    // Valid tokens from the same address are served.
    assert_eq!(daemon.get("/v1/sessions", Some(ADMIN)).await.status, 200);
    assert_eq!(daemon.get("/v1/sessions", Some(&tenant)).await.status, 200);
    let ticket = issue_ticket(&daemon, &tenant).await;
    assert_eq!(ticket.status, 201, "{}", ticket.text());
    let mut ws = ws_connect(daemon.addr, "/v1/events", Some(ADMIN))
        .await
        .expect("a valid token opens a socket while its address is throttled");
    assert_eq!(next_json(&mut ws, 10).await["type"], "snapshot");

    // Behind the (trusted) proxy: each forwarded client has its own budget.
    // GET /v1/sessions with `token`, forwarded for `client`.
    let get_via = |token: &'static str, client: &'static str| {
        let headers = [("X-Forwarded-For", client)];
        let addr = daemon.addr;
        async move { request_with_headers(addr, "GET", "/v1/sessions", Some(token), &headers).await }
    };
    for _ in 0..10 {
        let r = get_via("wd_wrong", "203.0.113.7").await;
        assert_eq!(r.status, 401);
    }
    let r = get_via("wd_wrong", "203.0.113.7").await;
    assert_eq!(r.status, 429);
    let r = get_via("wd_wrong", "203.0.113.8").await;
    assert_eq!(
        r.status, 401,
        "another client behind the proxy is not throttled"
    );
    // The client chooses only what is left of the proxy's own entry.
    let r = request_with_headers(
        daemon.addr,
        "GET",
        "/v1/sessions",
        Some("wd_wrong"),
        &[("X-Forwarded-For", "198.51.100.1, 203.0.113.7")],
    )
    .await;
    assert_eq!(r.status, 429, "a spoofed leftmost entry does not escape");
    let r = get_via(ADMIN, "203.0.113.7").await;
    assert_eq!(r.status, 200, "a valid token behind the proxy is served");
}

/// Finding 3: rotating a tenant's token or deleting the tenant closes its
/// open sockets (4401) and voids the tickets it was issued before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_deletion_close_sockets_and_void_tickets() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let alpha = new_tenant(&daemon, "alpha").await;
    create_session(&daemon, &alpha, json!({ "id": "a-1", "start": false })).await;

    let ticket = |r: common::Response| {
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["ticket"].as_str().unwrap().to_string()
    };
    let mut by_token = ws_connect(daemon.addr, "/v1/events", Some(&alpha))
        .await
        .expect("socket opens");
    let t1 = ticket(issue_ticket(&daemon, &alpha).await);
    let mut by_ticket = ws_connect(daemon.addr, &format!("/v1/events?ticket={t1}"), None)
        .await
        .expect("ticket works");
    for ws in [&mut by_token, &mut by_ticket] {
        assert_eq!(ids(&next_json(ws, 10).await), ["a-1"], "positive control");
    }
    let unused = ticket(issue_ticket(&daemon, &alpha).await);
    // The admin's socket must stay open through all of this.
    let mut admin = ws_connect(daemon.addr, "/v1/events", Some(ADMIN))
        .await
        .expect("admin socket");
    next_json(&mut admin, 10).await;

    let started = std::time::Instant::now();
    let rotated = daemon
        .post("/v1/tenants/alpha/token", Some(ADMIN), None)
        .await;
    assert_eq!(rotated.status, 200);
    for ws in [&mut by_token, &mut by_ticket] {
        assert_eq!(close_code(ws, 1).await, Some(4401));
    }
    println!(
        "sockets closed {:?} after the rotation was asked for",
        started.elapsed()
    );
    let (status, body) = ws_connect(daemon.addr, &format!("/v1/events?ticket={unused}"), None)
        .await
        .expect_err("a ticket issued before the rotation is refused");
    assert_eq!(status, 401, "{body}");
    let new_token = rotated.json()["token"].as_str().unwrap().to_string();
    let fresh = ticket(issue_ticket(&daemon, &new_token).await);
    let mut ws = ws_connect(daemon.addr, &format!("/v1/events?ticket={fresh}"), None)
        .await
        .expect("the new token's tickets work");
    assert_eq!(next_json(&mut ws, 10).await["type"], "snapshot");

    // Deleting a tenant: same for its sockets and tickets.
    let beta = new_tenant(&daemon, "beta").await;
    let mut beta_ws = ws_connect(daemon.addr, "/v1/events", Some(&beta))
        .await
        .expect("beta socket");
    next_json(&mut beta_ws, 10).await;
    let beta_ticket = ticket(issue_ticket(&daemon, &beta).await);
    let started = std::time::Instant::now();
    assert_eq!(
        daemon.delete("/v1/tenants/beta", Some(ADMIN)).await.status,
        204
    );
    assert_eq!(close_code(&mut beta_ws, 1).await, Some(4401));
    println!(
        "socket closed {:?} after the deletion was asked for",
        started.elapsed()
    );
    // Re-created under the same id: the old ticket stays void.
    new_tenant(&daemon, "beta").await;
    let (status, _) = ws_connect(
        daemon.addr,
        &format!("/v1/events?ticket={beta_ticket}"),
        None,
    )
    .await
    .expect_err("a deleted tenant's ticket is refused");
    assert_eq!(status, 401);
    // Other principals' sockets were left alone.
    daemon
        .post("/v1/sessions/a-1/start", Some(&new_token), None)
        .await;
    let frame = wait_event(&mut admin, "session.qr", 30).await;
    assert_eq!(frame["session"], "a-1");
}

/// Finding 2: a socket following `?session=ID` must never get frames of
/// another tenant's session that reuses the id after a delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_session_id_sends_nothing_to_the_old_owners_socket() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let evil = new_tenant(&daemon, "evil").await;
    let victim = new_tenant(&daemon, "victim").await;
    create_session(&daemon, &evil, json!({ "id": "shared", "start": false })).await;
    let mut evil_ws = ws_connect(daemon.addr, "/v1/events?session=shared", Some(&evil))
        .await
        .expect("own session");
    let mut evil_tenant_ws = ws_connect(daemon.addr, "/v1/events", Some(&evil))
        .await
        .expect("own tenant");
    assert_eq!(next_json(&mut evil_ws, 10).await["type"], "snapshot");
    assert_eq!(next_json(&mut evil_tenant_ws, 10).await["type"], "snapshot");
    // Positive control: evil's sockets get evil's own frames.
    daemon
        .post("/v1/sessions/shared/start", Some(&evil), None)
        .await;
    for ws in [&mut evil_ws, &mut evil_tenant_ws] {
        let qr = wait_event(ws, "session.qr", 30).await;
        assert_eq!(qr["tenant"], "evil");
    }
    assert_eq!(
        daemon
            .delete("/v1/sessions/shared", Some(&evil))
            .await
            .status,
        204
    );

    // The victim re-creates the id; a witness socket sees its QR.
    let mut witness = ws_connect(daemon.addr, "/v1/events", Some(&victim))
        .await
        .expect("victim socket");
    next_json(&mut witness, 10).await;
    create_session(&daemon, &victim, json!({ "id": "shared", "start": true })).await;
    let qr = wait_event(&mut witness, "session.qr", 30).await;
    assert_eq!(qr["tenant"], "victim");
    // Then one more of the victim's events, so evil's sockets have had
    // every chance to leak.
    daemon
        .post("/v1/sessions/shared/stop", Some(&victim), None)
        .await;
    wait_event(&mut witness, "session.state", 30).await;

    for (name, ws) in [
        ("session socket", &mut evil_ws),
        ("tenant socket", &mut evil_tenant_ws),
    ] {
        loop {
            match next_message(ws, std::time::Duration::from_secs(2)).await {
                Some(Some(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(frame["tenant"], "evil", "{name} leaked: {frame}");
                }
                Some(Some(Message::Close(frame))) => {
                    assert_eq!(name, "session socket", "{frame:?}");
                    assert_eq!(frame.map(|f| u16::from(f.code)), Some(4404));
                    break;
                }
                Some(Some(_)) => {}
                // The session socket must have been told its session is
                // gone; the tenant socket just stays silent.
                None | Some(None) => {
                    assert_eq!(name, "tenant socket", "no 4404 close");
                    break;
                }
            }
        }
    }
}

/// Finding 7: at most `auth.max_tickets_per_principal` unused tickets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outstanding_tickets_are_capped_per_principal() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = Options {
        extra_toml: "[auth]\nmax_tickets_per_principal = 3\n".into(),
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let alpha = new_tenant(&daemon, "alpha").await;
    let mut tickets = Vec::new();
    for _ in 0..3 {
        let r = issue_ticket(&daemon, &alpha).await;
        assert_eq!(r.status, 201, "{}", r.text());
        tickets.push(r.json()["ticket"].as_str().unwrap().to_string());
    }
    let over = issue_ticket(&daemon, &alpha).await;
    assert_eq!(over.status, 429, "{}", over.text());
    assert_eq!(over.error_code(), "too_many_tickets");
    assert!(over.header("retry-after").is_some());
    assert_eq!(
        issue_ticket(&daemon, ADMIN).await.status,
        201,
        "per principal"
    );
    // Spending one frees a slot.
    let _ws = ws_connect(
        daemon.addr,
        &format!("/v1/events?ticket={}", tickets[0]),
        None,
    )
    .await
    .expect("ticket works");
    assert_eq!(issue_ticket(&daemon, &alpha).await.status, 201);
}
