//! Backups of the whole store, and restoring one into an empty data dir.
//!
//! A backup is a point-in-time copy of every tree: taken while holding
//! [`sled_gate`](super::sled_gate), which every write and scan of the store
//! goes through, so no write lands halfway. Values stay sealed exactly as
//! stored: a backup is as encrypted as the store, and useless without the
//! master key, which is **not** in it (keep the key somewhere else). Keys
//! and tree names are copied as stored too, so a backup carries the store's
//! blinded layout: no session id, tenant id, phone number, JID or LID in
//! plain text (see [`super::ids`]). A format-1 store (ids in its keys) is
//! converted when the daemon opens it; [`backup_offline`] refuses one that
//! was never opened by this version rather than copy its ids out.
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

use std::path::Path;

use ring::digest;

use super::crypto::{MasterKey, Sealer};
use super::error::StoreError;
use super::{KEY_CHECK, META_TREE, SLED_DEFAULT_TREE, Store, VERIFIER, open_db, store_exists};

const MAGIC: &[u8] = b"WHATSD-BACKUP\0";
const VERSION: u32 = 1;
const TAG_END: u8 = 0;
const TAG_TREE: u8 = 1;
const TAG_ENTRY: u8 = 2;
/// Values restored per sled batch.
const BATCH_SIZE: usize = 512;

/// What a backup or restore covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupSummary {
    pub trees: u64,
    pub entries: u64,
    pub bytes: u64,
}

impl Store {
    /// A consistent backup of the open store, in memory. Blocks every store
    /// write while it copies: call it from a blocking thread.
    pub fn backup(&self) -> Result<Vec<u8>, StoreError> {
        export(&self.inner.db)
    }

    /// The database's size on disk (sled's estimate), in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
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
    let db = open_db(data_dir)?;
    drop(lock);
    if !super::migrate::is_current(&db)? {
        return Err(StoreError::Invalid(format!(
            "the store in {} is in format 1 (ids in plain text in its keys); \
             start whatsd once to convert it, then take the backup",
            data_dir.display()
        )));
    }
    export(&db)
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

fn export(db: &sled::Db) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    {
        let _gate = super::sled_gate();
        for name in db.tree_names() {
            if name == SLED_DEFAULT_TREE {
                continue;
            }
            out.push(TAG_TREE);
            put_bytes(&mut out, &name)?;
            for item in db.open_tree(&name)?.iter() {
                let (key, value) = item?;
                out.push(TAG_ENTRY);
                put_bytes(&mut out, &key)?;
                put_bytes(&mut out, &value)?;
            }
        }
    }
    let sum = digest::digest(&digest::SHA256, &out);
    out.push(TAG_END);
    out.extend_from_slice(sum.as_ref());
    Ok(out)
}

/// One tree of a parsed backup.
struct Tree<'a> {
    name: &'a [u8],
    entries: Vec<(&'a [u8], &'a [u8])>,
}

fn corrupt(reason: &str) -> StoreError {
    StoreError::Invalid(format!("not a whatsd backup, or a damaged one: {reason}"))
}

fn parse(backup: &[u8]) -> Result<Vec<Tree<'_>>, StoreError> {
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
    let db = open_db(data_dir)?;
    let mut summary = BackupSummary {
        bytes: backup.len() as u64,
        ..BackupSummary::default()
    };
    for tree in &trees {
        let target = db.open_tree(tree.name)?;
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
    db.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wacore::store::traits::{DeviceStore, SignalStore};

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
