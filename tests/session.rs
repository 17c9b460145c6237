//! The session supervisor against fakewa: pairing, phone extraction,
//! activation timeout, reset, unlink, reconnect, reload after a restart,
//! one broken session among healthy ones. Waits on events, never sleeps.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fakewa::{Config as FakeConfig, FakeWa};
use tokio::sync::broadcast;
use whatsd::session::{EventKind, Reason, SessionConfig, SessionEvent, SessionState, Supervisor};
use whatsd::store::{MasterKey, Store};
use whatsd::wa::WaConfig;

const VERSION: (u32, u32, u32) = (2, 3000, 1_023_456_789);

struct Daemon {
    supervisor: Supervisor,
    events: broadcast::Receiver<SessionEvent>,
    store: Store,
}

fn key() -> MasterKey {
    MasterKey::from_bytes([42; 32])
}

fn config(fake: &FakeWa) -> SessionConfig {
    SessionConfig {
        wa: WaConfig {
            ws_url: Some(fake.ws_url()),
            version: Some(VERSION),
            device_os: "whatsd-test".into(),
            media_ca_file: None,
        },
        shutdown_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

async fn boot(dir: &Path, config: SessionConfig) -> Daemon {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let store = reopen(|| Store::open(dir, &key())).await;
    let supervisor = Supervisor::start(store.clone(), config)
        .await
        .expect("supervisor starts");
    let events = supervisor.subscribe();
    Daemon {
        supervisor,
        events,
        store,
    }
}

/// Opens the database once the previous daemon in this process has let go
/// of it: its clients' background tasks end shortly after shutdown, and
/// sled's file lock holds until the last handle drops.
async fn reopen<T, E: std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match open() {
            Ok(v) => return v,
            Err(e)
                if tokio::time::Instant::now() < deadline && format!("{e:?}").contains("lock") =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot open the data dir: {e:?}"),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl Daemon {
    /// After a restart the record still says `connected` from before: wait
    /// for a login that happened after `since_ms` (bounded poll).
    async fn connected_since(&self, id: &str, since_ms: i64) {
        self.connected_since_within(id, since_ms, 30).await
    }

    async fn connected_since_within(&self, id: &str, since_ms: i64, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let info = self.supervisor.get(id).await.unwrap();
            if info.state == SessionState::Connected && info.last_connected_at_ms >= since_ms {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} did not reconnect after the restart: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The first event for `session` that `pick` accepts, within `secs`.
    async fn wait<T>(
        &mut self,
        session: &str,
        what: &str,
        secs: u64,
        mut pick: impl FnMut(&EventKind) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(event)) if event.session == session => {
                    if let Some(found) = pick(&event.kind) {
                        return found;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    panic!("missed {n} events waiting for {what}")
                }
                Ok(Err(e)) => panic!("event stream closed waiting for {what}: {e}"),
                Err(_) => panic!("timed out after {secs} s waiting for {what} of {session}"),
            }
        }
    }

    async fn state(&mut self, session: &str, want: SessionState, secs: u64) -> Option<Reason> {
        self.wait(session, &format!("state {want}"), secs, |k| match k {
            EventKind::State { to, reason, .. } if *to == want => Some(*reason),
            _ => None,
        })
        .await
    }

    async fn qr(&mut self, session: &str, secs: u64) -> (String, u32) {
        self.wait(session, "a QR code", secs, |k| match k {
            EventKind::Qr { qr, .. } => Some((qr.code.clone(), qr.index)),
            _ => None,
        })
        .await
    }

    /// Creates and pairs `id` by QR as `phone`; returns once connected.
    async fn pair(&mut self, fake: &FakeWa, id: &str, phone: &str) {
        self.supervisor
            .create(Some(id.into()), "t1".into(), true)
            .await
            .expect("create");
        let (code, _) = self.qr(id, 5).await;
        let paired = fake.server.scan(&code, Some(phone)).await.expect("scan");
        assert_eq!(paired.phone, phone);
        self.state(id, SessionState::Connected, 30).await;
    }

    /// Whether the session's keyspace holds a device.
    async fn device_keys(&self, id: &str) -> bool {
        use whatsapp_rust::store::traits::DeviceStore;
        let backend = self.store.device_backend(id).unwrap();
        backend.exists().await.unwrap()
    }
}

fn device_count(fake: &FakeWa, phone: &str) -> (usize, usize) {
    let devices = fake.server.devices();
    let mine: Vec<_> = devices.iter().filter(|d| d.phone == phone).collect();
    (mine.len(), mine.iter().filter(|d| d.connected).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_pairing_records_phone_jid_lid_and_connects() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = boot(dir.path(), config(&fake)).await;
    d.supervisor
        .create(Some("shop".into()), "t1".into(), true)
        .await
        .unwrap();
    let (code, index) = d.qr("shop", 1).await; // within 1 s of create
    assert_eq!(index, 1);
    assert_eq!(
        d.supervisor.live_qr("shop").map(|q| q.code),
        Some(code.clone())
    );

    let paired = fake.server.scan(&code, Some("15551230001")).await.unwrap();
    let identity = d
        .wait("shop", "paired", 10, |k| match k {
            EventKind::Paired { identity, .. } => Some(identity.clone()),
            _ => None,
        })
        .await;
    assert_eq!(identity.phone, "15551230001");
    assert_eq!(identity.jid, paired.jid);
    assert_eq!(Some(identity.lid.clone()), paired.lid);
    // Connected only on the library's Connected, after the pairing.
    let connected = d
        .wait("shop", "connected", 30, |k| match k {
            EventKind::Connected { identity, .. } => Some(identity.clone()),
            EventKind::State {
                to: SessionState::Connected,
                ..
            } => None,
            _ => None,
        })
        .await;
    assert_eq!(connected.phone, "15551230001");

    let info = d.supervisor.get("shop").await.unwrap();
    assert_eq!(info.state, SessionState::Connected);
    assert_eq!(
        (info.phone.as_str(), info.jid.as_str()),
        ("15551230001", paired.jid.as_str())
    );
    assert!(info.lid.ends_with("@lid"), "{}", info.lid);
    assert!(info.paired_at_ms > 0 && info.last_connected_at_ms >= info.paired_at_ms);
    let states: Vec<_> = info.transitions.iter().map(|t| t.to).collect();
    assert!(
        states.ends_with(&[SessionState::Paired, SessionState::Connected]),
        "{states:?}"
    );
    assert!(d.supervisor.live_qr("shop").is_none(), "no QR once paired");
    let by_phone = d
        .supervisor
        .sessions_for_phone("15551230001")
        .await
        .unwrap();
    assert_eq!(
        by_phone.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["shop"]
    );
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_activation_timeout_fails_and_wipes_the_keys() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake);
    cfg.activation_timeout = Duration::from_secs(2);
    let mut d = boot(dir.path(), cfg).await;
    d.supervisor
        .create(Some("slow".into()), "t1".into(), true)
        .await
        .unwrap();
    d.qr("slow", 5).await;
    assert!(
        d.device_keys("slow").await,
        "pairing keys exist while pairing"
    );
    let reason = d.state("slow", SessionState::Failed, 15).await;
    assert_eq!(reason, Some(Reason::ActivationTimeout));
    assert!(
        !d.device_keys("slow").await,
        "keys wiped after the activation timeout"
    );
    assert!(d.supervisor.live_qr("slow").is_none());
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_qr_codes_are_replaced_by_a_fresh_client() {
    // One ref per registration: the client runs out after its 60 s, stops
    // itself, and the supervisor must bring new codes while activation lasts.
    let fake = FakeWa::start_with(
        FakeConfig {
            qr_refs: 1,
            ..Default::default()
        },
        ([127, 0, 0, 1], 0).into(),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = boot(dir.path(), config(&fake)).await;
    d.supervisor
        .create(Some("patient".into()), "t1".into(), true)
        .await
        .unwrap();
    let (first, _) = d.qr("patient", 5).await;
    let (second, index) = d.qr("patient", 90).await;
    assert_ne!(first, second, "a new code, not the old one again");
    assert!(index >= 1);
    let info = d.supervisor.get("patient").await.unwrap();
    assert_eq!(info.state, SessionState::Qr);
    // The fresh code pairs.
    fake.server
        .scan(&second, Some("15551230002"))
        .await
        .unwrap();
    d.state("patient", SessionState::Connected, 30).await;
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_in_qr_and_connected_gives_new_keys_and_a_new_qr() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = boot(dir.path(), config(&fake)).await;

    // In qr: the new QR carries a new identity.
    d.supervisor
        .create(Some("r1".into()), "t1".into(), true)
        .await
        .unwrap();
    let (before, _) = d.qr("r1", 5).await;
    d.supervisor.reset("r1").await.unwrap();
    let (after, _) = d.qr("r1", 5).await;
    let key_of = |qr: &str| qr.split(',').nth(2).unwrap().to_owned();
    assert_ne!(
        key_of(&before),
        key_of(&after),
        "reset mints new identity keys"
    );

    // In connected: the old device is unlinked, cannot log in again.
    fake.server.scan(&after, Some("15551230003")).await.unwrap();
    d.state("r1", SessionState::Connected, 30).await;
    let (devices, connected) = device_count(&fake, "15551230003");
    assert_eq!((devices, connected), (1, 1));
    let info = d.supervisor.reset("r1").await.unwrap();
    assert!(info.phone.is_empty(), "identity cleared on reset");
    let (fresh, _) = d.qr("r1", 5).await;
    assert_ne!(key_of(&fresh), key_of(&after));
    assert!(
        fake.server
            .devices()
            .iter()
            .all(|d| d.removed || d.phone != "15551230003"),
        "old device unlinked at WhatsApp"
    );
    assert!(
        d.supervisor
            .sessions_for_phone("15551230003")
            .await
            .unwrap()
            .is_empty(),
        "phone index agrees"
    );

    // Concurrent resets serialize and end in one pairing.
    let (a, b) = tokio::join!(d.supervisor.reset("r1"), d.supervisor.reset("r1"));
    assert!(a.is_ok() && b.is_ok());
    let (code, _) = d.qr("r1", 5).await;
    fake.server.scan(&code, Some("15551230004")).await.unwrap();
    d.state("r1", SessionState::Connected, 30).await;
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reconnects_paired_sessions_and_stops_pairings() {
    let state_dir = tempfile::tempdir().unwrap();
    let fake = FakeWa::start_with(
        FakeConfig {
            state_dir: Some(state_dir.path().to_owned()),
            ..Default::default()
        },
        ([127, 0, 0, 1], 0).into(),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut d = boot(dir.path(), config(&fake)).await;
        d.pair(&fake, "a", "15551230010").await;
        d.pair(&fake, "b", "15551230011").await;
        d.supervisor
            .create(Some("pending".into()), "t1".into(), true)
            .await
            .unwrap();
        d.qr("pending", 5).await;
        d.supervisor.shutdown().await;
    }
    let restarted_at = now_ms();
    let d = boot(dir.path(), config(&fake)).await;
    for id in ["a", "b"] {
        d.connected_since(id, restarted_at).await;
    }
    let a = d.supervisor.get("a").await.unwrap();
    assert_eq!(a.phone, "15551230010", "phone kept across restart");
    let pending = d.supervisor.get("pending").await.unwrap();
    assert_eq!(
        (pending.state, pending.reason),
        (SessionState::Stopped, Some(Reason::PairingInterrupted))
    );
    assert!(d.supervisor.live_qr("pending").is_none());
    assert_eq!(device_count(&fake, "15551230010"), (1, 1));
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_keyspace_fails_only_its_own_session() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut d = boot(dir.path(), config(&fake)).await;
        d.pair(&fake, "good", "15551230020").await;
        d.pair(&fake, "bad", "15551230021").await;
        d.supervisor.shutdown().await;
    }
    // Flip bytes in every value of "bad"'s device keyspace, on disk. Its
    // tree is named by a keyed hash of the session id.
    let tree_name = {
        let store = reopen(|| Store::open(dir.path(), &key())).await;
        format!("device/{}", store.keyspace_id("bad"))
    };
    {
        let db = reopen(|| sled::open(dir.path().join("db"))).await;
        let tree = db.open_tree(tree_name).unwrap();
        let mut n = 0;
        for item in tree.iter() {
            let (k, v) = item.unwrap();
            let mut v = v.to_vec();
            let last = v.len() - 1;
            v[last] ^= 0xff;
            tree.insert(k, v).unwrap();
            n += 1;
        }
        assert!(n > 0, "the keyspace had values");
        db.flush().unwrap();
    }
    let restarted_at = now_ms();
    let mut d = boot(dir.path(), config(&fake)).await;
    d.connected_since("good", restarted_at).await;
    let bad = d.supervisor.get("bad").await.unwrap();
    let bad = if bad.state == SessionState::Failed {
        bad
    } else {
        d.state("bad", SessionState::Failed, 30).await;
        d.supervisor.get("bad").await.unwrap()
    };
    assert_eq!(bad.reason, Some(Reason::StoreError));
    assert!(bad.reason_message.is_some());
    // The broken one can be reset and paired again.
    d.supervisor.reset("bad").await.unwrap();
    let (code, _) = d.qr("bad", 5).await;
    fake.server.scan(&code, Some("15551230022")).await.unwrap();
    d.state("bad", SessionState::Connected, 30).await;
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_from_phone_logs_out_and_wipes() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = boot(dir.path(), config(&fake)).await;
    d.pair(&fake, "u", "15551230030").await;
    assert!(d.device_keys("u").await);
    fake.server.unlink("15551230030").unwrap();
    let reason = d.state("u", SessionState::LoggedOut, 20).await;
    assert_eq!(reason, Some(Reason::UnlinkedFromPhone));
    assert!(!d.device_keys("u").await, "keys wiped after unlink");
    let info = d.supervisor.get("u").await.unwrap();
    assert!(info.phone.is_empty());
    assert!(
        d.supervisor
            .sessions_for_phone("15551230030")
            .await
            .unwrap()
            .is_empty()
    );
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_unlinks_at_whatsapp_and_wipes() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = boot(dir.path(), config(&fake)).await;
    d.pair(&fake, "l", "15551230031").await;
    let info = d.supervisor.logout("l").await.unwrap();
    assert_eq!(
        (info.state, info.reason),
        (SessionState::LoggedOut, Some(Reason::LoggedOut))
    );
    assert!(!d.device_keys("l").await);
    let removed = fake
        .server
        .devices()
        .iter()
        .any(|dev| dev.phone == "15551230031" && dev.removed);
    assert!(removed, "fakewa saw the device remove itself");
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_code_connects() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = boot(dir.path(), config(&fake)).await;
    d.supervisor
        .create(Some("pc".into()), "t1".into(), true)
        .await
        .unwrap();
    d.qr("pc", 5).await;
    let issued = d
        .supervisor
        .pair_code("pc", "+1 555 123 0040")
        .await
        .unwrap();
    assert_eq!(issued.code.len(), 8);
    let code = d
        .wait("pc", "pair code event", 5, |k| match k {
            EventKind::PairCode { code, .. } => Some(code.clone()),
            _ => None,
        })
        .await;
    assert_eq!(code, issued.code);
    assert_eq!(
        d.supervisor.get("pc").await.unwrap().state,
        SessionState::PairCode
    );
    fake.server
        .enter_pair_code("15551230040", &code)
        .await
        .unwrap();
    d.state("pc", SessionState::Connected, 30).await;
    assert_eq!(d.supervisor.get("pc").await.unwrap().phone, "15551230040");
    // A bad number is refused before it reaches WhatsApp.
    let err = d.supervisor.pair_code("pc", "12").await.unwrap_err();
    assert_eq!(err.code(), "bad_request");
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_goes_disconnected_then_connected() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = boot(dir.path(), config(&fake)).await;
    d.pair(&fake, "dr", "15551230050").await;
    fake.server
        .fault("15551230050", fakewa::Fault::Drop)
        .unwrap();
    let reason = d.state("dr", SessionState::Disconnected, 20).await;
    assert_eq!(reason, Some(Reason::ConnectionLost));
    d.state("dr", SessionState::Connected, 30).await;
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_replaced_fails_without_restarting() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = boot(dir.path(), config(&fake)).await;
    d.pair(&fake, "rp", "15551230060").await;
    fake.server
        .fault("15551230060", fakewa::Fault::Replace)
        .unwrap();
    let reason = d.state("rp", SessionState::Failed, 20).await;
    assert_eq!(reason, Some(Reason::StreamReplaced));
    // The replaced connection closes a moment after the failure is
    // recorded; once it is gone, nothing has dialled again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while device_count(&fake, "15551230060").1 != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replaced connection is still open after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = d.supervisor.get("rp").await.unwrap();
    assert_eq!(info.state, SessionState::Failed, "no reconnect loop");
    assert_eq!(
        device_count(&fake, "15551230060"),
        (1, 0),
        "no reconnect loop"
    );
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_text_reaches_the_contact() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = boot(dir.path(), config(&fake)).await;
    d.supervisor
        .create(Some("idle".into()), "t1".into(), false)
        .await
        .unwrap();
    let err = d
        .supervisor
        .send_text("idle", "15550009999", "x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_connected");
    d.pair(&fake, "tx", "15551230070").await;
    let id = d
        .supervisor
        .send_text("tx", "+1 555 000 9999", "hello from whatsd")
        .await
        .unwrap();
    let sent = d
        .wait("tx", "message.sent", 5, |k| match k {
            EventKind::MessageSent { id, to, .. } => Some((id.clone(), to.clone())),
            _ => None,
        })
        .await;
    assert_eq!(sent.0, id);
    // send_text returns once the stanza is written; fakewa reads it a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let entry = loop {
        let outbox = fake.server.outbox(Some("15551230070"));
        if let Some(entry) = outbox.into_iter().find(|m| m.id == id) {
            break entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fakewa never received {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(entry.text.as_deref(), Some("hello from whatsd"));
    assert!(entry.to.starts_with("15550009999"));
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_duplicates_are_checked() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = boot(dir.path(), config(&fake)).await;
    for bad in ["../x", "", "UPPER", &"a".repeat(65)] {
        let err = d
            .supervisor
            .create(Some(bad.into()), "t".into(), false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_id", "{bad:?}");
    }
    let generated = d
        .supervisor
        .create(None, String::new(), false)
        .await
        .unwrap();
    assert!(whatsd::session::valid_session_id(&generated.id));
    assert_eq!(generated.tenant, "default");
    d.supervisor
        .create(Some("dup".into()), "t".into(), false)
        .await
        .unwrap();
    let err = d
        .supervisor
        .create(Some("dup".into()), "t".into(), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "already_exists");
    d.supervisor.delete("dup").await.unwrap();
    assert_eq!(
        d.supervisor.get("dup").await.unwrap_err().code(),
        "not_found"
    );
    d.supervisor
        .create(Some("dup".into()), "t".into(), false)
        .await
        .unwrap();
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_pair_independently() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = boot(dir.path(), config(&fake)).await;
    let ids: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    for id in &ids {
        d.supervisor
            .create(Some(id.clone()), "t2".into(), true)
            .await
            .unwrap();
    }
    let mut codes = std::collections::HashMap::new();
    while codes.len() < ids.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), d.events.recv())
            .await
            .unwrap()
            .unwrap();
        if let EventKind::Qr { qr, .. } = event.kind {
            codes.entry(event.session).or_insert(qr.code);
        }
    }
    let fake = Arc::new(fake);
    for (i, id) in ids.iter().enumerate() {
        fake.server
            .scan(&codes[id], Some(&format!("1555123010{i}")))
            .await
            .unwrap();
    }
    for id in &ids {
        if d.supervisor.get(id).await.unwrap().state != SessionState::Connected {
            d.state(id, SessionState::Connected, 30).await;
        }
    }
    assert_eq!(
        d.supervisor
            .list()
            .await
            .iter()
            .filter(|s| s.state == SessionState::Connected)
            .count(),
        5
    );
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_sweep_reconnects_a_silent_connection() {
    // fakewa stops reading and writing ("connected but silent"). The library
    // alone notices only after an idle ping (15-30 s) plus its 20 s
    // dead-socket deadline; the sweep (here every second, silent after 3 s)
    // must reconnect well before that.
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake);
    cfg.health_interval = Duration::from_secs(1);
    cfg.silent_after = Duration::from_secs(3);
    let mut d = boot(dir.path(), cfg).await;
    d.pair(&fake, "quiet", "15551230080").await;
    // A reconnection is a later connection than the one just made: in the
    // same millisecond as the stall, "connected since the stall" would hold
    // without any (it did, and then fakewa could be caught between two
    // connections).
    let paired_at = d
        .supervisor
        .get("quiet")
        .await
        .unwrap()
        .last_connected_at_ms;
    let stalled_at = now_ms().max(paired_at + 1);
    fake.server
        .fault("15551230080", fakewa::Fault::Stall)
        .unwrap();
    d.connected_since_within("quiet", stalled_at, 15).await;
    // One linked device, connected at fakewa (polled: the stalled
    // connection's end and the new one's start are fakewa's own tasks).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while device_count(&fake, "15551230080") != (1, 1) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(device_count(&fake, "15551230080"), (1, 1));
    d.supervisor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_and_wait_qr_follow_the_session_and_give_up_in_time() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = boot(dir.path(), config(&fake)).await;
    let sup = &d.supervisor;
    sup.create(Some("w".into()), "t1".into(), false)
        .await
        .unwrap();
    // Never started: the wait runs out and shows the session as it is.
    let idle = sup
        .wait_until("w", Duration::from_millis(200), |i| {
            i.state == SessionState::Connected
        })
        .await
        .unwrap();
    assert_eq!(idle.state, SessionState::Created);
    assert!(
        sup.wait_until("nope", Duration::ZERO, |_| true)
            .await
            .is_err()
    );

    // Not pairing: no QR to wait for, answered at once.
    let (created, none) = sup.wait_qr("w", Duration::from_secs(30)).await.unwrap();
    assert_eq!(created.state, SessionState::Created);
    assert!(none.is_none());

    // Started: the wait sees the first QR arrive.
    sup.start_session("w").await.unwrap();
    let (info, qr) = sup.wait_qr("w", Duration::from_secs(10)).await.unwrap();
    // The QR is kept a moment before the state says `qr`.
    assert!(
        matches!(info.state, SessionState::Starting | SessionState::Qr),
        "{info:?}"
    );
    let code = qr.expect("a QR within 10 s").code;
    fake.server.scan(&code, Some("15551230090")).await.unwrap();
    let connected = sup
        .wait_until("w", Duration::from_secs(30), |i| {
            i.state == SessionState::Connected
        })
        .await
        .unwrap();
    assert_eq!(connected.phone, "15551230090");
    sup.shutdown().await;
}

/// A graceful shutdown stops each session in order: the client stops (and
/// flushes) first and the record says `disconnected(shutdown)`. Its
/// library tasks are not cut off by the shutdown's cancellation before
/// that (they were, and a session then sometimes recorded
/// `failed(internal)`: "the client stopped unexpectedly").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_records_every_connected_session_as_disconnected() {
    let fake = FakeWa::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ids = ["s1", "s2", "s3", "s4"];
    {
        let mut d = boot(dir.path(), config(&fake)).await;
        for (i, id) in ids.iter().enumerate() {
            d.pair(&fake, id, &format!("1555123005{i}")).await;
        }
        d.supervisor.shutdown().await;
    }
    let store = reopen(|| Store::open(dir.path(), &key())).await;
    for id in ids {
        let record = store.get_record(id).unwrap().expect("record");
        assert_eq!(
            (record.state.as_str(), record.reason.as_str()),
            ("disconnected", "shutdown"),
            "{id}: {}",
            record.reason_message
        );
    }
}
