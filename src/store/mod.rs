//! whatsd's embedded storage: two sled databases per daemon (see [`dbs`]),
//! encrypted at rest.
//!
//! Layout of the state database in `<data_dir>/db`:
//!
//! | tree                  | key                            | value                                   |
//! |-----------------------|--------------------------------|-----------------------------------------|
//! | `store_meta`          | `key_check`, `rekey_target`    | sealed verifier (proves the master key)  |
//! | `store_meta`          | `index_key`                    | sealed key of the blinded ids ([`ids`])  |
//! | `store_meta`          | `format`                       | `4` (plain; see [`migrate`])             |
//! | `session_records`     | H(session id)                  | sealed prost `whatsd.v1.SessionRecord`  |
//! | `device/<hex H(id)>`  | kind byte ‖ blinded key        | sealed value (see [`device`])           |
//!
//! and in the history database, `<data_dir>/history` (what accumulates):
//! `send_queue`, `send_status`, `send_idempotency` (see [`sends`]),
//! `contacts`, `media_refs`, and `device_history/<hex H(id)>` (a session's
//! message secrets and sent-message copies, same keys as in `device/…`).
//!
//! H is the keyed hash of [`ids`]: no session id, tenant id, phone number,
//! JID or LID is readable in a key or a tree name; the values that need an
//! id back carry it, sealed. The phone → sessions index lives in memory,
//! rebuilt from the records at open (see [`records`]).
//!
//! Each session's WhatsApp key material lives in its own tree (one per
//! database), so wiping a session is one atomic batch per tree (history
//! first) and deleting one two `drop_tree`s (state first).
//! Every value is sealed with the master key (see [`crypto`]).
//!
//! Invariant that [`rekey`] relies on: every tree other than `store_meta`,
//! (format 1's) `phone_index` and sled's default tree holds only values
//! sealed with AAD = that tree's own name ‖ 0x00 ‖ stored key. A new tree
//! must follow it or be added to rekey's skip list.
//!
//! Files: the data dir is kept at 0700 and everything under it at 0600
//! (directories 0700); [`Store::open`] tightens what it finds, with a
//! warning naming each path group or others could reach.

pub mod backup;
pub mod contacts;
pub mod crypto;
mod dbs;
pub mod device;
pub mod error;
pub mod ids;
pub mod media_blobs;
pub mod media_refs;
mod migrate;
pub mod outbox;
pub mod records;
mod rekey;
pub mod release;
mod sends;
pub mod tenants;
mod usage;

#[cfg(test)]
mod proptests;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use crypto::{KeyConfig, KeySource, MasterKey, Sealer, load_master_key};
pub(crate) use dbs::{DEVICE_HISTORY_PREFIX, Dbs};
pub use device::DeviceBackend;
pub use error::StoreError;
pub use records::RECORD_VERSION;
pub use rekey::{RekeyReport, rekey};
pub use usage::TreeUsage;

/// Serializes every sled call that takes sled's concurrency control.
///
/// sled 0.34 keeps one process-wide reader/writer lock for all its
/// databases: transactions and batches take it exclusively, inserts,
/// removes, iterator steps and its own periodic flusher share it, and some
/// sharers wait for log buffers while holding it. Under concurrent
/// transactions and writes from many sessions that deadlocked (seen with
/// 14 test daemons in one process, and possible with one). Our writes and
/// scans go through this gate, one at a time; the periodic flusher is off
/// (durable writes flush explicitly). Never held across an `.await`, and
/// held only briefly: a backup takes it once per bounded chunk (see
/// [`backup`]). In debug builds the `store.gate` fault makes every holder
/// hang (see [`crate::fault::stall`]).
///
/// Reads take it too: a sled 0.34 lookup can split or merge the node it
/// walks through (`Tree::view_for_key`, sled `tree.rs:1656-1675`), which
/// writes to the log like an insert does.
///
/// No tokio worker thread waits for it for long: a caller that finds it
/// taken tries again for up to 200 µs (holders keep it for an in-memory
/// sled step, microseconds) and then, on a worker of the multi-threaded
/// runtime, waits inside
/// [`tokio::task::block_in_place`], which hands the worker's other tasks
/// to another thread first; elsewhere (the blocking pool, plain threads,
/// a single-threaded test runtime) it waits where it is.
pub(crate) fn sled_gate() -> std::sync::MutexGuard<'static, ()> {
    static GATE: Mutex<()> = Mutex::new(());
    let guard = match try_gate(&GATE) {
        Some(guard) => guard,
        None => {
            GATE_WANTED.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let guard =
                off_the_workers(|| GATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            GATE_WANTED.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            guard
        }
    };
    crate::fault::stall("store.gate");
    guard
}

