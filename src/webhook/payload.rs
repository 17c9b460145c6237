//! What a webhook carries: whatsd's own event JSON, the Cloud API shape,
//! and the signatures over them.

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::bsuid::{self, Contact};
use super::endpoint::Format;
use crate::hex::hex;
use crate::session::{EventKind, Identity, SessionEvent};
use crate::store::ids::Blinder;
use crate::store::media_refs;
use crate::wa::InboundMessage;

/// One event as every whatsd-format webhook receives it. `id` is stable
/// across retries and redeliveries: use it as the idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub session: String,
    pub tenant: String,
    /// RFC 3339, UTC, milliseconds.
    pub occurred_at: String,
    pub me: Me,
    pub data: Value,
}

/// The account the session is linked to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Me {
    pub phone: String,
    pub jid: String,
    pub lid: String,
}

impl From<Identity> for Me {
    fn from(i: Identity) -> Self {
        Self {
            phone: i.phone,
            jid: i.jid,
            lid: i.lid,
        }
    }
}

/// The id of a message event: the same message (chat, sender, id) in the
/// same session always gets the same id, also when WhatsApp redelivers it.
pub fn message_event_id(session: &str, m: &InboundMessage) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [session, &m.chat, &m.sender, &m.id] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    ctx.update(&[u8::from(m.undecryptable)]);
    format!("msg_{}", &hex(ctx.finish().as_ref())[..32])
}

/// A fresh random event id (session events happen once).
pub fn random_event_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    format!("evt_{}", hex(&bytes))
}

/// The event type of an incoming message.
pub fn message_kind(m: &InboundMessage) -> &'static str {
    if m.undecryptable {
        "message.undecryptable"
    } else if m.is_status {
        "message.status"
    } else {
        "message.received"
    }
}

