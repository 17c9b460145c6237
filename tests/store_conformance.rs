//! One conformance suite for wacore's `Backend` traits, run with the same
//! assertions against wacore's reference `InMemoryBackend` and whatsd's
//! encrypted sled `DeviceBackend`.
//!
//! Each check is a generic `async fn check_*<B: Backend>(make)` where
//! `make()` returns a fresh, empty backend; the `conformance!` macro turns
//! every check into one `#[tokio::test]` per backend. Semantics are ported
//! from SqliteStore's tests (`sqlite_store.rs` 3938-5694) and
//! `InMemoryBackend`'s (`in_memory.rs` 1029-1678). Where the two reference
//! stores differ (`get_latest_sync_key_id`: "last written" vs "highest
//! decodable id"), the check sticks to inputs on which they agree.
//!
//! sled-only behaviour (reopening from disk, wiping, session records) is at
//! the bottom.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::InMemoryBackend;
use wacore::store::device::{CachedNoiseCert, CachedServerCertChain};
use wacore::store::traits::{
    AppStateSyncKey, Backend, DeviceInfo, DeviceListRecord, DeviceStore, LidPnMappingEntry,
    MsgSecretEntry, MsgSecretStore, PendingInboundKey, PendingInboundRow, ProtocolStore,
    SignalStore, TcTokenEntry,
};
use whatsd::proto::v1::SessionRecord;
use whatsd::store::{MasterKey, Store};

// --- harness -------------------------------------------------------------------

/// A sled store in a temp dir; every `make()` is a new session keyspace in
/// the same database, so the suite also exercises isolation between them.
struct SledFixture {
    dir: tempfile::TempDir,
    key: MasterKey,
    store: Store,
    next: AtomicU32,
}

impl SledFixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = MasterKey::generate().expect("key");
        let store = Store::open(dir.path(), &key).expect("open store");
        Self {
            dir,
            key,
            store,
            next: AtomicU32::new(0),
        }
    }

    fn make(&self) -> Arc<whatsd::store::DeviceBackend> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.store
            .device_backend(&format!("session-{n}"))
            .expect("device backend")
    }
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(|| std::sync::Arc::new(wacore::store::InMemoryBackend::new())).await;
                }
            )*
        }
        mod sled_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let fixture = super::SledFixture::new();
                    super::$check(|| fixture.make()).await;
                }
            )*
        }
    };
}

conformance!(
    check_sessions_batch_inserts_updates_and_last_wins,
    check_signal_batches_persist_and_upsert,
    check_identity_session_sender_key_crud,
    check_has_signal_state_for_user_matches_by_user_prefix,
    check_prekeys,
    check_mark_prekeys_uploaded_never_resurrects,
    check_signed_prekeys,
    check_mutation_macs_batch_matches_per_item,
    check_mutation_macs_per_collection,
    check_sync_keys_and_versions,
    check_sender_key_devices,
    check_lid_pn_mapping_and_reverse_index,
    check_base_keys,
    check_device_registry,
    check_group_metadata,
    check_tc_token_basics,
    check_tc_token_touch_and_received_preserve_each_other,
    check_tc_token_newer_wins,
    check_tc_token_two_window_pruning,
    check_tc_token_atomics_under_concurrency,
    check_sent_message_take_is_atomic,
    check_msg_secret_basics,
    check_msg_secret_merge_rules,
    check_msg_secret_isolated_per_backend,
    check_device_save_load_round_trip,
    check_pending_inbound_round_trip,
);

// --- helpers -------------------------------------------------------------------

fn addr(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn tc(token: &[u8], token_timestamp: i64, sender_timestamp: Option<i64>) -> TcTokenEntry {
    TcTokenEntry {
        token: token.to_vec(),
        token_timestamp,
        sender_timestamp,
    }
}

fn secret_entry(
    chat: &str,
    sender: &str,
    id: &str,
    byte: u8,
    expires_at: i64,
    message_ts: i64,
) -> MsgSecretEntry {
    MsgSecretEntry {
        chat: chat.into(),
        sender: sender.into(),
        msg_id: id.into(),
        secret: [byte; 32],
        expires_at,
        message_ts,
    }
}

fn lid_entry(lid: &str, phone: &str, at: i64) -> LidPnMappingEntry {
    LidPnMappingEntry {
        lid: lid.to_string(),
        phone_number: phone.to_string(),
        created_at: at,
        updated_at: at,
        learning_source: "usync".to_string(),
    }
}

// --- SignalStore ---------------------------------------------------------------

async fn check_sessions_batch_inserts_updates_and_last_wins<B: Backend + 'static>(
    make: impl Fn() -> Arc<B>,
) {
    let b = make();
    let first = addr("15550000001:1@s.whatsapp.net");
    let second = addr("15550000002:2@s.whatsapp.net");
    b.put_sessions_batch(&[
        (first.clone(), Bytes::from_static(b"first")),
        (second.clone(), Bytes::from_static(b"second")),
    ])
    .await
    .unwrap();
    b.put_sessions_batch(&[(first.clone(), Bytes::from_static(b"updated"))])
        .await
        .unwrap();
    assert_eq!(
        b.get_session(&first).await.unwrap().as_deref(),
        Some(&b"updated"[..])
    );
    assert_eq!(
        b.get_session(&second).await.unwrap().as_deref(),
        Some(&b"second"[..])
    );

    // A duplicate address inside one batch: the last value wins.
    let dup = addr("dup@s.whatsapp.net");
    b.put_sessions_batch(&[
        (dup.clone(), Bytes::from(vec![1u8; 4])),
        (dup.clone(), Bytes::from(vec![2u8; 4])),
    ])
    .await
    .unwrap();
    assert_eq!(
        b.get_session(&dup).await.unwrap().as_deref(),
        Some(&[2u8; 4][..])
    );

    // Empty batches are fine.
    b.put_sessions_batch(&[]).await.unwrap();
    b.put_identities_batch(&[]).await.unwrap();
    b.put_sender_keys_batch(&[]).await.unwrap();
}

