//! Media against fakewa's media server (HTTPS, its own CA): an unmodified
//! whatsapp-rust client on whatsd's HTTP client (`whatsd::wa::http`, trusting
//! fakewa's CA) downloads what a contact sent, byte-exact, and uploads a file
//! fakewa accepts and can decrypt; expired media answers 410. And the daemon
//! the shared test helpers start trusts that CA by itself.

mod common;

use std::sync::Arc;
use std::time::Duration;

use fakewa::FakeWa;
use serde_json::json;
use tokio::sync::mpsc;
use wacore::download::{DownloadUtils, MediaType};
use wacore::store::in_memory::InMemoryBackend;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::{Client, UploadOptions, waproto::whatsapp as wa};

const CONTACT: &str = "15550001111";

struct Linked {
    client: Arc<Client>,
    handle: Option<BotHandle>,
    events: mpsc::UnboundedReceiver<Arc<Event>>,
    phone: String,
    _ca_dir: tempfile::TempDir,
}

impl Linked {
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
                Ok(None) => panic!("event stream ended while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }
}

/// A bare client on whatsd's media HTTP client, paired with `phone`.
async fn link(fake: &FakeWa, phone: &str) -> Linked {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path().join("media-ca.pem");
    std::fs::write(&ca_path, fake.media_ca_pem()).unwrap();
    let http = whatsd::wa::http::client(Some(&ca_path)).expect("media HTTP client");
    let (tx, events) = mpsc::unbounded_channel();
    let bot = Bot::builder()
        .with_backend_arc(Arc::new(InMemoryBackend::new()))
        .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(fake.ws_url()))
        .with_http_client(http)
        .with_version((2, 3000, 1_023_456_789))
        .skip_history_sync()
        .on_event(move |event, _client| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
            }
        })
        .build()
        .await
        .expect("bot builds");
    let client = bot.client();
    let mut linked = Linked {
        client,
        handle: Some(bot.spawn()),
        events,
        phone: phone.to_owned(),
        _ca_dir: ca_dir,
    };
    let qr = linked
        .wait_for("a QR code", |e| match e {
            Event::PairingQrCode(q) => Some(q.code.clone()),
            _ => None,
        })
        .await;
    fake.server.scan(&qr, Some(phone)).await.expect("scan");
    linked
        .wait_for("Connected", |e| {
            matches!(e, Event::Connected(_)).then_some(())
        })
        .await;
    linked
}

async fn control(fake: &FakeWa, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    fakewa::control_client::request("POST", fake.control_addr(), path, Some(&body.to_string()))
        .await
        .expect("control API answers")
}

/// Standard base64 with padding (the control API's `data_base64`).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Deterministic "random" bytes (a JPEG's entropy, not its format).
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_image_downloads_byte_exact_then_expires() {
    common::init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let mut linked = link(&fake, "15551230001").await;
    let original = bytes(200 * 1024, 1);

    let (status, sent) = control(
        &fake,
        "/control/media",
        json!({
            "to_phone": linked.phone,
            "from_phone": CONTACT,
            "type": "image",
            "mimetype": "image/jpeg",
            "caption": "the receipt",
            "data_base64": base64(&original),
        }),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();

    let image = linked
        .wait_for("the image message", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == id)
                .and_then(|m| m.message.image_message.as_option().cloned()),
            _ => None,
        })
        .await;
    assert_eq!(image.caption.as_deref(), Some("the receipt"));
    assert_eq!(image.mimetype.as_deref(), Some("image/jpeg"));
    assert_eq!(image.file_length, Some(original.len() as u64));
    assert_eq!(image.direct_path.as_deref(), sent["direct_path"].as_str());

    let downloaded = linked.client.download(&image).await.expect("download");
    assert_eq!(downloaded.len(), original.len());
    assert!(downloaded == original, "downloaded bytes differ");

    let (status, expired) = control(&fake, "/control/media/expire", json!({})).await;
    assert_eq!(status, 200, "{expired}");
    assert_eq!(expired["expired"], 1);
    let err = linked
        .client
        .download(&image)
        .await
        .expect_err("expired media cannot be downloaded");
    assert!(format!("{err:#}").contains("410"), "{err:#}");

    if let Some(handle) = linked.handle.take() {
        handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_accepted_and_fakewa_decrypts_it() {
    common::init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let mut linked = link(&fake, "15551230002").await;
    // Below and above whatsapp-rust's 5 MiB resumable-upload threshold (the
    // larger one first asks fakewa whether a partial upload exists).
    for (size, seed) in [(300 * 1024 + 7, 2), (6 * 1024 * 1024 + 1, 5)] {
        let original = bytes(size, seed);

        let uploaded = linked
            .client
            .upload(original.clone(), MediaType::Image, UploadOptions::default())
            .await
            .expect("upload");
        assert!(
            uploaded
                .url
                .starts_with(&format!("https://{}/", fake.media_addr())),
            "{}",
            uploaded.url
        );
        let fakewa::media::Lookup::Live(blob) = fake.server.media.get(&uploaded.direct_path) else {
            panic!("fakewa did not store the upload");
        };
        let plain = DownloadUtils::verify_and_decrypt(&blob, &uploaded.media_key, MediaType::Image)
            .expect("fakewa decrypts the upload with the media key");
        assert!(plain == original, "decrypted upload differs");

        // The upload downloads again through the same client, as a recipient would.
        let image = wa::message::ImageMessage {
            direct_path: Some(uploaded.direct_path.clone()),
            media_key: Some(uploaded.media_key.to_vec()),
            file_sha256: Some(uploaded.file_sha256.to_vec()),
            file_enc_sha256: Some(uploaded.file_enc_sha256.to_vec()),
            file_length: Some(uploaded.file_length),
            ..Default::default()
        };
        assert!(linked.client.download(&image).await.expect("download") == original);
    }

    if let Some(handle) = linked.handle.take() {
        handle.shutdown().await;
    }
}

/// The shared helpers give a daemon started against an in-process fakewa
/// its media CA (`whatsapp.media_ca_file`); a test build accepts the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_daemon_trusts_fakewas_media_ca() {
    common::init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let (_dir, daemon) = common::Daemon::start(&fake.ws_url()).await;
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    assert!(config.contains("media_ca_file = "), "{config}");
    let ca = std::fs::read_to_string(daemon.dir.join("media-ca.pem")).unwrap();
    assert_eq!(ca, fake.media_ca_pem());
    let health = daemon.get("/healthz", None).await;
    assert_eq!(health.status, 200, "{}", health.text());
}

