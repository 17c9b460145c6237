//! Sending media (issue 16) against fakewa: each type goes through
//! whatsd's queue, WhatsApp's upload and the media message, and fakewa's
//! contact decrypts exactly the bytes sent; captions, file names, voice
//! notes, replies and reactions arrive as sent; mark-read and "typing…"
//! reach fakewa; URLs to internal addresses, oversize media and bytes
//! that are not what `type` says are refused before anything is stored;
//! a `kill -9` with a media send queued loses nothing.

mod common;

use std::time::Duration;

use common::{ADMIN, Daemon, request};
use serde_json::{Value, json};

const PHONE: &str = "15551260001";
const ADA: &str = "15557760001";

/// A multipart body: `fields` as form fields, then the `file` part.
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "whatsd-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((file_name, content_type, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_multipart(
    daemon: &Daemon,
    session: &str,
    fields: &[(&str, &str)],
    file: Option<(&str, &str, &[u8])>,
) -> common::Response {
    let (content_type, body) = multipart(fields, file);
    request(
        daemon.addr,
        "POST",
        &format!("/v1/sessions/{session}/messages"),
        Some(ADMIN),
        Some((&content_type, body)),
    )
    .await
}

async fn post_json(daemon: &Daemon, session: &str, body: Value) -> common::Response {
    daemon
        .post(
            &format!("/v1/sessions/{session}/messages"),
            Some(ADMIN),
            Some(body),
        )
        .await
}

/// A JPEG-looking file of `len` bytes (the magic number, then filler).
fn jpeg(len: usize) -> Vec<u8> {
    let mut bytes = b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01".to_vec();
    bytes.extend((0..len.saturating_sub(bytes.len())).map(|i| (i * 7 % 251) as u8));
    bytes
}

fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    bytes.extend((0..len.saturating_sub(bytes.len())).map(|i| (i * 13 % 251) as u8));
    bytes
}

