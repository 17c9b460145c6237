//! What a download of a received attachment needs (CDN path, media key,
//! hashes), kept sealed under the session incarnation's prefix so that a
//! deleted, moved or re-created session never reaches media received
//! before (the prefix goes with the outbound queue, see
//! [`Store::send_purge`]), and dropped after `media.retention_days` by
//! [`Store::media_refs_expire`].
//!
//! | tree         | key                          | value                            |
//! |--------------|------------------------------|----------------------------------|
//! | `media_refs` | session prefix ‖ message id  | sealed version byte ‖ JSON [`MediaRef`] |
//!
//! Refs are written by the session's inbound commit before WhatsApp gets
//! its acknowledgement, in the same group commit as the message's webhook
//! outbox items (see `session::actor::SessionInbound`).

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, sled_gate};
use crate::hex::{hex, unhex};

pub(crate) const MEDIA_REFS_TREE: &str = "media_refs";

/// The first byte of every stored ref.
const VERSION: u8 = 1;
const OWNER: &str = "<media>";
const WHAT: &str = "media reference";
/// Rows per chunk of an expiry sweep (the store gate is let go between).
const SWEEP_CHUNK: usize = 512;

/// A received attachment's download reference. Holds the media key: a
/// secret, never logged (hand-written `Debug`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaRef {
    pub message_id: String,
    /// The chat and the author as WhatsApp addressed them (a re-upload
    /// request names them).
    pub chat: String,
    pub sender: String,
    pub from_me: bool,
    /// `image`, `video`, `audio`, `document` or `sticker`.
    pub kind: String,
    #[serde(default)]
    pub voice: bool,
    pub direct_path: String,
    #[serde(default)]
    pub url: String,
    #[serde(with = "hex_bytes")]
    pub media_key: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub file_sha256: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub file_enc_sha256: Vec<u8>,
    pub file_length: u64,
    pub mimetype: String,
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub caption: Option<String>,
    /// When whatsd received it (Unix ms): the retention counts from here.
    pub received_ms: i64,
    /// The sender's phone answered a re-upload request that it cannot
    /// upload the file again: once WhatsApp's copy is gone, it is gone.
    #[serde(default)]
    pub reupload_refused: bool,
}

impl std::fmt::Debug for MediaRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRef")
            .field("message_id", &self.message_id)
            .field("kind", &self.kind)
            .field("file_length", &self.file_length)
            .field("mimetype", &self.mimetype)
            .field("received_ms", &self.received_ms)
            .field("media_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        crate::hex::unhex(&text).ok_or_else(|| serde::de::Error::custom("not hex"))
    }
}

impl MediaRef {
    /// The stored form: version byte, then JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        // A struct of strings, numbers and bools always serializes.
        out.extend(serde_json::to_vec(self).unwrap_or_default());
        out
    }

    pub fn decode(plain: &[u8]) -> Result<Self, StoreError> {
        match plain.split_first() {
            Some((&VERSION, json)) => {
                serde_json::from_slice(json).map_err(|e| StoreError::Corrupt {
                    session: OWNER.into(),
                    what: WHAT,
                    reason: e.to_string(),
                })
            }
            found => Err(StoreError::UnsupportedValueVersion {
                session: OWNER.into(),
                what: WHAT,
                found: found.map_or(0, |(v, _)| *v),
                supported: VERSION,
            }),
        }
    }

    /// Whether the retention has run out at `now_ms`.
    pub fn expired(&self, retention_ms: i64, now_ms: i64) -> bool {
        self.received_ms.saturating_add(retention_ms) <= now_ms
    }
}

/// Prefix bytes a Graph media id carries (of 32).
const GRAPH_ID_PREFIX: usize = 16;

/// The store prefix of a session incarnation (the outbound queue's, see
/// `session::outbound::prefix`, which the refs share).
fn incarnation_prefix(blinder: &super::ids::Blinder, incarnation: &str) -> [u8; 32] {
    blinder.blind(b"outbound", incarnation.as_bytes())
}

/// The media id of a received attachment in the `cloud_api` format and the
/// Graph API: the first bytes of the incarnation's prefix and the message
/// id, hex. Opaque to the caller; resolves only among the caller's own
/// sessions, and only in the incarnation that received the media (a
/// session id deleted and created again, by anyone, does not match).
pub fn graph_media_id(
    blinder: &super::ids::Blinder,
    incarnation: &str,
    message_id: &str,
) -> String {
    let prefix = incarnation_prefix(blinder, incarnation);
    hex(&[&prefix[..GRAPH_ID_PREFIX], message_id.as_bytes()].concat())
}

