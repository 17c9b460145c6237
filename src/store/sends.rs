//! The outbound queue: sends the API accepted and WhatsApp has not taken
//! yet, the status of every send, and idempotency keys. Sealed opaque
//! values in ordered queues; what they mean is `crate::session::outbound`'s
//! business.
//!
//! | tree               | key                                 | value                     |
//! |--------------------|-------------------------------------|---------------------------|
//! | `send_queue`       | session prefix ‖ seq (u64 BE)       | sealed queued send        |
//! | `send_status`      | session prefix ‖ message id         | sealed status             |
//! | `send_idempotency` | session prefix ‖ SHA-256(key)       | sealed message id and time |
//! | `send_limits`      | session prefix ‖ `override`/`levels` | sealed limits, bucket state |
//! | `send_limits`      | H(tenant id) (33 bytes, `t` last)   | sealed tenant's limits    |
//!
//! The session prefix is 32 bytes (a keyed hash of the session's
//! incarnation, fixed length, so prefix-free): a session id deleted and
//! created again starts with an empty queue, and nothing names the session.
//! A send is queued durably (flushed) before the API answers; taking it off
//! the queue and marking it sent is one transaction, also flushed, so a
//! crash between the two resends it with the same message id.
//!
//! Status records and idempotency keys are kept until a retention sweep
//! ([`Store::send_status_expire`], [`Store::send_idempotency_expire`]; the
//! session layer decides what has expired) deletes them.

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::outbox::QueueItem;
use super::records::tx_error;
use super::{Store, StoreError, sled_gate};

pub(crate) const QUEUE_TREE: &str = "send_queue";
pub(crate) const STATUS_TREE: &str = "send_status";
pub(crate) const IDEMPOTENCY_TREE: &str = "send_idempotency";
pub(crate) const LIMITS_TREE: &str = "send_limits";

/// How an undecryptable value is named in the error.
const OUTBOUND: &str = "<outbound>";
const QUEUE_VALUE: &str = "outbound queue value";

impl Store {
    fn send_open(&self, tree: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.open_sealed(tree, key, sealed, OUTBOUND, QUEUE_VALUE)
    }

