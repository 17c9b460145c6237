//! One session's task: owns its client, applies commands and library events
//! in order, persists every state change before announcing it.

use std::collections::HashMap;
use std::future::pending;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use whatsapp_rust::store::traits::DeviceStore;

use super::contacts;
use super::event::{EventKind, Identity, PairingQr, ReceivedMedia, SessionEvent};
use super::limits::{Bucket, Levels, LimitOverride, LimitsView};
use super::outbound::{Outgoing, SendStatus};
use super::state::{Reason, SessionState};
use super::supervisor::ActorExit;
use super::{
    EventSink, Owner, PairCodeIssued, SessionConfig, SessionInfo, SupervisorError,
    TRANSITIONS_KEPT, now_ms,
};
use crate::lock;
use crate::proto::v1::{SessionRecord, Transition};
use crate::store::Store;
use crate::task::TaskScope;
use crate::wa::{Connection, InboundMessage, InboundSink, WaError, WaEvent};

mod events;
mod limits;
mod outbound;

pub(super) type Reply<T> = oneshot::Sender<Result<T, SupervisorError>>;

pub(super) enum Command {
    Start(Reply<SessionInfo>),
    Stop(Reply<SessionInfo>),
    Reset(Reply<SessionInfo>),
    Logout(Reply<SessionInfo>),
    Delete(Reply<()>),
    /// Moves the session to another tenant (admin).
    Reassign {
        tenant: String,
        reply: Reply<SessionInfo>,
    },
    PairCode {
        phone: String,
        reply: Reply<PairCodeIssued>,
    },
    SendText {
        to: String,
        text: String,
        reply: Reply<String>,
    },
    /// Queue a send; answers its status and whether it is new (false: the
    /// idempotency key named an earlier send).
    Enqueue {
        to: String,
        out: Box<Outgoing>,
        idempotency_key: Option<String>,
        reply: Reply<(SendStatus, bool)>,
    },
    /// Mark messages of a chat read (none given: the latest received).
    MarkRead {
        chat: String,
        ids: Vec<String>,
        sender: Option<String>,
        reply: Reply<Vec<String>>,
    },
    /// Show a chat state to a chat.
    ChatState {
        to: String,
        state: crate::wa::media_out::ChatState,
        reply: Reply<()>,
    },
    SendStatus {
        id: String,
        reply: Reply<Option<SendStatus>>,
    },
    CancelSend {
        id: String,
        reply: Reply<Option<SendStatus>>,
    },
    Limits(Reply<LimitsView>),
    /// Sets (or with `None` removes) the session's own limits.
    SetLimits {
        limits: Option<LimitOverride>,
        reply: Reply<LimitsView>,
    },
    /// A handle for queries to WhatsApp (groups, numbers), run by the
    /// caller (a query must not hold up the session's events); only while
    /// connected.
    Queries(Reply<crate::wa::Queries>),
    /// Where the session's contacts directory lives in the store (its
    /// current incarnation's prefix).
    ContactsPrefix(Reply<Vec<u8>>),
    /// Daemon start: reconnect a session that was paired.
    Restore,
    Health,
}

/// What all session tasks share.
pub(super) struct Shared {
    pub store: Store,
    pub config: SessionConfig,
    pub events: broadcast::Sender<SessionEvent>,
    pub sink: Option<Arc<dyn EventSink>>,
    pub live_qr: Mutex<HashMap<String, PairingQr>>,
    pub start_permits: Arc<Semaphore>,
}

impl Shared {
    pub(super) fn emit(&self, record: &SessionRecord, kind: EventKind) {
        let event = SessionEvent {
            session: record.id.clone(),
            tenant: record.tenant.clone(),
            incarnation: record.incarnation.clone(),
            at_ms: now_ms(),
            kind,
        };
        if let Some(sink) = &self.sink {
            sink.session_event(&event);
        }
        let _ = self.events.send(event);
    }
}

/// A session's view of the [`EventSink`]: the library's durability hook
/// commits through it, tagged with the session's owner as it is at commit
/// time (a reassignment takes effect for the next message).
struct SessionInbound {
    sink: Arc<dyn EventSink>,
    owner: Arc<Mutex<Owner>>,
    /// For the contacts directory.
    store: Store,
    latest: Arc<Mutex<LatestReceived>>,
    /// `message.received` for the event WebSocket.
    events: broadcast::Sender<SessionEvent>,
}

/// The last message received in each chat since the start (for "mark the
/// chat read" without ids), under the chat's JID and, for a direct chat,
/// its phone JID too. Bounded: past [`LATEST_KEPT`] chats it starts over.
#[derive(Default)]
pub(super) struct LatestReceived(HashMap<String, Latest>);

