//! The session's outbound queue: queue a send (durably, before the API
//! answers), send the queue in order while connected, one send per turn of
//! the actor's loop so commands are not held up, and keep each send's
//! status (receipts move it on).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinError;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::{Actor, SEND_TIMEOUT};
use crate::session::SupervisorError;
use crate::session::limits::Bucket;
use crate::session::outbound::{
    self, IDEMPOTENCY_WINDOW_MS, IdempotencyRecord, MAX_ATTEMPTS, Outgoing, QueuedSend, Quoted,
    SendState, SendStatus,
};
use crate::session::state::SessionState;
use crate::session::{AckStatus, EventKind, now_ms};
use crate::wa::media_out::{SendGate, WireSend, message_key};

/// How long the queue waits after a failed attempt.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The queued send being sent, by a task of its own.
pub(super) struct InFlight {
    /// The outbound prefix of the incarnation it was queued in.
    prefix: Vec<u8>,
    queue_key: Vec<u8>,
    item: QueuedSend,
    pacing: bool,
    gate: Arc<SendGate>,
    /// Receipts for it (`message.ack`) that came before its result.
    pub(super) early_acks: Vec<EventKind>,
    /// `None`: stopped by the daemon's shutdown. Dropped, it stops the
    /// send (a stop, a cancel, or the session's loop gone).
    pub(super) task: AbortOnDropHandle<Option<Result<(), String>>>,
}

impl InFlight {
    pub(super) fn id(&self) -> &str {
        &self.item.id
    }
}

impl Actor {
    pub(super) fn outbound_prefix(&self) -> Vec<u8> {
        outbound::prefix(self.shared.store.blinder(), &self.record.incarnation)
    }

    /// Queues `out` for `to` and answers as [`Actor::enqueue`]; a media
    /// blob that did not end up in the queue (refused, or an idempotency
    /// key named an earlier send) is removed.
    pub(super) async fn enqueue_outgoing(
        &mut self,
        to: &str,
        out: Outgoing,
        idempotency_key: Option<String>,
    ) -> Result<(SendStatus, bool), SupervisorError> {
        let blob = out.media.as_ref().map(|m| m.blob.name.clone());
        let result = self.enqueue(to, out, idempotency_key).await;
        if let Some(name) = blob
            && !matches!(result, Ok((_, true)))
        {
            self.remove_blob(&name).await;
        }
        result
    }

    /// Queues `out` for `to`; with an idempotency key already used for
    /// this session in the last 24 h, answers that send instead.
    async fn enqueue(
        &mut self,
        to: &str,
        mut out: Outgoing,
        idempotency_key: Option<String>,
    ) -> Result<(SendStatus, bool), SupervisorError> {
        if self.record.jid.is_empty() && self.record.phone.is_empty() {
            return Err(SupervisorError::NotPaired(self.id().to_owned()));
        }
        let to = crate::wa::parse_recipient(to)
            .map_err(|e| SupervisorError::BadRequest(e.to_string()))?
            .to_string();
        let prefix = self.outbound_prefix();
        let store = &self.shared.store;
        let now = now_ms();
        let idem_key = idempotency_key.map(|k| outbound::idempotency_key(&prefix, &k));
        if let Some(key) = &idem_key
            && let Some(raw) = store.send_idempotency(key)?
            && let Ok(used) = serde_json::from_slice::<IdempotencyRecord>(&raw)
            && now - used.created_ms < IDEMPOTENCY_WINDOW_MS
            && let Some(status) = self.status_of(&prefix, &used.id)?
        {
            return Ok((status, false));
        }
        // A reaction to a message this session sent is to its own message.
        if let Some(reaction) = out.reaction.as_mut() {
            reaction.from_me = self.status_of(&prefix, &reaction.message_id)?.is_some();
        }
        let id = outbound::new_message_id();
        let item = QueuedSend {
            media: out.media,
            reply_to: out.reply_to,
            reaction: out.reaction,
            ..QueuedSend::text(&id, &to, &out.text, now)
        };
        let status = SendStatus::new(&id, &to, SendState::Queued, now);
        let idem_value = serde_json::to_vec(&IdempotencyRecord {
            id: id.clone(),
            created_ms: now,
        })
        .map_err(|e| SupervisorError::BadRequest(e.to_string()))?;
        store
            .send_enqueue(
                &prefix,
                &json(&item)?,
                (&outbound::status_key(&prefix, &id), &json(&status)?),
                idem_key.as_deref().map(|k| (k, idem_value.as_slice())),
            )
            .await?;
        if self.state() == SessionState::Connected {
            self.drain_at = Some(Instant::now());
        }
        Ok((status, true))
    }

