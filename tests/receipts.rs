//! Receipts for what a session sent, against fakewa: the contact's phone
//! confirms delivery by itself, and reads and plays on command. Each
//! becomes a `message.ack` event, in order, on the event socket and at the
//! tenant's webhooks in both formats (`cloud_api`: Meta's `statuses[]`).
//! A receipt that comes while the session is stopped waits at WhatsApp and
//! arrives after the restart.

mod common;

use common::{
    ADMIN, Daemon, control, create_tenant, next_json, pair, put_webhook, wait_for,
    webhook_receiver, ws_connect,
};
use serde_json::{Value, json};

const PHONE: &str = "15551240001";
const ADA: &str = "15557780001";

/// The statuses of message `id` in whatsd-format bodies, in arrival order.
fn whatsd_statuses(bodies: &[Value], id: &str) -> Vec<String> {
    bodies
        .iter()
        .filter(|b| b["data"]["id"] == id)
        .map(|b| match b["type"].as_str() {
            Some("message.sent") => "sent".to_string(),
            _ => b["data"]["status"].as_str().unwrap_or("?").to_string(),
        })
        .collect()
}

/// The statuses of message `id` in cloud_api bodies, in arrival order.
fn cloud_statuses(bodies: &[Value], id: &str) -> Vec<Value> {
    bodies
        .iter()
        .map(|b| &b["entry"][0]["changes"][0]["value"])
        .filter(|v| v["statuses"][0]["id"] == id)
        .cloned()
        .collect()
}

async fn receipt(fake: &fakewa::FakeWa, id: &str, status: &str) -> common::Response {
    control(
        fake.control_addr(),
        "/control/receipts",
        json!({ "to_phone": PHONE, "from_phone": ADA, "message_id": id, "status": status }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_become_message_ack_in_order_everywhere() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start_with_local_webhooks(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    let (whatsd_url, whatsd_bodies) = webhook_receiver().await;
    let (cloud_url, cloud_bodies) = webhook_receiver().await;
    put_webhook(&daemon, &token, "acme", "crm", &whatsd_url, "whatsd").await;
    put_webhook(&daemon, &token, "acme", "cloud", &cloud_url, "cloud_api").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    let mut ws = ws_connect(daemon.addr, "/v1/events?session=shop-1", Some(&token))
        .await
        .expect("socket opens");
    assert_eq!(next_json(&mut ws, 10).await["type"], "snapshot");

    let sent = daemon
        .post(
            "/v1/sessions/shop-1/messages",
            Some(&token),
            Some(json!({ "to": ADA, "text": "your order shipped" })),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.text());
    let id = sent.json()["id"].as_str().expect("id").to_string();

    // Delivered by itself, then read and played on command, one at a time
    // so that the order is the contact's.
    wait_for(&whatsd_bodies, "the delivery receipt", |b| {
        (whatsd_statuses(b, &id).len() == 2).then_some(())
    })
    .await;
    for (status, seen) in [("read", 3), ("played", 4)] {
        let r = receipt(&fake, &id, status).await;
        assert_eq!(r.status, 200, "{}", r.text());
        wait_for(&whatsd_bodies, status, |b| {
            (whatsd_statuses(b, &id).len() == seen).then_some(())
        })
        .await;
    }
    let bodies = whatsd_bodies.lock().unwrap().clone();
    assert_eq!(
        whatsd_statuses(&bodies, &id),
        ["sent", "delivered", "read", "played"]
    );
    let read = bodies
        .iter()
        .find(|b| b["type"] == "message.ack" && b["data"]["status"] == "read")
        .unwrap();
    assert_eq!(read["session"], "shop-1");
    assert_eq!(read["tenant"], "acme");
    assert_eq!(read["data"]["chat"], format!("{ADA}@s.whatsapp.net"));
    assert_eq!(read["data"]["recipient"]["phone"], ADA);
    assert_eq!(
        read["data"]["recipient"]["jid"],
        format!("{ADA}@s.whatsapp.net")
    );
    assert!(read["data"]["timestamp"].as_i64().unwrap() > 1_700_000_000);

    // The same four, as Meta's statuses.
    let cloud = wait_for(&cloud_bodies, "four cloud_api statuses", |b| {
        let s = cloud_statuses(b, &id);
        (s.len() == 4).then_some(s)
    })
    .await;
    let names: Vec<_> = cloud
        .iter()
        .map(|v| v["statuses"][0]["status"].clone())
        .collect();
    assert_eq!(names, ["sent", "delivered", "read", "played"]);
    for value in &cloud {
        let status = &value["statuses"][0];
        assert_eq!(status["recipient_id"], ADA, "{value}");
        let user_id = status["recipient_user_id"].as_str().unwrap();
        assert!(
            user_id.starts_with("ZZ.") && user_id.len() == 42,
            "{user_id}"
        );
        assert_eq!(
            value["contacts"],
            json!([{ "wa_id": ADA, "user_id": user_id }])
        );
        assert_eq!(value["metadata"]["phone_number_id"], "shop-1");
        assert!(
            status["timestamp"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap()
                > 1_700_000_000
        );
    }

    // The event socket saw them too, in the same order.
    let mut on_socket = Vec::new();
    while on_socket.len() < 4 {
        let event = next_json(&mut ws, 10).await;
        match event["type"].as_str() {
            Some("message.sent") if event["id"] == id => on_socket.push("sent".to_string()),
            Some("message.ack") if event["id"] == id => {
                on_socket.push(event["status"].as_str().unwrap().to_string())
            }
            _ => {}
        }
    }
    assert_eq!(on_socket, ["sent", "delivered", "read", "played"]);

    // A receipt for a message the account never sent is refused by fakewa.
    let unknown = receipt(&fake, "3EB0NEVERSENT", "read").await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_sent_while_stopped_arrives_after_the_restart() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start_with_local_webhooks(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    let (url, bodies) = webhook_receiver().await;
    put_webhook(&daemon, &token, "acme", "crm", &url, "whatsd").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    let sent = daemon
        .post(
            "/v1/sessions/shop-1/messages",
            Some(ADMIN),
            Some(json!({ "to": ADA, "text": "see you tomorrow" })),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.text());
    let id = sent.json()["id"].as_str().unwrap().to_string();
    wait_for(&bodies, "the delivery receipt", |b| {
        (whatsd_statuses(b, &id) == ["sent", "delivered"]).then_some(())
    })
    .await;

    let stopped = daemon
        .post("/v1/sessions/shop-1/stop", Some(ADMIN), None)
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    daemon.wait_state("shop-1", "stopped", 10).await;
    let r = receipt(&fake, &id, "read").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let started = daemon
        .post("/v1/sessions/shop-1/start", Some(ADMIN), None)
        .await;
    assert_eq!(started.status, 200, "{}", started.text());
    wait_for(&bodies, "the read receipt after the restart", |b| {
        (whatsd_statuses(b, &id) == ["sent", "delivered", "read"]).then_some(())
    })
    .await;
}
