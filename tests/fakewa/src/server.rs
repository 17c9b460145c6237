//! The fake server as a whole: listener, connection registry, the phone and
//! contacts, and the operations the control API exposes.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use wacore_binary::builder::NodeBuilder;
use wacore_binary::node::Node;

use crate::conn::{self, ConnCmd, ConnHandle};
use crate::media::MediaStore;
use crate::noise::ServerIdentity;
use crate::peer::Contact;
use crate::phone::{self, AccountKey};
use crate::state::{
    DeviceKey, Group, GroupChange, GroupNotice, Member, MemberRole, MessageKind, QueuedMessage,
    ReceiptStatus, State,
};

/// A change to a group (control API).
#[derive(Clone, Debug)]
pub enum GroupEdit {
    Participants { action: String, phones: Vec<String> },
    Subject(String),
    Description(Option<String>),
}

/// A member of a group being created (control API).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub phone: String,
    #[serde(default)]
    pub admin: bool,
    /// The group shows only this member's LID, not its phone number.
    #[serde(default)]
    pub lid_only: bool,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Where paired devices and keys are kept; `None` keeps them in memory.
    pub state_dir: Option<PathBuf>,
    /// Number of QR refs sent in `pair-device`.
    pub qr_refs: usize,
    /// Whether `pair-success` and `success` carry a LID.
    pub assign_lid: bool,
    /// Whether `pair-success` carries `<biz name>` (which becomes the push name).
    pub push_name_in_pair_success: bool,
    /// Whether a contact sends a delivery receipt as soon as it receives a
    /// message from a linked device (as a phone that is online does).
    pub delivery_receipts: bool,
    /// Where the media CDN (HTTPS) listens.
    pub media_listen: std::net::SocketAddr,
    /// How long an uploaded or sent media blob can be downloaded (410 after).
    pub media_ttl: Duration,
    /// The largest upload the CDN takes (413 beyond).
    pub media_max_upload: usize,
    /// All media blobs kept in memory together (507 beyond).
    pub media_store_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: None,
            qr_refs: 6,
            assign_lid: true,
            push_name_in_pair_success: true,
            delivery_receipts: true,
            media_listen: ([127, 0, 0, 1], 0).into(),
            media_ttl: Duration::from_secs(3600),
            media_max_upload: 100 * 1024 * 1024,
            media_store_limit: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Gone(String),
}

impl ControlError {
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::BadRequest(_) => "bad_request",
            ControlError::NotFound(_) => "not_found",
            ControlError::Conflict(_) => "conflict",
            ControlError::Failed(_) => "failed",
            ControlError::Gone(_) => "expired",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Paired {
    pub phone: String,
    pub jid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lid: Option<String>,
}

/// What a contact sends with `POST /control/media`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSend {
    pub to_phone: String,
    pub from_phone: String,
    /// `image`, `video`, `audio`, `ptt`, `document` or `sticker`.
    #[serde(rename = "type")]
    pub kind: String,
    pub mimetype: String,
    /// The plaintext bytes, standard base64.
    pub data_base64: String,
    #[serde(default)]
    pub caption: Option<String>,
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub seconds: Option<u32>,
    /// Flip a bit of the stored blob's MAC (its download then fails the MAC check).
    #[serde(default)]
    pub corrupt_mac: bool,
}

/// The answer to `POST /control/media`.
#[derive(Clone, Debug, Serialize)]
pub struct SentMedia {
    pub id: String,
    pub direct_path: String,
    pub sha256_hex: String,
    pub enc_sha256_hex: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct OutboxEntry {
    pub id: String,
    pub from_phone: String,
    pub from_device: u16,
    pub to: String,
    pub text: Option<String>,
    pub received_at_ms: u64,
    /// The media the message carries (see `crate::media::OutboxMedia`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<crate::media::OutboxMedia>,
    /// The message this one quotes (`ContextInfo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<crate::media::ReplyTo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reaction: Option<crate::media::Reaction>,
    /// Where the media is and its key (`GET /control/media/sent/{id}`).
    #[serde(skip)]
    pub media_ref: Option<crate::media::MediaRef>,
}

/// A receipt a linked device sent (for messages it received: delivery,
/// `read` when the chat is marked read, `played`, `retry`…).
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReceipt {
    pub from_device_jid: String,
    pub chat: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    pub ids: Vec<String>,
    /// The receipt's `type`; `delivery` when it has none.
    #[serde(rename = "type")]
    pub kind: String,
    pub received_at_ms: u64,
}

/// A typing indicator a linked device sent.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceChatstate {
    pub from_device_jid: String,
    pub chat: String,
    /// `composing`, `recording` or `paused`.
    pub state: String,
    pub received_at_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub id: String,
    pub phone: String,
    pub device: u16,
    pub enc_types: Vec<String>,
    pub offline: bool,
    /// Whether this was the phone's app-state key share rather than a text.
    pub app_state_key_share: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    pub phone: String,
    pub device: u16,
    pub jid: String,
    pub lid: Option<String>,
    pub connected: bool,
    pub removed: bool,
    pub pending_messages: usize,
}