    /// Queues a send under `prefix` with its status record (`status_key`
    /// is the full key) and, when given, its idempotency key, all or
    /// nothing; durable on return. Returns the queue item's key.
    pub async fn send_enqueue(
        &self,
        prefix: &[u8],
        item: &[u8],
        status: (&[u8], &[u8]),
        idempotency: Option<(&[u8], &[u8])>,
    ) -> Result<Vec<u8>, StoreError> {
        let queue = self.tree(QUEUE_TREE)?;
        let statuses = self.tree(STATUS_TREE)?;
        let keys = self.tree(IDEMPOTENCY_TREE)?;
        let key = {
            let _gate = sled_gate();
            let seq = self.inner.dbs.state.generate_id()?;
            let mut key = Vec::with_capacity(prefix.len() + 8);
            key.extend_from_slice(prefix);
            key.extend_from_slice(&seq.to_be_bytes());
            let sealed_item = self.sealer().seal(QUEUE_TREE.as_bytes(), &key, item)?;
            let sealed_status = self
                .sealer()
                .seal(STATUS_TREE.as_bytes(), status.0, status.1)?;
            let sealed_idem = match idempotency {
                Some((k, v)) => Some((k, self.sealer().seal(IDEMPOTENCY_TREE.as_bytes(), k, v)?)),
                None => None,
            };
            (&queue, &statuses, &keys)
                .transaction(|(queue, statuses, keys)| {
                    queue.insert(key.as_slice(), sealed_item.as_slice())?;
                    statuses.insert(status.0, sealed_status.as_slice())?;
                    if let Some((k, v)) = &sealed_idem {
                        keys.insert(*k, v.as_slice())?;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(tx_error)?;
            key
        };
        self.flush().await?;
        Ok(key)
    }

    /// The queued sends under `prefix`, oldest first.
    pub fn send_queue(&self, prefix: &[u8]) -> Result<Vec<QueueItem>, StoreError> {
        let tree = self.tree(QUEUE_TREE)?;
        let raw: Vec<(sled::IVec, sled::IVec)> = {
            let _gate = sled_gate();
            tree.scan_prefix(prefix).collect::<Result<_, _>>()?
        };
        self.open_scanned(QUEUE_TREE, raw, OUTBOUND, QUEUE_VALUE)
    }

    /// The oldest queued send under `prefix`.
    pub fn send_queue_head(&self, prefix: &[u8]) -> Result<Option<QueueItem>, StoreError> {
        let tree = self.tree(QUEUE_TREE)?;
        let first = {
            let _gate = sled_gate();
            tree.scan_prefix(prefix).next().transpose()?
        };
        first
            .map(|(key, sealed)| {
                Ok(QueueItem {
                    value: self.send_open(QUEUE_TREE, &key, &sealed)?,
                    key: key.to_vec(),
                })
            })
            .transpose()
    }

    /// Replaces a queued send's value (its attempts). False if it is gone.
    pub fn send_queue_update(&self, key: &[u8], item: &[u8]) -> Result<bool, StoreError> {
        let tree = self.tree(QUEUE_TREE)?;
        let sealed = self.sealer().seal(QUEUE_TREE.as_bytes(), key, item)?;
        let _gate = sled_gate();
        if !tree.contains_key(key)? {
            return Ok(false);
        }
        tree.insert(key, sealed)?;
        Ok(true)
    }

    /// Takes a send off the queue and writes its new status (if given), in
    /// one transaction; durable on return. False if it was no longer
    /// queued (the status is then left alone).
    pub async fn send_dequeue(
        &self,
        queue_key: &[u8],
        status: Option<(&[u8], &[u8])>,
    ) -> Result<bool, StoreError> {
        let queue = self.tree(QUEUE_TREE)?;
        let statuses = self.tree(STATUS_TREE)?;
        let sealed = match status {
            Some((key, value)) => {
                Some((key, self.sealer().seal(STATUS_TREE.as_bytes(), key, value)?))
            }
            None => None,
        };
        let removed = {
            let _gate = sled_gate();
            (&queue, &statuses)
                .transaction(|(queue, statuses)| {
                    let was = queue.remove(queue_key)?.is_some();
                    if was && let Some((key, value)) = &sealed {
                        statuses.insert(*key, value.as_slice())?;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(was)
                })
                .map_err(tx_error)?
        };
        self.flush().await?;
        Ok(removed)
    }

    /// A send's status record.
    pub fn send_status(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_sealed(STATUS_TREE, key, OUTBOUND, QUEUE_VALUE)
    }

    /// Writes a send's status record (a receipt's news). Committed by the
    /// next group commit: a crash may lose the update, not the send.
    pub fn send_status_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let tree = self.tree(STATUS_TREE)?;
        let sealed = self.sealer().seal(STATUS_TREE.as_bytes(), key, value)?;
        let _gate = sled_gate();
        tree.insert(key, sealed)?;
        Ok(())
    }

    /// What an idempotency key was used for.
    pub fn send_idempotency(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_sealed(IDEMPOTENCY_TREE, key, OUTBOUND, QUEUE_VALUE)
    }

    /// A rate-limit value (a session's or tenant's limits, a session's
    /// bucket state).
    pub fn send_limits(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_sealed(LIMITS_TREE, key, OUTBOUND, QUEUE_VALUE)
    }

    /// Writes (or with `None` removes) a rate-limit value; durable on
    /// return when `durable` (limits set through the API), else with the
    /// next group commit (bucket state: a crash may give back a few tokens).
    pub async fn send_limits_put(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let tree = self.tree(LIMITS_TREE)?;
        let sealed = value
            .map(|v| self.sealer().seal(LIMITS_TREE.as_bytes(), key, v))
            .transpose()?;
        {
            let _gate = sled_gate();
            match sealed {
                Some(sealed) => tree.insert(key, sealed)?,
                None => tree.remove(key)?,
            };
        }
        if durable {
            self.flush().await?;
        }
        Ok(())
    }

    /// Deletes the status records that `expired` says so (it sees each
    /// opened value), reading the tree one bounded chunk at a time under
    /// the gate; a record rewritten meanwhile (a receipt) is kept.
    /// Committed by the next group commit: a crash may bring an expired
    /// record back until the next sweep. Blocking. Returns how many.
    pub fn send_status_expire(&self, expired: impl Fn(&[u8]) -> bool) -> Result<usize, StoreError> {
        self.send_expire(STATUS_TREE, expired)
    }

    /// [`Store::send_status_expire`] for the idempotency keys.
    pub fn send_idempotency_expire(
        &self,
        expired: impl Fn(&[u8]) -> bool,
    ) -> Result<usize, StoreError> {
        self.send_expire(IDEMPOTENCY_TREE, expired)
    }

    fn send_expire(
        &self,
        name: &str,
        expired: impl Fn(&[u8]) -> bool,
    ) -> Result<usize, StoreError> {
        const CHUNK: usize = 512;
        let tree = self.tree(name)?;
        let mut removed = 0;
        let mut after: Option<sled::IVec> = None;
        loop {
            let chunk: Vec<(sled::IVec, sled::IVec)> = {
                let _gate = sled_gate();
                let range = match &after {
                    None => tree.range::<sled::IVec, _>(..),
                    Some(key) => tree.range::<sled::IVec, _>((
                        std::ops::Bound::Excluded(key.clone()),
                        std::ops::Bound::Unbounded,
                    )),
                };
                range.take(CHUNK).collect::<Result<_, _>>()?
            };
            let Some((last, _)) = chunk.last() else {
                break;
            };
            after = Some(last.clone());
            let done = chunk.len() < CHUNK;
            let gone: Vec<_> = chunk
                .into_iter()
                .filter(|(key, sealed)| match self.send_open(name, key, sealed) {
                    Ok(plain) => expired(&plain),
                    Err(e) => {
                        tracing::warn!(tree = name, error = %e, "skipping an unreadable row in the retention sweep");
                        false
                    }
                })
                .collect();
            if !gone.is_empty() {
                let _gate = sled_gate();
                for (key, sealed) in gone {
                    if tree
                        .compare_and_swap(&key, Some(&sealed), None as Option<&[u8]>)?
                        .is_ok()
                    {
                        removed += 1;
                    }
                }
            }
            super::sled_gate_yield(std::time::Duration::from_millis(5));
            if done {
                break;
            }
        }
        Ok(removed)
    }

    /// The key of a tenant's limits (not a session prefix: 33 bytes).
    pub fn tenant_limits_key(&self, tenant: &str) -> Vec<u8> {
        let mut key = self
            .blinder()
            .blind(b"tenant-limits", tenant.as_bytes())
            .to_vec();
        key.push(b't');
        key
    }

    /// Deletes everything under `prefix` in these trees, the contacts
    /// directory's and the received media refs (the session
    /// is deleted); durable on return. Returns how many sends were queued.
    pub async fn send_purge(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut queued = 0;
        for name in [
            QUEUE_TREE,
            STATUS_TREE,
            IDEMPOTENCY_TREE,
            LIMITS_TREE,
            super::contacts::CONTACTS_TREE,
            super::media_refs::MEDIA_REFS_TREE,
        ] {
            let tree = self.tree(name)?;
            let keys: Vec<sled::IVec> = {
                let _gate = sled_gate();
                tree.scan_prefix(prefix).keys().collect::<Result<_, _>>()?
            };
            if name == QUEUE_TREE {
                queued = keys.len();
            }
            if keys.is_empty() {
                continue;
            }
            let mut batch = sled::Batch::default();
            for key in &keys {
                batch.remove(key);
            }
            let _gate = sled_gate();
            tree.apply_batch(batch)?;
        }
        self.flush().await?;
        Ok(queued)
    }
}
