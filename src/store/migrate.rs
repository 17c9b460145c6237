//! Converts a format-1 store (session ids, tenant ids, phone numbers,
//! JIDs and LIDs readable in sled keys and tree names) to format 2 (keyed
//! hashes, see [`super::ids`]) the first time the new code opens it.
//!
//! A format-2 store is then converted to format 3 (compact versioned
//! values) in place, resumably: see [`compact`]. A format-3 store (one
//! sled database) is converted to format 4 by moving the rows that
//! accumulate to the history database, resumably: see [`split`].
//!
//! Copy and swap, never in place: sled's log keeps overwritten and removed
//! keys until it happens to reuse their segments, so rewriting keys in the
//! old database would leave the plain-text ones on disk. The conversion
//! writes a fresh database and then replaces the old one whole:
//!
//! 1. `<data>/db.migrating` is made from `<data>/db` (read only), ending
//!    with `store_meta/format = 2`, and flushed.
//! 2. It is renamed to `db.new`: that rename is the commit point.
//! 3. `db` is renamed to `db.old`, `db.new` to `db`, and `db.old` removed.
//!
//! [`prepare`] runs before every open (and before an offline backup or a
//! key rotation) and finishes whatever a crash interrupted: a
//! `db.migrating` is incomplete and removed (the old `db` is untouched, the
//! next open converts again from scratch); a `db.new` is complete and
//! swapped in; a `db.old` is removed. It holds an exclusive lock on
//! `<data>/store.lock` until the caller has opened the database, so a
//! second process starting meanwhile never mistakes a conversion in
//! progress for an interrupted one.
//!
//! What changes: records and tenants move under the hashes of their ids,
//! device keyspaces move to `device/<hex hash of the session id>` with
//! their keys hashed (see [`super::device::stored_key`]), values are
//! re-sealed with their new AAD, the on-disk phone index is dropped (it
//! lives in memory now), every session record gets its first incarnation,
//! and the webhook endpoints and outbox move under keyed hashes (see
//! `crate::webhook::convert`; a session endpoint that outlived its session
//! is dropped). Other trees (`auth_meta`, the dead letters, keyed by
//! number) are copied as they are. A value that
//! does not open with the master key is copied sealed as it was: it keeps
//! reading as an error for its owner, as before.

use std::fs;
use std::path::Path;
use std::time::Instant;

use prost::Message;

use super::crypto::Sealer;
use super::device::{compact_keyspace, stored_key, upgrade_plain};
use super::error::StoreError;
use super::ids::{self, INDEX_KEY};
use super::outbox::{DEAD_TREE, ENDPOINTS_TREE, OUTBOX_TREE, version_queue_values};
use super::{
    DB_DIR, DEVICE_TREE_PREFIX, KEY_CHECK, META_TREE, PHONE_INDEX_TREE, RECORDS_TREE,
    SESSION_DOMAIN, SLED_DEFAULT_TREE, TENANT_DOMAIN, open_db_at, sled_gate,
};
use crate::proto::v1::SessionRecord;
use crate::webhook::convert as convert_webhook;
use crate::webhook::convert::{LegacySession, LegacySessions, Renamed};

/// Meta key of the store format; absent in format 1.
const FORMAT: &[u8] = b"format";
/// Keyed hashes instead of ids in keys (see the top of this file).
const BLINDED: &[u8] = b"2";
/// Compact versioned values (see [`compact`]), one database.
const COMPACT: &[u8] = b"3";
/// What accumulates in the history database (see [`split`]).
const CURRENT: &[u8] = b"4";
const WORK_DIR: &str = "db.migrating";
const DONE_DIR: &str = "db.new";
const OLD_DIR: &str = "db.old";
const LOCK_FILE: &str = "store.lock";
/// Entries written per sled batch.
const BATCH_SIZE: usize = 512;
const TENANTS_TREE: &[u8] = b"tenants";

/// What a conversion did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MigrationReport {
    pub records: u64,
    pub tenants: u64,
    pub keyspaces: u64,
    pub device_rows: u64,
    /// Entries of other trees, copied as they were.
    pub copied: u64,
    /// Entries dropped: the on-disk phone index, webhook endpoints that
    /// outlived their session and their queued deliveries.
    pub dropped: u64,
    /// Webhook endpoints and outbox items moved under keyed hashes.
    pub webhook_entries: u64,
    /// Values that did not open, copied sealed as they were.
    pub unreadable: u64,
}

impl MigrationReport {
    fn entries(&self) -> u64 {
        self.records
            + self.tenants
            + self.device_rows
            + self.copied
            + self.dropped
            + self.webhook_entries
    }
}

/// Where a test makes the conversion stop, as if the process died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum Stop {
    Never,
    /// After this many entries are written to `db.migrating`.
    AfterEntries(u64),
    /// After the commit point (`db.new` exists), before the swap.
    BeforeSwap,
    /// Between the two renames of the swap.
    BetweenRenames,
}

/// A store's format, as its `store_meta/format` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Format {
    /// Ids in plain text in keys: converted by copy and swap ([`run`]).
    Plain,
    /// Keyed hashes, values as wacore and JSON gave them: converted in
    /// place ([`compact`]).
    Blinded,
    /// Compact values, one database: converted in place ([`split`]).
    Compact,
    Current,
    /// Written by a newer whatsd.
    Newer(String),
}

pub(super) fn format(db: &sled::Db) -> Result<Format, StoreError> {
    Ok(match db.open_tree(META_TREE)?.get(FORMAT)?.as_deref() {
        None => Format::Plain,
        Some(BLINDED) => Format::Blinded,
        Some(COMPACT) => Format::Compact,
        Some(CURRENT) => Format::Current,
        Some(other) => Format::Newer(String::from_utf8_lossy(other).into_owned()),
    })
}

/// Whether the store is in the current format.
#[cfg(test)]
pub(super) fn is_current(db: &sled::Db) -> Result<bool, StoreError> {
    Ok(format(db)? == Format::Current)
}

