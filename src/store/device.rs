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
//! Signal records are opaque blobs stored as given; small fixed rows of our
//! own start with a format byte.
//!
//! # Durability
//!
//! sled only writes to disk every ~500 ms on its own. The methods below flush
//! (`flush_blocking(..).await`) before returning `Ok`, so their data survives a
//! `kill -9` the moment they return:
//!
//! - everything the library's durability contract names (whatsapp-rust
//!   `agent_docs/signal_durability.md`): `put_sessions_batch`,
//!   `put_sender_keys_batch`, `put_identities_batch`, `remove_prekey` and
//!   every `delete_*`, plus the single-row Signal puts (`put_session`,
//!   `put_identity`, `put_sender_key`);
//! - key material that is uploaded or cannot be re-derived: `store_prekey`,
//!   `store_prekeys_batch`, `mark_prekeys_uploaded`, `store_signed_prekey`,
//!   `remove_signed_prekey`, `set_sync_key`, `DeviceStore::save`/`create`;
//! - app-state sync bookkeeping that must stay consistent with the server's
//!   ltHash: `set_version`, `put_mutation_macs`, `clear_mutation_macs`;
//! - sender-key distribution status (`set_sender_key_status`, the clears):
//!   losing a "forget" mark would leave group members unable to decrypt;
//! - the inbound durability buffer: `store_pending_inbound(_batch)` and its
//!   deletes (the ack waits for them);
//! - `put_msg_secrets` (a lost secret makes later reactions/poll votes
//!   undecryptable) and `take_sent_message` (a consumed retry stays consumed).
//!
//! Not flushed (sled's periodic flush, a crash loses at most the last
//! ~500 ms; all are caches the client re-learns from the server):
//! LID↔PN mappings, device lists, base keys, group metadata, tc tokens
//! (except deletes), and `store_sent_message`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use wacore::appstate::hash::HashState;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::Device;
use wacore::store::error::Result as WaResult;
use wacore::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceListRecord, DeviceStore, LidPnMappingEntry,
    MsgSecretEntry, MsgSecretStore, PendingInboundKey, PendingInboundRow, ProtocolStore,
    SignalStore, TcTokenEntry, merge_msg_secret_expiry, merge_msg_secret_message_ts,
};

use super::crypto::Sealer;
use super::error::StoreError;
use super::ids::{BLIND_LEN, Blinder};
use super::records::{abort, tx_error};

/// The first byte of every key in a device keyspace.
mod kind {
    pub const IDENTITY: u8 = 0x01;
    pub const SESSION: u8 = 0x02;
    pub const PREKEY: u8 = 0x03;
    pub const SIGNED_PREKEY: u8 = 0x04;
    pub const SENDER_KEY: u8 = 0x05;
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

/// Format byte of the fixed-layout rows whatsd defines itself.
const ROW_FORMAT_V1: u8 = 1;
const MSG_SECRET_LEN: usize = wacore::reporting_token::MESSAGE_SECRET_SIZE;

/// wacore's store traits over one session's device keyspace.
pub struct DeviceBackend {
    session: Arc<str>,
    /// The sled tree name, bound into every value's AAD.
    tree_name: Vec<u8>,
    sealer: Arc<Sealer>,
    blinder: Blinder,
    /// `None` once the keyspace has been wiped, or this handle closed. Every sled call happens under
    /// the read lock and the wipe under the write lock, so no call can touch
    /// a dropped tree.
    tree: RwLock<Option<sled::Tree>>,
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
        tree_name: Vec<u8>,
        tree: sled::Tree,
        sealer: Arc<Sealer>,
        blinder: Blinder,
    ) -> Self {
        Self {
            session: Arc::from(session),
            tree_name,
            sealer,
            blinder,
            tree: RwLock::new(Some(tree)),
        }
    }

    pub fn session_id(&self) -> &str {
        &self.session
    }

    /// The sled tree this backend writes (`device/<blinded session id>`).
    #[doc(hidden)]
    pub fn tree_name(&self) -> &[u8] {
        &self.tree_name
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

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        // A tree's flush is the whole database's.
        let tree = self.with_tree(|tree| Ok(tree.clone()))?;
        super::flush_blocking(tree).await?;
        Ok(())
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

    fn with_tree<T>(
        &self,
        f: impl FnOnce(&sled::Tree) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.tree.read().map_err(|_| StoreError::Poisoned)?;
        match guard.as_ref() {
            Some(tree) => {
                let _gate = super::sled_gate();
                f(tree)
            }
            None => Err(StoreError::Wiped(self.session.to_string())),
        }
    }

    fn transact<T>(
        &self,
        f: impl Fn(&TransactionalTree) -> Result<T, ConflictableTransactionError<StoreError>>,
    ) -> Result<T, StoreError> {
        self.with_tree(|tree| tree.transaction(f).map_err(tx_error))
    }

    fn seal(&self, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.sealer.seal(&self.tree_name, key, plain)
    }

    fn open(&self, key: &[u8], sealed: &[u8], what: &'static str) -> Result<Vec<u8>, StoreError> {
        self.sealer
            .open(&self.tree_name, key, sealed)
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
        match self.with_tree(|tree| Ok(tree.get(&key)?))? {
            Some(sealed) => self.open(&key, &sealed, what).map(Some),
            None => Ok(None),
        }
    }

    /// Seals and writes a value under a natural key.
    fn put(&self, natural: &[u8], plain: &[u8]) -> Result<(), StoreError> {
        let key = self.k(natural);
        let sealed = self.seal(&key, plain)?;
        self.with_tree(|tree| {
            tree.insert(key, sealed)?;
            Ok(())
        })
    }

    /// Removes the value under a natural key; returns it, still sealed
    /// under `self.k(natural)`.
    fn remove(&self, natural: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        let key = self.k(natural);
        self.with_tree(|tree| Ok(tree.remove(key)?))
    }

    /// Seals `rows` (natural keys) and writes them as one atomic sled batch.
    fn put_batch<'a>(
        &self,
        rows: impl IntoIterator<Item = (Vec<u8>, &'a [u8])>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (natural, plain) in rows {
            let key = self.k(&natural);
            let sealed = self.seal(&key, plain)?;
            batch.insert(key, sealed);
        }
        self.with_tree(|tree| Ok(tree.apply_batch(batch)?))
    }

