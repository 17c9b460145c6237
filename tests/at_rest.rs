//! Identifiers at rest (issue 12, finding 7): no session id, tenant id,
//! phone number, JID user or LID readable in any file under the data dir
//! or in a backup; a format-1 store (ids in its keys) is converted on first
//! open; the data dir is 0700 and everything in it 0600.
//!
//! Each scan has a positive control: the same scan over a copy that holds
//! the same ids unblinded (the format-1 fixture, and a plain sled database)
//! finds every one of them.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ADMIN, Daemon, control, pair};
use serde_json::json;
use wacore::store::traits::{DeviceStore, ProtocolStore, SignalStore};
use whatsd::store::{MasterKey, Store, backup};

// The ids of the format-1 fixture (tests/fixtures/store-v1), reused by the
// live test so both scans look for the same bytes.
const TENANT: &str = "tenant-zq81x";
const SESSION: &str = "shop-qv55k";
const PHONE: &str = "15557770123";
const CONTACT: &str = "15553330987";
const PEER: &str = "15550009876";
const FIXTURE_LID: &str = "100000000000001";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

/// Every regular file under `dir`, recursively, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The ids of `needles` found in any of `blobs`, as "id in where".
fn found(blobs: &[(String, &[u8])], needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for needle in needles {
        for (name, bytes) in blobs {
            if contains(bytes, needle.as_bytes()) {
                hits.push(format!("{needle} in {name}"));
            }
        }
    }
    hits
}

/// The data dir's files (and any extra blobs) as named blobs.
fn blobs_of(files: &[(PathBuf, Vec<u8>)]) -> Vec<(String, &[u8])> {
    files
        .iter()
        .map(|(p, b)| (p.display().to_string(), b.as_slice()))
        .collect()
}

/// The fixture restored raw: a format-1 database, as today's code wrote it.
fn restore_fixture(data: &Path) -> MasterKey {
    let key = MasterKey::from_file(&fixture().join("master.key")).unwrap();
    let bytes = std::fs::read(fixture().join("store.backup")).unwrap();
    backup::restore(data, &bytes, Some(&key)).unwrap();
    key
}

/// Opens `path` as a raw sled database (no whatsd), retrying while a
/// just-closed store still holds its lock.
fn raw_db(path: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("open {}: {e}", path.display()),
        }
    }
}

/// Tree names and keys of every tree.
fn names_and_keys(db: &sled::Db) -> Vec<u8> {
    let mut all = Vec::new();
    for name in db.tree_names() {
        all.extend_from_slice(&name);
        all.push(b'|');
        for key in db.open_tree(&name).unwrap().iter().keys() {
            all.extend_from_slice(&key.unwrap());
            all.push(b'|');
        }
    }
    all
}

