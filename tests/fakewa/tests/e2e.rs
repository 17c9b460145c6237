//! End-to-end: an unmodified whatsapp-rust 0.7 client against fakewa.
//! Every wait is on an event or a bounded poll; nothing sleeps.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fakewa::{Config, FakeWa, MessageKind};
use serde_json::json;
use whatsapp_rust::types::events::Event;

/// Drops the phone's connection through the control API and waits for the
/// client to see it and connect again.
async fn drop_and_reconnect(fake: &FakeWa, client: &mut TestClient, phone: &str) {
    let (status, _) = post(
        fake.control_addr(),
        "/control/drop",
        json!({"phone": phone}),
    )
    .await;
    assert_eq!(status, 200);
    client
        .wait_for("Disconnected", 20, |e| {
            matches!(e, Event::Disconnected(_)).then_some(())
        })
        .await;
    client.connected(60).await;
}

/// Pairs a fresh in-memory client by QR through the control API; returns
/// the client (connected), its backend and the assigned phone.
async fn pair_by_qr(
    fake: &FakeWa,
    phone: Option<&str>,
) -> (TestClient, Arc<InMemoryBackend>, String) {
    let backend = Arc::new(InMemoryBackend::new());
    let mut client = start_client(&fake.ws_url(), backend.clone()).await;
    let qr = client.next_qr().await;
    let mut body = json!({ "qr": qr });
    if let Some(p) = phone {
        body["phone"] = json!(p);
    }
    let (status, paired) = post(fake.control_addr(), "/control/scan", body).await;
    assert_eq!(status, 200, "scan failed: {paired}");
    let phone = paired["phone"]
        .as_str()
        .expect("phone in scan answer")
        .to_owned();
    let pair_user = client
        .wait_for("PairSuccess", 20, |e| match e {
            Event::PairSuccess(p) => Some(p.id.user.to_string()),
            _ => None,
        })
        .await;
    assert_eq!(
        pair_user, phone,
        "PairSuccess carries the phone fakewa assigned"
    );
    client.connected(60).await;
    (client, backend, phone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_pairing_reaches_connected_and_reports_identity() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let backend = Arc::new(InMemoryBackend::new());
    let mut client = start_client(&fake.ws_url(), backend).await;
    let qr = client.next_qr().await;
    assert_eq!(qr.split(',').count(), 5, "QR payload has five fields");

    let scanned = Instant::now();
    let (status, paired) = post(
        fake.control_addr(),
        "/control/scan",
        json!({"qr": qr, "phone": "15557654321"}),
    )
    .await;
    assert_eq!(status, 200, "{paired}");
    assert_eq!(paired["phone"], "15557654321");
    assert!(paired["jid"].as_str().unwrap().starts_with("15557654321:"));
    assert!(paired["lid"].as_str().unwrap().ends_with("@lid"));

    let (user, lid) = client
        .wait_for("PairSuccess", 20, |e| match e {
            Event::PairSuccess(p) => Some((p.id.user.to_string(), p.lid.to_string())),
            _ => None,
        })
        .await;
    let to_paired = scanned.elapsed();
    assert_eq!(user, "15557654321");
    assert_eq!(format!("{lid}"), paired["lid"].as_str().unwrap().to_owned());
    client.connected(60).await;
    let to_connected = scanned.elapsed();
    println!("scan -> PairSuccess {to_paired:?}, scan -> Connected {to_connected:?}");

    assert_eq!(
        client.client.pn().map(|j| j.user.to_string()).as_deref(),
        Some("15557654321")
    );
    assert!(client.client.lid().is_some(), "client learned its LID");

    let (status, devices) =
        common::http("GET", fake.control_addr(), "/control/devices", None).await;
    assert_eq!(status, 200);
    let devices = devices["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["connected"], true);
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_logs_in_without_qr_also_after_server_restart() {
    init_tracing();
    let state_dir = tempfile::tempdir().unwrap();
    let config = Config {
        state_dir: Some(state_dir.path().to_owned()),
        ..Default::default()
    };
    let any = ([127, 0, 0, 1], 0).into();
    let fake = FakeWa::start_with(config.clone(), any, any).await.unwrap();
    let (mut client, backend, phone) = pair_by_qr(&fake, None).await;
    client.shutdown().await;

    // Same server, new Bot on the same keys: IK login, no QR.
    let mut again = start_client(&fake.ws_url(), backend.clone()).await;
    again
        .wait_for("Connected without QR", 60, |e| match e {
            Event::PairingQrCode(_) => panic!("a paired device must not be shown a QR code"),
            Event::Connected(_) => Some(()),
            _ => None,
        })
        .await;
    assert_eq!(
        again.client.pn().map(|j| j.user.to_string()),
        Some(phone.clone())
    );
    again.shutdown().await;

    // Restarted fake server (same state dir, new port): still knows the device.
    fake.stop();
    drop(fake);
    let fake = FakeWa::start_with(config, any, any).await.unwrap();
    let mut third = start_client(&fake.ws_url(), backend).await;
    third
        .wait_for("Connected after server restart", 60, |e| match e {
            Event::PairingQrCode(_) => panic!("a paired device must not be shown a QR code"),
            Event::Connected(_) => Some(()),
            _ => None,
        })
        .await;
    third.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_dm_from_me_and_status_reach_the_client() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let (mut client, _backend, phone) = pair_by_qr(&fake, None).await;

    // First contact: a PreKeySignalMessage. Signal keeps sending pkmsg until
    // the device has answered once; after the device's reply, plain msg.
    let alice = "15550001111";
    let dm =
        |text: &str| json!({"to_phone": phone, "from_phone": alice, "text": text, "kind": "dm"});
    let (status, first) = post(
        fake.control_addr(),
        "/control/messages",
        dm("hello from alice"),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let (got, sender, from_me, _) = client.next_text(30).await;
    assert_eq!(
        (got.as_str(), sender.as_str(), from_me),
        ("hello from alice", alice, false)
    );

    let to: whatsapp_rust::Jid = format!("{alice}@s.whatsapp.net").parse().unwrap();
    client
        .client
        .send_text(to, "hi alice")
        .await
        .expect("reply to alice");
    let addr = fake.control_addr();
    poll_value(20, "alice got the reply", || async {
        let (_, body) = common::http("GET", addr, "/control/outbox", None).await;
        body["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["text"] == "hi alice").cloned())
    })
    .await;

    let (status, second) = post(
        fake.control_addr(),
        "/control/messages",
        dm("second message"),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let (got, sender, _, _) = client.next_text(30).await;
    assert_eq!((got.as_str(), sender.as_str()), ("second message", alice));
    let enc_of = |id: &serde_json::Value| {
        fake.server
            .deliveries()
            .into_iter()
            .find(|d| d.id == id.as_str().unwrap())
            .map(|d| d.enc_types)
    };
    assert_eq!(enc_of(&first["id"]), Some(vec!["pkmsg".to_owned()]));
    assert_eq!(enc_of(&second["id"]), Some(vec!["msg".to_owned()]));

    let (status, _) = post(
        fake.control_addr(),
        "/control/messages",
        json!({"to_phone": phone, "from_phone": "15550002222", "text": "sent from my phone", "kind": "from_me"}),
    )
    .await;
    assert_eq!(status, 200);
    let (got, _, from_me, chat) = client.next_text(30).await;
    assert_eq!(got, "sent from my phone");
    assert!(from_me, "a message the phone sent arrives as is_from_me");
    assert!(
        chat.starts_with("15550002222"),
        "chat is the contact, got {chat}"
    );

    let (status, _) = post(
        fake.control_addr(),
        "/control/messages",
        json!({"to_phone": phone, "from_phone": "15550003333", "text": "my status", "kind": "status"}),
    )
    .await;
    assert_eq!(status, 200);
    let (got, sender, _, chat) = client.next_text(30).await;
    assert_eq!(got, "my status");
    assert_eq!(sender, "15550003333");
    assert_eq!(chat, "status@broadcast");

    // Receipts drain fakewa's per-device queue.
    poll(20, "queue drained", || {
        let devices = fake.server.devices();
        devices.iter().all(|d| d.pending_messages == 0)
    })
    .await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_while_offline_arrive_on_login() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let (mut client, backend, phone) = pair_by_qr(&fake, None).await;
    client.shutdown().await;
    fake.server
        .send_message(
            &phone,
            "15550004444",
            "while you were away",
            MessageKind::Dm,
        )
        .unwrap();
    let mut again = start_client(&fake.ws_url(), backend).await;
    let (text, sender, _, _) = again.next_text(60).await;
    assert_eq!(text, "while you were away");
    assert_eq!(sender, "15550004444");
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_text_reaches_the_outbox() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let (mut client, _backend, phone) = pair_by_qr(&fake, None).await;
    let to: whatsapp_rust::Jid = "15550005555@s.whatsapp.net".parse().unwrap();
    let sent = client
        .client
        .send_text(to, "hi from the daemon")
        .await
        .expect("send_text");
    let path = format!("/control/outbox?from_phone={phone}");
    let addr = fake.control_addr();
    let message = poll_value(20, "message in outbox", || async {
        let (_, body) = common::http("GET", addr, &path, None).await;
        body["messages"].as_array().and_then(|m| m.first().cloned())
    })
    .await;
    assert_eq!(message["text"], "hi from the daemon");
    assert_eq!(message["id"], sent.message_id.as_str());
    assert!(message["to"].as_str().unwrap().starts_with("15550005555"));
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_code_reaches_connected() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let backend = Arc::new(InMemoryBackend::new());
    let mut client = start_client(&fake.ws_url(), backend).await;
    let _ = client.next_qr().await; // the socket is up
    let c = client.client.clone();
    let code = c
        .pair_with_code(whatsapp_rust::pair_code::PairCodeOptions {
            phone_number: "15556667777".into(),
            ..Default::default()
        })
        .await
        .expect("pair code issued");
    assert_eq!(code.len(), 8);
    let (status, paired) = post(
        fake.control_addr(),
        "/control/pair-code",
        json!({"phone": "15556667777", "code": code}),
    )
    .await;
    assert_eq!(status, 200, "{paired}");
    let user = client
        .wait_for("PairSuccess", 30, |e| match e {
            Event::PairSuccess(p) => Some(p.id.user.to_string()),
            _ => None,
        })
        .await;
    assert_eq!(user, "15556667777");
    client.connected(60).await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pair_code_is_refused() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let mut client = start_client(&fake.ws_url(), Arc::new(InMemoryBackend::new())).await;
    let _ = client.next_qr().await;
    let code = client
        .client
        .clone()
        .pair_with_code(whatsapp_rust::pair_code::PairCodeOptions {
            phone_number: "15556667778".into(),
            ..Default::default()
        })
        .await
        .expect("pair code issued");
    let wrong: String = code.chars().rev().collect();
    let wrong = if wrong == code {
        "ABCDEFGH".to_owned()
    } else {
        wrong
    };
    let (status, body) = post(
        fake.control_addr(),
        "/control/pair-code",
        json!({"phone": "15556667778", "code": wrong}),
    )
    .await;
    assert!(status >= 400, "a wrong code must not pair: {status} {body}");
    assert!(client.client.pn().is_none());
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_logs_out_and_later_logins_fail() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let (mut client, backend, phone) = pair_by_qr(&fake, None).await;
    let (status, _) = post(
        fake.control_addr(),
        "/control/unlink",
        json!({"phone": phone}),
    )
    .await;
    assert_eq!(status, 200);
    let on_connect = client
        .wait_for("LoggedOut", 20, |e| match e {
            Event::LoggedOut(l) => Some(l.on_connect),
            _ => None,
        })
        .await;
    assert!(!on_connect, "unlink arrives on the live connection");
    client.shutdown().await;

    let mut again = start_client(&fake.ws_url(), backend).await;
    let on_connect = again
        .wait_for("LoggedOut at login", 30, |e| match e {
            Event::LoggedOut(l) => Some(l.on_connect),
            Event::Connected(_) => panic!("an unlinked device must not connect"),
            _ => None,
        })
        .await;
    assert!(on_connect, "the login itself is refused");
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_reconnects() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let (mut client, _backend, phone) = pair_by_qr(&fake, None).await;
    drop_and_reconnect(&fake, &mut client, &phone).await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_stream_is_terminal() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let (mut client, _backend, phone) = pair_by_qr(&fake, None).await;
    let (status, _) = post(
        fake.control_addr(),
        "/control/replace",
        json!({"phone": phone}),
    )
    .await;
    assert_eq!(status, 200);
    client
        .wait_for("StreamReplaced", 20, |e| {
            matches!(e, Event::StreamReplaced(_)).then_some(())
        })
        .await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_until_accepted() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let (mut client, _backend, phone) = pair_by_qr(&fake, None).await;
    let (status, _) = post(
        fake.control_addr(),
        "/control/refuse",
        json!({"seconds": 3}),
    )
    .await;
    assert_eq!(status, 200);
    post(
        fake.control_addr(),
        "/control/drop",
        json!({"phone": phone}),
    )
    .await;
    client
        .wait_for("Disconnected", 20, |e| {
            matches!(e, Event::Disconnected(_)).then_some(())
        })
        .await;
    client.connected(90).await;
    client.shutdown().await;
}

#[tokio::test]
async fn control_api_rejects_bad_requests_with_json_errors() {
    let fake = FakeWa::start().await.unwrap();
    let addr = fake.control_addr();
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("POST", "/control/scan", Some("{not json"), 400),
        ("POST", "/control/scan", Some(r#"{"qr":"a,b,c"}"#), 400),
        (
            "POST",
            "/control/scan",
            Some(r#"{"qr":"x","bogus":1}"#),
            400,
        ),
        (
            "POST",
            "/control/messages",
            Some(r#"{"to_phone":"123","from_phone":"15550001111","text":"x"}"#),
            400,
        ),
        (
            "POST",
            "/control/messages",
            Some(r#"{"to_phone":"15559990000","from_phone":"15550001111","text":"x"}"#),
            404,
        ),
        (
            "POST",
            "/control/unlink",
            Some(r#"{"phone":"15559990000"}"#),
            404,
        ),
        ("POST", "/control/refuse", Some(r#"{"seconds":99999}"#), 400),
        ("GET", "/control/nope", None, 404),
    ];
    for (method, path, body, want) in cases {
        let (status, json) = common::http(method, addr, path, body).await;
        assert_eq!(status, want, "{method} {path} {body:?} -> {json}");
        assert!(
            json["error"]["code"].is_string(),
            "JSON error for {path}: {json}"
        );
    }
    let (status, _) = common::http("POST", addr, "/control/scan", Some("")).await;
    assert!(status == 400 || status == 415);
    let (status, health) = common::http("GET", addr, "/healthz", None).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
}

async fn poll(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn poll_value<T, F, Fut>(secs: u64, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [U] of the fake-server notes: a PN-only world (no LID anywhere) has no
/// hidden dependency on LID: pairing, login, inbound and outbound all work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pn_only_world_without_lids_works() {
    init_tracing();
    let any = ([127, 0, 0, 1], 0).into();
    let fake = FakeWa::start_with(
        Config {
            assign_lid: false,
            ..Default::default()
        },
        any,
        any,
    )
    .await
    .unwrap();
    let backend = Arc::new(InMemoryBackend::new());
    let mut client = start_client(&fake.ws_url(), backend.clone()).await;
    let qr = client.next_qr().await;
    let (status, paired) = post(fake.control_addr(), "/control/scan", json!({"qr": qr})).await;
    assert_eq!(status, 200);
    assert!(paired.get("lid").is_none(), "no LID handed out: {paired}");
    let phone = paired["phone"].as_str().unwrap().to_owned();
    client.connected(60).await;
    fake.server
        .send_message(&phone, "15550007777", "pn only", MessageKind::Dm)
        .unwrap();
    let (text, sender, _, _) = client.next_text(30).await;
    assert_eq!((text.as_str(), sender.as_str()), ("pn only", "15550007777"));
    let to: whatsapp_rust::Jid = "15550007777@s.whatsapp.net".parse().unwrap();
    let sent = client
        .client
        .send_text(to, "reply without lid")
        .await
        .unwrap();
    let addr = fake.control_addr();
    let path = format!("/control/outbox?from_phone={phone}");
    let message = poll_value(20, "reply in outbox", || async {
        let (_, body) = common::http("GET", addr, &path, None).await;
        body["messages"].as_array().and_then(|m| {
            m.iter()
                .find(|m| m["id"] == sent.message_id.as_str())
                .cloned()
        })
    })
    .await;
    assert_eq!(message["text"], "reply without lid");
    client.shutdown().await;
    // And a restart (IK login) without LIDs.
    let mut again = start_client(&fake.ws_url(), backend).await;
    again.connected(60).await;
    again.shutdown().await;
}

/// The phone's app-state key share is held like any message: a login that
/// ends before the device acknowledged it gets it again on the next login,
/// and the client never has to wait out its 10 s key-share grace. (Before,
/// fakewa sent it once outside the queue, so it was never resent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_state_key_share_is_resent_after_a_dropped_login() {
    use wacore::store::traits::AppSyncStore as _;
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let phone = "15551110001";
    // The first login after pairing is dropped right after the share goes
    // out, before the client's receipt can reach fakewa.
    fake.server.drop_after_next_delivery(phone);
    let backend = Arc::new(InMemoryBackend::new());
    let mut client = start_client(&fake.ws_url(), backend.clone()).await;
    let qr = client.next_qr().await;
    let (status, paired) = post(
        fake.control_addr(),
        "/control/scan",
        json!({"qr": qr, "phone": phone}),
    )
    .await;
    assert_eq!(status, 200, "{paired}");
    client.connected(60).await;

    let shares: Vec<_> = fake
        .server
        .deliveries()
        .into_iter()
        .filter(|d| d.app_state_key_share)
        .collect();
    assert!(
        shares.len() >= 2,
        "the share is resent on the login after the dropped one: {shares:?}"
    );
    assert!(
        shares.iter().all(|d| d.id == shares[0].id),
        "the resend is the same share: {shares:?}"
    );
    assert!(
        shares.iter().skip(1).all(|d| d.offline),
        "a resend arrives with the offline backlog: {shares:?}"
    );
    poll(20, "the client acknowledged the key share", || {
        fake.server
            .devices()
            .iter()
            .all(|d| d.pending_messages == 0)
    })
    .await;
    let key_id = backend.get_latest_sync_key_id().await.unwrap();
    assert!(key_id.is_some(), "the client stored the shared key");
    client.shutdown().await;
}

/// Phones scan 4-field QR codes (the client type is optional), as other
/// clients (Baileys) show them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_field_qr_code_pairs() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let mut client = start_client(&fake.ws_url(), Arc::new(InMemoryBackend::new())).await;
    let qr = client.next_qr().await;
    let four = qr.rsplit_once(',').expect("QR has fields").0.to_owned();
    assert_eq!(four.split(',').count(), 4);
    let (status, paired) = post(fake.control_addr(), "/control/scan", json!({"qr": four})).await;
    assert_eq!(status, 200, "a 4-field QR must pair: {paired}");
    client.connected(60).await;
    client.shutdown().await;
}

/// fakewa hands out edge routing info at login; the client's next
/// connection opens with the `ED 00 01` + 3-byte length pre-intro, and
/// fakewa must skip exactly that to find the `WA` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_edge_routing_pre_intro() {
    init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let (mut client, _backend, phone) = pair_by_qr(&fake, None).await;
    let pm = client.client.persistence_manager();
    poll(20, "the client stored the edge routing info", || {
        pm.get_device_snapshot().edge_routing_info.is_some()
    })
    .await;
    let before = fake.server.edge_routed_connections();
    drop_and_reconnect(&fake, &mut client, &phone).await;
    assert!(
        fake.server.edge_routed_connections() > before,
        "the reconnect carried an ED pre-intro"
    );
    client.shutdown().await;
}