/// Marks a store (a new one, or a converted one) as in the current format.
pub(super) fn mark_current(db: &sled::Db) -> Result<(), StoreError> {
    mark(db, CURRENT)
}

fn mark(db: &sled::Db, format: &[u8]) -> Result<(), StoreError> {
    let meta = db.open_tree(META_TREE)?;
    {
        let _gate = sled_gate();
        meta.insert(FORMAT, format)?;
    }
    db.flush()?;
    Ok(())
}

/// Whether a converted database waits to be swapped in (the data dir holds
/// a store even if `db` is missing).
pub(super) fn in_progress(data_dir: &Path) -> bool {
    data_dir.join(DONE_DIR).exists()
}

/// Takes the data dir's lock (waiting for another process's open or
/// conversion to finish) and finishes or discards what an interrupted
/// conversion left. Keep the returned lock until the database is open.
pub(super) fn prepare(data_dir: &Path) -> Result<fs::File, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let mut options = fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let lock = options.open(&path).map_err(io_error(&path))?;
    lock.lock().map_err(io_error(&path))?;
    recover_until(data_dir, Stop::Never)?;
    Ok(lock)
}

fn recover_until(data_dir: &Path, stop: Stop) -> Result<(), StoreError> {
    let work = data_dir.join(WORK_DIR);
    let done = data_dir.join(DONE_DIR);
    let db = data_dir.join(DB_DIR);
    let old = data_dir.join(OLD_DIR);
    if work.exists() {
        tracing::info!("discarding an interrupted store conversion; converting again");
        remove_dir(&work)?;
    }
    if done.exists() {
        if db.exists() {
            if old.exists() {
                remove_dir(&old)?;
            }
            rename(&db, &old)?;
            sync_dir(data_dir)?;
            if stop == Stop::BetweenRenames {
                return Err(StoreError::Task("conversion stopped by a test"));
            }
        }
        rename(&done, &db)?;
        sync_dir(data_dir)?;
    }
    if old.exists() {
        remove_dir(&old)?;
        sync_dir(data_dir)?;
    }
    Ok(())
}

/// Converts the format-1 database `old` (whose master key `sealer` has
/// proven) and swaps the result in. `old` is closed on return; reopen
/// `<data_dir>/db`.
pub(super) fn run(
    old: sled::Db,
    data_dir: &Path,
    sealer: &Sealer,
) -> Result<MigrationReport, StoreError> {
    run_until(old, data_dir, sealer, Stop::Never)
}

fn run_until(
    old: sled::Db,
    data_dir: &Path,
    sealer: &Sealer,
    stop: Stop,
) -> Result<MigrationReport, StoreError> {
    let started = Instant::now();
    tracing::info!(
        "converting the store to format 2 (keyed hashes instead of ids in keys); \
         the old database is removed afterwards"
    );
    let work = data_dir.join(WORK_DIR);
    if work.exists() {
        remove_dir(&work)?;
    }
    let report = {
        let new = open_db_at(&work)?;
        let report = convert(&old, &new, sealer, stop)?;
        super::advance_ids_past_queues(&new, &new)?;
        // Format 2: the values are converted in place next ([`compact`]).
        mark(&new, BLINDED)?;
        report
    };
    drop(old);
    rename(&work, &data_dir.join(DONE_DIR))?;
    sync_dir(data_dir)?;
    if stop == Stop::BeforeSwap {
        return Err(StoreError::Task("conversion stopped by a test"));
    }
    recover_until(data_dir, stop)?;
    tracing::info!(
        records = report.records,
        tenants = report.tenants,
        device_keyspaces = report.keyspaces,
        device_rows = report.device_rows,
        copied = report.copied,
        webhook_entries = report.webhook_entries,
        phone_index_entries_dropped = report.dropped,
        unreadable = report.unreadable,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store converted to format 2"
    );
    if report.unreadable > 0 {
        tracing::warn!(
            unreadable = report.unreadable,
            "the conversion kept values the master key does not open; they still read as errors"
        );
    }
    Ok(report)
}

/// What a conversion to format 3 did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompactReport {
    pub keyspaces: u64,
    /// Prekey rows folded into buckets.
    pub prekeys: u64,
    /// Outbox items and dead letters given their version byte.
    pub webhook_entries: u64,
    /// Prekey rows, outbox items and dead letters left as they were (they
    /// do not open or parse).
    pub unreadable: u64,
}

/// Converts a format-2 store to format 3 in place: every device keyspace's
/// prekey rows become compact buckets (see `device::prekeys`), each
/// keyspace in one atomic sled batch; the outbox items and dead letters get
/// their version byte (see [`super::outbox`]), each tree in one batch;
/// then `store_meta/format = 3` is written and flushed (covering every
/// batch before it).
///
/// In place, unlike [`run`]: nothing readable is left behind (old and new
/// values are sealed alike, and the keys hold prekey ids only). A crash
/// leaves each keyspace either untouched or converted, and the format at 2;
/// the next open runs this again, which finds nothing to do in the
/// converted keyspaces and finishes the others.
pub(super) fn compact(db: &sled::Db, sealer: &Sealer) -> Result<CompactReport, StoreError> {
    compact_until(db, sealer, None)
}

fn compact_until(
    db: &sled::Db,
    sealer: &Sealer,
    stop_after_keyspaces: Option<u64>,
) -> Result<CompactReport, StoreError> {
    let started = Instant::now();
    tracing::info!("converting the store to format 3 (compact prekeys); in place, resumable");
    let mut report = CompactReport::default();
    for name in db.tree_names() {
        let Some(keyspace) = name.strip_prefix(DEVICE_TREE_PREFIX.as_bytes()) else {
            continue;
        };
        let tree = db.open_tree(&name)?;
        let label = format!("(keyspace {})", String::from_utf8_lossy(keyspace));
        let done = compact_keyspace(&tree, sealer, &label)?;
        report.keyspaces += 1;
        report.prekeys += done.prekeys;
        report.unreadable += done.unreadable;
        if stop_after_keyspaces == Some(report.keyspaces) {
            db.flush()?;
            return Err(StoreError::Task("conversion stopped by a test"));
        }
    }
    for name in [OUTBOX_TREE, DEAD_TREE] {
        let (converted, unreadable) = version_queue_values(&db.open_tree(name)?, sealer)?;
        report.webhook_entries += converted;
        report.unreadable += unreadable;
    }
    mark(db, COMPACT)?;
    tracing::info!(
        device_keyspaces = report.keyspaces,
        webhook_entries = report.webhook_entries,
        prekeys = report.prekeys,
        unreadable = report.unreadable,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store converted to format 3"
    );
    if report.unreadable > 0 {
        tracing::warn!(
            unreadable = report.unreadable,
            "the conversion left values that do not open; they still read as errors or not at all"
        );
    }
    Ok(report)
}

