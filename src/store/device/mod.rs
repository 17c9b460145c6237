//! One session's device keyspace: wacore's `Backend` over a sled tree.
//!
//! Every key starts with a kind byte ([`kind`]); the rest of the *natural*
//! key follows it. Composite natural keys length-prefix every part but the
//! last (u16 big-endian), so they stay unambiguous. Integer ids are
//! big-endian so that sled's order is numeric order.
//!
//! Natural keys that hold a JID, LID, phone number, Signal address or group
//! id are not what sled stores: [`stored_key`] replaces them by keyed hashes
//! (see [`super::ids`]), shaped so the scans the traits need stay prefix
//! scans (a Signal address is stored as `H(user) ‖ H(address)`, a sender-key
//! device row as `H(group) ‖ H(device)`). Where a method needs an id back
//! (tc-token JIDs, sender-key devices) the sealed value carries it.
//!
//! Every value is sealed (see [`super::crypto`]) with the AAD bound to this
//! tree's name and the full key. Values of the library's serde types are
//! JSON (self-describing: wacore keeps adding `#[serde(default)]` fields);
//! Signal records are opaque blobs stored as given, except one-time
//! prekeys, which are stored compact, 64 to a row (version byte ‖ prost
//! `PreKeyBucket`, see `prekeys`; since store format 3); small fixed rows
//! of our own start with a format byte.
//!
//! # Durability
//!
//! sled writes nothing to disk on its own here (its periodic flusher is off,
//! see `sled_gate`). A method listed below as durable writes its rows — one
//! row as a plain insert or remove, several as one atomic sled batch; never
//! a one-row batch — and then joins the store's one group commit
//! (`FlushGroup`: [`DeviceBackend::flush`] and `Store::flush` share one
//! sled flush across every session and the webhook outbox) before it
//! returns `Ok`. sled's log is ordered, so the flush that covers a write
//! also covers every write made before it, by anyone. What "durable" means
//! (process crash vs power loss) is said in the README's storage section.
//!
//! Which library writes must be durable follows from what whatsapp-rust
//! 0.7.0 replays after a crash:
//!
//! - **Inbound messages.** A batch of decrypted messages is first written to
//!   the pending-inbound buffer (`store_pending_inbound_batch`); only when
//!   that returns `Ok` does the library run whatsd's durability hook
//!   (`src/message/commit_batch.rs:779-788`, "fail closed: without a durable
//!   buffered copy, do not run the hook and do not ack"). After the hook it
//!   deletes the rows, ignoring a failure (`commit_batch.rs:822-829`:
//!   "leftover rows replay as duplicates; the idempotent hook re-commits"),
//!   then acks (`commit_batch.rs:844`). When WhatsApp redelivers a message
//!   whose Signal ratchet already advanced, `ack_or_replay_to_hook`
//!   (`src/message/durability.rs:35-75`) hands the buffered row to the hook
//!   again; without a row it acks the message as a genuine duplicate
//!   (`durability.rs:65-66`). So the buffered rows must be durable — a row
//!   lost after its ratchet advance is a lost message — and
//!   `store_pending_inbound(_batch)` joins the group commit. Their deletes
//!   need not be: a row a crash brings back is replayed only if WhatsApp
//!   redelivers (the ack was lost too), and then the hook commits the
//!   message again, which at-least-once allows (same event id); rows never
//!   redelivered are swept after 7 days (`delete_expired_pending_inbound`,
//!   `src/keepalive.rs:269-274`). The next group commit, at the latest the
//!   next message's, makes a delete durable anyway. WhatsApp's ack still
//!   waits for the hook, and the hook (the webhook sink) returns only after
//!   the group commit that covers the message's outbox item.
//! - **Signal state** (`agent_docs/signal_durability.md`): a raised sender
//!   chain lease must be durable before ciphertext derived from it reaches
//!   the wire; deletes (session and sender-key tombstones, a consumed
//!   one-time prekey, deleted only once its promoted session is durable)
//!   are durable state; inbound rows must be durable before their ratchet
//!   advances (the library orders that itself: an offline drain flushes
//!   Signal state only after the rows are stored, `commit_batch.rs:796`;
//!   and a flush here is the whole log's, so a durable Signal write makes
//!   every row written before it durable too). The
//!   library decides when to write Signal state and expects the write to be
//!   durable on `Ok`, so `put_sessions_batch`, `put_sender_keys_batch`,
//!   `put_identities_batch`, `remove_prekey`, every `delete_*` and the
//!   single-row Signal puts (`put_session`, `put_identity`,
//!   `put_sender_key`) join the group commit.
//! - **Key material** that is uploaded or cannot be re-derived:
//!   `store_prekey`, `store_prekeys_batch`, `mark_prekeys_uploaded`,
//!   `store_signed_prekey`, `remove_signed_prekey`, `set_sync_key`,
//!   `DeviceStore::save`/`create`.
//! - **App-state sync bookkeeping** that must stay consistent with the
//!   server's ltHash: `set_version`, `put_mutation_macs`,
//!   `clear_mutation_macs`.
//! - **Sender-key distribution status** (`set_sender_key_status`, the
//!   clears): losing a "forget" mark would leave group members unable to
//!   decrypt.
//! - `put_msg_secrets` (a lost secret makes later reactions/poll votes
//!   undecryptable) and `take_sent_message` (a consumed retry stays
//!   consumed).
//!
//! Not flushed (the next group commit of anyone covers them; a crash before
//! it loses them): the pending-inbound deletes (above), and caches the
//! client re-learns from the server: LID↔PN mappings, device lists, base
//! keys, group metadata, tc tokens (except deletes), `store_sent_message`.
//!
//! # Modules
//!
//! This file holds the backend type, its construction and wipe/close
//! fences, the sled plumbing every trait shares (sealing, batches, scans,
//! sweeps, [`DeviceBackend::flush`] and the flush-before-`Ok` helper) and
//! the key encoding, natural and blinded. One module per wacore trait:
//!
//! - `signal`: [`SignalStore`](wacore::store::traits::SignalStore)
//!   (identities, sessions, prekeys, signed prekeys, sender keys), with
//!   `prekeys` (the compact prekey rows and their conversion from format 2);
//! - `app_sync`: [`AppSyncStore`](wacore::store::traits::AppSyncStore)
//!   (sync keys, versions, mutation MACs);
//! - `protocol`: [`ProtocolStore`](wacore::store::traits::ProtocolStore)
//!   (sender-key devices, LID mappings, base keys, device lists, group
//!   metadata, tc tokens, sent messages, pending inbound);
//! - `msg_secret`: [`MsgSecretStore`](wacore::store::traits::MsgSecretStore)
//!   (message secrets);
//! - `device_record`: [`DeviceStore`](wacore::store::traits::DeviceStore)
//!   (the device row itself).