#[tokio::test]
async fn a_format_1_store_converts_on_first_open_and_keeps_no_id_in_plain_text() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = restore_fixture(&data);
    // Ids that nothing in the converted store may show (the tenant id was
    // also in the webhook endpoint's key).
    let ids = [SESSION, PHONE, CONTACT, PEER, FIXTURE_LID, TENANT];

    // Positive control: the format-1 store shows every id, tenant included.
    let before = files_under(&data);
    for id in &ids {
        assert!(
            !found(&blobs_of(&before), &[id]).is_empty(),
            "control: {id} must be visible in the format-1 store"
        );
    }

    let started = Instant::now();
    let store = Store::open(&data, &key).unwrap();
    let took = started.elapsed();
    println!(
        "converted the fixture ({} bytes of backup) in {took:?}",
        std::fs::metadata(fixture().join("store.backup"))
            .unwrap()
            .len()
    );

    // Everything still reads.
    let records = store.list_records().unwrap();
    assert_eq!(records.len(), 1);
    let (id, record) = &records[0];
    let record = record.as_ref().unwrap();
    assert_eq!(
        (id.as_str(), record.tenant.as_str(), record.phone.as_str()),
        (SESSION, TENANT, PHONE)
    );
    assert_eq!(store.sessions_for_phone(PHONE).unwrap(), [SESSION]);
    assert_eq!(store.list_tenants().unwrap()[0].id, TENANT);
    assert!(store.get_tenant(TENANT).unwrap().is_some());
    let device = store.device_backend(SESSION).unwrap();
    let paired = device.load().await.unwrap().expect("the paired device");
    assert_eq!(paired.pn.as_ref().map(|j| j.user.as_str()), Some(PHONE));
    let mappings = device.get_all_lid_mappings().await.unwrap();
    assert!(!mappings.is_empty(), "LID mappings survive");
    for mapping in &mappings {
        let by_phone = device
            .get_pn_mapping(&mapping.phone_number)
            .await
            .unwrap()
            .expect("PN→LID index survives");
        assert_eq!(by_phone.lid, mapping.lid);
    }
    // The contact's Signal session (the DM) is found by user, as the
    // client looks it up.
    let contact_lid = mappings
        .iter()
        .find(|m| m.phone_number == CONTACT)
        .map(|m| m.lid.clone());
    let mut contact_state = device.has_signal_state_for_user(CONTACT).await.unwrap();
    if let Some(lid) = &contact_lid {
        contact_state |= device.has_signal_state_for_user(lid).await.unwrap();
    }
    assert!(contact_state, "the contact's Signal state survives");
    let max_prekey = device.get_max_prekey_id().await.unwrap();
    assert!(max_prekey > 800, "prekeys survive (max id {max_prekey})");
    assert!(device.load_prekey(max_prekey).await.unwrap().is_some());
    assert!(
        !device
            .has_signal_state_for_user("15550000000")
            .await
            .unwrap()
    );
    let backup = store.backup().unwrap();
    drop(device);
    drop(store);

    // No id left on disk, nor in a backup: the old database is gone, not
    // rewritten (its log would keep the old keys).
    let mut lids: Vec<&str> = mappings.iter().map(|m| m.lid.as_str()).collect();
    lids.extend(ids);
    let after = files_under(&data);
    let mut blobs = blobs_of(&after);
    blobs.push(("the backup".to_string(), &backup));
    assert_eq!(found(&blobs, &lids), Vec::<String>::new());
    let db = raw_db(&data.join("db"));
    let keys = names_and_keys(&db);
    assert!(!keys.is_empty());
    assert_eq!(
        found(&[("names and keys".into(), &keys)], &lids),
        Vec::<String>::new()
    );
    // The tenant's webhook endpoint survives, under a keyed hash.
    let endpoints: Vec<_> = db
        .open_tree("webhook_endpoints")
        .unwrap()
        .iter()
        .keys()
        .map(|k| k.unwrap().len())
        .collect();
    assert_eq!(endpoints, [32], "one endpoint, keyed by a hash");
    let entries: usize = db
        .tree_names()
        .iter()
        .map(|n| db.open_tree(n).unwrap().len())
        .sum();
    // Over 800 prekeys, 64 to a row since store format 3, and the rest.
    assert!(entries > 30, "the conversion kept the data ({entries})");
    drop(db);

    // A second open converts nothing more.
    let store = Store::open(&data, &key).unwrap();
    assert_eq!(store.list_records().unwrap().len(), 1);
}

