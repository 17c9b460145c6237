//! The contacts directory's rows: sealed opaque values under a session's
//! prefix (the same blinded incarnation prefix as the outbound queue, so
//! a deleted or moved session's directory goes with its queue, see
//! [`Store::send_purge`]). What the values mean is
//! `crate::session::contacts`' business.
//!
//! | tree       | key                                         | value                   |
//! |------------|---------------------------------------------|-------------------------|
//! | `contacts` | session prefix ‖ H(`phone:`digits / `lid:`digits) | sealed entry or alias |
//!
//! Keys are keyed hashes, so no phone number or LID is readable on disk.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::records::{abort, tx_error};
use super::{Store, StoreError, sled_gate};

pub(crate) const CONTACTS_TREE: &str = "contacts";

/// A row: its key and its opened value.
pub type ContactRow = (Vec<u8>, Vec<u8>);

const OWNER: &str = "<contacts>";
const WHAT: &str = "contacts directory value";

/// An error inside a contacts transaction.
pub type TxError = ConflictableTransactionError<StoreError>;

/// The rows of one update, read and written in one transaction.
pub struct ContactTx<'a> {
    store: &'a Store,
    tree: &'a TransactionalTree,
}

impl ContactTx<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        let sealed = self.tree.get(key)?;
        abort(
            sealed
                .map(|s| self.store.open_sealed(CONTACTS_TREE, key, &s, OWNER, WHAT))
                .transpose(),
        )
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), TxError> {
        let sealed = abort(
            self.store
                .sealer()
                .seal(CONTACTS_TREE.as_bytes(), key, value),
        )?;
        self.tree.insert(key, sealed)?;
        Ok(())
    }
}

impl Store {
    /// Runs `update` over the contacts tree in one transaction (rerun on
    /// a conflict). Committed by the next group commit: the directory is
    /// a record of what was seen, not something WhatsApp waits for.
    pub fn contacts_update(
        &self,
        update: impl Fn(&ContactTx<'_>) -> Result<(), TxError>,
    ) -> Result<(), StoreError> {
        let tree = self.tree(CONTACTS_TREE)?;
        let _gate = sled_gate();
        tree.transaction(|tree| {
            let tx = ContactTx { store: self, tree };
            update(&tx)
        })
        .map_err(tx_error)
    }

    /// One row, opened (outside a transaction: what is committed now).
    pub fn contacts_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_sealed(CONTACTS_TREE, key, OWNER, WHAT)
    }

    /// Up to `limit` rows under `prefix` after key `after` (exclusive), in
    /// key order, opened.
    pub fn contacts_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<ContactRow>, StoreError> {
        let tree = self.tree(CONTACTS_TREE)?;
        let raw: Vec<(sled::IVec, sled::IVec)> = {
            let _gate = sled_gate();
            let start = match after {
                Some(after) => {
                    let mut start = after.to_vec();
                    start.push(0);
                    start
                }
                None => prefix.to_vec(),
            };
            tree.range(start..)
                .take_while(|row| row.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
                .take(limit)
                .collect::<Result<_, _>>()?
        };
        raw.into_iter()
            .map(|(k, v)| {
                let value = self.open_sealed(CONTACTS_TREE, &k, &v, OWNER, WHAT)?;
                Ok((k.to_vec(), value))
            })
            .collect()
    }
}
