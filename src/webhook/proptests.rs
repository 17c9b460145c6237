//! Property tests of the webhook payload builders and the BSUIDs of the
//! `cloud_api` format (issue 19): every event kind, with any field
//! contents (unicode, control characters, long strings), serializes to
//! JSON that reads back as the same values.

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use super::bsuid::{self, Contact};
use super::endpoint::{EndpointId, Format, Scope, SessionRef};
use super::payload::{Me, WebhookEvent, message_event, render, session_event};
use super::queue::{DeadLetter, Pending};
use crate::session::{
    AckStatus, EventKind, Identity, PairingQr, Party, Reason, SessionEvent, SessionState,
};
use crate::store::ids::Blinder;
use crate::wa::InboundMessage;
use crate::wa::inbound::{Content, Media};

/// Any text: mostly short, unicode and control characters included, now
/// and then long.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => ".{0,12}",
        4 => "\\PC{0,12}",
        2 => "[\u{0}-\u{1f}\u{7f}\"\\\\/<>&\u{2028}\u{2029}\u{fffd}\u{1f600}é]{0,12}",
        1 => ".{500,2000}",
    ]
}

fn digits() -> impl Strategy<Value = String> {
    "[0-9]{1,19}"
}

fn blinder() -> impl Strategy<Value = Blinder> {
    any::<[u8; 32]>().prop_map(|key| Blinder::from_bytes(&key))
}

fn me() -> impl Strategy<Value = Me> {
    (text(), text(), text()).prop_map(|(phone, jid, lid)| Me { phone, jid, lid })
}

fn identity() -> impl Strategy<Value = Identity> {
    (text(), text(), text()).prop_map(|(phone, jid, lid)| Identity { phone, jid, lid })
}

const KINDS: &[&str] = &[
    "text", "image", "video", "audio", "document", "sticker", "location", "contact", "reaction",
    "protocol", "other",
];

fn media() -> impl Strategy<Value = Media> {
    (
        proptest::option::of(text()),
        any::<Option<u64>>(),
        proptest::option::of(text()),
        proptest::option::of(text()),
        any::<(Option<u32>, Option<u32>, Option<u32>)>(),
    )
        .prop_map(
            |(mimetype, file_length, sha256, file_name, (width, height, seconds))| Media {
                mimetype,
                file_length,
                sha256,
                file_name,
                width,
                height,
                seconds,
                ..Default::default()
            },
        )
}

/// Finite coordinates: JSON has no NaN or infinity.
fn coordinate() -> impl Strategy<Value = f64> {
    prop_oneof![
        -90.0..90.0_f64,
        any::<f64>().prop_filter("finite", |f| f.is_finite())
    ]
}

fn message() -> impl Strategy<Value = InboundMessage> {
    let content = (
        select(KINDS),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(media()),
        proptest::option::of(text()),
        proptest::option::of((coordinate(), coordinate())),
    )
        .prop_map(
            |(kind, text, caption, media, quoted_id, location)| Content {
                kind,
                text,
                caption,
                media,
                quoted_id,
                location,
            },
        );
    let sender = prop_oneof![
        text(),
        digits().prop_map(|d| format!("{d}@s.whatsapp.net")),
        (digits(), 0..100_u8).prop_map(|(d, dev)| format!("{d}:{dev}@lid")),
    ];
    (
        (text(), text(), sender, text(), text(), text()),
        any::<i64>(),
        any::<[bool; 4]>(),
        content,
    )
        .prop_map(
            |(
                (id, chat, sender, sender_phone, sender_lid, push_name),
                timestamp,
                [from_me, is_group, is_status, undecryptable],
                content,
            )| InboundMessage {
                id,
                chat,
                sender,
                sender_phone,
                sender_lid,
                push_name,
                timestamp,
                from_me,
                is_group,
                is_status,
                undecryptable,
                content,
            },
        )
}