/// Takes `gate` if it is free or soon is, without blocking: tries it in a
/// short spin, then yielding the thread, for up to [`GATE_PATIENCE`].
fn try_gate(gate: &'static Mutex<()>) -> Option<std::sync::MutexGuard<'static, ()>> {
    let started = std::time::Instant::now();
    for round in 0u32.. {
        match gate.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        if round < 64 {
            std::hint::spin_loop();
        } else if started.elapsed() < GATE_PATIENCE {
            std::thread::yield_now();
        } else {
            return None;
        }
    }
    None
}

/// How long [`sled_gate`] tries the gate before it gives up its worker
/// thread to wait. A holder keeps the gate for one in-memory sled step
/// (microseconds), so nearly every wait ends within it; handing the worker
/// over ([`tokio::task::block_in_place`]) costs more than that, and doing
/// it at the first sign of contention cut the end-to-end bench from 5,077
/// to 3,444–3,768 messages/s. Long holds (a backup's chunk, a wipe's batch)
/// outlast it.
const GATE_PATIENCE: std::time::Duration = std::time::Duration::from_micros(200);

/// Runs the blocking `wait` so that no tokio worker thread sits in it: on
/// a worker of a multi-threaded runtime through
/// [`tokio::task::block_in_place`], elsewhere as it is.
fn off_the_workers<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// Callers waiting for [`sled_gate`].
static GATE_WANTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Lets the callers waiting for [`sled_gate`] go first, for up to `limit`:
/// the gate is not fair, and a long job that takes it again right after
/// letting go (a backup, chunk after chunk) would starve them.
pub(crate) fn sled_gate_yield(limit: std::time::Duration) {
    let until = std::time::Instant::now() + limit;
    while GATE_WANTED.load(std::sync::atomic::Ordering::Acquire) > 0
        && std::time::Instant::now() < until
    {
        std::thread::yield_now();
    }
}

/// Makes every write so far durable, on tokio's blocking pool: flushes
/// each database (a tree's flush is its whole database's; history first,
/// see [`Dbs::flush`]).
///
/// Not sled's `flush_async`: that runs the flush on sled's own small IO
/// pool, and with many sessions flushing at once every pool thread sat in
/// a flush waiting for a log buffer whose write was queued behind them —
/// the pool starved itself (seen in the 1,000-session benchmark).
///
/// sled 0.34 makes its log writes durable with `sync_file_range`, which
/// survives a process crash but not a power loss or VM crash (it neither
/// flushes the drive's cache nor the file's metadata, e.g. its new size).
/// With `logs` given, a database's flush that wrote anything is followed
/// by one `fdatasync` of its log file (`<dir>/db`, which holds the log and
/// its segments), so what the flush covered also survives a power loss.
///
/// Only [`FlushGroup`] calls it: every durable path joins the group commit.
async fn flush_blocking(
    trees: [sled::Tree; 2],
    logs: Option<[Arc<fs::File>; 2]>,
) -> Result<(), StoreError> {
    tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        for (at, tree) in trees.iter().enumerate() {
            let written = tree.flush()?;
            if let Some(log) = logs.as_ref().map(|logs| &logs[at])
                && written > 0
            {
                log.sync_data()
                    .map_err(|e| StoreError::from(sled::Error::Io(e)))?;
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| StoreError::Task("the flush panicked"))??;
    Ok(())
}

/// Default data dir, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./sessions";

const DB_DIR: &str = "db";
const META_TREE: &str = "store_meta";
const RECORDS_TREE: &str = "session_records";
const PHONE_INDEX_TREE: &str = "phone_index";
const DEVICE_TREE_PREFIX: &str = "device/";
/// Blinding domains of the ids in keys and tree names.
const SESSION_DOMAIN: &[u8] = b"session";
const TENANT_DOMAIN: &[u8] = b"tenant";
/// sled's own default tree; whatsd keeps nothing in it.
const SLED_DEFAULT_TREE: &[u8] = b"__sled__default";

/// Meta key holding a verifier sealed with the current master key.
const KEY_CHECK: &[u8] = b"key_check";
/// Meta key present only while a key rotation is in progress; holds a
/// verifier sealed with the new key.
const REKEY_TARGET: &[u8] = b"rekey_target";
const VERIFIER: &[u8] = b"whatsd store format 1";

/// sled page cache bound of the state database. A paired session's rows
/// take ~40 KiB in it, most of them one-time prekeys read once per new
/// contact; the rows a message touches (its Signal session, the device
/// row) are a few KiB. At 64 MiB the cache held every row of 1,000
/// sessions (~40 KiB of each one's resident memory); at 16 MiB the cold
/// ones fall out and are read back from the log when needed.
const CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;
/// The history database's: its rows are written once and read rarely (a
/// status, a retry copy, a contact page), so little of it is worth keeping.
const HISTORY_CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;

/// Handle to the daemon's store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dbs: Dbs,
    sealer: Arc<Sealer>,
    blinder: ids::Blinder,
    records: sled::Tree,
    /// session id → phone, of every readable record with a phone: the
    /// phone index, kept in memory so no phone number is written to disk.
    /// Changed only under `sled_gate`, in step with the record writes.
    phones: Mutex<HashMap<String, String>>,
    data_dir: PathBuf,
    /// One live backend per session, so a wipe can fence off every handle
    /// to the tree it drops.
    backends: Mutex<HashMap<String, Weak<DeviceBackend>>>,
    flushes: Arc<FlushGroup>,
    /// One [`Store::probe`] at a time.
    probe_turn: Arc<tokio::sync::Mutex<()>>,
}

/// Group commit: every durable write of the daemon — [`Store::flush`],
/// the device backends' flushes, the webhook outbox — shares one sled
/// flush with whatever else is waiting.
///
/// A caller takes a ticket after its writes; the flusher reads the newest
/// ticket before it starts, so every ticket up to that one had its writes
/// in sled before the flush began and is covered by it.
pub(crate) struct FlushGroup {
    /// What is flushed: a tree of each database, history first (a tree's
    /// flush is its whole database's).
    trees: [sled::Tree; 2],
    /// The databases' log files, in the same order, `fdatasync`ed after
    /// each flush that wrote (see [`flush_blocking`]); `None` when
    /// power-loss durability is off.
    logs: std::sync::RwLock<Option<[Arc<fs::File>; 2]>>,
    requested: AtomicU64,
    /// The newest ticket known durable. Waiters queue on it: a waiter
    /// whose ticket the last flush covered returns at once. (Waking all
    /// waiters together after each flush instead, so the next flush could
    /// start without this queue passing the lock along, measured no
    /// faster: 3,732 and 3,974 against 4,556 and 4,401 msgs/s end to end.)
    done: tokio::sync::Mutex<u64>,
    /// The newest ticket of a write that wants a commit soon, not now
    /// ([`Store::flush_soon`]), and whether a task is on it.
    soon: AtomicU64,
    soon_running: AtomicBool,
    /// sled flushes run so far (benchmarks divide it by messages).
    flushes: AtomicU64,
}

/// How long [`Store::flush_soon`] gathers writes before it commits them:
/// with the flush itself, well inside the 100 ms promised for removals of
/// delivered outbox items.
const FLUSH_SOON_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

impl FlushGroup {
    fn new(trees: [sled::Tree; 2], logs: Option<[Arc<fs::File>; 2]>) -> Self {
        Self {
            trees,
            logs: std::sync::RwLock::new(logs),
            requested: AtomicU64::new(0),
            done: tokio::sync::Mutex::new(0),
            soon: AtomicU64::new(0),
            soon_running: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
        }
    }

    /// A ticket for the writes made so far.
    fn ticket(&self) -> u64 {
        self.requested.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Makes every write so far durable, sharing a flush with concurrent
    /// callers.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let ticket = self.ticket();
        self.flush_to(ticket).await
    }

    /// Returns once `ticket` is covered by a finished flush.
    async fn flush_to(&self, ticket: u64) -> Result<(), StoreError> {
        let mut done = self.done.lock().await;
        if *done >= ticket {
            return Ok(());
        }
        let covered = self.requested.load(Ordering::Acquire);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let logs = self.logs.read().unwrap_or_else(|p| p.into_inner()).clone();
        let started = std::time::Instant::now();
        let flushed = flush_blocking(self.trees.clone(), logs).await;
        crate::metrics::store_flush(started.elapsed());
        flushed?;
        *done = covered;
        Ok(())
    }

    /// The task behind [`Store::flush_soon`]: commits what was asked for
    /// every [`FLUSH_SOON_DELAY`] until nothing new is asked, then ends.
    async fn flush_soon_task(self: Arc<Self>) {
        loop {
            tokio::time::sleep(FLUSH_SOON_DELAY).await;
            let target = self.soon.load(Ordering::SeqCst);
            if let Err(e) = self.flush_to(target).await {
                tracing::error!("store: a deferred group commit failed: {e}");
            }
            if self.soon.load(Ordering::SeqCst) != target {
                continue;
            }
            self.soon_running.store(false, Ordering::SeqCst);
            // A request that came in between the check and the store above
            // saw the task still running: take it up again unless a new
            // task was started for it.
            if self.soon.load(Ordering::SeqCst) == target
                || self.soon_running.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.inner.data_dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `data_dir` with `key`.
    ///
    /// Fails with [`StoreError::WrongMasterKey`] if the store was created
    /// with another key, and with [`StoreError::RekeyInterrupted`] if a key
    /// rotation did not finish; in both cases nothing is written.
    ///
    /// An older store is converted first (see [`migrate`]): format 1
    /// (plain-text ids in its keys) by copy and swap, format 2 (values as
    /// JSON and library records) in place, format 3 (one database) by
    /// moving what accumulates to the history database (see [`dbs`]); an
    /// interrupted conversion is finished.
    pub fn open(data_dir: &Path, key: &MasterKey) -> Result<Self, StoreError> {
        create_data_dir(data_dir)?;
        tighten_permissions(data_dir, true);
        let _lock = migrate::prepare(data_dir)?;
        let mut db = open_db(data_dir)?;
        let sealer = Arc::new(Sealer::new(key));
        match check_master_key(&db, &sealer, data_dir)? {
            KeyCheck::Created => migrate::mark_current(&db)?,
            KeyCheck::Proven => {
                if migrate::format(&db)? == migrate::Format::Plain {
                    migrate::run(db, data_dir, &sealer)?;
                    db = open_db(data_dir)?;
                }
                match migrate::format(&db)? {
                    migrate::Format::Blinded => {
                        migrate::compact(&db, &sealer)?;
                    }
                    migrate::Format::Newer(found) => {
                        return Err(StoreError::NewerFormat {
                            path: data_dir.to_path_buf(),
                            found,
                        });
                    }
                    migrate::Format::Plain
                    | migrate::Format::Compact
                    | migrate::Format::Current => {}
                }
            }
        }
        let dbs = Dbs {
            state: db,
            history: dbs::open_history(data_dir)?,
        };
        if migrate::format(&dbs.state)? == migrate::Format::Compact {
            migrate::split(&dbs, &sealer)?;
        }
        // sled made its files with the process umask.
        tighten_permissions(data_dir, false);
        let blinder = ids::load_or_create(&dbs.state, &sealer)?;
        let records = dbs.state.open_tree(RECORDS_TREE)?;
        let logs = open_log_files(data_dir)?;
        let flushes = Arc::new(FlushGroup::new(
            [
                dbs.history.open_tree(sends::STATUS_TREE)?,
                dbs.state.open_tree(META_TREE)?,
            ],
            Some(logs),
        ));
        let store = Self {
            inner: Arc::new(Inner {
                dbs,
                sealer,
                blinder,
                records,
                phones: Mutex::new(HashMap::new()),
                data_dir: data_dir.to_path_buf(),
                backends: Mutex::new(HashMap::new()),
                flushes,
                probe_turn: Arc::default(),
            }),
        };
        store.load_phone_index()?;
        Ok(store)
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The `Backend` (wacore's store traits) over one session's device
    /// keyspace. Returns the same backend while it is alive and not wiped.
    pub fn device_backend(&self, session_id: &str) -> Result<Arc<DeviceBackend>, StoreError> {
        validate_session_id(session_id)?;
        let mut backends = self
            .inner
            .backends
            .lock()
            .map_err(|_| StoreError::Poisoned)?;
        if let Some(live) = backends.get(session_id).and_then(Weak::upgrade)
            && !live.is_wiped()
        {
            return Ok(live);
        }
        backends.retain(|_, backend| backend.strong_count() > 0);
        let name = self.device_tree_name(session_id);
        let history_name = self.device_history_name(session_id);
        let trees = device::Trees::new(
            self.inner.dbs.state.open_tree(&name)?,
            self.inner.dbs.history.clone(),
            history_name.clone().into_bytes(),
        );
        let backend = Arc::new(DeviceBackend::new(
            session_id,
            [name.into_bytes(), history_name.into_bytes()],
            trees,
            Arc::clone(&self.inner.sealer),
            self.inner.blinder.clone(),
            Arc::clone(&self.inner.flushes),
        ));
        backends.insert(session_id.to_string(), Arc::downgrade(&backend));
        Ok(backend)
    }

    /// Empties a session's device keyspace, durably, keeping its trees
    /// for the session's next pairing (reset, logout, unlink). A backend
    /// still held for the session fails every later call with
    /// [`StoreError::Wiped`]; `device_backend` then hands out a fresh,
    /// empty one. Returns whether the keyspace held anything.
    ///
    /// Each tree is emptied by one atomic sled batch, history first: a
    /// crash between the two leaves the keys (the wipe did not happen; the
    /// record still says paired) without their message secrets, never a
    /// fresh pairing beside the old account's rows. Emptied, not dropped:
    /// in sled 0.34 a dropped and re-created tree leaves log space behind
    /// that is never reclaimed (`benches/sled_growth.rs`: a re-pairing every
    /// 1,000 steps, 117.5 MiB after 200,000 steps dropped against 44.5 MiB
    /// emptied), and a session is paired again under the same tree names.
    /// [`Store::drop_device`] is for a session that goes away.
    ///
    /// Runs on the blocking pool, not on the caller's async worker (see
    /// [`Store::drop_device`]).
    pub async fn wipe_device(&self, session_id: &str) -> Result<bool, StoreError> {
        self.change_device(
            session_id,
            Self::empty_device_trees,
            "wiping a device keyspace panicked",
        )
        .await
    }

    /// Deletes a session's device keyspace, trees and all, durably (the
    /// session is deleted). A backend still held for the session fails
    /// every later call with [`StoreError::Wiped`]. Returns whether a
    /// keyspace existed.
    ///
    /// The drop runs on the blocking pool, not on the caller's async worker:
    /// sled keeps a small record for every page it frees (1,200 for 200
    /// deleted sessions) until the page id is reused. Made on a worker,
    /// these outlive everything the deleted sessions allocated around them
    /// and keep thousands of the worker's otherwise free heap pages
    /// resident (see BENCHMARKS.md, "Session churn").
    pub async fn drop_device(&self, session_id: &str) -> Result<bool, StoreError> {
        self.change_device(
            session_id,
            Self::drop_device_tree,
            "deleting a device keyspace panicked",
        )
        .await
    }

    /// Runs `change` (blocking) over `session_id`'s device keyspace on the
    /// blocking pool, then makes it durable; `panicked` is the error if
    /// `change` panics.
    async fn change_device(
        &self,
        session_id: &str,
        change: fn(&Self, &str) -> Result<bool, StoreError>,
        panicked: &'static str,
    ) -> Result<bool, StoreError> {
        validate_session_id(session_id)?;
        let store = self.clone();
        let session_id = session_id.to_owned();
        let existed = tokio::task::spawn_blocking(move || change(&store, &session_id))
            .await
            .map_err(|_| StoreError::Task(panicked))??;
        self.flush().await?;
        Ok(existed)
    }

    /// Fences off the live backend of `session_id`, if any, and runs
    /// `change` while no call uses its trees.
    fn fenced(
        &self,
        session_id: &str,
        change: impl FnOnce() -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let mut backends = self
            .inner
            .backends
            .lock()
            .map_err(|_| StoreError::Poisoned)?;
        match backends.remove(session_id).and_then(|weak| weak.upgrade()) {
            Some(live) => live.wipe_with(change),
            None => change(),
        }
    }

    /// [`Store::wipe_device`] without the flush, blocking.
    fn empty_device_trees(&self, session_id: &str) -> Result<bool, StoreError> {
        let trees = [
            (
                &self.inner.dbs.history,
                self.device_history_name(session_id),
            ),
            (&self.inner.dbs.state, self.device_tree_name(session_id)),
        ];
        self.fenced(session_id, || {
            let mut existed = false;
            for (db, name) in &trees {
                if !db.tree_names().iter().any(|n| n == name.as_bytes()) {
                    continue;
                }
                let tree = db.open_tree(name)?;
                let _gate = sled_gate();
                let mut batch = sled::Batch::default();
                let mut rows = 0;
                for key in tree.iter().keys() {
                    batch.remove(key?);
                    rows += 1;
                }
                if rows > 0 {
                    tree.apply_batch(batch)?;
                    existed = true;
                }
            }
            Ok(existed)
        })
    }

    /// [`Store::drop_device`] without the flush, blocking.
    fn drop_device_tree(&self, session_id: &str) -> Result<bool, StoreError> {
        let name = self.device_tree_name(session_id);
        let history_name = self.device_history_name(session_id);
        // The state tree first: a crash before the second drop leaves
        // history rows no keys can use, which the orphan sweep finds (see
        // `device_keyspaces`).
        self.fenced(session_id, || {
            let _gate = sled_gate();
            backup::tree_dropped(name.as_bytes());
            backup::tree_dropped(history_name.as_bytes());
            let existed = self.inner.dbs.state.drop_tree(name.as_bytes())?;
            let history = self.inner.dbs.history.drop_tree(history_name.as_bytes())?;
            Ok(existed || history)
        })
    }

    /// Closes the live backend of a session whose client has stopped (see
    /// [`DeviceBackend::close`]); the next `device_backend` opens a new one
    /// over the same keys.
    pub fn close_device(&self, session_id: &str) {
        if let Ok(mut backends) = self.inner.backends.lock()
            && let Some(live) = backends.remove(session_id).and_then(|weak| weak.upgrade())
        {
            live.close();
        }
    }

    /// Removes a session completely: first its device keyspace, then its
    /// record and phone-index entry. A crash in between leaves a record
    /// without keys (a logged-out session), never keys without a record.
    pub async fn remove_session(&self, session_id: &str) -> Result<(), StoreError> {
        self.drop_device(session_id).await?;
        self.delete_record(session_id).await?;
        Ok(())
    }

    /// The keyspace ids (see [`Store::keyspace_id`]) of every device
    /// keyspace, whether or not a record owns it (for finding orphans:
    /// compare with the keyspace ids of the records' session ids).
    pub fn device_keyspaces(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .dbs
            .trees()
            .iter()
            .filter_map(|(name, _)| std::str::from_utf8(name).ok())
            .filter_map(|name| {
                name.strip_prefix(DEVICE_TREE_PREFIX)
                    .or_else(|| name.strip_prefix(DEVICE_HISTORY_PREFIX))
            })
            .map(str::to_string)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// What one session's device keyspace holds on disk, by kind of row
    /// (the first byte of the key): rows, key bytes, stored (sealed) value
    /// bytes. For the benches and the size figures in BENCHMARKS.md.
    pub fn device_keyspace_usage(&self, session_id: &str) -> Result<KeyspaceUsage, StoreError> {
        let id = self.keyspace_id(session_id);
        let mut usage = KeyspaceUsage::default();
        for (name, db) in [
            (format!("{DEVICE_TREE_PREFIX}{id}"), &self.inner.dbs.state),
            (
                format!("{DEVICE_HISTORY_PREFIX}{id}"),
                &self.inner.dbs.history,
            ),
        ] {
            if !db.tree_names().iter().any(|n| n == name.as_bytes()) {
                continue;
            }
            let tree = db.open_tree(name)?;
            let entries = {
                let _gate = sled_gate();
                tree.iter().collect::<Result<Vec<_>, _>>()?
            };
            for (key, value) in entries {
                let kind = key.first().copied().unwrap_or(0);
                let row = usage.by_kind.entry(kind).or_default();
                row.rows += 1;
                row.key_bytes += key.len() as u64;
                row.value_bytes += value.len() as u64;
            }
        }
        Ok(usage)
    }

    /// Makes every write so far durable. Concurrent callers share one
    /// flush (group commit).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flushes.flush().await
    }

    /// A ticket for the writes made so far: [`Store::flush_through`] with
    /// it returns at once when a flush since (another caller's group
    /// commit) already covered them.
    pub(crate) fn write_ticket(&self) -> u64 {
        self.inner.flushes.ticket()
    }

    /// Makes the writes before `ticket` durable, sharing a flush already
    /// made or under way.
    pub(crate) async fn flush_through(&self, ticket: u64) -> Result<(), StoreError> {
        self.inner.flushes.flush_to(ticket).await
    }

    /// Asks for the writes so far to be made durable soon (within
    /// [`FLUSH_SOON_DELAY`] and one flush), by a group commit, without
    /// waiting for it: for writes whose loss in a crash only repeats work
    /// (removals of delivered outbox items). Returns the task that will do
    /// it when none is running yet; the caller spawns it in its scope.
    pub fn flush_soon(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let group = &self.inner.flushes;
        let ticket = group.ticket();
        group.soon.fetch_max(ticket, Ordering::SeqCst);
        if group.soon_running.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(Arc::clone(group).flush_soon_task())
    }

    /// Turns the `fdatasync` after each group commit off (`false`) or on
    /// (the default): benchmarks measure what power-loss durability costs.
    #[doc(hidden)]
    pub fn set_power_loss_durable(&self, on: bool) -> Result<(), StoreError> {
        let logs = if on {
            Some(open_log_files(&self.inner.data_dir)?)
        } else {
            None
        };
        *self
            .inner
            .flushes
            .logs
            .write()
            .unwrap_or_else(|p| p.into_inner()) = logs;
        Ok(())
    }

    /// Whether the store answers: takes the gate and reads a meta key, on a
    /// blocking thread, within `within`. What `/readyz` and the watchdog
    /// ask. Probes of one store run one at a time, and one that does not
    /// come back keeps the next ones out, so a stuck store holds at most
    /// one probe thread.
    pub async fn probe(&self, within: std::time::Duration) -> Result<(), StoreError> {
        let store = self.clone();
        let asked = async move {
            let turn = Arc::clone(&store.inner.probe_turn).lock_owned().await;
            tokio::task::spawn_blocking(move || {
                // Held by the read itself: a read that does not come back
                // keeps the next probes waiting here, not on new threads.
                let _turn = turn;
                let _gate = sled_gate();
                let meta = store.inner.dbs.state.open_tree(META_TREE)?;
                meta.get(KEY_CHECK)?
                    .map(drop)
                    .ok_or(StoreError::Invalid("the key check record is gone".into()))
            })
            .await
            .unwrap_or(Err(StoreError::Task("the store probe panicked")))
        };
        tokio::time::timeout(within, asked)
            .await
            .unwrap_or(Err(StoreError::Task("the store did not answer in time")))
    }

    /// sled flushes (group commits) run since the store was opened.
    #[doc(hidden)]
    pub fn flush_count(&self) -> u64 {
        self.inner.flushes.flushes.load(Ordering::Relaxed)
    }

    /// The id under which `session_id`'s device keyspace is stored: the hex
    /// of its blinded id.
    pub fn keyspace_id(&self, session_id: &str) -> String {
        crate::hex::hex(
            &self
                .inner
                .blinder
                .blind(SESSION_DOMAIN, session_id.as_bytes()),
        )
    }

    fn device_tree_name(&self, session_id: &str) -> String {
        format!("{DEVICE_TREE_PREFIX}{}", self.keyspace_id(session_id))
    }

    fn device_history_name(&self, session_id: &str) -> String {
        format!("{DEVICE_HISTORY_PREFIX}{}", self.keyspace_id(session_id))
    }

    fn sealer(&self) -> &Sealer {
        &self.inner.sealer
    }

    /// Keyed hashes for sled keys that would otherwise carry an identifier
    /// (see [`ids`]).
    pub fn blinder(&self) -> &ids::Blinder {
        &self.inner.blinder
    }
}

/// Whether `data_dir` already holds a store (used to refuse generating a key
/// for an existing store), counting one halfway through its conversion.
pub(crate) fn store_exists(data_dir: &Path) -> bool {
    data_dir.join(DB_DIR).exists()
        || data_dir.join(dbs::HISTORY_DIR).exists()
        || migrate::in_progress(data_dir)
}

/// Takes group and other permissions away from the data dir and
/// everything under it (symlinks are not followed). With `warn`, a change
/// to a path that group or others could actually reach (every directory
/// above it, up to the data dir, was open to them too) is a warning naming
/// the path; a loose file inside a private directory (sled makes its files
/// with the process umask) is tightened quietly. Best effort: a path that
/// cannot be changed is a warning too.
#[cfg(unix)]
pub(crate) fn tighten_permissions(data_dir: &Path, warn: bool) {
    use std::os::unix::fs::PermissionsExt;
    fn visit(path: &Path, reachable: bool, warn: bool) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        if meta.file_type().is_symlink() {
            return;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let loose = mode & 0o077 != 0;
        let exposed = reachable && loose;
        if loose {
            let tight = mode & 0o700;
            match fs::set_permissions(path, fs::Permissions::from_mode(tight)) {
                Ok(()) if warn && exposed => tracing::warn!(
                    path = %path.display(),
                    "was open to group or others ({mode:o}); now {tight:o}"
                ),
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "permissions {mode:o} -> {tight:o}")
                }
                Err(e) => tracing::warn!(path = %path.display(), "cannot tighten permissions: {e}"),
            }
        }
        if meta.is_dir()
            && let Ok(entries) = fs::read_dir(path)
        {
            for entry in entries.flatten() {
                visit(&entry.path(), exposed, warn);
            }
        }
    }
    visit(data_dir, true, warn);
}

#[cfg(not(unix))]
pub(crate) fn tighten_permissions(_data_dir: &Path, _warn: bool) {}

/// Creates the data dir (mode 0700 when it is new).
pub(crate) fn create_data_dir(data_dir: &Path) -> Result<(), StoreError> {
    if data_dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(data_dir)
        .map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })
}

/// How long `open` waits for a just-closed database's file lock.
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Moves `db`'s id generator past every sequence number its queues hold.
/// Queue keys (webhook outbox, dead letters, send queue) end in a number
/// from sled's `generate_id`, which a fresh database starts again at 0: a
/// restore or a conversion into one would otherwise hand new items the keys
/// of restored ones (overwriting them) and sort them first.
/// `queues` is the database that holds the send queue (the history
/// database, or `db` itself in a store not split yet).
fn advance_ids_past_queues(db: &sled::Db, queues: &sled::Db) -> Result<(), StoreError> {
    let mut highest = None;
    for (name, holder) in [
        (outbox::OUTBOX_TREE, db),
        (outbox::DEAD_TREE, db),
        (sends::QUEUE_TREE, queues),
    ] {
        let tree = holder.open_tree(name)?;
        for key in tree.iter().keys() {
            let key = key?;
            if let Some(at) = key.len().checked_sub(8) {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&key[at..]);
                highest = highest.max(Some(u64::from_be_bytes(seq)));
            }
        }
    }
    if let Some(highest) = highest {
        while db.generate_id()? <= highest {}
    }
    Ok(())
}