mod app_sync;
mod device_record;
mod msg_secret;
mod prekeys;
#[cfg(test)]
mod proptests;
mod protocol;
mod signal;

use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use wacore::store::error::Result as WaResult;

use super::FlushGroup;
use super::crypto::Sealer;
use super::error::StoreError;
use super::ids::{BLIND_LEN, Blinder};
use super::records::tx_error;

pub(crate) use prekeys::compact_keyspace;
#[cfg(test)]
pub(crate) use prekeys::decode_bucket as decode_prekey_bucket;

/// The first byte of every key in a device keyspace.
mod kind {
    pub const IDENTITY: u8 = 0x01;
    pub const SESSION: u8 = 0x02;
    pub const PREKEY: u8 = 0x03;
    pub const SIGNED_PREKEY: u8 = 0x04;
    pub const SENDER_KEY: u8 = 0x05;
    /// One-time prekeys, 64 ids to a row (see `prekeys`); replaces
    /// `PREKEY` rows since store format 3.
    pub const PREKEY_BUCKET: u8 = 0x06;
    pub const SYNC_KEY: u8 = 0x10;
    pub const APP_STATE_VERSION: u8 = 0x11;
    pub const MUTATION_MAC: u8 = 0x12;
    pub const SENDER_KEY_DEVICE: u8 = 0x20;
    pub const LID_MAPPING: u8 = 0x21;
    pub const PN_TO_LID: u8 = 0x22;
    pub const BASE_KEY: u8 = 0x23;
    pub const DEVICE_LIST: u8 = 0x24;
    pub const GROUP_METADATA: u8 = 0x25;
    pub const TC_TOKEN: u8 = 0x26;
    pub const SENT_MESSAGE: u8 = 0x27;
    pub const PENDING_INBOUND: u8 = 0x28;
    pub const MSG_SECRET: u8 = 0x30;
    pub const DEVICE: u8 = 0x40;
}

