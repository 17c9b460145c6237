//! The delivery workers: one task per (endpoint, session) queue that has
//! pending items, delivering its head, strictly in order.
//!
//! A failing endpoint holds back only its own queues; deliveries of all
//! queues share a bounded pool of concurrent requests.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::delivery::{Attempt, Outcome};
use super::endpoint::{EndpointId, Format};
use super::payload::{WebhookEvent, hub_signature, render, whatsd_signature};
use super::{Inner, now_ms};

/// A pending delivery, as stored in the outbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    pub endpoint: EndpointId,
    pub event: WebhookEvent,
    /// The incarnation of the event's session (empty: written before
    /// incarnations existed).
    #[serde(default)]
    pub incarnation: String,
    pub created_ms: i64,
    pub attempts: u32,
    /// Wall-clock ms of the next attempt (0: now).
    pub next_ms: i64,
    pub last_error: Option<String>,
}

impl Pending {
    /// The outbox queue this item lives in.
    pub fn queue(&self, blinder: &crate::store::ids::Blinder) -> Vec<u8> {
        self.endpoint
            .queue(blinder, &self.event.session, &self.incarnation)
    }
}

/// A delivery that gave up, kept until redelivered or purged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    pub pending: Pending,
    pub reason: String,
    pub died_ms: i64,
}

/// Delivers the queue with this prefix until it is empty or the webhooks'
/// scope is cancelled (a wait or a request in flight is cut short; the item
/// stays in the outbox). Removes itself from the active set on the way out.
pub(super) async fn run(inner: Arc<Inner>, queue: Vec<u8>) {
    // The key whose wait this task has already slept out: attempted without
    // consulting the wall clock again (it may stand still in tests).
    let mut waited: Option<Vec<u8>> = None;
    loop {
        if inner.scope.is_cancelled() {
            break;
        }
        let head = match inner.store.outbox_head(&queue) {
            Ok(Some(head)) => head,
            Ok(None) => {
                if inner.finish(&queue) {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::error!("webhook outbox unreadable: {e}; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = inner.scope.cancelled() => break,
                }
                continue;
            }
        };
        let mut pending: Pending = match serde_json::from_slice(&head.value) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("dropping an unreadable webhook outbox item: {e}");
                let _ = inner.store.outbox_remove(&head.key);
                commit_soon(&inner);
                continue;
            }
        };
        let Some(endpoint) = inner.endpoint(&pending.endpoint) else {
            // Deleted meanwhile: its queues go with it.
            let dropped = inner
                .store
                .outbox_purge(&pending.endpoint.queues_prefix(inner.store.blinder()))
                .await
                .unwrap_or(0);
            inner.adjust_depth(&pending.endpoint, -(dropped as i64));
            continue;
        };
        let settings = inner.settings();
        let now = now_ms();
        if waited.as_deref() != Some(head.key.as_slice()) && pending.next_ms > now {
            let wait = Duration::from_millis((pending.next_ms - now) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = inner.scope.cancelled() => break,
            }
            waited = Some(head.key.clone());
            continue;
        }
        waited = None;
        let age = Duration::from_millis(now.saturating_sub(pending.created_ms).max(0) as u64);
        if age > settings.max_age {
            let reason = format!(
                "expired after {} attempts over {}s; last error: {}",
                pending.attempts,
                age.as_secs(),
                pending.last_error.as_deref().unwrap_or("none")
            );
            inner.kill(&head.key, pending, reason);
            commit_soon(&inner);
            continue;
        }

        let inlined = inline_media(&inner, &pending, settings.inline_media_max_bytes).await;
        let body = render(
            inlined.as_ref().unwrap_or(&pending.event),
            &pending.incarnation,
            endpoint.format,
            inner.store.blinder(),
        );
        let unix = now.div_euclid(1000);
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("x-whatsd-event-id", pending.event.id.clone()),
            ("x-whatsd-event-type", pending.event.kind.clone()),
        ];
        match endpoint.format {
            Format::Whatsd => headers.push((
                "x-whatsd-signature",
                whatsd_signature(endpoint.secret.as_bytes(), unix, &body),
            )),
            Format::CloudApi => headers.push((
                "x-hub-signature-256",
                hub_signature(endpoint.secret.as_bytes(), &body),
            )),
        }
        let attempt = Attempt {
            url: endpoint.url.clone(),
            headers,
            body,
            timeout: settings.timeout,
        };
        let outcome = {
            let _permit = inner.pool.acquire().await;
            let started = Instant::now();
            let outcome = tokio::select! {
                o = inner.transport.send(attempt) => o,
                _ = inner.scope.cancelled() => break,
            };
            inner.observe(&pending, &outcome, started.elapsed());
            outcome
        };
        pending.attempts += 1;
        match outcome {
            Outcome::Delivered { .. } => {
                if let Err(e) = inner.store.outbox_remove(&head.key) {
                    tracing::error!("webhook outbox: {e}");
                }
                commit_soon(&inner);
                inner.adjust_depth(&pending.endpoint, -1);
            }
            Outcome::Retry {
                error, retry_after, ..
            } => {
                let delay = retry_after
                    .map(|d| d.min(settings.max_age))
                    .unwrap_or_else(|| settings.schedule.delay(pending.attempts));
                tracing::info!(
                    session = %pending.event.session,
                    endpoint = %pending.endpoint,
                    event = %pending.event.id,
                    attempts = pending.attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    "webhook delivery failed: {error}"
                );
                pending.next_ms = now_ms() + delay.as_millis() as i64;
                pending.last_error = Some(error);
                let value = serde_json::to_vec(&pending).unwrap_or_default();
                if let Err(e) = inner.store.outbox_update(&head.key, &value) {
                    tracing::error!("webhook outbox: {e}");
                }
                commit_soon(&inner);
                // Sleep out this delay in-process, on tokio's clock.
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = inner.scope.cancelled() => break,
                }
                waited = Some(head.key.clone());
            }
            Outcome::Reject { error, .. } => {
                pending.last_error = Some(error.clone());
                inner.kill(
                    &head.key,
                    pending,
                    format!("refused by the receiver: {error}"),
                );
                commit_soon(&inner);
            }
        }
    }
    inner.finish_on_shutdown(&queue);
}

/// Delivered means forgotten: has the store commit this worker's last
/// removal (or update, or move to the dead letters) within 100 ms, through
/// a group commit, without waiting for it. A crash then repeats at most
/// the deliveries of that last moment.
fn commit_soon(inner: &Inner) {
    if let Some(task) = inner.store.flush_soon() {
        inner.scope.spawn(task);
    }
}

/// The event with its media inline (`data.media.data_base64`), when
/// `max` allows it and the bytes can be had now; fetched at each attempt,
/// so nothing but the keys is kept. The `cloud_api` format has no place
/// for it and leaves it out.
async fn inline_media(inner: &Inner, pending: &Pending, max: u64) -> Option<WebhookEvent> {
    let media = &pending.event.data["media"];
    if max == 0
        || pending.event.kind != "message.received"
        || media["url"].is_null()
        || media["file_length"].as_u64().is_none_or(|len| len > max)
    {
        return None;
    }
    let source = inner.media.get()?;
    let message_id = pending.event.data["message_id"].as_str()?;
    let bytes = source
        .fetch(
            &pending.event.session,
            &pending.incarnation,
            message_id,
            max,
        )
        .await?;
    let mut event = pending.event.clone();
    event.data["media"]["data_base64"] = serde_json::Value::String(super::payload::base64(&bytes));
    Some(event)
}
