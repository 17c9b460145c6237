//! Outgoing media at rest: the bytes of queued media sends and of Graph
//! uploads, as files under `<data_dir>/media-out`, and the Graph uploads'
//! records in sled.
//!
//! Why files encrypted with WhatsApp's own media scheme (not chunks sealed
//! with the store's AES-GCM key): a file holds exactly the body WhatsApp's
//! upload takes (AES-256-CBC under keys HKDF-expanded from a random 32-byte
//! media key, plus the truncated HMAC-SHA256), so sending streams it from
//! disk as it is, in constant memory, with no second encryption pass; and
//! the only secret, the media key, lives sealed in sled (in the queue item
//! or the upload record, see `crate::session::outbound::BlobMeta`) — a file
//! without its record is noise, and a master-key rotation needs no file
//! rewritten. What the encryption is and which key is the session's
//! business (`crate::wa::media_out`); this module only keeps files.
//!
//! | where                       | key / name                          | value                  |
//! |-----------------------------|-------------------------------------|------------------------|
//! | `<data_dir>/media-out/`     | hex(session prefix) `-` random hex  | encrypted media        |
//! | tree `media_uploads`        | session prefix ‖ media id           | sealed upload record   |
//!
//! The session prefix is the outbound queue's (a keyed hash of the
//! session's incarnation): purging a session removes its files and
//! records by name, and nothing names the session. A blob is written and
//! synced (temporary name, fsync, rename, directory fsync) before the
//! queue item that names it is committed; a crash between the two leaves
//! an orphan file (noise without its key): the session's sweep at the next
//! start removes it once it is an hour old, and its purge in any case.

use std::path::PathBuf;

use tokio::io::AsyncWriteExt;

use super::outbox::QueueItem;
use super::{Store, StoreError, sled_gate};
use crate::hex::hex;

pub(crate) const UPLOADS_TREE: &str = "media_uploads";
const DIR: &str = "media-out";
const PART: &str = ".part";

/// A blob being written: append with [`BlobFile::write`], then
/// [`BlobFile::commit`] (or drop it: the partial file is removed).
pub struct BlobFile {
    name: String,
    part: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
}

impl BlobFile {
    /// The name the blob will have.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(file) = self.file.as_mut() {
            file.write_all(bytes).await.map_err(io)?;
            self.written += bytes.len() as u64;
        }
        Ok(())
    }

    /// Syncs the file and gives it its name; durable on return.
    pub async fn commit(mut self) -> Result<String, StoreError> {
        let Some(mut file) = self.file.take() else {
            return Err(StoreError::Invalid("blob already committed".into()));
        };
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        let dir = self.part.parent().map(PathBuf::from).unwrap_or_default();
        let done = dir.join(&self.name);
        tokio::fs::rename(&self.part, &done).await.map_err(io)?;
        let sync_dir = dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&sync_dir).and_then(|d| d.sync_all())
        })
        .await;
        Ok(std::mem::take(&mut self.name))
    }
}

impl Drop for BlobFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Invalid(format!("media blob: {e}"))
}

/// Whether `name` is one this module made (no path tricks).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

impl Store {
    fn media_dir(&self) -> PathBuf {
        self.data_dir().join(DIR)
    }