#[derive(Clone, Debug)]
pub(super) struct Latest {
    pub chat: String,
    pub id: String,
    /// The author, in a group.
    pub sender: Option<String>,
}

const LATEST_KEPT: usize = 4096;

impl LatestReceived {
    fn note(&mut self, message: &InboundMessage) {
        if message.from_me || message.is_status {
            return;
        }
        if self.0.len() >= LATEST_KEPT {
            self.0.clear();
        }
        let latest = Latest {
            chat: message.chat.clone(),
            id: message.id.clone(),
            sender: message.is_group.then(|| message.sender.clone()),
        };
        if !message.is_group && !message.sender_phone.is_empty() {
            self.0.insert(
                format!("{}@s.whatsapp.net", message.sender_phone),
                latest.clone(),
            );
        }
        self.0.insert(message.chat.clone(), latest);
    }

    pub(super) fn get(&self, chat: &str) -> Option<Latest> {
        self.0.get(chat).cloned()
    }
}

#[async_trait::async_trait]
impl InboundSink for SessionInbound {
    async fn commit(&self, me: Identity, batch: Vec<InboundMessage>) -> anyhow::Result<()> {
        let owner = lock(&self.owner).clone();
        let seen: Vec<contacts::Seen> = batch
            .iter()
            .filter(|m| !m.from_me && !m.undecryptable)
            .map(|m| {
                let group = m.is_group.then_some(m.chat.as_str());
                contacts::Seen::sender(
                    &m.sender_phone,
                    &m.sender_lid,
                    &m.push_name,
                    group,
                    m.timestamp * 1000,
                )
            })
            .collect();
        let prefix = super::outbound::prefix(self.store.blinder(), &owner.incarnation);
        // The media refs go in with the message's outbox items: the sink's
        // group commit covers them (else the flush below makes them
        // durable), all before WhatsApp is acknowledged.
        let refs = media_refs(&prefix, &batch, now_ms());
        self.store.media_refs_put(&refs)?;
        let ticket = self.store.write_ticket();
        let received = received_events(&owner, &batch);
        {
            let mut latest = lock(&self.latest);
            for message in &batch {
                latest.note(message);
            }
        }
        self.sink.messages(&owner, me, batch).await?;
        if !refs.is_empty() {
            self.store.flush_through(ticket).await?;
        }
        // Once committed; nobody listening is fine.
        for event in received {
            let _ = self.events.send(event);
        }
        // After the commit WhatsApp waits for: the directory is a record
        // of what was seen, and its failure costs no message.
        if let Err(e) = contacts::note(&self.store, &prefix, &seen) {
            tracing::warn!(session = %owner.session, "contacts directory: {e}");
        }
        Ok(())
    }
}

/// The event WebSocket's `message.received` for what others sent in `batch`.
fn received_events(owner: &Owner, batch: &[InboundMessage]) -> Vec<SessionEvent> {
    batch
        .iter()
        .filter(|m| !m.from_me && !m.is_status && !m.undecryptable)
        .filter(|m| m.content.kind != "protocol")
        .map(|m| SessionEvent {
            session: owner.session.clone(),
            tenant: owner.tenant.clone(),
            incarnation: owner.incarnation.clone(),
            at_ms: now_ms(),
            kind: EventKind::MessageReceived {
                id: m.id.clone(),
                chat: m.chat.clone(),
                from: m.sender_phone.clone(),
                push_name: m.push_name.clone(),
                kind: m.content.kind.to_string(),
                text: m.content.text.clone(),
                caption: m.content.caption.clone(),
                media: m
                    .content
                    .media
                    .as_ref()
                    .filter(|media| media.download.is_some())
                    .map(|media| ReceivedMedia {
                        url: crate::webhook::payload::media_path(&owner.session, &m.id),
                        mimetype: media.mimetype.clone(),
                    }),
                timestamp: m.timestamp,
            },
        })
        .collect()
}

/// The download refs of the batch's attachments, keyed under `prefix`.
fn media_refs(
    prefix: &[u8],
    batch: &[InboundMessage],
    now_ms: i64,
) -> Vec<(Vec<u8>, crate::store::media_refs::MediaRef)> {
    use crate::store::media_refs::{MediaRef, key};
    batch
        .iter()
        .filter(|m| !m.undecryptable)
        .filter_map(|m| {
            let media = m.content.media.as_ref()?;
            let d = media.download.as_ref()?;
            let r = MediaRef {
                message_id: m.id.clone(),
                chat: m.chat.clone(),
                sender: m.sender.clone(),
                from_me: m.from_me,
                kind: d.kind.to_string(),
                voice: media.voice,
                direct_path: d.direct_path.clone(),
                url: d.url.clone(),
                media_key: d.media_key.clone(),
                file_sha256: d.file_sha256.clone(),
                file_enc_sha256: d.file_enc_sha256.clone(),
                file_length: d.file_length,
                mimetype: d.mimetype.clone(),
                file_name: d.file_name.clone(),
                caption: d.caption.clone(),
                received_ms: now_ms,
                reupload_refused: false,
            };
            Some((key(prefix, &m.id), r))
        })
        .collect()
}

