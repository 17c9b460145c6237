//! The webhook outbox, its dead letters and the webhook endpoints, as sled
//! trees. This layer stores opaque (sealed) values in ordered queues; what
//! the values mean is `crate::webhook`'s business.
//!
//! | tree                | key                          | value                          |
//! |---------------------|------------------------------|--------------------------------|
//! | `webhook_outbox`    | queue prefix ‖ seq (u64 BE)  | sealed pending delivery        |
//! | `webhook_dead`      | seq (u64 BE)                 | sealed dead letter             |
//! | `webhook_endpoints` | endpoint key                 | sealed endpoint (with secret)  |
//!
//! Outbox items and dead letters are stored as a version byte
//! ([`QUEUE_VALUE_VERSION`]) followed by the caller's bytes (store format
//! 3; format 2 stored the caller's bytes alone and is converted on the
//! first start, see [`version_queue_values`]). A reader refuses any other
//! version byte. Endpoints are stored as given.
//!
//! A queue prefix is chosen by the caller and must be prefix-free (no
//! queue's prefix may start with another's); `crate::webhook` length-prefixes
//! its parts. Sequence numbers come from sled's `generate_id`, which stays
//! monotonic across restarts and crashes, so a queue's keys sort in the order
//! its items were appended.
//!
//! Appends are not flushed here: the caller groups them and calls
//! [`Store::flush`] (group commit) before it reports them durable.
//! Updates and removals do not wait for a flush: losing one in a crash
//! repeats a delivery, which the at-least-once contract allows. The
//! delivery workers ask for them to be committed soon
//! ([`Store::flush_soon`]: by a group commit within 100 ms), so a crash
//! repeats only what was delivered in that last moment.

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::records::tx_error;
use super::{Store, StoreError, sled_gate};

pub(crate) const OUTBOX_TREE: &str = "webhook_outbox";
pub(crate) const DEAD_TREE: &str = "webhook_dead";
pub(crate) const ENDPOINTS_TREE: &str = "webhook_endpoints";

/// How an undecryptable webhook value is named in the error.
const WEBHOOKS: &str = "<webhooks>";
const WEBHOOK_VALUE: &str = "webhook outbox value";

/// The first byte of every stored outbox item and dead letter.
pub(crate) const QUEUE_VALUE_VERSION: u8 = 1;

/// One stored item: its key and its opened value.
#[derive(Clone, Debug)]
pub struct QueueItem {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl QueueItem {
    /// The sequence number at the end of an outbox key.
    pub fn seq(&self) -> u64 {
        seq_of(&self.key)
    }
}

fn seq_of(key: &[u8]) -> u64 {
    let n = key.len();
    if n < 8 {
        return 0;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[n - 8..]);
    u64::from_be_bytes(b)
}

impl Store {
    pub(super) fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.inner.dbs.open_tree(name)
    }

    /// Opens a sealed value of `tree`; `owner` and `what` name it in the
    /// error.
    pub(super) fn open_sealed(
        &self,
        tree: &str,
        key: &[u8],
        sealed: &[u8],
        owner: &str,
        what: &'static str,
    ) -> Result<Vec<u8>, StoreError> {
        self.sealer()
            .open(tree.as_bytes(), key, sealed)
            .map_err(|_| StoreError::Undecryptable {
                session: owner.to_string(),
                what,
            })
    }

    /// The value under `key` in `tree`, read through the gate and opened
    /// (see [`Store::open_sealed`]).
    pub(super) fn get_sealed(
        &self,
        tree: &str,
        key: &[u8],
        owner: &str,
        what: &'static str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let handle = self.tree(tree)?;
        let sealed = {
            let _gate = sled_gate();
            handle.get(key)?
        };
        sealed
            .map(|s| self.open_sealed(tree, key, &s, owner, what))
            .transpose()
    }

