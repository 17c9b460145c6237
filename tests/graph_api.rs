//! The Graph-API-compatible send endpoint against fakewa:
//! `POST /graph/{version}/{phone_number_id}/messages` with a tenant token
//! sends a text that the contact receives (by phone and by the user id a
//! `cloud_api` webhook gave), answers Meta's response shape, and refuses
//! with Meta's error shape: a wrong token, a foreign session (exactly like
//! an unknown one), a bad body, a type whatsd does not send yet.

mod common;

use std::time::Duration;

use common::{ADMIN, Daemon, control, create_tenant, pair, request, webhook_receiver};
use serde_json::{Value, json};

const PHONE: &str = "15551230001";
const ADA: &str = "15557770001";

async fn graph(daemon: &Daemon, path: &str, token: Option<&str>, body: &Value) -> common::Response {
    let body = body.to_string().into_bytes();
    request(
        daemon.addr,
        "POST",
        path,
        token,
        Some(("application/json", body)),
    )
    .await
}

/// What fakewa's phone `PHONE` received with id `id`, waiting (bounded).
async fn sent_to_fake(fake: &fakewa::FakeWa, id: &str) -> fakewa::OutboxEntry {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(entry) = fake
            .server
            .outbox(Some(PHONE))
            .into_iter()
            .find(|m| m.id == id)
        {
            return entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fakewa never received {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn text(to_key: &str, to: &str, body: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        to_key: to,
        "type": "text",
        "text": { "preview_url": false, "body": body },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sends_through_the_graph_endpoint() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start_with_local_webhooks(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;

    // By phone number, as Meta's request body has it.
    let sent = graph(
        &daemon,
        "/graph/v23.0/shop-1/messages",
        Some(&token),
        &text("to", "+1 555 777 0001", "hello from the graph API"),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let answer = sent.json();
    let id = answer["messages"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        answer,
        json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": "+1 555 777 0001", "wa_id": ADA }],
            "messages": [{ "id": id }],
        })
    );
    let entry = sent_to_fake(&fake, &id).await;
    assert_eq!(entry.text.as_deref(), Some("hello from the graph API"));
    assert!(entry.to.starts_with(ADA), "{entry:?}");

    // By the user id a cloud_api webhook gave for the contact.
    let (url, bodies) = webhook_receiver().await;
    let put = request(
        daemon.addr,
        "PUT",
        "/v1/tenants/acme/webhooks/cloud",
        Some(&token),
        Some((
            "application/json",
            json!({ "url": url, "secret": "cloud-secret-0123456789", "format": "cloud_api" })
                .to_string()
                .into_bytes(),
        )),
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text());
    let incoming = control(
        fake.control_addr(),
        "/control/messages",
        json!({ "to_phone": PHONE, "from_phone": ADA, "text": "hi shop" }),
    )
    .await;
    assert_eq!(incoming.status, 200, "{}", incoming.text());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let user_id = loop {
        let found = bodies.lock().unwrap().iter().find_map(|b| {
            let value = &b["entry"][0]["changes"][0]["value"];
            (value["messages"][0]["text"]["body"] == "hi shop")
                .then(|| value["contacts"][0]["user_id"].as_str().map(str::to_string))
                .flatten()
        });
        if let Some(user_id) = found {
            break user_id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cloud_api delivery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(user_id.starts_with("ZZ."), "{user_id}");
    let reply = graph(
        &daemon,
        "/graph/v21.0/shop-1/messages",
        Some(&token),
        &text("recipient", &user_id, "a reply by user id"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply_id = reply.json()["messages"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        reply.json()["contacts"],
        json!([{ "input": user_id, "user_id": user_id }])
    );
    let entry = sent_to_fake(&fake, &reply_id).await;
    assert_eq!(entry.text.as_deref(), Some("a reply by user id"));
    assert!(entry.to.starts_with(ADA), "{entry:?}");

    // The admin token works too.
    let by_admin = graph(
        &daemon,
        "/graph/v23.0/shop-1/messages",
        Some(ADMIN),
        &text("to", ADA, "from the admin"),
    )
    .await;
    assert_eq!(by_admin.status, 200, "{}", by_admin.text());
}

/// The error object without its per-answer trace id.
fn error_of(response: &common::Response) -> Value {
    let mut body = response.json();
    let error = body["error"].as_object_mut().expect("Meta's error object");
    let trace = error.remove("fbtrace_id").expect("fbtrace_id");
    assert!(!trace.as_str().unwrap().is_empty());
    Value::Object(error.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_come_in_meta_shape() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let acme = create_tenant(&daemon, "acme").await;
    let other = create_tenant(&daemon, "other").await;
    let created = daemon
        .post(
            "/v1/sessions",
            Some(ADMIN),
            Some(json!({ "id": "shop-1", "tenant": "acme", "start": false })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let ok = text("to", ADA, "hello");
    let path = "/graph/v23.0/shop-1/messages";

    for token in [None, Some("wd_not-a-token")] {
        let refused = graph(&daemon, path, token, &ok).await;
        assert_eq!(refused.status, 401, "{}", refused.text());
        let error = error_of(&refused);
        assert_eq!(error["code"], 190);
        assert_eq!(error["type"], "OAuthException");
    }

    // Another tenant's session is refused exactly like one that does not exist.
    let foreign = graph(&daemon, path, Some(&other), &ok).await;
    let unknown = graph(&daemon, "/graph/v23.0/shop-9/messages", Some(&other), &ok).await;
    assert_eq!(foreign.status, 400, "{}", foreign.text());
    assert_eq!(unknown.status, 400, "{}", unknown.text());
    let foreign = error_of(&foreign);
    assert_eq!(foreign["code"], 100);
    assert_eq!(foreign["error_subcode"], 33);
    assert_eq!(foreign["type"], "GraphMethodException");
    let unknown = error_of(&unknown).to_string().replace("shop-9", "shop-1");
    assert_eq!(foreign.to_string(), unknown);
    let malformed = graph(&daemon, "/graph/v23.0/SHOP%201/messages", Some(&acme), &ok).await;
    assert_eq!(error_of(&malformed)["error_subcode"], 33);

    let bad_version = graph(&daemon, "/graph/latest/shop-1/messages", Some(&acme), &ok).await;
    assert_eq!(bad_version.status, 400);
    assert_eq!(error_of(&bad_version)["code"], 2500);

    // Bad bodies: 400 with the Cloud API's codes and the details.
    let cases = [
        (
            json!({ "messaging_product": "whatsapp", "to": ADA, "type": "text", "text": {} }),
            131_008,
            "text.body",
        ),
        (
            json!({ "messaging_product": "whatsapp", "to": ADA, "type": "text" }),
            131_008,
            "text is required",
        ),
        (
            json!({ "to": ADA, "type": "text", "text": { "body": "x" } }),
            131_008,
            "messaging_product",
        ),
        (
            json!({ "messaging_product": "whatsapp", "type": "text", "text": { "body": "x" } }),
            131_008,
            "to",
        ),
        (
            json!({ "messaging_product": "whatsapp", "to": "12", "text": { "body": "x" } }),
            131_009,
            "phone",
        ),
        (
            json!({ "messaging_product": "whatsapp", "recipient": "ZZ.123", "text": { "body": "x" } }),
            131_009,
            "recipient",
        ),
        (
            json!({ "messaging_product": "whatsapp", "to": ADA, "text": { "body": "" } }),
            131_009,
            "empty",
        ),
        (
            json!({ "messaging_product": "sms", "to": ADA, "text": { "body": "x" } }),
            131_009,
            "whatsapp",
        ),
        (
            json!({ "messaging_product": "whatsapp", "to": ADA, "type": "image", "image": { "id": "1" } }),
            131_009,
            "no media",
        ),
        (
            json!({ "messaging_product": "whatsapp", "to": ADA, "type": "location", "location": {} }),
            131_051,
            "location",
        ),
        (
            json!({ "messaging_product": "whatsapp", "to": ADA, "type": "bogus" }),
            131_009,
            "bogus",
        ),
        (
            json!({ "messaging_product": "whatsapp", "to": ADA, "text": { "body": "x" }, "context": "m" }),
            131_009,
            "context",
        ),
    ];
    for (body, code, detail) in cases {
        let refused = graph(&daemon, path, Some(&acme), &body).await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.text());
        let error = error_of(&refused);
        assert_eq!(error["code"], code, "{body}: {error}");
        assert_eq!(error["type"], "OAuthException");
        assert_eq!(
            error["message"],
            format!(
                "(#{code}) {}",
                match code {
                    131_008 => "Required parameter is missing",
                    131_009 => "Parameter value is not valid",
                    _ => "Unsupported message type",
                }
            )
        );
        let details = error["error_data"]["details"].as_str().unwrap();
        assert!(details.contains(detail), "{body}: {details}");
    }
    let not_json = request(
        daemon.addr,
        "POST",
        path,
        Some(&acme),
        Some(("application/json", b"{".to_vec())),
    )
    .await;
    assert_eq!(not_json.status, 400);
    assert_eq!(error_of(&not_json)["code"], 100);

    // A well-formed request to a session that is not connected.
    let offline = graph(&daemon, path, Some(&acme), &ok).await;
    assert_eq!(offline.status, 503, "{}", offline.text());
    assert_eq!(error_of(&offline)["code"], 131_016);
}