/// The name of a device keyspace row kind (the first byte of its key),
/// for the per-tree size figures ([`crate::store::Store::tree_usage`]).
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        kind::IDENTITY => "identity",
        kind::SESSION => "session",
        kind::PREKEY => "prekey",
        kind::SIGNED_PREKEY => "signed_prekey",
        kind::SENDER_KEY => "sender_key",
        kind::PREKEY_BUCKET => "prekey_bucket",
        kind::SYNC_KEY => "sync_key",
        kind::APP_STATE_VERSION => "app_state_version",
        kind::MUTATION_MAC => "mutation_mac",
        kind::SENDER_KEY_DEVICE => "sender_key_device",
        kind::LID_MAPPING => "lid_mapping",
        kind::PN_TO_LID => "pn_to_lid",
        kind::BASE_KEY => "base_key",
        kind::DEVICE_LIST => "device_list",
        kind::GROUP_METADATA => "group_metadata",
        kind::TC_TOKEN => "tc_token",
        kind::SENT_MESSAGE => "sent_message",
        kind::PENDING_INBOUND => "pending_inbound",
        kind::MSG_SECRET => "msg_secret",
        kind::DEVICE => "device",
        _ => "other",
    }
}

/// Whether rows whose key starts with `kind` hold one-time prekeys (for
/// the size figures of the benches).
pub fn is_prekey_kind(kind: u8) -> bool {
    kind == kind::PREKEY || kind == kind::PREKEY_BUCKET
}

/// Format byte of the fixed-layout rows whatsd defines itself.
const ROW_FORMAT_V1: u8 = 1;

/// Whether rows of `kind` accumulate (one per message until a sweep) and
/// so live in the session's tree of the history database (see
/// `crate::store::dbs`): message secrets and the copies of sent messages.
pub fn is_history_kind(kind: u8) -> bool {
    kind == kind::MSG_SECRET || kind == kind::SENT_MESSAGE
}

/// Whether the stored (or natural) key `key` is a history row.
fn in_history(key: &[u8]) -> bool {
    key.first().copied().is_some_and(is_history_kind)
}

/// A session's two trees: `device/<hex>` in the state database and
/// `device_history/<hex>` in the history database, opened (and so created)
/// on first use: an idle session never touches it, and every open sled tree
/// costs memory (about 10 KiB per session at 1,000 sessions).
pub(crate) struct Trees {
    state: sled::Tree,
    history: std::sync::OnceLock<sled::Tree>,
    history_db: sled::Db,
    history_name: Vec<u8>,
}

impl Trees {
    pub(crate) fn new(state: sled::Tree, history_db: sled::Db, history_name: Vec<u8>) -> Self {
        Self {
            state,
            history: std::sync::OnceLock::new(),
            history_db,
            history_name,
        }
    }

    fn for_key(&self, key: &[u8]) -> Result<&sled::Tree, StoreError> {
        if !in_history(key) {
            return Ok(&self.state);
        }
        if let Some(tree) = self.history.get() {
            return Ok(tree);
        }
        let opened = self.history_db.open_tree(&self.history_name)?;
        Ok(self.history.get_or_init(|| opened))
    }
}

/// wacore's store traits over one session's device keyspace.
pub struct DeviceBackend {
    session: Arc<str>,
    /// The sled trees' names (state, history), each bound into the AAD of
    /// every value in it.
    tree_names: [Vec<u8>; 2],
    sealer: Arc<Sealer>,
    blinder: Blinder,
    /// `None` once the keyspace has been wiped, or this handle closed. Every sled call happens under
    /// the read lock and the wipe under the write lock, so no call can touch
    /// a dropped tree.
    tree: RwLock<Option<Trees>>,
    /// The store's group commit, which every flush here joins.
    flushes: Arc<FlushGroup>,
}