    /// Opens scanned `(key, sealed)` pairs of `tree` (see [`Store::open_sealed`]).
    pub(super) fn open_scanned(
        &self,
        tree: &str,
        raw: Vec<(sled::IVec, sled::IVec)>,
        owner: &str,
        what: &'static str,
    ) -> Result<Vec<QueueItem>, StoreError> {
        raw.into_iter()
            .map(|(key, sealed)| {
                Ok(QueueItem {
                    value: self.open_sealed(tree, &key, &sealed, owner, what)?,
                    key: key.to_vec(),
                })
            })
            .collect()
    }

    /// Opens an outbox item or dead letter and strips its version byte.
    fn open_value(&self, tree: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut plain = self.open_sealed(tree, key, sealed, WEBHOOKS, WEBHOOK_VALUE)?;
        match plain.first() {
            Some(&QUEUE_VALUE_VERSION) => {
                plain.remove(0);
                Ok(plain)
            }
            found => Err(StoreError::UnsupportedValueVersion {
                session: WEBHOOKS.to_string(),
                what: WEBHOOK_VALUE,
                found: found.copied().unwrap_or(0),
                supported: QUEUE_VALUE_VERSION,
            }),
        }
    }

    /// Seals an outbox item or dead letter behind its version byte.
    fn seal_value(&self, tree: &str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut versioned = Vec::with_capacity(1 + plain.len());
        versioned.push(QUEUE_VALUE_VERSION);
        versioned.extend_from_slice(plain);
        self.sealer().seal(tree.as_bytes(), key, &versioned)
    }

    /// Opens scanned `(key, sealed)` outbox items or dead letters.
    fn open_items(
        &self,
        tree: &str,
        raw: Vec<(sled::IVec, sled::IVec)>,
    ) -> Result<Vec<QueueItem>, StoreError> {
        raw.into_iter()
            .map(|(key, sealed)| {
                Ok(QueueItem {
                    value: self.open_value(tree, &key, &sealed)?,
                    key: key.to_vec(),
                })
            })
            .collect()
    }

    /// Appends items to their queues, all or nothing, and returns their keys
    /// in the same order. Not yet durable: call [`Store::flush`].
    pub fn outbox_append(&self, items: &[(&[u8], &[u8])]) -> Result<Vec<Vec<u8>>, StoreError> {
        let tree = self.tree(OUTBOX_TREE)?;
        let mut rows = Vec::with_capacity(items.len());
        // Ids are taken and the rows written under one lock, so a reader
        // never sees a later item of a queue before an earlier one.
        let _gate = sled_gate();
        for (prefix, plain) in items {
            let seq = self.inner.dbs.state.generate_id()?;
            let mut key = Vec::with_capacity(prefix.len() + 8);
            key.extend_from_slice(prefix);
            key.extend_from_slice(&seq.to_be_bytes());
            let sealed = self.seal_value(OUTBOX_TREE, &key, plain)?;
            rows.push((key, sealed));
        }
        // One item as a plain insert: a sled 0.34 batch, even of one row,
        // writes the log buffer out and takes sled's exclusive lock.
        if let [(key, sealed)] = rows.as_slice() {
            tree.insert(key.as_slice(), sealed.as_slice())?;
        } else if !rows.is_empty() {
            let mut batch = sled::Batch::default();
            for (key, sealed) in &rows {
                batch.insert(key.as_slice(), sealed.as_slice());
            }
            tree.apply_batch(batch)?;
        }
        Ok(rows.into_iter().map(|(key, _)| key).collect())
    }

    /// The oldest item of the queue with this prefix.
    pub fn outbox_head(&self, prefix: &[u8]) -> Result<Option<QueueItem>, StoreError> {
        let tree = self.tree(OUTBOX_TREE)?;
        let first = {
            let _gate = sled_gate();
            tree.scan_prefix(prefix).next().transpose()?
        };
        match first {
            Some((key, sealed)) => Ok(Some(QueueItem {
                value: self.open_value(OUTBOX_TREE, &key, &sealed)?,
                key: key.to_vec(),
            })),
            None => Ok(None),
        }
    }