fn open_db(data_dir: &Path) -> Result<sled::Db, StoreError> {
    open_db_at(&data_dir.join(DB_DIR))
}

fn open_db_at(path: &Path) -> Result<sled::Db, StoreError> {
    open_db_with_cache(path, CACHE_CAPACITY_BYTES)
}

fn open_db_with_cache(path: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let path = path.to_path_buf();
    let config = sled::Config::new()
        .path(&path)
        .cache_capacity(cache_bytes)
        // No background flusher: it shares sled's global lock (see
        // `sled_gate`). Durable writes flush themselves; the rest is flushed
        // with them, by `Store::flush` at shutdown, or when the Db drops.
        .flush_every_ms(None);
    // sled releases its file lock when its IO threads let go of the log, a
    // moment after the last handle dropped: a reopen in the same process
    // (rekey, tests) can see the lock still held. Another daemon holding it
    // is still refused, after this short wait.
    let deadline = std::time::Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result.map_err(|source| StoreError::Open { path, source }),
        }
    }
}

/// Both databases' log files, in [`FlushGroup`]'s order (history, state).
fn open_log_files(data_dir: &Path) -> Result<[Arc<fs::File>; 2], StoreError> {
    Ok([
        Arc::new(open_log_file(&data_dir.join(dbs::HISTORY_DIR), data_dir)?),
        Arc::new(open_log_file(&data_dir.join(DB_DIR), data_dir)?),
    ])
}