/// What [`split`] moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SplitReport {
    /// Whole trees moved (send queue, statuses, idempotency keys, contacts,
    /// media references) and their entries.
    pub trees: u64,
    pub entries: u64,
    /// Device keyspace rows moved (message secrets, sent-message copies).
    pub device_rows: u64,
    /// Device rows that did not open, moved sealed as they were.
    pub unreadable: u64,
}

/// Converts a format-3 store (one sled database) to format 4 by moving
/// what accumulates to the history database (see [`super::dbs`]): the
/// trees that belong there whole, and from every device keyspace the
/// message secrets and sent-message copies, re-sealed under their new
/// tree's name. Then `store_meta/format = 4`.
///
/// Copy, flush, then remove: each step is written to the history database
/// and flushed before the state database lets go of it, so a crash
/// anywhere leaves every row in at least one place, and the next open runs
/// this again (the format is still 3), which copies what is left and
/// overwrites what was copied with the same rows.
pub(super) fn split(dbs: &super::Dbs, sealer: &Sealer) -> Result<SplitReport, StoreError> {
    split_until(dbs, sealer, None)
}

fn split_until(
    dbs: &super::Dbs,
    sealer: &Sealer,
    stop_after_trees: Option<u64>,
) -> Result<SplitReport, StoreError> {
    let started = Instant::now();
    tracing::info!("converting the store to format 4 (a history database); in place, resumable");
    let mut report = SplitReport::default();
    for name in dbs.state.tree_names() {
        if super::dbs::in_history(&name) {
            let from = dbs.state.open_tree(&name)?;
            let mut to = Writer::new(&dbs.history, &name)?;
            for item in from.iter() {
                let (key, value) = item?;
                to.insert(&key, &value)?;
                report.entries += 1;
            }
            to.finish()?;
            dbs.history.flush()?;
            {
                let _gate = sled_gate();
                dbs.state.drop_tree(&name)?;
            }
            dbs.state.flush()?;
            report.trees += 1;
        } else if let Some(keyspace) = name.strip_prefix(DEVICE_TREE_PREFIX.as_bytes()) {
            let from = dbs.state.open_tree(&name)?;
            let history_name = [super::DEVICE_HISTORY_PREFIX.as_bytes(), keyspace].concat();
            let mut to = Writer::new(&dbs.history, &history_name)?;
            let mut moved = Vec::new();
            for item in from.iter() {
                let (key, sealed) = item?;
                if !key
                    .first()
                    .copied()
                    .is_some_and(super::device::is_history_kind)
                {
                    continue;
                }
                match sealer.open(&name, &key, &sealed) {
                    Ok(plain) => to.insert(&key, &sealer.seal(&history_name, &key, &plain)?)?,
                    Err(_) => {
                        report.unreadable += 1;
                        to.insert(&key, &sealed)?;
                    }
                }
                moved.push(key);
            }
            if moved.is_empty() {
                continue;
            }
            to.finish()?;
            dbs.history.flush()?;
            for chunk in moved.chunks(BATCH_SIZE) {
                let mut batch = sled::Batch::default();
                for key in chunk {
                    batch.remove(key);
                }
                let _gate = sled_gate();
                from.apply_batch(batch)?;
            }
            dbs.state.flush()?;
            report.device_rows += moved.len() as u64;
            report.trees += 1;
        } else {
            continue;
        }
        if stop_after_trees == Some(report.trees) {
            return Err(StoreError::Task("conversion stopped by a test"));
        }
    }
    mark(&dbs.state, CURRENT)?;
    tracing::info!(
        trees = report.trees,
        entries = report.entries,
        device_rows = report.device_rows,
        unreadable = report.unreadable,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store converted to format 4"
    );
    Ok(report)
}

/// Writes entries to one tree of the new database in batches.
struct Writer {
    tree: sled::Tree,
    batch: sled::Batch,
    pending: usize,
}

impl Writer {
    fn new(db: &sled::Db, name: &[u8]) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree(name)?,
            batch: sled::Batch::default(),
            pending: 0,
        })
    }

    fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.batch.insert(key, value);
        self.pending += 1;
        if self.pending == BATCH_SIZE {
            self.finish()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        let _gate = sled_gate();
        self.tree.apply_batch(std::mem::take(&mut self.batch))?;
        self.pending = 0;
        Ok(())
    }
}

