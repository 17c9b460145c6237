//! Backups of the whole store, and restoring one into an empty data dir.
//!
//! A backup is a point-in-time copy of every tree, taken without stopping
//! the store: [`sled_gate`](super::sled_gate), which every write and scan
//! goes through, is held only for bounded chunks. At the start (under the
//! gate) the backup lists the trees and subscribes to every write to them;
//! it copies each tree chunk by chunk, taking the gate per chunk, while a
//! thread of its own drains the subscriptions (sled makes a writer wait
//! when a subscriber falls 1,024 events behind, so the drain never waits
//! for the gate); at the end, under the gate once more, it takes the last
//! events and replays every event in order over the copy. A key written
//! during the copy ends with its last write, a key not written was copied
//! as it is: the result is the store at that final moment, with every
//! batch and transaction whole. Trees created meanwhile, and trees dropped
//! (a wipe) and perhaps created again, are copied whole at the end (a
//! dropped tree's old handle is never touched again). Values stay sealed
//! exactly as stored: a backup is as encrypted as the store, and useless
//! without the master key, which is **not** in it (keep the key somewhere
//! else). Keys and tree names are copied as stored too, so a backup carries
//! the store's blinded layout: no session id, tenant id, phone number, JID
//! or LID in plain text (see [`super::ids`]). A format-1 store (ids in its
//! keys) is converted when the daemon opens it; [`backup_offline`] refuses
//! one that was never opened by this version rather than copy its ids out.
//!
//! While the daemon runs, sled's file lock keeps every other process out of
//! the database, so the daemon takes the backup (`POST /v1/admin/backup`);
//! [`backup_offline`] serves a stopped daemon's data dir.
//!
//! File layout (all lengths u32 big-endian):
//!
//! ```text
//! "WHATSD-BACKUP\0" ‖ version (u32 = 1)
//! { 0x01 ‖ len ‖ tree name  |  0x02 ‖ len ‖ key ‖ len ‖ value }*
//! 0x00 ‖ SHA-256 of every byte before this one
//! ```

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ring::digest;
use sled::{Event, IVec};

use super::crypto::{MasterKey, Sealer};
use super::error::StoreError;
use super::{Dbs, KEY_CHECK, META_TREE, Store, VERIFIER, store_exists};

const MAGIC: &[u8] = b"WHATSD-BACKUP\0";
const VERSION: u32 = 1;
const TAG_END: u8 = 0;
const TAG_TREE: u8 = 1;
const TAG_ENTRY: u8 = 2;
/// Values restored per sled batch.
const BATCH_SIZE: usize = 512;
/// A backup holds the store's gate for at most this many entries …
const CHUNK_ENTRIES: usize = 256;
/// … or about this many bytes at a time.
const CHUNK_BYTES: usize = 256 * 1024;
/// How long a backup lets the gate's waiters go first between chunks.
const YIELD_LIMIT: Duration = Duration::from_millis(5);
/// How long the subscription drain rests when it found nothing.
const DRAIN_REST: Duration = Duration::from_millis(2);

/// What a backup or restore covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupSummary {
    pub trees: u64,
    pub entries: u64,
    pub bytes: u64,
}

impl Store {
    /// A consistent backup of the open store, in memory. Holds the store's
    /// gate only chunk by chunk, but blocks for the whole copy: call it from
    /// a blocking thread.
    pub fn backup(&self) -> Result<Vec<u8>, StoreError> {
        export(&self.inner.dbs)
    }

    /// The database's size on disk (sled's estimate), in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.dbs.size_on_disk()
    }
}

/// A backup of the store in `data_dir`, whose daemon is not running.
pub fn backup_offline(data_dir: &Path) -> Result<Vec<u8>, StoreError> {
    if !store_exists(data_dir) {
        return Err(StoreError::Invalid(format!(
            "no store in {}",
            data_dir.display()
        )));
    }
    let lock = super::migrate::prepare(data_dir)?;
    let dbs = Dbs::open(data_dir)?;
    drop(lock);
    if super::migrate::format(&dbs.state)? == super::migrate::Format::Plain {
        return Err(StoreError::Invalid(format!(
            "the store in {} is in format 1 (ids in plain text in its keys); \
             start whatsd once to convert it, then take the backup",
            data_dir.display()
        )));
    }
    export(&dbs)
}