/// A sled database's log file (`<dir>/db`), for the `fdatasync` after
/// each group commit; its directory entries (up to the data dir) are
/// synced once here, so the file itself survives a power loss once the
/// store exists.
fn open_log_file(dir: &Path, data_dir: &Path) -> Result<fs::File, StoreError> {
    let io = |e| StoreError::from(sled::Error::Io(e));
    let log = fs::File::open(dir.join("db")).map_err(io)?;
    log.sync_data().map_err(io)?;
    for synced in [dir.join("conf"), dir.to_path_buf(), data_dir.to_path_buf()] {
        if let Ok(f) = fs::File::open(&synced) {
            f.sync_all().map_err(io)?;
        }
    }
    Ok(log)
}

/// What [`check_master_key`] found.
pub(crate) enum KeyCheck {
    /// A brand-new store: the proof was just written.
    Created,
    /// The store's proof opens with this key.
    Proven,
}

/// Proves `sealer` holds the key the store was created with, or writes the
/// proof for a brand-new store.
fn check_master_key(
    db: &sled::Db,
    sealer: &Sealer,
    data_dir: &Path,
) -> Result<KeyCheck, StoreError> {
    let meta = db.open_tree(META_TREE)?;
    if meta.contains_key(REKEY_TARGET)? {
        return Err(StoreError::RekeyInterrupted {
            path: data_dir.to_path_buf(),
        });
    }
    match meta.get(KEY_CHECK)? {
        Some(sealed) => match sealer.open(META_TREE.as_bytes(), KEY_CHECK, &sealed) {
            Ok(plain) if plain == VERIFIER => Ok(KeyCheck::Proven),
            _ => Err(StoreError::WrongMasterKey {
                path: data_dir.to_path_buf(),
            }),
        },
        None if holds_data(db)? => Err(StoreError::Corrupt {
            session: "<store>".to_string(),
            what: "key check record",
            reason: "the store holds data but no key check record".to_string(),
        }),
        None => {
            let _gate = sled_gate();
            meta.insert(
                KEY_CHECK,
                sealer.seal(META_TREE.as_bytes(), KEY_CHECK, VERIFIER)?,
            )?;
            db.flush()?;
            Ok(KeyCheck::Created)
        }
    }
}