const REASONS: &[Reason] = &[
    Reason::ActivationTimeout,
    Reason::StreamReplaced,
    Reason::TemporaryBan,
    Reason::ClientOutdated,
    Reason::StoreError,
    Reason::Expired,
    Reason::Internal,
    Reason::ConnectFailure,
    Reason::UnlinkedFromPhone,
    Reason::LoggedOut,
    Reason::Requested,
    Reason::PairingInterrupted,
    Reason::Reset,
    Reason::PhoneUnknown,
    Reason::Shutdown,
    Reason::ConnectionLost,
    Reason::HealthCheck,
];

/// Every event kind, with any contents.
fn event_kind() -> impl Strategy<Value = EventKind> {
    let state = || select(&SessionState::ALL[..]);
    prop_oneof![
        (
            state(),
            state(),
            proptest::option::of(select(REASONS)),
            proptest::option::of(text())
        )
            .prop_map(|(from, to, reason, message)| EventKind::State {
                from,
                to,
                reason,
                message
            }),
        (text(), any::<i64>(), any::<u32>(), any::<i64>()).prop_map(
            |(code, expires_at_ms, index, activation_deadline_ms)| EventKind::Qr {
                qr: PairingQr {
                    code,
                    expires_at_ms,
                    index
                },
                activation_deadline_ms,
            }
        ),
        (text(), any::<i64>()).prop_map(|(code, expires_at_ms)| EventKind::PairCode {
            code,
            expires_at_ms
        }),
        (text(), text()).prop_map(|(reason, message)| EventKind::PairCodeError { reason, message }),
        (identity(), text(), text()).prop_map(|(identity, business_name, platform)| {
            EventKind::Paired {
                identity,
                business_name,
                platform,
            }
        }),
        identity().prop_map(|identity| EventKind::Phone { identity }),
        Just(EventKind::PhoneUnknown),
        text().prop_map(|push_name| EventKind::PushName { push_name }),
        (identity(), text()).prop_map(|(identity, push_name)| EventKind::Connected {
            identity,
            push_name
        }),
        select(REASONS).prop_map(|reason| EventKind::LoggedOut { reason }),
        (text(), text(), any::<i64>()).prop_map(|(id, to, timestamp)| EventKind::MessageSent {
            id,
            to,
            timestamp
        }),
        (text(), text(), text()).prop_map(|(id, to, reason)| EventKind::MessageFailed {
            id,
            to,
            reason
        }),
        (
            text(),
            select(vec![
                AckStatus::Delivered,
                AckStatus::Read,
                AckStatus::Played
            ]),
            text(),
            (text(), text(), text()),
            any::<i64>()
        )
            .prop_map(|(id, status, chat, (jid, phone, lid), timestamp)| {
                EventKind::MessageAck {
                    id,
                    status,
                    chat,
                    recipient: Party { jid, phone, lid },
                    timestamp,
                }
            }),
        (
            text(),
            select(vec!["add", "remove", "promote", "demote"]),
            proptest::collection::vec(party(), 0..4),
            proptest::option::of(party()),
            any::<i64>()
        )
            .prop_map(|(group, action, participants, by, timestamp)| {
                EventKind::GroupParticipants {
                    group,
                    action: action.to_owned(),
                    participants,
                    by,
                    timestamp,
                }
            }),
        (
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(party()),
            any::<i64>()
        )
            .prop_map(|(group, subject, description, by, timestamp)| {
                EventKind::GroupUpdated {
                    group,
                    subject,
                    description,
                    by,
                    timestamp,
                }
            }),
        Just(EventKind::Deleted {}),
        Just(EventKind::Reassigned {}),
    ]
}

fn party() -> impl Strategy<Value = Party> {
    (text(), text(), text()).prop_map(|(jid, phone, lid)| Party { jid, phone, lid })
}

fn session_event_of(kind: EventKind) -> impl Strategy<Value = SessionEvent> {
    (text(), text(), text(), any::<i64>()).prop_map(move |(session, tenant, incarnation, at_ms)| {
        SessionEvent {
            session,
            tenant,
            incarnation,
            at_ms,
            kind: kind.clone(),
        }
    })
}