/// Files under the daemon's media-out dir (blobs at rest).
fn blobs(daemon: &Daemon) -> usize {
    std::fs::read_dir(daemon.dir.join("data").join("media-out"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_media_is_refused_before_anything_is_stored() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = common::Options {
        extra_toml: "\n[media]\nmax_image_bytes = \"100KiB\"\n".into(),
        ..common::Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let created = daemon
        .post(
            "/v1/sessions",
            Some(ADMIN),
            Some(json!({ "id": "shop-1", "start": false })),
        )
        .await;
    assert_eq!(created.status, 201);

    // URLs to loopback, private and link-local addresses: 422 url_not_allowed.
    for url in [
        "http://127.0.0.1:1/cat.jpg",
        "http://10.1.2.3/cat.jpg",
        "http://192.168.0.10/cat.jpg",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/cat.jpg",
        "http://localhost/cat.jpg",
    ] {
        let refused = post_json(
            &daemon,
            "shop-1",
            json!({ "to": ADA, "type": "image", "url": url }),
        )
        .await;
        assert_eq!(refused.status, 422, "{url}: {}", refused.text());
        assert_eq!(refused.error_code(), "url_not_allowed", "{url}");
    }
    let refused = post_json(
        &daemon,
        "shop-1",
        json!({ "to": ADA, "type": "image", "url": "ftp://example.com/x" }),
    )
    .await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (422, "invalid_url")
    );

    // Over the configured image limit: 413, whether the type comes before
    // or after the bytes.
    let big = jpeg(200 * 1024);
    let refused = post_multipart(
        &daemon,
        "shop-1",
        &[("to", ADA), ("type", "image")],
        Some(("cat.jpg", "image/jpeg", &big)),
    )
    .await;
    assert_eq!(refused.status, 413, "{}", refused.text());
    assert_eq!(refused.error_code(), "media_too_large");
    let (content_type, mut body) = multipart(&[], Some(("cat.jpg", "image/jpeg", &big)));
    let tail = format!(
        "--whatsd-test-boundary-7d1f\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n{}\r\n--whatsd-test-boundary-7d1f--\r\n",
        json!({"to": ADA, "type": "image"})
    );
    body.truncate(body.len() - "--whatsd-test-boundary-7d1f--\r\n".len());
    body.extend_from_slice(tail.as_bytes());
    let refused = request(
        daemon.addr,
        "POST",
        "/v1/sessions/shop-1/messages",
        Some(ADMIN),
        Some((&content_type, body)),
    )
    .await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (413, "media_too_large"),
        "{}",
        refused.text()
    );

    // A PNG declared as audio, a JPEG as a sticker, an MP3-less voice note: 415.
    for (kind, voice, bytes) in [
        ("audio", None, png(1000)),
        ("sticker", None, jpeg(1000)),
        ("audio", Some("true"), jpeg(1000)),
    ] {
        let mut fields = vec![("to", ADA), ("type", kind)];
        if let Some(v) = voice {
            fields.push(("voice", v));
        }
        let refused = post_multipart(
            &daemon,
            "shop-1",
            &fields,
            Some(("x.bin", "application/octet-stream", &bytes)),
        )
        .await;
        assert_eq!(refused.status, 415, "{kind}: {}", refused.text());
        assert_eq!(refused.error_code(), "unsupported_media_type");
    }

    // Bad fields: 422.
    let no_bytes = post_multipart(&daemon, "shop-1", &[("to", ADA), ("type", "image")], None).await;
    assert_eq!(no_bytes.status, 422, "{}", no_bytes.text());
    for (fields, why) in [
        (vec![("to", ADA), ("type", "gif")], "unknown type"),
        (
            vec![("to", ADA), ("type", "image"), ("voice", "true")],
            "voice on an image",
        ),
        (
            vec![("to", ADA), ("type", "sticker"), ("caption", "hi")],
            "caption on a sticker",
        ),
        (vec![("to", "12"), ("type", "image")], "bad recipient"),
    ] {
        let refused = post_multipart(
            &daemon,
            "shop-1",
            &fields,
            Some(("a.jpg", "image/jpeg", &jpeg(1000))),
        )
        .await;
        assert_eq!(refused.status, 422, "{why}: {}", refused.text());
    }
    for body in [
        json!({ "to": ADA, "type": "reaction", "emoji": "👍" }),
        json!({ "to": ADA, "type": "reaction", "message_id": "ABC" }),
        json!({ "to": ADA, "text": "hi", "emoji": "👍" }),
        json!({ "to": ADA, "text": "hi", "reply_to": "not an id!" }),
        json!({ "to": ADA, "type": "text" }),
    ] {
        let refused = post_json(&daemon, "shop-1", body.clone()).await;
        assert_eq!(refused.status, 422, "{body}: {}", refused.text());
    }
    // Nothing was left at rest by any of these.
    assert_eq!(blobs(&daemon), 0, "refused media leave no blob behind");
    drop(fake);
}

/// Rate limits out of the way (tests/rate_limits.rs has them).
const UNLIMITED: &str =
    "[limits]\nsends_per_minute = 1000000\nsends_per_hour = 1000000\nsends_per_day = 1000000\n";

fn pdf(len: usize) -> Vec<u8> {
    let mut bytes = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
    bytes.extend((0..len.saturating_sub(bytes.len())).map(|i| (i * 31 % 253) as u8));
    bytes
}

fn opus(len: usize) -> Vec<u8> {
    let mut bytes = b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x11\x22\x33\x44\x00\x00\x00\x00\x00\x00\x00\x00\x01\x13OpusHead\x01\x01\x38\x01\x80\xBB\x00\x00\x00\x00\x00".to_vec();
    bytes.extend((0..len.saturating_sub(bytes.len())).map(|i| (i * 17 % 241) as u8));
    bytes
}

fn webp(len: usize) -> Vec<u8> {
    let mut bytes = b"RIFF".to_vec();
    bytes.extend_from_slice(&((len - 8) as u32).to_le_bytes());
    bytes.extend_from_slice(b"WEBPVP8 ");
    bytes.extend((0..len.saturating_sub(bytes.len())).map(|i| (i * 11 % 239) as u8));
    bytes
}

/// A one-file HTTP server on 127.0.0.1:0 answering every GET with `bytes`.
async fn file_server(bytes: Vec<u8>, content_type: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.write_all(&bytes).await;
            });
        }
    });
    format!("http://{addr}/files/sticker.webp")
}