pub fn message_event(
    session: &str,
    tenant: &str,
    me: &Me,
    m: &InboundMessage,
    now_ms: i64,
) -> WebhookEvent {
    let c = &m.content;
    let mut data = json!({
        "message_id": m.id,
        "chat": m.chat,
        "from_me": m.from_me,
        "is_group": m.is_group,
        "sender": {
            "jid": m.sender,
            "phone": m.sender_phone,
            "lid": m.sender_lid,
            "push_name": m.push_name,
        },
        "timestamp": m.timestamp,
    });
    if m.is_group {
        data["participant"] = json!(m.sender);
    }
    if !m.undecryptable {
        data["type"] = json!(c.kind);
        data["text"] = json!(c.text);
        data["caption"] = json!(c.caption);
        data["quoted_message_id"] = json!(c.quoted_id);
        data["media"] = match &c.media {
            Some(media) => {
                let mut v = json!({
                    "mimetype": media.mimetype,
                    "file_length": media.file_length,
                    "sha256": media.sha256,
                    "file_name": media.file_name,
                    "width": media.width,
                    "height": media.height,
                    "seconds": media.seconds,
                    "voice": media.voice,
                });
                // Downloadable through whatsd (made absolute with
                // `api.public_url` by [`absolute_media_url`]).
                if media.download.is_some() {
                    v["url"] = json!(media_path(session, &m.id));
                }
                v
            }
            None => Value::Null,
        };
        if let Some((lat, lon)) = c.location {
            data["location"] = json!({"latitude": lat, "longitude": lon});
        }
    }
    WebhookEvent {
        id: message_event_id(session, m),
        kind: message_kind(m).to_string(),
        session: session.to_string(),
        tenant: tenant.to_string(),
        occurred_at: crate::api::qr::rfc3339_ms(now_ms),
        me: me.clone(),
        data,
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The API path that downloads a received attachment.
pub fn media_path(session: &str, message_id: &str) -> String {
    format!("/v1/sessions/{session}/messages/{message_id}/media")
}

/// Puts `base` (`api.public_url`) before `data.media.url`.
pub fn absolute_media_url(event: &mut WebhookEvent, base: &str) {
    if let Some(url) = event.data["media"]["url"].as_str()
        && url.starts_with('/')
    {
        let absolute = format!("{}{url}", base.trim_end_matches('/'));
        event.data["media"]["url"] = json!(absolute);
    }
}

/// The webhook form of a session event, or `None` for events that never
/// leave through webhooks (QR and pairing codes are credentials).
pub fn session_event(event: &SessionEvent, me: &Me) -> Option<WebhookEvent> {
    if matches!(
        event.kind,
        EventKind::Qr { .. } | EventKind::PairCode { .. } | EventKind::MessageReceived { .. }
    ) {
        return None;
    }
    let mut data = serde_json::to_value(&event.kind).ok()?;
    let kind = data.as_object_mut()?.remove("type")?.as_str()?.to_string();
    Some(WebhookEvent {
        id: random_event_id(),
        kind,
        session: event.session.clone(),
        tenant: event.tenant.clone(),
        occurred_at: crate::api::qr::rfc3339_ms(event.at_ms),
        me: me.clone(),
        data,
    })
}

/// The request body for an endpoint of format `format`; `blinder` is the
/// store's, which keys the Cloud API's user ids (see [`bsuid`]).
/// `incarnation` is the event's session incarnation (keys the `cloud_api`
/// format's user ids).
pub fn render(
    event: &WebhookEvent,
    incarnation: &str,
    format: Format,
    blinder: &Blinder,
) -> Vec<u8> {
    match format {
        Format::Whatsd => serde_json::to_vec(event).unwrap_or_default(),
        Format::CloudApi => ascii_json(&cloud_api(event, incarnation, blinder)),
    }
}

/// JSON with every character past `~` written as `\uXXXX` (UTF-16, lower
/// case), as Meta writes its webhooks: libraries that re-escape the raw
/// body that way before checking `X-Hub-Signature-256` (whatsapp-api-js)
/// then check the very bytes that were signed.
fn ascii_json(value: &Value) -> Vec<u8> {
    use std::fmt::Write;
    let text = serde_json::to_string(value).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if u32::from(c) < 0x7f {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out.into_bytes()
}

/// Whether the `cloud_api` format has a shape for `event`: messages to the
/// business in 1:1 chats, and the statuses of the 1:1 messages it sent.
/// Meta has no groups, status posts or session events.
pub fn cloud_api_carries(event: &WebhookEvent, from_me: bool) -> bool {
    let d = &event.data;
    let one_to_one = |jid: &Value| {
        jid.as_str()
            .is_some_and(|j| j.ends_with("@s.whatsapp.net") || j.ends_with("@lid"))
    };
    match event.kind.as_str() {
        "message.received" | "message.undecryptable" => {
            !from_me && d["is_group"].as_bool() != Some(true)
        }
        "message.sent" => one_to_one(&d["to"]),
        "message.ack" => one_to_one(&d["chat"]),
        _ => false,
    }
}

/// Meta's WhatsApp Cloud API webhook shape (`object`, `entry[].changes[]
/// .value` with `metadata`, `contacts`, `messages`). The tenant is the
/// entry id (the "business account") and the session the phone number id.
/// The sender's business-scoped user id (`contacts[].user_id`, `messages[]
/// .from_user_id`) is made per (session incarnation, contact) by
/// [`bsuid::user_id`].
fn cloud_api(event: &WebhookEvent, incarnation: &str, blinder: &Blinder) -> Value {
    if matches!(event.kind.as_str(), "message.sent" | "message.ack") {
        return cloud_api_status(event, incarnation, blinder);
    }
    let d = &event.data;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let from = {
        let phone = s(&d["sender"]["phone"]);
        if phone.is_empty() {
            s(&d["sender"]["jid"])
                .split('@')
                .next()
                .unwrap_or_default()
                .to_string()
        } else {
            phone
        }
    };
    let user_id = Contact::of_sender(
        d["sender"]["phone"].as_str().unwrap_or_default(),
        d["sender"]["lid"].as_str().unwrap_or_default(),
        d["sender"]["jid"].as_str().unwrap_or_default(),
    )
    .and_then(|contact| bsuid::user_id(blinder, &event.session, incarnation, &contact));
    let mut message = json!({
        "from": from,
        "from_user_id": user_id,
        "id": d["message_id"],
        "timestamp": d["timestamp"].as_i64().unwrap_or_default().to_string(),
    });
    let kind = if event.kind == "message.undecryptable" {
        "unsupported"
    } else {
        d["type"].as_str().unwrap_or("unsupported")
    };
    match kind {
        "text" => {
            message["type"] = json!("text");
            message["text"] = json!({ "body": d["text"] });
        }
        "image" | "video" | "audio" | "document" | "sticker" => {
            message["type"] = json!(kind);
            // Meta's media id: opaque, resolved by `GET /graph/{v}/{id}`
            // for this session incarnation only.
            let media_id = media_refs::graph_media_id(
                blinder,
                incarnation,
                d["message_id"].as_str().unwrap_or_default(),
            );
            let mut media = json!({
                "id": media_id,
                "mime_type": d["media"]["mimetype"],
                "sha256": d["media"]["sha256"],
            });
            if kind == "audio" {
                media["voice"] = json!(d["media"]["voice"].as_bool().unwrap_or(false));
            }
            if !d["caption"].is_null() {
                media["caption"] = d["caption"].clone();
            }
            if !d["media"]["file_name"].is_null() {
                media["filename"] = d["media"]["file_name"].clone();
            }
            message[kind] = media;
        }
        "location" => {
            message["type"] = json!("location");
            message["location"] = json!({
                "latitude": d["location"]["latitude"],
                "longitude": d["location"]["longitude"],
                "name": d["text"],
            });
        }
        "reaction" => {
            message["type"] = json!("reaction");
            message["reaction"] = json!({
                "message_id": d["quoted_message_id"],
                "emoji": d["text"],
            });
        }
        _ => {
            message["type"] = json!("unsupported");
            message["errors"] = json!([{
                "code": 131051,
                "title": "Message type unknown",
                "message": if event.kind == "message.undecryptable" {
                    "the message could not be decrypted"
                } else {
                    "message type is not supported"
                },
            }]);
        }
    }
    if !d["quoted_message_id"].is_null() && kind != "reaction" {
        message["context"] = json!({ "id": d["quoted_message_id"] });
    }
    let contact = json!({
        "profile": { "name": d["sender"]["push_name"] },
        "wa_id": from,
        "user_id": user_id,
    });
    cloud_api_envelope(event, contact, "messages", message)
}

/// Meta's envelope around one change of field `messages`: the tenant is the
/// entry id (the "business account"), the session the phone number id;
/// `contact` goes in `contacts`, `item` in the `list` array (`messages` or
/// `statuses`).
fn cloud_api_envelope(event: &WebhookEvent, contact: Value, list: &str, item: Value) -> Value {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": event.me.phone,
            "phone_number_id": event.session,
        },
        "contacts": [contact],
    });
    value[list] = json!([item]);
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": event.tenant,
            "changes": [{ "field": "messages", "value": value }],
        }],
    })
}