    /// Removes a media blob (sent, cancelled, failed, or never queued).
    pub(super) async fn remove_blob(&self, name: &str) {
        if let Err(e) = self.shared.store.media_blob_remove(name).await {
            tracing::warn!(session = %self.record.id, "removing a media blob: {e}");
        }
    }

    /// The quoted message's author: given, or this account when it sent
    /// that message, else the chat's contact.
    fn quoted_author(&self, prefix: &[u8], to: &str, quoted: &Quoted) -> String {
        if let Some(participant) = &quoted.participant {
            return participant.clone();
        }
        let mine = self.status_of(prefix, &quoted.id).ok().flatten().is_some();
        if mine && !self.record.phone.is_empty() {
            format!("{}@s.whatsapp.net", self.record.phone)
        } else {
            to.to_owned()
        }
    }

    /// Marks messages of `chat` read; without ids, the latest one received.
    pub(super) async fn mark_read(
        &mut self,
        chat: &str,
        ids: Vec<String>,
        sender: Option<String>,
    ) -> Result<Vec<String>, SupervisorError> {
        let conn = self.connected()?;
        let jid = crate::wa::parse_recipient(chat)
            .map_err(|e| SupervisorError::BadRequest(e.to_string()))?
            .to_string();
        let (chat, ids, sender) = if ids.is_empty() {
            let latest = super::lock(&self.latest).get(&jid).ok_or_else(|| {
                SupervisorError::NothingToRead(format!(
                    "no message from {jid} received since the daemon started; name the message ids"
                ))
            })?;
            (latest.chat, vec![latest.id], latest.sender)
        } else {
            (jid, ids, sender)
        };
        let done = tokio::select! {
            done = tokio::time::timeout(SEND_TIMEOUT, conn.mark_read(&chat, sender.as_deref(), &ids)) => done,
            _ = self.scope.cancelled() => return Err(SupervisorError::ShuttingDown),
        };
        match done {
            Ok(Ok(())) => Ok(ids),
            Ok(Err(e)) => Err(SupervisorError::Send(e.to_string())),
            Err(_) => Err(SupervisorError::Timeout("marking read took too long")),
        }
    }

