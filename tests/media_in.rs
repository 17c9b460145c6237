//! Received media, end to end against fakewa's media server: a contact
//! sends a JPEG, a PDF, an Opus voice note, a WebP sticker and a video; the
//! webhook carries the download URL (and caption, file name, voice flag);
//! the download through whatsd equals the original bytes, with the right
//! headers; Meta's two-step download leads to the same bytes. A corrupted
//! MAC is a clear 502 and nothing breaks; expired media is 410; another
//! tenant, and a session id deleted and created again, reach nothing.
//! Expired media is asked again of the sender's phone: once it answers, a
//! retry downloads the file; a phone that no longer has it leaves it 410.

mod common;

use std::time::Duration;

use common::{
    ADMIN, Daemon, Options, Response, control, control_until, create_tenant, pair, put_webhook,
    request, wait_for, webhook_receiver,
};
use serde_json::{Value, json};

const PHONE: &str = "15551250001";
const ADA: &str = "15557790001";

/// Deterministic bytes behind a file-type header.
fn file(header: &[u8], len: usize, seed: u32) -> Vec<u8> {
    let mut out = header.to_vec();
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Has Ada send `bytes` as `kind` to the session's phone; the message id.
async fn send_media(
    fake: &fakewa::FakeWa,
    kind: &str,
    mimetype: &str,
    bytes: &[u8],
    extra: Value,
) -> String {
    let mut body = json!({
        "to_phone": PHONE,
        "from_phone": ADA,
        "type": kind,
        "mimetype": mimetype,
        "data_base64": base64(bytes),
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let sent = control(fake.control_addr(), "/control/media", body).await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    sent.json()["id"].as_str().expect("id").to_string()
}

/// The whatsd-format webhook of message `id`.
async fn webhook_of(bodies: &std::sync::Arc<std::sync::Mutex<Vec<Value>>>, id: &str) -> Value {
    wait_for(bodies, &format!("the webhook of {id}"), |b| {
        b.iter().find(|e| e["data"]["message_id"] == id).cloned()
    })
    .await
}

/// The cloud_api message of `id`.
async fn cloud_of(bodies: &std::sync::Arc<std::sync::Mutex<Vec<Value>>>, id: &str) -> Value {
    wait_for(bodies, &format!("the cloud_api webhook of {id}"), |b| {
        b.iter()
            .map(|e| &e["entry"][0]["changes"][0]["value"]["messages"][0])
            .find(|m| m["id"] == id)
            .cloned()
    })
    .await
}

/// The path part of a media URL (absolute or not).
fn path_of(url: &str) -> String {
    match url.find("/v1/") {
        Some(i) => url[i..].to_string(),
        None => url.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_media_downloads_byte_exact_and_fails_clearly() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = Options {
        extra_toml:
            "\n[webhooks]\nallow_private_targets = true\ninline_media_max_bytes = \"300KiB\"\n"
                .into(),
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let token = create_tenant(&daemon, "acme").await;
    let other = create_tenant(&daemon, "globex").await;
    let (whatsd_url, whatsd_bodies) = webhook_receiver().await;
    let (cloud_url, cloud_bodies) = webhook_receiver().await;
    put_webhook(&daemon, &token, "acme", "crm", &whatsd_url, "whatsd").await;
    put_webhook(&daemon, &token, "acme", "cloud", &cloud_url, "cloud_api").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;

    let jpeg = file(
        &[0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F', b'I', b'F'],
        200 * 1024,
        1,
    );
    let pdf = file(b"%PDF-1.7\n", 5 * 1024 * 1024, 2);
    let opus = file(b"OggS\0\x02", 24 * 1024 + 7, 3);
    let webp = file(b"RIFF\x00\x00\x00\x00WEBPVP8 ", 18 * 1024 + 3, 4);
    let mp4 = file(b"\x00\x00\x00\x18ftypmp42", 700 * 1024 + 11, 5);
    let cases: Vec<(&str, &str, &Vec<u8>, Value)> = vec![
        (
            "image",
            "image/jpeg",
            &jpeg,
            json!({ "caption": "the receipt" }),
        ),
        (
            "document",
            "application/pdf",
            &pdf,
            json!({ "file_name": "Rechnung März.pdf", "caption": "invoice" }),
        ),
        (
            "ptt",
            "audio/ogg; codecs=opus",
            &opus,
            json!({ "seconds": 3 }),
        ),
        ("sticker", "image/webp", &webp, json!({})),
        (
            "video",
            "video/mp4",
            &mp4,
            json!({ "caption": "unboxing", "seconds": 9 }),
        ),
    ];
    let mut ids = Vec::new();
    for (kind, mimetype, bytes, extra) in &cases {
        let id = send_media(&fake, kind, mimetype, bytes, extra.clone()).await;
        let event = webhook_of(&whatsd_bodies, &id).await;
        let data = &event["data"];
        let expected_type = if *kind == "ptt" { "audio" } else { kind };
        assert_eq!(data["type"], expected_type, "{event:#}");
        let media = &data["media"];
        assert_eq!(media["mimetype"], *mimetype);
        assert_eq!(media["file_length"], bytes.len() as u64);
        assert_eq!(media["voice"], *kind == "ptt");
        if let Some(caption) = extra.get("caption") {
            assert_eq!(&data["caption"], caption);
        }
        if let Some(name) = extra.get("file_name") {
            assert_eq!(&media["file_name"], name);
        }
        let url = media["url"].as_str().expect("media url");
        let path = path_of(url);
        assert_eq!(path, format!("/v1/sessions/shop-1/messages/{id}/media"));

        let got = daemon.get(&path, Some(&token)).await;
        assert_eq!(got.status, 200, "{kind}: {}", got.text());
        assert!(
            got.body == **bytes,
            "{kind}: the download differs from what was sent"
        );
        assert_eq!(got.header("content-type"), Some(*mimetype), "{kind}");
        assert_eq!(
            got.header("content-length"),
            Some(bytes.len().to_string().as_str()),
            "{kind}"
        );
        let disposition = got.header("content-disposition").unwrap_or_default();
        assert!(
            disposition.starts_with("attachment; filename"),
            "{disposition}"
        );
        if *kind != "document" {
            let ext = match *kind {
                "image" => "jpg",
                "ptt" => "ogg",
                "sticker" => "webp",
                _ => "mp4",
            };
            assert_eq!(disposition, format!("attachment; filename=\"{id}.{ext}\""));
        }
        if *kind == "document" {
            assert!(
                disposition.contains("filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"),
                "{disposition}"
            );
        }
        // Small media came inline too; the PDF is over the limit.
        match media.get("data_base64").and_then(Value::as_str) {
            Some(inline) => {
                assert!(bytes.len() <= 300 * 1024, "{kind} should not be inline");
                assert_eq!(inline, base64(bytes), "{kind} inline");
            }
            None => assert!(bytes.len() > 300 * 1024, "{kind} should be inline"),
        }
        ids.push(id);
    }

    // The cloud_api webhook as Meta's, and Meta's two-step download.
    let image = cloud_of(&cloud_bodies, &ids[0]).await;
    assert_eq!(image["type"], "image");
    assert_eq!(image["image"]["mime_type"], "image/jpeg");
    assert_eq!(image["image"]["caption"], "the receipt");
    let media_id = image["image"]["id"].as_str().expect("media id").to_string();
    assert_ne!(media_id, ids[0], "a media id is not the message id");
    let voice = cloud_of(&cloud_bodies, &ids[2]).await;
    assert_eq!(voice["audio"]["voice"], true);
    let doc = cloud_of(&cloud_bodies, &ids[1]).await;
    assert_eq!(doc["document"]["filename"], "Rechnung März.pdf");
    let graph = daemon
        .get(&format!("/graph/v23.0/{media_id}"), Some(&token))
        .await;
    assert_eq!(graph.status, 200, "{}", graph.text());
    let g = graph.json();
    assert_eq!(g["messaging_product"], "whatsapp");
    assert_eq!(g["id"], media_id.as_str());
    assert_eq!(g["mime_type"], "image/jpeg");
    assert_eq!(g["file_size"], jpeg.len() as u64);
    let url = g["url"].as_str().unwrap();
    assert!(url.starts_with("http://"), "{url}");
    let step_two = daemon.get(&path_of(url), Some(&token)).await;
    assert_eq!(step_two.status, 200);
    assert!(step_two.body == jpeg);

    // Another tenant: the session does not exist for it; nor does the id.
    let path = format!("/v1/sessions/shop-1/messages/{}/media", ids[0]);
    let foreign = daemon.get(&path, Some(&other)).await;
    assert_eq!(foreign.status, 404);
    assert_eq!(foreign.error_code(), "not_found");
    let foreign = daemon
        .get(&format!("/graph/v23.0/{media_id}"), Some(&other))
        .await;
    assert_eq!(foreign.status, 404);
    // A message without media.
    let none = daemon
        .get(
            "/v1/sessions/shop-1/messages/3EB0NOSUCHMESSAGE/media",
            Some(&token),
        )
        .await;
    assert_eq!(none.status, 404);
    assert_eq!(none.error_code(), "media_not_found");

    // A corrupted MAC: a clear 502, and the daemon carries on.
    let corrupt = send_media(
        &fake,
        "image",
        "image/jpeg",
        &jpeg,
        json!({ "corrupt_mac": true }),
    )
    .await;
    webhook_of(&whatsd_bodies, &corrupt).await;
    let bad = daemon
        .get(
            &format!("/v1/sessions/shop-1/messages/{corrupt}/media"),
            Some(&token),
        )
        .await;
    assert_eq!(bad.status, 502, "{}", bad.text());
    assert_eq!(bad.error_code(), "media_undecryptable");
    // fakewa flips a MAC byte of the stored blob, after hashing it: the
    // file no longer matches its file_enc_sha256, which is checked first
    // (the MAC after it; the unit tests in src/wa/media.rs cover both).
    let why = bad.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        why.contains("file_enc_sha256") || why.contains("MAC"),
        "{why}"
    );
    let again = daemon.get(&path, Some(&token)).await;
    assert_eq!(again.status, 200);
    assert!(again.body == jpeg);

    // WhatsApp's servers drop the files: 410.
    let expired = control(fake.control_addr(), "/control/media/expire", json!({})).await;
    assert_eq!(expired.status, 200, "{}", expired.text());
    let gone = daemon.get(&path, Some(&token)).await;
    assert_eq!(gone.status, 410, "{}", gone.text());
    assert_eq!(gone.error_code(), "media_expired");
    let status = daemon.get("/v1/sessions/shop-1", Some(&token)).await;
    assert_eq!(status.json()["state"], "connected");

    // A stopped session cannot fetch anything.
    let stopped = daemon
        .post("/v1/sessions/shop-1/stop", Some(&token), None)
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    let offline = daemon.get(&path, Some(&token)).await;
    assert_eq!(offline.status, 409, "{}", offline.text());
    assert_eq!(offline.error_code(), "not_connected");

    // The session id deleted and created again: nothing received before is
    // reachable, through either door.
    let deleted = daemon.delete("/v1/sessions/shop-1", Some(ADMIN)).await;
    assert!(
        deleted.status == 200 || deleted.status == 204,
        "{}",
        deleted.text()
    );
    let created = daemon
        .post(
            "/v1/sessions",
            Some(ADMIN),
            Some(json!({ "id": "shop-1", "tenant": "acme", "start": false })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let stale = daemon
        .get(
            &format!("/v1/sessions/shop-1/messages/{}/media", ids[1]),
            Some(&token),
        )
        .await;
    assert_eq!(stale.status, 404, "{}", stale.text());
    assert_eq!(stale.error_code(), "media_not_found");
    let stale = daemon
        .get(&format!("/graph/v23.0/{media_id}"), Some(&token))
        .await;
    assert_eq!(stale.status, 404, "{}", stale.text());
}

/// fakewa's count of the media re-upload requests its phones answered.
async fn reuploads(fake: &fakewa::FakeWa) -> Value {
    let got = request(
        fake.control_addr(),
        "GET",
        "/control/media/reupload",
        None,
        None,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.json()
}

/// GETs `path` until `done` accepts the answer (bounded); every answer
/// before must be 410 `media_expired`.
async fn poll_media(
    daemon: &Daemon,
    token: &str,
    path: &str,
    done: impl Fn(&Response) -> bool,
) -> Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = daemon.get(path, Some(token)).await;
        if done(&got) {
            return got;
        }
        assert_eq!(got.status, 410, "{}", got.text());
        assert_eq!(got.error_code(), "media_expired");
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out polling {path}: {}",
            got.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_media_is_uploaded_again_by_the_senders_phone() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = Options {
        extra_toml: "\n[webhooks]\nallow_private_targets = true\n".into(),
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let token = create_tenant(&daemon, "acme").await;
    let (url, bodies) = webhook_receiver().await;
    put_webhook(&daemon, &token, "acme", "crm", &url, "whatsd").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;

    let jpeg = file(&[0xff, 0xd8, 0xff, 0xe0], 150 * 1024 + 3, 11);
    let png = file(b"\x89PNG\r\n\x1a\n", 40 * 1024, 12);
    let kept = send_media(&fake, "image", "image/jpeg", &jpeg, json!({})).await;
    let lost = send_media(&fake, "image", "image/png", &png, json!({})).await;
    webhook_of(&bodies, &kept).await;
    webhook_of(&bodies, &lost).await;
    let kept_path = format!("/v1/sessions/shop-1/messages/{kept}/media");
    let lost_path = format!("/v1/sessions/shop-1/messages/{lost}/media");
    assert_eq!(daemon.get(&kept_path, Some(&token)).await.status, 200);
    let none = reuploads(&fake).await;
    assert_eq!(none["requests"], 0, "{none}");
    assert_eq!(none["answer"], "success", "{none}");

    let expired = control(fake.control_addr(), "/control/media/expire", json!({})).await;
    assert_eq!(expired.status, 200, "{}", expired.text());

    // The CDN answers 410: so does whatsd, and it asks the sender's phone.
    let gone = daemon.get(&kept_path, Some(&token)).await;
    assert_eq!(gone.status, 410, "{}", gone.text());
    assert_eq!(gone.error_code(), "media_expired");
    let why = gone.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("asked to upload it again"), "{why}");
    // The phone uploads it again; a retry gets the file, byte-exact.
    let got = poll_media(&daemon, &token, &kept_path, |r| r.status == 200).await;
    assert!(got.body == jpeg, "the re-uploaded download differs");
    assert_eq!(got.header("content-type"), Some("image/jpeg"));
    assert_eq!(
        got.header("content-length"),
        Some(jpeg.len().to_string().as_str())
    );
    let counts = reuploads(&fake).await;
    assert_eq!(
        counts["requests"], 1,
        "one request for one download: {counts}"
    );
    assert_eq!(counts["reuploaded"], 1, "{counts}");
    // The new path is kept: later downloads need no other request.
    let again = daemon.get(&kept_path, Some(&token)).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(again.body == jpeg);

    // A phone that no longer has the file: it stays 410.
    let refuse = control(
        fake.control_addr(),
        "/control/media/reupload",
        json!({ "answer": "not_found" }),
    )
    .await;
    assert_eq!(refuse.status, 200, "{}", refuse.text());
    assert_eq!(refuse.json()["answer"], "not_found");
    let gone = daemon.get(&lost_path, Some(&token)).await;
    assert_eq!(gone.status, 410, "{}", gone.text());
    assert_eq!(gone.error_code(), "media_expired");
    // The phone was asked (and refused).
    let counts = control_until(
        fake.control_addr(),
        "/control/media/reupload",
        Duration::from_secs(20),
        |c| c["refused"] == 1,
    )
    .await;
    assert_eq!(counts["requests"], 2, "{counts}");
    // whatsd records the refusal: the 410 says so, and the phone is not
    // asked again.
    let refused = poll_media(&daemon, &token, &lost_path, |r| {
        r.status == 410 && r.text().contains("cannot upload it again")
    })
    .await;
    assert_eq!(refused.error_code(), "media_expired");
    let still = daemon.get(&lost_path, Some(&token)).await;
    assert_eq!(still.status, 410, "{}", still.text());
    assert_eq!(still.error_code(), "media_expired");
    let counts = reuploads(&fake).await;
    assert_eq!(counts["requests"], 2, "a refusal is final: {counts}");

    // Nothing broke: the session is connected, the other file still served.
    let status = daemon.get("/v1/sessions/shop-1", Some(&token)).await;
    assert_eq!(status.json()["state"], "connected");
    let again = daemon.get(&kept_path, Some(&token)).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(again.body == jpeg);
    let log = daemon.log();
    assert!(
        log.contains("media re-upload refused"),
        "{}",
        common::tail(&log)
    );
    assert!(!log.contains("panicked"), "{}", common::tail(&log));
}