async fn check_signal_batches_persist_and_upsert<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    let sessions: Vec<(Arc<str>, Bytes)> = (0..5u8)
        .map(|i| {
            (
                addr(&format!("user{i}@s.whatsapp.net")),
                Bytes::from(vec![i; 8]),
            )
        })
        .collect();
    b.put_sessions_batch(&sessions).await.unwrap();
    for (a, bytes) in &sessions {
        assert_eq!(b.get_session(a).await.unwrap().as_ref(), Some(bytes));
    }

    let identities: Vec<(Arc<str>, [u8; 32])> = (0..5u8)
        .map(|i| (addr(&format!("user{i}@s.whatsapp.net")), [i; 32]))
        .collect();
    b.put_identities_batch(&identities).await.unwrap();
    for (a, key) in &identities {
        assert_eq!(b.load_identity(a).await.unwrap(), Some(*key));
    }

    let sender_keys: Vec<(Arc<str>, Bytes)> = (0..5u8)
        .map(|i| (addr(&format!("g@g.us::user{i}")), Bytes::from(vec![i; 16])))
        .collect();
    b.put_sender_keys_batch(&sender_keys).await.unwrap();
    for (a, bytes) in &sender_keys {
        assert_eq!(
            b.get_sender_key(a).await.unwrap().as_deref(),
            Some(bytes.as_ref())
        );
    }

    let updated: Vec<(Arc<str>, Bytes)> = sessions
        .iter()
        .map(|(a, _)| (a.clone(), Bytes::from(vec![0xAA; 8])))
        .collect();
    b.put_sessions_batch(&updated).await.unwrap();
    for (a, _) in &sessions {
        assert_eq!(
            b.get_session(a).await.unwrap().as_deref(),
            Some(&[0xAA; 8][..])
        );
    }
}

async fn check_identity_session_sender_key_crud<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    let a = "15551230000:3@s.whatsapp.net";
    assert_eq!(b.load_identity(a).await.unwrap(), None);
    b.put_identity(a, [9; 32]).await.unwrap();
    b.put_identity(a, [8; 32]).await.unwrap();
    assert_eq!(b.load_identity(a).await.unwrap(), Some([8; 32]));
    b.delete_identity(a).await.unwrap();
    assert_eq!(b.load_identity(a).await.unwrap(), None);

    assert!(!b.has_session(a).await.unwrap());
    b.put_session(a, b"session").await.unwrap();
    assert!(b.has_session(a).await.unwrap());
    assert_eq!(
        b.get_session(a).await.unwrap().as_deref(),
        Some(&b"session"[..])
    );
    b.delete_session(a).await.unwrap();
    assert!(!b.has_session(a).await.unwrap());
    assert!(b.get_session(a).await.unwrap().is_none());

    let sk = "120363000000000001@g.us::15551230000@s.whatsapp.net:0";
    b.put_sender_key(sk, b"sk-1").await.unwrap();
    b.put_sender_key(sk, b"sk-2").await.unwrap();
    assert_eq!(b.get_sender_key(sk).await.unwrap(), Some(b"sk-2".to_vec()));
    b.delete_sender_key(sk).await.unwrap();
    assert_eq!(b.get_sender_key(sk).await.unwrap(), None);
}

async fn check_has_signal_state_for_user_matches_by_user_prefix<B: Backend + 'static>(
    make: impl Fn() -> Arc<B>,
) {
    let user = "5511999990000";
    let b = make();
    assert!(!b.has_signal_state_for_user(user).await.unwrap());
    b.put_session("5511999990000@s.whatsapp.net", b"sess")
        .await
        .unwrap();
    assert!(b.has_signal_state_for_user(user).await.unwrap());

    // A user this one is a prefix of must NOT match.
    let other = make();
    other
        .put_session("55119999900001@s.whatsapp.net", b"sess")
        .await
        .unwrap();
    other
        .put_identity("55119999900001:2@s.whatsapp.net", [1; 32])
        .await
        .unwrap();
    assert!(!other.has_signal_state_for_user(user).await.unwrap());

    // Non-zero device `user:dev@server`; an identity alone counts too.
    let dev = make();
    dev.put_identity("5511999990000:5@s.whatsapp.net", [7u8; 32])
        .await
        .unwrap();
    assert!(dev.has_signal_state_for_user(user).await.unwrap());

    // Sender keys and other state are not Signal session state.
    let groups = make();
    groups
        .put_sender_key("5511999990000@s.whatsapp.net", b"x")
        .await
        .unwrap();
    assert!(!groups.has_signal_state_for_user(user).await.unwrap());
}

async fn check_prekeys<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    assert_eq!(b.get_max_prekey_id().await.unwrap(), 0);
    assert!(b.load_prekey(1).await.unwrap().is_none());

    b.store_prekey(2, b"two", false).await.unwrap();
    // Ids whose byte order differs from numeric order in little-endian.
    b.store_prekeys_batch(
        &[
            (300, Bytes::from_static(b"three-hundred")),
            (70_000, Bytes::from_static(b"seventy-thousand")),
            (256, Bytes::from_static(b"two-five-six")),
        ],
        true,
    )
    .await
    .unwrap();
    assert_eq!(b.get_max_prekey_id().await.unwrap(), 70_000);
    assert_eq!(
        b.load_prekey(300).await.unwrap().as_deref(),
        Some(&b"three-hundred"[..])
    );
    let batch = b.load_prekeys_batch(&[2, 3, 70_000]).await.unwrap();
    assert_eq!(
        batch,
        vec![
            (2, Bytes::from_static(b"two")),
            (70_000, Bytes::from_static(b"seventy-thousand"))
        ],
        "only existing keys, in request order"
    );
    b.store_prekey(2, b"two-again", false).await.unwrap();
    assert_eq!(
        b.load_prekey(2).await.unwrap().as_deref(),
        Some(&b"two-again"[..])
    );

    b.remove_prekey(70_000).await.unwrap();
    assert!(b.load_prekey(70_000).await.unwrap().is_none());
    assert_eq!(b.get_max_prekey_id().await.unwrap(), 300);

    // An empty batch is fine.
    b.store_prekeys_batch(&[], false).await.unwrap();
}

async fn check_mark_prekeys_uploaded_never_resurrects<B: Backend + 'static>(
    make: impl Fn() -> Arc<B>,
) {
    let b = make();
    b.store_prekey(1, b"record-1", false).await.unwrap();
    b.store_prekey(2, b"record-2", false).await.unwrap();
    b.remove_prekey(1).await.unwrap();
    b.mark_prekeys_uploaded(&[1, 2, 3]).await.unwrap();
    assert!(
        b.load_prekey(1).await.unwrap().is_none(),
        "consumed key must not be resurrected"
    );
    assert!(
        b.load_prekey(3).await.unwrap().is_none(),
        "never-stored key must not appear"
    );
    assert_eq!(
        b.load_prekey(2).await.unwrap().as_deref(),
        Some(&b"record-2"[..]),
        "live key keeps its record"
    );
    assert_eq!(b.get_max_prekey_id().await.unwrap(), 2);
}

