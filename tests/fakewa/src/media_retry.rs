//! A contact's phone answering a media re-upload request (WhatsApp's media
//! retry; wire format in wacore-0.7.0/src/media_retry.rs).
//!
//! A client whose download answered 410 sends
//! `<receipt type="server-error" id=MSG><encrypt><enc_p/><enc_iv/></encrypt>
//! <rmr jid=CHAT from_me [participant]/></receipt>`: a `ServerErrorReceipt`
//! sealed with AES-256-GCM under HKDF-SHA256(media key, "WhatsApp Media
//! Retry Notification"), the message id as AAD. The sender's phone, which
//! still has the file, uploads it again and answers with
//! `<notification type="mediaretry" id=MSG>` carrying a sealed
//! `MediaRetryNotification` (the new direct path), or `<error code>` when
//! the request reached no phone that has the message (2) or did not
//! decrypt (3).
//!
//! Here the phones' files are the encrypted blobs fakewa's contacts sent
//! (`POST /control/media`): kept after the CDN copy expires, at most
//! `Config::media_store_limit` bytes in all (the oldest go first). A
//! re-upload stores the same blob under a new direct path with a fresh
//! expiry; the old path stays expired.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::body::Bytes;
use buffa::Message as _;
use serde::{Deserialize, Serialize};
use wacore_binary::builder::NodeBuilder;
use wacore_binary::node::Node;
use waproto::whatsapp as wa;

use crate::conn::{attr, child_bytes};
use crate::media::MediaStore;
use crate::server::{lock, now_secs};

const HKDF_INFO: &[u8] = b"WhatsApp Media Retry Notification";
const IV_LEN: usize = 12;

/// The `<error code>` of a request no phone can answer.
const ERROR_NOT_FOUND: &str = "2";
/// The `<error code>` of a request that does not decrypt.
const ERROR_DECRYPTION: &str = "3";

/// How the contacts' phones answer a re-upload request
/// (`POST /control/media/reupload`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReuploadAnswer {
    /// Upload the file again and send its new direct path.
    #[default]
    Success,
    /// Say the file is gone (a sealed `NOT_FOUND` result).
    NotFound,
}

/// What a phone still holds of a media message its contact sent.
pub struct PhoneCopy {
    pub message_id: String,
    /// The contact that sent it.
    pub from_phone: String,
    /// The phone whose devices received it.
    pub to_phone: String,
    pub media_key: Vec<u8>,
    /// `image`, `video`, … (`MediaType::mms_type`): the CDN path's kind.
    pub mms_type: &'static str,
    /// The encrypted blob, as first uploaded.
    pub blob: Bytes,
}

/// How the phones answer, and how they answered so far
/// (`GET /control/media/reupload`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReuploadStats {
    pub answer: ReuploadAnswer,
    /// Re-upload requests received (`server-error` receipts with `<rmr>`),
    /// each counted as its answer is sent, under one of the counts below.
    pub requests: u64,
    /// Uploaded again; the notification named the new path.
    pub reuploaded: u64,
    /// The phone said the file is gone (answer `not_found`).
    pub refused: u64,
    /// `<error code="2">`: no phone has that message.
    pub unknown: u64,
    /// `<error code="3">`: the request did not open with the message's media key.
    pub undecryptable: u64,
    /// The phone could not upload (the CDN refused it): a sealed `GENERAL_ERROR`.
    pub failed: u64,
}

#[derive(Default)]
struct Copies {
    list: VecDeque<PhoneCopy>,
    bytes: usize,
}

/// The phones' copies of what contacts sent, how they answer, and counts.
pub struct Reuploads {
    copies: Mutex<Copies>,
    limit: usize,
    stats: Mutex<ReuploadStats>,
}