/// Live connections, by what they are waiting for.
#[derive(Default)]
pub(crate) struct Conns {
    /// Unpaired clients showing QR codes, by their Noise static key.
    pub registering: HashMap<[u8; 32], ConnHandle>,
    /// Unpaired clients that asked for a pairing code, by phone number.
    pub pair_code: HashMap<String, ConnHandle>,
    /// Logged-in devices.
    pub live: HashMap<DeviceKey, ConnHandle>,
}

pub struct Server {
    pub(crate) config: Config,
    pub(crate) identity: ServerIdentity,
    pub(crate) state: Mutex<State>,
    pub(crate) conns: Mutex<Conns>,
    contacts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Contact>>>>,
    outbox: Mutex<Vec<OutboxEntry>>,
    device_receipts: Mutex<Vec<DeviceReceipt>>,
    chatstates: Mutex<Vec<DeviceChatstate>>,
    deliveries: Mutex<Vec<Delivery>>,
    refuse_until: Mutex<Option<Instant>>,
    /// Phones whose device connection is dropped right after its next
    /// delivery of queued stanzas, before any receipt can come back.
    drop_after_delivery: Mutex<HashSet<String>>,
    /// Numbers that are not on WhatsApp (every other number is).
    unregistered: Mutex<HashSet<String>>,
    next_conn_id: AtomicU64,
    edge_routed: AtomicU64,
    next_msg_id: AtomicU64,
    /// The media CDN.
    pub media: Arc<MediaStore>,
    /// The contacts' phones' copies of the media they sent, for re-uploads.
    pub reuploads: crate::media_retry::Reuploads,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Server {
    pub fn new(config: Config) -> std::io::Result<Arc<Self>> {
        let state = State::open(
            config.state_dir.as_deref(),
            ServerIdentity::generate_private,
        )?;
        let identity = ServerIdentity::from_private(&state.server.server_private)
            .map_err(std::io::Error::other)?;
        Ok(Arc::new(Self {
            identity,
            state: Mutex::new(state),
            conns: Mutex::new(Conns::default()),
            contacts: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Vec::new()),
            device_receipts: Mutex::new(Vec::new()),
            chatstates: Mutex::new(Vec::new()),
            deliveries: Mutex::new(Vec::new()),
            refuse_until: Mutex::new(None),
            drop_after_delivery: Mutex::new(HashSet::new()),
            unregistered: Mutex::default(),
            next_conn_id: AtomicU64::new(1),
            edge_routed: AtomicU64::new(0),
            next_msg_id: AtomicU64::new(1),
            media: Arc::new(MediaStore::new(
                config.media_ttl,
                config.media_max_upload,
                config.media_store_limit,
            )?),
            reuploads: crate::media_retry::Reuploads::new(config.media_store_limit),
            config,
        }))
    }

    /// The PEM certificate of the CA that signed the media CDN's certificate.
    pub fn media_ca_pem(&self) -> String {
        self.media.ca_pem().to_owned()
    }