async fn check_signed_prekeys<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    assert!(b.load_signed_prekey(1).await.unwrap().is_none());
    assert!(b.load_all_signed_prekeys().await.unwrap().is_empty());
    b.store_signed_prekey(1, b"spk-1").await.unwrap();
    b.store_signed_prekey(2, b"spk-2").await.unwrap();
    b.store_signed_prekey(1, b"spk-1b").await.unwrap();
    assert_eq!(
        b.load_signed_prekey(1).await.unwrap(),
        Some(b"spk-1b".to_vec())
    );
    let mut all = b.load_all_signed_prekeys().await.unwrap();
    all.sort();
    assert_eq!(all, vec![(1, b"spk-1b".to_vec()), (2, b"spk-2".to_vec())]);
    b.remove_signed_prekey(1).await.unwrap();
    assert_eq!(
        b.load_all_signed_prekeys().await.unwrap(),
        vec![(2, b"spk-2".to_vec())]
    );
}

// --- AppSyncStore --------------------------------------------------------------

async fn check_mutation_macs_batch_matches_per_item<B: Backend + 'static>(
    make: impl Fn() -> Arc<B>,
) {
    let b = make();
    let name = "regular";
    let macs: Vec<AppStateMutationMAC> = (0..25u8)
        .map(|i| {
            let mut index_mac = vec![0u8; 32];
            index_mac[0] = i;
            AppStateMutationMAC {
                index_mac,
                value_mac: vec![i; 32],
            }
        })
        .collect();
    b.put_mutation_macs(name, 1, &macs).await.unwrap();

    let mut index_macs: Vec<[u8; 32]> = macs
        .iter()
        .map(|m| m.index_mac.as_slice().try_into().unwrap())
        .collect();
    index_macs.push([0xFF; 32]);
    let batch = b.get_mutation_macs(name, &index_macs).await.unwrap();
    assert_eq!(batch.len(), macs.len());
    assert!(!batch.contains_key(&[0xFF; 32]));
    for m in &macs {
        let key: [u8; 32] = m.index_mac.as_slice().try_into().unwrap();
        let per_item = b.get_mutation_mac(name, &m.index_mac).await.unwrap();
        assert_eq!(per_item.as_ref(), batch.get(&key));
        assert_eq!(batch.get(&key), Some(&m.value_mac));
    }
    assert!(b.get_mutation_macs(name, &[]).await.unwrap().is_empty());

    b.delete_mutation_macs(
        name,
        &[macs[0].index_mac.clone(), macs[1].index_mac.clone()],
    )
    .await
    .unwrap();
    assert!(
        b.get_mutation_mac(name, &macs[0].index_mac)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.get_mutation_mac(name, &macs[1].index_mac)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.get_mutation_mac(name, &macs[2].index_mac)
            .await
            .unwrap()
            .is_some()
    );
}

async fn check_mutation_macs_per_collection<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    let mac = |i: u8, v: u8| AppStateMutationMAC {
        index_mac: vec![i; 32],
        value_mac: vec![v; 32],
    };
    b.put_mutation_macs("regular", 1, &[mac(1, 10), mac(3, 30)])
        .await
        .unwrap();
    b.put_mutation_macs("critical", 1, &[mac(2, 20)])
        .await
        .unwrap();
    // The same index MAC in another collection is a different row.
    b.put_mutation_macs("regular_low", 1, &[mac(1, 11)])
        .await
        .unwrap();

    b.clear_mutation_macs("regular").await.unwrap();
    assert!(
        b.get_mutation_mac("regular", &[1; 32])
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.get_mutation_mac("regular", &[3; 32])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        b.get_mutation_mac("critical", &[2; 32]).await.unwrap(),
        Some(vec![20; 32])
    );
    assert_eq!(
        b.get_mutation_mac("regular_low", &[1; 32]).await.unwrap(),
        Some(vec![11; 32]),
        "clearing `regular` must not touch a collection it is a prefix of"
    );
}

async fn check_sync_keys_and_versions<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    assert!(b.get_sync_key(b"nope").await.unwrap().is_none());
    assert_eq!(b.get_latest_sync_key_id().await.unwrap(), None);
    let key = |byte: u8, ts: i64| AppStateSyncKey {
        key_data: vec![byte; 32],
        fingerprint: vec![byte],
        timestamp: ts,
    };
    b.set_sync_key(b"\x00\x00\x01", key(1, 100)).await.unwrap();
    b.set_sync_key(b"\x00\x00\x02", key(2, 200)).await.unwrap();
    let got = b.get_sync_key(b"\x00\x00\x01").await.unwrap().unwrap();
    assert_eq!(
        (got.key_data, got.fingerprint, got.timestamp),
        (vec![1; 32], vec![1], 100)
    );
    // Written in increasing id order, "latest written" and "highest id" agree.
    assert_eq!(
        b.get_latest_sync_key_id().await.unwrap(),
        Some(b"\x00\x00\x02".to_vec())
    );

    let fresh = b.get_version("regular").await.unwrap();
    assert_eq!(fresh.version, 0, "missing collection reads as default");
    let mut state = fresh.clone();
    state.version = 42;
    state.hash = [7; 128];
    state
        .index_value_map
        .insert("idx".to_string(), vec![1, 2, 3]);
    b.set_version("regular", state).await.unwrap();
    let loaded = b.get_version("regular").await.unwrap();
    assert_eq!(loaded.version, 42);
    assert_eq!(loaded.hash, [7; 128]);
    assert_eq!(loaded.index_value_map.get("idx"), Some(&vec![1, 2, 3]));
    assert_eq!(b.get_version("critical").await.unwrap().version, 0);
}

// --- ProtocolStore -------------------------------------------------------------

async fn check_sender_key_devices<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    let g1 = "group1@g.us";
    let g2 = "group2@g.us";
    b.set_sender_key_status(g1, &[("user1:5@lid", true), ("user2:3@lid", false)])
        .await
        .unwrap();
    let mut devices = b.get_sender_key_devices(g1).await.unwrap();
    devices.sort();
    assert_eq!(
        devices,
        vec![
            ("user1:5@lid".to_string(), true),
            ("user2:3@lid".to_string(), false)
        ]
    );
    assert!(b.get_sender_key_devices(g2).await.unwrap().is_empty());

    // Upsert overwrites.
    b.set_sender_key_status(g1, &[("user2:3@lid", true)])
        .await
        .unwrap();
    let mut devices = b.get_sender_key_devices(g1).await.unwrap();
    devices.sort();
    assert_eq!(
        devices,
        vec![
            ("user1:5@lid".to_string(), true),
            ("user2:3@lid".to_string(), true)
        ]
    );

    // Row deletion works across every group.
    b.set_sender_key_status(g2, &[("user1:5@lid", true), ("user3:1@lid", true)])
        .await
        .unwrap();
    b.delete_sender_key_device_rows(&["user1:5@lid"])
        .await
        .unwrap();
    assert_eq!(
        b.get_sender_key_devices(g1).await.unwrap(),
        vec![("user2:3@lid".to_string(), true)]
    );
    assert_eq!(
        b.get_sender_key_devices(g2).await.unwrap(),
        vec![("user3:1@lid".to_string(), true)]
    );
    b.delete_sender_key_device_rows(&[]).await.unwrap();

    b.clear_sender_key_devices(g1).await.unwrap();
    assert!(b.get_sender_key_devices(g1).await.unwrap().is_empty());
    assert_eq!(b.get_sender_key_devices(g2).await.unwrap().len(), 1);

    b.clear_all_sender_key_devices().await.unwrap();
    assert!(b.get_sender_key_devices(g2).await.unwrap().is_empty());
}

