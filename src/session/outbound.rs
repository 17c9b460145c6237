//! A session's outbound queue, as the session sees it: what a queued send
//! holds, a send's status and how it moves, and the store keys (see
//! `crate::store::sends` for the layout). The session's actor sends the
//! queue in order while connected.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::ids::Blinder;

/// How long an `Idempotency-Key` names its first send.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// Attempts before a queued send is given up as `failed`.
pub const MAX_ATTEMPTS: u32 = 5;

/// A send waiting in the queue. Its message id is fixed when it is queued
/// and reused on every attempt, so WhatsApp sees one message however often
/// a crash makes whatsd try again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedSend {
    pub id: String,
    /// The recipient as a JID.
    pub to: String,
    /// The text (empty for media and reactions).
    pub text: String,
    pub created_ms: i64,
    #[serde(default)]
    pub attempts: u32,
    /// A media message: its stored, encrypted bytes and what goes with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<QueuedMedia>,
    /// The message this one quotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Quoted>,
    /// A reaction instead of a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Reaction>,
}

impl QueuedSend {
    /// A text send, queued now.
    pub fn text(id: &str, to: &str, text: &str, created_ms: i64) -> Self {
        Self {
            id: id.to_owned(),
            to: to.to_owned(),
            text: text.to_owned(),
            created_ms,
            attempts: 0,
            media: None,
            reply_to: None,
            reaction: None,
        }
    }
}

/// What a queued send says, as the API gives it (the actor fixes the id
/// and the recipient's JID).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub text: String,
    pub media: Option<QueuedMedia>,
    pub reply_to: Option<Quoted>,
    pub reaction: Option<Reaction>,
}

/// The kinds of media WhatsApp carries in a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
    Sticker,
}

impl MediaKind {
    pub const ALL: [MediaKind; 5] = [
        Self::Image,
        Self::Video,
        Self::Audio,
        Self::Document,
        Self::Sticker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Document => "document",
            Self::Sticker => "sticker",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind whose keys WhatsApp's media scheme derives for bytes of
    /// this MIME type when nothing else is known (a sticker is encrypted
    /// like an image).
    pub fn for_mime(mime: &str) -> Self {
        match mime.split('/').next().unwrap_or_default() {
            "image" => Self::Image,
            "video" => Self::Video,
            "audio" => Self::Audio,
            _ => Self::Document,
        }
    }

    /// Whether bytes encrypted for `self` can be sent as `other` without
    /// encrypting them again (the same HKDF info).
    pub fn same_keys(self, other: Self) -> bool {
        let family = |k: Self| if k == Self::Sticker { Self::Image } else { k };
        family(self) == family(other)
    }
}

/// A media send's bytes (stored encrypted, see `crate::store::media_blobs`)
/// and the fields of its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMedia {
    pub kind: MediaKind,
    /// A voice note (push-to-talk), for `audio`.
    #[serde(default)]
    pub ptt: bool,
    pub mimetype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    pub blob: BlobMeta,
}

/// Where a media send's bytes are and the keys they are encrypted with:
/// WhatsApp's media scheme (a random 32-byte media key, HKDF-expanded for
/// `encrypted_as`, AES-256-CBC, HMAC-SHA256 truncated to 10 bytes). The
/// file holds exactly the body WhatsApp's upload takes; this record, with
/// the key, is only ever stored sealed (in the queue item, or in a Graph
/// upload's record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobMeta {
    /// The file's name under `<data_dir>/media-out`.
    pub name: String,
    /// The kind whose keys encrypted it.
    pub encrypted_as: MediaKind,
    pub media_key: [u8; 32],
    pub file_sha256: [u8; 32],
    pub file_enc_sha256: [u8; 32],
    /// Plaintext length.
    pub file_length: u64,
    /// Audio and video: WhatsApp's streaming sidecar (a MAC per 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Vec<u8>>,
}

/// The message a send quotes: its id and who wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quoted {
    pub id: String,
    /// The author's JID; `None`: worked out when sent (the session's own
    /// account if it sent that message, else the chat's contact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
}

/// A reaction to a message of the chat (`emoji` empty: removes it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub message_id: String,
    pub emoji: String,
    /// Whether the session's account wrote the target (worked out when
    /// queued from the session's own sends).
    #[serde(default)]
    pub from_me: bool,
    /// The target's author in a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
}

/// Where a send is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SendState {
    /// Accepted and stored; waits for the session to be connected.
    Queued,
    /// Given up before it was sent (`DELETE`).
    Cancelled,
    /// WhatsApp could not take it after the allowed attempts; see `reason`.
    Failed,
    /// WhatsApp took it.
    Sent,
    /// The recipient's device has it.
    Delivered,
    /// The recipient read it.
    Read,
    /// The recipient played it (voice notes).
    Played,
}

