//! Master-key rotation (`whatsd store rekey --new-key-file F`).
//!
//! Crash-safe by construction:
//!
//! 1. `store_meta/rekey_target` is written (sealed with the new key) and
//!    flushed. From now on `Store::open` refuses to start with either key.
//! 2. Every sealed value is re-sealed with the new key, tree by tree, in
//!    batches. AES-GCM authentication tells unambiguously which key sealed a
//!    value, so a re-run after a crash skips what is already done.
//! 3. One atomic batch replaces `key_check` with the new key's verifier and
//!    removes `rekey_target`; then the store opens with the new key only.
//!
//! A crash anywhere before 3 leaves a store that a re-run finishes; after 3
//! the rotation is complete and the operator installs the new key.

use std::path::Path;

use super::crypto::{MasterKey, Sealer};
use super::error::StoreError;
use super::ids::INDEX_KEY;
use super::{Dbs, KEY_CHECK, META_TREE, PHONE_INDEX_TREE, REKEY_TARGET, VERIFIER, store_exists};

/// Values re-sealed per sled batch.
const BATCH_SIZE: usize = 512;

/// What a rotation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Values re-sealed with the new key by this run.
    pub resealed: u64,
    /// Values found already sealed with the new key (an interrupted run).
    pub already_new: u64,
    /// Values neither key opens (already corrupt before the rotation); left
    /// as they are, they keep reading as errors for their session.
    pub unreadable: u64,
}

/// Re-seals every value of the store in `data_dir` from `old` to `new`.
///
/// The daemon must not be running (sled's file lock makes opening fail if
/// it is). Afterwards the store opens only with `new`; installing the new key
/// (config, credential or [`MasterKey::install_file`]) is the caller's job.
pub fn rekey(data_dir: &Path, old: &MasterKey, new: &MasterKey) -> Result<RekeyReport, StoreError> {
    rekey_until(data_dir, old, new, None)
}