async fn check_lid_pn_mapping_and_reverse_index<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    assert!(b.get_lid_mapping("100").await.unwrap().is_none());
    assert!(b.get_pn_mapping("5511").await.unwrap().is_none());

    b.put_lid_mapping(&lid_entry("100", "5511", 1))
        .await
        .unwrap();
    let got = b.get_lid_mapping("100").await.unwrap().unwrap();
    assert_eq!(
        (got.phone_number.as_str(), got.learning_source.as_str()),
        ("5511", "usync")
    );
    assert_eq!(b.get_pn_mapping("5511").await.unwrap().unwrap().lid, "100");

    // The LID moves to another phone: the stale reverse entry goes.
    b.put_lid_mapping(&lid_entry("100", "5522", 2))
        .await
        .unwrap();
    assert!(b.get_pn_mapping("5511").await.unwrap().is_none());
    assert_eq!(b.get_pn_mapping("5522").await.unwrap().unwrap().lid, "100");

    // Batched variant; the most recent LID for a phone wins.
    b.put_lid_mappings(&[lid_entry("200", "5533", 3), lid_entry("300", "5533", 4)])
        .await
        .unwrap();
    assert_eq!(b.get_pn_mapping("5533").await.unwrap().unwrap().lid, "300");
    b.put_lid_mappings(&[]).await.unwrap();

    let mut all: Vec<(String, String)> = b
        .get_all_lid_mappings()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.lid, e.phone_number))
        .collect();
    all.sort();
    assert_eq!(
        all,
        vec![
            ("100".to_string(), "5522".to_string()),
            ("200".to_string(), "5533".to_string()),
            ("300".to_string(), "5533".to_string()),
        ]
    );
}

async fn check_base_keys<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    let a = "5511:1@s.whatsapp.net";
    assert!(!b.has_same_base_key(a, "M1", b"base").await.unwrap());
    b.save_base_key(a, "M1", b"base").await.unwrap();
    assert!(b.has_same_base_key(a, "M1", b"base").await.unwrap());
    assert!(!b.has_same_base_key(a, "M1", b"other").await.unwrap());
    assert!(!b.has_same_base_key(a, "M2", b"base").await.unwrap());
    b.delete_base_key(a, "M1").await.unwrap();
    assert!(!b.has_same_base_key(a, "M1", b"base").await.unwrap());
}

async fn check_device_registry<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    assert!(b.get_devices("nonexistent").await.unwrap().is_none());
    b.update_device_list(DeviceListRecord {
        user: "1234567890".to_string(),
        devices: vec![DeviceInfo::new(0, None), DeviceInfo::new(1, Some(42))],
        timestamp: 1000,
        phash: Some("2:abcdef".to_string()),
        raw_id: Some(7),
    })
    .await
    .unwrap();
    let loaded = b.get_devices("1234567890").await.unwrap().unwrap();
    assert_eq!(loaded.devices.len(), 2);
    assert_eq!(loaded.devices[1].device_id, 1);
    assert_eq!(loaded.devices[1].key_index, Some(42));
    assert_eq!(loaded.phash.as_deref(), Some("2:abcdef"));
    assert_eq!(loaded.raw_id, Some(7));

    b.update_device_lists(vec![
        DeviceListRecord {
            user: "1234567890".to_string(),
            devices: vec![
                DeviceInfo::new(0, None),
                DeviceInfo::new(2, None).with_hosting(true),
            ],
            timestamp: 2000,
            phash: Some("2:new".to_string()),
            raw_id: None,
        },
        DeviceListRecord {
            user: "999".to_string(),
            devices: vec![],
            timestamp: 2000,
            phash: None,
            raw_id: None,
        },
    ])
    .await
    .unwrap();
    let loaded = b.get_devices("1234567890").await.unwrap().unwrap();
    assert_eq!(loaded.phash.as_deref(), Some("2:new"));
    assert!(loaded.devices[1].is_hosted);
    assert!(b.get_devices("999").await.unwrap().is_some());

    b.delete_devices("1234567890").await.unwrap();
    assert!(b.get_devices("1234567890").await.unwrap().is_none());
    assert!(b.get_devices("999").await.unwrap().is_some());
}

async fn check_group_metadata<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    let jid = "120363000000000001@g.us";
    assert!(b.get_group_metadata(jid).await.unwrap().is_none());
    b.put_group_metadata(jid, b"blob-v1").await.unwrap();
    assert_eq!(
        b.get_group_metadata(jid).await.unwrap().as_deref(),
        Some(&b"blob-v1"[..])
    );
    b.put_group_metadata(jid, b"blob-v2").await.unwrap();
    assert_eq!(
        b.get_group_metadata(jid).await.unwrap().as_deref(),
        Some(&b"blob-v2"[..])
    );
    b.delete_group_metadata(jid).await.unwrap();
    assert!(b.get_group_metadata(jid).await.unwrap().is_none());
}

