//! Outgoing media and chat actions through the library: WhatsApp's media
//! encryption (done once, when a send is queued: the stored blob is the
//! upload body, see `crate::store::media_blobs`), the upload and the media
//! message at send time, quoted replies, reactions, read receipts and chat
//! states ("typing…", "recording…").

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};

use whatsapp_rust::Jid;
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::wacore::download::{DownloadUtils, MediaType};
use whatsapp_rust::wacore::upload::{EncryptedMediaInfo, MediaEncryptor, UploadSource};
use whatsapp_rust::waproto::whatsapp as wa;

use super::{Connection, WaError, parse_recipient};
use crate::session::outbound::{BlobMeta, MediaKind, QueuedMedia};

fn media_type(kind: MediaKind) -> MediaType {
    match kind {
        MediaKind::Image => MediaType::Image,
        MediaKind::Video => MediaType::Video,
        MediaKind::Audio => MediaType::Audio,
        MediaKind::Document => MediaType::Document,
        MediaKind::Sticker => MediaType::Sticker,
    }
}

/// Encrypts plaintext, chunk by chunk, with WhatsApp's media scheme under
/// a fresh random media key for `kind`.
pub struct BlobEncryptor {
    inner: MediaEncryptor,
    kind: MediaKind,
}

impl BlobEncryptor {
    pub fn new(kind: MediaKind) -> Result<Self, WaError> {
        let sidecar = matches!(kind, MediaKind::Audio | MediaKind::Video);
        let inner = MediaEncryptor::new_with_sidecar(media_type(kind), sidecar)
            .map_err(|e| WaError::Media(e.to_string()))?;
        Ok(Self { inner, kind })
    }

    /// Appends the ciphertext of `plain` (whole blocks; the rest waits) to `out`.
    pub fn update(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        self.inner.update(plain, out);
    }

    /// Appends the last block and the MAC to `out`; the blob's record,
    /// named `name`.
    pub fn finish(self, out: &mut Vec<u8>, name: String) -> Result<BlobMeta, WaError> {
        let info = self
            .inner
            .finalize(out)
            .map_err(|e| WaError::Media(e.to_string()))?;
        Ok(BlobMeta {
            name,
            encrypted_as: self.kind,
            media_key: info.media_key,
            file_sha256: info.file_sha256,
            file_enc_sha256: info.file_enc_sha256,
            file_length: info.file_length,
            sidecar: info.streaming_sidecar,
        })
    }
}

/// Reads a stored blob back as plaintext, in chunks on `tx`, checking its
/// MAC at the end (the last item is then an error). Blocking: run it with
/// `spawn_blocking`.
pub fn decrypt_blob(
    path: PathBuf,
    meta: &BlobMeta,
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, String>>,
) {
    struct Chunks(tokio::sync::mpsc::Sender<Result<Vec<u8>, String>>);
    impl Write for Chunks {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .blocking_send(Ok(buf.to_vec()))
                .map_err(|_| std::io::Error::other("the reader went away"))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let result = std::fs::File::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|file| {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, Chunks(tx.clone()));
            DownloadUtils::decrypt_stream_to_writer(
                std::io::BufReader::new(file),
                &meta.media_key,
                media_type(meta.encrypted_as),
                &mut out,
            )
            .map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
}

/// A stored blob as the library's upload reads it.
struct FileSource {
    path: PathBuf,
    len: u64,
}

impl UploadSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn reader_from(&self, offset: u64) -> std::io::Result<Box<dyn Read + Send>> {
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(std::io::BufReader::with_capacity(
            256 * 1024,
            file,
        )))
    }
}

/// A chat state shown to a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatState {
    Typing,
    Recording,
    Paused,
}

/// What a queued send becomes on the wire (owned: it is sent from a task
/// of its own, through [`Queries`](super::Queries)).
pub struct WireSend {
    pub to: String,
    pub id: String,
    pub text: String,
    /// With the path of its stored blob.
    pub media: Option<(QueuedMedia, PathBuf)>,
    /// Quoted message: (id, author JID).
    pub quote: Option<(String, String)>,
    /// Reaction: (target key, emoji).
    pub reaction: Option<(wa::MessageKey, String)>,
}

/// Where a send in flight is: a cancel may still stop it while it uploads,
/// never once the message itself is on its way.
#[derive(Debug, Default)]
pub struct SendGate(AtomicU8);

const UPLOADING: u8 = 0;
const SENDING: u8 = 1;
const CANCELLED: u8 = 2;