/// [`rekey`], stopping (as if the process died) after `stop_after` values
/// have been re-sealed; tests use it to exercise resumption.
fn rekey_until(
    data_dir: &Path,
    old: &MasterKey,
    new: &MasterKey,
    stop_after: Option<u64>,
) -> Result<RekeyReport, StoreError> {
    if !store_exists(data_dir) {
        return Err(StoreError::Invalid(format!(
            "no store in {}",
            data_dir.display()
        )));
    }
    // A conversion to format 2 that committed but was not swapped in yet
    // is finished first, so the rotation works on the database that stays.
    let _lock = super::migrate::prepare(data_dir)?;
    let dbs = Dbs::open(data_dir)?;
    let db = &dbs.state;
    let old = Sealer::new(old);
    let new = Sealer::new(new);
    let meta = db.open_tree(META_TREE)?;
    let proves = |sealer: &Sealer, meta_key: &[u8], sealed: &[u8]| {
        sealer
            .open(META_TREE.as_bytes(), meta_key, sealed)
            .is_ok_and(|plain| plain == VERIFIER)
    };

    let check = meta.get(KEY_CHECK)?.ok_or_else(|| StoreError::Corrupt {
        session: "<store>".to_string(),
        what: "key check record",
        reason: "missing".to_string(),
    })?;
    let pending = meta.get(REKEY_TARGET)?;
    if !proves(&old, KEY_CHECK, &check) {
        if pending.is_none() && proves(&new, KEY_CHECK, &check) {
            return Err(StoreError::AlreadyRekeyed {
                path: data_dir.to_path_buf(),
            });
        }
        return Err(StoreError::WrongMasterKey {
            path: data_dir.to_path_buf(),
        });
    }
    match pending {
        Some(target) if !proves(&new, REKEY_TARGET, &target) => {
            return Err(StoreError::Invalid(
                "an interrupted rotation to a different new key is pending; \
                 re-run it with that key file"
                    .to_string(),
            ));
        }
        Some(_) => tracing::info!("resuming an interrupted key rotation"),
        None => {
            let _gate = super::sled_gate();
            meta.insert(
                REKEY_TARGET,
                new.seal(META_TREE.as_bytes(), REKEY_TARGET, VERIFIER)?,
            )?;
            db.flush()?;
        }
    }

    let mut report = RekeyReport::default();
    for (name, tree_db) in dbs.trees() {
        if name == META_TREE.as_bytes() || name == PHONE_INDEX_TREE.as_bytes() {
            continue;
        }
        let tree = tree_db.open_tree(&name)?;
        let mut batch = sled::Batch::default();
        let mut pending_in_batch = 0;
        for item in tree.iter() {
            if stop_after == Some(report.resealed) {
                {
                    let _gate = super::sled_gate();
                    tree.apply_batch(batch)?;
                }
                dbs.flush()?;
                return Ok(report);
            }
            let (key, sealed) = item?;
            if new.open(&name, &key, &sealed).is_ok() {
                report.already_new += 1;
                continue;
            }
            match old.open(&name, &key, &sealed) {
                Ok(plain) => {
                    let resealed = new.seal(&name, &key, &plain)?;
                    batch.insert(key, resealed);
                    report.resealed += 1;
                    pending_in_batch += 1;
                }
                Err(_) => report.unreadable += 1,
            }
            if pending_in_batch == BATCH_SIZE {
                {
                    let _gate = super::sled_gate();
                    tree.apply_batch(std::mem::take(&mut batch))?;
                }
                pending_in_batch = 0;
            }
        }
        {
            let _gate = super::sled_gate();
            tree.apply_batch(batch)?;
        }
    }
    dbs.flush()?;

    let mut commit = sled::Batch::default();
    // The index key (see `ids`) moves to the new key in the same atomic
    // step as the key check, so every hashed key stays valid.
    if let Some(sealed) = meta.get(INDEX_KEY)? {
        let meta_name = META_TREE.as_bytes();
        let plain = old
            .open(meta_name, INDEX_KEY, &sealed)
            .or_else(|_| new.open(meta_name, INDEX_KEY, &sealed))
            .map_err(|_| StoreError::Undecryptable {
                session: "<store>".to_string(),
                what: "index key",
            })?;
        commit.insert(INDEX_KEY, new.seal(meta_name, INDEX_KEY, &plain)?);
    }
    commit.insert(
        KEY_CHECK,
        new.seal(META_TREE.as_bytes(), KEY_CHECK, VERIFIER)?,
    );
    commit.remove(REKEY_TARGET);
    {
        let _gate = super::sled_gate();
        meta.apply_batch(commit)?;
    }
    db.flush()?;
    if report.unreadable > 0 {
        tracing::warn!(
            unreadable = report.unreadable,
            "key rotation left values that neither key opens"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use wacore::store::traits::{DeviceStore, SignalStore};

    #[tokio::test]
    async fn interrupted_rotation_blocks_both_keys_until_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let old = MasterKey::generate().unwrap();
        let new = MasterKey::generate().unwrap();
        {
            let store = Store::open(dir.path(), &old).unwrap();
            for session in ["a", "b"] {
                let b = store.device_backend(session).unwrap();
                b.create().await.unwrap();
                for i in 0..20 {
                    b.put_session(&format!("{i}@s.whatsapp.net"), &[i as u8; 40])
                        .await
                        .unwrap();
                }
            }
        }

        let partial = rekey_until(dir.path(), &old, &new, Some(7)).unwrap();
        assert_eq!(partial.resealed, 7);
        for key in [&old, &new] {
            assert!(matches!(
                Store::open(dir.path(), key),
                Err(StoreError::RekeyInterrupted { .. })
            ));
        }

        let report = rekey(dir.path(), &old, &new).unwrap();
        assert_eq!(
            report.already_new, 7,
            "the resumed run skips finished values"
        );
        assert!(report.resealed > 0);
        assert_eq!(report.unreadable, 0);
        assert!(matches!(
            Store::open(dir.path(), &old),
            Err(StoreError::WrongMasterKey { .. })
        ));
        assert!(matches!(
            rekey(dir.path(), &old, &new),
            Err(StoreError::AlreadyRekeyed { .. })
        ));
        let store = Store::open(dir.path(), &new).unwrap();
        for session in ["a", "b"] {
            let b = store.device_backend(session).unwrap();
            assert!(b.load().await.unwrap().is_some());
            for i in 0..20 {
                assert_eq!(
                    b.get_session(&format!("{i}@s.whatsapp.net"))
                        .await
                        .unwrap()
                        .as_deref(),
                    Some(&[i as u8; 40][..])
                );
            }
        }
    }

    #[tokio::test]
    async fn resuming_with_a_different_new_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old = MasterKey::generate().unwrap();
        {
            let store = Store::open(dir.path(), &old).unwrap();
            let b = store.device_backend("a").unwrap();
            b.put_session("x@s.whatsapp.net", b"s").await.unwrap();
        }
        let first = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        rekey_until(dir.path(), &old, &first, Some(0)).unwrap();
        assert!(matches!(
            rekey(dir.path(), &old, &other),
            Err(StoreError::Invalid(_))
        ));
        rekey(dir.path(), &old, &first).unwrap();
        Store::open(dir.path(), &first).unwrap();
    }
}