/// The (prefix part, message id) a Graph media id names; `None` when it
/// is not one.
pub fn parse_graph_media_id(media_id: &str) -> Option<(Vec<u8>, String)> {
    if media_id.len() > 2 * (GRAPH_ID_PREFIX + 128) {
        return None;
    }
    let bytes = unhex(media_id)?;
    if bytes.len() <= GRAPH_ID_PREFIX {
        return None;
    }
    let (prefix, id) = bytes.split_at(GRAPH_ID_PREFIX);
    let id = String::from_utf8(id.to_vec()).ok()?;
    Some((prefix.to_vec(), id))
}

/// Whether a Graph media id's prefix part is `incarnation`'s.
pub fn graph_media_id_of(
    blinder: &super::ids::Blinder,
    incarnation: &str,
    prefix_part: &[u8],
) -> bool {
    incarnation_prefix(blinder, incarnation)[..GRAPH_ID_PREFIX] == *prefix_part
}

/// The key of a message's ref under a session incarnation's prefix.
pub fn key(prefix: &[u8], message_id: &str) -> Vec<u8> {
    [prefix, message_id.as_bytes()].concat()
}

impl Store {
    /// Writes refs (key, ref); a ref already there is replaced (a
    /// redelivered message carries the same one). Not flushed: the caller
    /// makes it durable with the commit it belongs to.
    pub fn media_refs_put(&self, refs: &[(Vec<u8>, MediaRef)]) -> Result<(), StoreError> {
        if refs.is_empty() {
            return Ok(());
        }
        let tree = self.tree(MEDIA_REFS_TREE)?;
        let mut batch = sled::Batch::default();
        let mut single = None;
        for (key, r) in refs {
            let sealed = self
                .sealer()
                .seal(MEDIA_REFS_TREE.as_bytes(), key, &r.encode())?;
            if refs.len() == 1 {
                single = Some((key, sealed));
            } else {
                batch.insert(key.as_slice(), sealed);
            }
        }
        let _gate = sled_gate();
        // One row as a plain insert: a sled 0.34 batch takes its exclusive lock.
        match single {
            Some((key, sealed)) => {
                tree.insert(key.as_slice(), sealed)?;
            }
            None => tree.apply_batch(batch)?,
        }
        Ok(())
    }

    /// The ref stored under `key`.
    pub fn media_ref(&self, key: &[u8]) -> Result<Option<MediaRef>, StoreError> {
        self.get_sealed(MEDIA_REFS_TREE, key, OWNER, WHAT)?
            .map(|opened| MediaRef::decode(&opened))
            .transpose()
    }

    /// Replaces a ref if it is still there (a re-upload gave it a new
    /// path); false if it is gone (expired, or its session deleted).
    pub fn media_ref_update(&self, key: &[u8], r: &MediaRef) -> Result<bool, StoreError> {
        let tree = self.tree(MEDIA_REFS_TREE)?;
        let sealed = self
            .sealer()
            .seal(MEDIA_REFS_TREE.as_bytes(), key, &r.encode())?;
        let _gate = sled_gate();
        if !tree.contains_key(key)? {
            return Ok(false);
        }
        tree.insert(key, sealed)?;
        Ok(true)
    }