    /// Accepts WebSocket connections until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            };
            if self.refusing() {
                tracing::info!(%peer, "refusing connection (fault injected)");
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
            let server = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                conn::serve(server, id, stream, peer, shutdown).await;
            });
        }
    }

    fn refusing(&self) -> bool {
        lock(&self.refuse_until).is_some_and(|until| Instant::now() < until)
    }

    /// The Signal peer for `phone`: a fake contact, or, for a number that is
    /// an account here, that account's own primary phone (device 0).
    pub(crate) fn contact(&self, phone: &str) -> Arc<tokio::sync::Mutex<Contact>> {
        if let Some(existing) = lock(&self.contacts).get(phone) {
            return existing.clone();
        }
        let account_key = lock(&self.state)
            .server
            .accounts
            .get(phone)
            .map(|a| a.account_key.clone());
        let contact = match account_key {
            Some(key) => Contact::own_phone(phone, &key),
            None => Contact::new(phone),
        };
        lock(&self.contacts)
            .entry(phone.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(contact)))
            .clone()
    }

    pub(crate) fn record_outbound(&self, entry: OutboxEntry) {
        tracing::info!(id = %entry.id, from = %entry.from_phone, to = %entry.to, "device sent a message");
        lock(&self.outbox).push(entry);
    }

    pub(crate) fn record_receipt(&self, receipt: DeviceReceipt) {
        lock(&self.device_receipts).push(receipt);
    }

    pub(crate) fn record_chatstate(&self, chatstate: DeviceChatstate) {
        lock(&self.chatstates).push(chatstate);
    }

    /// The receipts linked devices (of `phone`, if given) sent, in order.
    pub fn device_receipts(&self, phone: Option<&str>) -> Vec<DeviceReceipt> {
        lock(&self.device_receipts)
            .iter()
            .filter(|r| phone.is_none_or(|p| r.from_device_jid.split(':').next() == Some(p)))
            .cloned()
            .collect()
    }

    /// The typing indicators linked devices (of `phone`, if given) sent, in order.
    pub fn chatstates(&self, phone: Option<&str>) -> Vec<DeviceChatstate> {
        lock(&self.chatstates)
            .iter()
            .filter(|c| phone.is_none_or(|p| c.from_device_jid.split(':').next() == Some(p)))
            .cloned()
            .collect()
    }

    /// The plaintext of the media of outbox message `id` (fakewa downloads
    /// its own blob and decrypts it with the message's media key).
    pub fn sent_media(&self, id: &str) -> Result<(Vec<u8>, Option<String>), ControlError> {
        let entry = lock(&self.outbox)
            .iter()
            .rev()
            .find(|e| e.id == id && e.media_ref.is_some())
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no sent media message {id:?}")))?;
        let media_ref = entry.media_ref.expect("filtered on media_ref");
        let mimetype = entry.media.and_then(|m| m.mimetype);
        match self.media.open(&media_ref) {
            Ok(plain) => Ok((plain, mimetype)),
            Err(crate::media::OpenError::Missing) => Err(ControlError::NotFound(format!(
                "the media of {id:?} is not on fakewa's CDN"
            ))),
            Err(crate::media::OpenError::Expired) => {
                Err(ControlError::Gone(format!("the media of {id:?} expired")))
            }
            Err(crate::media::OpenError::Undecryptable(e)) => Err(ControlError::Failed(format!(
                "the media of {id:?} does not decrypt: {e}"
            ))),
        }
    }

    pub(crate) fn new_message_id(&self) -> String {
        format!(
            "FAKEWA{:010X}{:06X}",
            now_ms(),
            self.next_msg_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    // ---- control operations -------------------------------------------

    /// The phone scans a QR code shown by an unpaired client.
    pub async fn scan(&self, qr: &str, phone: Option<&str>) -> Result<Paired, ControlError> {
        let payload = phone::parse_qr(qr)
            .map_err(|e| ControlError::BadRequest(format!("invalid QR: {e}")))?;
        if let Some(p) = phone {
            validate_phone(p)?;
        }
        let handle = lock(&self.conns)
            .registering
            .get(&payload.noise_pub)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound("no connected client shows this QR code".into())
            })?;
        let (tx, rx) = oneshot::channel();
        handle.send(ConnCmd::Pair {
            phone: phone.map(str::to_owned),
            adv_secret: payload.adv_secret,
            identity_pub: payload.identity_pub,
            reply: tx,
        });
        recv_reply(rx).await
    }

    /// The phone's user types the pairing code the client showed.
    pub async fn enter_pair_code(&self, phone: &str, code: &str) -> Result<Paired, ControlError> {
        validate_phone(phone)?;
        let handle = lock(&self.conns)
            .pair_code
            .get(phone)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!("no client requested a pairing code for {phone}"))
            })?;
        let (tx, rx) = oneshot::channel();
        handle.send(ConnCmd::EnterPairCode {
            code: code.to_owned(),
            reply: tx,
        });
        recv_reply(rx).await
    }

    /// Queues an inbound message for every linked device of `to_phone` and
    /// delivers it to those that are connected.
    pub fn send_message(
        &self,
        to_phone: &str,
        contact: &str,
        text: &str,
        kind: MessageKind,
    ) -> Result<String, ControlError> {
        validate_phone(to_phone)?;
        validate_phone(contact)?;
        if contact == to_phone {
            return Err(ControlError::BadRequest(
                "from_phone must differ from to_phone".into(),
            ));
        }
        let id = self.new_message_id();
        if lock(&self.state).devices_of(to_phone).is_empty() {
            return Err(ControlError::NotFound(format!(
                "{to_phone} has no linked device"
            )));
        }
        self.queue_for_devices(
            to_phone,
            QueuedMessage {
                id: id.clone(),
                kind,
                contact: contact.to_owned(),
                text: text.to_owned(),
                timestamp: now_secs(),
                app_state_key: None,
                receipt: None,
                group: None,
                notice: None,
                proto: None,
            },
        )?;
        Ok(id)
    }

    /// Contact `req.from_phone` sends media with the bytes `data` to
    /// `req.to_phone`'s devices: encrypted with WhatsApp's media scheme,
    /// stored on the media CDN, and sent as the matching message.
    pub fn send_media(&self, req: &MediaSend, data: &[u8]) -> Result<SentMedia, ControlError> {
        use buffa::Message;
        use wacore::download::MediaType;
        use waproto::whatsapp as wa;

        validate_phone(&req.to_phone)?;
        validate_phone(&req.from_phone)?;
        if req.from_phone == req.to_phone {
            return Err(ControlError::BadRequest(
                "from_phone must differ from to_phone".into(),
            ));
        }
        let media_type = match req.kind.as_str() {
            "image" => MediaType::Image,
            "video" => MediaType::Video,
            "audio" | "ptt" => MediaType::Audio,
            "document" => MediaType::Document,
            "sticker" => MediaType::Sticker,
            other => {
                return Err(ControlError::BadRequest(format!(
                    "unknown type {other:?}: image, video, audio, ptt, document or sticker"
                )));
            }
        };
        if data.is_empty() {
            return Err(ControlError::BadRequest("data_base64 is empty".into()));
        }
        if lock(&self.state).devices_of(&req.to_phone).is_empty() {
            return Err(ControlError::NotFound(format!(
                "{} has no linked device",
                req.to_phone
            )));
        }
        let enc = wacore::upload::encrypt_media(data, media_type)
            .map_err(|e| ControlError::Failed(format!("cannot encrypt: {e}")))?;
        let mut blob = enc.data_to_upload;
        if req.corrupt_mac {
            // The last 10 bytes are the truncated HMAC.
            if let Some(last) = blob.last_mut() {
                *last ^= 0x01;
            }
        }
        let blob = axum::body::Bytes::from(blob);
        let direct_path = self
            .media
            .store(media_type.mms_type(), blob.clone())
            .map_err(|e| ControlError::Failed(format!("media store: {e:?}")))?;
        let url = self.media.url(&direct_path);
        let mimetype = req.mimetype.clone();
        let (url, dp, key, sha, enc_sha, len, ts) = (
            Some(url),
            Some(direct_path.clone()),
            Some(enc.media_key.to_vec()),
            Some(enc.file_sha256.to_vec()),
            Some(enc.file_enc_sha256.to_vec()),
            Some(data.len() as u64),
            Some(now_secs() as i64),
        );
        let mut msg = wa::Message::default();
        match req.kind.as_str() {
            "image" => {
                msg.image_message = buffa::MessageField::some(wa::message::ImageMessage {
                    url,
                    direct_path: dp,
                    media_key: key,
                    file_sha256: sha,
                    file_enc_sha256: enc_sha,
                    file_length: len,
                    media_key_timestamp: ts,
                    mimetype: Some(mimetype),
                    caption: req.caption.clone(),
                    ..Default::default()
                })
            }
            "video" => {
                msg.video_message = buffa::MessageField::some(wa::message::VideoMessage {
                    url,
                    direct_path: dp,
                    media_key: key,
                    file_sha256: sha,
                    file_enc_sha256: enc_sha,
                    file_length: len,
                    media_key_timestamp: ts,
                    mimetype: Some(mimetype),
                    caption: req.caption.clone(),
                    seconds: req.seconds,
                    streaming_sidecar: enc.streaming_sidecar,
                    ..Default::default()
                })
            }
            "audio" | "ptt" => {
                msg.audio_message = buffa::MessageField::some(wa::message::AudioMessage {
                    url,
                    direct_path: dp,
                    media_key: key,
                    file_sha256: sha,
                    file_enc_sha256: enc_sha,
                    file_length: len,
                    media_key_timestamp: ts,
                    mimetype: Some(mimetype),
                    seconds: req.seconds,
                    ptt: Some(req.kind == "ptt"),
                    streaming_sidecar: enc.streaming_sidecar,
                    ..Default::default()
                })
            }
            "document" => {
                msg.document_message = buffa::MessageField::some(wa::message::DocumentMessage {
                    url,
                    direct_path: dp,
                    media_key: key,
                    file_sha256: sha,
                    file_enc_sha256: enc_sha,
                    file_length: len,
                    media_key_timestamp: ts,
                    mimetype: Some(mimetype),
                    caption: req.caption.clone(),
                    title: req.file_name.clone(),
                    file_name: req.file_name.clone(),
                    ..Default::default()
                })
            }
            _ => {
                msg.sticker_message = buffa::MessageField::some(wa::message::StickerMessage {
                    url,
                    direct_path: dp,
                    media_key: key,
                    file_sha256: sha,
                    file_enc_sha256: enc_sha,
                    file_length: len,
                    media_key_timestamp: ts,
                    mimetype: Some(mimetype),
                    ..Default::default()
                })
            }
        }
        let id = self.new_message_id();
        // The sender's phone keeps the file: it can upload it again.
        self.reuploads.keep(crate::media_retry::PhoneCopy {
            message_id: id.clone(),
            from_phone: req.from_phone.clone(),
            to_phone: req.to_phone.clone(),
            media_key: enc.media_key.to_vec(),
            mms_type: media_type.mms_type(),
            blob,
        });
        self.queue_for_devices(
            &req.to_phone,
            QueuedMessage {
                id: id.clone(),
                kind: MessageKind::Dm,
                contact: req.from_phone.clone(),
                text: String::new(),
                timestamp: now_secs(),
                app_state_key: None,
                receipt: None,
                group: None,
                notice: None,
                proto: Some(msg.encode_to_vec()),
            },
        )?;
        Ok(SentMedia {
            id,
            direct_path,
            sha256_hex: crate::media::hex(&enc.file_sha256),
            enc_sha256_hex: crate::media::hex(&enc.file_enc_sha256),
        })
    }

    /// Creates a group of `members` (phones; the first is the creator and
    /// a super admin) and answers it.
    pub fn create_group(
        &self,
        subject: &str,
        description: Option<&str>,
        members: Vec<NewMember>,
    ) -> Result<Group, ControlError> {
        if subject.is_empty() || subject.chars().count() > 100 {
            return Err(ControlError::BadRequest(
                "subject must have 1-100 characters".into(),
            ));
        }
        let Some(creator) = members.first().map(|m| m.phone.clone()) else {
            return Err(ControlError::BadRequest(
                "a group needs at least one member".into(),
            ));
        };
        let mut seen = HashSet::new();
        for member in &members {
            validate_phone(&member.phone)?;
            if !seen.insert(member.phone.as_str()) {
                return Err(ControlError::BadRequest(format!(
                    "{} is listed twice",
                    member.phone
                )));
            }
        }
        let members = members
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let role = if i == 0 {
                    MemberRole::Superadmin
                } else if m.admin {
                    MemberRole::Admin
                } else {
                    MemberRole::Member
                };
                (m.phone, role, m.lid_only)
            })
            .collect();
        lock(&self.state)
            .create_group(
                subject.to_owned(),
                description.map(str::to_owned),
                &creator,
                members,
                now_secs(),
            )
            .map_err(|e| ControlError::Failed(e.to_string()))
    }

    /// `from_phone`, a member of group `group`, posts `text` there: queued
    /// for every linked device of every other member.
    pub fn post_in_group(
        &self,
        group: &str,
        from_phone: &str,
        text: &str,
    ) -> Result<String, ControlError> {
        validate_phone(from_phone)?;
        let group_id = group.strip_suffix("@g.us").unwrap_or(group);
        let recipients: Vec<String> = {
            let state = lock(&self.state);
            let group = state
                .server
                .groups
                .get(group_id)
                .ok_or_else(|| ControlError::NotFound(format!("no group {group}")))?;
            if group.member(from_phone).is_none() {
                return Err(ControlError::BadRequest(format!(
                    "{from_phone} is not a member of {group_id}"
                )));
            }
            group
                .members
                .iter()
                .filter(|m| m.phone != from_phone)
                .map(|m| m.phone.clone())
                .collect()
        };
        let id = self.new_message_id();
        let entry = QueuedMessage {
            id: id.clone(),
            kind: MessageKind::Group,
            contact: from_phone.to_owned(),
            text: text.to_owned(),
            timestamp: now_secs(),
            app_state_key: None,
            receipt: None,
            group: Some(group_id.to_owned()),
            notice: None,
            proto: None,
        };
        for phone in recipients {
            self.queue_for_devices(&phone, entry.clone())?;
        }
        Ok(id)
    }

    /// Member `by` changes group `group` (`action` = `add`, `remove`,
    /// `promote`, `demote` with `phones`; or a new `subject`/`description`),
    /// and every member's devices (those removed included) are told.
    pub fn change_group(
        &self,
        group: &str,
        by: &str,
        change: GroupEdit,
    ) -> Result<String, ControlError> {
        validate_phone(by)?;
        let group_id = group.strip_suffix("@g.us").unwrap_or(group);
        let (notice, told) = {
            let mut state = lock(&self.state);
            let mut members_to_add = Vec::new();
            if let GroupEdit::Participants { action, phones } = &change {
                for phone in phones {
                    validate_phone(phone)?;
                }
                if action == "add" {
                    for phone in phones {
                        members_to_add.push(Member {
                            phone: phone.clone(),
                            lid: state.contact_lid(phone),
                            role: MemberRole::Member,
                            lid_only: false,
                        });
                    }
                }
            }
            let group = state
                .server
                .groups
                .get_mut(group_id)
                .ok_or_else(|| ControlError::NotFound(format!("no group {group}")))?;
            let by = group
                .member(by)
                .cloned()
                .ok_or_else(|| ControlError::BadRequest(format!("{by} is not in {group_id}")))?;
            let mut told: Vec<String> = group.members.iter().map(|m| m.phone.clone()).collect();
            let change = match change {
                GroupEdit::Participants { action, phones } => {
                    let members = match action.as_str() {
                        "add" => {
                            if let Some(m) = members_to_add
                                .iter()
                                .find(|m| group.member(&m.phone).is_some())
                            {
                                return Err(ControlError::Conflict(format!(
                                    "{} is in the group already",
                                    m.phone
                                )));
                            }
                            group.members.extend(members_to_add.iter().cloned());
                            told.extend(phones.iter().cloned());
                            members_to_add
                        }
                        "remove" | "promote" | "demote" => {
                            let mut touched = Vec::new();
                            for phone in &phones {
                                let member = group.member(phone).cloned().ok_or_else(|| {
                                    ControlError::BadRequest(format!(
                                        "{phone} is not in {group_id}"
                                    ))
                                })?;
                                touched.push(member);
                            }
                            match action.as_str() {
                                "remove" => group.members.retain(|m| !phones.contains(&m.phone)),
                                role => {
                                    for m in &mut group.members {
                                        if phones.contains(&m.phone) {
                                            m.role = if role == "promote" {
                                                MemberRole::Admin
                                            } else {
                                                MemberRole::Member
                                            };
                                        }
                                    }
                                }
                            }
                            touched
                        }
                        other => {
                            return Err(ControlError::BadRequest(format!(
                                "unknown action {other:?}: add, remove, promote or demote"
                            )));
                        }
                    };
                    GroupChange::Participants { action, members }
                }
                GroupEdit::Subject(subject) => {
                    group.subject = subject.clone();
                    GroupChange::Subject(subject)
                }
                GroupEdit::Description(description) => {
                    group.description = description.clone();
                    GroupChange::Description(description)
                }
            };
            let notice = GroupNotice {
                group: group.clone(),
                by,
                change,
            };
            state
                .save_server()
                .map_err(|e| ControlError::Failed(e.to_string()))?;
            (notice, told)
        };
        let id = self.new_message_id();
        let entry = QueuedMessage {
            id: id.clone(),
            kind: MessageKind::Group,
            contact: notice.by.phone.clone(),
            text: String::new(),
            timestamp: now_secs(),
            app_state_key: None,
            receipt: None,
            group: Some(group_id.to_owned()),
            notice: Some(notice),
            proto: None,
        };
        for phone in told {
            self.queue_for_devices(&phone, entry.clone())?;
        }
        Ok(id)
    }

    /// A linked device of `by` asks to `action` (`add`, `remove`, `promote`,
    /// `demote`) `phones` in group `group`, as WhatsApp checks it: only an
    /// admin may, a member cannot be added twice, a non-member not removed.
    /// Answers each phone's error code (`None`: done).
    pub fn change_group_from_device(
        &self,
        group: &str,
        by: &str,
        action: &str,
        phones: &[String],
    ) -> Result<Vec<(String, Option<&'static str>)>, ControlError> {
        let group_id = group.strip_suffix("@g.us").unwrap_or(group);
        let Some(current) = self.group(group_id) else {
            return Err(ControlError::NotFound(format!("no group {group}")));
        };
        match current.member(by) {
            Some(m) if m.role != MemberRole::Member => {}
            _ => return Err(ControlError::Conflict(format!("{by} is not an admin"))),
        }
        let outcomes: Vec<(String, Option<&'static str>)> = phones
            .iter()
            .map(|phone| {
                let member = current.member(phone).is_some();
                let error = if validate_phone(phone).is_err() {
                    Some("400")
                } else if action == "add" && member {
                    Some("409")
                } else if action != "add" && !member {
                    Some("404")
                } else {
                    None
                };
                (phone.clone(), error)
            })
            .collect();
        let done: Vec<String> = outcomes
            .iter()
            .filter(|(_, e)| e.is_none())
            .map(|(p, _)| p.clone())
            .collect();
        if !done.is_empty() {
            let edit = GroupEdit::Participants {
                action: action.to_owned(),
                phones: done,
            };
            self.change_group(group_id, by, edit)?;
        }
        Ok(outcomes)
    }

    /// The groups `phone` is a member of.
    pub fn groups_of(&self, phone: &str) -> Vec<Group> {
        lock(&self.state)
            .server
            .groups
            .values()
            .filter(|g| g.member(phone).is_some())
            .cloned()
            .collect()
    }

    /// Makes `phones` numbers that are not on WhatsApp.
    pub fn set_unregistered(&self, phones: &[String]) -> Result<(), ControlError> {
        for phone in phones {
            validate_phone(phone)?;
        }
        lock(&self.unregistered).extend(phones.iter().cloned());
        Ok(())
    }

    /// Whether `phone` is on WhatsApp: accounts always, others unless
    /// made unregistered.
    pub fn is_registered(&self, phone: &str) -> bool {
        lock(&self.state).server.accounts.contains_key(phone)
            || !lock(&self.unregistered).contains(phone)
    }

    /// `phone`'s LID if it has one (an account, or a group member).
    pub fn known_lid(&self, phone: &str) -> Option<String> {
        let state = lock(&self.state);
        state
            .lid_of(phone)
            .or_else(|| state.server.contact_lids.get(phone).cloned())
    }

    /// Group `id` (the user part of its JID).
    pub fn group(&self, id: &str) -> Option<Group> {
        lock(&self.state).server.groups.get(id).cloned()
    }

    /// Contact `contact` sends its `status` receipt for message
    /// `message_id`, which a device of `account` sent it: queued for every
    /// linked device of `account` and delivered to those that are connected.
    pub fn send_receipt(
        &self,
        account: &str,
        contact: &str,
        message_id: &str,
        status: ReceiptStatus,
    ) -> Result<(), ControlError> {
        validate_phone(account)?;
        validate_phone(contact)?;
        let sent = lock(&self.outbox).iter().any(|m| {
            m.id == message_id
                && m.from_phone == account
                && m.to.split(['@', ':']).next() == Some(contact)
        });
        if !sent {
            return Err(ControlError::NotFound(format!(
                "{account} sent no message {message_id:?} to {contact}"
            )));
        }
        self.queue_receipt(account, contact, message_id, status)
    }

    /// Queues `contact`'s receipt for every linked device of `account`.
    pub(crate) fn queue_receipt(
        &self,
        account: &str,
        contact: &str,
        message_id: &str,
        status: ReceiptStatus,
    ) -> Result<(), ControlError> {
        let receipt = QueuedMessage::receipt(contact, message_id, status, now_secs());
        self.queue_for_devices(account, receipt)
    }

    /// Queues `entry` for every linked device of `phone` (once: an entry
    /// with its id already queued is left alone) and delivers it to those
    /// that are connected.
    fn queue_for_devices(&self, phone: &str, entry: QueuedMessage) -> Result<(), ControlError> {
        let devices = {
            let mut state = lock(&self.state);
            let devices = state.devices_of(phone);
            for key in &devices {
                if let Some(record) = state.devices.get_mut(key) {
                    if record.queue.iter().any(|m| m.id == entry.id) {
                        continue;
                    }
                    record.queue.push_back(entry.clone());
                }
                state
                    .save_device(key)
                    .map_err(|e| ControlError::Failed(e.to_string()))?;
            }
            devices
        };
        let conns = lock(&self.conns);
        for key in devices {
            if let Some(handle) = conns.live.get(&key) {
                handle.send(ConnCmd::Flush);
            }
        }
        Ok(())
    }

    pub fn outbox(&self, from_phone: Option<&str>) -> Vec<OutboxEntry> {
        lock(&self.outbox)
            .iter()
            .filter(|e| from_phone.is_none_or(|p| e.from_phone == p))
            .cloned()
            .collect()
    }

    /// The phone removes all its linked devices.
    pub fn unlink(&self, phone: &str) -> Result<usize, ControlError> {
        let keys = {
            let mut state = lock(&self.state);
            let keys = state.devices_of(phone);
            for key in &keys {
                if let Some(record) = state.devices.get_mut(key) {
                    record.removed = true;
                    record.queue.clear();
                }
                state
                    .save_device(key)
                    .map_err(|e| ControlError::Failed(e.to_string()))?;
            }
            keys
        };
        if keys.is_empty() {
            return Err(ControlError::NotFound(format!(
                "{phone} has no linked device"
            )));
        }
        let conns = lock(&self.conns);
        for key in &keys {
            if let Some(handle) = conns.live.get(key) {
                handle.send(ConnCmd::StreamError(device_removed()));
            }
        }
        Ok(keys.len())
    }

    /// Applies a fault to the live connections of `phone`'s devices.
    pub fn fault(&self, phone: &str, fault: Fault) -> Result<usize, ControlError> {
        let conns = lock(&self.conns);
        let handles: Vec<_> = conns
            .live
            .iter()
            .filter(|(k, _)| k.phone == phone)
            .map(|(_, h)| h.clone())
            .collect();
        if handles.is_empty() {
            return Err(ControlError::NotFound(format!(
                "{phone} has no connected device"
            )));
        }
        for handle in &handles {
            handle.send(match fault {
                Fault::Drop => ConnCmd::Drop,
                Fault::Stall => ConnCmd::Stall,
                Fault::Replace => ConnCmd::StreamError(
                    NodeBuilder::new("stream:error")
                        .children([NodeBuilder::new("conflict")
                            .attr("type", "replaced")
                            .build()])
                        .build(),
                ),
            });
        }
        Ok(handles.len())
    }

    pub fn refuse_for(&self, seconds: u64) {
        *lock(&self.refuse_until) = Some(Instant::now() + Duration::from_secs(seconds));
    }

    /// Drops the next connection of a device of `phone` as soon as it has
    /// been sent queued stanzas, before the client can acknowledge them (as
    /// when a client reconnects right after login). Library-only fault; the
    /// phone need not be paired yet.
    pub fn drop_after_next_delivery(&self, phone: &str) {
        lock(&self.drop_after_delivery).insert(phone.to_owned());
    }

    /// How many connections opened with an `ED` edge-routing pre-intro.
    pub fn edge_routed_connections(&self) -> u64 {
        self.edge_routed.load(Ordering::Relaxed)
    }

    pub(crate) fn record_edge_routed(&self) {
        self.edge_routed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn take_drop_after_delivery(&self, phone: &str) -> bool {
        lock(&self.drop_after_delivery).remove(phone)
    }

    pub fn devices(&self) -> Vec<DeviceInfo> {
        let state = lock(&self.state);
        let conns = lock(&self.conns);
        state
            .devices
            .values()
            .map(|d| DeviceInfo {
                phone: d.phone.clone(),
                device: d.device_id,
                jid: d.jid(),
                lid: state
                    .lid_of(&d.phone)
                    .filter(|_| self.config.assign_lid)
                    .map(|l| format!("{l}:{}@lid", d.device_id)),
                connected: conns.live.contains_key(&d.key()),
                removed: d.removed,
                pending_messages: d.queue.len(),
            })
            .collect()
    }

    pub(crate) fn new_account_key() -> AccountKey {
        AccountKey::generate()
    }

    pub(crate) fn record_delivery(&self, delivery: Delivery) {
        lock(&self.deliveries).push(delivery);
    }

    /// Every inbound message stanza sent to a device, with its `<enc>` types
    /// (`pkmsg`, `msg`, `skmsg`), in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Close the TCP connection without a WebSocket close.
    Drop,
    /// Stop reading from and writing to the connection.
    Stall,
    /// `<stream:error><conflict type="replaced"/>`.
    Replace,
}

pub(crate) fn device_removed() -> Node {
    NodeBuilder::new("stream:error")
        .attr("code", "401")
        .children([NodeBuilder::new("conflict")
            .attr("type", "device_removed")
            .build()])
        .build()
}

pub(crate) fn validate_phone(phone: &str) -> Result<(), ControlError> {
    if (7..=15).contains(&phone.len())
        && phone.bytes().all(|b| b.is_ascii_digit())
        && !phone.starts_with('0')
    {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "invalid phone number {phone:?}: 7-15 digits, no leading 0"
        )))
    }
}

async fn recv_reply(
    rx: oneshot::Receiver<Result<Paired, ControlError>>,
) -> Result<Paired, ControlError> {
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ControlError::Failed(
            "the client disconnected before pairing finished".into(),
        )),
        Err(_) => Err(ControlError::Failed(
            "the client did not answer pair-success within 30 s".into(),
        )),
    }
}

pub(crate) type Reply = oneshot::Sender<Result<Paired, ControlError>>;

pub(crate) fn channel() -> (
    mpsc::UnboundedSender<ConnCmd>,
    mpsc::UnboundedReceiver<ConnCmd>,
) {
    mpsc::unbounded_channel()
}
