//! What the supervisor tells the rest of the daemon (WebSocket API, webhooks).
//! Serialized as `{"type": "session.state", "session", "tenant", "at_ms", ...}`.

use serde::Serialize;

use super::state::{Reason, SessionState};

/// One event about one session. Broadcast to every subscriber.
#[derive(Clone, Debug, Serialize)]
pub struct SessionEvent {
    pub session: String,
    pub tenant: String,
    /// The session's incarnation (internal: decides which endpoints and
    /// sockets may see the event; not sent).
    #[serde(skip)]
    pub incarnation: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// How far a sent message got, as its recipient reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Delivered,
    Read,
    Played,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
        }
    }
}

/// A WhatsApp user as far as whatsd knows them: `jid` always; `phone`
/// (digits) when the JID is a phone number's or the LID's number is known;
/// `lid` when WhatsApp gave one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Party {
    pub jid: String,
    pub phone: String,
    pub lid: String,
}

/// The identity of the paired account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Digits only, e.g. `15551234567`.
    pub phone: String,
    /// Device JID, e.g. `15551234567:3@s.whatsapp.net`.
    pub jid: String,
    /// LID, e.g. `100000012345678:3@lid`; empty when unknown.
    pub lid: String,
}

/// A live QR code. `code` is a credential (it carries the device's ADV
/// secret): show it only to authenticated users, never log it.
#[derive(Clone, Serialize)]
pub struct PairingQr {
    pub code: String,
    /// When this code stops working (ms since epoch).
    pub expires_at_ms: i64,
    /// 1-based position in the current rotation.
    pub index: u32,
}

impl std::fmt::Debug for PairingQr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingQr")
            .field("code", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("index", &self.index)
            .finish()
    }
}