/// How long a restored session may hold a start permit before others get a turn.
const START_PERMIT_HOLD: Duration = Duration::from_secs(30);
/// Bound on asking WhatsApp for a pairing code.
const PAIR_CODE_TIMEOUT: Duration = Duration::from_secs(35);
/// Bound on one send.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Every await of the actor is either inside its loop's `select!` or, for
/// the long ones (asking WhatsApp for a pairing code, a send), raced with
/// the session's scope; the rest are bounded by the client's own timeouts.
pub(super) struct Actor {
    shared: Arc<Shared>,
    record: SessionRecord,
    /// The record's owner, shared with the live connection's inbound sink.
    owner: Arc<Mutex<Owner>>,
    conn: Option<Connection>,
    wa_events: Option<mpsc::UnboundedReceiver<Box<WaEvent>>>,
    /// When a pairing that has not reached `connected` is given up.
    activation_deadline: Option<Instant>,
    qr_index: u32,
    phone_poll: Option<JoinHandle<Option<Identity>>>,
    start_permit: Option<(OwnedSemaphorePermit, Instant)>,
    /// A restore waiting for its turn to start (awaited in the loop, so a
    /// stop, delete or shutdown is not queued behind it).
    waiting_permit: Option<JoinHandle<Result<OwnedSemaphorePermit, AcquireError>>>,
    /// When the outbound queue sends its next message (`None`: nothing to
    /// send, or not connected).
    drain_at: Option<Instant>,
    /// The rate-limit buckets (read from the store when first needed).
    levels: Option<Levels>,
    /// Human pacing: the queued send "typing…" was shown for.
    typed_for: Option<String>,
    /// The queued send on its way (one at a time).
    in_flight: Option<outbound::InFlight>,
    /// The last message received per chat.
    latest: Arc<Mutex<LatestReceived>>,
    /// When the current state was entered (for the health sweep).
    state_since: Instant,
    /// The session's scope: cancelled at shutdown; its client's tasks run
    /// below it.
    scope: TaskScope,
}

/// Sets `record`'s state and reason and appends a transition.
pub(super) fn apply_transition(
    record: &mut SessionRecord,
    to: SessionState,
    reason: Option<Reason>,
    message: Option<&str>,
) {
    let now = now_ms();
    record.transitions.push(Transition {
        from: record.state.clone(),
        to: to.as_str().to_owned(),
        reason: reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
        at_ms: now,
    });
    let excess = record.transitions.len().saturating_sub(TRANSITIONS_KEPT);
    record.transitions.drain(..excess);
    record.state = to.as_str().to_owned();
    record.reason = reason.map(|r| r.as_str().to_owned()).unwrap_or_default();
    record.reason_message = message.unwrap_or_default().to_owned();
    record.updated_at_ms = now;
}

impl Actor {
    pub(super) fn new(shared: Arc<Shared>, record: SessionRecord, scope: TaskScope) -> Self {
        Self {
            shared,
            owner: Arc::new(Mutex::new(Owner::of(&record))),
            record,
            conn: None,
            wa_events: None,
            activation_deadline: None,
            qr_index: 0,
            phone_poll: None,
            start_permit: None,
            waiting_permit: None,
            drain_at: None,
            levels: None,
            typed_for: None,
            in_flight: None,
            latest: Arc::default(),
            state_since: Instant::now(),
            scope,
        }
    }

    fn id(&self) -> &str {
        &self.record.id
    }

    fn state(&self) -> SessionState {
        SessionState::parse(&self.record.state).unwrap_or(SessionState::Failed)
    }

    fn info(&self) -> SessionInfo {
        SessionInfo::from_record(&self.record)
    }

    fn config(&self) -> &SessionConfig {
        &self.shared.config
    }

