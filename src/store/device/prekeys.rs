//! One-time prekeys, compact: the prekeys whose ids share `id / 64` live in
//! one sealed row (`kind::PREKEY_BUCKET ‖ bucket (u32 BE)`), holding a
//! version byte ([`VALUE_VERSION`]) and a prost `PreKeyBucket`
//! (`proto/whatsd/v1/device.proto`).
//!
//! Why: a paired device keeps the 812 prekeys it uploaded at pairing, and
//! they were about 92 % of its keyspace (93.5 KB measured on the format-2
//! fixture): each was its own row of key, nonce, tag, flag and the
//! library's 71-byte record (id, public key, private key). A bucket keeps
//! 32 bytes of private key per prekey plus a few bytes of framing, and pays
//! the seal once per 64 prekeys. The library's record is rebuilt on load
//! with the library's own encoder ([`canonical_record`]); a record that is
//! not the canonical encoding of its key pair is kept verbatim instead, so
//! a load always returns exactly the bytes that were stored.
//!
//! Every change to a bucket is a read-modify-write in one sled transaction,
//! so concurrent stores, uploads and removals of prekeys in one bucket
//! never lose each other's updates.

use std::collections::BTreeMap;

use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use wacore::libsignal::protocol::{KeyPair, PrivateKey};
use wacore::libsignal::store::record_helpers::encode_pre_key_record_to;

use super::{DeviceBackend, key, kind};
use crate::proto::v1::{PreKey, PreKeyBucket};
use crate::store::crypto::Sealer;
use crate::store::error::StoreError;
use crate::store::records::abort;

/// Prekey ids per bucket row.
pub(super) const BUCKET_IDS: u32 = 64;

/// The first byte of every compact value whatsd encodes in a device
/// keyspace; a reader refuses any other.
pub(super) const VALUE_VERSION: u8 = 1;

const WHAT: &str = "prekey bucket";

/// A bucket's key; ids are not blinded (see `stored_key`).
pub(super) fn bucket_key(id: u32) -> Vec<u8> {
    key(kind::PREKEY_BUCKET, &(id / BUCKET_IDS).to_be_bytes())
}

/// The library's encoding of the prekey record of (id, key pair of
/// `private_key`), or `None` if `private_key` is not a valid key.
fn canonical_record(id: u32, private_key: &[u8]) -> Option<Vec<u8>> {
    let private_key = PrivateKey::deserialize(private_key).ok()?;
    let public_key = private_key.public_key().ok()?;
    let mut out = Vec::with_capacity(74);
    encode_pre_key_record_to(
        id,
        &KeyPair {
            public_key,
            private_key,
        },
        &mut out,
    );
    Some(out)
}

/// The fields of a Signal `PreKeyRecordStructure` a bucket needs.
#[derive(Clone, PartialEq, Message)]
struct RecordFields {
    #[prost(uint32, optional, tag = "1")]
    id: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    private_key: Option<Vec<u8>>,
}

/// A prekey as a bucket keeps it: the private key alone when the record is
/// canonical, else the record verbatim.
pub(super) fn compact(id: u32, record: &[u8], uploaded: bool) -> PreKey {
    let private_key = RecordFields::decode(record)
        .ok()
        .filter(|fields| fields.id == Some(id))
        .and_then(|fields| fields.private_key)
        .filter(|private_key| {
            canonical_record(id, private_key).is_some_and(|canonical| canonical == record)
        });
    match private_key {
        Some(private_key) => PreKey {
            id,
            uploaded,
            private_key,
            record: Vec::new(),
        },
        None => PreKey {
            id,
            uploaded,
            private_key: Vec::new(),
            record: record.to_vec(),
        },
    }
}

/// The library's record of a stored prekey.
fn record_of(prekey: &PreKey) -> Option<Vec<u8>> {
    if prekey.private_key.is_empty() {
        Some(prekey.record.clone())
    } else {
        canonical_record(prekey.id, &prekey.private_key)
    }
}

pub(super) fn encode_bucket(bucket: &PreKeyBucket) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + bucket.encoded_len());
    out.push(VALUE_VERSION);
    bucket
        .encode(&mut out)
        .expect("a Vec grows to fit the message");
    out
}

