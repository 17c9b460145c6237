//! Incoming messages in whatsd's own terms, and the library's inbound
//! durability hook that hands them to an [`InboundSink`] **before**
//! WhatsApp gets its acknowledgement.
//!
//! With the hook registered the library defers the ack until
//! [`InboundSink::commit`] returns `Ok`; on `Err` or a crash the server
//! redelivers (`whatsapp_rust::InboundDurabilityHook`). The sink therefore
//! sees a message at least once and must be idempotent on [`InboundMessage::key`].

use crate::hex::hex;
use std::sync::Arc;

use whatsapp_rust::types::durability_hook::InboundMessage as LibInbound;
use whatsapp_rust::wacore::proto_helpers::MessageExt;
use whatsapp_rust::wacore::types::message::MessageInfo;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{Client, Jid};

use crate::session::Identity;

/// One incoming message (or a notice that one could not be decrypted).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboundMessage {
    /// WhatsApp's message id; unique within (chat, sender).
    pub id: String,
    /// The chat: the contact's JID for a DM (also when we sent it from the
    /// phone), the group's JID, or `status@broadcast`.
    pub chat: String,
    /// The author's JID as WhatsApp addressed it (PN or LID).
    pub sender: String,
    /// The author's phone number (digits), when known: from the PN JID, the
    /// alternate address, or the client's LID↔PN mapping.
    pub sender_phone: String,
    /// The author's LID JID, when known.
    pub sender_lid: String,
    pub push_name: String,
    /// Unix seconds, as WhatsApp stamped it.
    pub timestamp: i64,
    /// Sent by the account itself (from the phone or another linked device).
    pub from_me: bool,
    pub is_group: bool,
    /// Posted to `status@broadcast` (a status update, not a chat message).
    pub is_status: bool,
    /// The message could not be decrypted; only the envelope is known.
    pub undecryptable: bool,
    pub content: Content,
}

impl InboundMessage {
    /// What identifies a message across redeliveries: (chat, sender, id).
    pub fn key(&self) -> (&str, &str, &str) {
        (&self.chat, &self.sender, &self.id)
    }
}

/// The message body, reduced to what a webhook consumer needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Content {
    /// `text`, `image`, `video`, `audio`, `document`, `sticker`,
    /// `location`, `contact`, `reaction`, `protocol` (key shares, revokes
    /// and other housekeeping between devices), or `other`.
    pub kind: &'static str,
    pub text: Option<String>,
    pub caption: Option<String>,
    pub media: Option<Media>,
    /// The id of the message this one replies to (or reacts to).
    pub quoted_id: Option<String>,
    pub location: Option<(f64, f64)>,
}

/// Metadata of an attachment (the media itself stays on WhatsApp's CDN).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Media {
    pub mimetype: Option<String>,
    pub file_length: Option<u64>,
    /// Hex SHA-256 of the plaintext file.
    pub sha256: Option<String>,
    pub file_name: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub seconds: Option<u32>,
    /// A push-to-talk voice note (an audio message recorded in the chat).
    pub voice: bool,
    /// What a download needs; `None` when the message lacks a part of it.
    pub download: Option<MediaDownload>,
}

/// Everything a download of an attachment needs: where it is on the CDN
/// and the key that opens it. A secret (the media key decrypts the file):
/// kept sealed in the store (`crate::store::media_refs`), never in a
/// webhook or a log, hence the hand-written `Debug`.
#[derive(Clone, Default, PartialEq)]
pub struct MediaDownload {
    /// `image`, `video`, `audio`, `document` or `sticker` (the key
    /// derivation depends on it).
    pub kind: &'static str,
    pub direct_path: String,
    pub url: String,
    pub media_key: Vec<u8>,
    pub file_sha256: Vec<u8>,
    pub file_enc_sha256: Vec<u8>,
    /// The plaintext length.
    pub file_length: u64,
    pub mimetype: String,
    pub file_name: Option<String>,
    pub caption: Option<String>,
}

impl std::fmt::Debug for MediaDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaDownload")
            .field("kind", &self.kind)
            .field("file_length", &self.file_length)
            .field("mimetype", &self.mimetype)
            .field("media_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The fields every downloadable attachment message has.
struct Attachment<'a> {
    direct_path: &'a Option<String>,
    url: &'a Option<String>,
    media_key: &'a Option<Vec<u8>>,
    file_sha256: &'a Option<Vec<u8>>,
    file_enc_sha256: &'a Option<Vec<u8>>,
    file_length: Option<u64>,
    mimetype: &'a Option<String>,
}

macro_rules! attachment {
    ($m:expr) => {
        Attachment {
            direct_path: &$m.direct_path,
            url: &$m.url,
            media_key: &$m.media_key,
            file_sha256: &$m.file_sha256,
            file_enc_sha256: &$m.file_enc_sha256,
            file_length: $m.file_length,
            mimetype: &$m.mimetype,
        }
    };
}