impl std::fmt::Debug for DeviceBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBackend")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl DeviceBackend {
    pub(super) fn new(
        session: &str,
        tree_names: [Vec<u8>; 2],
        trees: Trees,
        sealer: Arc<Sealer>,
        blinder: Blinder,
        flushes: Arc<FlushGroup>,
    ) -> Self {
        Self {
            session: Arc::from(session),
            tree_names,
            sealer,
            blinder,
            tree: RwLock::new(Some(trees)),
            flushes,
        }
    }

    pub fn session_id(&self) -> &str {
        &self.session
    }

    /// The sled tree of this backend's state rows (`device/<blinded
    /// session id>`; history rows are in `device_history/<…>`).
    #[doc(hidden)]
    pub fn tree_name(&self) -> &[u8] {
        &self.tree_names[0]
    }

    /// The name of the tree that holds `key`'s row (its values' AAD).
    fn tree_name_for(&self, key: &[u8]) -> &[u8] {
        &self.tree_names[usize::from(in_history(key))]
    }

    /// The sled key under which the Signal session with `address` is
    /// stored (tests tamper with it on disk).
    #[doc(hidden)]
    pub fn stored_signal_session_key(&self, address: &str) -> Vec<u8> {
        self.k(&key(kind::SESSION, address.as_bytes()))
    }

    /// The stored form of a natural key (see [`stored_key`]).
    fn k(&self, natural: &[u8]) -> Vec<u8> {
        stored_key(&self.blinder, natural)
    }

    /// Makes every write so far durable, by joining the store's group
    /// commit (one sled flush shared with every session and the outbox).
    pub async fn flush(&self) -> Result<(), StoreError> {
        if self.is_wiped() {
            return Err(StoreError::Wiped(self.session.to_string()));
        }
        self.flushes.flush().await
    }

    /// Fences this handle off without touching the data: later calls fail
    /// with [`StoreError::Wiped`], and the handle stops keeping the database
    /// open. Used once a session's client has stopped, so none of its
    /// lingering background tasks can still write.
    pub(super) fn close(&self) {
        if let Ok(mut tree) = self.tree.write() {
            tree.take();
        }
    }

    pub(super) fn is_wiped(&self) -> bool {
        self.tree.read().map(|tree| tree.is_none()).unwrap_or(true)
    }

    /// Fences off this backend and runs `drop_tree` while no call is using
    /// the tree.
    pub(super) fn wipe_with(
        &self,
        drop_tree: impl FnOnce() -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let mut tree = self.tree.write().map_err(|_| StoreError::Poisoned)?;
        tree.take();
        drop_tree()
    }

    // --- plumbing -----------------------------------------------------------

    /// Runs `f` over the tree of the state rows.
    fn with_tree<T>(
        &self,
        f: impl FnOnce(&sled::Tree) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_tree_for(&[], f)
    }

    /// Runs `f` over the tree that holds the rows of `key` (a stored key,
    /// or a prefix that starts with its kind byte).
    fn with_tree_for<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(&sled::Tree) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.tree.read().map_err(|_| StoreError::Poisoned)?;
        match guard.as_ref() {
            Some(trees) => {
                let tree = trees.for_key(key)?;
                let _gate = super::sled_gate();
                f(tree)
            }
            None => Err(StoreError::Wiped(self.session.to_string())),
        }
    }

    /// A transaction over the tree of the rows of `kind`.
    fn transact<T>(
        &self,
        kind: u8,
        f: impl Fn(&TransactionalTree) -> Result<T, ConflictableTransactionError<StoreError>>,
    ) -> Result<T, StoreError> {
        self.with_tree_for(&[kind], |tree| tree.transaction(f).map_err(tx_error))
    }

    fn seal(&self, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.sealer.seal(self.tree_name_for(key), key, plain)
    }

    fn open(&self, key: &[u8], sealed: &[u8], what: &'static str) -> Result<Vec<u8>, StoreError> {
        self.sealer
            .open(self.tree_name_for(key), key, sealed)
            .map_err(|_| StoreError::Undecryptable {
                session: self.session.to_string(),
                what,
            })
    }

    fn corrupt(&self, what: &'static str, reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            session: self.session.to_string(),
            what,
            reason: reason.to_string(),
        }
    }

    /// Opens the value under a natural key.
    fn get(&self, natural: &[u8], what: &'static str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.k(natural);
        match self.with_tree_for(&key, |tree| Ok(tree.get(&key)?))? {
            Some(sealed) => self.open(&key, &sealed, what).map(Some),
            None => Ok(None),
        }
    }

    /// Seals and writes a value under a natural key.
    fn put(&self, natural: &[u8], plain: &[u8]) -> Result<(), StoreError> {
        let key = self.k(natural);
        let sealed = self.seal(&key, plain)?;
        self.with_tree_for(&key, |tree| {
            tree.insert(key.as_slice(), sealed)?;
            Ok(())
        })
    }

    /// Removes the value under a natural key; returns it, still sealed
    /// under `self.k(natural)`.
    fn remove(&self, natural: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        let key = self.k(natural);
        self.with_tree_for(&key, |tree| Ok(tree.remove(&key)?))
    }

    /// Seals `rows` (natural keys) and writes them atomically: one row as
    /// a plain insert, more as one sled batch (in sled 0.34 a batch, even
    /// of one row, writes the log buffer out and takes sled's exclusive
    /// lock; an insert does neither).
    fn put_batch<'a>(
        &self,
        rows: impl IntoIterator<Item = (Vec<u8>, &'a [u8])>,
    ) -> Result<(), StoreError> {
        let mut sealed_rows = Vec::new();
        for (natural, plain) in rows {
            let key = self.k(&natural);
            let sealed = self.seal(&key, plain)?;
            sealed_rows.push((key, sealed));
        }
        match sealed_rows.len() {
            0 => Ok(()),
            1 => {
                let (key, sealed) = sealed_rows.pop().expect("one row");
                self.with_tree_for(&key, |tree| {
                    Ok(tree.insert(key.as_slice(), sealed).map(drop)?)
                })
            }
            _ => {
                let route = one_tree(sealed_rows.iter().map(|(key, _)| key.as_slice()))?;
                let mut batch = sled::Batch::default();
                for (key, sealed) in sealed_rows {
                    batch.insert(key, sealed);
                }
                self.with_tree_for(&route, |tree| Ok(tree.apply_batch(batch)?))
            }
        }
    }

    /// Removes stored keys (as a scan returns them, or mapped with
    /// [`Self::k`]) atomically: one key as a plain remove, more as one
    /// sled batch (see [`Self::put_batch`]).
    fn remove_batch(&self, keys: impl IntoIterator<Item = Vec<u8>>) -> Result<(), StoreError> {
        let mut keys: Vec<Vec<u8>> = keys.into_iter().collect();
        match keys.len() {
            0 => Ok(()),
            1 => {
                let key = keys.pop().expect("one key");
                self.with_tree_for(&key, |tree| Ok(tree.remove(key.as_slice()).map(drop)?))
            }
            _ => {
                let route = one_tree(keys.iter().map(Vec::as_slice))?;
                let mut batch = sled::Batch::default();
                for key in keys {
                    batch.remove(key);
                }
                self.with_tree_for(&route, |tree| Ok(tree.apply_batch(batch)?))
            }
        }
    }

    /// Keys (not values) under `prefix`.
    fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<sled::IVec>, StoreError> {
        self.with_tree_for(prefix, |tree| {
            tree.scan_prefix(prefix)
                .keys()
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)
        })
    }

    /// Sealed entries under `prefix`.
    fn entries_with_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<(sled::IVec, sled::IVec)>, StoreError> {
        self.with_tree_for(prefix, |tree| {
            tree.scan_prefix(prefix)
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)
        })
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        natural: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match self.get(natural, what)? {
            Some(plain) => self.decode_json(&plain, what).map(Some),
            None => Ok(None),
        }
    }

    fn decode_json<T: DeserializeOwned>(
        &self,
        plain: &[u8],
        what: &'static str,
    ) -> Result<T, StoreError> {
        serde_json::from_slice(plain).map_err(|e| self.corrupt(what, e))
    }

    fn encode_json<T: Serialize>(
        &self,
        value: &T,
        what: &'static str,
    ) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| StoreError::Invalid(format!("{what}: {e}")))
    }

    /// Deletes, with compare-and-swap, the entries under `prefix` whose
    /// opened value `expired` says so; an entry rewritten meanwhile is kept.
    /// Entries that do not open are left alone (they already read as errors)
    /// and logged.
    fn sweep(
        &self,
        prefix: &[u8],
        what: &'static str,
        expired: impl Fn(&[u8]) -> bool,
    ) -> Result<u32, StoreError> {
        let mut removed = 0u32;
        for (key, sealed) in self.entries_with_prefix(prefix)? {
            match self.open(&key, &sealed, what) {
                Ok(plain) if expired(&plain) => {
                    let swapped = self.with_tree_for(&key, |tree| {
                        Ok(tree.compare_and_swap(&key, Some(&sealed), None as Option<&[u8]>)?)
                    })?;
                    if swapped.is_ok() {
                        removed += 1;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(session = %self.session, error = %err, "skipping unreadable row in sweep")
                }
            }
        }
        Ok(removed)
    }

    /// Passes a write's result through, flushing the database first when it
    /// succeeded: `Ok` then means the write survives a crash.
    async fn durably<T>(&self, result: Result<T, StoreError>) -> WaResult<T> {
        let value = result?;
        self.flush().await?;
        Ok(value)
    }
}