/// Decodes a bucket's plaintext; `session` names it in the error.
pub(crate) fn decode_bucket(session: &str, plain: &[u8]) -> Result<PreKeyBucket, StoreError> {
    match plain.split_first() {
        Some((&VALUE_VERSION, body)) => {
            PreKeyBucket::decode(body).map_err(|e| StoreError::Corrupt {
                session: session.to_string(),
                what: WHAT,
                reason: e.to_string(),
            })
        }
        Some((&found, _)) => Err(StoreError::UnsupportedValueVersion {
            session: session.to_string(),
            what: WHAT,
            found,
            supported: VALUE_VERSION,
        }),
        None => Err(StoreError::Corrupt {
            session: session.to_string(),
            what: WHAT,
            reason: "empty value".into(),
        }),
    }
}

/// Puts `prekeys` into `bucket`, replacing those with the same id, in id
/// order.
fn merge(bucket: &mut PreKeyBucket, prekeys: impl IntoIterator<Item = PreKey>) {
    let mut by_id: BTreeMap<u32, PreKey> = std::mem::take(&mut bucket.prekeys)
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    for prekey in prekeys {
        by_id.insert(prekey.id, prekey);
    }
    bucket.prekeys = by_id.into_values().collect();
}

/// Groups prekeys by the bucket key they belong to.
fn by_bucket(prekeys: impl IntoIterator<Item = PreKey>) -> BTreeMap<Vec<u8>, Vec<PreKey>> {
    let mut out: BTreeMap<Vec<u8>, Vec<PreKey>> = BTreeMap::new();
    for prekey in prekeys {
        out.entry(bucket_key(prekey.id)).or_default().push(prekey);
    }
    out
}

impl DeviceBackend {
    fn bucket_tx(
        &self,
        tx: &TransactionalTree,
        bucket_key: &[u8],
    ) -> Result<Option<PreKeyBucket>, ConflictableTransactionError<StoreError>> {
        match tx.get(bucket_key)? {
            Some(sealed) => Ok(Some(abort(
                self.open(bucket_key, &sealed, WHAT)
                    .and_then(|plain| decode_bucket(&self.session, &plain)),
            )?)),
            None => Ok(None),
        }
    }

    /// Writes a bucket, or removes it once it holds no prekey.
    fn write_bucket_tx(
        &self,
        tx: &TransactionalTree,
        bucket_key: &[u8],
        bucket: &PreKeyBucket,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        if bucket.prekeys.is_empty() {
            tx.remove(bucket_key)?;
        } else {
            let sealed = abort(self.seal(bucket_key, &encode_bucket(bucket)))?;
            tx.insert(bucket_key, sealed)?;
        }
        Ok(())
    }

    /// Stores prekeys (upserts), all or nothing.
    pub(super) fn store_prekeys(
        &self,
        prekeys: &[(u32, &[u8])],
        uploaded: bool,
    ) -> Result<(), StoreError> {
        let groups = by_bucket(
            prekeys
                .iter()
                .map(|(id, record)| compact(*id, record, uploaded)),
        );
        self.transact(kind::PREKEY_BUCKET, |tx| {
            for (bucket_key, prekeys) in &groups {
                let mut bucket = self.bucket_tx(tx, bucket_key)?.unwrap_or_default();
                merge(&mut bucket, prekeys.iter().cloned());
                self.write_bucket_tx(tx, bucket_key, &bucket)?;
            }
            Ok(())
        })
    }

    /// The library's record of prekey `id`.
    pub(super) fn load_prekey_record(&self, id: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(plain) = self.get(&bucket_key(id), WHAT)? else {
            return Ok(None);
        };
        let bucket = decode_bucket(&self.session, &plain)?;
        match bucket.prekeys.iter().find(|p| p.id == id) {
            Some(prekey) => record_of(prekey)
                .map(Some)
                .ok_or_else(|| self.corrupt(WHAT, format!("prekey {id}: invalid private key"))),
            None => Ok(None),
        }
    }

    /// Marks stored prekeys uploaded; never writes back one that is gone.
    pub(super) fn mark_uploaded(&self, ids: &[u32]) -> Result<(), StoreError> {
        let mut groups: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
        for &id in ids {
            groups.entry(bucket_key(id)).or_default().push(id);
        }
        self.transact(kind::PREKEY_BUCKET, |tx| {
            for (bucket_key, ids) in &groups {
                let Some(mut bucket) = self.bucket_tx(tx, bucket_key)? else {
                    continue;
                };
                let mut changed = false;
                for prekey in &mut bucket.prekeys {
                    if !prekey.uploaded && ids.contains(&prekey.id) {
                        prekey.uploaded = true;
                        changed = true;
                    }
                }
                if changed {
                    self.write_bucket_tx(tx, bucket_key, &bucket)?;
                }
            }
            Ok(())
        })
    }