    /// Removes stored keys (as a scan returns them, or mapped with
    /// [`Self::k`]) in one atomic sled batch.
    fn remove_batch(&self, keys: impl IntoIterator<Item = Vec<u8>>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(key);
        }
        self.with_tree(|tree| Ok(tree.apply_batch(batch)?))
    }

    /// Keys (not values) under `prefix`.
    fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<sled::IVec>, StoreError> {
        self.with_tree(|tree| {
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
        self.with_tree(|tree| {
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
                    let swapped = self.with_tree(|tree| {
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

/// `ts (i64 BE) ‖ payload` rows (sent messages, pending inbound).
fn timestamped(ts: i64, payload: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(9 + payload.len());
    row.push(ROW_FORMAT_V1);
    row.extend_from_slice(&ts.to_be_bytes());
    row.extend_from_slice(payload);
    row
}

fn split_timestamped(row: &[u8]) -> Option<(i64, &[u8])> {
    if *row.first()? != ROW_FORMAT_V1 {
        return None;
    }
    let ts = i64::from_be_bytes(row.get(1..9)?.try_into().ok()?);
    Some((ts, &row[9..]))
}

/// Stored msg-secret row: secret, expires_at, message_ts.
struct MsgSecretRow {
    secret: [u8; MSG_SECRET_LEN],
    expires_at: i64,
    message_ts: i64,
}

impl MsgSecretRow {
    fn encode(&self) -> Vec<u8> {
        let mut row = Vec::with_capacity(1 + MSG_SECRET_LEN + 16);
        row.push(ROW_FORMAT_V1);
        row.extend_from_slice(&self.secret);
        row.extend_from_slice(&self.expires_at.to_be_bytes());
        row.extend_from_slice(&self.message_ts.to_be_bytes());
        row
    }

    fn decode(row: &[u8]) -> Option<Self> {
        if row.len() != 1 + MSG_SECRET_LEN + 16 || row[0] != ROW_FORMAT_V1 {
            return None;
        }
        let secret = row[1..1 + MSG_SECRET_LEN].try_into().ok()?;
        let at = 1 + MSG_SECRET_LEN;
        Some(Self {
            secret,
            expires_at: i64::from_be_bytes(row[at..at + 8].try_into().ok()?),
            message_ts: i64::from_be_bytes(row[at + 8..at + 16].try_into().ok()?),
        })
    }
}

/// Prekey rows: `uploaded flag ‖ record`.
fn prekey_row(record: &[u8], uploaded: bool) -> Vec<u8> {
    let mut row = Vec::with_capacity(1 + record.len());
    row.push(u8::from(uploaded));
    row.extend_from_slice(record);
    row
}

const DEVICE_KEY: [u8; 1] = [kind::DEVICE];

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

// --- SignalStore -------------------------------------------------------------

#[async_trait]
impl SignalStore for DeviceBackend {
    async fn put_identity(&self, address: &str, identity: [u8; 32]) -> WaResult<()> {
        self.durably(self.put(&key(kind::IDENTITY, address.as_bytes()), &identity))
            .await
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> WaResult<()> {
        if identities.is_empty() {
            return Ok(());
        }
        let rows = identities
            .iter()
            .map(|(address, identity)| (key(kind::IDENTITY, address.as_bytes()), &identity[..]));
        self.durably(self.put_batch(rows)).await
    }

    async fn load_identity(&self, address: &str) -> WaResult<Option<[u8; 32]>> {
        match self.get(&key(kind::IDENTITY, address.as_bytes()), "identity key")? {
            Some(plain) => Ok(Some(plain.as_slice().try_into().map_err(|_| {
                self.corrupt("identity key", format!("{} bytes, want 32", plain.len()))
            })?)),
            None => Ok(None),
        }
    }

    async fn delete_identity(&self, address: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::IDENTITY, address.as_bytes()));
        self.durably(result.map(drop)).await
    }

    async fn get_session(&self, address: &str) -> WaResult<Option<Bytes>> {
        Ok(self
            .get(&key(kind::SESSION, address.as_bytes()), "signal session")?
            .map(Bytes::from))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> WaResult<()> {
        self.durably(self.put(&key(kind::SESSION, address.as_bytes()), session))
            .await
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> WaResult<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        let rows = sessions
            .iter()
            .map(|(address, record)| (key(kind::SESSION, address.as_bytes()), record.as_ref()));
        self.durably(self.put_batch(rows)).await
    }

    async fn delete_session(&self, address: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::SESSION, address.as_bytes()));
        self.durably(result.map(drop)).await
    }

    async fn has_session(&self, address: &str) -> WaResult<bool> {
        let key = self.k(&key(kind::SESSION, address.as_bytes()));
        Ok(self.with_tree(|tree| Ok(tree.contains_key(&key)?))?)
    }

    async fn has_signal_state_for_user(&self, user: &str) -> WaResult<bool> {
        // Rows are bucketed by the user part before the first '@' or ':'. A
        // "user" holding one of those is not a JID user; the trait allows the
        // conservative answer.
        if user.contains(['@', ':']) {
            return Ok(true);
        }
        for kind in [kind::SESSION, kind::IDENTITY] {
            let mut prefix = vec![kind];
            prefix.extend_from_slice(
                &self
                    .blinder
                    .blind(&domain(kind, part::USER), user.as_bytes()),
            );
            let found = self.with_tree(|tree| {
                Ok(tree
                    .scan_prefix(&prefix)
                    .keys()
                    .next()
                    .transpose()?
                    .is_some())
            })?;
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> WaResult<()> {
        self.durably(self.put(&id_key(kind::PREKEY, id), &prekey_row(record, uploaded)))
            .await
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> WaResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let rows: Vec<(Vec<u8>, Vec<u8>)> = keys
            .iter()
            .map(|(id, record)| (id_key(kind::PREKEY, *id), prekey_row(record, uploaded)))
            .collect();
        let rows = rows.iter().map(|(key, row)| (key.clone(), row.as_slice()));
        self.durably(self.put_batch(rows)).await
    }

    async fn load_prekey(&self, id: u32) -> WaResult<Option<Bytes>> {
        match self.get(&id_key(kind::PREKEY, id), "prekey")? {
            Some(mut row) if !row.is_empty() => {
                row.remove(0);
                Ok(Some(Bytes::from(row)))
            }
            Some(_) => Err(self.corrupt("prekey", "empty row").into()),
            None => Ok(None),
        }
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> WaResult<Vec<(u32, Bytes)>> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(record) = self.load_prekey(id).await? {
                out.push((id, record));
            }
        }
        Ok(out)
    }

    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> WaResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // UPDATE-only inside one transaction: a key consumed (removed) before
        // or during this call is never written back.
        let result = self.transact(|tx| {
            for &id in ids {
                let key = id_key(kind::PREKEY, id);
                let Some(sealed) = tx.get(&key)? else {
                    continue;
                };
                let mut row = abort(self.open(&key, &sealed, "prekey"))?;
                match row.first_mut() {
                    Some(1) => continue,
                    Some(flag) => *flag = 1,
                    None => {
                        return Err(ConflictableTransactionError::Abort(
                            self.corrupt("prekey", "empty row"),
                        ));
                    }
                }
                tx.insert(key.as_slice(), abort(self.seal(&key, &row))?)?;
            }
            Ok(())
        });
        self.durably(result).await
    }

    async fn remove_prekey(&self, id: u32) -> WaResult<()> {
        let result = self.remove(&id_key(kind::PREKEY, id));
        self.durably(result.map(drop)).await
    }

    async fn get_max_prekey_id(&self) -> WaResult<u32> {
        let last = self.with_tree(|tree| {
            Ok(tree
                .scan_prefix([kind::PREKEY])
                .keys()
                .next_back()
                .transpose()?)
        })?;
        match last {
            Some(key) => {
                let id: [u8; 4] = key[1..]
                    .try_into()
                    .map_err(|_| self.corrupt("prekey id", format!("{}-byte key", key.len())))?;
                Ok(u32::from_be_bytes(id))
            }
            None => Ok(0),
        }
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> WaResult<()> {
        self.durably(self.put(&id_key(kind::SIGNED_PREKEY, id), record))
            .await
    }

    async fn load_signed_prekey(&self, id: u32) -> WaResult<Option<Vec<u8>>> {
        Ok(self.get(&id_key(kind::SIGNED_PREKEY, id), "signed prekey")?)
    }

    async fn load_all_signed_prekeys(&self) -> WaResult<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for (key, sealed) in self.entries_with_prefix(&[kind::SIGNED_PREKEY])? {
            let id: [u8; 4] = key[1..]
                .try_into()
                .map_err(|_| self.corrupt("signed prekey id", format!("{}-byte key", key.len())))?;
            out.push((
                u32::from_be_bytes(id),
                self.open(&key, &sealed, "signed prekey")?,
            ));
        }
        Ok(out)
    }

    async fn remove_signed_prekey(&self, id: u32) -> WaResult<()> {
        let result = self.remove(&id_key(kind::SIGNED_PREKEY, id));
        self.durably(result.map(drop)).await
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> WaResult<()> {
        self.durably(self.put(&key(kind::SENDER_KEY, address.as_bytes()), record))
            .await
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> WaResult<()> {
        if sender_keys.is_empty() {
            return Ok(());
        }
        let rows = sender_keys
            .iter()
            .map(|(address, record)| (key(kind::SENDER_KEY, address.as_bytes()), record.as_ref()));
        self.durably(self.put_batch(rows)).await
    }

    async fn get_sender_key(&self, address: &str) -> WaResult<Option<Vec<u8>>> {
        Ok(self.get(&key(kind::SENDER_KEY, address.as_bytes()), "sender key")?)
    }

    async fn delete_sender_key(&self, address: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::SENDER_KEY, address.as_bytes()));
        self.durably(result.map(drop)).await
    }
}

// --- AppSyncStore ------------------------------------------------------------

fn mutation_mac_key(name: &str, index_mac: &[u8]) -> Result<Vec<u8>, StoreError> {
    composite(kind::MUTATION_MAC, &[name], index_mac)
}

#[async_trait]
impl AppSyncStore for DeviceBackend {
    async fn get_sync_key(&self, key_id: &[u8]) -> WaResult<Option<AppStateSyncKey>> {
        Ok(self.get_json(&key(kind::SYNC_KEY, key_id), "app state sync key")?)
    }

    async fn set_sync_key(&self, key_id: &[u8], sync_key: AppStateSyncKey) -> WaResult<()> {
        let result = self
            .encode_json(&sync_key, "app state sync key")
            .and_then(|plain| self.put(&key(kind::SYNC_KEY, key_id), &plain));
        self.durably(result).await
    }

    async fn get_version(&self, name: &str) -> WaResult<HashState> {
        Ok(self
            .get_json(
                &key(kind::APP_STATE_VERSION, name.as_bytes()),
                "app state version",
            )?
            .unwrap_or_default())
    }

    async fn set_version(&self, name: &str, state: HashState) -> WaResult<()> {
        let result = self
            .encode_json(&state, "app state version")
            .and_then(|plain| self.put(&key(kind::APP_STATE_VERSION, name.as_bytes()), &plain));
        self.durably(result).await
    }

    async fn put_mutation_macs(
        &self,
        name: &str,
        _version: u64,
        mutations: &[AppStateMutationMAC],
    ) -> WaResult<()> {
        if mutations.is_empty() {
            return Ok(());
        }
        let keys = mutations
            .iter()
            .map(|m| mutation_mac_key(name, &m.index_mac))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = keys
            .into_iter()
            .zip(mutations)
            .map(|(key, m)| (key, m.value_mac.as_slice()));
        self.durably(self.put_batch(rows)).await
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> WaResult<Option<Vec<u8>>> {
        Ok(self.get(&mutation_mac_key(name, index_mac)?, "mutation MAC")?)
    }

    async fn get_mutation_macs(
        &self,
        name: &str,
        index_macs: &[[u8; 32]],
    ) -> WaResult<HashMap<[u8; 32], Vec<u8>>> {
        let mut out = HashMap::with_capacity(index_macs.len());
        for index_mac in index_macs {
            if let Some(value) = self.get(&mutation_mac_key(name, index_mac)?, "mutation MAC")? {
                out.insert(*index_mac, value);
            }
        }
        Ok(out)
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> WaResult<()> {
        if index_macs.is_empty() {
            return Ok(());
        }
        let keys = index_macs
            .iter()
            .map(|index_mac| mutation_mac_key(name, index_mac).map(|k| self.k(&k)))
            .collect::<Result<Vec<_>, _>>()?;
        self.durably(self.remove_batch(keys)).await
    }

    async fn clear_mutation_macs(&self, name: &str) -> WaResult<()> {
        let prefix = mutation_mac_key(name, &[])?;
        let result = self
            .keys_with_prefix(&prefix)
            .and_then(|keys| self.remove_batch(keys.into_iter().map(|k| k.to_vec())));
        self.durably(result).await
    }

    /// The highest key id whose row opens and decodes (as SqliteStore does):
    /// a corrupt row never becomes the key outbound patches are built with.
    async fn get_latest_sync_key_id(&self) -> WaResult<Option<Vec<u8>>> {
        let entries = self.entries_with_prefix(&[kind::SYNC_KEY])?;
        for (key, sealed) in entries.into_iter().rev() {
            let usable = self
                .open(&key, &sealed, "app state sync key")
                .and_then(|plain| self.decode_json::<AppStateSyncKey>(&plain, "app state sync key"))
                .is_ok();
            if usable {
                return Ok(Some(key[1..].to_vec()));
            }
        }
        Ok(None)
    }
}

// --- ProtocolStore -----------------------------------------------------------

impl DeviceBackend {
    /// Writes one LID mapping inside a transaction, keeping the pn→lid
    /// reverse index in step: a LID that moves to another phone drops the
    /// old phone's reverse entry if it still points at this LID.
    fn put_lid_mapping_tx(
        &self,
        tx: &TransactionalTree,
        entry: &LidPnMappingEntry,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        let lid_key = self.k(&key(kind::LID_MAPPING, entry.lid.as_bytes()));
        if let Some(sealed) = tx.get(&lid_key)? {
            let old: LidPnMappingEntry = abort(
                self.open(&lid_key, &sealed, "LID mapping")
                    .and_then(|plain| self.decode_json(&plain, "LID mapping")),
            )?;
            if old.phone_number != entry.phone_number {
                let old_pn_key = self.k(&key(kind::PN_TO_LID, old.phone_number.as_bytes()));
                if let Some(sealed) = tx.get(&old_pn_key)? {
                    let lid = abort(self.open(&old_pn_key, &sealed, "PN→LID index"))?;
                    if lid == entry.lid.as_bytes() {
                        tx.remove(old_pn_key)?;
                    }
                }
            }
        }
        let pn_key = self.k(&key(kind::PN_TO_LID, entry.phone_number.as_bytes()));
        tx.insert(
            pn_key.as_slice(),
            abort(self.seal(&pn_key, entry.lid.as_bytes()))?,
        )?;
        let plain = abort(self.encode_json(entry, "LID mapping"))?;
        tx.insert(lid_key.as_slice(), abort(self.seal(&lid_key, &plain))?)?;
        Ok(())
    }

    /// A tc-token row's plaintext: `named(jid, JSON entry)`.
    fn decode_tc_token(&self, plain: &[u8]) -> Result<(String, TcTokenEntry), StoreError> {
        let (jid, json) =
            split_named(plain).ok_or_else(|| self.corrupt("tc token", "bad row layout"))?;
        let jid = String::from_utf8(jid.to_vec()).map_err(|e| self.corrupt("tc token jid", e))?;
        Ok((jid, self.decode_json(json, "tc token")?))
    }

    fn encode_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<Vec<u8>, StoreError> {
        named(jid, &self.encode_json(entry, "tc token")?)
    }

    /// `tc_key` is the stored key.
    fn get_tc_token_tx(
        &self,
        tx: &TransactionalTree,
        tc_key: &[u8],
    ) -> Result<Option<TcTokenEntry>, ConflictableTransactionError<StoreError>> {
        match tx.get(tc_key)? {
            Some(sealed) => Ok(Some(abort(
                self.open(tc_key, &sealed, "tc token")
                    .and_then(|plain| self.decode_tc_token(&plain))
                    .map(|(_, entry)| entry),
            )?)),
            None => Ok(None),
        }
    }

    fn put_tc_token_tx(
        &self,
        tx: &TransactionalTree,
        tc_key: &[u8],
        jid: &str,
        entry: &TcTokenEntry,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        let plain = abort(self.encode_tc_token(jid, entry))?;
        tx.insert(tc_key, abort(self.seal(tc_key, &plain))?)?;
        Ok(())
    }

    fn pending_key(chat: &str, sender: &str, id: &str) -> Result<Vec<u8>, StoreError> {
        composite(kind::PENDING_INBOUND, &[chat, sender], id.as_bytes())
    }
}

#[async_trait]
impl ProtocolStore for DeviceBackend {
    /// Rows are `has_key flag ‖ device JID`.
    async fn get_sender_key_devices(&self, group_jid: &str) -> WaResult<Vec<(String, bool)>> {
        let prefix = sender_key_device_prefix(&self.blinder, group_jid);
        let mut out = Vec::new();
        for (key, sealed) in self.entries_with_prefix(&prefix)? {
            let plain = self.open(&key, &sealed, "sender key device")?;
            let (flag, device) = plain
                .split_first()
                .ok_or_else(|| self.corrupt("sender key device", "empty row"))?;
            let device = String::from_utf8(device.to_vec())
                .map_err(|e| self.corrupt("sender key device", e))?;
            out.push((device, *flag == 1));
        }
        // The order of the natural keys, not of their hashes.
        out.sort();
        Ok(out)
    }

    async fn set_sender_key_status(
        &self,
        group_jid: &str,
        entries: &[(&str, bool)],
    ) -> WaResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = entries
            .iter()
            .map(|(device, has_key)| {
                let key = composite(kind::SENDER_KEY_DEVICE, &[group_jid], device.as_bytes())?;
                let mut row = vec![u8::from(*has_key)];
                row.extend_from_slice(device.as_bytes());
                Ok((key, row))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.durably(self.put_batch(rows.iter().map(|(key, row)| (key.clone(), row.as_slice()))))
            .await
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> WaResult<()> {
        let prefix = sender_key_device_prefix(&self.blinder, group_jid);
        let result = self
            .keys_with_prefix(&prefix)
            .and_then(|keys| self.remove_batch(keys.into_iter().map(|k| k.to_vec())));
        self.durably(result).await
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> WaResult<()> {
        if device_jids.is_empty() {
            return Ok(());
        }
        // Keys only, no decryption: `kind ‖ H(group) ‖ H(device)`.
        let doomed_devices: Vec<[u8; BLIND_LEN]> = device_jids
            .iter()
            .map(|d| {
                self.blinder
                    .blind(&domain(kind::SENDER_KEY_DEVICE, part::DEVICE), d.as_bytes())
            })
            .collect();
        let result = self
            .keys_with_prefix(&[kind::SENDER_KEY_DEVICE])
            .and_then(|keys| {
                let doomed = keys.into_iter().filter(|key| {
                    key.get(1 + BLIND_LEN..)
                        .is_some_and(|device| doomed_devices.iter().any(|d| &d[..] == device))
                });
                self.remove_batch(doomed.map(|k| k.to_vec()))
            });
        self.durably(result).await
    }

    async fn clear_all_sender_key_devices(&self) -> WaResult<()> {
        let result = self
            .keys_with_prefix(&[kind::SENDER_KEY_DEVICE])
            .and_then(|keys| self.remove_batch(keys.into_iter().map(|k| k.to_vec())));
        self.durably(result).await
    }

    async fn get_lid_mapping(&self, lid: &str) -> WaResult<Option<LidPnMappingEntry>> {
        Ok(self.get_json(&key(kind::LID_MAPPING, lid.as_bytes()), "LID mapping")?)
    }

    async fn get_pn_mapping(&self, phone: &str) -> WaResult<Option<LidPnMappingEntry>> {
        let Some(lid) = self.get(&key(kind::PN_TO_LID, phone.as_bytes()), "PN→LID index")? else {
            return Ok(None);
        };
        let lid = String::from_utf8(lid).map_err(|e| self.corrupt("PN→LID index", e))?;
        let entry = self.get_lid_mapping(&lid).await?;
        Ok(entry.filter(|entry| entry.phone_number == phone))
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> WaResult<()> {
        Ok(self.transact(|tx| self.put_lid_mapping_tx(tx, entry))?)
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> WaResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        Ok(self.transact(|tx| {
            for entry in entries {
                self.put_lid_mapping_tx(tx, entry)?;
            }
            Ok(())
        })?)
    }

    async fn get_all_lid_mappings(&self) -> WaResult<Vec<LidPnMappingEntry>> {
        let mut out = Vec::new();
        for (key, sealed) in self.entries_with_prefix(&[kind::LID_MAPPING])? {
            let plain = self.open(&key, &sealed, "LID mapping")?;
            out.push(self.decode_json(&plain, "LID mapping")?);
        }
        Ok(out)
    }

    async fn save_base_key(
        &self,
        address: &str,
        message_id: &str,
        base_key: &[u8],
    ) -> WaResult<()> {
        let key = composite(kind::BASE_KEY, &[address], message_id.as_bytes())?;
        Ok(self.put(&key, base_key)?)
    }

    async fn has_same_base_key(
        &self,
        address: &str,
        message_id: &str,
        current_base_key: &[u8],
    ) -> WaResult<bool> {
        let key = composite(kind::BASE_KEY, &[address], message_id.as_bytes())?;
        Ok(self
            .get(&key, "base key")?
            .is_some_and(|stored| stored == current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> WaResult<()> {
        let key = composite(kind::BASE_KEY, &[address], message_id.as_bytes())?;
        let result = self.remove(&key);
        self.durably(result.map(drop)).await
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> WaResult<()> {
        let plain = self.encode_json(&record, "device list")?;
        Ok(self.put(&key(kind::DEVICE_LIST, record.user.as_bytes()), &plain)?)
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> WaResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let rows = records
            .iter()
            .map(|record| {
                self.encode_json(record, "device list")
                    .map(|plain| (key(kind::DEVICE_LIST, record.user.as_bytes()), plain))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.put_batch(
            rows.iter()
                .map(|(key, plain)| (key.clone(), plain.as_slice())),
        )?)
    }

    async fn get_devices(&self, user: &str) -> WaResult<Option<DeviceListRecord>> {
        Ok(self.get_json(&key(kind::DEVICE_LIST, user.as_bytes()), "device list")?)
    }

    async fn delete_devices(&self, user: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::DEVICE_LIST, user.as_bytes()));
        self.durably(result.map(drop)).await
    }

    async fn get_group_metadata(&self, group_jid: &str) -> WaResult<Option<Vec<u8>>> {
        Ok(self.get(
            &key(kind::GROUP_METADATA, group_jid.as_bytes()),
            "group metadata",
        )?)
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> WaResult<()> {
        Ok(self.put(&key(kind::GROUP_METADATA, group_jid.as_bytes()), blob)?)
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::GROUP_METADATA, group_jid.as_bytes()));
        self.durably(result.map(drop)).await
    }

    async fn get_tc_token(&self, jid: &str) -> WaResult<Option<TcTokenEntry>> {
        match self.get(&key(kind::TC_TOKEN, jid.as_bytes()), "tc token")? {
            Some(plain) => Ok(Some(self.decode_tc_token(&plain)?.1)),
            None => Ok(None),
        }
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> WaResult<()> {
        let plain = self.encode_tc_token(jid, entry)?;
        Ok(self.put(&key(kind::TC_TOKEN, jid.as_bytes()), &plain)?)
    }

    async fn delete_tc_token(&self, jid: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::TC_TOKEN, jid.as_bytes()));
        self.durably(result.map(drop)).await
    }

    async fn get_all_tc_token_jids(&self) -> WaResult<Vec<String>> {
        self.entries_with_prefix(&[kind::TC_TOKEN])?
            .into_iter()
            .map(|(key, sealed)| {
                let plain = self.open(&key, &sealed, "tc token")?;
                Ok(self.decode_tc_token(&plain)?.0)
            })
            .collect()
    }

    async fn delete_expired_tc_tokens(
        &self,
        token_cutoff: i64,
        sender_cutoff: i64,
    ) -> WaResult<u32> {
        // A row goes only when both windows are stale: the received token
        // (absent or older than token_cutoff) and the sender bucket.
        let result = self.sweep(&[kind::TC_TOKEN], "tc token", |plain| {
            let json = split_named(plain).map_or(&[][..], |(_, json)| json);
            serde_json::from_slice::<TcTokenEntry>(json).is_ok_and(|entry| {
                let token_live = !entry.token.is_empty() && entry.token_timestamp >= token_cutoff;
                let sender_live = entry.sender_timestamp.is_some_and(|ts| ts >= sender_cutoff);
                !token_live && !sender_live
            })
        });
        self.durably(result).await
    }

    async fn touch_tc_token_sender_timestamp(
        &self,
        jid: &str,
        sender_timestamp: i64,
    ) -> WaResult<()> {
        let tc_key = self.k(&key(kind::TC_TOKEN, jid.as_bytes()));
        Ok(self.transact(|tx| {
            let entry = match self.get_tc_token_tx(tx, &tc_key)? {
                Some(existing) => TcTokenEntry {
                    sender_timestamp: Some(
                        existing
                            .sender_timestamp
                            .map_or(sender_timestamp, |ts| ts.max(sender_timestamp)),
                    ),
                    ..existing
                },
                None => TcTokenEntry {
                    token: Vec::new(),
                    token_timestamp: sender_timestamp,
                    sender_timestamp: Some(sender_timestamp),
                },
            };
            self.put_tc_token_tx(tx, &tc_key, jid, &entry)
        })?)
    }

    async fn store_received_tc_token(
        &self,
        jid: &str,
        token: &[u8],
        token_timestamp: i64,
    ) -> WaResult<()> {
        let tc_key = self.k(&key(kind::TC_TOKEN, jid.as_bytes()));
        Ok(self.transact(|tx| {
            let existing = self.get_tc_token_tx(tx, &tc_key)?;
            // Newer wins; a byte-less placeholder never blocks the first real token.
            if let Some(existing) = &existing
                && !existing.token.is_empty()
                && token_timestamp < existing.token_timestamp
            {
                return Ok(());
            }
            let entry = TcTokenEntry {
                token: token.to_vec(),
                token_timestamp,
                sender_timestamp: existing.and_then(|existing| existing.sender_timestamp),
            };
            self.put_tc_token_tx(tx, &tc_key, jid, &entry)
        })?)
    }

    async fn store_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
        payload: &[u8],
    ) -> WaResult<()> {
        let key = composite(kind::SENT_MESSAGE, &[chat_jid], message_id.as_bytes())?;
        let row = timestamped(wacore::time::now_secs(), payload);
        Ok(self.put(&key, &row)?)
    }

    async fn take_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
    ) -> WaResult<Option<Vec<u8>>> {
        let key = composite(kind::SENT_MESSAGE, &[chat_jid], message_id.as_bytes())?;
        // sled's remove returns the old value: the take is atomic.
        let result = self.remove(&key);
        let taken = self.durably(result).await?;
        match taken {
            Some(sealed) => {
                let row = self.open(&self.k(&key), &sealed, "sent message")?;
                let (_, payload) = split_timestamped(&row)
                    .ok_or_else(|| self.corrupt("sent message", "bad row header"))?;
                Ok(Some(payload.to_vec()))
            }
            None => Ok(None),
        }
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> WaResult<u32> {
        let result = self.sweep(&[kind::SENT_MESSAGE], "sent message", |row| {
            split_timestamped(row).is_some_and(|(ts, _)| ts < cutoff_timestamp)
        });
        self.durably(result).await
    }

    async fn store_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
        message: &[u8],
    ) -> WaResult<()> {
        let key = Self::pending_key(chat, sender, id)?;
        let row = timestamped(wacore::time::now_secs(), message);
        self.durably(self.put(&key, &row)).await
    }

    async fn get_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> WaResult<Option<Vec<u8>>> {
        let key = Self::pending_key(chat, sender, id)?;
        match self.get(&key, "pending inbound message")? {
            Some(row) => {
                let (_, message) = split_timestamped(&row)
                    .ok_or_else(|| self.corrupt("pending inbound message", "bad row header"))?;
                Ok(Some(message.to_vec()))
            }
            None => Ok(None),
        }
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> WaResult<()> {
        let key = Self::pending_key(chat, sender, id)?;
        let result = self.remove(&key);
        self.durably(result.map(drop)).await
    }

    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> WaResult<u32> {
        let result = self.sweep(&[kind::PENDING_INBOUND], "pending inbound message", |row| {
            split_timestamped(row).is_some_and(|(ts, _)| ts < cutoff_timestamp)
        });
        self.durably(result).await
    }

    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> WaResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let now = wacore::time::now_secs();
        let rows = rows
            .iter()
            .map(|row| {
                Self::pending_key(row.chat, row.sender, row.id)
                    .map(|key| (key, timestamped(now, row.message)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.durably(self.put_batch(rows.iter().map(|(key, row)| (key.clone(), row.as_slice()))))
            .await
    }

    async fn delete_pending_inbound_batch(&self, keys: &[PendingInboundKey<'_>]) -> WaResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys = keys
            .iter()
            .map(|key| Self::pending_key(key.chat, key.sender, key.id).map(|k| self.k(&k)))
            .collect::<Result<Vec<_>, _>>()?;
        self.durably(self.remove_batch(keys)).await
    }
}

// --- MsgSecretStore ------------------------------------------------------------

fn msg_secret_key(chat: &str, sender: &str, msg_id: &str) -> Result<Vec<u8>, StoreError> {
    composite(kind::MSG_SECRET, &[chat, sender], msg_id.as_bytes())
}

impl DeviceBackend {
    fn get_msg_secret_row(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<MsgSecretRow>, StoreError> {
        match self.get(&msg_secret_key(chat, sender, msg_id)?, "message secret")? {
            Some(plain) => MsgSecretRow::decode(&plain)
                .map(Some)
                .ok_or_else(|| self.corrupt("message secret", "bad row layout")),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl MsgSecretStore for DeviceBackend {
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> WaResult<usize> {
        let stored = entries.len();
        if entries.is_empty() {
            return Ok(0);
        }
        let keys = entries
            .iter()
            .map(|e| msg_secret_key(&e.chat, &e.sender, &e.msg_id).map(|k| self.k(&k)))
            .collect::<Result<Vec<_>, _>>()?;
        // One transaction: the merge reads what earlier rows of the same
        // batch wrote, and concurrent writers cannot interleave.
        let result = self.transact(|tx| {
            for (key, entry) in keys.iter().zip(&entries) {
                let mut row = MsgSecretRow {
                    secret: entry.secret,
                    expires_at: entry.expires_at,
                    message_ts: entry.message_ts,
                };
                if let Some(sealed) = tx.get(key)? {
                    let plain = abort(self.open(key, &sealed, "message secret"))?;
                    let old = abort(
                        MsgSecretRow::decode(&plain)
                            .ok_or_else(|| self.corrupt("message secret", "bad row layout")),
                    )?;
                    row.expires_at = merge_msg_secret_expiry(old.expires_at, entry.expires_at);
                    row.message_ts = merge_msg_secret_message_ts(old.message_ts, entry.message_ts);
                }
                tx.insert(key.as_slice(), abort(self.seal(key, &row.encode()))?)?;
            }
            Ok(stored)
        });
        self.durably(result).await
    }

    async fn get_msg_secret(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> WaResult<Option<Vec<u8>>> {
        Ok(self
            .get_msg_secret_row(chat, sender, msg_id)?
            .map(|row| row.secret.to_vec()))
    }

    async fn get_msg_secret_with_ts(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> WaResult<Option<(Vec<u8>, i64)>> {
        Ok(self
            .get_msg_secret_row(chat, sender, msg_id)?
            .map(|row| (row.secret.to_vec(), row.message_ts)))
    }

    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> WaResult<u32> {
        let result = self.sweep(&[kind::MSG_SECRET], "message secret", |plain| {
            MsgSecretRow::decode(plain)
                .is_some_and(|row| row.expires_at != 0 && row.expires_at <= cutoff_timestamp)
        });
        self.durably(result).await
    }
}

// --- DeviceStore ---------------------------------------------------------------

#[async_trait]
impl DeviceStore for DeviceBackend {
    async fn save(&self, device: &Device) -> WaResult<()> {
        let result = self
            .encode_json(device, "device")
            .and_then(|plain| self.put(&DEVICE_KEY, &plain));
        self.durably(result).await
    }

    async fn load(&self) -> WaResult<Option<Device>> {
        let Some(mut device) = self.get_json::<Device>(&DEVICE_KEY, "device")? else {
            return Ok(None);
        };
        // Both are `#[serde(skip)]`: restore what `Device::new` would set, or
        // an unpaired device would register with empty DeviceProps.
        device.device_props = Arc::new(wacore::store::device::DEVICE_PROPS.clone());
        device.client_profile = wacore::client_profile::ClientProfile::web();
        Ok(Some(device))
    }

    async fn exists(&self) -> WaResult<bool> {
        Ok(self.with_tree(|tree| Ok(tree.contains_key(DEVICE_KEY)?))?)
    }

    /// Persists a fresh `Device::new()` unless one exists, so the identity
    /// (and the QR) stays stable across restarts before pairing. One device
    /// per keyspace: the id is always 1.
    async fn create(&self) -> WaResult<i32> {
        let result = self
            .encode_json(&Device::new(), "device")
            .and_then(|plain| self.seal(&DEVICE_KEY, &plain))
            .and_then(|sealed| {
                self.with_tree(|tree| {
                    // Insert only if absent; an existing device wins.
                    let _ =
                        tree.compare_and_swap(DEVICE_KEY, None as Option<&[u8]>, Some(sealed))?;
                    Ok(())
                })
            });
        self.durably(result).await?;
        Ok(1)
    }
}
