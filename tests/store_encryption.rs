//! Encryption at rest: no plaintext on disk, wrong keys refused, tampered or
//! moved values rejected per value and per session, key loading order.

use std::path::Path;

use bytes::Bytes;
use wacore::store::traits::{DeviceStore, SignalStore};
use whatsd::proto::v1::SessionRecord;
use whatsd::store::{KeyConfig, KeySource, MasterKey, Store, StoreError, load_master_key};

/// 32 bytes that cannot occur by accident.
const IDENTITY: [u8; 32] = *b"IDENTITY-KEY-PLAINTEXT-MARKER-32";
const PEER: &str = "15550001111:2@s.whatsapp.net";

fn session_blob() -> Vec<u8> {
    b"SESSION-BLOB-PLAINTEXT-MARKER/".repeat(20)
}

/// Every file under `dir`, recursively.
fn all_file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn populate(store: &Store) -> Vec<u8> {
    let b = store.device_backend("alice").unwrap();
    b.create().await.unwrap();
    b.put_identity(PEER, IDENTITY).await.unwrap();
    b.put_sessions_batch(&[(PEER.into(), Bytes::from(session_blob()))])
        .await
        .unwrap();
    let device = b.load().await.unwrap().unwrap();
    store
        .put_record(&SessionRecord {
            id: "alice".to_string(),
            push_name: "PUSH-NAME-PLAINTEXT-MARKER".to_string(),
            phone: "15550002222".to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    store.flush().await.unwrap();
    // The ADV secret is random; it must not leak either.
    device.adv_secret_key.to_vec()
}

#[tokio::test]
async fn plaintext_never_reaches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate().unwrap();
    let adv_secret = {
        let store = Store::open(dir.path(), &key).unwrap();
        populate(&store).await
    };

    let files = all_file_bytes(dir.path());
    assert!(!files.is_empty());
    // Positive control: tree names of fixed trees are stored as they are;
    // if the scan could not see the data this would fail.
    assert!(
        files
            .iter()
            .any(|(_, bytes)| contains(bytes, b"session_records")),
        "the scan must see the store's files"
    );
    for (name, bytes) in &files {
        for (what, needle) in [
            ("identity key", &IDENTITY[..]),
            ("session blob", &session_blob()[..60]),
            ("push name", &b"PUSH-NAME-PLAINTEXT-MARKER"[..]),
            ("ADV secret", &adv_secret[..]),
            // Keys and tree names are keyed hashes (issue 12).
            ("peer address", PEER.as_bytes()),
            ("peer user", &PEER.as_bytes()[..11]),
            ("session id", &b"alice"[..]),
            ("phone", &b"15550002222"[..]),
        ] {
            assert!(!contains(bytes, needle), "{what} in plaintext in {name}");
        }
    }
}

#[tokio::test]
async fn wrong_master_key_fails_at_startup_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate().unwrap();
    {
        let store = Store::open(dir.path(), &key).unwrap();
        populate(&store).await;
    }
    let wrong = MasterKey::generate().unwrap();
    let err = Store::open(dir.path(), &wrong).unwrap_err();
    assert!(matches!(err, StoreError::WrongMasterKey { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("master key does not open the store"),
        "{err}"
    );

    let store = Store::open(dir.path(), &key).expect("the right key still opens it");
    let b = store.device_backend("alice").unwrap();
    assert_eq!(b.load_identity(PEER).await.unwrap(), Some(IDENTITY));
}

/// Opens the raw sled database under a closed store.
fn raw_db(dir: &Path) -> sled::Db {
    sled::open(dir.join("db")).unwrap()
}

#[tokio::test]
async fn tampered_or_moved_values_fail_for_that_value_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate().unwrap();
    // Stored names: keyed hashes only the open store can compute.
    let (alice_tree, bob_tree, peer_key, moved_key) = {
        let store = Store::open(dir.path(), &key).unwrap();
        populate(&store).await;
        let bob = store.device_backend("bob").unwrap();
        bob.put_session(PEER, b"bob-session").await.unwrap();
        let alice = store.device_backend("alice").unwrap();
        alice
            .put_session("other@s.whatsapp.net", b"other")
            .await
            .unwrap();
        (
            alice.tree_name().to_vec(),
            bob.tree_name().to_vec(),
            alice.stored_signal_session_key(PEER),
            alice.stored_signal_session_key("moved@s.whatsapp.net"),
        )
    };
    {
        let db = raw_db(dir.path());
        let alice = db.open_tree(&alice_tree).unwrap();
        let bob = db.open_tree(&bob_tree).unwrap();
        let sealed = alice.get(&peer_key).unwrap().expect("sealed session");
        // Copy alice's value under another key of hers, and into bob's tree.
        alice.insert(&moved_key, sealed.clone()).unwrap();
        // Same key in bob's tree: keys are blinded per store, not per session.
        bob.insert(&peer_key, sealed.clone()).unwrap();
        // Flip one ciphertext bit of alice's original.
        let mut tampered = sealed.to_vec();
        let last = tampered.len() - 1;
        tampered[last / 2] ^= 0x01;
        alice.insert(&peer_key, tampered).unwrap();
        db.flush().unwrap();
    }

    let store = Store::open(dir.path(), &key).unwrap();
    let alice = store.device_backend("alice").unwrap();
    let bob = store.device_backend("bob").unwrap();
    let err = alice.get_session(PEER).await.unwrap_err();
    assert!(
        format!("{err:?}").contains("Undecryptable"),
        "tampered value: {err:?}"
    );
    assert!(
        alice.get_session("moved@s.whatsapp.net").await.is_err(),
        "a value copied under another key must not open"
    );
    assert!(
        bob.get_session(PEER).await.is_err(),
        "a value copied into another session must not open"
    );
    // Everything else still reads.
    assert_eq!(alice.load_identity(PEER).await.unwrap(), Some(IDENTITY));
    assert_eq!(
        alice
            .get_session("other@s.whatsapp.net")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"other"[..])
    );
    assert!(alice.load().await.unwrap().is_some());
}