/// A received attachment, as the event WebSocket describes it.
#[derive(Clone, Debug, Serialize)]
pub struct ReceivedMedia {
    /// `/v1/sessions/{id}/messages/{message_id}/media`.
    pub url: String,
    pub mimetype: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type")]
pub enum EventKind {
    #[serde(rename = "session.state")]
    State {
        from: SessionState,
        to: SessionState,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    #[serde(rename = "session.qr")]
    Qr {
        #[serde(flatten)]
        qr: PairingQr,
        /// When the activation timeout ends this pairing attempt.
        activation_deadline_ms: i64,
    },
    #[serde(rename = "session.pair_code")]
    PairCode { code: String, expires_at_ms: i64 },
    #[serde(rename = "session.pair_code_error")]
    PairCodeError {
        /// Library reason, e.g. `rate_overlimit`, `bad_request`.
        reason: String,
        message: String,
    },
    #[serde(rename = "session.paired")]
    Paired {
        #[serde(flatten)]
        identity: Identity,
        business_name: String,
        platform: String,
    },
    /// The phone number became known (after pairing, or by polling).
    #[serde(rename = "session.phone")]
    Phone {
        #[serde(flatten)]
        identity: Identity,
    },
    /// Polling for the phone number ran out of budget.
    #[serde(rename = "session.phone_unknown")]
    PhoneUnknown,
    #[serde(rename = "session.push_name")]
    PushName { push_name: String },
    /// Entered on the library's `Connected`: logged in, synced, working.
    #[serde(rename = "session.connected")]
    Connected {
        #[serde(flatten)]
        identity: Identity,
        push_name: String,
    },
    #[serde(rename = "session.logged_out")]
    LoggedOut { reason: Reason },
    #[serde(rename = "message.sent")]
    MessageSent {
        id: String,
        to: String,
        /// When WhatsApp took it (Unix seconds).
        timestamp: i64,
    },
    /// A message someone sent the account (not from the account itself,
    /// no status updates). Only on the event WebSocket (the admin page's
    /// recent messages): webhooks get their own, fuller `message.received`
    /// from the outbox.
    #[serde(rename = "message.received")]
    MessageReceived {
        id: String,
        /// The chat's JID (the contact's, or the group's).
        chat: String,
        /// The author's phone (digits), when known.
        from: String,
        push_name: String,
        /// `text`, `image`, `video`, `audio`, `document`, `sticker`, …
        kind: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        /// The attachment's download path (`GET`, with the Authorization
        /// header) and type, when it can be downloaded.
        #[serde(skip_serializing_if = "Option::is_none")]
        media: Option<ReceivedMedia>,
        /// Unix seconds, as WhatsApp stamped it.
        timestamp: i64,
    },
    /// A queued send WhatsApp did not take after the allowed attempts.
    #[serde(rename = "message.failed")]
    MessageFailed {
        id: String,
        to: String,
        reason: String,
    },
    /// A recipient's receipt for a message this session sent: delivered to
    /// a device of theirs, read, or (voice notes) played. One event per
    /// message id and recipient; a group message gets one per participant.
    #[serde(rename = "message.ack")]
    MessageAck {
        /// The message id `message.sent` (and the send call) gave.
        id: String,
        status: AckStatus,
        /// The chat the message went to: the recipient's JID, or the group's.
        chat: String,
        /// Who sent the receipt.
        recipient: Party,
        /// When the recipient's device sent it (Unix seconds).
        timestamp: i64,
    },
    /// People were added to or removed from a group the account is in, or
    /// promoted to or demoted from admin.
    #[serde(rename = "group.participants")]
    GroupParticipants {
        /// The group's JID.
        group: String,
        /// `add`, `remove`, `promote` or `demote`.
        action: String,
        participants: Vec<Party>,
        /// Who did it, when WhatsApp says.
        by: Option<Party>,
        /// Unix seconds.
        timestamp: i64,
    },
    /// A group's subject or description changed (the field that did not
    /// change is absent; a deleted description is `""`).
    #[serde(rename = "group.updated")]
    GroupUpdated {
        group: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        by: Option<Party>,
        timestamp: i64,
    },
    /// The session and everything attached to it are gone; its id is free.
    #[serde(rename = "session.deleted")]
    Deleted {},
    /// The session was moved to this event's tenant (by the admin); sent
    /// under its new owner only.
    #[serde(rename = "session.reassigned")]
    Reassigned {},
}

impl EventKind {
    /// The `type` name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::State { .. } => "session.state",
            Self::Qr { .. } => "session.qr",
            Self::PairCode { .. } => "session.pair_code",
            Self::PairCodeError { .. } => "session.pair_code_error",
            Self::Paired { .. } => "session.paired",
            Self::Phone { .. } => "session.phone",
            Self::PhoneUnknown => "session.phone_unknown",
            Self::PushName { .. } => "session.push_name",
            Self::Connected { .. } => "session.connected",
            Self::LoggedOut { .. } => "session.logged_out",
            Self::MessageReceived { .. } => "message.received",
            Self::MessageSent { .. } => "message.sent",
            Self::MessageAck { .. } => "message.ack",
            Self::MessageFailed { .. } => "message.failed",
            Self::GroupParticipants { .. } => "group.participants",
            Self::GroupUpdated { .. } => "group.updated",
            Self::Deleted {} => "session.deleted",
            Self::Reassigned {} => "session.reassigned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_flat_with_a_type_tag() {
        let event = SessionEvent {
            session: "s1".into(),
            tenant: "t".into(),
            incarnation: String::new(),
            at_ms: 5,
            kind: EventKind::Paired {
                identity: Identity {
                    phone: "1555".into(),
                    jid: "1555:2@s.whatsapp.net".into(),
                    lid: "9:2@lid".into(),
                },
                business_name: String::new(),
                platform: "android".into(),
            },
        };
        let v = serde_json::to_value(&event).unwrap();
        assert_eq!(v["type"], "session.paired");
        assert_eq!(v["session"], "s1");
        assert_eq!(v["phone"], "1555");
        assert_eq!(v["lid"], "9:2@lid");
        assert_eq!(event.kind.name(), "session.paired");
    }

    #[test]
    fn qr_debug_never_shows_the_code() {
        let qr = PairingQr {
            code: "secret-ref,abc".into(),
            expires_at_ms: 1,
            index: 1,
        };
        assert!(!format!("{qr:?}").contains("secret"));
    }
}