/// Everything under `dir` (itself included): path and mode.
#[cfg(unix)]
fn modes_under(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = vec![(
        dir.to_path_buf(),
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
    )];
    for entry in walk(dir) {
        let mode = std::fs::symlink_metadata(&entry)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        out.push((entry, mode));
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[cfg(unix)]
fn assert_private(dir: &Path) {
    for (path, mode) in modes_under(dir) {
        assert_eq!(
            mode & 0o077,
            0,
            "{} is {mode:o}: readable beyond the owner",
            path.display()
        );
    }
}

#[cfg(unix)]
#[test]
fn open_tightens_a_loose_data_dir_and_names_what_it_changed() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = MasterKey::generate().unwrap();
    drop(Store::open(&data, &key).unwrap());
    // As an older whatsd, a restore, or an operator's cp left it.
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set(&data, 0o755);
    std::fs::write(data.join("notes-SECRET-CONTENT.txt"), b"SECRET-CONTENT").unwrap();
    set(&data.join("notes-SECRET-CONTENT.txt"), 0o644);
    for path in walk(&data) {
        set(&path, if path.is_dir() { 0o755 } else { 0o644 });
    }

    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let log = Arc::clone(&log);
        move || LogWriter(Arc::clone(&log))
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        drop(Store::open(&data, &key).unwrap());
    });
    assert_private(&data);
    let log = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    for path in [
        data.clone(),
        data.join("db"),
        data.join("notes-SECRET-CONTENT.txt"),
    ] {
        assert!(
            log.contains(&path.display().to_string()),
            "no warning names {}:\n{log}",
            path.display()
        );
    }
    // Paths, not contents.
    assert!(!log.contains("SECRET-CONTENT\n") && !log.contains("=SECRET-CONTENT"));

    // A loose file inside the private dir (sled makes its files with the
    // umask) was never reachable: tightened without a warning.
    set(&data.join("notes-SECRET-CONTENT.txt"), 0o644);
    let quiet = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let quiet = Arc::clone(&quiet);
        move || LogWriter(Arc::clone(&quiet))
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(tracing::Level::WARN)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        drop(Store::open(&data, &key).unwrap());
    });
    assert_eq!(String::from_utf8_lossy(&quiet.lock().unwrap()), "");
    assert_private(&data);
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_is_readable_in_the_data_dir_or_a_backup() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (dir, mut daemon) = Daemon::start(&fake.ws_url()).await;
    let data = dir.path().join("data");
    let r = daemon
        .post("/v1/tenants", Some(ADMIN), Some(json!({ "id": TENANT })))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Webhook endpoints whose deliveries keep failing: endpoint keys and
    // queued deliveries name the tenant and the session.
    let spec =
        json!({ "url": "https://hooks.example.invalid/wa", "secret": "0123456789abcdef0123" });
    let r = daemon
        .put(&format!("/v1/tenants/{TENANT}/webhooks/crm"), spec.clone())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    pair(&daemon, &fake, SESSION, Some(TENANT), PHONE).await;
    let r = daemon
        .put(&format!("/v1/sessions/{SESSION}/webhooks/own"), spec)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // A DM in (the client acks it once stored and decrypted) and a text out:
    // the device keyspace now holds both contacts' JIDs, LIDs and sessions.
    let r = control(
        fake.control_addr(),
        "/control/messages",
        json!({ "to_phone": PHONE, "from_phone": CONTACT, "text": "hello shop", "kind": "dm" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    until("the DM acknowledged", 30, || {
        fake.server
            .devices()
            .iter()
            .any(|d| d.phone == PHONE && d.pending_messages == 0)
    })
    .await;
    let sent = daemon
        .post(
            &format!("/v1/sessions/{SESSION}/messages?wait=sent"),
            Some(ADMIN),
            Some(json!({ "to": PEER, "text": "hello peer" })),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    until("fakewa got the text", 30, || {
        fake.server
            .outbox(Some(PHONE))
            .iter()
            .any(|m| m.to.starts_with(PEER))
    })
    .await;
    let info = daemon
        .get(&format!("/v1/sessions/{SESSION}"), Some(ADMIN))
        .await
        .json();
    let lid = info["lid"].as_str().expect("a LID").to_string();
    let lid_user = lid.split([':', '@']).next().unwrap().to_string();
    let backup = daemon.post("/v1/admin/backup", Some(ADMIN), None).await;
    assert_eq!(backup.status, 200);
    assert!(backup.body.starts_with(b"WHATSD-BACKUP\0"));
    assert!(daemon.terminate().await.success());

    // Every id the device store learnt (LIDs of contacts too), read from a
    // copy so the scanned dir stays as the daemon left it.
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("data");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    let key = MasterKey::from_file(&data.join("master.key")).unwrap();
    let mut ids: Vec<String> = [TENANT, SESSION, PHONE, CONTACT, PEER, &lid_user]
        .map(str::to_string)
        .to_vec();
    {
        let store = Store::open(&copy, &key).unwrap();
        let device = store.device_backend(SESSION).unwrap();
        let mappings = device.get_all_lid_mappings().await.unwrap();
        assert!(!mappings.is_empty(), "the device store holds LID mappings");
        assert!(
            device.has_signal_state_for_user(CONTACT).await.unwrap()
                || device.has_signal_state_for_user(PEER).await.unwrap(),
            "the device store holds a contact's Signal state"
        );
        for m in mappings {
            ids.push(m.lid.clone());
            ids.push(m.phone_number.clone());
        }
    }
    ids.sort();
    ids.dedup();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();

    let files = files_under(&data);
    assert!(files.len() >= 3, "{files:?}");
    let mut blobs = blobs_of(&files);
    blobs.push(("the backup".to_string(), &backup.body));
    assert_eq!(found(&blobs, &ids), Vec::<String>::new());
    #[cfg(unix)]
    assert_private(&data);

    // Positive control: the same scan finds every one of those ids in a
    // store that keeps them unblinded (a raw sled database with the same
    // trees and keys as format 1 had them, values sealed or not).
    let plain_dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(plain_dir.path().join("db")).unwrap();
        let tree = db.open_tree(format!("device/{SESSION}")).unwrap();
        for id in &ids {
            tree.insert(format!("\x02{id}@s.whatsapp.net"), &b"sealed"[..])
                .unwrap();
        }
        db.open_tree("tenants")
            .unwrap()
            .insert(TENANT, &b"sealed"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let plain = files_under(plain_dir.path());
    let hits = found(&blobs_of(&plain), &ids);
    for id in &ids {
        assert!(
            hits.iter().any(|h| h.starts_with(&format!("{id} in"))),
            "control: the scan must find {id} in an unblinded store"
        );
    }
}

/// Every kind of device row whose natural key names someone, written
/// through the wacore traits with distinctive ids: no id in any tree name
/// or key, and every row reads back (scans included).
#[tokio::test]
async fn every_device_key_kind_is_blinded() {
    use wacore::store::traits::{
        DeviceListRecord, LidPnMappingEntry, MsgSecretEntry, MsgSecretStore, TcTokenEntry,
    };
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate().unwrap();
    const USER: &str = "19990001111";
    const ADDRESS: &str = "19990001111:3@s.whatsapp.net";
    const LID: &str = "288880002222";
    const GROUP: &str = "120363999888777@g.us";
    const MEMBER: &str = "19990003333:1@s.whatsapp.net";
    const CHAT: &str = "19990004444@s.whatsapp.net";
    const ID: &str = "session-kq7zt";
    let ids = [
        USER,
        LID,
        GROUP,
        "120363999888777",
        MEMBER,
        "19990003333",
        CHAT,
        "19990004444",
        ID,
    ];
    {
        let store = Store::open(dir.path(), &key).unwrap();
        let b = store.device_backend(ID).unwrap();
        b.put_identity(ADDRESS, [7; 32]).await.unwrap();
        b.put_session(ADDRESS, b"s").await.unwrap();
        b.put_sender_key(&format!("{GROUP}::{MEMBER}"), b"k")
            .await
            .unwrap();
        b.set_sender_key_status(GROUP, &[(MEMBER, true)])
            .await
            .unwrap();
        b.put_lid_mapping(&LidPnMappingEntry {
            lid: LID.to_string(),
            phone_number: USER.to_string(),
            created_at: 1,
            updated_at: 1,
            learning_source: "usync".to_string(),
        })
        .await
        .unwrap();
        b.save_base_key(ADDRESS, "MSG1", b"base").await.unwrap();
        b.update_device_list(DeviceListRecord {
            user: USER.to_string(),
            devices: vec![],
            timestamp: 1,
            phash: None,
            raw_id: None,
        })
        .await
        .unwrap();
        b.put_group_metadata(GROUP, b"meta").await.unwrap();
        b.put_tc_token(
            CHAT,
            &TcTokenEntry {
                token: b"t".to_vec(),
                token_timestamp: 1,
                sender_timestamp: None,
            },
        )
        .await
        .unwrap();
        b.store_sent_message(CHAT, "MSG2", b"p").await.unwrap();
        b.store_pending_inbound(CHAT, MEMBER, "MSG3", b"m")
            .await
            .unwrap();
        b.put_msg_secrets(vec![MsgSecretEntry {
            chat: CHAT.into(),
            sender: MEMBER.into(),
            msg_id: "MSG4".into(),
            secret: [9; 32],
            expires_at: 0,
            message_ts: 1,
        }])
        .await
        .unwrap();

        // Everything reads back by its natural key, scans too.
        assert!(b.has_signal_state_for_user(USER).await.unwrap());
        assert!(!b.has_signal_state_for_user("1999000111").await.unwrap());
        assert_eq!(b.load_identity(ADDRESS).await.unwrap(), Some([7; 32]));
        assert_eq!(
            b.get_sender_key_devices(GROUP).await.unwrap(),
            [(MEMBER.to_string(), true)]
        );
        assert_eq!(b.get_pn_mapping(USER).await.unwrap().unwrap().lid, LID);
        assert!(b.has_same_base_key(ADDRESS, "MSG1", b"base").await.unwrap());
        assert!(b.get_devices(USER).await.unwrap().is_some());
        assert_eq!(b.get_all_tc_token_jids().await.unwrap(), [CHAT]);
        assert_eq!(b.get_group_metadata(GROUP).await.unwrap().unwrap(), b"meta");
        assert!(
            b.get_pending_inbound(CHAT, MEMBER, "MSG3")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            b.get_msg_secret(CHAT, MEMBER, "MSG4")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            b.take_sent_message(CHAT, "MSG2").await.unwrap().as_deref(),
            Some(&b"p"[..])
        );
        b.store_sent_message(CHAT, "MSG2", b"p").await.unwrap();
        b.delete_sender_key_device_rows(&[MEMBER]).await.unwrap();
        assert!(b.get_sender_key_devices(GROUP).await.unwrap().is_empty());
        b.set_sender_key_status(GROUP, &[(MEMBER, false)])
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let db = raw_db(&dir.path().join("db"));
    let keys = names_and_keys(&db);
    assert_eq!(
        found(&[("tree names and keys".into(), &keys)], &ids),
        Vec::<String>::new()
    );
    // Control: the same scan finds an id written unblinded.
    let raw = db.open_tree("control").unwrap();
    raw.insert(GROUP, &b""[..]).unwrap();
    let keys = names_and_keys(&db);
    assert_eq!(
        found(&[("tree names and keys".into(), &keys)], &ids),
        [
            format!("{GROUP} in tree names and keys"),
            "120363999888777 in tree names and keys".to_string()
        ]
    );
}