async fn get(fake: &FakeWa, path: &str) -> (u16, serde_json::Value) {
    fakewa::control_client::request("GET", fake.control_addr(), path, None)
        .await
        .expect("control API answers")
}

/// Polls `GET path` until `pick` finds something (30 s at most).
async fn poll<T>(
    fake: &FakeWa,
    path: &str,
    what: &str,
    pick: impl Fn(&serde_json::Value) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(fake, path).await;
        assert_eq!(status, 200, "{body}");
        if let Some(found) = pick(&body) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a device sends reaches fakewa's control API: a media message (its
/// fields, fakewa's own check of the upload, and the decrypted bytes), a
/// reply, a reaction, a read receipt and typing/recording indicators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_device_sends_shows_in_the_control_api() {
    common::init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let mut linked = link(&fake, "15551230003").await;
    let phone = linked.phone.clone();
    let to: whatsapp_rust::Jid = format!("{CONTACT}@s.whatsapp.net").parse().unwrap();
    let original = bytes(64 * 1024 + 3, 3);

    // A contact's text, so there is something to reply to and mark read.
    let inbound = fake
        .server
        .send_message(&phone, CONTACT, "photo please", fakewa::MessageKind::Dm)
        .unwrap();
    linked
        .wait_for("the contact's text", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .any(|m| m.info.id == inbound)
                .then_some(()),
            _ => None,
        })
        .await;

    let up = linked
        .client
        .upload(
            original.clone(),
            MediaType::Document,
            UploadOptions::default(),
        )
        .await
        .expect("upload");
    let doc = wa::Message {
        document_message: whatsapp_rust::waproto::buffa::MessageField::some(
            wa::message::DocumentMessage {
                url: Some(up.url.clone()),
                direct_path: Some(up.direct_path.clone()),
                media_key: Some(up.media_key.to_vec()),
                file_sha256: Some(up.file_sha256.to_vec()),
                file_enc_sha256: Some(up.file_enc_sha256.to_vec()),
                file_length: Some(up.file_length),
                mimetype: Some("application/pdf".into()),
                file_name: Some("receipt.pdf".into()),
                caption: Some("here".into()),
                context_info: whatsapp_rust::waproto::buffa::MessageField::some(wa::ContextInfo {
                    stanza_id: Some(inbound.clone()),
                    participant: Some(format!("{CONTACT}@s.whatsapp.net")),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    let sent = linked
        .client
        .send_message(to.clone(), doc)
        .await
        .expect("send");
    let outbox = format!("/control/outbox?from_phone={phone}");
    let entry = poll(&fake, &outbox, "the document in the outbox", |b| {
        b["messages"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == sent.message_id.as_str())
            .cloned()
    })
    .await;
    let media = &entry["media"];
    assert_eq!(media["type"], "document", "{entry}");
    assert_eq!(media["mimetype"], "application/pdf");
    assert_eq!(media["file_name"], "receipt.pdf");
    assert_eq!(media["caption"], "here");
    assert_eq!(media["file_length"], original.len());
    assert_eq!(media["ptt"], false);
    assert_eq!(
        media["download"], "ok",
        "fakewa verified the upload: {entry}"
    );
    let sha: String = up.file_sha256.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(media["sha256_hex"], sha);
    assert_eq!(entry["reply_to"]["id"], inbound.as_str());
    assert_eq!(
        entry["reply_to"]["participant"],
        format!("{CONTACT}@s.whatsapp.net")
    );
    let decrypted = fakewa::control_client::request(
        "GET",
        fake.control_addr(),
        &format!("/control/media/sent/{}", sent.message_id),
        None,
    )
    .await
    .unwrap();
    assert_eq!(decrypted.0, 200);
    // The control client reads JSON; the raw bytes come from the library call.
    let (plain, mimetype) = fake.server.sent_media(&sent.message_id).unwrap();
    assert!(plain == original, "fakewa's decryption differs");
    assert_eq!(mimetype.as_deref(), Some("application/pdf"));
    assert_eq!(
        get(&fake, "/control/media/sent/NOSUCHID").await.0,
        404,
        "no such message"
    );

    // A reaction to the contact's message.
    let reaction = wa::Message {
        reaction_message: whatsapp_rust::waproto::buffa::MessageField::some(
            wa::message::ReactionMessage {
                key: whatsapp_rust::waproto::buffa::MessageField::some(wa::MessageKey {
                    remote_jid: Some(to.to_string()),
                    from_me: Some(false),
                    id: Some(inbound.clone()),
                    ..Default::default()
                }),
                text: Some("👍".into()),
                sender_timestamp_ms: Some(1),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    let reacted = linked
        .client
        .send_message(to.clone(), reaction)
        .await
        .expect("react");
    let entry = poll(&fake, &outbox, "the reaction in the outbox", |b| {
        b["messages"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == reacted.message_id.as_str())
            .cloned()
    })
    .await;
    assert_eq!(entry["reaction"]["target_id"], inbound.as_str(), "{entry}");
    assert_eq!(entry["reaction"]["emoji"], "👍");
    assert_eq!(entry["reaction"]["from_me"], false);
    assert!(entry.get("media").is_none());

    // Mark the chat read; type, record, pause.
    linked
        .client
        .mark_as_read(&to, None, &[inbound.as_str()])
        .await
        .expect("mark read");
    let receipts = format!("/control/receipts-from-devices?phone={phone}");
    let read = poll(&fake, &receipts, "the read receipt", |b| {
        b["receipts"]
            .as_array()?
            .iter()
            .find(|r| r["type"] == "read")
            .cloned()
    })
    .await;
    assert_eq!(read["ids"], json!([inbound]), "{read}");
    assert!(
        read["chat"].as_str().unwrap().starts_with(CONTACT),
        "{read}"
    );
    assert!(
        read["from_device_jid"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{phone}:"))
    );

    let chatstate = linked.client.chatstate();
    chatstate.send_composing(&to).await.unwrap();
    chatstate.send_recording(&to).await.unwrap();
    chatstate.send_paused(&to).await.unwrap();
    let states = poll(
        &fake,
        &format!("/control/chatstates?phone={phone}"),
        "three chat states",
        |b| {
            let all = b["chatstates"].as_array()?;
            (all.len() >= 3).then(|| all.clone())
        },
    )
    .await;
    let names: Vec<&str> = states
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["composing", "recording", "paused"]);
    assert!(states[0]["chat"].as_str().unwrap().starts_with(CONTACT));

    if let Some(handle) = linked.handle.take() {
        handle.shutdown().await;
    }
}

/// `corrupt_mac`: the message arrives, its download fails the MAC check,
/// and the client goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_mac_fails_the_download() {
    common::init_tracing();
    let fake = FakeWa::start().await.unwrap();
    let mut linked = link(&fake, "15551230004").await;
    let (status, sent) = control(
        &fake,
        "/control/media",
        json!({
            "to_phone": linked.phone,
            "from_phone": CONTACT,
            "type": "ptt",
            "mimetype": "audio/ogg; codecs=opus",
            "seconds": 3,
            "corrupt_mac": true,
            "data_base64": base64(&bytes(4000, 4)),
        }),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    let audio = linked
        .wait_for("the voice note", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == id)
                .and_then(|m| m.message.audio_message.as_option().cloned()),
            _ => None,
        })
        .await;
    assert_eq!(audio.ptt, Some(true));
    assert_eq!(audio.seconds, Some(3));
    let err = linked
        .client
        .download(&audio)
        .await
        .expect_err("a bad MAC fails the download");
    assert!(format!("{err:#}").to_lowercase().contains("mac"), "{err:#}");

    if let Some(handle) = linked.handle.take() {
        handle.shutdown().await;
    }
}