fn holds_data(db: &sled::Db) -> Result<bool, StoreError> {
    for name in db.tree_names() {
        if name == SLED_DEFAULT_TREE || name == META_TREE.as_bytes() {
            continue;
        }
        if !db.open_tree(&name)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Session ids: 1-128 bytes, no '/' and no NUL.
pub fn validate_session_id(session_id: &str) -> Result<(), StoreError> {
    let ok = !session_id.is_empty() && session_id.len() <= 128 && !session_id.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidSessionId(session_id.to_string()))
    }
}

/// See [`Store::device_keyspace_usage`].
#[derive(Debug, Default, Clone)]
pub struct KeyspaceUsage {
    /// Key kind byte → its rows.
    pub by_kind: std::collections::BTreeMap<u8, KindUsage>,
}

/// Rows of one kind in a device keyspace.
#[derive(Debug, Default, Clone, Copy)]
pub struct KindUsage {
    pub rows: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

impl KeyspaceUsage {
    /// Keys and stored values, every kind.
    pub fn bytes(&self) -> u64 {
        self.by_kind
            .values()
            .map(|k| k.key_bytes + k.value_bytes)
            .sum()
    }

    pub fn rows(&self) -> u64 {
        self.by_kind.values().map(|k| k.rows).sum()
    }
}

#[cfg(test)]
mod gate_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::sled_gate;

