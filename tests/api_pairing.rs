//! Full pairing through the API only, against fakewa: create → WebSocket
//! `snapshot` → `session.qr` (with SVG) → the phone scans → `session.paired`
//! with the exact phone → `session.connected`; the REST view agrees, the
//! PNG decodes to the same code, and a text sent through REST reaches
//! fakewa's outbox.

mod common;

use common::{ADMIN, Daemon, Options, control, next_json, wait_event, ws_connect};
use serde_json::json;

const PHONE: &str = "15551234567";

/// Decodes the QR code in `png` (any colour type, expanded to 8 bits).
fn decode_png(png: &[u8]) -> String {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sane size")];
    let frame = reader.next_frame(&mut pixels).expect("PNG pixels");
    let channels = frame.color_type.samples();
    let (width, height) = (frame.width as usize, frame.height as usize);
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
        let at = y * frame.line_size + x * channels;
        match channels {
            // Grey, grey + alpha: the first sample is the grey level.
            1 | 2 => pixels[at],
            // RGB(A): its mean.
            _ => {
                ((u16::from(pixels[at]) + u16::from(pixels[at + 1]) + u16::from(pixels[at + 2]))
                    / 3) as u8
            }
        }
    });
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "exactly one QR code in the PNG");
    let (_, content) = grids[0].decode().expect("the QR decodes");
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_through_the_api_only() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;

    let created = daemon
        .post(
            "/v1/sessions",
            Some(ADMIN),
            Some(json!({ "id": "shop-1", "start": false })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["state"], "created");
    assert_eq!(created.json()["tenant"], "default");

    let mut ws = ws_connect(daemon.addr, "/v1/events?session=shop-1", Some(ADMIN))
        .await
        .expect("socket opens");
    let snapshot = next_json(&mut ws, 10).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["sessions"][0]["id"], "shop-1");
    assert_eq!(snapshot["sessions"][0]["state"], "created");
    assert!(snapshot["sessions"][0]["qr"].is_null());

    let started = daemon
        .post("/v1/sessions/shop-1/start", Some(ADMIN), None)
        .await;
    assert_eq!(started.status, 200, "{}", started.text());

    let qr = wait_event(&mut ws, "session.qr", 30).await;
    let code = qr["code"].as_str().expect("code").to_string();
    assert_eq!(qr["session"], "shop-1");
    assert!(qr["svg"].as_str().expect("svg").contains("<svg"));
    assert!(
        qr["expires_at"]
            .as_str()
            .expect("expires_at")
            .ends_with('Z')
    );
    assert!(qr["index"].as_u64().expect("index") >= 1);

    // The same QR over REST, as JSON, SVG and a PNG that decodes to it.
    let as_json = daemon.get("/v1/sessions/shop-1/qr", Some(ADMIN)).await;
    assert_eq!(as_json.status, 200, "{}", as_json.text());
    assert_eq!(as_json.json()["code"], code.as_str());
    assert!(as_json.json()["svg"].as_str().unwrap().contains("<svg"));
    let svg = daemon
        .get("/v1/sessions/shop-1/qr?format=svg", Some(ADMIN))
        .await;
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    let png = daemon
        .get("/v1/sessions/shop-1/qr?format=png", Some(ADMIN))
        .await;
    assert_eq!(png.status, 200);
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert_eq!(decode_png(&png.body), code);
    // Without `?format=`, the Accept header chooses.
    let by_accept = common::request_with_headers(
        daemon.addr,
        "GET",
        "/v1/sessions/shop-1/qr",
        Some(ADMIN),
        &[("Accept", "image/png, application/json;q=0.5")],
    )
    .await;
    assert_eq!(by_accept.status, 200);
    assert_eq!(by_accept.header("content-type"), Some("image/png"));
    assert_eq!(decode_png(&by_accept.body), code);
    let svg_by_accept = common::request_with_headers(
        daemon.addr,
        "GET",
        "/v1/sessions/shop-1/qr",
        Some(ADMIN),
        &[("Accept", "image/svg+xml")],
    )
    .await;
    assert_eq!(svg_by_accept.header("content-type"), Some("image/svg+xml"));

    // The phone scans it.
    let scanned = control(
        fake.control_addr(),
        "/control/scan",
        json!({ "qr": code, "phone": PHONE }),
    )
    .await;
    assert_eq!(scanned.status, 200, "{}", scanned.text());

    let paired = wait_event(&mut ws, "session.paired", 30).await;
    assert_eq!(paired["phone"], PHONE);
    let jid = paired["jid"].as_str().expect("jid").to_string();
    assert!(jid.starts_with(PHONE), "{jid}");
    let connected = wait_event(&mut ws, "session.connected", 60).await;
    assert_eq!(connected["phone"], PHONE);

    let shown = daemon.get("/v1/sessions/shop-1", Some(ADMIN)).await.json();
    assert_eq!(shown["state"], "connected");
    assert_eq!(shown["phone"], PHONE);
    assert_eq!(shown["jid"], jid.as_str());
    assert_eq!(shown["lid"], paired["lid"]);
    assert!(shown["paired_at_ms"].as_i64().unwrap() > 0);
    assert!(
        shown["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["to"] == "connected")
    );

    // No QR once paired, with a reason code.
    let gone = daemon.get("/v1/sessions/shop-1/qr", Some(ADMIN)).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error_code(), "already_paired");

    let by_phone = daemon
        .get(&format!("/v1/phones/{PHONE}"), Some(ADMIN))
        .await;
    assert_eq!(by_phone.status, 200);
    assert_eq!(by_phone.json()["sessions"][0]["id"], "shop-1");

    // Send a text through REST; fakewa's outbox has it.
    let sent = daemon
        .post(
            "/v1/sessions/shop-1/messages?wait=sent",
            Some(ADMIN),
            Some(json!({ "to": "15550009999", "text": "hello from whatsd" })),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let message_id = sent.json()["id"].as_str().expect("message id").to_string();
    assert!(!message_id.is_empty());
    // The 200 means the stanza is written; fakewa reads it a moment later.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let entry = loop {
        let outbox = fake.server.outbox(Some(PHONE));
        if let Some(entry) = outbox.into_iter().find(|m| m.id == message_id) {
            break entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fakewa never received {message_id}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(entry.text.as_deref(), Some("hello from whatsd"));
    assert!(entry.to.starts_with("15550009999"), "{entry:?}");
    let event = wait_event(&mut ws, "message.sent", 10).await;
    assert_eq!(event["id"], message_id.as_str());
}

/// Persist before announce: a state the store refuses is never announced.
/// The store fails the one write that would record `doomed` showing a QR
/// code; that session goes `failed(store_error)` with the cause and shows no
/// QR code, while `fine`, next to it, pairs as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_the_store_refuses_is_never_announced() {
    let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
    let options = Options {
        env: vec![("WHATSD_FAULTS".into(), "store.put_record=doomed:qr".into())],
        ..Default::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let mut ws = ws_connect(daemon.addr, "/v1/events", Some(ADMIN))
        .await
        .expect("socket opens");
    assert_eq!(next_json(&mut ws, 10).await["type"], "snapshot");
    for id in ["doomed", "fine"] {
        let r = daemon
            .post("/v1/sessions", Some(ADMIN), Some(json!({ "id": id })))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }

    // Every event until both sessions settled: `fine` shows a QR code,
    // `doomed` fails.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let settled = |seen: &[serde_json::Value]| {
        let fine_qr = seen
            .iter()
            .any(|e| e["session"] == "fine" && e["type"] == "session.qr");
        let doomed_failed = seen
            .iter()
            .any(|e| e["session"] == "doomed" && e["to"] == "failed");
        fine_qr && doomed_failed
    };
    while !settled(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled in 30 s: {seen:#?}"
        );
        seen.push(next_json(&mut ws, 30).await);
    }
    let doomed: Vec<_> = seen.iter().filter(|e| e["session"] == "doomed").collect();
    assert!(
        doomed
            .iter()
            .all(|e| e["type"] != "session.qr" && e["to"] != "qr"),
        "the refused state was announced: {doomed:#?}"
    );
    let failed = doomed.iter().find(|e| e["to"] == "failed").unwrap();
    assert_eq!(failed["reason"], "store_error", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("injected write failure"),
        "the cause is given: {failed}"
    );

    // As the API reports it, and with no QR code to fetch.
    let r = daemon.get("/v1/sessions/doomed", Some(ADMIN)).await;
    assert_eq!(
        (r.json()["state"].as_str(), r.json()["reason"].as_str()),
        (Some("failed"), Some("store_error")),
        "{}",
        r.text()
    );
    let r = daemon.get("/v1/sessions/doomed/qr", Some(ADMIN)).await;
    assert_ne!(r.status, 200, "{}", r.text());
    daemon.wait_state("fine", "qr", 10).await;
}