async fn check_tc_token_basics<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    assert!(b.get_tc_token("nonexistent@lid").await.unwrap().is_none());
    b.put_tc_token(
        "user@lid",
        &tc(&[1, 2, 3, 4, 5], 1_707_000_000, Some(1_707_000_100)),
    )
    .await
    .unwrap();
    let e = b.get_tc_token("user@lid").await.unwrap().unwrap();
    assert_eq!(
        (e.token, e.token_timestamp, e.sender_timestamp),
        (vec![1, 2, 3, 4, 5], 1_707_000_000, Some(1_707_000_100))
    );
    b.put_tc_token("user@lid", &tc(&[4, 5, 6], 2000, Some(1500)))
        .await
        .unwrap();
    let e = b.get_tc_token("user@lid").await.unwrap().unwrap();
    assert_eq!(
        (e.token, e.token_timestamp, e.sender_timestamp),
        (vec![4, 5, 6], 2000, Some(1500))
    );

    b.put_tc_token("user2@lid", &tc(&[1], 1000, None))
        .await
        .unwrap();
    b.put_tc_token("user3@lid", &tc(&[1], 1000, None))
        .await
        .unwrap();
    let mut jids = b.get_all_tc_token_jids().await.unwrap();
    jids.sort();
    assert_eq!(jids, vec!["user2@lid", "user3@lid", "user@lid"]);

    b.delete_tc_token("user@lid").await.unwrap();
    assert!(b.get_tc_token("user@lid").await.unwrap().is_none());

    // Both lack sender state: the token window alone decides.
    b.put_tc_token("old@lid", &tc(&[1], 1000, None))
        .await
        .unwrap();
    b.put_tc_token("recent@lid", &tc(&[2], 5000, None))
        .await
        .unwrap();
    let deleted = b.delete_expired_tc_tokens(3000, 3000).await.unwrap();
    assert_eq!(deleted, 3, "old@lid, user2@lid and user3@lid are stale");
    assert!(b.get_tc_token("old@lid").await.unwrap().is_none());
    assert!(b.get_tc_token("recent@lid").await.unwrap().is_some());
}

async fn check_tc_token_touch_and_received_preserve_each_other<B: Backend + 'static>(
    make: impl Fn() -> Arc<B>,
) {
    let b = make();
    b.touch_tc_token_sender_timestamp("user@lid", 5000)
        .await
        .unwrap();
    let placeholder = b.get_tc_token("user@lid").await.unwrap().unwrap();
    assert!(placeholder.token.is_empty());
    assert_eq!(placeholder.sender_timestamp, Some(5000));

    b.store_received_tc_token("user@lid", &[7, 8, 9], 4000)
        .await
        .unwrap();
    let a = b.get_tc_token("user@lid").await.unwrap().unwrap();
    assert_eq!(
        (a.token, a.token_timestamp, a.sender_timestamp),
        (vec![7, 8, 9], 4000, Some(5000))
    );

    b.touch_tc_token_sender_timestamp("user@lid", 6000)
        .await
        .unwrap();
    let c = b.get_tc_token("user@lid").await.unwrap().unwrap();
    assert_eq!(c.token, vec![7, 8, 9], "touch must keep the real token");
    assert_eq!(c.token_timestamp, 4000);
    assert_eq!(c.sender_timestamp, Some(6000));

    b.touch_tc_token_sender_timestamp("user@lid", 1000)
        .await
        .unwrap();
    let d = b.get_tc_token("user@lid").await.unwrap().unwrap();
    assert_eq!(d.sender_timestamp, Some(6000), "touch is advance-only");

    // No prior entry: the sender bucket starts unset.
    b.store_received_tc_token("u3@lid", &[9], 4000)
        .await
        .unwrap();
    assert_eq!(
        b.get_tc_token("u3@lid")
            .await
            .unwrap()
            .unwrap()
            .sender_timestamp,
        None
    );
}

async fn check_tc_token_newer_wins<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    b.store_received_tc_token("c@lid", &[1, 1, 1], 5000)
        .await
        .unwrap();
    b.store_received_tc_token("c@lid", &[2, 2, 2], 3000)
        .await
        .unwrap();
    let e = b.get_tc_token("c@lid").await.unwrap().unwrap();
    assert_eq!(e.token, vec![1, 1, 1], "older write must not overwrite");
    assert_eq!(e.token_timestamp, 5000);

    b.store_received_tc_token("c@lid", &[3, 3, 3], 7000)
        .await
        .unwrap();
    let e = b.get_tc_token("c@lid").await.unwrap().unwrap();
    assert_eq!((e.token, e.token_timestamp), (vec![3, 3, 3], 7000));

    // Equal timestamps: "at least as new" overwrites.
    b.store_received_tc_token("c@lid", &[4, 4, 4], 7000)
        .await
        .unwrap();
    assert_eq!(
        b.get_tc_token("c@lid").await.unwrap().unwrap().token,
        vec![4, 4, 4]
    );

    // A placeholder never blocks the first real token.
    b.touch_tc_token_sender_timestamp("p@lid", 9000)
        .await
        .unwrap();
    b.store_received_tc_token("p@lid", &[4, 4, 4], 6000)
        .await
        .unwrap();
    let e = b.get_tc_token("p@lid").await.unwrap().unwrap();
    assert_eq!(
        (e.token, e.token_timestamp, e.sender_timestamp),
        (vec![4, 4, 4], 6000, Some(9000))
    );
}

async fn check_tc_token_two_window_pruning<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    // token_cutoff = 1000, sender_cutoff = 2000.
    b.touch_tc_token_sender_timestamp("recent_ph@lid", 2500)
        .await
        .unwrap();
    b.touch_tc_token_sender_timestamp("stale_ph@lid", 100)
        .await
        .unwrap();
    b.put_tc_token("expired_live_sender@lid", &tc(&[1], 1, Some(2500)))
        .await
        .unwrap();
    b.put_tc_token("orphan_expired@lid", &tc(&[2], 1, None))
        .await
        .unwrap();
    b.put_tc_token("fresh_tok@lid", &tc(&[3], 5000, None))
        .await
        .unwrap();
    // Empty token with a fresh token timestamp is not a live token.
    b.put_tc_token("empty_tok@lid", &tc(&[], 5000, Some(10)))
        .await
        .unwrap();

    let removed = b.delete_expired_tc_tokens(1000, 2000).await.unwrap();
    assert_eq!(removed, 3, "only fully stale rows are pruned");
    for (jid, kept) in [
        ("recent_ph@lid", true),
        ("stale_ph@lid", false),
        ("expired_live_sender@lid", true),
        ("orphan_expired@lid", false),
        ("fresh_tok@lid", true),
        ("empty_tok@lid", false),
    ] {
        assert_eq!(
            b.get_tc_token(jid).await.unwrap().is_some(),
            kept,
            "{jid} kept={kept}"
        );
    }
}

