//! `whatsd serve --demo`: the embedded fake WhatsApp server pairs a session
//! and sends it a message that reaches a webhook on this machine, through
//! the demo routes only. Needs the `demo` feature:
//! `cargo test --features demo --test demo` (`.ci/run` runs it). Without
//! the feature, the demo routes do not exist.

mod common;

#[cfg(not(feature = "demo"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_feature_there_are_no_demo_routes() {
    use common::{ADMIN, Daemon};

    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, mut daemon) = Daemon::start(&fake.ws_url()).await;
    let r = daemon.get("/v1/demo", Some(ADMIN)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = daemon
        .post(
            "/v1/demo/sessions/x/messages",
            Some(ADMIN),
            Some(serde_json::json!({ "text": "hi" })),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(daemon.terminate().await.success());
}

#[cfg(feature = "demo")]
mod demo {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::common::{self, ADMIN, Daemon, Options};

    /// A demo contact writes to session `id`.
    async fn message(daemon: &Daemon, id: &str, body: Value) -> common::Response {
        let path = format!("/v1/demo/sessions/{id}/messages");
        daemon.post(&path, Some(ADMIN), Some(body)).await
    }

    /// Waits until the receiver got a `message.received` with `text`.
    async fn delivered(received: &std::sync::Mutex<Vec<Value>>, text: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found = received
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["type"] == "message.received" && e["data"]["text"] == text)
                .cloned();
            if let Some(event) = found {
                return event;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{text:?} not delivered in 30 s: {:?}",
                received.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_pairs_and_a_message_reaches_a_local_webhook() {
        common::init_tracing();
        // The config points nowhere and forbids private targets: --demo
        // replaces both.
        let options = Options {
            args: vec!["--demo".into()],
            ..Options::default()
        };
        let (dir, mut daemon) = Daemon::start_with("ws://127.0.0.1:9/ws/chat", options).await;
        assert!(
            daemon
                .stdout_lines
                .iter()
                .any(|l| l.starts_with("demo fakewa control: http://127.0.0.1:")),
            "{:?}",
            daemon.stdout_lines
        );
        assert!(daemon.log().contains("DEMO MODE"), "the loud warning");
        assert!(
            dir.path().join("data-demo").is_dir(),
            "a data dir of its own"
        );

        assert_eq!(daemon.get("/v1/demo", None).await.status, 401);
        let info = daemon.get("/v1/demo", Some(ADMIN)).await;
        assert_eq!(info.status, 200, "{}", info.text());
        assert_eq!(info.json()["demo"], true);

        let (hook_url, received) = common::webhook_receiver().await;
        let tenant = daemon
            .post("/v1/tenants", Some(ADMIN), Some(json!({ "id": "acme" })))
            .await;
        assert_eq!(tenant.status, 201, "{}", tenant.text());
        let hook = daemon
            .put(
                "/v1/tenants/acme/webhooks/main",
                json!({ "url": hook_url, "secret": "demo-webhook-secret-123" }),
            )
            .await;
        assert_eq!(
            hook.status,
            201,
            "loopback is allowed in demo mode: {}",
            hook.text()
        );

        let created = daemon
            .post(
                "/v1/sessions",
                Some(ADMIN),
                Some(json!({ "id": "shop-1", "tenant": "acme" })),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text());
        // Not paired yet: nothing to message.
        let early = message(&daemon, "shop-1", json!({ "text": "too early" })).await;
        assert_eq!(early.status, 409, "{}", early.text());
        assert_eq!(early.json()["error"]["code"], "not_paired");

        // Right after creation: the scan waits for the first QR, then for
        // the session to connect.
        let scanned = daemon
            .post("/v1/demo/sessions/shop-1/scan", Some(ADMIN), None)
            .await;
        assert_eq!(scanned.status, 200, "{}", scanned.text());
        let scanned = scanned.json();
        assert_eq!(scanned["state"], "connected", "{scanned}");
        let phone = scanned["phone"].as_str().unwrap().to_string();
        assert!(phone.starts_with("1555") && phone.len() == 11, "{phone}");
        let session = daemon.get("/v1/sessions/shop-1", Some(ADMIN)).await.json();
        assert_eq!(session["state"], "connected");
        assert_eq!(session["phone"], phone.as_str());

        let again = daemon
            .post("/v1/demo/sessions/shop-1/scan", Some(ADMIN), None)
            .await;
        // As GET /v1/sessions/{id}/qr: no live QR is a 404 with the reason.
        assert_eq!(again.status, 404, "{}", again.text());
        assert_eq!(again.json()["error"]["code"], "already_paired");
        let empty = message(&daemon, "shop-1", json!({ "text": "" })).await;
        assert_eq!(empty.status, 422, "{}", empty.text());
        let unknown = message(&daemon, "nope", json!({ "text": "hi" })).await;
        assert_eq!(unknown.status, 404, "{}", unknown.text());

        let sent = message(&daemon, "shop-1", json!({ "text": "hello from the demo" })).await;
        assert_eq!(sent.status, 200, "{}", sent.text());
        let event = delivered(&received, "hello from the demo").await;
        assert_eq!(event["session"], "shop-1");
        assert_eq!(event["tenant"], "acme");
        assert_eq!(event["me"]["phone"], phone.as_str());
        assert_eq!(event["data"]["sender"]["phone"], "15557654321");
        assert_eq!(event["data"]["message_id"], sent.json()["id"]);

        // `image: true`: the demo contact sends the built-in picture, with
        // the text as its caption; its bytes download exactly.
        let mut ws = common::ws_connect(daemon.addr, "/v1/events?session=shop-1", Some(ADMIN))
            .await
            .expect("socket opens");
        assert_eq!(common::next_json(&mut ws, 10).await["type"], "snapshot");
        let no_text = message(&daemon, "shop-1", json!({})).await;
        assert_eq!(no_text.status, 422, "{}", no_text.text());
        let sent = message(
            &daemon,
            "shop-1",
            json!({ "image": true, "text": "a demo receipt" }),
        )
        .await;
        assert_eq!(sent.status, 200, "{}", sent.text());
        let id = sent.json()["id"].as_str().unwrap().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let event = loop {
            let found = received
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["data"]["message_id"] == id.as_str())
                .cloned();
            if let Some(event) = found {
                break event;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "picture not delivered in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(event["data"]["type"], "image", "{event}");
        assert_eq!(event["data"]["caption"], "a demo receipt", "{event}");
        let url = event["data"]["media"]["url"].as_str().expect("a media url");
        let download = daemon.get(url, Some(ADMIN)).await;
        assert_eq!(download.status, 200, "{}", download.text());
        assert_eq!(download.header("content-type"), Some("image/png"));
        assert_eq!(
            download.body,
            include_bytes!("../src/api/admin/demo-image.png").as_slice()
        );
        // The event WebSocket (the admin page's recent messages) says so
        // too, with the same download path and no media key.
        let frame = common::wait_event(&mut ws, "message.received", 10).await;
        assert_eq!(frame["id"], id.as_str(), "{frame}");
        assert_eq!(frame["kind"], "image", "{frame}");
        assert_eq!(frame["from"], "15557654321", "{frame}");
        assert_eq!(frame["caption"], "a demo receipt", "{frame}");
        assert_eq!(frame["media"]["url"], url, "{frame}");
        assert_eq!(frame["media"]["mimetype"], "image/png", "{frame}");
        assert!(!frame.to_string().contains("media_key"), "{frame}");
        drop(ws);

        // A reload keeps the demo's settings (the fake, loopback webhooks).
        let pid = daemon.child.as_ref().unwrap().id().unwrap().to_string();
        let reloads = daemon.log().matches("configuration reloaded").count();
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while daemon.log().matches("configuration reloaded").count() == reloads {
            assert!(tokio::time::Instant::now() < deadline, "no reload logged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = daemon.log();
        assert!(!log.contains("needs_restart"), "{}", common::tail(&log));
        let sent = message(
            &daemon,
            "shop-1",
            json!({ "text": "after the reload", "from": "+1 555 000 1234" }),
        )
        .await;
        assert_eq!(sent.status, 200, "{}", sent.text());
        let event = delivered(&received, "after the reload").await;
        assert_eq!(event["data"]["sender"]["phone"], "15550001234");

        // The fake keeps its linked devices in the demo data dir: after a
        // restart the session logs in again, as with real WhatsApp.
        assert!(daemon.terminate().await.success());
        assert!(dir.path().join("data-demo/fakewa").is_dir());
        daemon.restart().await;
        daemon.wait_state("shop-1", "connected", 30).await;
        let session = daemon.get("/v1/sessions/shop-1", Some(ADMIN)).await.json();
        assert_eq!(session["phone"], phone.as_str());

        assert!(daemon.terminate().await.success());
    }
}