/// A status of a message the business sent (`message.sent` → `sent`,
/// `message.ack` → `delivered`, `read`, `played`), as Meta's status
/// webhooks have it since 2026: `statuses[]` with `recipient_id` (the
/// phone) and `recipient_user_id`, and the recipient in `contacts` (no
/// profile: whatsd has no name for a recipient). No `conversation` or
/// `pricing`: nothing is billed.
fn cloud_api_status(event: &WebhookEvent, incarnation: &str, blinder: &Blinder) -> Value {
    let d = &event.data;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (status, jid, phone, lid) = if event.kind == "message.sent" {
        let to = s(&d["to"]);
        let (user, server) = to.split_once('@').unwrap_or((&to, ""));
        let user = user.split(':').next().unwrap_or_default().to_string();
        match server {
            "lid" => ("sent".to_string(), to.clone(), String::new(), to.clone()),
            _ => ("sent".to_string(), to.clone(), user, String::new()),
        }
    } else {
        let r = &d["recipient"];
        (s(&d["status"]), s(&r["jid"]), s(&r["phone"]), s(&r["lid"]))
    };
    let user_id = Contact::of_sender(&phone, &lid, &jid)
        .and_then(|contact| bsuid::user_id(blinder, &event.session, incarnation, &contact));
    let mut contact = json!({ "user_id": user_id });
    let mut status = json!({
        "id": d["id"],
        "status": status,
        "timestamp": d["timestamp"].as_i64().unwrap_or_default().to_string(),
        "recipient_user_id": user_id,
    });
    // A recipient known only by LID has no phone to show: Meta, too, leaves
    // `wa_id` and `recipient_id` out when it cannot show the number.
    if !phone.is_empty() {
        contact["wa_id"] = json!(phone);
        status["recipient_id"] = json!(phone);
    }
    cloud_api_envelope(event, contact, "statuses", status)
}

