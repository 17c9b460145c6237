//! The supervisor: one task per session, a registry of them, the restart
//! reload, the health sweep, and graceful shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};

use super::actor::{Actor, Command, Reply, Shared};
use super::event::{EventKind, PairingQr, SessionEvent};
use super::limits::{LimitOverride, LimitsView};
use super::outbound::{Outgoing, SendStatus};
use super::state::{Reason, SessionState};
use super::{
    EventSink, PairCodeIssued, SessionConfig, SessionInfo, SupervisorError, now_ms,
    valid_session_id,
};
use crate::lock;
use crate::proto::v1::SessionRecord;
use crate::store::Store;
use crate::task::TaskScope;

/// How often the send status retention sweep runs.
const SEND_STATUS_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Events buffered per subscriber before it starts missing some.
const EVENT_BUFFER: usize = 4096;
/// Commands queued per session.
const COMMAND_BUFFER: usize = 64;
/// Bound on any one command (reset and logout stop a client first).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// Owns every session's task. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    sessions: Mutex<HashMap<String, mpsc::Sender<Box<Command>>>>,
    /// Every session's task, its client's tasks and the health sweep run
    /// here; cancelled, each session records its shutdown and stops.
    scope: TaskScope,
    /// Serializes creates, so a tenant's quota is counted exactly.
    creating: tokio::sync::Mutex<()>,
}

impl Supervisor {
    /// Loads every stored session and brings it back: paired sessions
    /// reconnect (at most `start_concurrency` at once), pairings that were
    /// under way become `stopped`, everything else stays as it was.
    pub async fn start(store: Store, config: SessionConfig) -> Result<Supervisor, SupervisorError> {
        Self::start_with_sink(store, config, None).await
    }

    /// Like [`Supervisor::start`], with a sink that gets every incoming
    /// message (before WhatsApp's ack) and every session event.
    pub async fn start_with_sink(
        store: Store,
        config: SessionConfig,
        sink: Option<Arc<dyn EventSink>>,
    ) -> Result<Supervisor, SupervisorError> {
        Self::start_in(&TaskScope::root(), store, config, sink).await
    }