/// The whatsd body parses back to the event it was made from.
///
/// Coordinates are compared as the text in the body, read by Rust's own
/// (correctly rounding) float parser: serde_json's default one may miss
/// the last bit of a shortest-form number (`30.994968967707102`), which
/// is the reader's loss, not the body's.
fn whatsd_round_trip(event: &WebhookEvent, blinder: &Blinder) -> Result<Value, TestCaseError> {
    let body = render(event, "", Format::Whatsd, blinder);
    let mut back: WebhookEvent = serde_json::from_slice(&body)
        .map_err(|e| TestCaseError::fail(format!("does not parse back: {e}")))?;
    let mut event = event.clone();
    if let Some(location) = event.data.get_mut("location") {
        let text = String::from_utf8_lossy(&body);
        for axis in ["latitude", "longitude"] {
            let at = text.find(&format!("\"{axis}\":")).unwrap() + axis.len() + 3;
            let number: String = text[at..]
                .chars()
                .take_while(|c| !matches!(c, ',' | '}'))
                .collect();
            prop_assert_eq!(number.parse::<f64>().ok(), location[axis].as_f64());
        }
        *location = Value::Null;
        back.data["location"] = Value::Null;
    }
    prop_assert_eq!(&back, &event);
    Ok(serde_json::from_slice(&body).unwrap())
}