async fn check_tc_token_atomics_under_concurrency<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    let mut tasks = Vec::new();
    for i in 1..=40i64 {
        let touch = Arc::clone(&b);
        tasks.push(tokio::spawn(async move {
            touch
                .touch_tc_token_sender_timestamp("race@lid", 1000 + i)
                .await
                .unwrap();
        }));
        let receive = Arc::clone(&b);
        tasks.push(tokio::spawn(async move {
            receive
                .store_received_tc_token("race@lid", &[i as u8], 500 + i)
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let e = b.get_tc_token("race@lid").await.unwrap().unwrap();
    assert_eq!(
        e.sender_timestamp,
        Some(1040),
        "no touch may be lost to a concurrent token write"
    );
    assert_eq!(
        (e.token, e.token_timestamp),
        (vec![40], 540),
        "the newest received token wins regardless of interleaving"
    );
}

async fn check_sent_message_take_is_atomic<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    assert!(
        b.take_sent_message("chat@g.us", "M0")
            .await
            .unwrap()
            .is_none()
    );
    b.store_sent_message("chat@g.us", "M1", b"payload-1")
        .await
        .unwrap();
    b.store_sent_message("other@g.us", "M1", b"payload-other")
        .await
        .unwrap();
    assert_eq!(
        b.take_sent_message("chat@g.us", "M1").await.unwrap(),
        Some(b"payload-1".to_vec())
    );
    assert!(
        b.take_sent_message("chat@g.us", "M1")
            .await
            .unwrap()
            .is_none(),
        "a take consumes"
    );

    // Many concurrent takes of one message: exactly one gets it.
    b.store_sent_message("chat@g.us", "RACE", b"once")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let b = Arc::clone(&b);
        tasks.push(tokio::spawn(async move {
            b.take_sent_message("chat@g.us", "RACE").await.unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        if task.await.unwrap().is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);

    // Expiry by store time: a past cutoff keeps, a future cutoff drops.
    let now = wacore::time::now_secs();
    assert_eq!(b.delete_expired_sent_messages(now - 3600).await.unwrap(), 0);
    assert_eq!(b.delete_expired_sent_messages(now + 3600).await.unwrap(), 1);
    assert!(
        b.take_sent_message("other@g.us", "M1")
            .await
            .unwrap()
            .is_none()
    );
}

// --- MsgSecretStore ------------------------------------------------------------

async fn check_msg_secret_basics<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    assert!(b.get_msg_secret("c", "s", "M").await.unwrap().is_none());
    assert!(
        b.get_msg_secret_with_ts("c", "s", "M")
            .await
            .unwrap()
            .is_none()
    );
    for (chat, sender, id, byte) in [
        ("c1", "s1", "M1", 1u8),
        ("c1", "s1", "M2", 2),
        ("c1", "s2", "M1", 3),
        ("c2", "s1", "M1", 4),
    ] {
        b.put_msg_secret(chat, sender, id, &[byte; 32])
            .await
            .unwrap();
    }
    for (chat, sender, id, byte) in [
        ("c1", "s1", "M1", 1u8),
        ("c1", "s1", "M2", 2),
        ("c1", "s2", "M1", 3),
        ("c2", "s1", "M1", 4),
    ] {
        assert_eq!(
            b.get_msg_secret(chat, sender, id).await.unwrap(),
            Some(vec![byte; 32]),
            "({chat},{sender},{id})"
        );
    }
    // Last write wins for the secret.
    b.put_msg_secret("c1", "s1", "M1", &[9; 32]).await.unwrap();
    assert_eq!(
        b.get_msg_secret("c1", "s1", "M1").await.unwrap(),
        Some(vec![9; 32])
    );

    // A batch, with an update to an earlier row of the same batch.
    let mut entries: Vec<_> = (0..300)
        .map(|i| secret_entry("c", "s", &format!("B{i}"), 0x5a, 0, 0))
        .collect();
    entries.push(secret_entry("c", "s", "B0", 0xa5, 0, 0));
    assert_eq!(b.put_msg_secrets(entries).await.unwrap(), 301);
    assert_eq!(
        b.get_msg_secret("c", "s", "B0").await.unwrap(),
        Some(vec![0xa5; 32])
    );
    assert_eq!(
        b.get_msg_secret("c", "s", "B299").await.unwrap(),
        Some(vec![0x5a; 32])
    );
    assert_eq!(b.put_msg_secrets(Vec::new()).await.unwrap(), 0);
}

async fn check_msg_secret_merge_rules<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    let now = wacore::time::now_secs();
    b.put_msg_secrets(vec![
        secret_entry("c", "s", "NEVER", 1, 0, 0),
        secret_entry("c", "s", "FUTURE", 2, now + 86_400, 0),
        secret_entry("c", "s", "PAST", 3, now - 86_400, 0),
        secret_entry("c", "s", "EXACT", 4, now, 0),
    ])
    .await
    .unwrap();
    assert_eq!(
        b.delete_expired_msg_secrets(now).await.unwrap(),
        2,
        "rows with a deadline at or before the cutoff go"
    );
    assert!(b.get_msg_secret("c", "s", "NEVER").await.unwrap().is_some());
    assert!(
        b.get_msg_secret("c", "s", "FUTURE")
            .await
            .unwrap()
            .is_some()
    );
    assert!(b.get_msg_secret("c", "s", "PAST").await.unwrap().is_none());
    assert!(b.get_msg_secret("c", "s", "EXACT").await.unwrap().is_none());
    assert_eq!(
        b.delete_expired_msg_secrets(now + 2 * 86_400)
            .await
            .unwrap(),
        1
    );
    assert!(
        b.get_msg_secret("c", "s", "FUTURE")
            .await
            .unwrap()
            .is_none()
    );

    // A re-persist with an earlier deadline must not shrink the window.
    b.put_msg_secrets(vec![secret_entry("c", "s", "M", 1, now + 90 * 86_400, 0)])
        .await
        .unwrap();
    b.put_msg_secrets(vec![secret_entry("c", "s", "M", 1, now + 30 * 86_400, 0)])
        .await
        .unwrap();
    assert_eq!(
        b.delete_expired_msg_secrets(now + 60 * 86_400)
            .await
            .unwrap(),
        0,
        "the later (90 d) deadline is kept"
    );
    assert!(b.get_msg_secret("c", "s", "M").await.unwrap().is_some());
    // 0 (never) beats any finite deadline.
    b.put_msg_secret("c", "s", "M", &[1; 32]).await.unwrap();
    assert_eq!(
        b.delete_expired_msg_secrets(now + 200 * 86_400)
            .await
            .unwrap(),
        0,
        "a 0 (never) deadline wins over any finite one"
    );
    assert!(b.get_msg_secret("c", "s", "M").await.unwrap().is_some());

    // message_ts: a known parent time survives a 0 redelivery; later wins.
    let parent = 1_700_000_000;
    b.put_msg_secrets(vec![secret_entry("c", "s", "T", 5, 0, parent)])
        .await
        .unwrap();
    assert_eq!(
        b.get_msg_secret_with_ts("c", "s", "T").await.unwrap(),
        Some((vec![5; 32], parent))
    );
    b.put_msg_secret("c", "s", "T", &[5; 32]).await.unwrap();
    assert_eq!(
        b.get_msg_secret_with_ts("c", "s", "T").await.unwrap(),
        Some((vec![5; 32], parent))
    );
    b.put_msg_secrets(vec![secret_entry("c", "s", "T", 6, 0, parent + 10)])
        .await
        .unwrap();
    assert_eq!(
        b.get_msg_secret_with_ts("c", "s", "T").await.unwrap(),
        Some((vec![6; 32], parent + 10))
    );
}

async fn check_msg_secret_isolated_per_backend<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let a = make();
    let b = make();
    a.put_msg_secret("c", "s", "M", &[7; 32]).await.unwrap();
    assert!(
        b.get_msg_secret("c", "s", "M").await.unwrap().is_none(),
        "another device must not see this device's secrets"
    );
    assert_eq!(
        a.get_msg_secret("c", "s", "M").await.unwrap(),
        Some(vec![7; 32])
    );
    a.put_session("x@s.whatsapp.net", b"s").await.unwrap();
    assert!(!b.has_session("x@s.whatsapp.net").await.unwrap());
}

// --- DeviceStore ---------------------------------------------------------------

fn cert_chain() -> CachedServerCertChain {
    CachedServerCertChain {
        intermediate: CachedNoiseCert {
            key: [0xAB; 32],
            not_before: 1_700_000_000,
            not_after: 1_900_000_000,
        },
        leaf: CachedNoiseCert {
            key: [0xCD; 32],
            not_before: 1_700_000_500,
            not_after: 1_899_999_500,
        },
    }
}

async fn check_device_save_load_round_trip<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    assert!(!b.exists().await.unwrap());
    assert!(b.load().await.unwrap().is_none());
    b.create().await.unwrap();
    assert!(b.exists().await.unwrap());
    let mut device = b.load().await.unwrap().expect("device after create");
    let identity = device.identity_key.public_key.serialize();
    assert_eq!(device.first_unupload_pre_key_id, 0);

    // create() again keeps the existing identity.
    b.create().await.unwrap();
    let again = b.load().await.unwrap().unwrap();
    assert_eq!(again.identity_key.public_key.serialize(), identity);

    device.pn = Some("15551234567:12@s.whatsapp.net".parse().unwrap());
    device.lid = Some("100000012345678:12@lid".parse().unwrap());
    device.push_name = "Whatsd Test".to_string();
    device.next_pre_key_id = 913;
    device.first_unupload_pre_key_id = 101;
    device.server_cert_chain = Some(cert_chain());
    device.login_counter = 5;
    device.lid_migrated = true;
    b.save(&device).await.unwrap();

    let loaded = b.load().await.unwrap().unwrap();
    assert_eq!(loaded.pn, device.pn);
    assert_eq!(loaded.lid, device.lid);
    assert_eq!(loaded.push_name, "Whatsd Test");
    assert_eq!(loaded.next_pre_key_id, 913);
    assert_eq!(loaded.first_unupload_pre_key_id, 101);
    assert_eq!(loaded.server_cert_chain, Some(cert_chain()));
    assert_eq!(loaded.login_counter, 5);
    assert!(loaded.lid_migrated);
    assert_eq!(loaded.registration_id, device.registration_id);
    assert_eq!(
        loaded.noise_key.public_key.serialize(),
        device.noise_key.public_key.serialize()
    );
    assert_eq!(loaded.adv_secret_key, device.adv_secret_key);
    assert_eq!(
        loaded.signed_pre_key_signature,
        device.signed_pre_key_signature
    );
    assert_eq!(
        loaded.device_props.os.as_deref(),
        Some("rust"),
        "device props must be restored on load"
    );

    // Clearing the chain round-trips as None.
    let mut cleared = loaded;
    cleared.server_cert_chain = None;
    b.save(&cleared).await.unwrap();
    assert!(b.load().await.unwrap().unwrap().server_cert_chain.is_none());
}

