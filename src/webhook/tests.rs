//! The outbox and its workers against a scripted transport, on tokio's
//! paused clock.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;

use tokio::time::Instant;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::session::{EventSink, Identity, Owner};
use crate::wa::InboundMessage;
use crate::wa::inbound::Content;

/// Answers from a script (then 200s) and records every attempt.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<Outcome>>,
    /// Outcomes for the message with this text, before `script`.
    per_text: Mutex<HashMap<String, VecDeque<Outcome>>>,
    seen: Mutex<Vec<(Instant, Attempt)>>,
    seen_tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<()>>>,
}

#[async_trait::async_trait]
impl Transport for Scripted {
    async fn send(&self, attempt: Attempt) -> Outcome {
        lock(&self.seen).push((Instant::now(), attempt));
        if let Some(tx) = lock(&self.seen_tx).as_ref() {
            let _ = tx.send(());
        }
        let v: serde_json::Value =
            serde_json::from_slice(&attempt_body(&self.seen)).unwrap_or_default();
        let text = v["data"]["text"].as_str().unwrap_or_default().to_string();
        if let Some(outcome) = lock(&self.per_text)
            .get_mut(&text)
            .and_then(VecDeque::pop_front)
        {
            return outcome;
        }
        lock(&self.script)
            .pop_front()
            .unwrap_or(Outcome::Delivered { status: 200 })
    }
}

/// The owner the tests' sessions have: incarnation `inc-<session>`.
fn owner(session: &str, tenant: &str) -> Owner {
    Owner {
        session: session.into(),
        tenant: tenant.into(),
        incarnation: format!("inc-{session}"),
    }
}

/// A whatsd-format endpoint for every event type.
pub(crate) fn spec(url: &str) -> EndpointSpec {
    EndpointSpec {
        url: url.into(),
        secret: "0123456789abcdef".into(),
        events: vec![],
        format: Format::Whatsd,
    }
}

fn open_settings() -> Settings {
    Settings {
        allow_private_targets: true,
        ..Settings::default()
    }
}

fn attempt_body(seen: &Mutex<Vec<(Instant, Attempt)>>) -> Vec<u8> {
    lock(seen)
        .last()
        .map(|(_, a)| a.body.clone())
        .unwrap_or_default()
}

fn retry() -> Outcome {
    Outcome::Retry {
        error: "HTTP 503".into(),
        status: Some(503),
        retry_after: None,
    }
}

/// The receiver refuses the request (no retry).
fn refused() -> Outcome {
    Outcome::Reject {
        error: "HTTP 400: bad".into(),
        status: Some(400),
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    webhooks: Webhooks,
    transport: Arc<Scripted>,
    attempts: tokio::sync::mpsc::UnboundedReceiver<()>,
}

async fn rig(script: Vec<Outcome>) -> Rig {
    rig_in(&TaskScope::root(), script).await
}

/// A [`rig`] whose webhook tasks run in `root`'s tree.
async fn rig_in(root: &TaskScope, script: Vec<Outcome>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &crate::store::MasterKey::from_bytes([3; 32])).unwrap();
    let transport = Arc::new(Scripted::default());
    *lock(&transport.script) = script.into();
    let (tx, attempts) = tokio::sync::mpsc::unbounded_channel();
    *lock(&transport.seen_tx) = Some(tx);
    let webhooks = Webhooks::start_with_in(
        root,
        store,
        open_settings(),
        transport.clone(),
        Arc::new(AtomicBool::new(true)),
    )
    .await
    .unwrap();
    webhooks
        .put_endpoint(
            EndpointId::new(Scope::Tenant("t1".into()), "crm"),
            "t1",
            spec("http://127.0.0.1:9/hook"),
        )
        .await
        .unwrap();
    Rig {
        _dir: dir,
        webhooks,
        transport,
        attempts,
    }
}