    /// Replaces the value of an outbox item (attempts, next try). Returns
    /// false if the item is gone (purged meanwhile).
    pub fn outbox_update(&self, key: &[u8], plain: &[u8]) -> Result<bool, StoreError> {
        let tree = self.tree(OUTBOX_TREE)?;
        let sealed = self.seal_value(OUTBOX_TREE, key, plain)?;
        let _gate = sled_gate();
        if !tree.contains_key(key)? {
            return Ok(false);
        }
        tree.insert(key, sealed)?;
        Ok(true)
    }

    pub fn outbox_remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        let tree = self.tree(OUTBOX_TREE)?;
        let _gate = sled_gate();
        Ok(tree.remove(key)?.is_some())
    }

    /// Every outbox item, oldest first within each queue (daemon start).
    pub fn outbox_all(&self) -> Result<Vec<QueueItem>, StoreError> {
        let tree = self.tree(OUTBOX_TREE)?;
        let raw: Vec<(sled::IVec, sled::IVec)> = {
            let _gate = sled_gate();
            tree.iter().collect::<Result<_, _>>()?
        };
        self.open_items(OUTBOX_TREE, raw)
    }

    /// Keys of the outbox items under `prefix` (a queue or a whole endpoint).
    pub fn outbox_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let tree = self.tree(OUTBOX_TREE)?;
        let _gate = sled_gate();
        tree.scan_prefix(prefix)
            .keys()
            .map(|k| Ok(k?.to_vec()))
            .collect()
    }

    /// Deletes every outbox item under `prefix`; returns how many.
    pub async fn outbox_purge(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let keys = self.outbox_keys(prefix)?;
        let tree = self.tree(OUTBOX_TREE)?;
        if let [key] = keys.as_slice() {
            let _gate = sled_gate();
            tree.remove(key.as_slice())?;
        } else if !keys.is_empty() {
            let mut batch = sled::Batch::default();
            for key in &keys {
                batch.remove(key.as_slice());
            }
            let _gate = sled_gate();
            tree.apply_batch(batch)?;
        }
        self.flush().await?;
        Ok(keys.len())
    }

    /// Moves an outbox item to the dead letters, with `plain` as the dead
    /// letter's value. Returns the dead letter's id.
    pub fn outbox_kill(&self, key: &[u8], plain: &[u8]) -> Result<u64, StoreError> {
        let outbox = self.tree(OUTBOX_TREE)?;
        let dead = self.tree(DEAD_TREE)?;
        let _gate = sled_gate();
        // Ids start at 1 (sequence numbers at 0), so "after 0" lists all.
        let id = seq_of(key) + 1;
        let dead_key = id.to_be_bytes();
        let sealed = self.seal_value(DEAD_TREE, &dead_key, plain)?;
        (&outbox, &dead)
            .transaction(|(outbox, dead)| {
                outbox.remove(key)?;
                dead.insert(&dead_key, sealed.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        Ok(id)
    }

    /// Dead letters with an id above `after`, oldest first, at most `limit`.
    pub fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<QueueItem>, StoreError> {
        let tree = self.tree(DEAD_TREE)?;
        let start = after.saturating_add(1).to_be_bytes();
        let raw: Vec<(sled::IVec, sled::IVec)> = {
            let _gate = sled_gate();
            tree.range(start..).take(limit).collect::<Result<_, _>>()?
        };
        self.open_items(DEAD_TREE, raw)
    }

    pub fn dead_letter(&self, id: u64) -> Result<Option<QueueItem>, StoreError> {
        let key = id.to_be_bytes();
        match self.tree(DEAD_TREE)?.get(key)? {
            Some(sealed) => Ok(Some(QueueItem {
                value: self.open_value(DEAD_TREE, &key, &sealed)?,
                key: key.to_vec(),
            })),
            None => Ok(None),
        }
    }

    /// Deletes dead letters; returns how many existed.
    pub async fn dead_remove(&self, ids: &[u64]) -> Result<usize, StoreError> {
        let tree = self.tree(DEAD_TREE)?;
        let mut removed = 0;
        {
            let _gate = sled_gate();
            for id in ids {
                if tree.remove(id.to_be_bytes())?.is_some() {
                    removed += 1;
                }
            }
        }
        self.flush().await?;
        Ok(removed)
    }

    /// Moves a dead letter back to the end of an outbox queue, durably.
    /// Returns the new outbox key, or `None` if the dead letter is gone.
    pub async fn dead_requeue(
        &self,
        id: u64,
        prefix: &[u8],
        plain: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let outbox = self.tree(OUTBOX_TREE)?;
        let dead = self.tree(DEAD_TREE)?;
        let dead_key = id.to_be_bytes();
        let key = {
            let _gate = sled_gate();
            let seq = self.inner.dbs.state.generate_id()?;
            let mut key = prefix.to_vec();
            key.extend_from_slice(&seq.to_be_bytes());
            let sealed = self.seal_value(OUTBOX_TREE, &key, plain)?;
            let moved = (&outbox, &dead)
                .transaction(|(outbox, dead)| {
                    if dead.remove(&dead_key)?.is_none() {
                        return Ok(false);
                    }
                    outbox.insert(key.as_slice(), sealed.as_slice())?;
                    Ok::<_, ConflictableTransactionError<StoreError>>(true)
                })
                .map_err(tx_error)?;
            moved.then_some(key)
        };
        self.flush().await?;
        Ok(key)
    }

    /// Inserts or replaces a webhook endpoint, durably.
    pub async fn put_webhook_endpoint(&self, key: &[u8], plain: &[u8]) -> Result<(), StoreError> {
        let tree = self.tree(ENDPOINTS_TREE)?;
        let sealed = self.sealer().seal(ENDPOINTS_TREE.as_bytes(), key, plain)?;
        {
            let _gate = sled_gate();
            tree.insert(key, sealed)?;
        }
        self.flush().await
    }

    /// Removes a webhook endpoint, durably; returns whether it existed.
    pub async fn delete_webhook_endpoint(&self, key: &[u8]) -> Result<bool, StoreError> {
        let tree = self.tree(ENDPOINTS_TREE)?;
        let existed = {
            let _gate = sled_gate();
            tree.remove(key)?.is_some()
        };
        self.flush().await?;
        Ok(existed)
    }

    /// Every stored webhook endpoint.
    pub fn webhook_endpoints(&self) -> Result<Vec<QueueItem>, StoreError> {
        let tree = self.tree(ENDPOINTS_TREE)?;
        let raw: Vec<(sled::IVec, sled::IVec)> = {
            let _gate = sled_gate();
            tree.iter().collect::<Result<_, _>>()?
        };
        self.open_scanned(ENDPOINTS_TREE, raw, WEBHOOKS, WEBHOOK_VALUE)
    }
}

/// Puts the version byte in front of every format-2 value of the outbox or
/// dead-letter tree (`crate::webhook`'s JSON, which starts with `{`), in
/// one atomic sled batch; values that already carry it are left alone, so
/// running it again changes nothing. Returns (converted, unreadable).
pub(crate) fn version_queue_values(
    tree: &sled::Tree,
    sealer: &super::Sealer,
) -> Result<(u64, u64), StoreError> {
    let name = tree.name();
    let rows = {
        let _gate = sled_gate();
        tree.iter().collect::<Result<Vec<_>, _>>()?
    };
    let (mut converted, mut unreadable) = (0, 0);
    let mut batch = sled::Batch::default();
    for (key, sealed) in rows {
        match sealer.open(&name, &key, &sealed) {
            Ok(plain) if plain.first() == Some(&b'{') => {
                let mut versioned = Vec::with_capacity(1 + plain.len());
                versioned.push(QUEUE_VALUE_VERSION);
                versioned.extend_from_slice(&plain);
                batch.insert(key.as_ref(), sealer.seal(&name, &key, &versioned)?);
                converted += 1;
            }
            Ok(plain) if plain.first() == Some(&QUEUE_VALUE_VERSION) => {}
            _ => unreadable += 1,
        }
    }
    let _gate = sled_gate();
    tree.apply_batch(batch)?;
    Ok((converted, unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MasterKey;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &MasterKey::from_bytes([7; 32])).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn queues_keep_append_order_and_survive_reopen() {
        let (dir, store) = store();
        let items: Vec<(Vec<u8>, Vec<u8>)> = (0..50u32)
            .map(|i| {
                let queue = if i % 2 == 0 {
                    b"qa".to_vec()
                } else {
                    b"qb".to_vec()
                };
                (queue, format!("item {i}").into_bytes())
            })
            .collect();
        let refs: Vec<(&[u8], &[u8])> = items
            .iter()
            .map(|(q, v)| (q.as_slice(), v.as_slice()))
            .collect();
        store.outbox_append(&refs).unwrap();
        store.flush().await.unwrap();
        drop(store);
        let store = Store::open(dir.path(), &MasterKey::from_bytes([7; 32])).unwrap();
        let head = store.outbox_head(b"qa").unwrap().unwrap();
        assert_eq!(head.value, b"item 0");
        assert!(store.outbox_remove(&head.key).unwrap());
        assert_eq!(store.outbox_head(b"qa").unwrap().unwrap().value, b"item 2");
        assert_eq!(store.outbox_head(b"qb").unwrap().unwrap().value, b"item 1");
        let later = store.outbox_append(&[(b"qa", b"late")]).unwrap();
        assert!(
            seq_of(&later[0]) > head.seq(),
            "ids stay monotonic across reopen"
        );
        let qa: Vec<_> = store
            .outbox_all()
            .unwrap()
            .into_iter()
            .filter(|i| i.key.starts_with(b"qa"))
            .map(|i| String::from_utf8(i.value).unwrap())
            .collect();
        assert_eq!(qa.len(), 25);
        assert_eq!(qa.first().unwrap(), "item 2");
        assert_eq!(qa.last().unwrap(), "late");
    }

    #[tokio::test]
    async fn dead_letters_move_out_and_back() {
        let (_dir, store) = store();
        let keys = store
            .outbox_append(&[(b"q", b"one"), (b"q", b"two")])
            .unwrap();
        let id = store.outbox_kill(&keys[0], b"one (dead)").unwrap();
        assert_eq!(store.outbox_head(b"q").unwrap().unwrap().value, b"two");
        let dead = store.dead_letters(0, 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].value, b"one (dead)");
        assert_eq!(store.dead_letter(id).unwrap().unwrap().value, b"one (dead)");
        let back = store.dead_requeue(id, b"q", b"one").await.unwrap().unwrap();
        assert!(
            seq_of(&back) > seq_of(&keys[1]),
            "a redelivery goes to the end"
        );
        assert!(store.dead_letters(0, 10).unwrap().is_empty());
        assert!(
            store
                .dead_requeue(id, b"q", b"one")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(store.outbox_purge(b"q").await.unwrap(), 2);
        assert!(store.outbox_head(b"q").unwrap().is_none());
    }

    #[tokio::test]
    async fn values_are_sealed_at_rest() {
        let (dir, store) = store();
        store
            .outbox_append(&[(b"q", b"a very secret message body")])
            .unwrap();
        store
            .put_webhook_endpoint(b"ep", b"secret-0123456789abcdef")
            .await
            .unwrap();
        drop(store);
        let mut raw = Vec::new();
        for entry in walk(&dir.path().join("db")) {
            raw.extend(std::fs::read(entry).unwrap());
        }
        let needle = b"very secret";
        assert!(!raw.windows(needle.len()).any(|w| w == needle));
        let needle = b"0123456789abcdef";
        assert!(!raw.windows(needle.len()).any(|w| w == needle));
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