/// A send as `GET /v1/sessions/{id}/messages/{message_id}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SendStatus {
    /// The WhatsApp message id (fixed when queued).
    pub id: String,
    /// The recipient's JID.
    pub to: String,
    pub status: SendState,
    /// Why it failed (only with `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl SendStatus {
    /// A send in state `status` since `at_ms`.
    pub fn new(id: &str, to: &str, status: SendState, at_ms: i64) -> Self {
        Self {
            id: id.to_owned(),
            to: to.to_owned(),
            status,
            reason: None,
            created_ms: at_ms,
            updated_ms: at_ms,
        }
    }

    /// Moves to `to` when that is progress (`delivered` after `read` is
    /// not); returns whether it moved.
    pub fn advance(&mut self, to: SendState, now_ms: i64) -> bool {
        let progress = match (self.status, to) {
            (SendState::Queued, _) => to != SendState::Queued,
            (SendState::Sent | SendState::Delivered | SendState::Read, _) => to > self.status,
            _ => false,
        };
        if progress {
            self.status = to;
            self.updated_ms = now_ms;
        }
        progress
    }
}

/// What an idempotency key points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub id: String,
    pub created_ms: i64,
}

/// Whether a stored status record has outlived `retention_ms` at `now_ms`:
/// the send is no longer queued and its status last changed before then.
/// A record that does not parse is kept (it reads as an error already).
pub fn status_expired(raw: &[u8], now_ms: i64, retention_ms: i64) -> bool {
    serde_json::from_slice::<SendStatus>(raw).is_ok_and(|s| {
        s.status != SendState::Queued && s.updated_ms < now_ms.saturating_sub(retention_ms)
    })
}

/// Whether a stored idempotency record is past [`IDEMPOTENCY_WINDOW_MS`]
/// at `now_ms` (it no longer names a send, see the enqueue).
pub fn idempotency_expired(raw: &[u8], now_ms: i64) -> bool {
    serde_json::from_slice::<IdempotencyRecord>(raw)
        .is_ok_and(|r| now_ms - r.created_ms >= IDEMPOTENCY_WINDOW_MS)
}

/// Deletes, in every session's keyspace, the status records older than
/// `retention` ([`status_expired`]) and the idempotency keys past their
/// window. Blocking. Returns how many of each.
pub fn expire(
    store: &crate::store::Store,
    now_ms: i64,
    retention: std::time::Duration,
) -> Result<(usize, usize), crate::store::StoreError> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let statuses = store.send_status_expire(|raw| status_expired(raw, now_ms, retention_ms))?;
    let keys = store.send_idempotency_expire(|raw| idempotency_expired(raw, now_ms))?;
    Ok((statuses, keys))
}

/// The store prefix of one session incarnation's queue, statuses and keys.
pub fn prefix(blinder: &Blinder, incarnation: &str) -> Vec<u8> {
    blinder.blind(b"outbound", incarnation.as_bytes()).to_vec()
}

pub fn status_key(prefix: &[u8], message_id: &str) -> Vec<u8> {
    [prefix, message_id.as_bytes()].concat()
}

pub fn idempotency_key(prefix: &[u8], key: &str) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    [prefix, digest.as_ref()].concat()
}

/// A new message id in WhatsApp Web's style: `3EB0` and 18 hex digits.
pub fn new_message_id() -> String {
    let mut bytes = [0u8; 9];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!("3EB0{hex}")
}