/// The route (first key) of rows written as one batch: a batch is atomic
/// only within one tree, so rows of both trees in one batch are a bug.
fn one_tree<'a>(mut keys: impl Iterator<Item = &'a [u8]>) -> Result<Vec<u8>, StoreError> {
    let first = keys.next().unwrap_or_default();
    let history = in_history(first);
    if keys.any(|key| in_history(key) != history) {
        return Err(StoreError::Invalid(
            "one batch of device rows spans both databases".into(),
        ));
    }
    Ok(first.to_vec())
}

// --- key encoding -----------------------------------------------------------

fn key(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + body.len());
    key.push(kind);
    key.extend_from_slice(body);
    key
}

fn id_key(kind: u8, id: u32) -> Vec<u8> {
    key(kind, &id.to_be_bytes())
}

/// `kind ‖ (len16 ‖ part)* ‖ last`.
fn composite(kind: u8, parts: &[&str], last: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut key =
        Vec::with_capacity(1 + parts.iter().map(|p| 2 + p.len()).sum::<usize>() + last.len());
    key.push(kind);
    for part in parts {
        let len = u16::try_from(part.len())
            .map_err(|_| StoreError::Invalid(format!("key part of {} bytes", part.len())))?;
        key.extend_from_slice(&len.to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key.extend_from_slice(last);
    Ok(key)
}

/// Splits the first length-prefixed part off `rest`.
fn split_part(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let part = rest.get(2..2 + len)?;
    Some((part, &rest[2 + len..]))
}

// --- blinded keys --------------------------------------------------------------
//
// The methods build *natural* keys (`kind ‖ body`, the layout above, which
// holds JIDs, LIDs, phone numbers and Signal addresses) and store them under
// [`stored_key`]: the kind byte, then keyed hashes (see [`super::ids`]).
// Where a method needs an id back it reads it from the sealed value.

/// Blinding domain of one part of one kind's key.
fn domain(kind: u8, part: u8) -> [u8; 9] {
    let mut d = *b"device-\0\0";
    d[7] = kind;
    d[8] = part;
    d
}

/// Parts of a blinded key.
mod part {
    /// The whole natural body.
    pub const BODY: u8 = b'k';
    /// The user of a Signal address (`user@…` / `user:dev@…`).
    pub const USER: u8 = b'u';
    /// A Signal address with no user separator.
    pub const NO_USER: u8 = b'n';
    /// The group of a sender-key device row.
    pub const GROUP: u8 = b'g';
    /// The device of a sender-key device row.
    pub const DEVICE: u8 = b'd';
}

/// The user part of a Signal address, if it has one.
fn address_user(address: &[u8]) -> Option<&[u8]> {
    address
        .iter()
        .position(|&b| b == b'@' || b == b':')
        .map(|at| &address[..at])
}

/// The sled key of a natural key:
///
/// - Signal sessions and identities: `kind ‖ H(user) ‖ H(address)`, so
///   `has_signal_state_for_user` stays a prefix scan;
/// - sender-key device rows: `kind ‖ H(group) ‖ H(device)` (per-group
///   scans, per-device deletes);
/// - every other kind whose key names a person, group or chat:
///   `kind ‖ H(body)`;
/// - numeric ids, app-state names and MACs, the device row: unchanged.
pub(super) fn stored_key(blinder: &Blinder, natural: &[u8]) -> Vec<u8> {
    let Some((&k, body)) = natural.split_first() else {
        return natural.to_vec();
    };
    let mut out = Vec::with_capacity(1 + 2 * BLIND_LEN);
    out.push(k);
    match k {
        kind::IDENTITY | kind::SESSION => {
            match address_user(body) {
                Some(user) => out.extend_from_slice(&blinder.blind(&domain(k, part::USER), user)),
                None => out.extend_from_slice(&blinder.blind(&domain(k, part::NO_USER), body)),
            }
            out.extend_from_slice(&blinder.blind(&domain(k, part::BODY), body));
        }
        kind::SENDER_KEY_DEVICE => match split_part(body) {
            Some((group, device)) => {
                out.extend_from_slice(&blinder.blind(&domain(k, part::GROUP), group));
                out.extend_from_slice(&blinder.blind(&domain(k, part::DEVICE), device));
            }
            None => out.extend_from_slice(&blinder.blind(&domain(k, part::BODY), body)),
        },
        kind::SENDER_KEY
        | kind::LID_MAPPING
        | kind::PN_TO_LID
        | kind::BASE_KEY
        | kind::DEVICE_LIST
        | kind::GROUP_METADATA
        | kind::TC_TOKEN
        | kind::SENT_MESSAGE
        | kind::PENDING_INBOUND
        | kind::MSG_SECRET => {
            out.extend_from_slice(&blinder.blind(&domain(k, part::BODY), body));
        }
        _ => return natural.to_vec(),
    }
    out
}

/// The stored prefix of every sender-key device row of `group_jid`.
fn sender_key_device_prefix(blinder: &Blinder, group_jid: &str) -> Vec<u8> {
    let mut prefix = vec![kind::SENDER_KEY_DEVICE];
    prefix.extend_from_slice(&blinder.blind(
        &domain(kind::SENDER_KEY_DEVICE, part::GROUP),
        group_jid.as_bytes(),
    ));
    prefix
}

/// `len16 ‖ name ‖ payload`: a row that carries the id its key no longer
/// shows (tc tokens).
fn named(name: &str, payload: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len = u16::try_from(name.len())
        .map_err(|_| StoreError::Invalid(format!("name of {} bytes", name.len())))?;
    let mut row = Vec::with_capacity(2 + name.len() + payload.len());
    row.extend_from_slice(&len.to_be_bytes());
    row.extend_from_slice(name.as_bytes());
    row.extend_from_slice(payload);
    Ok(row)
}

fn split_named(row: &[u8]) -> Option<(&[u8], &[u8])> {
    split_part(row)
}

/// Converts a format-1 row (natural key in sled, value as the natural
/// layout stored it) to its format-2 plaintext. Only the rows whose ids
/// moved from the key into the value change.
pub(super) fn upgrade_plain(natural: &[u8], plain: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    match natural.split_first() {
        Some((&kind::SENDER_KEY_DEVICE, body)) => match split_part(body) {
            Some((_, device)) => {
                let mut row = plain;
                row.extend_from_slice(device);
                Ok(row)
            }
            None => Ok(plain),
        },
        Some((&kind::TC_TOKEN, jid)) => {
            let jid = String::from_utf8_lossy(jid);
            named(&jid, &plain)
        }
        _ => Ok(plain),
    }
}