impl Attachment<'_> {
    /// The download reference, when the message carries all of it: a
    /// direct path, a 32-byte media key and both hashes.
    fn download(
        &self,
        kind: &'static str,
        file_name: Option<String>,
        caption: Option<String>,
    ) -> Option<MediaDownload> {
        let media_key = self.media_key.clone().filter(|k| k.len() == 32)?;
        let file_sha256 = self.file_sha256.clone().filter(|h| h.len() == 32)?;
        let file_enc_sha256 = self.file_enc_sha256.clone().filter(|h| h.len() == 32)?;
        let direct_path = self.direct_path.clone().filter(|p| p.starts_with('/'))?;
        Some(MediaDownload {
            kind,
            direct_path,
            url: self.url.clone().unwrap_or_default(),
            media_key,
            file_sha256,
            file_enc_sha256,
            file_length: self.file_length.unwrap_or_default(),
            mimetype: self
                .mimetype
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
            file_name,
            caption,
        })
    }
}

/// Where decrypted messages go before they are acknowledged.
#[async_trait::async_trait]
pub trait InboundSink: Send + Sync {
    /// Durably records the whole batch (all or nothing), in order. `Ok`
    /// lets the library acknowledge them; `Err` has WhatsApp redeliver.
    async fn commit(&self, me: Identity, batch: Vec<InboundMessage>) -> anyhow::Result<()>;
}

/// The library-side hook: converts and forwards to the sink.
pub(super) struct Hook(pub Arc<dyn InboundSink>);

#[async_trait::async_trait]
impl whatsapp_rust::InboundDurabilityHook for Hook {
    async fn on_messages(&self, client: Arc<Client>, batch: &[LibInbound]) -> anyhow::Result<()> {
        let me = super::connection::IdentityProbe::new(client.clone()).identity();
        let mut converted = Vec::with_capacity(batch.len());
        for item in batch {
            let mut message = from_info(&item.info);
            message.content = content(&item.message);
            resolve_sender(&client, &mut message, &item.info).await;
            converted.push(message);
        }
        self.0.commit(me, converted).await
    }
}

/// The envelope of a message, without its body.
pub(super) fn from_info(info: &MessageInfo) -> InboundMessage {
    let source = &info.source;
    let chat = source.chat.to_non_ad_string();
    let sender = source.sender.to_non_ad_string();
    let mut message = InboundMessage {
        id: info.id.to_string(),
        is_status: chat == "status@broadcast",
        chat,
        sender,
        push_name: info.push_name.clone(),
        timestamp: info.timestamp.timestamp(),
        from_me: source.is_from_me,
        is_group: source.is_group,
        ..Default::default()
    };
    (message.sender_lid, message.sender_phone) =
        lid_and_phone(std::iter::once(&source.sender).chain(source.sender_alt.iter()));
    message
}

/// The first LID (as a JID) and the first phone number (digits) among one
/// user's JIDs; empty when there is none.
pub(super) fn lid_and_phone<'a>(jids: impl IntoIterator<Item = &'a Jid>) -> (String, String) {
    let (mut lid, mut phone) = (String::new(), String::new());
    for jid in jids {
        if jid.is_lid() {
            if lid.is_empty() {
                lid = jid.to_non_ad_string();
            }
        } else if jid.is_pn() && phone.is_empty() {
            phone = jid.user_base().to_string();
        }
    }
    (lid, phone)
}

/// The phone number (digits) behind `lid`, when the client has learned the
/// mapping.
pub(super) async fn phone_of_lid(client: &Client, lid: &Jid) -> Option<String> {
    match client.get_lid_pn_entry(lid).await {
        Ok(entry) => entry.map(|e| e.phone_number.to_string()),
        Err(e) => {
            tracing::debug!("LID lookup failed: {e}");
            None
        }
    }
}

/// Fills in the sender's phone from the client's LID↔PN mapping when the
/// envelope carried only a LID.
async fn resolve_sender(client: &Client, message: &mut InboundMessage, info: &MessageInfo) {
    if !message.sender_phone.is_empty() || !info.source.sender.is_lid() {
        return;
    }
    if let Some(phone) = phone_of_lid(client, &info.source.sender).await {
        message.sender_phone = phone;
    }
}

/// The metadata every attachment kind has.
fn media(mimetype: &Option<String>, file_length: Option<u64>, sha256: &Option<Vec<u8>>) -> Media {
    Media {
        mimetype: mimetype.clone(),
        file_length,
        sha256: sha256.as_deref().map(hex),
        ..Default::default()
    }
}

fn quoted(context: &wa::ContextInfo) -> Option<String> {
    context.stanza_id.clone()
}

