//! What the store holds, tree by tree: live entries and their bytes (keys
//! plus stored, sealed values), for the size figures of `/metrics` and the
//! soak bench. sled's size on disk ([`Store::size_on_disk`]) also counts
//! space it has not reclaimed yet; comparing the two tells live growth from
//! garbage.
//!
//! The device keyspaces (one tree per session in each database, see
//! [`super::dbs`]) are summed over all sessions, by row kind
//! (`device/session`, `device/msg_secret`, …), so the figures name no
//! session.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use sled::IVec;

use super::{
    DEVICE_HISTORY_PREFIX, DEVICE_TREE_PREFIX, Store, StoreError, sled_gate, sled_gate_yield,
};

/// Entries read under one hold of the gate.
const CHUNK_ENTRIES: usize = 512;
/// How long a scan lets the gate's waiters go first between chunks.
const YIELD_LIMIT: Duration = Duration::from_millis(5);

/// Live entries of one tree (or one kind of device keyspace row).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeUsage {
    pub entries: u64,
    /// Key bytes plus stored value bytes.
    pub bytes: u64,
}

impl Store {
    /// Live entries and bytes per tree, device keyspaces summed by row
    /// kind (`device/<kind>`). Reads every entry, taking the gate one
    /// bounded chunk at a time; blocking: call it from a blocking thread.
    pub fn tree_usage(&self) -> Result<BTreeMap<String, TreeUsage>, StoreError> {
        let mut usage: BTreeMap<String, TreeUsage> = BTreeMap::new();
        for (name, db) in self.inner.dbs.trees() {
            let label = String::from_utf8_lossy(&name).into_owned();
            let device =
                label.starts_with(DEVICE_TREE_PREFIX) || label.starts_with(DEVICE_HISTORY_PREFIX);
            let tree = db.open_tree(&name)?;
            let mut from: Option<IVec> = None;
            loop {
                let done = {
                    let _gate = sled_gate();
                    let range = match &from {
                        None => tree.range::<IVec, _>(..),
                        Some(after) => tree
                            .range::<IVec, _>((Bound::Excluded(after.clone()), Bound::Unbounded)),
                    };
                    let mut taken = 0;
                    for item in range {
                        let (key, value) = item?;
                        let row = if device {
                            let kind = key.first().copied().unwrap_or(0);
                            format!("device/{}", super::device::kind_name(kind))
                        } else {
                            label.clone()
                        };
                        let row = usage.entry(row).or_default();
                        row.entries += 1;
                        row.bytes += (key.len() + value.len()) as u64;
                        taken += 1;
                        if taken >= CHUNK_ENTRIES {
                            from = Some(key);
                            break;
                        }
                    }
                    taken < CHUNK_ENTRIES
                };
                sled_gate_yield(YIELD_LIMIT);
                if done {
                    break;
                }
            }
            if !device {
                usage.entry(label).or_default();
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MasterKey;

    #[tokio::test]
    async fn counts_live_entries_and_bytes_per_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &MasterKey::from_bytes([3; 32])).unwrap();
        let before = store.tree_usage().unwrap();
        assert!(before["store_meta"].entries >= 1);
        // 600 outbox items: more than one chunk of the scan.
        let items: Vec<(Vec<u8>, Vec<u8>)> = (0..600u32)
            .map(|i| (b"q".to_vec(), format!("item {i}").into_bytes()))
            .collect();
        let refs: Vec<(&[u8], &[u8])> = items
            .iter()
            .map(|(q, v)| (q.as_slice(), v.as_slice()))
            .collect();
        let keys = store.outbox_append(&refs).unwrap();
        let usage = store.tree_usage().unwrap();
        let outbox = usage["webhook_outbox"];
        assert_eq!(outbox.entries, 600);
        // Each entry: its key (prefix ‖ seq) and a sealed value longer
        // than the item.
        assert!(outbox.bytes > 600 * (9 + 8), "{outbox:?}");
        for key in &keys[..100] {
            assert!(store.outbox_remove(key).unwrap());
        }
        let after = store.tree_usage().unwrap()["webhook_outbox"];
        assert_eq!(after.entries, 500);
        assert!(after.bytes < outbox.bytes);
        // No device keyspace: no `device/…` rows.
        assert!(!usage.keys().any(|tree| tree.starts_with("device/")));
    }
}