    /// Like [`Supervisor::start_with_sink`], its tasks in a subsystem of
    /// `parent` (the daemon's scope).
    pub async fn start_in(
        parent: &TaskScope,
        store: Store,
        config: SessionConfig,
        sink: Option<Arc<dyn EventSink>>,
    ) -> Result<Supervisor, SupervisorError> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            sink,
            start_permits: Arc::new(Semaphore::new(config.start_concurrency.max(1))),
            store,
            config,
            events,
            live_qr: Mutex::new(HashMap::new()),
        });
        let supervisor = Supervisor {
            inner: Arc::new(Inner {
                shared,
                sessions: Mutex::new(HashMap::new()),
                scope: parent.subsystem(),
                creating: tokio::sync::Mutex::new(()),
            }),
        };
        let records = supervisor.inner.shared.store.list_records()?;
        let mut restored = 0;
        for (id, record) in records {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(session = %id, "session record unreadable: {e}");
                    continue;
                }
            };
            let mut record = record;
            if record.incarnation.is_empty() {
                // The store's conversion gives every record one; a record
                // it could not read then, read now, gets its first here.
                record.incarnation = super::new_incarnation();
                supervisor.inner.shared.store.put_record(&record).await?;
            }
            let state = SessionState::parse(&record.state).unwrap_or(SessionState::Failed);
            if state.is_pairing() && record.phone.is_empty() {
                // Nobody is watching a QR code any more: stop before anyone asks.
                super::actor::apply_transition(
                    &mut record,
                    SessionState::Stopped,
                    Some(Reason::PairingInterrupted),
                    None,
                );
                supervisor.inner.shared.store.put_record(&record).await?;
            }
            let reconnect =
                SessionState::parse(&record.state).is_some_and(SessionState::is_running);
            let tx = supervisor.spawn_actor(record);
            if reconnect {
                restored += 1;
                let _ = tx.send(Box::new(Command::Restore)).await;
            }
        }
        tracing::info!(restored, "supervisor started");
        supervisor.spawn_health_sweep();
        supervisor.spawn_send_status_sweep();
        Ok(supervisor)
    }

    /// Commands go boxed: a channel keeps its messages in blocks of 32
    /// slots, so each idle session holds 32 pointers rather than 32
    /// commands (~2.5 KiB).
    fn spawn_actor(&self, record: SessionRecord) -> mpsc::Sender<Box<Command>> {
        let id = record.id.clone();
        let (tx, rx) = mpsc::channel(COMMAND_BUFFER);
        lock(&self.inner.sessions).insert(id.clone(), tx.clone());
        let shared = self.inner.shared.clone();
        let weak = Arc::downgrade(&self.inner);
        let own = tx.downgrade();
        let supervisor = self.inner.scope.clone();
        let session = supervisor.child();
        self.inner.scope.spawn(async move {
            let task = session.spawn(tracing::Instrument::instrument(
                Actor::new(shared.clone(), record, session.clone()).run(rx),
                tracing::info_span!("session", id = %id),
            ));
            let exit = task.await;
            // Whatever ended the session's task ends what it left running.
            session.cancel();
            match exit {
                Ok(ActorExit::Deleted) => {
                    // What the session held is free now: give it back to
                    // the system once a burst of deletes settles.
                    crate::store::release::session_removed(&shared.store, &supervisor);
                    // Only this task's own entry: the id may already be reused.
                    if let Some(inner) = weak.upgrade() {
                        let mut sessions = lock(&inner.sessions);
                        if let Some(own) = own.upgrade()
                            && sessions.get(&id).is_some_and(|tx| tx.same_channel(&own))
                        {
                            sessions.remove(&id);
                        }
                    }
                }
                Ok(ActorExit::Stopped) => {}
                Err(e) => {
                    // One session's bug must not take the others down: record it,
                    // and give the session a fresh (idle) task so it can be reset.
                    tracing::error!(session = %id, "session task died: {e}");
                    let Some(inner) = weak.upgrade() else { return };
                    let message = if e.is_panic() {
                        "session task panicked"
                    } else {
                        "session task was cancelled"
                    };
                    // Boxed: this task waits on its session for the
                    // session's whole life, and need not reserve room for
                    // this store call meanwhile.
                    let record = Box::pin(shared.mark_failed_after_crash(&id, message)).await;
                    if let Some(record) = record
                        && !inner.scope.is_cancelled()
                    {
                        Supervisor { inner }.spawn_actor(record);
                    }
                }
            }
        });
        tx
    }

    fn spawn_health_sweep(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.shared.config.health_interval;
        self.inner.scope.spawn_until_cancelled(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let senders: Vec<_> = lock(&inner.sessions).values().cloned().collect();
                for tx in senders {
                    let _ = tx.try_send(Box::new(Command::Health));
                }
            }
        });
    }

    /// Deletes the sends' statuses past their retention and the expired
    /// idempotency keys, at start and every hour (see
    /// [`super::outbound::expire`]).
    fn spawn_send_status_sweep(&self) {
        let weak = Arc::downgrade(&self.inner);
        self.inner.scope.spawn_until_cancelled(async move {
            let mut ticker = tokio::time::interval(SEND_STATUS_SWEEP_EVERY);
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = inner.shared.store.clone();
                let retention = inner.shared.config.send_status_retention;
                drop(inner);
                let swept = tokio::task::spawn_blocking(move || {
                    super::outbound::expire(&store, now_ms(), retention)
                })
                .await;
                match swept {
                    Ok(Ok((0, 0))) => {}
                    Ok(Ok((statuses, keys))) => tracing::info!(
                        statuses,
                        idempotency_keys = keys,
                        "expired send statuses past their retention"
                    ),
                    Ok(Err(e)) => tracing::error!("expiring send statuses: {e}"),
                    Err(_) => tracing::error!("expiring send statuses panicked"),
                }
            }
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Waits until `done` holds for session `id`, looking again after each
    /// of its events, for at most `within`. Returns the session as last
    /// seen: when the time ran out, `done` does not hold for it.
    pub async fn wait_until(
        &self,
        id: &str,
        within: Duration,
        mut done: impl FnMut(&SessionInfo) -> bool,
    ) -> Result<SessionInfo, SupervisorError> {
        // Subscribed before the first look: no event in between is missed.
        let mut events = self.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let info = self.get(id).await?;
            if done(&info) {
                return Ok(info);
            }
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Ok(event)) if event.session == id => break,
                    Ok(Ok(_)) => {}
                    // Missed some: look at the session again.
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return Ok(info),
                }
            }
        }
    }

    /// Waits, at most `within`, for session `id` to show a live QR code
    /// while it pairs by QR (`starting` or `qr`). Returns the session as last
    /// seen, and the code unless it stopped pairing by QR or time ran out.
    pub async fn wait_qr(
        &self,
        id: &str,
        within: Duration,
    ) -> Result<(SessionInfo, Option<PairingQr>), SupervisorError> {
        let info = self
            .wait_until(id, within, |info| {
                !matches!(info.state, SessionState::Starting | SessionState::Qr)
                    || self.live_qr(id).is_some()
            })
            .await?;
        let qr = self.live_qr(id);
        Ok((info, qr))
    }

    pub fn is_running(&self) -> bool {
        !self.inner.scope.is_cancelled()
    }

    /// Creates a session (id generated when absent) and, with `start`,
    /// begins pairing.
    pub async fn create(
        &self,
        id: Option<String>,
        tenant: String,
        start: bool,
    ) -> Result<SessionInfo, SupervisorError> {
        self.check_running()?;
        let id = match id {
            Some(id) if valid_session_id(&id) => id,
            Some(id) => return Err(SupervisorError::InvalidId(id)),
            None => generate_id(),
        };
        let tenant = if tenant.is_empty() {
            "default".to_owned()
        } else {
            tenant
        };
        let now = now_ms();
        // A new session's history starts empty: its first transition is the
        // first change of state.
        let record = SessionRecord {
            id: id.clone(),
            tenant,
            incarnation: super::new_incarnation(),
            state: SessionState::Created.as_str().to_owned(),
            created_at_ms: now,
            updated_at_ms: now,
            ..Default::default()
        };
        let creating = self.inner.creating.lock().await;
        {
            // Reserve the id before the async write so two creates cannot both
            // win. The answer names nothing about a session that holds it.
            let mut sessions = lock(&self.inner.sessions);
            if sessions.contains_key(&id) {
                return Err(SupervisorError::AlreadyExists(id));
            }
            let (placeholder, _) = mpsc::channel(1);
            sessions.insert(id.clone(), placeholder);
        }
        let quota = self.inner.shared.config.max_per_tenant;
        let owned = self
            .inner
            .shared
            .store
            .list_records()
            .map(|records| {
                records
                    .iter()
                    .filter(|(_, r)| r.as_ref().is_ok_and(|r| r.tenant == record.tenant))
                    .count()
            })
            .unwrap_or(0);
        if owned >= quota {
            lock(&self.inner.sessions).remove(&id);
            return Err(SupervisorError::Quota(format!(
                "tenant {:?} already has {owned} sessions, the most allowed \
                 (sessions.max_per_tenant = {quota})",
                record.tenant
            )));
        }
        if let Err(e) = self.inner.shared.store.put_record(&record).await {
            lock(&self.inner.sessions).remove(&id);
            return Err(e.into());
        }
        drop(creating);
        self.spawn_actor(record);
        if start {
            return self.start_session(&id).await;
        }
        self.get(&id).await
    }

    pub async fn get(&self, id: &str) -> Result<SessionInfo, SupervisorError> {
        if !valid_session_id(id) {
            return Err(SupervisorError::NotFound(id.to_owned()));
        }
        match self.inner.shared.store.get_record(id)? {
            Some(record) => Ok(SessionInfo::from_record(&record)),
            None => Err(SupervisorError::NotFound(id.to_owned())),
        }
    }

    pub async fn list(&self) -> Vec<SessionInfo> {
        match self.inner.shared.store.list_records() {
            Ok(records) => records
                .into_iter()
                .filter_map(|(_, r)| r.ok())
                .map(|r| SessionInfo::from_record(&r))
                .collect(),
            Err(e) => {
                tracing::error!("listing sessions: {e}");
                Vec::new()
            }
        }
    }

    pub async fn sessions_for_phone(
        &self,
        phone: &str,
    ) -> Result<Vec<SessionInfo>, SupervisorError> {
        if phone.is_empty() || !phone.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SupervisorError::BadRequest(format!(
                "invalid phone number {phone:?}: digits only"
            )));
        }
        let ids = self.inner.shared.store.sessions_for_phone(phone)?;
        let mut out = Vec::new();
        for id in ids {
            if let Ok(info) = self.get(&id).await {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// The QR code currently shown for `id`, if one is live.
    pub fn live_qr(&self, id: &str) -> Option<PairingQr> {
        let qr = lock(&self.inner.shared.live_qr).get(id).cloned()?;
        (qr.expires_at_ms > now_ms()).then_some(qr)
    }

    pub async fn start_session(&self, id: &str) -> Result<SessionInfo, SupervisorError> {
        self.call(id, Command::Start).await
    }

    pub async fn stop(&self, id: &str) -> Result<SessionInfo, SupervisorError> {
        self.call(id, Command::Stop).await
    }

    pub async fn reset(&self, id: &str) -> Result<SessionInfo, SupervisorError> {
        self.call(id, Command::Reset).await
    }

    pub async fn logout(&self, id: &str) -> Result<SessionInfo, SupervisorError> {
        self.call(id, Command::Logout).await
    }

    /// Moves session `id` to `tenant` (see the actor's `reassign`).
    pub async fn reassign(&self, id: &str, tenant: &str) -> Result<SessionInfo, SupervisorError> {
        let tenant = tenant.to_owned();
        self.call(id, move |reply| Command::Reassign { tenant, reply })
            .await
    }

    /// Owners of every stored session (to tell live attachments from
    /// orphans).
    pub fn owners(&self) -> Result<Vec<super::Owner>, SupervisorError> {
        Ok(self
            .inner
            .shared
            .store
            .list_records()?
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .map(|r| super::Owner::of(&r))
            .collect())
    }

    pub async fn delete(&self, id: &str) -> Result<(), SupervisorError> {
        self.call(id, Command::Delete).await?;
        // Gone now, not when its task has wound down: the id is free again.
        lock(&self.inner.sessions).remove(id);
        Ok(())
    }

    pub async fn pair_code(
        &self,
        id: &str,
        phone: &str,
    ) -> Result<PairCodeIssued, SupervisorError> {
        let phone = phone.to_owned();
        self.call(id, move |reply| Command::PairCode { phone, reply })
            .await
    }

    pub async fn send_text(
        &self,
        id: &str,
        to: &str,
        text: &str,
    ) -> Result<String, SupervisorError> {
        if text.is_empty() {
            return Err(SupervisorError::BadRequest("text must not be empty".into()));
        }
        let (to, text) = (to.to_owned(), text.to_owned());
        self.call(id, move |reply| Command::SendText { to, text, reply })
            .await
    }

    /// Where session `id`'s contacts directory lives in the store.
    pub async fn contacts_prefix(&self, id: &str) -> Result<Vec<u8>, SupervisorError> {
        self.call(id, Command::ContactsPrefix).await
    }

    /// A handle for queries to WhatsApp (groups, numbers) on session `id`,
    /// which must be connected.
    pub async fn queries(&self, id: &str) -> Result<crate::wa::Queries, SupervisorError> {
        self.call(id, Command::Queries).await
    }

    /// Queues a send on session `id` (durable on return); answers its
    /// status and whether it is new (false: `idempotency_key` named an
    /// earlier send of this session, whose status this is).
    pub async fn enqueue(
        &self,
        id: &str,
        to: &str,
        text: &str,
        idempotency_key: Option<String>,
    ) -> Result<(SendStatus, bool), SupervisorError> {
        if text.is_empty() {
            return Err(SupervisorError::BadRequest("text must not be empty".into()));
        }
        let out = Outgoing {
            text: text.to_owned(),
            ..Outgoing::default()
        };
        self.enqueue_outgoing(id, to, out, idempotency_key).await
    }

    /// Queues any send (text, media, reply, reaction) as [`Supervisor::enqueue`];
    /// a media blob that does not end up queued is removed.
    pub async fn enqueue_outgoing(
        &self,
        id: &str,
        to: &str,
        out: Outgoing,
        idempotency_key: Option<String>,
    ) -> Result<(SendStatus, bool), SupervisorError> {
        let to = to.to_owned();
        let blob = out.media.as_ref().map(|m| m.blob.name.clone());
        let result = self
            .call(id, move |reply| Command::Enqueue {
                to,
                out: Box::new(out),
                idempotency_key,
                reply,
            })
            .await;
        // The session never saw it (gone, stopping): the blob is ours to remove.
        if let (Some(name), Err(SupervisorError::NotFound(_) | SupervisorError::ShuttingDown)) =
            (&blob, &result)
        {
            let _ = self.inner.shared.store.media_blob_remove(name).await;
        }
        result
    }

    /// Marks messages of `chat` read through session `id` (no ids: the
    /// latest received there); answers the ids marked.
    pub async fn mark_read(
        &self,
        id: &str,
        chat: &str,
        ids: Vec<String>,
        sender: Option<String>,
    ) -> Result<Vec<String>, SupervisorError> {
        let chat = chat.to_owned();
        self.call(id, move |reply| Command::MarkRead {
            chat,
            ids,
            sender,
            reply,
        })
        .await
    }

    /// Shows a chat state ("typing…") to `to` through session `id`.
    pub async fn chat_state(
        &self,
        id: &str,
        to: &str,
        state: crate::wa::media_out::ChatState,
    ) -> Result<(), SupervisorError> {
        let to = to.to_owned();
        self.call(id, move |reply| Command::ChatState { to, state, reply })
            .await
    }

    /// The status of send `message` of session `id`.
    pub async fn send_status(
        &self,
        id: &str,
        message: &str,
    ) -> Result<Option<SendStatus>, SupervisorError> {
        let message = message.to_owned();
        self.call(id, move |reply| Command::SendStatus { id: message, reply })
            .await
    }

    /// Cancels send `message` of session `id` if it is still queued.
    pub async fn cancel_send(
        &self,
        id: &str,
        message: &str,
    ) -> Result<Option<SendStatus>, SupervisorError> {
        let message = message.to_owned();
        self.call(id, move |reply| Command::CancelSend { id: message, reply })
            .await
    }

    /// Session `id`'s rate limits and buckets.
    pub async fn limits(&self, id: &str) -> Result<LimitsView, SupervisorError> {
        self.call(id, Command::Limits).await
    }

    /// Sets (or with `None` removes) session `id`'s own limits.
    pub async fn set_limits(
        &self,
        id: &str,
        limits: Option<LimitOverride>,
    ) -> Result<LimitsView, SupervisorError> {
        self.call(id, move |reply| Command::SetLimits { limits, reply })
            .await
    }

    /// Stops every session (each bounded by the shutdown timeout, flushing
    /// its device state), then flushes the store.
    pub async fn shutdown(&self) {
        // Every session sees the cancellation in its loop, records its
        // shutdown and stops its client; its client's tasks end with it.
        self.inner.scope.cancel();
        let bound = self.inner.shared.config.shutdown_timeout + Duration::from_secs(5);
        if !self.inner.scope.wait(bound).await {
            tracing::warn!(
                left = self.inner.scope.live_tasks(),
                "some sessions did not stop within {bound:?}"
            );
        }
        lock(&self.inner.sessions).clear();
        if let Err(e) = self.inner.shared.store.flush().await {
            tracing::error!("flushing the store at shutdown: {e}");
        }
        tracing::info!("supervisor stopped");
    }

    /// Tasks of the supervisor's scope still running: sessions, their
    /// clients' tasks, the health sweep.
    pub fn live_tasks(&self) -> usize {
        self.inner.scope.live_tasks()
    }

    fn check_running(&self) -> Result<(), SupervisorError> {
        if self.is_running() {
            Ok(())
        } else {
            Err(SupervisorError::ShuttingDown)
        }
    }

    async fn call<T>(
        &self,
        id: &str,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, SupervisorError> {
        self.check_running()?;
        let tx = lock(&self.inner.sessions)
            .get(id)
            .cloned()
            .ok_or_else(|| SupervisorError::NotFound(id.to_owned()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(Box::new(make(reply)))
            .await
            .map_err(|_| SupervisorError::NotFound(id.to_owned()))?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SupervisorError::NotFound(id.to_owned())),
            Err(_) => Err(SupervisorError::Timeout("the session did not answer")),
        }
    }
}

/// How a session's task ended.
pub(super) enum ActorExit {
    /// The session was deleted.
    Deleted,
    /// The daemon is shutting down.
    Stopped,
}

fn generate_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 6];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!("s-{}", crate::hex::hex(&bytes))
}

impl Shared {
    /// After a task died: `failed(internal)`, persisted and announced.
    async fn mark_failed_after_crash(&self, id: &str, message: &str) -> Option<SessionRecord> {
        lock(&self.live_qr).remove(id);
        let mut record = self.store.get_record(id).ok().flatten()?;
        let from = SessionState::parse(&record.state).unwrap_or(SessionState::Failed);
        super::actor::apply_transition(
            &mut record,
            SessionState::Failed,
            Some(Reason::Internal),
            Some(message),
        );
        if let Err(e) = self.store.put_record(&record).await {
            tracing::error!(session = %id, "recording the crash: {e}");
        }
        self.emit(
            &record,
            EventKind::State {
                from,
                to: SessionState::Failed,
                reason: Some(Reason::Internal),
                message: Some(message.to_owned()),
            },
        );
        Some(record)
    }
}