/// `X-Whatsd-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn whatsd_signature(secret: &[u8], unix: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(unix.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={unix},v1={}", hex(ctx.sign().as_ref()))
}

/// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>` (Meta's).
pub fn hub_signature(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex(hmac::sign(&key, body).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{AckStatus, Party};
    use crate::wa::inbound::Content;

    fn dm() -> InboundMessage {
        InboundMessage {
            id: "3EB0ABC".into(),
            chat: "15550001111@s.whatsapp.net".into(),
            sender: "15550001111@s.whatsapp.net".into(),
            sender_phone: "15550001111".into(),
            sender_lid: "100000011111@lid".into(),
            push_name: "Ada".into(),
            timestamp: 1_790_000_000,
            content: Content {
                kind: "text",
                text: Some("hello".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn message_ids_are_stable_and_distinct() {
        let m = dm();
        assert_eq!(message_event_id("s1", &m), message_event_id("s1", &m));
        assert_ne!(message_event_id("s1", &m), message_event_id("s2", &m));
        let mut other_chat = m.clone();
        other_chat.chat = "15550002222@s.whatsapp.net".into();
        assert_ne!(
            message_event_id("s1", &m),
            message_event_id("s1", &other_chat)
        );
        assert_ne!(random_event_id(), random_event_id());
    }

    #[test]
    fn whatsd_payload_has_the_documented_fields() {
        let me = Me {
            phone: "15559990000".into(),
            jid: "15559990000:3@s.whatsapp.net".into(),
            lid: String::new(),
        };
        let e = message_event("s1", "t1", &me, &dm(), 0);
        let v: Value = serde_json::from_slice(&render(&e, "", Format::Whatsd, &blinder())).unwrap();
        assert_eq!(v["type"], "message.received");
        assert_eq!(v["session"], "s1");
        assert_eq!(v["tenant"], "t1");
        assert_eq!(v["occurred_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["me"]["phone"], "15559990000");
        assert_eq!(v["data"]["text"], "hello");
        assert_eq!(v["data"]["sender"]["phone"], "15550001111");
        assert_eq!(v["data"]["sender"]["lid"], "100000011111@lid");
        assert_eq!(v["data"]["from_me"], false);
        assert_eq!(v["data"]["message_id"], "3EB0ABC");
    }

    fn blinder() -> Blinder {
        Blinder::from_bytes(&[5; 32])
    }

    /// The whole body, field by field, as Meta's text-message webhook
    /// reference has it (with the 2026 business-scoped user id fields).
    #[test]
    fn cloud_api_shape() {
        let me = Me {
            phone: "15559990000".into(),
            ..Default::default()
        };
        let e = message_event("s1", "t1", &me, &dm(), 0);
        let v: Value =
            serde_json::from_slice(&render(&e, "", Format::CloudApi, &blinder())).unwrap();
        let user_id =
            bsuid::user_id(&blinder(), "s1", "", &Contact::Phone("15550001111".into())).unwrap();
        assert!(
            user_id.starts_with("ZZ.") && user_id.len() == 42,
            "{user_id}"
        );
        let expected = json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": "t1",
                "changes": [{
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {
                            "display_phone_number": "15559990000",
                            "phone_number_id": "s1",
                        },
                        "contacts": [{
                            "profile": { "name": "Ada" },
                            "wa_id": "15550001111",
                            "user_id": user_id,
                        }],
                        "messages": [{
                            "from": "15550001111",
                            "from_user_id": user_id,
                            "id": "3EB0ABC",
                            "timestamp": "1790000000",
                            "type": "text",
                            "text": { "body": "hello" },
                        }],
                    },
                }],
            }],
        });
        assert_eq!(v, expected);
    }

    #[test]
    fn cloud_api_bodies_are_ascii_like_meta_s() {
        let mut m = dm();
        m.content.text = Some("h\u{e9}llo \u{1f600} \u{7f}\"".into());
        let e = message_event("s1", "t1", &Me::default(), &m, 0);
        let body = render(&e, "", Format::CloudApi, &blinder());
        assert!(body.is_ascii());
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(
            text.contains(r#""body":"h\u00e9llo \ud83d\ude00 \u007f\"""#),
            "{text}"
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        let value = &v["entry"][0]["changes"][0]["value"];
        assert_eq!(
            value["messages"][0]["text"]["body"],
            "h\u{e9}llo \u{1f600} \u{7f}\""
        );
    }

    #[test]
    fn cloud_api_user_id_follows_what_is_known_of_the_sender() {
        let mut lid_only = dm();
        lid_only.sender = "100000011111@lid".into();
        lid_only.sender_phone = String::new();
        let e = message_event("s1", "t1", &Me::default(), &lid_only, 0);
        let v: Value =
            serde_json::from_slice(&render(&e, "", Format::CloudApi, &blinder())).unwrap();
        let value = &v["entry"][0]["changes"][0]["value"];
        let by_lid = bsuid::user_id(&blinder(), "s1", "", &Contact::Lid("100000011111".into()));
        assert_eq!(value["contacts"][0]["user_id"], json!(by_lid));
        assert_eq!(value["messages"][0]["from_user_id"], json!(by_lid));
        // Once the phone is known, the phone-derived id takes over.
        let e = message_event("s1", "t1", &Me::default(), &dm(), 0);
        let v: Value =
            serde_json::from_slice(&render(&e, "", Format::CloudApi, &blinder())).unwrap();
        let by_phone = &v["entry"][0]["changes"][0]["value"]["contacts"][0]["user_id"];
        assert_ne!(by_phone, &json!(by_lid));
        // Another session, another id; the same session in another store
        // (another index key), another id.
        let other = message_event("s2", "t1", &Me::default(), &dm(), 0);
        let v2: Value =
            serde_json::from_slice(&render(&other, "", Format::CloudApi, &blinder())).unwrap();
        assert_ne!(
            &v2["entry"][0]["changes"][0]["value"]["contacts"][0]["user_id"],
            by_phone
        );
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn media_events_carry_the_download_url_and_a_cloud_api_media_id() {
        let mut m = dm();
        m.content = Content {
            kind: "audio",
            media: Some(crate::wa::inbound::Media {
                mimetype: Some("audio/ogg; codecs=opus".into()),
                voice: true,
                download: Some(crate::wa::inbound::MediaDownload::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut e = message_event("s1", "t1", &Me::default(), &m, 0);
        assert_eq!(
            e.data["media"]["url"],
            "/v1/sessions/s1/messages/3EB0ABC/media"
        );
        assert_eq!(e.data["media"]["voice"], true);
        absolute_media_url(&mut e, "https://wd.example.com/");
        assert_eq!(
            e.data["media"]["url"],
            "https://wd.example.com/v1/sessions/s1/messages/3EB0ABC/media"
        );
        let v: Value =
            serde_json::from_slice(&render(&e, "inc-1", Format::CloudApi, &blinder())).unwrap();
        let audio = &v["entry"][0]["changes"][0]["value"]["messages"][0]["audio"];
        assert_eq!(
            audio["id"],
            media_refs::graph_media_id(&blinder(), "inc-1", "3EB0ABC")
        );
        assert_eq!(audio["voice"], true);
        assert_eq!(audio["mime_type"], "audio/ogg; codecs=opus");
        // Without download refs there is nothing to fetch: no url.
        m.content.media.as_mut().unwrap().download = None;
        let e = message_event("s1", "t1", &Me::default(), &m, 0);
        assert!(e.data["media"].get("url").is_none());
    }

    #[test]
    fn signatures_match_known_vectors() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog")
        assert_eq!(
            hub_signature(b"key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        let sig = whatsd_signature(b"key", 42, b"{}");
        let expected = hub_signature(b"key", b"42.{}");
        assert_eq!(sig, format!("t=42,v1={}", &expected["sha256=".len()..]));
    }

    #[test]
    fn credentials_never_become_webhooks() {
        let qr = SessionEvent {
            session: "s".into(),
            tenant: "t".into(),
            incarnation: String::new(),
            at_ms: 0,
            kind: EventKind::PairCode {
                code: "ABCD-EFGH".into(),
                expires_at_ms: 0,
            },
        };
        assert!(session_event(&qr, &Me::default()).is_none());
        let connected = SessionEvent {
            session: "s".into(),
            tenant: "t".into(),
            incarnation: String::new(),
            at_ms: 0,
            kind: EventKind::LoggedOut {
                reason: crate::session::Reason::UnlinkedFromPhone,
            },
        };
        let e = session_event(&connected, &Me::default()).unwrap();
        assert_eq!(e.kind, "session.logged_out");
        assert!(e.data.get("type").is_none());
    }

    fn session(kind: EventKind) -> WebhookEvent {
        let event = SessionEvent {
            session: "s1".into(),
            tenant: "t1".into(),
            incarnation: "i1".into(),
            at_ms: 0,
            kind,
        };
        let me = Me {
            phone: "15559990000".into(),
            ..Default::default()
        };
        session_event(&event, &me).unwrap()
    }

    fn ack(status: AckStatus, chat: &str, recipient: Party) -> WebhookEvent {
        session(EventKind::MessageAck {
            id: "3EB0SENT".into(),
            status,
            chat: chat.into(),
            recipient,
            timestamp: 1_700_000_123,
        })
    }

    /// `message.sent` and `message.ack` as Meta's status webhooks, field by
    /// field; the recipient's user id is the one their messages carry.
    #[test]
    fn cloud_api_statuses_shape() {
        let b = blinder();
        let ada = Contact::Phone("15550001111".into());
        let user_id = bsuid::user_id(&b, "s1", "i1", &ada).unwrap();
        let status = |e: &WebhookEvent| -> Value {
            assert!(cloud_api_carries(e, false), "{e:?}");
            serde_json::from_slice(&render(e, "i1", Format::CloudApi, &b)).unwrap()
        };
        let expected = |status: &str, timestamp: &str| {
            json!({
                "object": "whatsapp_business_account",
                "entry": [{
                    "id": "t1",
                    "changes": [{
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15559990000",
                                "phone_number_id": "s1",
                            },
                            "contacts": [{ "wa_id": "15550001111", "user_id": user_id }],
                            "statuses": [{
                                "id": "3EB0SENT",
                                "status": status,
                                "timestamp": timestamp,
                                "recipient_id": "15550001111",
                                "recipient_user_id": user_id,
                            }],
                        },
                    }],
                }],
            })
        };
        let sent = session(EventKind::MessageSent {
            id: "3EB0SENT".into(),
            to: "15550001111@s.whatsapp.net".into(),
            timestamp: 1_700_000_100,
        });
        assert_eq!(status(&sent), expected("sent", "1700000100"));
        let by_lid = Party {
            jid: "100000011111@lid".into(),
            phone: "15550001111".into(),
            lid: "100000011111@lid".into(),
        };
        for (s, name) in [
            (AckStatus::Delivered, "delivered"),
            (AckStatus::Read, "read"),
            (AckStatus::Played, "played"),
        ] {
            let e = ack(s, "100000011111@lid", by_lid.clone());
            assert_eq!(status(&e), expected(name, "1700000123"), "{name}");
        }
    }

    #[test]
    fn cloud_api_status_of_a_lid_only_recipient_has_no_phone() {
        let lid_only = Party {
            jid: "100000011111@lid".into(),
            phone: String::new(),
            lid: "100000011111@lid".into(),
        };
        let e = ack(AckStatus::Read, "100000011111@lid", lid_only);
        let v: Value =
            serde_json::from_slice(&render(&e, "i1", Format::CloudApi, &blinder())).unwrap();
        let value = &v["entry"][0]["changes"][0]["value"];
        let by_lid = bsuid::user_id(&blinder(), "s1", "i1", &Contact::Lid("100000011111".into()));
        assert_eq!(value["contacts"], json!([{ "user_id": by_lid }]));
        assert_eq!(value["statuses"][0]["recipient_user_id"], json!(by_lid));
        assert!(value["statuses"][0].get("recipient_id").is_none());
    }

    /// Groups, status posts and session events have no Cloud API shape.
    #[test]
    fn cloud_api_carries_one_to_one_messages_and_their_statuses_only() {
        let ada = Party {
            jid: "15550001111@s.whatsapp.net".into(),
            phone: "15550001111".into(),
            lid: String::new(),
        };
        assert!(!cloud_api_carries(
            &ack(AckStatus::Read, "12345-678@g.us", ada.clone()),
            false
        ));
        let to_group = session(EventKind::MessageSent {
            id: "x".into(),
            to: "12345-678@g.us".into(),
            timestamp: 0,
        });
        assert!(!cloud_api_carries(&to_group, false));
        assert!(!cloud_api_carries(
            &session(EventKind::PushName {
                push_name: "x".into()
            }),
            false
        ));
        let me = Me::default();
        let mut group = dm();
        group.is_group = true;
        group.chat = "12345-678@g.us".into();
        assert!(!cloud_api_carries(
            &message_event("s1", "t1", &me, &group, 0),
            false
        ));
        assert!(cloud_api_carries(
            &message_event("s1", "t1", &me, &dm(), 0),
            false
        ));
        assert!(!cloud_api_carries(
            &message_event("s1", "t1", &me, &dm(), 0),
            true
        ));
    }

    #[test]
    fn message_ack_in_the_whatsd_format() {
        let e = ack(
            AckStatus::Delivered,
            "15550001111@s.whatsapp.net",
            Party {
                jid: "15550001111@s.whatsapp.net".into(),
                phone: "15550001111".into(),
                lid: String::new(),
            },
        );
        assert_eq!(e.kind, "message.ack");
        assert_eq!(
            e.data,
            json!({
                "id": "3EB0SENT",
                "status": "delivered",
                "chat": "15550001111@s.whatsapp.net",
                "recipient": { "jid": "15550001111@s.whatsapp.net", "phone": "15550001111", "lid": "" },
                "timestamp": 1_700_000_123,
            })
        );
    }
}