async fn control_get(fake: &fakewa::FakeWa, path: &str) -> common::Response {
    request(fake.control_addr(), "GET", path, None, None).await
}

/// The outbox entry of message `id` (what fakewa's contact got), once there.
async fn outbox_entry(fake: &fakewa::FakeWa, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let outbox = control_get(fake, &format!("/control/outbox?from_phone={PHONE}")).await;
        if let Some(entry) = outbox.json()["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|e| e["id"] == id).cloned())
        {
            return entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message {id} never reached fakewa: {}",
            outbox.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bytes fakewa decrypted from message `id`'s media.
async fn sent_bytes(fake: &fakewa::FakeWa, id: &str) -> Vec<u8> {
    let got = control_get(fake, &format!("/control/media/sent/{id}")).await;
    assert_eq!(got.status, 200, "media of {id}: {}", got.text());
    got.body
}

/// How long a test waits for fakewa's control API to show something.
const CONTROL_WAIT: Duration = Duration::from_secs(30);

fn queued_id(response: &common::Response) -> String {
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_media_type_arrives_byte_exact_with_its_fields() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = common::Options {
        extra_toml: format!("\n{UNLIMITED}\n[media]\nallow_private_urls = true\n"),
        ..common::Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    common::pair(&daemon, &fake, "shop-1", None, PHONE).await;
    let ada_jid = format!("{ADA}@s.whatsapp.net");

    // Ada writes first: something to reply to, react to and mark read.
    let hello = common::control(
        fake.control_addr(),
        "/control/messages",
        json!({ "to_phone": PHONE, "from_phone": ADA, "text": "hello shop" }),
    )
    .await;
    assert_eq!(hello.status, 200, "{}", hello.text());
    let hello_id = hello.json()["id"].as_str().unwrap().to_owned();

    // A text reply.
    let text_id = queued_id(
        &post_json(
            &daemon,
            "shop-1",
            json!({ "to": ADA, "text": "hi Ada", "reply_to": hello_id }),
        )
        .await,
    );
    let entry = outbox_entry(&fake, &text_id).await;
    assert_eq!(entry["text"], "hi Ada");
    assert_eq!(entry["reply_to"]["id"], hello_id.as_str());
    assert_eq!(entry["reply_to"]["participant"], ada_jid.as_str());

    // A 200 KB JPEG with a caption, quoting the text reply (our own message).
    let picture = jpeg(200 * 1024);
    let image_id = queued_id(
        &post_multipart(
            &daemon,
            "shop-1",
            &[
                ("to", ADA),
                ("type", "image"),
                ("caption", "our new shop ✨"),
                ("reply_to", &text_id),
            ],
            Some(("shop.jpg", "image/jpeg", &picture)),
        )
        .await,
    );
    // A 5 MB PDF with its file name (the fields as one JSON part, after the file).
    let report = pdf(5 * 1024 * 1024);
    let (content_type, mut body) = multipart(&[], Some(("upload.bin", "application/pdf", &report)));
    body.truncate(body.len() - "--whatsd-test-boundary-7d1f--\r\n".len());
    body.extend_from_slice(
        format!(
            "--whatsd-test-boundary-7d1f\r\nContent-Disposition: form-data; name=\"message\"\r\nContent-Type: application/json\r\n\r\n{}\r\n--whatsd-test-boundary-7d1f--\r\n",
            json!({ "to": ADA, "type": "document", "file_name": "report-2026.pdf", "caption": "the report" })
        )
        .as_bytes(),
    );
    let doc = request(
        daemon.addr,
        "POST",
        "/v1/sessions/shop-1/messages",
        Some(ADMIN),
        Some((&content_type, body)),
    )
    .await;
    let doc_id = queued_id(&doc);
    // An Opus voice note.
    let note = opus(48 * 1024);
    let voice_id = queued_id(
        &post_multipart(
            &daemon,
            "shop-1",
            &[("to", ADA), ("type", "audio"), ("voice", "true")],
            Some(("note.ogg", "audio/ogg", &note)),
        )
        .await,
    );
    // A WebP sticker, fetched from a URL.
    let sticker = webp(30 * 1024);
    let url = file_server(sticker.clone(), "image/webp").await;
    let sticker_id = queued_id(
        &post_json(
            &daemon,
            "shop-1",
            json!({ "to": ADA, "type": "sticker", "url": url }),
        )
        .await,
    );
    // A reaction to Ada's message, then its removal.
    let reaction_id = queued_id(
        &post_json(
            &daemon,
            "shop-1",
            json!({ "to": ADA, "type": "reaction", "message_id": hello_id, "emoji": "👍" }),
        )
        .await,
    );
    let unreact_id = queued_id(
        &post_json(
            &daemon,
            "shop-1",
            json!({ "to": ADA, "type": "reaction", "message_id": hello_id, "emoji": "" }),
        )
        .await,
    );

    let entry = outbox_entry(&fake, &image_id).await;
    assert_eq!(entry["media"]["type"], "image");
    assert_eq!(entry["media"]["mimetype"], "image/jpeg");
    assert_eq!(entry["media"]["caption"], "our new shop ✨");
    assert_eq!(entry["media"]["download"], "ok");
    assert_eq!(entry["reply_to"]["id"], text_id.as_str());
    assert_eq!(
        entry["reply_to"]["participant"],
        format!("{PHONE}@s.whatsapp.net")
    );
    assert!(
        sent_bytes(&fake, &image_id).await == picture,
        "the JPEG arrives byte for byte"
    );

    let entry = outbox_entry(&fake, &doc_id).await;
    assert_eq!(entry["media"]["type"], "document");
    assert_eq!(entry["media"]["file_name"], "report-2026.pdf");
    assert_eq!(entry["media"]["mimetype"], "application/pdf");
    assert_eq!(entry["media"]["caption"], "the report");
    assert_eq!(entry["media"]["file_length"], report.len());
    assert!(
        sent_bytes(&fake, &doc_id).await == report,
        "the 5 MB PDF arrives byte for byte"
    );

    let entry = outbox_entry(&fake, &voice_id).await;
    assert!(
        matches!(entry["media"]["type"].as_str(), Some("audio" | "ptt")),
        "{entry}"
    );
    assert_eq!(entry["media"]["ptt"], true);
    assert_eq!(entry["media"]["mimetype"], "audio/ogg; codecs=opus");
    assert!(
        sent_bytes(&fake, &voice_id).await == note,
        "the voice note arrives byte for byte"
    );

    let entry = outbox_entry(&fake, &sticker_id).await;
    assert_eq!(entry["media"]["type"], "sticker");
    assert_eq!(entry["media"]["mimetype"], "image/webp");
    assert!(
        sent_bytes(&fake, &sticker_id).await == sticker,
        "the sticker arrives byte for byte"
    );

    let entry = outbox_entry(&fake, &reaction_id).await;
    assert_eq!(entry["reaction"]["target_id"], hello_id.as_str());
    assert_eq!(entry["reaction"]["emoji"], "👍");
    assert_eq!(entry["reaction"]["from_me"], false);
    let entry = outbox_entry(&fake, &unreact_id).await;
    assert_eq!(
        entry["reaction"]["emoji"], "",
        "an empty emoji removes the reaction"
    );

    // Sent media leave nothing at rest.
    for id in [&image_id, &doc_id, &voice_id, &sticker_id] {
        let status = daemon
            .get(&format!("/v1/sessions/shop-1/messages/{id}"), Some(ADMIN))
            .await;
        assert_ne!(status.json()["status"], "queued", "{}", status.text());
    }
    assert_eq!(
        blobs(&daemon),
        0,
        "sent media are removed from the data dir"
    );

    // Mark the chat read (the latest message: Ada's), then by id.
    let read = daemon
        .post(
            &format!("/v1/sessions/shop-1/chats/{ADA}/read"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["message_ids"], json!([hello_id]));
    common::control_until(
        fake.control_addr(),
        &format!("/control/receipts-from-devices?phone={PHONE}"),
        CONTROL_WAIT,
        |v| {
            v["receipts"].as_array().is_some_and(|r| {
                r.iter().any(|r| {
                    r["ids"]
                        .as_array()
                        .is_some_and(|ids| ids.iter().any(|i| i == hello_id.as_str()))
                        && r["type"] == "read"
                })
            })
        },
    )
    .await;
    let read = daemon
        .post(
            &format!("/v1/sessions/shop-1/chats/{ADA}/read"),
            Some(ADMIN),
            Some(json!({ "message_ids": [hello_id] })),
        )
        .await;
    assert_eq!(read.status, 200, "{}", read.text());
    let nothing = daemon
        .post(
            "/v1/sessions/shop-1/chats/15550000000/read",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (nothing.status, nothing.error_code().as_str()),
        (404, "nothing_to_read")
    );

    // "typing…", "recording…", then stop.
    for (state, wire) in [
        ("typing", "composing"),
        ("recording", "recording"),
        ("paused", "paused"),
    ] {
        let shown = daemon
            .post(
                &format!("/v1/sessions/shop-1/chats/{ADA}/presence"),
                Some(ADMIN),
                Some(json!({ "state": state })),
            )
            .await;
        assert_eq!(shown.status, 204, "{}", shown.text());
        common::control_until(
            fake.control_addr(),
            &format!("/control/chatstates?phone={PHONE}"),
            CONTROL_WAIT,
            |v| {
                v["chatstates"].as_array().is_some_and(|c| {
                    c.iter().any(|c| {
                        c["state"] == wire
                            && c["chat"].as_str().is_some_and(|chat| chat.starts_with(ADA))
                    })
                })
            },
        )
        .await;
    }
    let bad = daemon
        .post(
            &format!("/v1/sessions/shop-1/chats/{ADA}/presence"),
            Some(ADMIN),
            Some(json!({ "state": "dancing" })),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_sends_media_by_link_and_by_uploaded_id() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = common::Options {
        extra_toml: format!("\n{UNLIMITED}\n[media]\nallow_private_urls = true\n"),
        ..common::Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    common::pair(&daemon, &fake, "shop-1", None, PHONE).await;

    // Meta's two steps: upload, then send by id (twice: the id stays).
    let picture = png(64 * 1024);
    let (content_type, body) = multipart(
        &[("messaging_product", "whatsapp"), ("type", "image/png")],
        Some(("p.png", "image/png", &picture)),
    );
    let uploaded = request(
        daemon.addr,
        "POST",
        "/graph/v23.0/shop-1/media",
        Some(ADMIN),
        Some((&content_type, body)),
    )
    .await;
    assert_eq!(uploaded.status, 200, "{}", uploaded.text());
    let media_id = uploaded.json()["id"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for caption in ["first", "second"] {
        let sent = daemon
            .post(
                "/graph/v23.0/shop-1/messages",
                Some(ADMIN),
                Some(json!({ "messaging_product": "whatsapp", "to": ADA, "type": "image", "image": { "id": media_id, "caption": caption } })),
            )
            .await;
        assert_eq!(sent.status, 200, "{}", sent.text());
        ids.push(
            sent.json()["messages"][0]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for (id, caption) in ids.iter().zip(["first", "second"]) {
        let entry = outbox_entry(&fake, id).await;
        assert_eq!(entry["media"]["caption"], caption);
        assert!(
            sent_bytes(&fake, id).await == picture,
            "the upload arrives byte for byte"
        );
    }
    // A document by link, replying to the first picture.
    let report = pdf(300 * 1024);
    let url = file_server(report.clone(), "application/pdf").await;
    let sent = daemon
        .post(
            "/graph/v23.0/shop-1/messages",
            Some(ADMIN),
            Some(json!({
                "messaging_product": "whatsapp", "to": ADA, "type": "document",
                "document": { "link": url, "filename": "invoice.pdf" },
                "context": { "message_id": ids[0] },
            })),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let doc_id = sent.json()["messages"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let entry = outbox_entry(&fake, &doc_id).await;
    assert_eq!(entry["media"]["file_name"], "invoice.pdf");
    assert_eq!(entry["reply_to"]["id"], ids[0].as_str());
    assert!(sent_bytes(&fake, &doc_id).await == report);
    // Refusals in Meta's shape.
    let unknown = daemon
        .post(
            "/graph/v23.0/shop-1/messages",
            Some(ADMIN),
            Some(json!({ "messaging_product": "whatsapp", "to": ADA, "type": "image", "image": { "id": "1234567890123456" } })),
        )
        .await;
    assert_eq!(unknown.status, 400, "{}", unknown.text());
    assert_eq!(unknown.json()["error"]["code"], 131_009);
    let wrong = daemon
        .post(
            "/graph/v23.0/shop-1/messages",
            Some(ADMIN),
            Some(json!({ "messaging_product": "whatsapp", "to": ADA, "type": "audio", "audio": { "id": media_id } })),
        )
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    assert_eq!(wrong.json()["error"]["code"], 131_053, "a PNG is no audio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_media_send_survives_kill_9() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = common::Options {
        extra_toml: UNLIMITED.into(),
        ..common::Options::default()
    };
    let (_dir, mut daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    common::pair(&daemon, &fake, "shop-1", None, PHONE).await;
    let stopped = daemon
        .post("/v1/sessions/shop-1/stop", Some(ADMIN), None)
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    daemon.wait_state("shop-1", "stopped", 10).await;

    let report = pdf(2 * 1024 * 1024);
    let doc_id = queued_id(
        &post_multipart(
            &daemon,
            "shop-1",
            &[("to", ADA), ("type", "document"), ("file_name", "kept.pdf")],
            Some(("kept.pdf", "application/pdf", &report)),
        )
        .await,
    );
    let note = opus(20 * 1024);
    let voice_id = queued_id(
        &post_multipart(
            &daemon,
            "shop-1",
            &[("to", ADA), ("type", "audio"), ("voice", "true")],
            Some(("n.ogg", "audio/ogg", &note)),
        )
        .await,
    );
    assert_eq!(blobs(&daemon), 2, "202 means the bytes are stored");
    daemon.kill().await;
    daemon.restart().await;
    let started = daemon
        .post("/v1/sessions/shop-1/start", Some(ADMIN), None)
        .await;
    assert_eq!(started.status, 200, "{}", started.text());
    let entry = outbox_entry(&fake, &doc_id).await;
    assert_eq!(entry["media"]["file_name"], "kept.pdf");
    assert!(
        sent_bytes(&fake, &doc_id).await == report,
        "the PDF survives kill -9 byte for byte"
    );
    outbox_entry(&fake, &voice_id).await;
    assert!(sent_bytes(&fake, &voice_id).await == note);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while blobs(&daemon) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "blobs stay after their sends"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Deleting a session takes its queued media with it.
    let stopped = daemon
        .post("/v1/sessions/shop-1/stop", Some(ADMIN), None)
        .await;
    assert_eq!(stopped.status, 200);
    daemon.wait_state("shop-1", "stopped", 10).await;
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(queued_id(
            &post_multipart(
                &daemon,
                "shop-1",
                &[("to", ADA), ("type", "image")],
                Some(("a.jpg", "image/jpeg", &jpeg(10_000))),
            )
            .await,
        ));
    }
    assert_eq!(blobs(&daemon), 2);
    // Cancelling a queued media send removes its bytes.
    let cancelled = daemon
        .delete(
            &format!("/v1/sessions/shop-1/messages/{}", queued[0]),
            Some(ADMIN),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(blobs(&daemon), 1);
    let deleted = daemon.delete("/v1/sessions/shop-1", Some(ADMIN)).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(blobs(&daemon), 0, "a deleted session's media go with it");
}

/// Polls fakewa until `n` uploads wait on its hold.
async fn uploads_waiting(fake: &fakewa::FakeWa, n: u64) {
    common::control_until(
        fake.control_addr(),
        "/control/media/hold",
        CONTROL_WAIT,
        |v| v["waiting"] == n,
    )
    .await;
}

async fn hold_uploads(fake: &fakewa::FakeWa, hold: bool) {
    let held = common::control(
        fake.control_addr(),
        "/control/media/hold",
        json!({ "hold": hold }),
    )
    .await;
    assert_eq!(held.status, 200, "{}", held.text());
}

/// A request that must be answered while an upload is stuck: bounded, so
/// a session whose loop waits on the upload fails the test instead of
/// hanging it.
async fn answered(
    what: &str,
    call: impl std::future::Future<Output = common::Response>,
) -> common::Response {
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer while an upload was in flight"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_flight_holds_up_nothing_and_can_be_cancelled() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = common::Options {
        extra_toml: UNLIMITED.into(),
        ..common::Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    common::pair(&daemon, &fake, "shop-1", None, PHONE).await;

    // The CDN holds the first upload: a picture that takes "forever".
    hold_uploads(&fake, true).await;
    let picture = queued_id(
        &post_multipart(
            &daemon,
            "shop-1",
            &[("to", ADA), ("type", "image"), ("caption", "stuck")],
            Some(("a.jpg", "image/jpeg", &jpeg(200_000))),
        )
        .await,
    );
    uploads_waiting(&fake, 1).await;

    // Meanwhile the session answers: status reads, new sends, cancels.
    let status = answered(
        "the picture's status",
        daemon.get(
            &format!("/v1/sessions/shop-1/messages/{picture}"),
            Some(ADMIN),
        ),
    )
    .await;
    assert_eq!(status.status, 200, "{}", status.text());
    assert_eq!(status.json()["status"], "queued");
    let text = queued_id(
        &answered(
            "a text queued behind the picture",
            post_json(
                &daemon,
                "shop-1",
                json!({"to": ADA, "text": "after the picture"}),
            ),
        )
        .await,
    );
    let info = answered(
        "the session",
        daemon.get("/v1/sessions/shop-1", Some(ADMIN)),
    )
    .await;
    assert_eq!(info.json()["state"], "connected");

    // Cancelled while it uploads: it never goes, and its bytes are removed.
    let cancelled = answered(
        "cancelling the upload",
        daemon.delete(
            &format!("/v1/sessions/shop-1/messages/{picture}"),
            Some(ADMIN),
        ),
    )
    .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.json()["status"], "cancelled");
    assert_eq!(blobs(&daemon), 0, "a cancelled send's blob is removed");

    // The queue goes on with the text, in order, while the CDN still holds
    // the abandoned upload; then the CDN lets it through, too late.
    let entry = outbox_entry(&fake, &text).await;
    assert_eq!(entry["text"], "after the picture");
    hold_uploads(&fake, false).await;
    uploads_waiting(&fake, 0).await;
    let outbox = control_get(&fake, &format!("/control/outbox?from_phone={PHONE}")).await;
    let outbox = outbox.json();
    let sent: Vec<&Value> = outbox["messages"]
        .as_array()
        .map(|m| m.iter().filter(|e| e["id"] == picture.as_str()).collect())
        .unwrap_or_default();
    assert!(
        sent.is_empty(),
        "a cancelled picture reached the contact: {sent:?}"
    );
    let status = daemon
        .get(
            &format!("/v1/sessions/shop-1/messages/{picture}"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status.json()["status"], "cancelled");

    // A send that has left is no longer cancelled: the next picture goes
    // (nothing holds it), and a cancel after it answers 409.
    let second = queued_id(
        &post_multipart(
            &daemon,
            "shop-1",
            &[("to", ADA), ("type", "image")],
            Some(("b.jpg", "image/jpeg", &jpeg(20_000))),
        )
        .await,
    );
    outbox_entry(&fake, &second).await;
    assert!(sent_bytes(&fake, &second).await == jpeg(20_000));
    let late = daemon
        .delete(
            &format!("/v1/sessions/shop-1/messages/{second}"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(late.status, 409, "{}", late.text());
    assert_eq!(late.json()["error"]["code"], "not_queued");
}