/// The body of a message, reduced to [`Content`].
pub(super) fn content(message: &wa::Message) -> Content {
    let base = message.get_base_message();
    let mut content = Content {
        kind: "other",
        text: message.text_content().map(str::to_owned),
        caption: message.get_caption().map(str::to_owned),
        ..Default::default()
    };
    if base.protocol_message.is_set() {
        // Key shares, revokes, history-sync notices: protocol, not chat.
        content.kind = "protocol";
    } else if base.conversation.is_some() {
        content.kind = "text";
    } else if let Some(m) = base.extended_text_message.as_option() {
        content.kind = "text";
        content.quoted_id = m.context_info.as_option().and_then(quoted);
    } else if let Some(m) = base.image_message.as_option() {
        content.kind = "image";
        content.quoted_id = m.context_info.as_option().and_then(quoted);
        content.media = Some(Media {
            width: m.width,
            height: m.height,
            download: attachment!(m).download("image", None, m.caption.clone()),
            ..media(&m.mimetype, m.file_length, &m.file_sha256)
        });
    } else if let Some(m) = base.video_message.as_option() {
        content.kind = "video";
        content.quoted_id = m.context_info.as_option().and_then(quoted);
        content.media = Some(Media {
            width: m.width,
            height: m.height,
            seconds: m.seconds,
            download: attachment!(m).download("video", None, m.caption.clone()),
            ..media(&m.mimetype, m.file_length, &m.file_sha256)
        });
    } else if let Some(m) = base.audio_message.as_option() {
        content.kind = "audio";
        content.quoted_id = m.context_info.as_option().and_then(quoted);
        content.media = Some(Media {
            seconds: m.seconds,
            voice: m.ptt == Some(true),
            download: attachment!(m).download("audio", None, None),
            ..media(&m.mimetype, m.file_length, &m.file_sha256)
        });
    } else if let Some(m) = base.document_message.as_option() {
        content.kind = "document";
        content.quoted_id = m.context_info.as_option().and_then(quoted);
        let file_name = m.file_name.clone().or_else(|| m.title.clone());
        content.media = Some(Media {
            download: attachment!(m).download("document", file_name.clone(), m.caption.clone()),
            file_name,
            ..media(&m.mimetype, m.file_length, &m.file_sha256)
        });
    } else if let Some(m) = base.sticker_message.as_option() {
        content.kind = "sticker";
        content.media = Some(Media {
            width: m.width,
            height: m.height,
            download: attachment!(m).download("sticker", None, None),
            ..media(&m.mimetype, m.file_length, &m.file_sha256)
        });
    } else if let Some(m) = base.location_message.as_option() {
        content.kind = "location";
        content.text = m.name.clone();
        if let (Some(lat), Some(lon)) = (m.degrees_latitude, m.degrees_longitude) {
            content.location = Some((lat, lon));
        }
    } else if base.contact_message.is_set() || base.contacts_array_message.is_set() {
        content.kind = "contact";
    } else if let Some(m) = base.reaction_message.as_option() {
        content.kind = "reaction";
        content.text = m.text.clone();
        content.quoted_id = m.key.as_option().and_then(|k| k.id.clone());
    }
    content
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_with_a_quote() {
        let message = wa::Message {
            extended_text_message: whatsapp_rust::buffa::MessageField::some(
                wa::message::ExtendedTextMessage {
                    text: Some("yes, that one".into()),
                    context_info: whatsapp_rust::buffa::MessageField::some(wa::ContextInfo {
                        stanza_id: Some("3EB0QUOTED".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            ..Default::default()
        };
        let c = content(&message);
        assert_eq!(c.kind, "text");
        assert_eq!(c.text.as_deref(), Some("yes, that one"));
        assert_eq!(c.quoted_id.as_deref(), Some("3EB0QUOTED"));
    }

    #[test]
    fn image_with_caption_and_metadata() {
        let message = wa::Message {
            image_message: whatsapp_rust::buffa::MessageField::some(wa::message::ImageMessage {
                caption: Some("the view".into()),
                mimetype: Some("image/jpeg".into()),
                file_length: Some(1234),
                file_sha256: Some(vec![0xab, 0xcd]),
                width: Some(640),
                height: Some(480),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = content(&message);
        assert_eq!(c.kind, "image");
        assert_eq!(c.caption.as_deref(), Some("the view"));
        let media = c.media.unwrap();
        assert_eq!(media.mimetype.as_deref(), Some("image/jpeg"));
        assert_eq!(media.file_length, Some(1234));
        assert_eq!(media.sha256.as_deref(), Some("abcd"));
        assert_eq!((media.width, media.height), (Some(640), Some(480)));
    }

    #[test]
    fn unknown_kinds_are_other_not_errors() {
        let c = content(&wa::Message::default());
        assert_eq!(c.kind, "other");
        assert_eq!(c.text, None);
    }
}