    /// Shows "typing…", "recording…" or stops it.
    pub(super) async fn chat_state(
        &mut self,
        to: &str,
        state: crate::wa::media_out::ChatState,
    ) -> Result<(), SupervisorError> {
        let conn = self.connected()?;
        let done = tokio::select! {
            done = tokio::time::timeout(SEND_TIMEOUT, conn.send_chat_state(to, state)) => done,
            _ = self.scope.cancelled() => return Err(SupervisorError::ShuttingDown),
        };
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(crate::wa::WaError::BadRecipient(to))) => Err(SupervisorError::BadRequest(
                format!("invalid chat {to:?}: a phone number or a JID"),
            )),
            Ok(Err(e)) => Err(SupervisorError::Send(e.to_string())),
            Err(_) => Err(SupervisorError::Timeout("the chat state took too long")),
        }
    }

    fn status_of(&self, prefix: &[u8], id: &str) -> Result<Option<SendStatus>, SupervisorError> {
        let raw = self
            .shared
            .store
            .send_status(&outbound::status_key(prefix, id))?;
        Ok(raw.and_then(|r| serde_json::from_slice(&r).ok()))
    }

    pub(super) fn send_status(&self, id: &str) -> Result<Option<SendStatus>, SupervisorError> {
        self.status_of(&self.outbound_prefix(), id)
    }

    /// Takes a still-queued send off the queue (`cancelled`); a send that
    /// already left answers its status unchanged.
    pub(super) async fn cancel_send(
        &mut self,
        id: &str,
    ) -> Result<Option<SendStatus>, SupervisorError> {
        let prefix = self.outbound_prefix();
        let Some(mut status) = self.status_of(&prefix, id)? else {
            return Ok(None);
        };
        if status.status != SendState::Queued {
            return Ok(Some(status));
        }
        if let Some(flight) = &self.in_flight
            && flight.item.id == id
        {
            // Still uploading: the gate keeps the message from going, and
            // the task is stopped. Already sending: it can no longer be
            // called back, and stays `queued` until it is `sent`.
            if !flight.gate.cancel() {
                return Ok(Some(status));
            }
            self.in_flight = None; // Dropping its task stops it.
            self.drain_at = Some(Instant::now());
        }
        let queued = self.shared.store.send_queue(&prefix)?;
        let Some(item) = queued.iter().find(|item| {
            serde_json::from_slice::<QueuedSend>(&item.value).is_ok_and(|q| q.id == id)
        }) else {
            return Ok(Some(status));
        };
        status.status = SendState::Cancelled;
        status.updated_ms = now_ms();
        let removed = self
            .shared
            .store
            .send_dequeue(
                &item.key,
                Some((&outbound::status_key(&prefix, id), &json(&status)?)),
            )
            .await?;
        if removed
            && let Ok(queued) = serde_json::from_slice::<QueuedSend>(&item.value)
            && let Some(media) = &queued.media
        {
            self.remove_blob(&media.blob.name).await;
        }
        Ok(Some(status))
    }

    /// Sends the oldest queued message, if the session is connected; the
    /// next one follows on the next turn of the loop.
    pub(super) async fn drain_one(&mut self) {
        self.drain_at = None;
        if self.in_flight.is_some() {
            return; // `on_sent` starts the next one.
        }
        if self.state() != SessionState::Connected {
            return; // `on_connected` starts the queue again.
        }
        let prefix = self.outbound_prefix();
        let head = match self.shared.store.send_queue_head(&prefix) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(session = %self.record.id, "reading the outbound queue: {e}");
                self.drain_at = Some(Instant::now() + RETRY_AFTER);
                return;
            }
        };
        let Ok(item) = serde_json::from_slice::<QueuedSend>(&head.value) else {
            tracing::error!(session = %self.record.id, "an unreadable queued send; dropped");
            let _ = self.shared.store.send_dequeue(&head.key, None).await;
            self.drain_at = Some(Instant::now());
            return;
        };
        if self.conn.is_none() {
            return;
        }
        // Queued sends wait for their tokens: the next turn is when one is back.
        if let Err(exhausted) = self.check_tokens(&Bucket::SENDS) {
            crate::metrics::inc_rate_limited(exhausted.bucket.as_str(), "delayed");
            let wait = Duration::from_millis(exhausted.retry_after_ms.max(1) as u64);
            tracing::debug!(session = %self.record.id, "queue waits {wait:?}: {exhausted}");
            self.drain_at = Some(Instant::now() + wait);
            return;
        }
        let pacing = self.limits().human_pacing;
        if pacing && self.typed_for.as_deref() != Some(item.id.as_str()) {
            // Typed by a person: "typing…" first, the send after a while.
            if let Some(conn) = self.conn.as_ref()
                && let Err(e) = conn.send_typing(&item.to, true).await
            {
                tracing::debug!(session = %self.record.id, "typing indicator: {e}");
            }
            self.typed_for = Some(item.id.clone());
            self.drain_at = Some(Instant::now() + random_between(1_000, 3_000));
            return;
        }
        self.typed_for = None;
        if let Err(e) = self.take_tokens(&Bucket::SENDS).await {
            tracing::warn!(session = %self.record.id, "queue: {e}");
            self.drain_at = Some(Instant::now() + RETRY_AFTER);
            return;
        }
        let quote = item
            .reply_to
            .as_ref()
            .map(|q| (q.id.clone(), self.quoted_author(&prefix, &item.to, q)));
        let media = match &item.media {
            Some(media) => match self.shared.store.media_blob_path(&media.blob.name) {
                Ok(path) => Some((media.clone(), path)),
                Err(e) => {
                    tracing::error!(session = %self.record.id, id = %item.id, "a queued media send: {e}");
                    None
                }
            },
            None => None,
        };
        // An upload takes longer than a text: a minute more per 16 MiB.
        let timeout = SEND_TIMEOUT
            + Duration::from_secs(
                item.media.as_ref().map_or(0, |m| m.blob.file_length) / (256 * 1024),
            );
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        let wire = WireSend {
            to: item.to.clone(),
            id: item.id.clone(),
            text: item.text.clone(),
            media,
            quote,
            reaction: item.reaction.as_ref().map(|r| {
                (
                    message_key(&item.to, &r.message_id, r.from_me, r.participant.as_deref()),
                    r.emoji.clone(),
                )
            }),
        };
        // The send runs in a task of its own (an upload can take minutes);
        // its result comes back to the loop (`on_sent`). One at a time: the
        // queue's order is the order on the wire.
        let sender = conn.queries();
        let gate = Arc::new(SendGate::default());
        let task = AbortOnDropHandle::new(self.scope.spawn_until_cancelled({
            let gate = gate.clone();
            async move {
                match tokio::time::timeout(timeout, sender.send_wire(wire, &gate)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("sending took too long".to_string()),
                }
            }
        }));
        self.in_flight = Some(InFlight {
            prefix,
            queue_key: head.key,
            item,
            pacing,
            gate,
            early_acks: Vec::new(),
            task,
        });
    }

    /// A send in flight is over: records it sent, or counts the failed
    /// attempt (failed for good after [`MAX_ATTEMPTS`]).
    pub(super) async fn on_sent(&mut self, sent: Result<Option<Result<(), String>>, JoinError>) {
        let Some(InFlight {
            prefix,
            queue_key,
            mut item,
            pacing,
            early_acks,
            ..
        }) = self.in_flight.take()
        else {
            return;
        };
        let sent = match sent {
            Ok(Some(sent)) => Ok(sent),
            Ok(None) => return, // The daemon stops; the send stays queued.
            Err(e) => Err(e),
        };
        if prefix != self.outbound_prefix() {
            // Unlinked and paired again (or moved) while it was sent: the
            // queue it came from is gone with that incarnation.
            tracing::info!(session = %self.record.id, id = %item.id, "a send finished after its session's account changed; not recorded");
            self.drain_at = Some(Instant::now());
            return;
        }
        let now = now_ms();
        let status_key = outbound::status_key(&prefix, &item.id);
        let mut status = self
            .status_of(&prefix, &item.id)
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                SendStatus::new(&item.id, &item.to, SendState::Queued, item.created_ms)
            });
        let error = match sent {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(format!("the send stopped: {e}")),
        };
        match error {
            None => {
                status.advance(SendState::Sent, now);
                if let Err(e) = self.dequeue(&queue_key, &status_key, &status).await {
                    tracing::error!(session = %self.record.id, id = %item.id, "recording a send: {e}");
                } else if let Some(media) = &item.media {
                    self.remove_blob(&media.blob.name).await;
                }
                crate::metrics::inc_message_sent();
                self.emit(EventKind::MessageSent {
                    id: item.id,
                    to: item.to,
                    timestamp: now / 1000,
                });
                let gap = if pacing {
                    random_between(500, 2_000)
                } else {
                    Duration::ZERO
                };
                self.drain_at = Some(Instant::now() + gap);
            }
            Some(error) => {
                item.attempts += 1;
                tracing::warn!(session = %self.record.id, id = %item.id, attempts = item.attempts, "send failed: {error}");
                if item.attempts >= MAX_ATTEMPTS {
                    status.status = SendState::Failed;
                    status.reason = Some(error.clone());
                    status.updated_ms = now;
                    if let Err(e) = self.dequeue(&queue_key, &status_key, &status).await {
                        tracing::error!(session = %self.record.id, id = %item.id, "recording a failed send: {e}");
                    } else if let Some(media) = &item.media {
                        self.remove_blob(&media.blob.name).await;
                    }
                    self.emit(EventKind::MessageFailed {
                        id: item.id,
                        to: item.to,
                        reason: error,
                    });
                    self.drain_at = Some(Instant::now());
                } else {
                    if let Ok(value) = serde_json::to_vec(&item) {
                        let _ = self.shared.store.send_queue_update(&queue_key, &value);
                    }
                    self.drain_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        for ack in early_acks {
            if let EventKind::MessageAck { id, status, .. } = &ack {
                self.note_receipt(id, *status);
            }
            self.emit(ack);
        }
    }

    /// Stops a send in flight without counting an attempt (the client
    /// stops): it stays queued, and goes again, with the same id, when the
    /// session is connected again.
    pub(super) fn abandon_send(&mut self) {
        self.in_flight = None; // Dropping its task stops it.
    }

    async fn dequeue(
        &self,
        queue_key: &[u8],
        status_key: &[u8],
        status: &SendStatus,
    ) -> Result<bool, SupervisorError> {
        Ok(self
            .shared
            .store
            .send_dequeue(queue_key, Some((status_key, &json(status)?)))
            .await?)
    }

    /// A receipt moves the send's status on (if whatsd sent it).
    pub(super) fn note_receipt(&self, id: &str, ack: AckStatus) {
        let prefix = self.outbound_prefix();
        let Ok(Some(mut status)) = self.status_of(&prefix, id) else {
            return;
        };
        let to = match ack {
            AckStatus::Delivered => SendState::Delivered,
            AckStatus::Read => SendState::Read,
            AckStatus::Played => SendState::Played,
        };
        if status.advance(to, now_ms())
            && let Ok(value) = serde_json::to_vec(&status)
            && let Err(e) = self
                .shared
                .store
                .send_status_put(&outbound::status_key(&prefix, id), &value)
        {
            tracing::warn!(session = %self.record.id, %id, "recording a receipt: {e}");
        }
    }

    /// Records a send made outside the queue (`?wait=sent`) as sent.
    pub(super) async fn record_sent(&self, id: &str, to: &str) {
        let prefix = self.outbound_prefix();
        let now = now_ms();
        let status = SendStatus::new(id, to, SendState::Sent, now);
        if let Ok(value) = serde_json::to_vec(&status)
            && let Err(e) = self
                .shared
                .store
                .send_status_put(&outbound::status_key(&prefix, id), &value)
        {
            tracing::warn!(session = %self.record.id, %id, "recording a send: {e}");
        }
    }

    /// Removes media blobs of this session that no queued send or Graph
    /// upload names (left by a crash between storing the bytes and
    /// queueing the send) and that are over an hour old.
    pub(super) async fn sweep_media(&self) {
        let prefix = self.outbound_prefix();
        let store = &self.shared.store;
        let mut keep = std::collections::HashSet::new();
        let queued = store.send_queue(&prefix).unwrap_or_default();
        let uploads = store.media_uploads(&prefix).unwrap_or_default();
        for item in queued.iter().chain(uploads.iter()) {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&item.value) {
                for blob in [&value["media"]["blob"]["name"], &value["blob"]["name"]] {
                    if let Some(name) = blob.as_str() {
                        keep.insert(name.to_owned());
                    }
                }
            }
        }
        let removed = store
            .media_sweep(&prefix, keep, Duration::from_secs(3600))
            .await;
        if removed > 0 {
            tracing::info!(session = %self.record.id, removed, "orphaned media blobs removed");
        }
    }

    /// The queue of an incarnation that is gone (deleted, reassigned).
    pub(super) async fn purge_outbound(&self, incarnation: &str) {
        let prefix = outbound::prefix(self.shared.store.blinder(), incarnation);
        match self.shared.store.media_purge(&prefix).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(session = %self.record.id, files = n, "media blobs dropped with their session")
            }
            Err(e) => tracing::error!(session = %self.record.id, "dropping media blobs: {e}"),
        }
        match self.shared.store.send_purge(&prefix).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(session = %self.record.id, dropped = n, "queued sends dropped with their session")
            }
            Err(e) => {
                tracing::error!(session = %self.record.id, "dropping the outbound queue: {e}")
            }
        }
    }
}

/// A random duration from `min_ms` to `max_ms` milliseconds.
fn random_between(min_ms: u64, max_ms: u64) -> Duration {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    let span = max_ms.saturating_sub(min_ms).max(1);
    Duration::from_millis(min_ms + u64::from_le_bytes(bytes) % span)
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, SupervisorError> {
    serde_json::to_vec(value).map_err(|e| SupervisorError::BadRequest(e.to_string()))
}