fn text(id: &str, body: &str) -> InboundMessage {
    InboundMessage {
        id: id.into(),
        chat: "15550001111@s.whatsapp.net".into(),
        sender: "15550001111@s.whatsapp.net".into(),
        sender_phone: "15550001111".into(),
        timestamp: 1,
        content: Content {
            kind: "text",
            text: Some(body.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn bodies(transport: &Scripted) -> Vec<String> {
    lock(&transport.seen)
        .iter()
        .map(|(_, a)| {
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            v["data"]["text"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_schedule_then_deliver() {
    let mut rig = rig(vec![retry(), retry(), retry(), retry()]).await;
    rig.webhooks
        .messages(
            &owner("s1", "t1"),
            Identity::default(),
            vec![text("m1", "hi")],
        )
        .await
        .unwrap();
    for _ in 0..5 {
        rig.attempts.recv().await.unwrap();
    }
    let seen = lock(&rig.transport.seen).clone();
    assert_eq!(seen.len(), 5);
    // 1 s, 2 s, 4 s, 8 s, each ±20 %.
    for (i, pair) in seen.windows(2).enumerate() {
        let gap = pair[1].0.duration_since(pair[0].0).as_secs_f64();
        let base = f64::from(1u32 << i);
        assert!(
            gap >= base * 0.8 - 0.01 && gap <= base * 1.2 + 0.01,
            "gap {i}: {gap} s, expected about {base} s"
        );
    }
    // The same event each time, signed each time.
    let ids: Vec<_> = seen
        .iter()
        .map(|(_, a)| {
            a.headers
                .iter()
                .find(|h| h.0 == "x-whatsd-event-id")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    assert!(
        seen.iter()
            .all(|(_, a)| a.headers.iter().any(|h| h.0 == "x-whatsd-signature"))
    );
    // Delivered: the queue is empty.
    let status = rig.webhooks.status(&rig.webhooks.tenant_endpoints("t1"));
    assert_eq!(status[0]["delivered"], 1);
    assert_eq!(status[0]["failed_attempts"], 4);
    assert_eq!(status[0]["last_error"], "HTTP 503");
    wait_for(|| rig.webhooks.totals().0 == 0).await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let mut rig = rig(vec![Outcome::Retry {
        error: "HTTP 429".into(),
        status: Some(429),
        retry_after: Some(Duration::from_secs(30)),
    }])
    .await;
    rig.webhooks
        .messages(
            &owner("s1", "t1"),
            Identity::default(),
            vec![text("m1", "hi")],
        )
        .await
        .unwrap();
    rig.attempts.recv().await.unwrap();
    rig.attempts.recv().await.unwrap();
    let seen = lock(&rig.transport.seen).clone();
    let gap = seen[1].0.duration_since(seen[0].0);
    assert!(
        gap >= Duration::from_secs(30) && gap < Duration::from_secs(31),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_queue_holds_back_only_itself_and_keeps_order() {
    let mut rig = rig(vec![]).await;
    // s1's first delivery fails twice; s2's messages must not wait for it.
    lock(&rig.transport.per_text).insert("s1-1".into(), [retry(), retry()].into());
    rig.webhooks
        .messages(
            &owner("s1", "t1"),
            Identity::default(),
            vec![text("a1", "s1-1"), text("a2", "s1-2")],
        )
        .await
        .unwrap();
    rig.webhooks
        .messages(
            &owner("s2", "t1"),
            Identity::default(),
            vec![text("b1", "s2-1"), text("b2", "s2-2")],
        )
        .await
        .unwrap();
    for _ in 0..6 {
        rig.attempts.recv().await.unwrap();
    }
    let order = bodies(&rig.transport);
    let s1: Vec<_> = order
        .iter()
        .filter(|b| b.starts_with("s1"))
        .cloned()
        .collect();
    assert_eq!(
        s1,
        ["s1-1", "s1-1", "s1-1", "s1-2"],
        "in order, head retried"
    );
    let first_s2 = order.iter().position(|b| b == "s2-2").unwrap();
    let s1_done = order.iter().rposition(|b| b == "s1-1").unwrap();
    assert!(
        first_s2 < s1_done,
        "s2 finished while s1 was backing off: {order:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_dead_lettered_and_can_be_redelivered() {
    let mut rig = rig(vec![refused()]).await;
    rig.webhooks
        .messages(
            &owner("s1", "t1"),
            Identity::default(),
            vec![text("m1", "one"), text("m2", "two")],
        )
        .await
        .unwrap();
    rig.attempts.recv().await.unwrap();
    rig.attempts.recv().await.unwrap();
    assert_eq!(
        bodies(&rig.transport),
        ["one", "two"],
        "no retry after a 400"
    );
    wait_for(|| {
        rig.webhooks
            .dead_letters(DeadScope::Tenant("t1"), 0, 10)
            .unwrap()
            .len()
            == 1
    })
    .await;
    let dead = rig
        .webhooks
        .dead_letters(DeadScope::Tenant("t1"), 0, 10)
        .unwrap();
    assert!(dead[0].1.reason.contains("HTTP 400"));
    assert!(
        rig.webhooks
            .dead_letters(DeadScope::Tenant("other"), 0, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        !rig.webhooks
            .redeliver(dead[0].0, DeadScope::Tenant("other"))
            .await
            .unwrap()
    );
    assert!(
        rig.webhooks
            .redeliver(dead[0].0, DeadScope::Tenant("t1"))
            .await
            .unwrap()
    );
    rig.attempts.recv().await.unwrap();
    assert_eq!(bodies(&rig.transport), ["one", "two", "one"]);
    wait_for(|| {
        rig.webhooks
            .dead_letters(DeadScope::All, 0, 10)
            .unwrap()
            .is_empty()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn pending_deliveries_resume_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::store::MasterKey::from_bytes([3; 32]);
    let endpoint = EndpointId::new(Scope::Tenant("t1".into()), "crm");
    {
        let store = Store::open(dir.path(), &key).unwrap();
        let down = Arc::new(Scripted::default());
        *lock(&down.script) = std::iter::repeat_with(retry).take(100).collect();
        let webhooks = Webhooks::start_with(
            store,
            open_settings(),
            down,
            Arc::new(AtomicBool::new(true)),
        )
        .await
        .unwrap();
        webhooks
            .put_endpoint(endpoint.clone(), "t1", spec("http://127.0.0.1:9/hook"))
            .await
            .unwrap();
        let batch = (0..20)
            .map(|i| text(&format!("m{i}"), &format!("{i}")))
            .collect();
        webhooks
            .messages(&owner("s1", "t1"), Identity::default(), batch)
            .await
            .unwrap();
        webhooks.shutdown(Duration::from_secs(5)).await;
    }
    let store = Store::open(dir.path(), &key).unwrap();
    let up = Arc::new(Scripted::default());
    let (tx, mut attempts) = tokio::sync::mpsc::unbounded_channel();
    *lock(&up.seen_tx) = Some(tx);
    let webhooks = Webhooks::start_with(
        store,
        open_settings(),
        up.clone(),
        Arc::new(AtomicBool::new(true)),
    )
    .await
    .unwrap();
    assert!(
        webhooks.endpoint(&endpoint).is_some(),
        "endpoints survive a restart"
    );
    for _ in 0..20 {
        attempts.recv().await.unwrap();
    }
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(bodies(&up), expected);
}

#[tokio::test(start_paused = true)]
async fn session_endpoints_replace_the_tenants_and_filters_apply() {
    let mut rig = rig(vec![]).await;
    rig.webhooks
        .put_endpoint(
            EndpointId::new(Scope::Session(SessionRef::new("s2", "inc-s2")), "own"),
            "t1",
            EndpointSpec {
                events: vec!["message.received".into()],
                ..spec("http://127.0.0.1:9/own")
            },
        )
        .await
        .unwrap();
    let mut status = text("st", "status post");
    status.chat = "status@broadcast".into();
    status.is_status = true;
    rig.webhooks
        .messages(
            &owner("s2", "t1"),
            Identity::default(),
            vec![status, text("m", "dm")],
        )
        .await
        .unwrap();
    rig.attempts.recv().await.unwrap();
    let seen = lock(&rig.transport.seen).clone();
    assert_eq!(
        seen.len(),
        1,
        "status filtered out, tenant endpoint replaced"
    );
    assert_eq!(seen[0].1.url, "http://127.0.0.1:9/own");
    // A session without its own endpoints uses the tenant's, status included.
    let mut status = text("st", "status post");
    status.chat = "status@broadcast".into();
    status.is_status = true;
    rig.webhooks
        .messages(&owner("s1", "t1"), Identity::default(), vec![status])
        .await
        .unwrap();
    rig.attempts.recv().await.unwrap();
    let last = lock(&rig.transport.seen).last().unwrap().1.clone();
    let v: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(v["type"], "message.status");
    assert_eq!(v["data"]["chat"], "status@broadcast");
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

#[tokio::test(start_paused = true)]
async fn dead_letters_expire_after_the_retention_and_are_counted() {
    let mut rig = rig(vec![refused()]).await;
    rig.webhooks
        .messages(
            &owner("s1", "t1"),
            Identity::default(),
            vec![text("m1", "one")],
        )
        .await
        .unwrap();
    rig.attempts.recv().await.unwrap();
    wait_for(|| {
        rig.webhooks
            .dead_letters(DeadScope::All, 0, 10)
            .unwrap()
            .len()
            == 1
    })
    .await;
    let died = rig.webhooks.dead_letters(DeadScope::All, 0, 10).unwrap()[0]
        .1
        .died_ms;
    let retention = Settings::default().dead_letter_retention.as_millis() as i64;
    let before = crate::metrics::dead_letters_expired_total();
    assert_eq!(
        rig.webhooks
            .expire_dead_letters(died + retention)
            .await
            .unwrap(),
        0,
        "kept for the whole retention"
    );
    assert_eq!(
        rig.webhooks
            .expire_dead_letters(died + retention + 1)
            .await
            .unwrap(),
        1
    );
    assert!(
        rig.webhooks
            .dead_letters(DeadScope::All, 0, 10)
            .unwrap()
            .is_empty()
    );
    assert!(crate::metrics::dead_letters_expired_total() > before);
}

#[tokio::test(start_paused = true)]
async fn a_deleted_session_takes_its_endpoints_queues_and_dead_letters() {
    let mut rig = rig(vec![refused()]).await;
    let old = owner("s1", "t1");
    let own = EndpointId::new(
        Scope::Session(SessionRef::new("s1", &old.incarnation)),
        "own",
    );
    rig.webhooks
        .put_endpoint(own.clone(), "t1", spec("http://127.0.0.1:9/own"))
        .await
        .unwrap();
    rig.webhooks
        .messages(&old, Identity::default(), vec![text("m1", "one")])
        .await
        .unwrap();
    rig.attempts.recv().await.unwrap();
    wait_for(|| {
        rig.webhooks
            .dead_letters(DeadScope::All, 0, 10)
            .unwrap()
            .len()
            == 1
    })
    .await;
    rig.webhooks.session_deleted(&old).await.unwrap();
    assert!(rig.webhooks.endpoint(&own).is_none());
    assert!(
        rig.webhooks
            .dead_letters(DeadScope::All, 0, 10)
            .unwrap()
            .is_empty()
    );

    // The same id again, another incarnation: the tenant's endpoint, not the
    // old session endpoint, gets its messages.
    let new = Owner {
        incarnation: "inc-s1-again".into(),
        ..old.clone()
    };
    rig.webhooks
        .messages(&new, Identity::default(), vec![text("m2", "two")])
        .await
        .unwrap();
    rig.attempts.recv().await.unwrap();
    let last = lock(&rig.transport.seen).last().unwrap().1.url.clone();
    assert!(last.ends_with("/hook"), "{last}");
}

/// Webhooks in `root`'s tree with one worker sleeping out an hour's
/// backoff after its first attempt (and the retention sweep waiting).
async fn backing_off(root: &TaskScope) -> Rig {
    let mut rig = rig_in(
        root,
        vec![Outcome::Retry {
            error: "HTTP 503".into(),
            status: Some(503),
            retry_after: Some(Duration::from_secs(3600)),
        }],
    )
    .await;
    let webhooks = &rig.webhooks;
    webhooks
        .messages(
            &owner("s1", "t1"),
            Identity::default(),
            vec![text("m1", "hi")],
        )
        .await
        .unwrap();
    rig.attempts.recv().await.unwrap();
    let webhooks = &rig.webhooks;
    // The retry is stored just before the worker starts its wait.
    wait_for(|| outbox_attempts(webhooks) == vec![1]).await;
    // The backing-off worker and the retention sweep, counted in both
    // trees, once the retry's commit (a short-lived task) is done.
    wait_for(|| (webhooks.live_tasks(), root.live_tasks()) == (2, 2)).await;
    rig
}

/// The attempts of every item in the outbox.
fn outbox_attempts(webhooks: &Webhooks) -> Vec<u32> {
    webhooks
        .inner
        .store
        .outbox_all()
        .unwrap()
        .iter()
        .map(|item| {
            serde_json::from_slice::<Pending>(&item.value)
                .unwrap()
                .attempts
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_every_webhook_task_even_one_backing_off() {
    let root = TaskScope::root();
    let Rig {
        _dir,
        webhooks,
        transport,
        ..
    } = backing_off(&root).await;
    let started = Instant::now();
    webhooks.shutdown(Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited out its timeout"
    );
    assert_eq!((webhooks.live_tasks(), root.live_tasks()), (0, 0));
    assert!(!root.is_cancelled(), "the parent scope goes on");
    // The item waits in the outbox as it was, and nothing new starts.
    assert_eq!(outbox_attempts(&webhooks), vec![1]);
    webhooks
        .messages(
            &owner("s1", "t1"),
            Identity::default(),
            vec![text("m2", "late")],
        )
        .await
        .unwrap();
    assert_eq!(outbox_attempts(&webhooks), vec![1, 0]);
    assert_eq!(webhooks.live_tasks(), 0);
    assert_eq!(lock(&transport.seen).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_parent_scope_stops_the_webhook_tasks() {
    let root = TaskScope::root();
    let Rig {
        _dir,
        webhooks,
        transport,
        ..
    } = backing_off(&root).await;
    root.cancel();
    assert!(root.wait(Duration::from_secs(5)).await);
    assert_eq!(webhooks.live_tasks(), 0);
    assert_eq!(outbox_attempts(&webhooks), vec![1]);
    assert_eq!(lock(&transport.seen).len(), 1);
}