    pub(super) fn remove_prekey_row(&self, id: u32) -> Result<(), StoreError> {
        let bucket_key = bucket_key(id);
        self.transact(kind::PREKEY_BUCKET, |tx| {
            let Some(mut bucket) = self.bucket_tx(tx, &bucket_key)? else {
                return Ok(());
            };
            let before = bucket.prekeys.len();
            bucket.prekeys.retain(|p| p.id != id);
            if bucket.prekeys.len() != before {
                self.write_bucket_tx(tx, &bucket_key, &bucket)?;
            }
            Ok(())
        })
    }

    /// The highest stored prekey id, or 0.
    pub(super) fn max_prekey_id(&self) -> Result<u32, StoreError> {
        let last = self.with_tree(|tree| {
            Ok(tree
                .scan_prefix([kind::PREKEY_BUCKET])
                .next_back()
                .transpose()?)
        })?;
        match last {
            Some((key, sealed)) => {
                let plain = self.open(&key, &sealed, WHAT)?;
                let bucket = decode_bucket(&self.session, &plain)?;
                Ok(bucket.prekeys.iter().map(|p| p.id).max().unwrap_or(0))
            }
            None => Ok(0),
        }
    }
}

/// What [`compact_keyspace`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compacted {
    /// Prekey rows converted.
    pub prekeys: u64,
    /// Prekey rows left as they were because they do not open or parse.
    pub unreadable: u64,
}