    /// Starts a new blob for the session under `prefix`.
    pub async fn media_blob_create(&self, prefix: &[u8]) -> Result<BlobFile, StoreError> {
        let dir = self.media_dir();
        if !dir.is_dir() {
            let mut builder = tokio::fs::DirBuilder::new();
            #[cfg(unix)]
            builder.mode(0o700);
            builder.recursive(true).create(&dir).await.map_err(io)?;
        }
        let mut random = [0u8; 12];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| StoreError::Invalid("no randomness".into()))?;
        let name = format!("{}-{}", hex(prefix), hex(&random));
        let part = dir.join(format!("{name}{PART}"));
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let file = options.open(&part).await.map_err(io)?;
        Ok(BlobFile {
            name,
            part,
            file: Some(file),
            written: 0,
        })
    }

    /// Where blob `name` is (for reading it back).
    pub fn media_blob_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Invalid(format!("bad media blob name {name:?}")));
        }
        Ok(self.media_dir().join(name))
    }

    /// Removes blob `name`; gone already is fine.
    pub async fn media_blob_remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.media_blob_path(name)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// Removes every blob and Graph upload of the session under `prefix`;
    /// returns how many files went.
    pub async fn media_purge(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let tree = self.tree(UPLOADS_TREE)?;
        let keys: Vec<sled::IVec> = {
            let _gate = sled_gate();
            tree.scan_prefix(prefix).keys().collect::<Result<_, _>>()?
        };
        if !keys.is_empty() {
            let mut batch = sled::Batch::default();
            for key in &keys {
                batch.remove(key);
            }
            let _gate = sled_gate();
            tree.apply_batch(batch)?;
        }
        let dir = self.media_dir();
        let start = format!("{}-", hex(prefix));
        let removed = tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return 0;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&start)
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
            removed
        })
        .await
        .unwrap_or(0);
        if !keys.is_empty() {
            self.flush().await?;
        }
        Ok(removed)
    }

    /// Removes the files of the session under `prefix` that `keep` does
    /// not name and that are older than `min_age` (a crash between a
    /// blob's commit and its queue item's, or in the middle of a write,
    /// leaves one; the age spares a send being taken in right now).
    /// Returns how many went.
    pub async fn media_sweep(
        &self,
        prefix: &[u8],
        keep: std::collections::HashSet<String>,
        min_age: std::time::Duration,
    ) -> usize {
        let dir = self.media_dir();
        let start = format!("{}-", hex(prefix));
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return 0;
            };
            let mut removed = 0;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= min_age);
                if name.starts_with(&start)
                    && !keep.contains(&name)
                    && old
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
            removed
        })
        .await
        .unwrap_or(0)
    }

    /// Stores a Graph upload's record (`key` = session prefix ‖ media id);
    /// durable on return.
    pub async fn media_upload_put(&self, key: &[u8], record: &[u8]) -> Result<(), StoreError> {
        let tree = self.tree(UPLOADS_TREE)?;
        let sealed = self.sealer().seal(UPLOADS_TREE.as_bytes(), key, record)?;
        {
            let _gate = sled_gate();
            tree.insert(key, sealed)?;
        }
        self.flush().await
    }

    /// A Graph upload's record.
    pub fn media_upload(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_sealed(UPLOADS_TREE, key, "<media>", "media upload record")
    }

    /// The Graph uploads under `prefix`.
    pub fn media_uploads(&self, prefix: &[u8]) -> Result<Vec<QueueItem>, StoreError> {
        let tree = self.tree(UPLOADS_TREE)?;
        let raw: Vec<(sled::IVec, sled::IVec)> = {
            let _gate = sled_gate();
            tree.scan_prefix(prefix).collect::<Result<_, _>>()?
        };
        self.open_scanned(UPLOADS_TREE, raw, "<media>", "media upload record")
    }

    /// Forgets a Graph upload's record (its blob is the caller's to remove).
    pub fn media_upload_remove(&self, key: &[u8]) -> Result<(), StoreError> {
        let tree = self.tree(UPLOADS_TREE)?;
        let _gate = sled_gate();
        tree.remove(key)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_written_named_read_and_purged_by_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            &crate::store::crypto::MasterKey::generate().unwrap(),
        )
        .unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut blob = store.media_blob_create(&a).await.unwrap();
        blob.write(b"hello ").await.unwrap();
        blob.write(b"world").await.unwrap();
        assert_eq!(blob.written(), 11);
        let name = blob.commit().await.unwrap();
        let path = store.media_blob_path(&name).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        // An abandoned blob leaves nothing behind.
        let mut abandoned = store.media_blob_create(&a).await.unwrap();
        abandoned.write(b"x").await.unwrap();
        drop(abandoned);
        let other = store
            .media_blob_create(&b)
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
        assert_eq!(std::fs::read_dir(store.media_dir()).unwrap().count(), 2);
        let key = [a.as_slice(), b"m1"].concat();
        store.media_upload_put(&key, b"record").await.unwrap();
        assert_eq!(
            store.media_upload(&key).unwrap().as_deref(),
            Some(&b"record"[..])
        );
        assert_eq!(store.media_uploads(&a).unwrap().len(), 1);
        assert_eq!(store.media_purge(&a).await.unwrap(), 1);
        assert!(!path.exists());
        assert!(store.media_blob_path(&other).unwrap().exists());
        assert_eq!(store.media_upload(&key).unwrap(), None);
        // An orphan goes in a sweep, a kept blob stays.
        let orphan = store
            .media_blob_create(&b)
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
        let keep = std::collections::HashSet::from([other.clone()]);
        assert_eq!(
            store
                .media_sweep(&b, keep.clone(), std::time::Duration::from_secs(3600))
                .await,
            0,
            "too young"
        );
        assert_eq!(
            store.media_sweep(&b, keep, std::time::Duration::ZERO).await,
            1
        );
        assert!(!store.media_blob_path(&orphan).unwrap().exists());
        store.media_blob_remove(&other).await.unwrap();
        store.media_blob_remove(&other).await.unwrap();
        assert!(store.media_blob_path("../db").is_err());
    }
}