#[tokio::test]
async fn corrupt_record_is_an_error_for_that_session_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate().unwrap();
    let a_key = {
        let store = Store::open(dir.path(), &key).unwrap();
        for id in ["a", "b"] {
            store
                .put_record(&SessionRecord {
                    id: id.to_string(),
                    phone: "1".to_string(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        // Records are stored under the keyed hash of their id.
        store.blinder().blind(b"session", b"a")
    };
    {
        let db = raw_db(dir.path());
        let records = db.open_tree("session_records").unwrap();
        assert!(records.contains_key(a_key).unwrap());
        records.insert(a_key, &b"garbage"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path(), &key).unwrap();
    let listed = store.list_records().unwrap();
    assert_eq!(listed.len(), 2);
    for (id, record) in listed {
        match id.as_str() {
            // An unreadable record cannot say whose it is: labelled by the
            // start of its keyed hash.
            label if label.starts_with('?') => assert!(
                matches!(record, Err(StoreError::Undecryptable { ref session, .. }) if session == label),
                "{record:?}"
            ),
            _ => assert_eq!(record.unwrap().id, "b"),
        }
    }
    assert!(
        matches!(store.get_record("a"), Err(StoreError::Undecryptable { ref session, .. }) if session == "a")
    );
    // Rewriting the broken record repairs it and keeps the index tidy.
    store
        .put_record(&SessionRecord {
            id: "a".to_string(),
            phone: "2".to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(store.sessions_for_phone("1").unwrap(), vec!["b"]);
    assert_eq!(store.sessions_for_phone("2").unwrap(), vec!["a"]);
}

#[tokio::test]
async fn rekey_reseals_everything_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let old = MasterKey::generate().unwrap();
    let new = MasterKey::generate().unwrap();
    {
        let store = Store::open(dir.path(), &old).unwrap();
        populate(&store).await;
    }
    let report = whatsd::store::rekey(dir.path(), &old, &new).unwrap();
    assert!(report.resealed >= 4, "{report:?}");
    assert_eq!(report.unreadable, 0);

    assert!(matches!(
        Store::open(dir.path(), &old),
        Err(StoreError::WrongMasterKey { .. })
    ));
    let store = Store::open(dir.path(), &new).unwrap();
    let b = store.device_backend("alice").unwrap();
    assert_eq!(b.load_identity(PEER).await.unwrap(), Some(IDENTITY));
    assert_eq!(
        b.get_session(PEER).await.unwrap().as_deref(),
        Some(&session_blob()[..])
    );
    assert_eq!(
        store.get_record("alice").unwrap().unwrap().push_name,
        "PUSH-NAME-PLAINTEXT-MARKER"
    );
}

#[test]
fn master_key_lookup_order() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("sessions");

    // First start, nothing configured: generated into the data dir, 0600.
    let (generated, source) = load_master_key(&KeyConfig::default(), &data_dir).unwrap();
    let key_file = data_dir.join("master.key");
    assert_eq!(source, KeySource::Generated(key_file.clone()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(Store::open(&data_dir, &generated).unwrap());

    // Next start: the same key, from the data dir.
    let (again, source) = load_master_key(&KeyConfig::default(), &data_dir).unwrap();
    assert_eq!(source, KeySource::DataDir(key_file.clone()));
    drop(Store::open(&data_dir, &again).expect("same key opens the store"));

    // A systemd credential wins over the data dir; a configured file over both.
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("master-key"), [1u8; 32]).unwrap();
    let configured = dir.path().join("configured.key");
    std::fs::write(&configured, format!("{}\n", "02".repeat(32))).unwrap();
    let (_, source) = load_master_key(
        &KeyConfig {
            key_file: None,
            credentials_dir: Some(creds.clone()),
        },
        &data_dir,
    )
    .unwrap();
    assert_eq!(source, KeySource::Credential(creds.join("master-key")));
    let (_, source) = load_master_key(
        &KeyConfig {
            key_file: Some(configured.clone()),
            credentials_dir: Some(creds),
        },
        &data_dir,
    )
    .unwrap();
    assert_eq!(source, KeySource::Configured(configured));

    // The generated key is gone but the store exists: never generate again.
    std::fs::remove_file(&key_file).unwrap();
    let err = load_master_key(&KeyConfig::default(), &data_dir).unwrap_err();
    assert!(
        matches!(err, StoreError::MissingMasterKey { .. }),
        "{err:?}"
    );
    assert!(!key_file.exists(), "nothing was written");

    // A configured file that does not exist is an error, not a fallback.
    let err = load_master_key(
        &KeyConfig {
            key_file: Some(dir.path().join("missing.key")),
            credentials_dir: None,
        },
        &data_dir,
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::KeyFile { .. }), "{err:?}");
}
