//! The store's two sled databases, and which trees live in which.
//!
//! - `<data_dir>/db`, the **state** database: what is overwritten in place
//!   (session records, the device keyspaces' Signal sessions, sender keys,
//!   prekeys, app-state versions), what comes and goes (the webhook outbox,
//!   dead letters, pending inbound rows), tenants, limits and the store's
//!   meta (key check, format, index key, sled's id generator).
//! - `<data_dir>/history`, the **history** database: what accumulates, one
//!   row per message or contact, until a retention removes it: the send
//!   queue with each send's status and idempotency key, the contacts
//!   directory, media references, and per session (`device_history/<hex>`)
//!   the library's message secrets and the copies of sent messages it keeps
//!   for retries.
//!
//! Why two: sled 0.34 does not reclaim the log space of overwritten values
//! while any tree of the same database keeps growing (`benches/sled_growth.rs`:
//! 52.7× the live data on disk with a growing tree beside the overwritten
//! rows, 3.3× with the growing tree in a second database; BENCHMARKS.md,
//! "Soak"). Every row that accumulates lives in the history database, so
//! the state database's garbage is reclaimed as it is made.
//!
//! A tree's name says its database ([`in_history`]); names are unique
//! across both, so a backup stays one list of named trees and a restore
//! puts each back where it belongs. Values are sealed with their own tree's
//! name as AAD in both. Writes that must be atomic together stay in one
//! database: the send queue, statuses and idempotency keys share the
//! history database for that reason (a send is queued with its status in
//! one transaction). Every group commit flushes both, history first (see
//! `FlushGroup`).

use std::path::Path;

use sled::IVec;

use super::{SLED_DEFAULT_TREE, StoreError, contacts, media_refs, sends};

/// The history database's directory under the data dir.
pub(super) const HISTORY_DIR: &str = "history";
/// Per-session trees of the history database: `device_history/<hex>`.
pub(crate) const DEVICE_HISTORY_PREFIX: &str = "device_history/";

/// Whether the tree `name` lives in the history database.
pub(crate) fn in_history(name: &[u8]) -> bool {
    name.starts_with(DEVICE_HISTORY_PREFIX.as_bytes())
        || [
            sends::QUEUE_TREE,
            sends::STATUS_TREE,
            sends::IDEMPOTENCY_TREE,
            contacts::CONTACTS_TREE,
            media_refs::MEDIA_REFS_TREE,
        ]
        .iter()
        .any(|tree| tree.as_bytes() == name)
}

/// Opens (creating) the history database of the store in `data_dir`.
pub(super) fn open_history(data_dir: &Path) -> Result<sled::Db, StoreError> {
    super::open_db_with_cache(
        &data_dir.join(HISTORY_DIR),
        super::HISTORY_CACHE_CAPACITY_BYTES,
    )
}

/// Both databases of one store.
#[derive(Clone)]
pub(crate) struct Dbs {
    pub(crate) state: sled::Db,
    pub(crate) history: sled::Db,
}

impl Dbs {
    pub(super) fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            state: super::open_db(data_dir)?,
            history: open_history(data_dir)?,
        })
    }

    /// The database the tree `name` belongs in.
    pub(crate) fn of(&self, name: &[u8]) -> &sled::Db {
        if in_history(name) {
            &self.history
        } else {
            &self.state
        }
    }

    /// Opens (creating) the tree `name` in the database it belongs in.
    pub(crate) fn open_tree(&self, name: impl AsRef<[u8]>) -> Result<sled::Tree, StoreError> {
        let name = name.as_ref();
        Ok(self.of(name).open_tree(name)?)
    }

    /// Every tree of both databases as it is (sled's default trees left
    /// out), with the database that holds it: what a backup, a key rotation
    /// or a size count walks. Listed where they are, not where their name
    /// says, so a store not yet split (format 3) is read whole.
    pub(crate) fn trees(&self) -> Vec<(IVec, &sled::Db)> {
        [&self.state, &self.history]
            .into_iter()
            .flat_map(|db| {
                db.tree_names()
                    .into_iter()
                    .filter(|name| name != SLED_DEFAULT_TREE)
                    .map(move |name| (name, db))
            })
            .collect()
    }

    /// Makes every write to either database durable: history first, so a
    /// row in the state database that refers to one in history never
    /// outlives it in a crash between the two.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.history.flush()?;
        self.state.flush()?;
        Ok(())
    }

    /// sled's estimate of both databases' size on disk, in bytes.
    pub(crate) fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.state.size_on_disk()? + self.history.size_on_disk()?)
    }
}