    /// The session's loop. Every handler's future is boxed: they are alive
    /// one at a time, and inline this task would reserve room for the
    /// largest of them (several KiB) for as long as the session lives.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Box<Command>>) -> ActorExit {
        let shutdown = self.scope.token();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    Box::pin(self.stop_client()).await;
                    Box::pin(self.record_shutdown()).await;
                    return ActorExit::Stopped;
                }
                command = commands.recv() => match command.map(|command| *command) {
                    Some(Command::Delete(reply)) => {
                        let result = Box::pin(self.delete()).await;
                        let deleted = result.is_ok();
                        let _ = reply.send(result);
                        if deleted {
                            return ActorExit::Deleted;
                        }
                    }
                    Some(command) => Box::pin(self.on_command(command)).await,
                    None => {
                        Box::pin(self.stop_client()).await;
                        return ActorExit::Stopped;
                    }
                },
                event = next_event(&mut self.wa_events) => match event {
                    Some(event) => Box::pin(self.on_wa_event(event)).await,
                    None => self.wa_events = None,
                },
                _ = client_finished(&mut self.conn) => Box::pin(self.on_client_exit()).await,
                _ = sleep_until(self.activation_deadline) => {
                    Box::pin(self.on_activation_timeout()).await;
                }
                found = poll_result(&mut self.phone_poll) => {
                    Box::pin(self.on_phone_poll(found)).await;
                }
                _ = sleep_until(self.drain_at) => Box::pin(self.drain_one()).await,
                sent = send_finished(&mut self.in_flight) => Box::pin(self.on_sent(sent)).await,
                _ = sleep_until(self.start_permit.as_ref().map(|(_, until)| *until)) => {
                    self.start_permit = None;
                }
                permit = permit_turn(&mut self.waiting_permit) => {
                    self.waiting_permit = None;
                    self.start_permit = permit.map(|p| (p, Instant::now() + START_PERMIT_HOLD));
                    if let Err(e) = Box::pin(self.start()).await {
                        tracing::warn!(session = %self.record.id, "restoring: {e}");
                    }
                }
            }
        }
    }

    // ---- state --------------------------------------------------------

    /// Persists the new state, then announces it. A state the store did
    /// not take is never announced: the session stops and goes
    /// `failed(store_error)` instead, and this returns false.
    async fn transition(
        &mut self,
        to: SessionState,
        reason: Option<Reason>,
        message: Option<String>,
    ) -> bool {
        let before = self.record.clone();
        let from = self.state();
        apply_transition(&mut self.record, to, reason, message.as_deref());
        if let Err(e) = self.shared.store.put_record(&self.record).await {
            tracing::error!(session = %self.record.id, %from, %to, "the store refused the new state: {e}");
            self.record = before;
            self.store_failed(e.to_string()).await;
            return false;
        }
        self.state_since = Instant::now();
        if matches!(
            to,
            SessionState::Connected
                | SessionState::Failed
                | SessionState::Stopped
                | SessionState::LoggedOut
        ) {
            self.start_permit = None;
        }
        if !to.is_pairing() {
            lock(&self.shared.live_qr).remove(&self.record.id);
        }
        crate::metrics::inc_transition(to.as_str());
        tracing::info!(session = %self.record.id, %from, %to, reason = reason.map(|r| r.as_str()), "state");
        self.emit(EventKind::State {
            from,
            to,
            reason,
            message,
        });
        true
    }

    /// Persists the record; a write the store refuses fails the session
    /// (see [`Actor::transition`]) and returns false.
    async fn persist(&mut self) -> bool {
        match self.shared.store.put_record(&self.record).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(session = %self.record.id, "persisting the session record: {e}");
                self.store_failed(e.to_string()).await;
                false
            }
        }
    }

    /// The store refused this session's record: stop the client, and report
    /// `failed(store_error)` with the cause. The store is asked to keep that
    /// too; if it cannot, the failure is still announced (in memory only)
    /// so nobody waits on a session that cannot go on.
    async fn store_failed(&mut self, cause: String) {
        self.stop_client().await;
        let from = self.state();
        let to = SessionState::Failed;
        let message = format!("the session's record could not be stored: {cause}");
        apply_transition(
            &mut self.record,
            to,
            Some(Reason::StoreError),
            Some(&message),
        );
        self.state_since = Instant::now();
        self.start_permit = None;
        lock(&self.shared.live_qr).remove(&self.record.id);
        if let Err(e) = self.shared.store.put_record(&self.record).await {
            tracing::error!(session = %self.record.id, "recording the store failure failed too: {e}");
        }
        crate::metrics::inc_transition(to.as_str());
        self.emit(EventKind::State {
            from,
            to,
            reason: Some(Reason::StoreError),
            message: Some(message),
        });
    }

    fn emit(&self, kind: EventKind) {
        self.shared.emit(&self.record, kind);
    }

    fn identity(&self) -> Identity {
        Identity {
            phone: self.record.phone.clone(),
            jid: self.record.jid.clone(),
            lid: self.record.lid.clone(),
        }
    }

    fn is_paired(&self) -> bool {
        !self.record.phone.is_empty()
    }

    // ---- commands -----------------------------------------------------

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Start(reply) => {
                // Starting an unpaired session begins a QR pairing.
                let result = if !self.is_paired() && self.conn.is_none() {
                    self.take_tokens(&[Bucket::QrPerHour]).await
                } else {
                    Ok(())
                };
                let result = match result {
                    Ok(()) => self.start().await.map(|()| self.info()),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Command::Stop(reply) => {
                self.stop_client().await;
                if self.state() != SessionState::Stopped {
                    self.transition(SessionState::Stopped, Some(Reason::Requested), None)
                        .await;
                }
                let _ = reply.send(Ok(self.info()));
            }
            Command::Reset(reply) => {
                let result = match self.take_tokens(&[Bucket::ResetsPerHour]).await {
                    Ok(()) => self.reset().await.map(|()| self.info()),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Command::Logout(reply) => {
                let result = self.logout().await.map(|()| self.info());
                let _ = reply.send(result);
            }
            Command::PairCode { phone, reply } => {
                let _ = reply.send(self.pair_code(&phone).await);
            }
            Command::SendText { to, text, reply } => {
                let _ = reply.send(self.send_text(&to, &text).await);
            }
            Command::Enqueue {
                to,
                out,
                idempotency_key,
                reply,
            } => {
                let _ = reply.send(self.enqueue_outgoing(&to, *out, idempotency_key).await);
            }
            Command::MarkRead {
                chat,
                ids,
                sender,
                reply,
            } => {
                let _ = reply.send(self.mark_read(&chat, ids, sender).await);
            }
            Command::ChatState { to, state, reply } => {
                let _ = reply.send(self.chat_state(&to, state).await);
            }
            Command::SendStatus { id, reply } => {
                let _ = reply.send(self.send_status(&id));
            }
            Command::CancelSend { id, reply } => {
                let _ = reply.send(self.cancel_send(&id).await);
            }
            Command::Limits(reply) => {
                let _ = reply.send(self.limits_view());
            }
            Command::SetLimits { limits, reply } => {
                let _ = reply.send(self.set_limits(limits).await);
            }
            Command::Queries(reply) => {
                let _ = reply.send(self.connected().map(Connection::queries));
            }
            Command::ContactsPrefix(reply) => {
                let _ = reply.send(Ok(self.outbound_prefix()));
            }
            Command::Restore => {
                self.sweep_media().await;
                let permits = self.shared.start_permits.clone();
                self.waiting_permit = Some(self.scope.spawn(permits.acquire_owned()));
            }
            Command::Reassign { tenant, reply } => {
                let _ = reply.send(self.reassign(tenant).await);
            }
            Command::Health => self.health_check().await,
            Command::Delete(_) => {}
        }
    }

    /// Starts the client: a paired session reconnects, an unpaired one pairs.
    async fn start(&mut self) -> Result<(), SupervisorError> {
        if self.conn.is_some() {
            return Ok(());
        }
        if self.is_paired() {
            if let Err(message) = self.check_keyspace().await {
                self.transition(
                    SessionState::Failed,
                    Some(Reason::StoreError),
                    Some(message),
                )
                .await;
                return Err(self.failed_to("start"));
            }
            if !self.transition(SessionState::Connecting, None, None).await {
                return Err(self.failed_to("start"));
            }
        } else {
            self.qr_index = 0;
            self.activation_deadline = Some(Instant::now() + self.config().activation_timeout);
            crate::metrics::inc_pairing_attempt();
            if !self.transition(SessionState::Starting, None, None).await {
                return Err(self.failed_to("start"));
            }
        }
        self.launch_client().await
    }

    /// The error for an action refused because the session failed.
    fn failed_to(&self, action: &'static str) -> SupervisorError {
        SupervisorError::InvalidState {
            id: self.id().to_owned(),
            state: SessionState::Failed,
            action,
        }
    }

    /// A paired record must come with the keys it was paired with.
    async fn check_keyspace(&self) -> Result<(), String> {
        let backend = self
            .shared
            .store
            .device_backend(&self.record.id)
            .map_err(|e| e.to_string())?;
        match backend.load().await {
            Ok(Some(device)) if device.pn.is_some() => Ok(()),
            Ok(_) => Err("the session's keys are missing: re-pair it (reset)".into()),
            Err(e) => Err(format!("the session's keys cannot be read: {e}")),
        }
    }

    async fn launch_client(&mut self) -> Result<(), SupervisorError> {
        let backend = match self.shared.store.device_backend(&self.record.id) {
            Ok(b) => b,
            Err(e) => {
                self.transition(
                    SessionState::Failed,
                    Some(Reason::StoreError),
                    Some(e.to_string()),
                )
                .await;
                return Err(e.into());
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let inbound = self.shared.sink.clone().map(|sink| {
            Arc::new(SessionInbound {
                sink,
                owner: Arc::clone(&self.owner),
                store: self.shared.store.clone(),
                latest: Arc::clone(&self.latest),
                events: self.shared.events.clone(),
            }) as Arc<dyn InboundSink>
        });
        match Connection::start(&self.scope, &self.shared.config.wa, backend, tx, inbound).await {
            Ok(conn) => {
                self.conn = Some(conn);
                self.wa_events = Some(rx);
                Ok(())
            }
            Err(e) => {
                self.activation_deadline = None;
                self.transition(
                    SessionState::Failed,
                    Some(Reason::StoreError),
                    Some(e.to_string()),
                )
                .await;
                Err(self.failed_to("start"))
            }
        }
    }

    /// Stops the client (flushing its state), cancels pairing timers.
    async fn stop_client(&mut self) {
        self.activation_deadline = None;
        if let Some(wait) = self.waiting_permit.take() {
            wait.abort();
        }
        if let Some(poll) = self.phone_poll.take() {
            poll.abort();
        }
        lock(&self.shared.live_qr).remove(&self.record.id);
        self.abandon_send();
        self.wa_events = None;
        if let Some(conn) = self.conn.take() {
            conn.shutdown(self.config().shutdown_timeout).await;
        }
        // The library's background tasks can outlive the client by a while:
        // fence the keyspace off so none of them writes after we stopped.
        self.shared.store.close_device(&self.record.id);
    }

    /// Forgets the linked account: keys wiped, identity cleared from the
    /// record (and so from the phone index).
    async fn wipe(&mut self) -> Result<(), SupervisorError> {
        self.shared.store.wipe_device(&self.record.id).await?;
        self.record.phone.clear();
        self.record.jid.clear();
        self.record.lid.clear();
        self.record.push_name.clear();
        self.record.business_name.clear();
        self.record.platform.clear();
        self.record.paired_at_ms = 0;
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), SupervisorError> {
        if let Some(conn) = self.conn.take() {
            if self.state() == SessionState::Connected {
                // Unlink at WhatsApp too, so the phone does not keep a dead device.
                conn.logout(self.config().shutdown_timeout).await;
            } else {
                conn.shutdown(self.config().shutdown_timeout).await;
            }
        }
        self.stop_client().await;
        if let Err(e) = self.wipe().await {
            self.transition(
                SessionState::Failed,
                Some(Reason::StoreError),
                Some(e.to_string()),
            )
            .await;
            return Err(e);
        }
        if !self
            .transition(SessionState::Created, Some(Reason::Reset), None)
            .await
        {
            return Err(self.failed_to("reset"));
        }
        self.start().await
    }

    async fn logout(&mut self) -> Result<(), SupervisorError> {
        match self.conn.take() {
            Some(conn) if self.state() == SessionState::Connected => {
                conn.logout(self.config().shutdown_timeout).await
            }
            Some(conn) => conn.shutdown(self.config().shutdown_timeout).await,
            None => {}
        }
        self.stop_client().await;
        let phone = self.record.phone.clone();
        self.wipe().await?;
        self.transition(
            SessionState::LoggedOut,
            Some(Reason::LoggedOut),
            (!phone.is_empty()).then(|| format!("was {phone}")),
        )
        .await;
        self.emit(EventKind::LoggedOut {
            reason: Reason::LoggedOut,
        });
        Ok(())
    }

    /// Deletes the session and everything attached to it. The record goes
    /// last: until it is gone the id stays taken, so a crash between the
    /// steps leaves a session that can be deleted again, never data that a
    /// later session with the same id could inherit (and what is attached
    /// belongs to this incarnation only, see [`Owner`]).
    async fn delete(&mut self) -> Result<(), SupervisorError> {
        self.stop_client().await;
        let owner = Owner::of(&self.record);
        self.shared.store.drop_device(&owner.session).await?;
        crate::fault::point("session.delete.after_wipe", &owner.session);
        if let Some(sink) = &self.shared.sink {
            sink.session_deleted(&owner).await.map_err(|e| {
                SupervisorError::Store(crate::store::StoreError::Invalid(format!(
                    "removing the session's webhook data: {e:#}"
                )))
            })?;
        }
        self.purge_outbound(&owner.incarnation).await;
        crate::fault::point("session.delete.after_purge", &owner.session);
        self.shared.store.delete_record(&owner.session).await?;
        lock(&self.shared.live_qr).remove(&owner.session);
        crate::metrics::forget_session_buckets(&owner.session);
        // To the tenant's endpoints and sockets (the session's own are gone).
        self.emit(EventKind::Deleted {});
        tracing::info!(session = %owner.session, "deleted");
        Ok(())
    }

    /// Moves the session to `tenant` with a new incarnation: from the
    /// moment the record is stored, events and messages carry the new
    /// owner; the old owner's session endpoints are removed.
    async fn reassign(&mut self, tenant: String) -> Result<SessionInfo, SupervisorError> {
        if tenant == self.record.tenant {
            return Ok(self.info());
        }
        let old = Owner::of(&self.record);
        let mut record = self.record.clone();
        record.tenant = tenant;
        record.incarnation = super::new_incarnation();
        record.updated_at_ms = now_ms();
        self.shared.store.put_record(&record).await?;
        self.record = record;
        // The buckets and limits were the old incarnation's.
        self.levels = None;
        crate::metrics::forget_session_buckets(&self.record.id);
        let new = Owner::of(&self.record);
        *lock(&self.owner) = new.clone();
        // The old owner's queued sends are not the new owner's to make.
        self.purge_outbound(&old.incarnation).await;
        if let Some(sink) = &self.shared.sink
            && let Err(e) = sink.session_reassigned(&old, &new).await
        {
            tracing::error!(session = %new.session, "removing the old owner's endpoints: {e:#}");
        }
        // Under the new owner: the old tenant's sockets following the session
        // see it leave and close.
        self.emit(EventKind::Reassigned {});
        tracing::info!(session = %new.session, from = %old.tenant, to = %new.tenant, "reassigned");
        Ok(self.info())
    }

    /// Graceful shutdown: a paired, live session is recorded as
    /// `disconnected(shutdown)` (it reconnects at the next start). A pairing
    /// is left as it is: the next start stops it (`pairing_interrupted`),
    /// as after a crash.
    async fn record_shutdown(&mut self) {
        let live = matches!(
            self.state(),
            SessionState::Connected | SessionState::Connecting | SessionState::Paired
        );
        if !live || !self.is_paired() {
            return;
        }
        let to = SessionState::Disconnected;
        self.transition(to, Some(Reason::Shutdown), None).await;
    }

    async fn pair_code(&mut self, phone: &str) -> Result<PairCodeIssued, SupervisorError> {
        let digits: String = phone
            .chars()
            .filter(|c| !matches!(c, '+' | ' ' | '-' | '(' | ')'))
            .collect();
        if !(7..=15).contains(&digits.len())
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(SupervisorError::BadRequest(format!(
                "invalid phone number {phone:?}: 7-15 digits with country code, no leading 0"
            )));
        }
        let state = self.state();
        let pairing = matches!(
            state,
            SessionState::Starting | SessionState::Qr | SessionState::PairCode
        );
        if !pairing || self.conn.is_none() {
            return Err(SupervisorError::InvalidState {
                id: self.id().to_owned(),
                state,
                action: "request a pairing code",
            });
        }
        self.take_tokens(&[Bucket::PairCodesPerHour]).await?;
        let Some(conn) = &self.conn else {
            return Err(SupervisorError::ShuttingDown);
        };
        // Raced with the session's scope: a shutdown does not wait for WhatsApp.
        let asked = tokio::select! {
            asked = tokio::time::timeout(PAIR_CODE_TIMEOUT, conn.pair_code(&digits)) => asked,
            _ = self.scope.cancelled() => return Err(SupervisorError::ShuttingDown),
        };
        match asked {
            Ok(Ok(code)) => {
                // The library also announces the code as an event, which sets
                // the state and informs subscribers; 180 s is its validity.
                Ok(PairCodeIssued {
                    code,
                    expires_at_ms: now_ms() + 180_000,
                })
            }
            Ok(Err(WaError::PairCode { reason, message })) => {
                Err(SupervisorError::PairCode { reason, message })
            }
            Ok(Err(e)) => Err(SupervisorError::PairCode {
                reason: "request_failed".into(),
                message: e.to_string(),
            }),
            Err(_) => Err(SupervisorError::Timeout(
                "WhatsApp did not issue a pairing code",
            )),
        }
    }

    /// The client, while the session is connected.
    fn connected(&self) -> Result<&Connection, SupervisorError> {
        self.conn
            .as_ref()
            .filter(|_| self.state() == SessionState::Connected)
            .ok_or_else(|| SupervisorError::NotConnected(self.id().to_owned()))
    }

    async fn send_text(&mut self, to: &str, text: &str) -> Result<String, SupervisorError> {
        self.connected()?;
        let jid = crate::wa::parse_recipient(to)
            .map_err(|e| SupervisorError::BadRequest(e.to_string()))?;
        let to = jid.to_string();
        self.take_tokens(&Bucket::SENDS).await?;
        let Some(conn) = self.conn.as_ref() else {
            return Err(SupervisorError::NotConnected(self.id().to_owned()));
        };
        let id = super::outbound::new_message_id();
        let sent = tokio::select! {
            sent = tokio::time::timeout(SEND_TIMEOUT, conn.send_text(&to, text, &id)) => sent,
            _ = self.scope.cancelled() => return Err(SupervisorError::ShuttingDown),
        };
        match sent {
            Ok(Ok(id)) => {
                self.record_sent(&id, &to).await;
                crate::metrics::inc_message_sent();
                self.emit(EventKind::MessageSent {
                    id: id.clone(),
                    to: jid.to_string(),
                    timestamp: now_ms() / 1000,
                });
                Ok(id)
            }
            Ok(Err(e)) => Err(SupervisorError::Send(e.to_string())),
            Err(_) => Err(SupervisorError::Timeout("sending took too long")),
        }
    }

    async fn health_check(&mut self) {
        let state = self.state();
        let in_state = self.state_since.elapsed();
        if state.is_transient() && in_state > self.config().stuck_after && self.conn.is_some() {
            tracing::warn!(session = %self.record.id, %state, ?in_state, "stuck; restarting the client");
            self.stop_client().await;
            self.transition(
                state,
                Some(Reason::HealthCheck),
                Some(format!("stuck in {state} for {}s", in_state.as_secs())),
            )
            .await;
            if let Err(e) = self.start().await {
                tracing::warn!(session = %self.record.id, "restart after health check: {e}");
            }
            return;
        }
        if state == SessionState::Connected
            && let Some(conn) = &self.conn
        {
            let last = conn.last_data_received_ms() as i64;
            let silent_ms = self.config().silent_after.as_millis() as i64;
            if last > 0 && now_ms() - last > silent_ms {
                tracing::warn!(session = %self.record.id, "connected but silent; reconnecting");
                conn.reconnect().await;
            }
            self.record.last_seen_at_ms = now_ms();
            return;
        }
        let last_seen = self
            .record
            .last_connected_at_ms
            .max(self.record.last_seen_at_ms);
        if self.is_paired()
            && state != SessionState::Connected
            && last_seen > 0
            && now_ms() - last_seen > self.config().expiry.as_millis() as i64
        {
            self.stop_client().await;
            if let Err(e) = self.wipe().await {
                tracing::error!(session = %self.record.id, "wiping an expired session: {e}");
            }
            let days = (now_ms() - last_seen) / 86_400_000;
            self.transition(
                SessionState::Failed,
                Some(Reason::Expired),
                Some(format!("unreachable for {days} days; re-pair it")),
            )
            .await;
        }
    }
}

async fn next_event(rx: &mut Option<mpsc::UnboundedReceiver<Box<WaEvent>>>) -> Option<WaEvent> {
    match rx {
        Some(rx) => rx.recv().await.map(|event| *event),
        None => pending().await,
    }
}

async fn client_finished(conn: &mut Option<Connection>) {
    match conn {
        Some(conn) => conn.finished().await,
        None => pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => pending().await,
    }
}

async fn send_finished(
    flight: &mut Option<outbound::InFlight>,
) -> Result<Option<Result<(), String>>, tokio::task::JoinError> {
    match flight {
        Some(flight) => (&mut flight.task).await,
        None => pending().await,
    }
}

async fn poll_result(poll: &mut Option<JoinHandle<Option<Identity>>>) -> Option<Identity> {
    match poll {
        Some(handle) => handle.await.ok().flatten(),
        None => pending().await,
    }
}

async fn permit_turn(
    wait: &mut Option<JoinHandle<Result<OwnedSemaphorePermit, AcquireError>>>,
) -> Option<OwnedSemaphorePermit> {
    match wait {
        Some(wait) => wait.await.ok().and_then(Result::ok),
        None => pending().await,
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    fn future_size<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A session's task lives as long as the session; what it keeps while
    /// idle is the actor and the futures it waits on, not room for its
    /// handlers (boxed in `run`). With them inline, `run` took the actor
    /// plus the largest handler and more (6,192 bytes in a debug build
    /// against 3,336 boxed).
    #[test]
    fn the_session_task_does_not_reserve_room_for_its_handlers() {
        let actor = std::mem::size_of::<Actor>();
        let run = future_size(Actor::run);
        let largest_handler = future_size(Actor::on_command).max(future_size(Actor::on_wa_event));
        assert!(
            run < actor + largest_handler,
            "run's future is {run} bytes: the actor ({actor}) plus a handler ({largest_handler}) inline"
        );
    }
}
