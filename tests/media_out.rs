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
