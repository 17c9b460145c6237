//! Rate limits against fakewa, without waiting for real minutes: the
//! daemon's limit clock is moved through the `limits.clock_skew_file` fault
//! (debug builds). A limit of 5 a minute lets 5 of 12 queued sends out and
//! keeps the rest queued until tokens come back; a synchronous send (REST
//! and Graph) over the limit is refused 429 with `Retry-After` and
//! `RateLimit-*`; pairing attempts are limited too; a session's own limits
//! survive a restart, stay with their tenant and are not inherited by a
//! session or tenant created again with the same id.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ADMIN, Daemon, Options, create_tenant, pair, request};
use serde_json::{Value, json};

const PHONE: &str = "15551260001";
const ADA: &str = "15557800001";

/// Waits (bounded) until `probe` holds.
async fn until(what: &str, secs: u64, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !probe().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn received(fake: &fakewa::FakeWa) -> Vec<String> {
    fake.server
        .outbox(Some(PHONE))
        .into_iter()
        .filter(|m| m.to.starts_with(ADA))
        .map(|m| m.text.unwrap_or_default())
        .collect()
}

async fn limits(daemon: &Daemon, id: &str, token: &str) -> common::Response {
    daemon
        .get(&format!("/v1/sessions/{id}/limits"), Some(token))
        .await
}

fn bucket(view: &Value, name: &str) -> Value {
    view["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no bucket {name}: {view}"))
        .clone()
}

async fn put_as(daemon: &Daemon, path: &str, token: &str, body: Value) -> common::Response {
    let body = ("application/json", body.to_string().into_bytes());
    request(daemon.addr, "PUT", path, Some(token), Some(body)).await
}

/// Moves the daemon's limit clock `ms` ahead of real time.
fn skew(file: &Path, ms: i64) {
    std::fs::write(file, ms.to_string()).expect("write the clock skew");
}