    /// While the gate is held elsewhere, tasks waiting for it on both
    /// workers of a two-worker runtime leave the workers free: a plain
    /// async task still runs before the gate is let go. (When the waiters
    /// blocked where they were, they parked both workers and the task ran
    /// only after the holder gave up, 20 s later.)
    #[test]
    fn waiting_for_the_gate_leaves_the_async_workers_free() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let (release, released) = mpsc::channel::<()>();
        let (held, is_held) = mpsc::channel::<()>();
        let let_go = Arc::new(AtomicBool::new(false));
        let holder = std::thread::spawn({
            let let_go = let_go.clone();
            move || {
                let gate = sled_gate();
                held.send(()).expect("held");
                // Let go when the test says so, or after a bound so a
                // failing test ends.
                let _ = released.recv_timeout(Duration::from_secs(20));
                let_go.store(true, Ordering::SeqCst);
                drop(gate);
            }
        });
        is_held.recv().expect("the holder took the gate");
        let ran_while_held = runtime.block_on(async {
            let waiters: Vec<_> = (0..4)
                .map(|_| tokio::spawn(async { drop(sled_gate()) }))
                .collect();
            let ran_while_held = tokio::spawn({
                let let_go = let_go.clone();
                async move { !let_go.load(Ordering::SeqCst) }
            })
            .await
            .expect("task");
            let _ = release.send(());
            for waiter in waiters {
                waiter.await.expect("waiter");
            }
            ran_while_held
        });
        holder.join().expect("holder");
        assert!(
            ran_while_held,
            "a task waited for the gate's holder: the waiters parked the workers"
        );
    }
}

#[cfg(test)]
mod flush_tests {
    use std::time::Duration;

    use super::{MasterKey, Store};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), &MasterKey::from_bytes([3; 32])).expect("store");
        (dir, store)
    }

    /// A caller that runs the group's flush and is dropped halfway (its
    /// request cancelled) does not leave the group waiting for it: the
    /// next caller's flush still runs and returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_flush_does_not_wedge_the_group_commit() {
        let (_dir, store) = store();
        for _ in 0..20 {
            store.outbox_append(&[(b"q", b"v")]).expect("write");
            // Polled at least once (it becomes the running flush), then
            // dropped by the timeout.
            let _ = tokio::time::timeout(Duration::from_micros(1), store.flush()).await;
        }
        let flushed = tokio::time::timeout(Duration::from_secs(10), store.flush()).await;
        assert!(
            matches!(flushed, Ok(Ok(()))),
            "the flush after a dropped one did not finish: {flushed:?}"
        );
    }
}