/// Whether opening failed because another process (a running daemon)
/// holds the database's lock.
pub fn is_locked(err: &StoreError) -> bool {
    matches!(err, StoreError::Open { source: sled::Error::Io(e), .. }
        if e.to_string().contains("could not acquire lock"))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| StoreError::Invalid("a stored value is larger than 4 GiB".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The names of the trees dropped while a backup runs (see [`tree_dropped`]).
type Dropped = Mutex<HashSet<Vec<u8>>>;
type DropSet = Arc<Dropped>;

/// The drop sets of the running backups.
static WATCHERS: Mutex<Vec<Weak<Dropped>>> = Mutex::new(Vec::new());

/// Tells running backups that the tree `name` is being dropped: they must
/// not use their handle to it again. Called under the gate.
pub(super) fn tree_dropped(name: &[u8]) {
    if let Ok(mut watchers) = WATCHERS.lock() {
        watchers.retain(|w| w.strong_count() > 0);
        for set in watchers.iter().filter_map(Weak::upgrade) {
            if let Ok(mut set) = set.lock() {
                set.insert(name.to_vec());
            }
        }
    }
}

fn watch_drops() -> DropSet {
    let set = DropSet::default();
    if let Ok(mut watchers) = WATCHERS.lock() {
        watchers.push(Arc::downgrade(&set));
    }
    set
}

fn was_dropped(drops: &DropSet, name: &[u8]) -> bool {
    drops.lock().map(|set| set.contains(name)).unwrap_or(true)
}

/// One tree as copied so far.
struct Copy {
    name: IVec,
    /// The database that holds it.
    db: sled::Db,
    tree: sled::Tree,
    /// In key order, as copied (a later chunk starts after the last key).
    entries: Vec<(IVec, IVec)>,
    /// The last write to each key written since the start (`None`: removed).
    written: HashMap<IVec, Option<IVec>>,
    /// Dropped during the copy: copied again, whole, at the end.
    dropped: bool,
    /// Dropped and not created again: left out.
    gone: bool,
}

/// Drains the write subscriptions of every copied tree on its own thread,
/// so a writer that sled makes wait for us never waits on the gate.
/// Stops (and lets go of the subscriptions) when dropped, should the
/// backup fail halfway.
struct Drain {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(usize, Event)>>>,
}

impl Drain {
    fn start(mut subscribers: Vec<sled::Subscriber>) -> Result<Self, StoreError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("whatsd-backup-drain".into())
            .spawn(move || {
                let mut events = Vec::new();
                loop {
                    // Read before the sweep: after `stop`, one whole sweep.
                    let last = stopped.load(Ordering::Acquire);
                    let before = events.len();
                    for (tree, subscriber) in subscribers.iter_mut().enumerate() {
                        // An error is "nothing filled yet" (or sled closing).
                        while let Ok(event) = subscriber.next_timeout(Duration::ZERO) {
                            events.push((tree, event));
                        }
                    }
                    if last {
                        return events;
                    }
                    if events.len() == before {
                        std::thread::sleep(DRAIN_REST);
                    }
                }
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start the backup drain: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Every event so far, in order. Called under the gate: every write
    /// that reached sled has filled its event.
    fn finish(mut self) -> Result<Vec<(usize, Event)>, StoreError> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .ok_or(StoreError::Task("the backup drain is gone"))?
            .join()
            .map_err(|_| StoreError::Task("the backup drain panicked"))
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Copies one chunk of `copy`'s tree after `from`, under the gate. Returns
/// the last key copied, or `None` when the tree is done (or was dropped).
fn copy_chunk(
    copy: &mut Copy,
    from: Option<IVec>,
    drops: &DropSet,
) -> Result<Option<IVec>, StoreError> {
    let _gate = super::sled_gate();
    if was_dropped(drops, &copy.name) {
        copy.dropped = true;
        return Ok(None);
    }
    let range = match from {
        None => copy.tree.iter(),
        Some(after) => copy
            .tree
            .range::<IVec, _>((Bound::Excluded(after), Bound::Unbounded)),
    };
    let (mut entries, mut bytes) = (0, 0);
    for item in range {
        let (key, value) = item?;
        bytes += key.len() + value.len();
        entries += 1;
        copy.entries.push((key.clone(), value));
        if entries >= CHUNK_ENTRIES || bytes >= CHUNK_BYTES {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// Every entry of `tree`; the caller holds the gate.
fn copy_whole(tree: &sled::Tree) -> Result<Vec<(IVec, IVec)>, StoreError> {
    tree.iter()
        .map(|item| item.map_err(StoreError::from))
        .collect()
}

/// Both databases in one point in time: the gate covers them both, and
/// tree names are unique across them (see [`super::dbs`]).
fn export(dbs: &Dbs) -> Result<Vec<u8>, StoreError> {
    let drops = watch_drops();
    let (mut copies, subscribers) = {
        let _gate = super::sled_gate();
        let mut copies = Vec::new();
        let mut subscribers = Vec::new();
        for (name, db) in dbs.trees() {
            let tree = db.open_tree(&name)?;
            subscribers.push(tree.watch_prefix(Vec::new()));
            copies.push(Copy {
                name,
                db: db.clone(),
                tree,
                entries: Vec::new(),
                written: HashMap::new(),
                dropped: false,
                gone: false,
            });
        }
        (copies, subscribers)
    };
    let drain = Drain::start(subscribers)?;
    for copy in &mut copies {
        let mut from = None;
        while let Some(last) = copy_chunk(copy, from, &drops)? {
            from = Some(last);
            super::sled_gate_yield(YIELD_LIMIT);
        }
        super::sled_gate_yield(YIELD_LIMIT);
    }
    // The point in time of the backup.
    let (events, created) = {
        let _gate = super::sled_gate();
        let events = drain.finish()?;
        let dropped = drops.lock().map_err(|_| StoreError::Poisoned)?.clone();
        let known: HashSet<IVec> = copies.iter().map(|c| c.name.clone()).collect();
        let now: HashMap<IVec, &sled::Db> = dbs.trees().into_iter().collect();
        for copy in &mut copies {
            copy.dropped |= dropped.contains(copy.name.as_ref());
            if copy.dropped {
                copy.gone = !now.contains_key(&copy.name);
                copy.entries = if copy.gone {
                    Vec::new()
                } else {
                    copy_whole(&copy.db.open_tree(&copy.name)?)?
                };
            }
        }
        let mut created = Vec::new();
        for (name, db) in now.into_iter().filter(|(name, _)| !known.contains(name)) {
            let entries = copy_whole(&db.open_tree(&name)?)?;
            created.push((name, entries));
        }
        (events, created)
    };
    for (tree, event) in events {
        let Some(copy) = copies.get_mut(tree).filter(|c| !c.dropped) else {
            continue;
        };
        match event {
            Event::Insert { key, value } => copy.written.insert(key, Some(value)),
            Event::Remove { key } => copy.written.insert(key, None),
        };
    }
    // Each copy as of the end: what it copied and nobody wrote since, then
    // the last value of every key written since.
    let mut trees: Vec<(IVec, Vec<(IVec, IVec)>)> = copies
        .into_iter()
        .filter(|c| !c.gone)
        .map(|c| {
            let Copy {
                name,
                mut entries,
                written,
                ..
            } = c;
            if !written.is_empty() {
                entries.retain(|(key, _)| !written.contains_key(key));
                entries.extend(
                    written
                        .into_iter()
                        .filter_map(|(key, value)| Some((key, value?))),
                );
            }
            (name, entries)
        })
        .chain(created)
        .collect();
    trees.sort_by(|a, b| a.0.cmp(&b.0));

    let size: usize = trees
        .iter()
        .flat_map(|(_, entries)| entries.iter())
        .map(|(k, v)| 9 + k.len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + size + trees.len() * 64 + 33);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    for (name, entries) in &trees {
        out.push(TAG_TREE);
        put_bytes(&mut out, name)?;
        for (key, value) in entries {
            out.push(TAG_ENTRY);
            put_bytes(&mut out, key)?;
            put_bytes(&mut out, value)?;
        }
    }
    let sum = digest::digest(&digest::SHA256, &out);
    out.push(TAG_END);
    out.extend_from_slice(sum.as_ref());
    Ok(out)
}

/// One tree of a parsed backup.
pub(super) struct Tree<'a> {
    pub(super) name: &'a [u8],
    pub(super) entries: Vec<(&'a [u8], &'a [u8])>,
}

fn corrupt(reason: &str) -> StoreError {
    StoreError::Invalid(format!("not a whatsd backup, or a damaged one: {reason}"))
}

pub(super) fn parse(backup: &[u8]) -> Result<Vec<Tree<'_>>, StoreError> {
    let body = backup
        .strip_prefix(MAGIC)
        .ok_or_else(|| corrupt("bad magic"))?;
    if backup.len() < MAGIC.len() + 4 + 1 + 32 {
        return Err(corrupt("too short"));
    }
    let (signed, sum) = backup.split_at(backup.len() - 32);
    if signed.last() != Some(&TAG_END) {
        return Err(corrupt("no end marker"));
    }
    let expected = digest::digest(&digest::SHA256, &signed[..signed.len() - 1]);
    if expected.as_ref() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let version = u32::from_be_bytes(body[..4].try_into().map_err(|_| corrupt("version"))?);
    if version != VERSION {
        return Err(StoreError::Invalid(format!(
            "backup format version {version}; this build reads version {VERSION}"
        )));
    }
    let mut rest = &signed[MAGIC.len() + 4..signed.len() - 1];
    let mut trees: Vec<Tree<'_>> = Vec::new();
    while let Some((&tag, after)) = rest.split_first() {
        rest = after;
        match tag {
            TAG_TREE => {
                let name = read_bytes(&mut rest)?;
                trees.push(Tree {
                    name,
                    entries: Vec::new(),
                });
            }
            TAG_ENTRY => {
                let key = read_bytes(&mut rest)?;
                let value = read_bytes(&mut rest)?;
                trees
                    .last_mut()
                    .ok_or_else(|| corrupt("an entry before any tree"))?
                    .entries
                    .push((key, value));
            }
            _ => return Err(corrupt("unknown record")),
        }
    }
    Ok(trees)
}

fn read_bytes<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
    if rest.len() < 4 {
        return Err(corrupt("truncated length"));
    }
    let (len, after) = rest.split_at(4);
    let len = u32::from_be_bytes(len.try_into().map_err(|_| corrupt("length"))?) as usize;
    if after.len() < len {
        return Err(corrupt("truncated value"));
    }
    let (bytes, after) = after.split_at(len);
    *rest = after;
    Ok(bytes)
}

/// Checks a backup's integrity and counts what is in it, without writing.
pub fn inspect(backup: &[u8]) -> Result<BackupSummary, StoreError> {
    let trees = parse(backup)?;
    Ok(BackupSummary {
        trees: trees.len() as u64,
        entries: trees.iter().map(|t| t.entries.len() as u64).sum(),
        bytes: backup.len() as u64,
    })
}

/// Restores `backup` into `data_dir`, which must not hold a store. With
/// `key`, first proves it is the master key the backup was sealed with
/// (nothing is written otherwise). The master key itself is not restored:
/// install it as before (key file, credential or `<data_dir>/master.key`).
pub fn restore(
    data_dir: &Path,
    backup: &[u8],
    key: Option<&MasterKey>,
) -> Result<BackupSummary, StoreError> {
    let trees = parse(backup)?;
    if let Some(key) = key {
        let sealer = Sealer::new(key);
        let check = trees
            .iter()
            .find(|t| t.name == META_TREE.as_bytes())
            .and_then(|t| t.entries.iter().find(|(k, _)| *k == KEY_CHECK))
            .ok_or_else(|| corrupt("no key check record"))?;
        let proven = sealer
            .open(META_TREE.as_bytes(), KEY_CHECK, check.1)
            .is_ok_and(|plain| plain == VERIFIER);
        if !proven {
            return Err(StoreError::WrongMasterKey {
                path: data_dir.to_path_buf(),
            });
        }
    }
    if store_exists(data_dir) {
        return Err(StoreError::Invalid(format!(
            "{} already holds a store; restore into an empty data dir",
            data_dir.display()
        )));
    }
    super::create_data_dir(data_dir)?;
    let dbs = Dbs::open(data_dir)?;
    let mut summary = BackupSummary {
        bytes: backup.len() as u64,
        ..BackupSummary::default()
    };
    for tree in &trees {
        let target = dbs.open_tree(tree.name)?;
        for chunk in tree.entries.chunks(BATCH_SIZE) {
            let mut batch = sled::Batch::default();
            for (key, value) in chunk {
                batch.insert(*key, *value);
            }
            let _gate = super::sled_gate();
            target.apply_batch(batch)?;
        }
        summary.trees += 1;
        summary.entries += tree.entries.len() as u64;
    }
    super::advance_ids_past_queues(&dbs.state, &dbs.history)?;
    dbs.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wacore::store::traits::{DeviceStore, SignalStore};

    #[test]
    fn items_queued_after_a_restore_never_take_a_restored_items_key() {
        let key = MasterKey::generate().unwrap();
        let from = tempfile::tempdir().unwrap();
        // sled moves a database's ids on at each open (its persisted
        // lease): a store opened a few times holds numbers that a restored
        // one, opened once, has not reached.
        for _ in 0..3 {
            drop(Store::open(from.path(), &key).unwrap());
        }
        let backup = {
            let store = Store::open(from.path(), &key).unwrap();
            let items: Vec<(&[u8], &[u8])> =
                vec![(b"q1", b"one"), (b"q1", b"two"), (b"q1", b"three")];
            store.outbox_append(&items).unwrap();
            store.backup().unwrap()
        };
        let to = tempfile::tempdir().unwrap();
        restore(to.path(), &backup, Some(&key)).unwrap();
        let store = Store::open(to.path(), &key).unwrap();
        store.outbox_append(&[(b"q1", b"four")]).unwrap();
        // A fresh database's ids start again from 0: without moving them
        // on, "four" got a lower number than the restored items and came
        // first (and a number equal to one of theirs overwrites it).
        let values: Vec<Vec<u8>> = store
            .outbox_all()
            .unwrap()
            .into_iter()
            .map(|item| item.value)
            .collect();
        let expected: Vec<&[u8]> = vec![b"one", b"two", b"three", b"four"];
        assert_eq!(values, expected);
    }

    #[tokio::test]
    async fn a_backup_restores_into_an_empty_dir_with_the_same_key() {
        let key = MasterKey::generate().unwrap();
        let from = tempfile::tempdir().unwrap();
        let backup = {
            let store = Store::open(from.path(), &key).unwrap();
            let b = store.device_backend("a").unwrap();
            b.create().await.unwrap();
            b.put_session("x@s.whatsapp.net", b"signal session")
                .await
                .unwrap();
            store.backup().unwrap()
        };
        let summary = inspect(&backup).unwrap();
        assert!(summary.trees >= 2 && summary.entries >= 2, "{summary:?}");

        let to = tempfile::tempdir().unwrap();
        let other = MasterKey::generate().unwrap();
        assert!(matches!(
            restore(to.path(), &backup, Some(&other)),
            Err(StoreError::WrongMasterKey { .. })
        ));
        assert!(!store_exists(to.path()), "a refused restore writes nothing");
        assert_eq!(restore(to.path(), &backup, Some(&key)).unwrap(), summary);
        assert!(
            restore(to.path(), &backup, None).is_err(),
            "never over a store"
        );

        let store = Store::open(to.path(), &key).unwrap();
        let b = store.device_backend("a").unwrap();
        assert!(b.load().await.unwrap().is_some());
        assert_eq!(
            b.get_session("x@s.whatsapp.net").await.unwrap().as_deref(),
            Some(&b"signal session"[..])
        );
    }

    /// Writers change the store in atomic steps while backups run: a batch
    /// sets every key of one tree to the same round, a transaction sets the
    /// same round in two trees, a wipe drops a tree and writes it again
    /// whole. Every backup must show each step whole, and no writer may
    /// wait for most of a backup (as it did when a backup held the gate
    /// for its whole copy).
    #[test]
    fn a_backup_under_concurrent_writes_is_one_point_in_time() {
        use sled::Transactional;
        use std::sync::atomic::AtomicU64;

        const WIDE: usize = 64;
        const BIG: usize = 150_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &MasterKey::generate().unwrap()).unwrap();
        let db = store.inner.dbs.state.clone();
        let (wide, left, right, big) = (
            db.open_tree("t/wide").unwrap(),
            db.open_tree("t/left").unwrap(),
            db.open_tree("t/right").unwrap(),
            db.open_tree("t/big").unwrap(),
        );
        for i in 0..BIG {
            big.insert(format!("k{i:06}"), vec![7u8; 200]).unwrap();
        }
        db.flush().unwrap();
        let round = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (db, round, stop) = (db.clone(), Arc::clone(&round), Arc::clone(&stop));
            std::thread::spawn(move || {
                // The longest wait for the gate.
                let mut longest = Duration::ZERO;
                let gate = |longest: &mut Duration| {
                    let asked = std::time::Instant::now();
                    let gate = crate::store::sled_gate();
                    *longest = (*longest).max(asked.elapsed());
                    gate
                };
                while !stop.load(Ordering::Relaxed) {
                    let n = round.load(Ordering::Relaxed) + 1;
                    let value = n.to_be_bytes();
                    let mut batch = sled::Batch::default();
                    for k in 0..WIDE {
                        batch.insert(format!("w{k:03}").as_bytes(), &value);
                    }
                    {
                        let _gate = gate(&mut longest);
                        wide.apply_batch(batch).unwrap();
                    }
                    {
                        let _gate = gate(&mut longest);
                        (&left, &right)
                            .transaction(|(l, r)| {
                                l.insert("n", &value)?;
                                r.insert("n", &value)?;
                                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                            })
                            .unwrap();
                    }
                    {
                        // As `Store::wipe_device` does, then a fresh tree.
                        let _gate = gate(&mut longest);
                        tree_dropped(b"t/wiped");
                        db.drop_tree("t/wiped").unwrap();
                        let wiped = db.open_tree("t/wiped").unwrap();
                        for k in 0..8 {
                            wiped.insert(format!("x{k}"), &value).unwrap();
                        }
                    }
                    {
                        // Renames one key of the big tree: the count stays.
                        let i = n as usize % BIG;
                        let mut batch = sled::Batch::default();
                        batch.remove(format!("k{i:06}").as_bytes());
                        batch.insert(format!("m{i:06}").as_bytes(), &value);
                        let _gate = gate(&mut longest);
                        big.apply_batch(batch).unwrap();
                    }
                    round.store(n, Ordering::Relaxed);
                }
                longest
            })
        };
        let mut longest_backup = Duration::ZERO;
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let backup = store.backup().unwrap();
            longest_backup = longest_backup.max(started.elapsed());
            let trees = parse(&backup).unwrap();
            let tree = |name: &str| {
                trees
                    .iter()
                    .find(|t| t.name == name.as_bytes())
                    .map(|t| t.entries.clone())
            };
            let wide = tree("t/wide").unwrap();
            assert!(wide.is_empty() || wide.len() == WIDE, "{}", wide.len());
            assert!(
                wide.iter().all(|(_, v)| *v == wide[0].1),
                "a batch copied halfway"
            );
            let (l, r) = (tree("t/left").unwrap(), tree("t/right").unwrap());
            assert_eq!(l, r, "a transaction copied halfway");
            if let Some(wiped) = tree("t/wiped") {
                assert!(wiped.len() == 8 || wiped.is_empty(), "{}", wiped.len());
                assert!(wiped.iter().all(|(_, v)| *v == wiped[0].1));
            }
            assert_eq!(tree("t/big").unwrap().len(), BIG);
        }
        stop.store(true, Ordering::Relaxed);
        let longest_wait = writer.join().unwrap();
        eprintln!("longest backup {longest_backup:?}, longest wait for the gate {longest_wait:?}");
        assert!(
            longest_wait * 2 < longest_backup,
            "a writer waited {longest_wait:?} for the gate during a {longest_backup:?} backup"
        );
    }

    #[test]
    fn damaged_backups_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate().unwrap();
        let mut backup = Store::open(dir.path(), &key).unwrap().backup().unwrap();
        assert!(inspect(&backup).is_ok());
        let middle = backup.len() / 2;
        backup[middle] ^= 1;
        assert!(inspect(&backup).is_err());
        assert!(inspect(b"WHATSD-BACKUP\0").is_err());
        assert!(inspect(b"something else").is_err());
    }
}