impl Reuploads {
    /// Keeps at most `limit` bytes of copies.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            copies: Mutex::default(),
            limit,
            stats: Mutex::default(),
        }
    }

    /// The sender's phone keeps what it sent (the oldest copies go first
    /// beyond the limit).
    pub fn keep(&self, copy: PhoneCopy) {
        let mut copies = lock(&self.copies);
        copies.bytes += copy.blob.len();
        copies.list.push_back(copy);
        while copies.bytes > self.limit {
            match copies.list.pop_front() {
                Some(old) => copies.bytes -= old.blob.len(),
                None => break,
            }
        }
    }

    pub fn set_answer(&self, answer: ReuploadAnswer) {
        lock(&self.stats).answer = answer;
    }

    pub fn stats(&self) -> ReuploadStats {
        lock(&self.stats).clone()
    }

    /// The media key and blob of `message_id`, if a contact sent it to
    /// `to_phone` and its phone still has it.
    fn find(
        &self,
        message_id: &str,
        to_phone: &str,
    ) -> Option<(String, Vec<u8>, &'static str, Bytes)> {
        lock(&self.copies)
            .list
            .iter()
            .find(|c| c.message_id == message_id && c.to_phone == to_phone)
            .map(|c| {
                (
                    c.from_phone.clone(),
                    c.media_key.clone(),
                    c.mms_type,
                    c.blob.clone(),
                )
            })
    }

    /// Answers the re-upload request `receipt` that a device of `phone`
    /// sent: the `mediaretry` notification to send back, or `None` when the
    /// receipt is not a media re-upload request (no `<rmr>`). `lid_of`
    /// gives a contact's LID (a request may name the chat by it).
    pub(crate) fn answer(
        &self,
        media: &MediaStore,
        phone: &str,
        receipt: &Node,
        lid_of: impl Fn(&str) -> Option<String>,
    ) -> Option<Node> {
        let rmr = receipt.get_optional_child("rmr")?;
        let message_id = attr(receipt, "id").unwrap_or_default();
        let chat_user = attr(rmr, "jid")
            .unwrap_or_default()
            .split(['@', ':'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let from_me = attr(rmr, "from_me").as_deref() == Some("true");
        let own_jid = format!("{phone}@s.whatsapp.net");
        let notification = |child: Node| {
            NodeBuilder::new("notification")
                .attr("from", own_jid.clone())
                .attr("type", "mediaretry")
                .attr("id", message_id.clone())
                .attr("t", now_secs().to_string())
                .children([rmr.clone(), child])
                .build()
        };
        let error = |code: &str| NodeBuilder::new("error").attr("code", code).build();

        // The phone the request reaches is the chat's (fakewa's contacts
        // only send direct messages): it must be the one that sent it.
        let copy = self.find(&message_id, phone).filter(|(from, ..)| {
            !from_me && (chat_user == *from || lid_of(from).as_deref() == Some(&chat_user))
        });
        let Some((_, media_key, mms_type, blob)) = copy else {
            self.count(|s| &mut s.unknown);
            return Some(notification(error(ERROR_NOT_FOUND)));
        };
        let sealed = receipt.get_optional_child("encrypt");
        let opened = sealed
            .and_then(|e| Some((child_bytes(e, "enc_p")?, child_bytes(e, "enc_iv")?)))
            .and_then(|(ct, iv)| open_request(&media_key, &message_id, &iv, &ct).ok());
        if opened.as_deref() != Some(message_id.as_str()) {
            self.count(|s| &mut s.undecryptable);
            return Some(notification(error(ERROR_DECRYPTION)));
        }
        use wa::media_retry_notification::ResultType;
        let answer = lock(&self.stats).answer;
        let (result, direct_path) = match answer {
            ReuploadAnswer::NotFound => (ResultType::NOT_FOUND, None),
            ReuploadAnswer::Success => match media.store(mms_type, blob) {
                Ok(path) => (ResultType::SUCCESS, Some(path)),
                Err(e) => {
                    tracing::warn!(%message_id, "re-upload refused by the CDN: {e:?}");
                    (ResultType::GENERAL_ERROR, None)
                }
            },
        };
        let body = wa::MediaRetryNotification {
            stanza_id: Some(message_id.clone()),
            direct_path,
            result: Some(result),
            ..Default::default()
        };
        let (ct, iv) = seal_notification(&media_key, &message_id, &body.encode_to_vec());
        self.count(|s| match result {
            ResultType::SUCCESS => &mut s.reuploaded,
            ResultType::NOT_FOUND => &mut s.refused,
            _ => &mut s.failed,
        });
        Some(notification(
            NodeBuilder::new("encrypt")
                .children([
                    NodeBuilder::new("enc_p").bytes(ct).build(),
                    NodeBuilder::new("enc_iv").bytes(iv.to_vec()).build(),
                ])
                .build(),
        ))
    }

    /// One more request, answered as `which` counts it.
    fn count(&self, which: impl FnOnce(&mut ReuploadStats) -> &mut u64) {
        let mut stats = lock(&self.stats);
        stats.requests += 1;
        *which(&mut stats) += 1;
    }
}

/// HKDF-SHA256(media key, no salt, the retry info), 32 bytes.
fn retry_key(media_key: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    wacore::crypto::hkdf_sha256_into(media_key, None, HKDF_INFO, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    key
}

/// The stanza id a re-upload request carries (its sealed
/// `ServerErrorReceipt`), if it opens with `media_key`.
pub fn open_request(
    media_key: &[u8],
    message_id: &str,
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<String, String> {
    let iv: &[u8; IV_LEN] = iv.try_into().map_err(|_| "enc_iv is not 12 bytes")?;
    let mut plain = Vec::new();
    wacore_libsignal::crypto::aes_256_gcm_decrypt(
        &retry_key(media_key),
        iv,
        message_id.as_bytes(),
        ciphertext,
        &mut plain,
    )
    .map_err(|e| format!("AES-GCM: {e}"))?;
    let receipt = wa::ServerErrorReceipt::decode_from_slice(&plain)
        .map_err(|e| format!("ServerErrorReceipt: {e}"))?;
    receipt
        .stanza_id
        .ok_or_else(|| "ServerErrorReceipt without a stanza id".to_owned())
}

/// `plaintext` (a `MediaRetryNotification`) sealed for `message_id` under
/// a fresh random IV: (ciphertext with tag, IV).
pub fn seal_notification(
    media_key: &[u8],
    message_id: &str,
    plaintext: &[u8],
) -> (Vec<u8>, [u8; IV_LEN]) {
    let iv: [u8; IV_LEN] = rand::random();
    let mut out = Vec::with_capacity(plaintext.len() + 16);
    wacore_libsignal::crypto::aes_256_gcm_encrypt(
        &retry_key(media_key),
        &iv,
        message_id.as_bytes(),
        plaintext,
        &mut out,
    )
    .expect("AES-256-GCM seals any plaintext");
    (out, iv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Lookup;
    use std::time::Duration;
    use wacore::media_retry::{
        MediaRetryResult, build_media_retry_receipt, decrypt_media_retry_notification,
        encrypt_media_retry_receipt, parse_media_retry_notification,
    };
    use wacore_binary::Jid;

    const KEY: [u8; 32] = [7; 32];
    const ADA: &str = "15557790001";
    const BOB: &str = "15551250001";

    #[test]
    fn a_request_sealed_by_the_library_opens_here() {
        let (ct, iv) = encrypt_media_retry_receipt(&KEY, "MSG-1").unwrap();
        assert_eq!(open_request(&KEY, "MSG-1", &iv, &ct).unwrap(), "MSG-1");
        assert!(
            open_request(&[8; 32], "MSG-1", &iv, &ct).is_err(),
            "another media key"
        );
        assert!(
            open_request(&KEY, "MSG-2", &iv, &ct).is_err(),
            "the message id is the AAD"
        );
        assert!(open_request(&KEY, "MSG-1", &iv[..11], &ct).is_err());
    }

    #[test]
    fn a_notification_sealed_here_opens_in_the_library() {
        let body = wa::MediaRetryNotification {
            stanza_id: Some("MSG-1".into()),
            direct_path: Some("/v/new.enc".into()),
            result: Some(wa::media_retry_notification::ResultType::SUCCESS),
            ..Default::default()
        };
        let plain = body.encode_to_vec();
        let (ct, iv) = seal_notification(&KEY, "MSG-1", &plain);
        let (ct2, iv2) = seal_notification(&KEY, "MSG-1", &plain);
        assert_ne!(iv, iv2, "a fresh IV each time");
        assert_ne!(ct, ct2);
        assert_eq!(
            decrypt_media_retry_notification(&KEY, "MSG-1", &iv, &ct).unwrap(),
            plain
        );
        assert!(decrypt_media_retry_notification(&KEY, "MSG-2", &iv, &ct).is_err());
    }

    /// A CDN holding Ada's image sent to Bob, expired, and Bob's phone
    /// holding the copy.
    fn setup() -> (MediaStore, Reuploads, String, Bytes) {
        let media = MediaStore::new(Duration::from_secs(3600), 1 << 20, 1 << 20).unwrap();
        let blob = Bytes::from(vec![5u8; 1000]);
        let path = media.store("image", blob.clone()).unwrap();
        media.expire_all();
        let reuploads = Reuploads::new(1 << 20);
        reuploads.keep(PhoneCopy {
            message_id: "MSG-1".into(),
            from_phone: ADA.into(),
            to_phone: BOB.into(),
            media_key: KEY.to_vec(),
            mms_type: "image",
            blob: blob.clone(),
        });
        (media, reuploads, path, blob)
    }

    /// The library's request for `id` in the chat with `chat`, sealed with `key`.
    fn request(id: &str, chat: &str, key: &[u8]) -> Node {
        let (ct, iv) = encrypt_media_retry_receipt(key, id).unwrap();
        build_media_retry_receipt(&Jid::pn(BOB), id, &Jid::pn(chat), false, None, &ct, &iv)
    }

    fn parse(node: &Node) -> MediaRetryResult {
        assert_eq!(node.tag.as_ref(), "notification");
        assert_eq!(attr(node, "type").as_deref(), Some("mediaretry"));
        parse_media_retry_notification(&node.as_node_ref(), &KEY).unwrap()
    }

    #[test]
    fn the_phone_uploads_again_under_a_new_path() {
        let (media, reuploads, old_path, blob) = setup();
        let answer = reuploads
            .answer(&media, BOB, &request("MSG-1", ADA, &KEY), |_| None)
            .expect("an answer");
        let MediaRetryResult::Success { direct_path } = parse(&answer) else {
            panic!("not a success: {:?}", parse(&answer));
        };
        assert_ne!(direct_path, old_path);
        assert_eq!(media.get(&direct_path), Lookup::Live(blob));
        assert_eq!(
            media.get(&old_path),
            Lookup::Expired,
            "the old path stays expired"
        );
        let stats = reuploads.stats();
        assert_eq!((stats.requests, stats.reuploaded), (1, 1));

        // The chat may be named by the contact's LID.
        let answer = reuploads
            .answer(&media, BOB, &request("MSG-1", "99000001", &KEY), |p| {
                (p == ADA).then(|| "99000001".to_owned())
            })
            .unwrap();
        assert!(matches!(parse(&answer), MediaRetryResult::Success { .. }));
    }

    #[test]
    fn refusals_parse_as_the_library_expects() {
        let (media, reuploads, ..) = setup();
        let answer = |node: Node| parse(&reuploads.answer(&media, BOB, &node, |_| None).unwrap());
        // Unknown message, another chat, another recipient: not found (code 2).
        assert!(matches!(
            answer(request("MSG-9", ADA, &KEY)),
            MediaRetryResult::NotFound
        ));
        assert!(matches!(
            answer(request("MSG-1", "15550000000", &KEY)),
            MediaRetryResult::NotFound
        ));
        assert!(matches!(
            parse(
                &reuploads
                    .answer(&media, ADA, &request("MSG-1", ADA, &KEY), |_| None)
                    .unwrap()
            ),
            MediaRetryResult::NotFound
        ));
        // Sealed with another key: decryption error (code 3).
        assert!(matches!(
            answer(request("MSG-1", ADA, &[9; 32])),
            MediaRetryResult::DecryptionError
        ));
        // The phone no longer has it: a sealed NOT_FOUND.
        reuploads.set_answer(ReuploadAnswer::NotFound);
        let node = reuploads
            .answer(&media, BOB, &request("MSG-1", ADA, &KEY), |_| None)
            .unwrap();
        assert!(node.get_optional_child("encrypt").is_some());
        assert!(matches!(parse(&node), MediaRetryResult::NotFound));
        let stats = reuploads.stats();
        assert_eq!(
            stats,
            ReuploadStats {
                answer: ReuploadAnswer::NotFound,
                requests: 5,
                reuploaded: 0,
                refused: 1,
                unknown: 3,
                undecryptable: 1,
                failed: 0,
            }
        );
        // A receipt without <rmr> is no re-upload request.
        let plain = NodeBuilder::new("receipt")
            .attr("type", "server-error")
            .attr("id", "MSG-1")
            .build();
        assert!(reuploads.answer(&media, BOB, &plain, |_| None).is_none());
        assert_eq!(reuploads.stats().requests, 5);
    }

    #[test]
    fn copies_are_bounded_oldest_first() {
        let reuploads = Reuploads::new(2500);
        for i in 0..3 {
            reuploads.keep(PhoneCopy {
                message_id: format!("M{i}"),
                from_phone: ADA.into(),
                to_phone: BOB.into(),
                media_key: KEY.to_vec(),
                mms_type: "image",
                blob: Bytes::from(vec![0u8; 1000]),
            });
        }
        assert!(reuploads.find("M0", BOB).is_none(), "the oldest went");
        assert!(reuploads.find("M1", BOB).is_some());
        assert!(reuploads.find("M2", BOB).is_some());
    }
}