proptest! {
    /// An incoming message, in the whatsd format: the body parses back to
    /// the event, and its data holds the message's fields as the README
    /// lists them.
    #[test]
    fn message_events_round_trip(
        session in text(),
        tenant in text(),
        me in me(),
        m in message(),
        now_ms in any::<i64>(),
        blinder in blinder(),
    ) {
        let event = message_event(&session, &tenant, &me, &m, now_ms);
        let v = whatsd_round_trip(&event, &blinder)?;
        prop_assert_eq!(&v["session"], &json!(session));
        prop_assert_eq!(&v["tenant"], &json!(tenant));
        prop_assert_eq!(&v["me"], &json!({"phone": me.phone, "jid": me.jid, "lid": me.lid}));
        let d = &v["data"];
        prop_assert_eq!(&d["message_id"], &json!(m.id));
        prop_assert_eq!(&d["chat"], &json!(m.chat));
        prop_assert_eq!(&d["from_me"], &json!(m.from_me));
        prop_assert_eq!(&d["is_group"], &json!(m.is_group));
        prop_assert_eq!(&d["timestamp"], &json!(m.timestamp));
        prop_assert_eq!(
            &d["sender"],
            &json!({"jid": m.sender, "phone": m.sender_phone, "lid": m.sender_lid, "push_name": m.push_name})
        );
        prop_assert_eq!(d.get("participant").is_some(), m.is_group);
        let c = &m.content;
        if m.undecryptable {
            prop_assert_eq!(v["type"].as_str(), Some("message.undecryptable"));
            prop_assert!(d.get("text").is_none() && d.get("type").is_none());
        } else {
            prop_assert_eq!(&d["type"], &json!(c.kind));
            prop_assert_eq!(&d["text"], &json!(c.text));
            prop_assert_eq!(&d["caption"], &json!(c.caption));
            prop_assert_eq!(&d["quoted_message_id"], &json!(c.quoted_id));
            match &c.media {
                Some(media) => {
                    prop_assert_eq!(&d["media"]["mimetype"], &json!(media.mimetype));
                    prop_assert_eq!(&d["media"]["file_length"], &json!(media.file_length));
                    prop_assert_eq!(&d["media"]["sha256"], &json!(media.sha256));
                    prop_assert_eq!(&d["media"]["file_name"], &json!(media.file_name));
                    prop_assert_eq!(&d["media"]["width"], &json!(media.width));
                    prop_assert_eq!(&d["media"]["height"], &json!(media.height));
                    prop_assert_eq!(&d["media"]["seconds"], &json!(media.seconds));
                }
                None => prop_assert!(d["media"].is_null()),
            }
            prop_assert_eq!(d.get("location").is_some(), c.location.is_some());
            if let Some((lat, lon)) = c.location {
                prop_assert_eq!(&event.data["location"], &json!({"latitude": lat, "longitude": lon}));
            }
        }
    }

    /// The same message in the cloud_api format: pure ASCII, valid JSON,
    /// and the strings in it are the message's own; the sender's user id
    /// reads back as the sender.
    #[test]
    fn cloud_api_bodies_are_ascii_and_keep_their_text(
        session in text(),
        tenant in text(),
        me in me(),
        m in message(),
        blinder in blinder(),
    ) {
        let event = message_event(&session, &tenant, &me, &m, 0);
        let body = render(&event, "", Format::CloudApi, &blinder);
        prop_assert!(body.is_ascii(), "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        prop_assert_eq!(&v["entry"][0]["id"], &json!(tenant));
        let value = &v["entry"][0]["changes"][0]["value"];
        prop_assert_eq!(&value["metadata"]["phone_number_id"], &json!(session));
        prop_assert_eq!(&value["metadata"]["display_phone_number"], &json!(me.phone));
        prop_assert_eq!(&value["contacts"][0]["profile"]["name"], &json!(m.push_name));
        let message = &value["messages"][0];
        prop_assert_eq!(&message["id"], &json!(m.id));
        prop_assert_eq!(&message["timestamp"], &json!(m.timestamp.to_string()));
        if !m.undecryptable && m.content.kind == "text" {
            prop_assert_eq!(&message["text"]["body"], &json!(m.content.text));
        }
        let sender = Contact::of_sender(&m.sender_phone, &m.sender_lid, &m.sender);
        match message["from_user_id"].as_str() {
            Some(user_id) => {
                prop_assert_eq!(&value["contacts"][0]["user_id"], &json!(user_id));
                prop_assert_eq!(bsuid::contact(&blinder, &session, "", user_id), sender);
            }
            None => {
                let numeric = sender.as_ref().and_then(|c| bsuid::user_id(&blinder, &session, "", c));
                prop_assert_eq!(numeric, None);
            }
        }
    }

    /// Every session event kind: credentials (QR, pairing code) never
    /// become webhooks; every other kind does, its data being the event's
    /// own fields without the type, and parses back to the same event.
    #[test]
    fn session_events_round_trip(
        event in event_kind().prop_flat_map(session_event_of),
        me in me(),
        blinder in blinder(),
    ) {
        let credential = matches!(event.kind, EventKind::Qr { .. } | EventKind::PairCode { .. });
        let Some(hook) = session_event(&event, &me) else {
            prop_assert!(credential, "{:?} made no webhook", event.kind.name());
            return Ok(());
        };
        prop_assert!(!credential, "a credential became a webhook");
        prop_assert_eq!(hook.kind.as_str(), event.kind.name());
        prop_assert_eq!(&hook.session, &event.session);
        prop_assert_eq!(&hook.tenant, &event.tenant);
        prop_assert_eq!(&hook.me, &me);
        let mut fields = serde_json::to_value(&event.kind).unwrap();
        fields.as_object_mut().unwrap().remove("type");
        prop_assert_eq!(&hook.data, &fields);
        whatsd_round_trip(&hook, &blinder)?;
    }

    /// A BSUID decodes to the contact it was made for, in its session
    /// only; it is `ZZ.` and 39 digits.
    #[test]
    fn bsuids_round_trip(
        blinder in blinder(),
        session in text(),
        other in text(),
        number in digits(),
        lid in any::<bool>(),
    ) {
        let contact = if lid { Contact::Lid(number) } else { Contact::Phone(number) };
        let id = bsuid::user_id(&blinder, &session, "", &contact).unwrap();
        let digits = id.strip_prefix("ZZ.").unwrap();
        prop_assert!(digits.len() == 39 && digits.bytes().all(|b| b.is_ascii_digit()), "{}", id);
        prop_assert_eq!(bsuid::contact(&blinder, &session, "", &id), Some(contact.clone()));
        prop_assume!(other != session);
        // Another session's id decodes to nothing, or (rarely, by the
        // check bytes' chance) to another contact: never to this one.
        prop_assert_ne!(bsuid::contact(&blinder, &other, "", &id), Some(contact));
    }

    /// Distinct contacts get distinct BSUIDs in one session.
    #[test]
    fn bsuids_are_unique(
        blinder in blinder(),
        session in text(),
        contacts in proptest::collection::hash_set((any::<bool>(), digits()), 1..64),
    ) {
        let ids: std::collections::HashSet<String> = contacts
            .iter()
            .map(|(lid, d)| {
                let c = if *lid { Contact::Lid(d.clone()) } else { Contact::Phone(d.clone()) };
                bsuid::user_id(&blinder, &session, "", &c).unwrap()
            })
            .collect();
        prop_assert_eq!(ids.len(), contacts.len());
    }

    /// Anything offered as a BSUID (a Graph API `recipient`): never a
    /// panic, and a contact only for `ZZ.` and 39 digits.
    #[test]
    fn any_string_as_a_bsuid(
        blinder in blinder(),
        session in text(),
        s in "ZZ\\.[0-9]{37,41}|[A-Z]{2}\\.[0-9]{1,40}|\\PC{0,44}",
        contact in proptest::option::of(("[0-9a-z@:]{0,24}", "[0-9a-z@:.]{0,24}", "[0-9a-z@:.]{0,24}")),
    ) {
        if bsuid::contact(&blinder, &session, "", &s).is_some() {
            let digits = s.strip_prefix("ZZ.").unwrap_or_default();
            prop_assert!(digits.len() == 39 && digits.bytes().all(|b| b.is_ascii_digit()));
        }
        if let Some((phone, lid, jid)) = contact {
            let _ = Contact::of_sender(&phone, &lid, &jid).map(|c| bsuid::user_id(&blinder, &session, "", &c));
        }
    }

    /// Outbox items and dead letters, as stored (JSON), read back the
    /// same for every endpoint scope and any contents; distinct endpoints
    /// have distinct store keys.
    #[test]
    fn stored_deliveries_round_trip(
        scope in prop_oneof![
            Just(Scope::Global),
            text().prop_map(Scope::Tenant),
            (text(), text()).prop_map(|(id, inc)| Scope::Session(SessionRef::new(id, inc))),
        ],
        name in text(),
        other_name in text(),
        m in message(),
        incarnation in text(),
        numbers in any::<(i64, u32, i64, i64)>(),
        last_error in proptest::option::of(text()),
        reason in text(),
        blinder in blinder(),
    ) {
        let (created_ms, attempts, next_ms, died_ms) = numbers;
        let endpoint = EndpointId::new(scope, name);
        let event = message_event("s", "t", &Me::default(), &m, created_ms);
        let event = WebhookEvent { data: strip_location(event.data), ..event };
        let pending = Pending {
            endpoint: endpoint.clone(),
            event,
            incarnation,
            created_ms,
            attempts,
            next_ms,
            last_error,
        };
        let dead = DeadLetter { pending, reason, died_ms };
        let back: DeadLetter = serde_json::from_slice(&serde_json::to_vec(&dead).unwrap()).unwrap();
        prop_assert_eq!(&back.pending.endpoint, &dead.pending.endpoint);
        prop_assert_eq!(&back.pending.event, &dead.pending.event);
        prop_assert_eq!(
            (&back.pending.incarnation, back.pending.created_ms, back.pending.attempts, back.pending.next_ms, &back.pending.last_error),
            (&dead.pending.incarnation, created_ms, attempts, next_ms, &dead.pending.last_error)
        );
        prop_assert_eq!((&back.reason, back.died_ms), (&dead.reason, died_ms));

        let other = EndpointId::new(endpoint.scope.clone(), other_name);
        prop_assert_eq!(other.key(&blinder) == endpoint.key(&blinder), other == endpoint);
    }

    /// A session endpoint written before incarnations existed (the owner
    /// is the session id alone) reads as that session with no incarnation.
    #[test]
    fn legacy_session_owners_read_back(id in text(), name in text()) {
        let stored = json!({ "scope": "session", "owner": id, "name": name });
        let read: EndpointId = serde_json::from_value(stored).unwrap();
        prop_assert_eq!(read, EndpointId::new(Scope::Session(SessionRef::new(id, "")), name));
    }
}

/// A message's data without its coordinates (compared elsewhere, as text).
fn strip_location(mut data: Value) -> Value {
    if let Some(object) = data.as_object_mut() {
        object.remove("location");
    }
    data
}