fn assert_rate_limited(r: &common::Response, limit: &str) {
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-limit"), Some(limit));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let reset: u64 = r
        .header("ratelimit-reset")
        .expect("RateLimit-Reset")
        .parse()
        .unwrap();
    assert!(reset >= retry, "reset {reset} < retry {retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_sends_wait_for_tokens_and_sync_sends_are_refused() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let clock = tempfile::tempdir().unwrap();
    let skew_file = clock.path().join("skew");
    skew(&skew_file, 0);
    let options = Options {
        extra_toml: "[limits]\nsends_per_minute = 5\n".into(),
        env: vec![(
            "WHATSD_FAULTS".into(),
            format!("limits.clock_skew_file={}", skew_file.display()),
        )],
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let token = create_tenant(&daemon, "acme").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;

    let fresh = limits(&daemon, "shop-1", &token).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    let minute = bucket(&fresh.json(), "sends_per_minute");
    assert_eq!(
        (minute["limit"].as_u64(), minute["remaining"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(minute["window_seconds"], 60);
    assert_eq!(bucket(&fresh.json(), "sends_per_day")["limit"], 1000);

    // Twelve queued while stopped; started, five go out and seven wait.
    let stopped = daemon
        .post("/v1/sessions/shop-1/stop", Some(ADMIN), None)
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    daemon.wait_state("shop-1", "stopped", 10).await;
    let texts: Vec<String> = (1..=12).map(|i| format!("limited {i}")).collect();
    let mut ids = Vec::new();
    for text in &texts {
        let queued = daemon
            .post(
                "/v1/sessions/shop-1/messages",
                Some(&token),
                Some(json!({ "to": ADA, "text": text })),
            )
            .await;
        assert_eq!(queued.status, 202, "{}", queued.text());
        ids.push(queued.json()["id"].as_str().unwrap().to_string());
    }
    let started = daemon
        .post("/v1/sessions/shop-1/start", Some(ADMIN), None)
        .await;
    assert_eq!(started.status, 200, "{}", started.text());
    until("5 sends reach fakewa", 30, async || {
        received(&fake).len() >= 5
    })
    .await;
    let view = limits(&daemon, "shop-1", &token).await.json();
    let minute = bucket(&view, "sends_per_minute");
    assert_eq!(minute["remaining"], 0, "{view}");
    assert!(
        minute["next_token_seconds"].as_u64().unwrap() >= 1,
        "{view}"
    );
    assert_eq!(bucket(&view, "sends_per_hour")["remaining"], 195, "{view}");
    assert_eq!(received(&fake), texts[..5], "exactly five, in order");
    for id in &ids[5..] {
        let s = daemon
            .get(&format!("/v1/sessions/shop-1/messages/{id}"), Some(&token))
            .await;
        assert_eq!(s.json()["status"], "queued", "{}", s.text());
    }

    // Synchronous sends do not wait: 429 with the headers, REST and Graph.
    let sync = daemon
        .post(
            "/v1/sessions/shop-1/messages?wait=sent",
            Some(&token),
            Some(json!({ "to": ADA, "text": "now" })),
        )
        .await;
    assert_rate_limited(&sync, "5");
    assert_eq!(sync.json()["error"]["code"], "rate_limited");
    assert!(
        sync.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sends_per_minute"),
        "{}",
        sync.text()
    );
    let graph_body = json!({
        "messaging_product": "whatsapp",
        "to": ADA,
        "type": "text",
        "text": { "body": "via graph" },
    });
    let graph = request(
        daemon.addr,
        "POST",
        "/graph/v23.0/shop-1/messages",
        Some(&token),
        Some(("application/json", graph_body.to_string().into_bytes())),
    )
    .await;
    assert_rate_limited(&graph, "5");
    assert_eq!(graph.json()["error"]["code"], 130429, "{}", graph.text());

    // Ten minutes on: the bucket is full again, five more leave; twenty: the rest.
    skew(&skew_file, 10 * 60_000);
    assert_eq!(limits(&daemon, "shop-1", &token).await.status, 200);
    until("10 sends reach fakewa", 30, async || {
        received(&fake).len() >= 10
    })
    .await;
    assert_eq!(received(&fake), texts[..10]);
    skew(&skew_file, 20 * 60_000);
    assert_eq!(limits(&daemon, "shop-1", &token).await.status, 200);
    until("12 sends reach fakewa", 30, async || {
        received(&fake).len() >= 12
    })
    .await;
    assert_eq!(received(&fake), texts);

    // A higher limit set for the session takes effect at once.
    let raised = daemon
        .put(
            "/v1/sessions/shop-1/limits",
            json!({ "sends_per_minute": 50 }),
        )
        .await;
    assert_eq!(raised.status, 200, "{}", raised.text());
    assert_eq!(bucket(&raised.json(), "sends_per_minute")["limit"], 50);
    let sync = daemon
        .post(
            "/v1/sessions/shop-1/messages?wait=sent",
            Some(&token),
            Some(json!({ "to": ADA, "text": "now" })),
        )
        .await;
    assert_eq!(sync.status, 200, "{}", sync.text());

    let metrics = daemon.get("/metrics", Some(ADMIN)).await.text();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "whatsd_rate_limited_total{bucket=\"sends_per_minute\",outcome=\"refused\"} "
        ) && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(!metrics.contains("shop-1"), "no per-session labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_pacing_still_sends_the_queue_in_order() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    pair(&daemon, &fake, "paced", None, PHONE).await;
    let set = daemon
        .put("/v1/sessions/paced/limits", json!({ "human_pacing": true }))
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["limits"]["human_pacing"], true);
    assert_eq!(set.json()["tenant_limits"]["human_pacing"], false);
    let texts = ["paced 1", "paced 2", "paced 3"];
    for text in texts {
        let queued = daemon
            .post(
                "/v1/sessions/paced/messages",
                Some(ADMIN),
                Some(json!({ "to": ADA, "text": text })),
            )
            .await;
        assert_eq!(queued.status, 202, "{}", queued.text());
    }
    // Up to 3 s of typing and 2 s of gap each.
    until("the paced sends reach fakewa", 30, async || {
        received(&fake).len() >= 3
    })
    .await;
    assert_eq!(received(&fake), texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_attempts_are_limited() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let created = daemon
        .post(
            "/v1/sessions",
            Some(ADMIN),
            Some(json!({ "id": "pairs", "start": false })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let set = daemon
        .put(
            "/v1/sessions/pairs/limits",
            json!({ "qr_per_hour": 1, "resets_per_hour": 1 }),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());

    // One QR pairing an hour: the second start is refused.
    let first = daemon
        .post("/v1/sessions/pairs/start", Some(ADMIN), None)
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let stopped = daemon
        .post("/v1/sessions/pairs/stop", Some(ADMIN), None)
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    daemon.wait_state("pairs", "stopped", 10).await;
    let again = daemon
        .post("/v1/sessions/pairs/start", Some(ADMIN), None)
        .await;
    assert_rate_limited(&again, "1");
    assert_eq!(again.json()["error"]["code"], "rate_limited");
    assert_eq!(
        again
            .header("retry-after")
            .map(|s| s.parse::<u64>().unwrap() > 3000),
        Some(true)
    );

    // One reset an hour.
    let reset = daemon
        .post("/v1/sessions/pairs/reset", Some(ADMIN), None)
        .await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    let reset = daemon
        .post("/v1/sessions/pairs/reset", Some(ADMIN), None)
        .await;
    assert_rate_limited(&reset, "1");

    let view = limits(&daemon, "pairs", ADMIN).await.json();
    assert_eq!(bucket(&view, "qr_per_hour")["remaining"], 0, "{view}");
    assert_eq!(bucket(&view, "resets_per_hour")["remaining"], 0, "{view}");
    assert_eq!(
        bucket(&view, "pair_codes_per_hour")["remaining"],
        5,
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_persist_stay_with_their_owner_and_are_not_inherited() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, mut daemon) = Daemon::start(&fake.ws_url()).await;
    let acme = create_tenant(&daemon, "acme").await;
    let other = create_tenant(&daemon, "other").await;
    let created = daemon
        .post(
            "/v1/sessions",
            Some(ADMIN),
            Some(json!({ "id": "reuse", "tenant": "acme", "start": false })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());

    // Bad bodies: 422 with a clear message, nothing stored.
    for bad in [
        json!({ "sends_per_minute": 0 }),
        json!({ "sends_per_day": 1_000_001 }),
        json!({ "sends_per_day": -1 }),
        json!({ "sends_per_day": 1.5 }),
        json!({ "sends_per_dya": 3 }),
        json!({ "human_pacing": "yes" }),
        json!("x"),
        json!([1]),
    ] {
        let r = daemon.put("/v1/sessions/reuse/limits", bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text());
        assert!(!r.error_code().is_empty());
    }
    let r = daemon
        .put(
            "/v1/sessions/reuse/limits",
            json!({ "sends_per_minute": 0 }),
        )
        .await;
    assert_eq!(r.error_code(), "invalid_limits");
    assert!(r.text().contains("sends_per_minute"), "{}", r.text());

    // A whole number written as a float is a whole number.
    let r = daemon
        .put(
            "/v1/sessions/reuse/limits",
            json!({ "sends_per_hour": 150.0 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limits"]["sends_per_hour"], 150);

    // The admin sets the session's limits; they survive a restart.
    let set = daemon
        .put(
            "/v1/sessions/reuse/limits",
            json!({ "sends_per_minute": 30, "sends_per_day": 40 }),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    daemon.terminate().await;
    daemon.restart().await;
    let view = limits(&daemon, "reuse", &acme).await;
    assert_eq!(view.status, 200, "{}", view.text());
    let view = view.json();
    assert_eq!(view["session_override"]["sends_per_day"], 40, "{view}");
    assert_eq!(view["limits"]["sends_per_minute"], 30, "{view}");
    assert_eq!(view["tenant_limits"]["sends_per_minute"], 20, "{view}");

    // Another tenant sees nothing and changes nothing.
    assert_eq!(limits(&daemon, "reuse", &other).await.status, 404);
    let r = put_as(
        &daemon,
        "/v1/sessions/reuse/limits",
        &other,
        json!({ "sends_per_day": 1 }),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    // The owner may lower its limits, not raise them above its tenant's.
    let r = put_as(
        &daemon,
        "/v1/sessions/reuse/limits",
        &acme,
        json!({ "sends_per_day": 5000 }),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = put_as(
        &daemon,
        "/v1/sessions/reuse/limits",
        &acme,
        json!({ "sends_per_day": 10 }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limits"]["sends_per_day"], 10);

    // Tenant limits: the admin sets them, the tenant reads its own only.
    let r = put_as(
        &daemon,
        "/v1/tenants/acme/limits",
        &acme,
        json!({ "sends_per_hour": 90 }),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = daemon
        .put("/v1/tenants/acme/limits", json!({ "sends_per_hour": 90 }))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limits"]["sends_per_hour"], 90);
    let r = daemon
        .put("/v1/tenants/acme/limits", json!({ "sends_per_hour": 0 }))
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        daemon
            .get("/v1/tenants/acme/limits", Some(&acme))
            .await
            .status,
        200
    );
    assert_eq!(
        daemon
            .get("/v1/tenants/acme/limits", Some(&other))
            .await
            .status,
        404
    );
    let view = limits(&daemon, "reuse", &acme).await.json();
    assert_eq!(view["limits"]["sends_per_hour"], 90, "{view}");
    assert_eq!(view["tenant_override"]["sends_per_hour"], 90, "{view}");

    // Moved to another tenant: its own limits stay behind with the old owner.
    let moved = request(
        daemon.addr,
        "PATCH",
        "/v1/sessions/reuse",
        Some(ADMIN),
        Some((
            "application/json",
            json!({ "tenant": "other" }).to_string().into_bytes(),
        )),
    )
    .await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    assert_eq!(limits(&daemon, "reuse", &acme).await.status, 404);
    let view = limits(&daemon, "reuse", &other).await.json();
    assert_eq!(view["session_override"], Value::Null, "{view}");
    assert_eq!(view["limits"]["sends_per_day"], 1000, "{view}");
    let r = put_as(
        &daemon,
        "/v1/sessions/reuse/limits",
        &other,
        json!({ "sends_per_day": 7 }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Deleted and created again by another tenant: the old limits stay behind.
    assert_eq!(
        daemon
            .delete("/v1/sessions/reuse", Some(ADMIN))
            .await
            .status,
        204
    );
    let again = daemon
        .post(
            "/v1/sessions",
            Some(&other),
            Some(json!({ "id": "reuse", "start": false })),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.text());
    let view = limits(&daemon, "reuse", &other).await.json();
    assert_eq!(view["session_override"], Value::Null, "{view}");
    assert_eq!(view["limits"]["sends_per_day"], 1000, "{view}");
    assert_eq!(view["limits"]["sends_per_hour"], 200, "{view}");

    // A tenant deleted and created again starts with the config's limits.
    assert_eq!(
        daemon.delete("/v1/tenants/acme", Some(ADMIN)).await.status,
        204
    );
    create_tenant(&daemon, "acme").await;
    let r = daemon
        .get("/v1/tenants/acme/limits", Some(ADMIN))
        .await
        .json();
    assert_eq!(r["override"], Value::Null, "{r}");
    assert_eq!(r["limits"]["sends_per_hour"], 200, "{r}");
}