impl SendGate {
    /// Stops the send if it has not started sending the message; true if
    /// it will not be sent.
    pub fn cancel(&self) -> bool {
        match self
            .0
            .compare_exchange(UPLOADING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == CANCELLED,
        }
    }

    /// Passes the gate to send the message; false if it was cancelled.
    fn open(&self) -> bool {
        self.0
            .compare_exchange(UPLOADING, SENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The key of message `id` in `chat`, for a reaction.
pub fn message_key(
    chat: &str,
    id: &str,
    from_me: bool,
    participant: Option<&str>,
) -> wa::MessageKey {
    wa::MessageKey {
        remote_jid: Some(chat.to_owned()),
        from_me: Some(from_me),
        id: Some(id.to_owned()),
        participant: participant.map(str::to_owned),
    }
}

impl super::Queries {
    /// Sends a queued message as message `id` (reused on a retry): a
    /// text, a media message (uploaded first, from its stored blob) or a
    /// reaction; with a quote when given.
    pub async fn send_wire(&self, send: WireSend, gate: &SendGate) -> Result<String, WaError> {
        use whatsapp_rust::wacore::proto_helpers::{MessageBuilderExt, MessageExt};
        let jid = parse_recipient(&send.to)?;
        if send.text.is_empty() && send.media.is_none() && send.reaction.is_none() {
            // A media send whose blob cannot be named: never an empty text.
            return Err(WaError::Media(
                "nothing to send (the stored media is missing)".into(),
            ));
        }
        let mut message = if let Some((key, emoji)) = send.reaction {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default();
            whatsapp_rust::wacore::proto_helpers::build_reaction_message(key, &emoji, now)
        } else if let Some((media, path)) = send.media {
            self.upload_message(&media, path).await?
        } else {
            wa::Message::text(&send.text)
        };
        if let Some((id, participant)) = send.quote {
            let context = wa::ContextInfo {
                stanza_id: Some(id),
                participant: Some(participant),
                ..Default::default()
            };
            message.set_context_info(context);
        }
        if !gate.open() {
            return Err(WaError::Send("cancelled".into()));
        }
        let options = whatsapp_rust::SendOptions::default().with_message_id(&send.id);
        let sent = self
            .0
            .send_message_with_options(jid, message, options)
            .await
            .map_err(|e| WaError::Send(e.to_string()))?;
        Ok(sent.message_id)
    }

    /// Uploads a stored blob and builds its message.
    async fn upload_message(
        &self,
        media: &QueuedMedia,
        path: PathBuf,
    ) -> Result<wa::Message, WaError> {
        let blob = &media.blob;
        if !blob.encrypted_as.same_keys(media.kind) {
            return Err(WaError::Media(format!(
                "a blob encrypted for {} cannot go as {}",
                blob.encrypted_as.as_str(),
                media.kind.as_str()
            )));
        }
        let len = tokio::fs::metadata(&path)
            .await
            .map_err(|e| WaError::Media(format!("the stored media is gone: {e}")))?
            .len();
        let info = EncryptedMediaInfo {
            media_key: blob.media_key,
            file_sha256: blob.file_sha256,
            file_enc_sha256: blob.file_enc_sha256,
            file_length: blob.file_length,
            streaming_sidecar: blob.sidecar.clone(),
        };
        let up = self
            .0
            .upload_stream(FileSource { path, len }, info, media_type(media.kind))
            .await
            .map_err(|e| WaError::Media(format!("upload: {e}")))?;
        let mimetype = Some(media.mimetype.clone());
        let caption = media.caption.clone();
        let mut message = wa::Message::default();
        match media.kind {
            MediaKind::Image => {
                message.image_message = MessageField::some(wa::message::ImageMessage {
                    url: Some(up.url),
                    mimetype,
                    caption,
                    file_sha256: Some(up.file_sha256.to_vec()),
                    file_length: Some(up.file_length),
                    media_key: Some(up.media_key.to_vec()),
                    file_enc_sha256: Some(up.file_enc_sha256.to_vec()),
                    direct_path: Some(up.direct_path),
                    media_key_timestamp: Some(up.media_key_timestamp),
                    ..Default::default()
                });
            }
            MediaKind::Video => {
                message.video_message = MessageField::some(wa::message::VideoMessage {
                    url: Some(up.url),
                    mimetype,
                    caption,
                    file_sha256: Some(up.file_sha256.to_vec()),
                    file_length: Some(up.file_length),
                    media_key: Some(up.media_key.to_vec()),
                    file_enc_sha256: Some(up.file_enc_sha256.to_vec()),
                    direct_path: Some(up.direct_path),
                    media_key_timestamp: Some(up.media_key_timestamp),
                    streaming_sidecar: up.streaming_sidecar,
                    ..Default::default()
                });
            }
            MediaKind::Audio => {
                message.audio_message = MessageField::some(wa::message::AudioMessage {
                    url: Some(up.url),
                    mimetype,
                    file_sha256: Some(up.file_sha256.to_vec()),
                    file_length: Some(up.file_length),
                    ptt: Some(media.ptt),
                    media_key: Some(up.media_key.to_vec()),
                    file_enc_sha256: Some(up.file_enc_sha256.to_vec()),
                    direct_path: Some(up.direct_path),
                    media_key_timestamp: Some(up.media_key_timestamp),
                    streaming_sidecar: up.streaming_sidecar,
                    ..Default::default()
                });
            }
            MediaKind::Document => {
                message.document_message = MessageField::some(wa::message::DocumentMessage {
                    url: Some(up.url),
                    mimetype,
                    title: media.file_name.clone(),
                    file_sha256: Some(up.file_sha256.to_vec()),
                    file_length: Some(up.file_length),
                    media_key: Some(up.media_key.to_vec()),
                    file_name: media.file_name.clone(),
                    file_enc_sha256: Some(up.file_enc_sha256.to_vec()),
                    direct_path: Some(up.direct_path),
                    media_key_timestamp: Some(up.media_key_timestamp),
                    caption,
                    ..Default::default()
                });
            }
            MediaKind::Sticker => {
                message.sticker_message = MessageField::some(wa::message::StickerMessage {
                    url: Some(up.url),
                    file_sha256: Some(up.file_sha256.to_vec()),
                    file_enc_sha256: Some(up.file_enc_sha256.to_vec()),
                    media_key: Some(up.media_key.to_vec()),
                    mimetype,
                    direct_path: Some(up.direct_path),
                    file_length: Some(up.file_length),
                    media_key_timestamp: Some(up.media_key_timestamp),
                    ..Default::default()
                });
            }
        }
        Ok(message)
    }
}

impl Connection {
    /// Marks messages `ids` of `chat` read (`sender`: their author in a group).
    pub async fn mark_read(
        &self,
        chat: &str,
        sender: Option<&str>,
        ids: &[String],
    ) -> Result<(), WaError> {
        let chat = parse_recipient(chat)?;
        let sender = sender
            .map(|s| {
                s.parse::<Jid>()
                    .map_err(|_| WaError::BadRecipient(s.to_owned()))
            })
            .transpose()?;
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.client()
            .mark_as_read(&chat, sender.as_ref(), &ids)
            .await
            .map_err(|e| WaError::Send(e.to_string()))
    }

    /// Shows a chat state to `to`.
    pub async fn send_chat_state(&self, to: &str, state: ChatState) -> Result<(), WaError> {
        let jid = parse_recipient(to)?;
        let chatstate = self.client().chatstate();
        match state {
            ChatState::Typing => chatstate.send_composing(&jid).await,
            ChatState::Recording => chatstate.send_recording(&jid).await,
            ChatState::Paused => chatstate.send_paused(&jid).await,
        }
        .map_err(|e| WaError::Send(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_decrypt_to_what_was_encrypted() {
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut enc = BlobEncryptor::new(MediaKind::Audio).unwrap();
        let mut out = Vec::new();
        for chunk in plain.chunks(7_777) {
            enc.update(chunk, &mut out);
        }
        let meta = enc.finish(&mut out, "x".into()).unwrap();
        assert_eq!(meta.file_length, plain.len() as u64);
        assert!(meta.sidecar.is_some(), "audio carries a streaming sidecar");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, &out).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let reader = std::thread::spawn({
            let meta = meta.clone();
            let path = path.clone();
            move || decrypt_blob(path, &meta, tx)
        });
        let mut back = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            back.extend_from_slice(&chunk.unwrap());
        }
        reader.join().unwrap();
        assert_eq!(back, plain);
        // A flipped byte fails the MAC.
        out[10] ^= 1;
        std::fs::write(&path, &out).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        std::thread::spawn(move || decrypt_blob(path, &meta, tx));
        let mut failed = false;
        while let Some(chunk) = rx.blocking_recv() {
            failed |= chunk.is_err();
        }
        assert!(failed);
    }
}