/// Whether `key` is an acceptable `Idempotency-Key`: 1 to 255 visible
/// ASCII characters.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: SendState) -> SendStatus {
        SendStatus::new("x", "1@s.whatsapp.net", s, 0)
    }

    #[test]
    fn statuses_only_move_forward() {
        let mut s = status(SendState::Queued);
        assert!(s.advance(SendState::Sent, 1));
        assert!(s.advance(SendState::Read, 2));
        assert!(
            !s.advance(SendState::Delivered, 3),
            "a late delivery receipt"
        );
        assert_eq!((s.status, s.updated_ms), (SendState::Read, 2));
        assert!(s.advance(SendState::Played, 4));
        let mut cancelled = status(SendState::Cancelled);
        assert!(!cancelled.advance(SendState::Sent, 1));
        let mut failed = status(SendState::Failed);
        assert!(!failed.advance(SendState::Delivered, 1));
    }

    #[test]
    fn ids_and_keys() {
        let id = new_message_id();
        assert_eq!(id.len(), 22);
        assert!(id.starts_with("3EB0"));
        assert_ne!(new_message_id(), id);
        assert!(valid_idempotency_key("order-42"));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("has space"));
        assert!(!valid_idempotency_key(&"k".repeat(256)));
        let b = Blinder::from_bytes(&[1; 32]);
        let p = prefix(&b, "inc-1");
        assert_eq!(p.len(), 32);
        assert_ne!(p, prefix(&b, "inc-2"));
        assert_ne!(idempotency_key(&p, "a"), idempotency_key(&p, "b"));
    }

    /// Statuses past the retention go, queued sends and younger statuses
    /// stay, a receipt's update keeps a status; idempotency keys go after
    /// their window; other sessions' rows are swept the same way.
    #[tokio::test]
    async fn the_retention_sweep_deletes_old_statuses_and_keys() {
        use crate::store::{MasterKey, Store};
        const DAY: i64 = 24 * 60 * 60 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &MasterKey::from_bytes([9; 32])).unwrap();
        let retention = std::time::Duration::from_secs(30 * 24 * 3600);
        let now = 100 * DAY;
        let json = |v: &SendStatus| serde_json::to_vec(v).unwrap();
        let mut kept = Vec::new();
        let mut gone = Vec::new();
        for (n, incarnation) in ["inc-a", "inc-b"].into_iter().enumerate() {
            let p = prefix(store.blinder(), incarnation);
            // 700 per session: more than one chunk of the sweep.
            for i in 0..700i64 {
                let id = format!("3EB0{n}{i:017}");
                let (state, at) = match i % 4 {
                    0 => (SendState::Read, now - 31 * DAY),
                    1 => (SendState::Sent, now - 29 * DAY),
                    2 => (SendState::Failed, now - 40 * DAY),
                    _ => (SendState::Queued, now - 50 * DAY),
                };
                let key = status_key(&p, &id);
                let idem = idempotency_key(&p, &id);
                let record = serde_json::to_vec(&IdempotencyRecord {
                    id: id.clone(),
                    created_ms: at,
                })
                .unwrap();
                store
                    .send_enqueue(
                        &p,
                        b"item",
                        (
                            &key,
                            &json(&SendStatus::new(&id, "1@s.whatsapp.net", state, at)),
                        ),
                        Some((&idem, &record)),
                    )
                    .await
                    .unwrap();
                if state == SendState::Queued || at >= now - 30 * DAY {
                    kept.push(key);
                } else {
                    gone.push((key, state));
                }
            }
        }
        // A receipt moved this old `read` status on just now: it stays.
        let at = gone
            .iter()
            .position(|(_, state)| *state == SendState::Read)
            .unwrap();
        let (moved, _) = gone.remove(at);
        let gone: Vec<Vec<u8>> = gone.into_iter().map(|(key, _)| key).collect();
        let mut status: SendStatus =
            serde_json::from_slice(&store.send_status(&moved).unwrap().unwrap()).unwrap();
        assert!(status.advance(SendState::Played, now));
        store.send_status_put(&moved, &json(&status)).unwrap();
        kept.push(moved);

        let (statuses, keys) = expire(&store, now, retention).unwrap();
        assert_eq!(statuses, gone.len());
        // Every idempotency record is older than a day.
        assert_eq!(keys, 1400);
        for key in &gone {
            assert_eq!(store.send_status(key).unwrap(), None);
        }
        for key in &kept {
            assert!(store.send_status(key).unwrap().is_some());
        }
        let p = prefix(store.blinder(), "inc-a");
        assert_eq!(
            store
                .send_idempotency(&idempotency_key(&p, &format!("3EB00{:017}", 1)))
                .unwrap(),
            None
        );
        // Nothing more to do.
        assert_eq!(expire(&store, now, retention).unwrap(), (0, 0));
    }

    #[test]
    fn what_expires() {
        let old =
            serde_json::to_vec(&SendStatus::new("x", "1@s", SendState::Delivered, 10)).unwrap();
        assert!(status_expired(&old, 1_000, 500));
        assert!(!status_expired(&old, 1_000, 995));
        let queued =
            serde_json::to_vec(&SendStatus::new("x", "1@s", SendState::Queued, 10)).unwrap();
        assert!(!status_expired(&queued, 1_000, 500));
        assert!(!status_expired(b"not json", 1_000, 500));
        let key = serde_json::to_vec(&IdempotencyRecord {
            id: "x".into(),
            created_ms: 0,
        })
        .unwrap();
        assert!(!idempotency_expired(&key, IDEMPOTENCY_WINDOW_MS - 1));
        assert!(idempotency_expired(&key, IDEMPOTENCY_WINDOW_MS));
    }
}