fn convert(
    old: &sled::Db,
    new: &sled::Db,
    sealer: &Sealer,
    stop: Stop,
) -> Result<MigrationReport, StoreError> {
    let old_meta = old.open_tree(META_TREE)?;
    let mut meta = Writer::new(new, META_TREE.as_bytes())?;
    for key in [KEY_CHECK, INDEX_KEY] {
        if let Some(value) = old_meta.get(key)? {
            meta.insert(key, &value)?;
        }
    }
    meta.finish()?;
    // A format-1 store made before the index key existed gets one here.
    let blinder = ids::load_or_create(new, sealer)?;

    let mut report = MigrationReport::default();
    // Sessions first (their incarnations), then webhook endpoints (which
    // session endpoints survive), so that the outbox can follow both.
    let sessions = legacy_sessions(old, sealer)?;
    let mut renamed = Renamed::new();
    if old
        .tree_names()
        .iter()
        .any(|n| n == ENDPOINTS_TREE.as_bytes())
    {
        let name = ENDPOINTS_TREE.as_bytes();
        let entries = {
            let _gate = sled_gate();
            old.open_tree(name)?.iter().collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Writer::new(new, name)?;
        for (key, value) in entries {
            let Ok(plain) = sealer.open(name, &key, &value) else {
                report.unreadable += 1;
                continue;
            };
            if let Some((new_key, new_plain)) =
                convert_webhook::endpoint(&plain, &sessions, &blinder, &mut renamed)
            {
                out.insert(&new_key, &sealer.seal(name, &new_key, &new_plain)?)?;
                report.webhook_entries += 1;
            } else {
                report.dropped += 1;
            }
            if stop == Stop::AfterEntries(report.entries()) {
                out.finish()?;
                new.flush()?;
                return Err(StoreError::Task("conversion stopped by a test"));
            }
        }
        out.finish()?;
    }
    for name in old.tree_names() {
        if name == SLED_DEFAULT_TREE
            || name == META_TREE.as_bytes()
            || name == ENDPOINTS_TREE.as_bytes()
        {
            continue;
        }
        // Read under the gate (see `sled_gate`), one tree at a time: the
        // largest, a device keyspace, is about a thousand short rows.
        let entries = {
            let _gate = sled_gate();
            old.open_tree(&name)?
                .iter()
                .collect::<Result<Vec<_>, _>>()?
        };
        if name == PHONE_INDEX_TREE.as_bytes() {
            report.dropped += entries.len() as u64;
            continue;
        }
        // (new tree name, how keys and values change)
        let device_session = name.strip_prefix(DEVICE_TREE_PREFIX.as_bytes());
        if name == OUTBOX_TREE.as_bytes() {
            let mut out = Writer::new(new, &name)?;
            for (key, value) in entries {
                let Ok(plain) = sealer.open(&name, &key, &value) else {
                    report.unreadable += 1;
                    continue;
                };
                match convert_webhook::outbox_item(&key, &plain, &sessions, &blinder, &renamed) {
                    Some((new_key, new_plain)) => {
                        out.insert(&new_key, &sealer.seal(&name, &new_key, &new_plain)?)?;
                        report.webhook_entries += 1;
                    }
                    None => report.dropped += 1,
                }
                if stop == Stop::AfterEntries(report.entries()) {
                    out.finish()?;
                    new.flush()?;
                    return Err(StoreError::Task("conversion stopped by a test"));
                }
            }
            out.finish()?;
            continue;
        }
        let (new_name, kind) = if name == RECORDS_TREE.as_bytes() {
            (name.to_vec(), Kind::Id(SESSION_DOMAIN))
        } else if name == TENANTS_TREE {
            (name.to_vec(), Kind::Id(TENANT_DOMAIN))
        } else if let Some(session) = device_session {
            report.keyspaces += 1;
            let hashed = crate::hex::hex(&blinder.blind(SESSION_DOMAIN, session));
            (
                format!("{DEVICE_TREE_PREFIX}{hashed}").into_bytes(),
                Kind::Device,
            )
        } else {
            (name.to_vec(), Kind::Verbatim)
        };
        let mut out = Writer::new(new, &new_name)?;
        for (key, value) in entries {
            let new_key = match kind {
                Kind::Id(domain) => blinder.blind(domain, &key).to_vec(),
                Kind::Device => stored_key(&blinder, &key),
                Kind::Verbatim => key.to_vec(),
            };
            let new_value = match kind {
                Kind::Verbatim => {
                    report.copied += 1;
                    value.to_vec()
                }
                _ => {
                    match kind {
                        Kind::Id(d) if d == SESSION_DOMAIN => report.records += 1,
                        Kind::Id(_) => report.tenants += 1,
                        _ => report.device_rows += 1,
                    }
                    match sealer.open(&name, &key, &value) {
                        Ok(plain) => {
                            let plain = match kind {
                                Kind::Device => upgrade_plain(&key, plain)?,
                                Kind::Id(d) if d == SESSION_DOMAIN => {
                                    with_incarnation(&key, plain, &sessions)
                                }
                                _ => plain,
                            };
                            sealer.seal(&new_name, &new_key, &plain)?
                        }
                        Err(_) => {
                            report.unreadable += 1;
                            value.to_vec()
                        }
                    }
                }
            };
            out.insert(&new_key, &new_value)?;
            if stop == Stop::AfterEntries(report.entries()) {
                out.finish()?;
                new.flush()?;
                return Err(StoreError::Task("conversion stopped by a test"));
            }
        }
        out.finish()?;
    }
    new.flush()?;
    Ok(report)
}

/// What each format-1 session record says about its owner, with the
/// incarnation its converted record gets (see `crate::session::Owner`).
fn legacy_sessions(old: &sled::Db, sealer: &Sealer) -> Result<LegacySessions, StoreError> {
    let mut out = LegacySessions::new();
    let records = {
        let _gate = sled_gate();
        old.open_tree(RECORDS_TREE)?
            .iter()
            .collect::<Result<Vec<_>, _>>()?
    };
    for (key, value) in records {
        let Ok(plain) = sealer.open(RECORDS_TREE.as_bytes(), &key, &value) else {
            continue;
        };
        let Ok(record) = SessionRecord::decode(plain.as_slice()) else {
            continue;
        };
        let incarnation = if record.incarnation.is_empty() {
            crate::session::new_incarnation()
        } else {
            record.incarnation
        };
        out.insert(
            String::from_utf8_lossy(&key).into_owned(),
            LegacySession {
                tenant: record.tenant,
                created_at_ms: record.created_at_ms,
                incarnation,
            },
        );
    }
    Ok(out)
}

/// A session record's plain bytes with the incarnation chosen for it.
fn with_incarnation(key: &[u8], plain: Vec<u8>, sessions: &LegacySessions) -> Vec<u8> {
    let Some(session) = sessions.get(String::from_utf8_lossy(key).as_ref()) else {
        return plain;
    };
    match SessionRecord::decode(plain.as_slice()) {
        Ok(mut record) if record.incarnation.is_empty() => {
            record.incarnation = session.incarnation.clone();
            record.encode_to_vec()
        }
        _ => plain,
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// Keyed by an id: the key becomes its hash in this domain.
    Id(&'static [u8]),
    /// A device keyspace.
    Device,
    /// Someone else's tree: copied as it is.
    Verbatim,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

fn remove_dir(path: &Path) -> Result<(), StoreError> {
    fs::remove_dir_all(path).map_err(io_error(path))
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::rename(from, to).map_err(io_error(from))
}

/// Makes the renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::store::{MasterKey, Store, backup, check_master_key, open_db};
    use wacore::store::traits::{DeviceStore, ProtocolStore};

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
    }

    /// The format-1 fixture restored (raw) into a fresh data dir.
    fn format_1_store() -> (tempfile::TempDir, PathBuf, MasterKey) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let key = MasterKey::from_file(&fixture().join("master.key")).unwrap();
        let bytes = fs::read(fixture().join("store.backup")).unwrap();
        backup::restore(&data, &bytes, Some(&key)).unwrap();
        (dir, data, key)
    }

    /// Everything the fixture should still say after a conversion.
    async fn assert_converted(data: &Path, key: &MasterKey) {
        let store = Store::open(data, key).unwrap();
        for leftover in [WORK_DIR, DONE_DIR, OLD_DIR] {
            assert!(!data.join(leftover).exists(), "{leftover} left behind");
        }
        let records = store.list_records().unwrap();
        assert_eq!(records.len(), 1);
        let record = records[0].1.as_ref().unwrap();
        assert_eq!(
            (
                record.id.as_str(),
                record.tenant.as_str(),
                record.phone.as_str()
            ),
            ("shop-qv55k", "tenant-zq81x", "15557770123")
        );
        assert_eq!(
            store.sessions_for_phone("15557770123").unwrap(),
            ["shop-qv55k"]
        );
        assert_eq!(
            store.get_tenant("tenant-zq81x").unwrap().unwrap().id,
            "tenant-zq81x"
        );
        let device = store.device_backend("shop-qv55k").unwrap();
        assert!(device.load().await.unwrap().is_some(), "paired device");
        assert!(!device.get_all_lid_mappings().await.unwrap().is_empty());
        assert_eq!(store.device_keyspaces(), [store.keyspace_id("shop-qv55k")]);
    }

    #[tokio::test]
    async fn a_conversion_stopped_anywhere_finishes_on_the_next_open() {
        for stop in [
            Stop::AfterEntries(1),
            Stop::AfterEntries(600),
            Stop::BeforeSwap,
            Stop::BetweenRenames,
        ] {
            let (_dir, data, key) = format_1_store();
            {
                let db = open_db(&data).unwrap();
                let sealer = Sealer::new(&key);
                assert!(matches!(
                    check_master_key(&db, &sealer, &data),
                    Ok(crate::store::KeyCheck::Proven)
                ));
                assert!(!is_current(&db).unwrap());
                let err = run_until(db, &data, &sealer, stop).unwrap_err();
                assert!(matches!(err, StoreError::Task(_)), "{stop:?}: {err:?}");
            }
            let left = [WORK_DIR, DONE_DIR, OLD_DIR, DB_DIR].map(|d| data.join(d).exists());
            match stop {
                Stop::AfterEntries(_) => assert_eq!(left, [true, false, false, true]),
                Stop::BeforeSwap => assert_eq!(left, [false, true, false, true]),
                _ => assert_eq!(left, [false, true, true, false]),
            }
            assert!(crate::store::store_exists(&data), "{stop:?}");
            assert_converted(&data, &key).await;
        }
    }

    #[tokio::test]
    async fn a_rekeyed_format_1_store_converts_with_the_new_key() {
        let (_dir, data, old) = format_1_store();
        let new = MasterKey::generate().unwrap();
        crate::store::rekey(&data, &old, &new).unwrap();
        assert_converted(&data, &new).await;
        // And a rotation of the converted store keeps every hashed key valid.
        let newer = MasterKey::generate().unwrap();
        crate::store::rekey(&data, &new, &newer).unwrap();
        assert_converted(&data, &newer).await;
    }

    #[tokio::test]
    async fn a_rotation_after_a_crash_before_the_swap_rotates_the_converted_store() {
        let (_dir, data, old) = format_1_store();
        {
            let db = open_db(&data).unwrap();
            let err = run_until(db, &data, &Sealer::new(&old), Stop::BeforeSwap).unwrap_err();
            assert!(matches!(err, StoreError::Task(_)), "{err:?}");
        }
        let new = MasterKey::generate().unwrap();
        crate::store::rekey(&data, &old, &new).unwrap();
        assert_converted(&data, &new).await;
    }

    #[tokio::test]
    async fn an_offline_backup_waits_for_the_conversion() {
        let (_dir, data, key) = format_1_store();
        let err = backup::backup_offline(&data).unwrap_err();
        assert!(err.to_string().contains("format 1"), "{err}");
        drop(Store::open(&data, &key).unwrap());
        let bytes = loop {
            match backup::backup_offline(&data) {
                Err(e) if backup::is_locked(&e) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => break other.unwrap(),
            }
        };
        for id in ["shop-qv55k", "15557770123", "100000000000001"] {
            assert!(
                !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
                "{id} in the backup"
            );
        }
        // It restores into a format-2 store that opens without converting.
        let to = tempfile::tempdir().unwrap();
        backup::restore(to.path(), &bytes, Some(&key)).unwrap();
        assert!(is_current(&open_db(to.path()).unwrap()).unwrap());
        assert_converted(to.path(), &key).await;
    }

    #[tokio::test]
    async fn a_format_1_store_older_than_the_index_key_gets_one() {
        let (_dir, data, key) = format_1_store();
        {
            let db = open_db(&data).unwrap();
            assert!(
                db.open_tree(META_TREE)
                    .unwrap()
                    .remove(INDEX_KEY)
                    .unwrap()
                    .is_some()
            );
            db.flush().unwrap();
        }
        assert_converted(&data, &key).await;
    }

    #[tokio::test]
    async fn a_wrong_key_converts_nothing() {
        let (_dir, data, _key) = format_1_store();
        let wrong = MasterKey::generate().unwrap();
        assert!(matches!(
            Store::open(&data, &wrong),
            Err(StoreError::WrongMasterKey { .. })
        ));
        assert!(!data.join(WORK_DIR).exists() && !data.join(DONE_DIR).exists());
        assert!(!is_current(&open_db(&data).unwrap()).unwrap());
    }
}

/// Format 2 → 3, against `tests/fixtures/store-v2` (written by whatsd at
/// commit 0173315, the last one before compact values; see its README) and
/// against format-2 prekey rows written by [`format_2_prekeys`], a copy of
/// that commit's writer.
#[cfg(test)]
mod format_3_tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::store::device::is_prekey_kind;
    use crate::store::{MasterKey, Store, backup, open_db};
    use wacore::store::traits::{DeviceStore, SignalStore};

    const SESSION: &str = "desk-r7m2x";
    const OLD_PREKEY: u8 = 0x03;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2")
    }

    fn format_2_store() -> (tempfile::TempDir, PathBuf, MasterKey) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let key = MasterKey::from_file(&fixture().join("master.key")).unwrap();
        let bytes = fs::read(fixture().join("store.backup")).unwrap();
        backup::restore(&data, &bytes, Some(&key)).unwrap();
        (dir, data, key)
    }

    /// Tree name → prekey id → (uploaded, record).
    type OldPrekeys = BTreeMap<Vec<u8>, BTreeMap<u32, (bool, Vec<u8>)>>;

    /// Every format-2 prekey row of every device keyspace, opened with the
    /// master key.
    fn old_prekeys(db: &sled::Db, key: &MasterKey) -> OldPrekeys {
        let sealer = Sealer::new(key);
        let mut out = BTreeMap::new();
        for name in db.tree_names() {
            if !name.starts_with(DEVICE_TREE_PREFIX.as_bytes()) {
                continue;
            }
            let mut rows = BTreeMap::new();
            for entry in db.open_tree(&name).unwrap().scan_prefix([OLD_PREKEY]) {
                let (k, v) = entry.unwrap();
                let plain = sealer.open(&name, &k, &v).unwrap();
                let id = u32::from_be_bytes(k[1..].try_into().unwrap());
                rows.insert(id, (plain[0] == 1, plain[1..].to_vec()));
            }
            out.insert(name.to_vec(), rows);
        }
        out
    }

    /// Format-2 prekey rows (`0x03 ‖ id BE` → sealed `uploaded ‖ record`),
    /// as whatsd wrote them up to commit 0173315, in a new keyspace.
    fn format_2_prekeys(db: &sled::Db, key: &MasterKey, tree: &str, ids: std::ops::Range<u32>) {
        let sealer = Sealer::new(key);
        let tree = db.open_tree(tree).unwrap();
        for id in ids {
            let private =
                wacore::libsignal::protocol::PrivateKey::deserialize(&[id as u8 | 1; 32]).unwrap();
            let pair = wacore::libsignal::protocol::KeyPair {
                public_key: private.public_key().unwrap(),
                private_key: private,
            };
            let mut row = vec![u8::from(id % 2 == 0)];
            wacore::libsignal::store::record_helpers::encode_pre_key_record_to(id, &pair, &mut row);
            let k = [&[OLD_PREKEY][..], &id.to_be_bytes()].concat();
            tree.insert(&k, sealer.seal(tree.name().as_ref(), &k, &row).unwrap())
                .unwrap();
        }
        db.flush().unwrap();
    }

    /// What a converted store must say: the current format, no format-2
    /// prekey row left, every old prekey loading byte for byte with its
    /// uploaded flag, and the rest of the fixture as it was.
    async fn assert_compacted(data: &Path, key: &MasterKey, old: &OldPrekeys) {
        let store = Store::open(data, key).unwrap();
        assert!(is_current(&store.inner.dbs.state).unwrap());
        let sealer = Sealer::new(key);
        for (name, rows) in old {
            let tree = store.inner.dbs.state.open_tree(name).unwrap();
            assert_eq!(
                tree.scan_prefix([OLD_PREKEY]).count(),
                0,
                "format-2 prekey rows left"
            );
            let mut seen = BTreeMap::new();
            for entry in tree.iter() {
                let (k, v) = entry.unwrap();
                if !is_prekey_kind(k[0]) {
                    continue;
                }
                let plain = sealer.open(name, &k, &v).unwrap();
                let bucket = crate::store::device::decode_prekey_bucket("test", &plain).unwrap();
                for p in bucket.prekeys {
                    assert!(p.record.is_empty(), "prekey {} kept verbatim", p.id);
                    seen.insert(p.id, p.uploaded);
                }
            }
            let expected: BTreeMap<u32, bool> =
                rows.iter().map(|(id, (up, _))| (*id, *up)).collect();
            assert_eq!(seen, expected, "uploaded flags");
        }
        let records = store.list_records().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].1.as_ref().unwrap().id, SESSION);
        let device = store.device_backend(SESSION).unwrap();
        assert!(device.load().await.unwrap().is_some(), "paired device");
        let name = format!("{DEVICE_TREE_PREFIX}{}", store.keyspace_id(SESSION)).into_bytes();
        let rows = &old[&name];
        assert!(rows.len() > 800, "{} prekeys in the fixture", rows.len());
        for (id, (_, record)) in rows {
            let loaded = device.load_prekey(*id).await.unwrap().expect("prekey kept");
            assert_eq!(&loaded[..], &record[..], "prekey {id}");
        }
        assert_eq!(
            device.get_max_prekey_id().await.unwrap(),
            *rows.keys().max().unwrap()
        );
        assert!(
            !store.outbox_all().unwrap().is_empty(),
            "queued webhook item"
        );
        assert!(
            !store.dead_letters(0, 100).unwrap().is_empty(),
            "dead letters"
        );
    }

    /// Keys and stored values of every device keyspace.
    fn keyspace_bytes(db: &sled::Db) -> usize {
        db.tree_names()
            .iter()
            .filter(|name| name.starts_with(DEVICE_TREE_PREFIX.as_bytes()))
            .flat_map(|name| db.open_tree(name).unwrap().iter())
            .map(|entry| entry.map(|(k, v)| k.len() + v.len()).unwrap())
            .sum()
    }

    #[tokio::test]
    async fn a_format_2_store_converts_on_open() {
        let (_dir, data, key) = format_2_store();
        let (old, before) = {
            let db = open_db(&data).unwrap();
            assert_eq!(format(&db).unwrap(), Format::Blinded);
            (old_prekeys(&db, &key), keyspace_bytes(&db))
        };
        assert_compacted(&data, &key, &old).await;
        let after = keyspace_bytes(&open_db(&data).unwrap());
        println!("paired device keyspace: {before} B in format 2, {after} B in format 3");
        assert!(
            after * 2 <= before,
            "{after} B is more than half of {before} B"
        );
        // And once more: nothing left to do.
        assert_compacted(&data, &key, &old).await;
    }

    #[tokio::test]
    async fn a_conversion_to_format_3_stopped_between_keyspaces_finishes_on_the_next_open() {
        for stop in [1, 2] {
            let (_dir, data, key) = format_2_store();
            let old = {
                let db = open_db(&data).unwrap();
                format_2_prekeys(&db, &key, "device/0123456789abcdef", 0..200);
                let old = old_prekeys(&db, &key);
                assert_eq!(old.len(), 2);
                let err = compact_until(&db, &Sealer::new(&key), Some(stop)).unwrap_err();
                assert!(matches!(err, StoreError::Task(_)), "{err:?}");
                assert_eq!(
                    format(&db).unwrap(),
                    Format::Blinded,
                    "not marked before the end"
                );
                let left: usize = old
                    .keys()
                    .map(|name| {
                        db.open_tree(name)
                            .unwrap()
                            .scan_prefix([OLD_PREKEY])
                            .count()
                    })
                    .filter(|&n| n > 0)
                    .count();
                assert_eq!(left, 2 - stop as usize, "keyspaces still in format 2");
                old
            };
            assert_compacted(&data, &key, &old).await;
        }
    }

    #[tokio::test]
    async fn a_store_in_a_newer_format_is_refused() {
        let (_dir, data, key) = format_2_store();
        {
            let db = open_db(&data).unwrap();
            mark(&db, b"5").unwrap();
        }
        let err = Store::open(&data, &key).unwrap_err();
        assert!(
            matches!(&err, StoreError::NewerFormat { found, .. } if found == "5"),
            "{err:?}"
        );
        assert!(err.to_string().contains("newer whatsd"), "{err}");
    }
}