/// Converts one device keyspace's format-2 prekey rows (`kind::PREKEY ‖ id`,
/// `uploaded flag ‖ record`) into buckets, in one atomic sled batch: after
/// a crash the keyspace is either untouched or done, and running it again
/// on a done keyspace finds no old row and changes nothing.
pub(crate) fn compact_keyspace(
    tree: &sled::Tree,
    sealer: &Sealer,
    session: &str,
) -> Result<Compacted, StoreError> {
    let tree_name = tree.name();
    let old_rows = {
        let _gate = crate::store::sled_gate();
        tree.scan_prefix([kind::PREKEY])
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut report = Compacted::default();
    if old_rows.is_empty() {
        return Ok(report);
    }
    let mut batch = sled::Batch::default();
    let mut prekeys = Vec::with_capacity(old_rows.len());
    for (key, sealed) in old_rows {
        let id = key
            .get(1..)
            .and_then(|id| <[u8; 4]>::try_from(id).ok())
            .map(u32::from_be_bytes);
        let row = sealer.open(&tree_name, &key, &sealed).ok();
        match (id, row.as_deref().and_then(|row| row.split_first())) {
            (Some(id), Some((&flag, record))) => {
                prekeys.push(compact(id, record, flag == 1));
                batch.remove(key);
                report.prekeys += 1;
            }
            _ => report.unreadable += 1,
        }
    }
    for (bucket_key, prekeys) in by_bucket(prekeys) {
        let existing = {
            let _gate = crate::store::sled_gate();
            tree.get(&bucket_key)?
        };
        let mut bucket = match existing {
            Some(sealed) => {
                let plain = sealer.open(&tree_name, &bucket_key, &sealed).map_err(|_| {
                    StoreError::Undecryptable {
                        session: session.to_string(),
                        what: WHAT,
                    }
                })?;
                decode_bucket(session, &plain)?
            }
            None => PreKeyBucket::default(),
        };
        merge(&mut bucket, prekeys);
        batch.insert(
            bucket_key.as_slice(),
            sealer.seal(&tree_name, &bucket_key, &encode_bucket(&bucket))?,
        );
    }
    let _gate = crate::store::sled_gate();
    tree.apply_batch(batch)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use wacore::store::traits::SignalStore;

    use super::*;
    use crate::store::{MasterKey, Store};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &MasterKey::from_bytes([7; 32])).unwrap();
        (dir, store)
    }

    fn record(id: u32, seed: u8) -> Vec<u8> {
        let private = PrivateKey::deserialize(&[seed; 32]).unwrap();
        canonical_record(id, private.serialize()).unwrap()
    }

    #[tokio::test]
    async fn canonical_records_keep_only_the_private_key_and_load_byte_for_byte() {
        let (_dir, store) = store();
        let device = store.device_backend("s1").unwrap();
        let keys: Vec<(u32, bytes::Bytes)> = (1..=812)
            .map(|id| (id, record(id, id as u8).into()))
            .collect();
        device.store_prekeys_batch(&keys, false).await.unwrap();
        for (id, record) in &keys {
            assert_eq!(
                device.load_prekey(*id).await.unwrap().as_ref(),
                Some(record)
            );
        }
        assert_eq!(device.get_max_prekey_id().await.unwrap(), 812);
        // 812 prekeys in 13 rows (ids 1..=812, 64 to a bucket).
        let usage = store.device_keyspace_usage("s1").unwrap();
        let buckets = usage.by_kind[&kind::PREKEY_BUCKET];
        assert_eq!(buckets.rows, 13);
        let plain = device.get(&bucket_key(1), WHAT).unwrap().unwrap();
        let bucket = decode_bucket("s1", &plain).unwrap();
        assert!(
            bucket
                .prekeys
                .iter()
                .all(|p| p.record.is_empty() && p.private_key.len() == 32)
        );
    }

    #[tokio::test]
    async fn other_records_are_kept_verbatim() {
        let (_dir, store) = store();
        let device = store.device_backend("s1").unwrap();
        let mut wrong_id = record(6, 9);
        wrong_id[1] = 7;
        for (id, record) in [
            (5, b"not a prekey record".to_vec()),
            (6, wrong_id),
            (7, Vec::new()),
        ] {
            device.store_prekey(id, &record, true).await.unwrap();
            assert_eq!(
                device.load_prekey(id).await.unwrap().unwrap().as_ref(),
                &record[..]
            );
        }
    }

    #[tokio::test]
    async fn uploads_and_removals_touch_only_their_prekeys() {
        let (_dir, store) = store();
        let device = store.device_backend("s1").unwrap();
        let keys: Vec<(u32, bytes::Bytes)> =
            (60..70).map(|id| (id, record(id, 3).into())).collect();
        device.store_prekeys_batch(&keys, false).await.unwrap();
        device.remove_prekey(61).await.unwrap();
        device.remove_prekey(1000).await.unwrap();
        // UPDATE-only: 61 (removed) and 99 (never stored) stay absent.
        device
            .mark_prekeys_uploaded(&[60, 61, 64, 99])
            .await
            .unwrap();
        assert_eq!(device.load_prekey(61).await.unwrap(), None);
        assert_eq!(device.load_prekey(99).await.unwrap(), None);
        let uploaded: Vec<(u32, bool)> = [bucket_key(60), bucket_key(64)]
            .iter()
            .flat_map(|k| {
                decode_bucket("s1", &device.get(k, WHAT).unwrap().unwrap())
                    .unwrap()
                    .prekeys
            })
            .map(|p| (p.id, p.uploaded))
            .collect();
        assert_eq!(
            uploaded,
            [
                (60, true),
                (62, false),
                (63, false),
                (64, true),
                (65, false),
                (66, false),
                (67, false),
                (68, false),
                (69, false)
            ]
        );
        for id in 60..70 {
            device.remove_prekey(id).await.unwrap();
        }
        assert_eq!(
            store.device_keyspace_usage("s1").unwrap().rows(),
            0,
            "empty buckets are removed"
        );
        assert_eq!(device.get_max_prekey_id().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_bucket_of_an_unknown_version_is_refused() {
        let (_dir, store) = store();
        let device = store.device_backend("s1").unwrap();
        device.store_prekey(3, &record(3, 3), false).await.unwrap();
        let mut plain = device.get(&bucket_key(3), WHAT).unwrap().unwrap();
        plain[0] = VALUE_VERSION + 1;
        device.put(&bucket_key(3), &plain).unwrap();
        let err = device.load_prekey_record(3).unwrap_err();
        assert!(
            matches!(err, StoreError::UnsupportedValueVersion { found, .. } if found == VALUE_VERSION + 1),
            "{err:?}"
        );
        assert!(err.to_string().contains("newer whatsd"), "{err}");
        assert!(device.load_prekey(3).await.is_err());
    }
}