    /// Deletes every ref received `retention_ms` or longer before `now_ms`
    /// (and any that cannot be read); returns how many. Blocking, in
    /// chunks: the store gate is let go between chunks.
    pub fn media_refs_expire(&self, retention_ms: i64, now_ms: i64) -> Result<usize, StoreError> {
        let tree = self.tree(MEDIA_REFS_TREE)?;
        let mut after: Option<Vec<u8>> = None;
        let mut removed = 0;
        loop {
            let chunk: Vec<(sled::IVec, sled::IVec)> = {
                let _gate = sled_gate();
                let range = match &after {
                    Some(a) => tree.range::<&[u8], _>((
                        std::ops::Bound::Excluded(a.as_slice()),
                        std::ops::Bound::Unbounded,
                    )),
                    None => tree.iter(),
                };
                range.take(SWEEP_CHUNK).collect::<Result<_, _>>()?
            };
            let Some((last, _)) = chunk.last() else {
                return Ok(removed);
            };
            after = Some(last.to_vec());
            let mut batch = sled::Batch::default();
            let mut doomed = 0;
            for (key, sealed) in &chunk {
                let keep = self
                    .open_sealed(MEDIA_REFS_TREE, key, sealed, OWNER, WHAT)
                    .and_then(|plain| MediaRef::decode(&plain))
                    .is_ok_and(|r| !r.expired(retention_ms, now_ms));
                if !keep {
                    batch.remove(key);
                    doomed += 1;
                }
            }
            if doomed > 0 {
                let _gate = sled_gate();
                tree.apply_batch(batch)?;
                removed += doomed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(id: &str, received_ms: i64) -> MediaRef {
        MediaRef {
            message_id: id.into(),
            chat: "15550001111@s.whatsapp.net".into(),
            sender: "15550001111@s.whatsapp.net".into(),
            from_me: false,
            kind: "document".into(),
            voice: false,
            direct_path: "/v/t62.7119-24/abc".into(),
            url: "https://mmg.whatsapp.net/v/t62.7119-24/abc".into(),
            media_key: vec![7; 32],
            file_sha256: vec![8; 32],
            file_enc_sha256: vec![9; 32],
            file_length: 5_000_000,
            mimetype: "application/pdf".into(),
            file_name: Some("invoice \"1\".pdf".into()),
            caption: Some("the invoice".into()),
            received_ms,
            reupload_refused: false,
        }
    }

    #[test]
    fn codec_round_trips_and_refuses_other_versions() {
        let r = sample("3EB0A", 1_000);
        let bytes = r.encode();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(MediaRef::decode(&bytes).unwrap(), r);
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(matches!(
            MediaRef::decode(&other),
            Err(StoreError::UnsupportedValueVersion { found: 2, .. })
        ));
        assert!(MediaRef::decode(&[]).is_err());
        assert!(MediaRef::decode(&[VERSION, b'{']).is_err());
        // A ref written before re-upload refusals were kept reads as not refused.
        let mut json: serde_json::Value = serde_json::from_slice(&bytes[1..]).unwrap();
        assert_eq!(json["reupload_refused"], false);
        json.as_object_mut().unwrap().remove("reupload_refused");
        let mut older = vec![VERSION];
        older.extend(serde_json::to_vec(&json).unwrap());
        assert_eq!(MediaRef::decode(&older).unwrap(), r);
        // The media key never reaches a log.
        let debug = format!("{r:?}");
        assert!(!debug.contains("0707"), "{debug}");
        assert!(debug.contains("redacted"));
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::store::MasterKey::from_bytes([3; 32])).unwrap();
        (dir, store)
    }

    #[test]
    fn refs_are_sealed_found_by_prefix_purged_and_expired() {
        let (_dir, store) = store();
        let old_prefix = [1u8; 32];
        let new_prefix = [2u8; 32];
        let day = 86_400_000;
        store
            .media_refs_put(&[
                (key(&old_prefix, "M1"), sample("M1", 0)),
                (key(&new_prefix, "M1"), sample("M1", 10 * day)),
                (key(&new_prefix, "M2"), sample("M2", 40 * day)),
            ])
            .unwrap();
        assert_eq!(
            store.media_ref(&key(&new_prefix, "M1")).unwrap(),
            Some(sample("M1", 10 * day))
        );
        assert_eq!(store.media_ref(&key(&new_prefix, "M3")).unwrap(), None);
        // Sealed: neither the key material nor the file name is on disk in
        // the clear.
        let raw = store
            .tree(MEDIA_REFS_TREE)
            .unwrap()
            .get(key(&new_prefix, "M1"))
            .unwrap()
            .unwrap();
        assert!(!raw.windows(7).any(|w| w == b"invoice"));
        // A session's purge takes its refs (the old incarnation's only).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(store.send_purge(&old_prefix)).unwrap();
        assert_eq!(store.media_ref(&key(&old_prefix, "M1")).unwrap(), None);
        assert!(store.media_ref(&key(&new_prefix, "M1")).unwrap().is_some());
        // 30 days' retention at day 45: M1 (day 10) goes, M2 (day 40) stays.
        let removed = store.media_refs_expire(30 * day, 45 * day).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(store.media_ref(&key(&new_prefix, "M1")).unwrap(), None);
        assert!(store.media_ref(&key(&new_prefix, "M2")).unwrap().is_some());
        // An update reaches only a ref that is still there.
        let mut moved = sample("M2", 40 * day);
        moved.direct_path = "/v/new".into();
        assert!(
            store
                .media_ref_update(&key(&new_prefix, "M2"), &moved)
                .unwrap()
        );
        assert!(
            !store
                .media_ref_update(&key(&new_prefix, "M1"), &moved)
                .unwrap()
        );
        assert_eq!(
            store
                .media_ref(&key(&new_prefix, "M2"))
                .unwrap()
                .unwrap()
                .direct_path,
            "/v/new"
        );
    }
}