async fn check_pending_inbound_round_trip<B: Backend + 'static>(make: impl Fn() -> Arc<B>) {
    let b = make();
    assert!(
        b.get_pending_inbound("chat", "sender", "id")
            .await
            .unwrap()
            .is_none()
    );
    b.store_pending_inbound("chat", "sender", "id", b"message")
        .await
        .unwrap();
    assert_eq!(
        b.get_pending_inbound("chat", "sender", "id").await.unwrap(),
        Some(b"message".to_vec())
    );
    // Scoped by all three parts.
    assert!(
        b.get_pending_inbound("chat", "other", "id")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.get_pending_inbound("other", "sender", "id")
            .await
            .unwrap()
            .is_none()
    );
    // Idempotent on (chat, sender, id).
    b.store_pending_inbound("chat", "sender", "id", b"message-2")
        .await
        .unwrap();
    assert_eq!(
        b.get_pending_inbound("chat", "sender", "id").await.unwrap(),
        Some(b"message-2".to_vec())
    );
    b.delete_pending_inbound("chat", "sender", "id")
        .await
        .unwrap();
    assert!(
        b.get_pending_inbound("chat", "sender", "id")
            .await
            .unwrap()
            .is_none()
    );

    let rows: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("m{i}"), format!("body-{i}").into_bytes()))
        .collect();
    let batch: Vec<PendingInboundRow<'_>> = rows
        .iter()
        .map(|(id, message)| PendingInboundRow {
            chat: "g@g.us",
            sender: "u@lid",
            id,
            message,
        })
        .collect();
    b.store_pending_inbound_batch(&batch).await.unwrap();
    for (id, message) in &rows {
        assert_eq!(
            b.get_pending_inbound("g@g.us", "u@lid", id)
                .await
                .unwrap()
                .as_ref(),
            Some(message)
        );
    }
    let keys: Vec<PendingInboundKey<'_>> = rows[..5]
        .iter()
        .map(|(id, _)| PendingInboundKey {
            chat: "g@g.us",
            sender: "u@lid",
            id,
        })
        .collect();
    b.delete_pending_inbound_batch(&keys).await.unwrap();
    let left: HashSet<String> = pending_ids(&*b, &rows).await;
    assert_eq!(
        left,
        (5..10).map(|i| format!("m{i}")).collect::<HashSet<_>>()
    );

    // The TTL sweep: a past cutoff keeps everything, a future one clears.
    let now = wacore::time::now_secs();
    assert_eq!(
        b.delete_expired_pending_inbound(now - 3600).await.unwrap(),
        0
    );
    assert_eq!(
        b.delete_expired_pending_inbound(now + 3600).await.unwrap(),
        5
    );
    assert!(pending_ids(&*b, &rows).await.is_empty());
}

async fn pending_ids<B: Backend + ?Sized>(b: &B, rows: &[(String, Vec<u8>)]) -> HashSet<String> {
    let mut left = HashSet::new();
    for (id, _) in rows {
        if b.get_pending_inbound("g@g.us", "u@lid", id)
            .await
            .unwrap()
            .is_some()
        {
            left.insert(id.clone());
        }
    }
    left
}