/// Format 3 → 4 (the history database), against a format-3 store made by
/// [`format_3_layout`]: today's writer, then every history row moved back
/// where format 3 kept it (one database, device rows sealed under
/// `device/<hex>`).
#[cfg(test)]
mod format_4_tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::store::dbs::in_history;
    use crate::store::{DEVICE_HISTORY_PREFIX, Dbs, MasterKey, Store, backup};
    use wacore::store::traits::{
        DeviceStore, MsgSecretEntry, MsgSecretStore, ProtocolStore, SignalStore,
    };

    const SESSION: &str = "desk-r7m2x";
    const CHAT: &str = "15550001111@s.whatsapp.net";
    const PREFIX: [u8; 32] = [7; 32];

    fn status_key() -> Vec<u8> {
        [&PREFIX[..], b"3EB0AA"].concat()
    }

    /// A store with a queued send (status, idempotency key), a message
    /// secret, a sent-message copy and a Signal session.
    async fn written(data: &Path, key: &MasterKey) {
        let store = Store::open(data, key).unwrap();
        store
            .send_enqueue(
                &PREFIX,
                b"queued item",
                (&status_key(), b"queued"),
                Some((&[&PREFIX[..], b"idem"].concat(), b"3EB0AA")),
            )
            .await
            .unwrap();
        let device = store.device_backend(SESSION).unwrap();
        device
            .put_msg_secrets(vec![MsgSecretEntry {
                chat: Arc::from(CHAT),
                sender: Arc::from(CHAT),
                msg_id: Arc::from("3EB0AA"),
                secret: [9; 32],
                expires_at: 0,
                message_ts: 1_700_000_000,
            }])
            .await
            .unwrap();
        device
            .store_sent_message(CHAT, "3EB0BB", b"sent payload")
            .await
            .unwrap();
        device
            .put_session("15550001111.0:1", b"signal session")
            .await
            .unwrap();
        store.flush().await.unwrap();
    }

    /// Moves every history row back where format 3 kept it and marks the
    /// store format 3: the layout whatsd wrote up to commit 4c02508.
    fn format_3_layout(data: &Path, key: &MasterKey) {
        let sealer = Sealer::new(key);
        let dbs = Dbs::open(data).unwrap();
        for (name, _) in dbs.trees() {
            if !in_history(&name) {
                continue;
            }
            let from = dbs.history.open_tree(&name).unwrap();
            let state_name = match name.strip_prefix(DEVICE_HISTORY_PREFIX.as_bytes()) {
                Some(id) => [DEVICE_TREE_PREFIX.as_bytes(), id].concat(),
                None => name.to_vec(),
            };
            let to = dbs.state.open_tree(&state_name).unwrap();
            for entry in from.iter() {
                let (k, v) = entry.unwrap();
                let plain = sealer.open(&name, &k, &v).unwrap();
                to.insert(&k, sealer.seal(&state_name, &k, &plain).unwrap())
                    .unwrap();
            }
            dbs.history.drop_tree(&name).unwrap();
        }
        mark(&dbs.state, COMPACT).unwrap();
        dbs.flush().unwrap();
    }

    fn format_3_store() -> (tempfile::TempDir, PathBuf, MasterKey) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let key = MasterKey::from_bytes([5; 32]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(written(&data, &key));
        format_3_layout(&data, &key);
        (dir, data, key)
    }

    /// Rows of `db` whose tree or kind says they belong in history.
    fn history_rows(db: &sled::Db) -> usize {
        db.tree_names()
            .iter()
            .map(|name| {
                let tree = db.open_tree(name).unwrap();
                if in_history(name) {
                    tree.len()
                } else if name.starts_with(DEVICE_TREE_PREFIX.as_bytes()) {
                    tree.iter()
                        .keys()
                        .filter(|k| crate::store::device::is_history_kind(k.as_ref().unwrap()[0]))
                        .count()
                } else {
                    0
                }
            })
            .sum()
    }

    /// What a split store must say: format 4, no history row left in the
    /// state database, and everything written reading back as written.
    async fn assert_split(data: &Path, key: &MasterKey) {
        let store = Store::open(data, key).unwrap();
        assert!(is_current(&store.inner.dbs.state).unwrap());
        assert_eq!(history_rows(&store.inner.dbs.state), 0, "history rows left");
        // send_queue, send_status, send_idempotency, device_history/<hex>.
        assert!(history_rows(&store.inner.dbs.history) >= 5);
        assert_eq!(
            store.send_status(&status_key()).unwrap().unwrap(),
            b"queued"
        );
        let queued = store.send_queue(&PREFIX).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].value, b"queued item");
        assert_eq!(
            store
                .send_idempotency(&[&PREFIX[..], b"idem"].concat())
                .unwrap()
                .unwrap(),
            b"3EB0AA"
        );
        let device = store.device_backend(SESSION).unwrap();
        assert_eq!(
            device.get_msg_secret(CHAT, CHAT, "3EB0AA").await.unwrap(),
            Some(vec![9; 32])
        );
        assert_eq!(
            device
                .get_session("15550001111.0:1")
                .await
                .unwrap()
                .as_deref(),
            Some(&b"signal session"[..])
        );
        assert_eq!(
            device.take_sent_message(CHAT, "3EB0BB").await.unwrap(),
            Some(b"sent payload".to_vec())
        );
    }

    #[tokio::test]
    async fn a_format_3_store_splits_on_open() {
        let (_dir, data, key) = tokio::task::spawn_blocking(format_3_store).await.unwrap();
        {
            let dbs = Dbs::open(&data).unwrap();
            assert_eq!(format(&dbs.state).unwrap(), Format::Compact);
            assert_eq!(history_rows(&dbs.history), 0);
            assert!(history_rows(&dbs.state) >= 5);
        }
        assert_split(&data, &key).await;
    }

    #[tokio::test]
    async fn a_split_stopped_anywhere_finishes_on_the_next_open() {
        for stop_after in 1..=4 {
            let (_dir, data, key) = tokio::task::spawn_blocking(format_3_store).await.unwrap();
            {
                let dbs = Dbs::open(&data).unwrap();
                let stopped = split_until(&dbs, &Sealer::new(&key), Some(stop_after));
                assert!(stopped.is_err(), "stopped after {stop_after} trees");
                assert_eq!(format(&dbs.state).unwrap(), Format::Compact);
            }
            assert_split(&data, &key).await;
        }
    }

    #[tokio::test]
    async fn a_backup_of_a_split_store_restores_both_databases() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::from_bytes([5; 32]);
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        written(&from, &key).await;
        let bytes = {
            let store = Store::open(&from, &key).unwrap();
            tokio::task::spawn_blocking(move || store.backup())
                .await
                .unwrap()
                .unwrap()
        };
        backup::restore(&to, &bytes, Some(&key)).unwrap();
        assert_split(&to, &key).await;
        // A format-3 backup restores too: converted when it is opened.
        let old = dir.path().join("old");
        let (_dir3, data3, _) = tokio::task::spawn_blocking(format_3_store).await.unwrap();
        let bytes = backup::backup_offline(&data3).unwrap();
        backup::restore(&old, &bytes, Some(&key)).unwrap();
        assert_split(&old, &key).await;
    }

    #[tokio::test]
    async fn a_wipe_empties_and_a_delete_drops_both_databases_trees() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::from_bytes([5; 32]);
        written(dir.path(), &key).await;
        let store = Store::open(dir.path(), &key).unwrap();
        let id = store.keyspace_id(SESSION);
        assert_eq!(store.device_keyspaces(), std::slice::from_ref(&id));
        let history_name = format!("{DEVICE_HISTORY_PREFIX}{id}");
        let state_name = format!("{DEVICE_TREE_PREFIX}{id}");
        let has = |db: &sled::Db, name: &str| db.tree_names().iter().any(|n| n == name.as_bytes());
        let len = |db: &sled::Db, name: &str| db.open_tree(name).unwrap().len();
        assert!(len(&store.inner.dbs.history, &history_name) > 0);
        // A wipe (logout, reset, unlink) empties both trees and keeps them
        // for the next pairing.
        assert!(store.wipe_device(SESSION).await.unwrap());
        assert_eq!(len(&store.inner.dbs.history, &history_name), 0);
        assert_eq!(len(&store.inner.dbs.state, &state_name), 0);
        let fresh = store.device_backend(SESSION).unwrap();
        assert!(!fresh.exists().await.unwrap());
        assert_eq!(
            fresh.get_msg_secret(CHAT, CHAT, "3EB0AA").await.unwrap(),
            None
        );
        assert!(!store.wipe_device(SESSION).await.unwrap(), "nothing left");
        // A delete drops them.
        let again = store.device_backend(SESSION).unwrap();
        again
            .store_sent_message(CHAT, "3EB0CC", b"payload")
            .await
            .unwrap();
        again.put_session("15550001111.0:1", b"s").await.unwrap();
        assert!(store.drop_device(SESSION).await.unwrap());
        assert!(!has(&store.inner.dbs.history, &history_name));
        assert!(!has(&store.inner.dbs.state, &state_name));
        assert!(store.device_keyspaces().is_empty());
    }
}