// --- sled only: persistence, wipe, records ---------------------------------------

#[test]
fn both_backends_implement_backend() {
    fn is_backend<T: Backend>() {}
    is_backend::<InMemoryBackend>();
    is_backend::<whatsd::store::DeviceBackend>();
}

#[tokio::test]
async fn sled_state_survives_reopen() {
    let fixture = SledFixture::new();
    let b = fixture.store.device_backend("persist").unwrap();
    b.create().await.unwrap();
    let mut device = b.load().await.unwrap().unwrap();
    device.next_pre_key_id = 913;
    device.first_unupload_pre_key_id = 101;
    device.server_cert_chain = Some(cert_chain());
    b.save(&device).await.unwrap();
    b.put_sessions_batch(&[(addr("a@s.whatsapp.net"), Bytes::from_static(b"sess"))])
        .await
        .unwrap();
    b.store_prekeys_batch(&[(5, Bytes::from_static(b"pk"))], false)
        .await
        .unwrap();
    b.store_pending_inbound("c", "s", "i", b"msg")
        .await
        .unwrap();
    let identity = device.identity_key.public_key.serialize();
    let SledFixture {
        dir, key, store, ..
    } = fixture;
    drop(b);
    drop(store);

    let store = Store::open(dir.path(), &key).expect("reopen");
    let b = store.device_backend("persist").unwrap();
    let loaded = b.load().await.unwrap().expect("device after reopen");
    assert_eq!(loaded.identity_key.public_key.serialize(), identity);
    assert_eq!(loaded.next_pre_key_id, 913);
    assert_eq!(loaded.first_unupload_pre_key_id, 101);
    assert_eq!(loaded.server_cert_chain, Some(cert_chain()));
    assert_eq!(loaded.device_props.os.as_deref(), Some("rust"));
    assert_eq!(
        b.get_session("a@s.whatsapp.net").await.unwrap().as_deref(),
        Some(&b"sess"[..])
    );
    assert_eq!(b.get_max_prekey_id().await.unwrap(), 5);
    assert_eq!(
        b.get_pending_inbound("c", "s", "i").await.unwrap(),
        Some(b"msg".to_vec())
    );
}

#[tokio::test]
async fn sled_wipe_is_one_call_and_spares_other_sessions() {
    let fixture = SledFixture::new();
    let store = &fixture.store;
    let doomed = store.device_backend("doomed").unwrap();
    let kept = store.device_backend("kept").unwrap();
    assert!(
        Arc::ptr_eq(&doomed, &store.device_backend("doomed").unwrap()),
        "one live backend per session"
    );
    for b in [&doomed, &kept] {
        b.create().await.unwrap();
        b.put_session("a@s.whatsapp.net", b"sess").await.unwrap();
        b.put_msg_secret("c", "s", "m", &[1; 32]).await.unwrap();
    }

    assert!(store.wipe_device("doomed").await.unwrap());
    let err = doomed.get_session("a@s.whatsapp.net").await.unwrap_err();
    assert!(
        format!("{err:?}").contains("Wiped"),
        "a wiped backend fails closed: {err:?}"
    );
    assert!(
        doomed
            .put_session("a@s.whatsapp.net", b"zombie")
            .await
            .is_err()
    );

    let fresh = store.device_backend("doomed").unwrap();
    assert!(!fresh.exists().await.unwrap());
    assert!(
        fresh
            .get_session("a@s.whatsapp.net")
            .await
            .unwrap()
            .is_none()
    );
    assert!(fresh.get_msg_secret("c", "s", "m").await.unwrap().is_none());

    assert!(kept.exists().await.unwrap());
    assert!(kept.has_session("a@s.whatsapp.net").await.unwrap());
    assert!(!store.wipe_device("never-existed").await.unwrap());
    // Keyspaces are listed by keyspace id (a keyed hash), never by session id.
    let keyspaces = store.device_keyspaces();
    assert!(keyspaces.contains(&store.keyspace_id("kept")));
    assert!(!keyspaces.iter().any(|k| k.contains("kept")));
}

fn record(id: &str, phone: &str) -> SessionRecord {
    SessionRecord {
        id: id.to_string(),
        tenant: "t1".to_string(),
        state: "connected".to_string(),
        phone: phone.to_string(),
        push_name: "Alice".to_string(),
        created_at_ms: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn sled_records_keep_phone_index_consistent() {
    let fixture = SledFixture::new();
    let store = &fixture.store;
    store.put_record(&record("s1", "5511")).await.unwrap();
    store.put_record(&record("s2", "5511")).await.unwrap();
    store.put_record(&record("s3", "")).await.unwrap();
    let mut ids = store.sessions_for_phone("5511").unwrap();
    ids.sort();
    assert_eq!(ids, vec!["s1", "s2"]);
    assert!(
        store.sessions_for_phone("551").unwrap().is_empty(),
        "exact phone only"
    );

    // Moving s1 to another phone moves its index entry.
    store.put_record(&record("s1", "5522")).await.unwrap();
    assert_eq!(store.sessions_for_phone("5511").unwrap(), vec!["s2"]);
    assert_eq!(store.sessions_for_phone("5522").unwrap(), vec!["s1"]);
    let got = store.get_record("s1").unwrap().unwrap();
    assert_eq!(got.version, whatsd::store::RECORD_VERSION);
    assert_eq!(
        (got.phone.as_str(), got.push_name.as_str()),
        ("5522", "Alice")
    );

    assert!(store.delete_record("s2").await.unwrap());
    assert!(store.sessions_for_phone("5511").unwrap().is_empty());
    assert!(store.get_record("s2").unwrap().is_none());
    assert!(!store.delete_record("s2").await.unwrap());

    let mut listed: Vec<String> = store
        .list_records()
        .unwrap()
        .into_iter()
        .map(|(id, r)| {
            assert_eq!(r.unwrap().id, id);
            id
        })
        .collect();
    listed.sort();
    assert_eq!(listed, vec!["s1", "s3"]);

    // remove_session drops keys and record together.
    let b = store.device_backend("s1").unwrap();
    b.create().await.unwrap();
    store.remove_session("s1").await.unwrap();
    assert!(store.get_record("s1").unwrap().is_none());
    assert!(store.sessions_for_phone("5522").unwrap().is_empty());
    assert!(!store.device_backend("s1").unwrap().exists().await.unwrap());

    assert!(store.put_record(&record("bad/id", "1")).await.is_err());
    assert!(store.device_backend("").is_err());
}
