//! The outbox's queues, one per (endpoint, session incarnation): turning
//! events into items for the endpoints that want them, appending them,
//! starting a worker per queue that has items (and knowing which run),
//! dropping a session's queues, and the per-endpoint depth and delivery
//! stats behind the status API and `/metrics`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::endpoint::{self, Endpoint, EndpointId, Scope, SessionRef};
use super::queue::{self, Pending};
use super::{Inner, Outcome, WebhookEvent, Webhooks, lock, now_ms};
use crate::store::StoreError;

/// Per-endpoint delivery state for the status API (and metrics).
#[derive(Clone, Debug, Default, Serialize)]
pub struct EndpointStats {
    /// Items waiting in this endpoint's queues.
    pub queue_depth: u64,
    pub attempts: u64,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    pub last_success_at_ms: Option<i64>,
}

/// An outbox item about to be appended: (queue, endpoint, stored value).
type Item = (Vec<u8>, EndpointId, Vec<u8>);

impl Webhooks {
    /// Delivery state of the given endpoints, with the age of the oldest
    /// pending item.
    pub fn status(&self, endpoints: &[Arc<Endpoint>]) -> Vec<serde_json::Value> {
        let now = now_ms();
        endpoints
            .iter()
            .map(|e| {
                let stats = lock(&self.inner.stats)
                    .get(&e.id)
                    .cloned()
                    .unwrap_or_default();
                let oldest = self.inner.oldest_pending_ms(&e.id);
                serde_json::json!({
                    "endpoint": e.view(),
                    "queue_depth": stats.queue_depth,
                    "oldest_pending_age_ms": oldest.map(|t| (now - t).max(0)),
                    "attempts": stats.attempts,
                    "delivered": stats.delivered,
                    "failed_attempts": stats.failed_attempts,
                    "dead_lettered": stats.dead_lettered,
                    "last_error": stats.last_error,
                    "last_error_at_ms": stats.last_error_at_ms,
                    "last_success_at_ms": stats.last_success_at_ms,
                })
            })
            .collect()
    }

    /// Outbox depth and the age of the oldest item in seconds (metrics).
    pub fn totals(&self) -> (u64, f64) {
        let stats = lock(&self.inner.stats);
        let depth = stats.values().map(|s| s.queue_depth).sum();
        let ids: Vec<EndpointId> = stats
            .iter()
            .filter(|(_, s)| s.queue_depth > 0)
            .map(|(id, _)| id.clone())
            .collect();
        drop(stats);
        let now = now_ms();
        let oldest = ids
            .iter()
            .filter_map(|id| self.inner.oldest_pending_ms(id))
            .min()
            .map(|t| (now - t).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        (depth, oldest)
    }
}

impl Inner {
    /// (queue, endpoint, stored value) for every endpoint that wants each
    /// event: the session's own endpoints if it has any, else its
    /// tenant's; plus the global ones.
    pub(super) fn items_for(
        &self,
        incarnation: &str,
        events: Vec<(WebhookEvent, bool)>,
    ) -> Vec<Item> {
        let all = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        let blinder = self.store.blinder();
        let now = now_ms();
        let mut items = Vec::new();
        for (event, from_me) in events {
            let own = all
                .get(&Scope::Session(SessionRef::new(
                    event.session.clone(),
                    incarnation,
                )))
                .filter(|m| !m.is_empty())
                .or_else(|| all.get(&Scope::Tenant(event.tenant.clone())));
            let targets = own
                .into_iter()
                .chain(all.get(&Scope::Global))
                .flat_map(|m| m.values())
                .filter(|e| e.wants(&event, from_me));
            for endpoint in targets {
                let pending = Pending {
                    endpoint: endpoint.id.clone(),
                    event: event.clone(),
                    incarnation: incarnation.to_owned(),
                    created_ms: now,
                    attempts: 0,
                    next_ms: 0,
                    last_error: None,
                };
                let Ok(value) = serde_json::to_vec(&pending) else {
                    continue;
                };
                items.push((pending.queue(blinder), endpoint.id.clone(), value));
            }
        }
        items
    }

    /// Appends `events` for every interested endpoint and counts them
    /// (before any worker can deliver them). Not yet durable: flush, then
    /// [`Inner::after_append`] starts the workers.
    pub(super) fn append(
        &self,
        incarnation: &str,
        events: Vec<(WebhookEvent, bool)>,
    ) -> Result<Vec<Item>, StoreError> {
        let items = self.items_for(incarnation, events);
        if items.is_empty() {
            return Ok(items);
        }
        let refs: Vec<(&[u8], &[u8])> = items
            .iter()
            .map(|(queue, _, value)| (queue.as_slice(), value.as_slice()))
            .collect();
        // Counted before they are written: a worker already running on one
        // of these queues may deliver (and uncount) an item the moment it is
        // in the store.
        for (_, endpoint, _) in &items {
            self.adjust_depth(endpoint, 1);
        }
        if let Err(e) = self.store.outbox_append(&refs) {
            for (_, endpoint, _) in &items {
                self.adjust_depth(endpoint, -1);
            }
            return Err(e);
        }
        Ok(items)
    }

    /// Starts the workers of freshly appended (and flushed) items.
    pub(super) fn after_append(self: &Arc<Self>, items: Vec<Item>) {
        let mut queues = HashSet::new();
        for (queue, _, _) in items {
            queues.insert(queue);
        }
        for queue in queues {
            self.kick(queue);
        }
    }

    /// Starts a worker for `queue` unless one runs.
    pub(super) fn kick(self: &Arc<Self>, queue: Vec<u8>) {
        if self.scope.is_cancelled() {
            return;
        }
        let mut active = lock(&self.active);
        if active.insert(queue.clone()) {
            self.scope.spawn(queue::run(Arc::clone(self), queue));
        }
    }

    /// A worker found its queue empty: it may leave unless an item arrived
    /// meanwhile (checked under the same lock `kick` takes).
    pub(super) fn finish(&self, queue: &[u8]) -> bool {
        let mut active = lock(&self.active);
        if matches!(self.store.outbox_head(queue), Ok(Some(_))) {
            return false;
        }
        active.remove(queue);
        true
    }

    pub(super) fn finish_on_shutdown(&self, queue: &[u8]) {
        lock(&self.active).remove(queue);
    }

    pub(super) fn adjust_depth(&self, id: &EndpointId, delta: i64) {
        let mut stats = lock(&self.stats);
        let s = stats.entry(id.clone()).or_default();
        s.queue_depth = s.queue_depth.saturating_add_signed(delta);
    }

    pub(super) fn oldest_pending_ms(&self, id: &EndpointId) -> Option<i64> {
        let prefix = id.queues_prefix(self.store.blinder());
        let queues: Vec<Vec<u8>> = lock(&self.active)
            .iter()
            .filter(|q| q.starts_with(&prefix))
            .cloned()
            .collect();
        queues
            .iter()
            .filter_map(|q| self.store.outbox_head(q).ok().flatten())
            .filter_map(|item| serde_json::from_slice::<Pending>(&item.value).ok())
            .map(|p| p.created_ms)
            .min()
    }

    /// Records an attempt's outcome in the endpoint's stats.
    pub(super) fn observe(&self, pending: &Pending, outcome: &Outcome, latency: Duration) {
        let now = now_ms();
        let mut stats = lock(&self.stats);
        let s = stats.entry(pending.endpoint.clone()).or_default();
        s.attempts += 1;
        let label = match outcome {
            Outcome::Delivered { .. } => {
                s.delivered += 1;
                s.last_success_at_ms = Some(now);
                "delivered"
            }
            Outcome::Retry { error, .. } => {
                s.failed_attempts += 1;
                s.last_error = Some(error.clone());
                s.last_error_at_ms = Some(now);
                "retried"
            }
            Outcome::Reject { error, .. } => {
                s.failed_attempts += 1;
                s.last_error = Some(error.clone());
                s.last_error_at_ms = Some(now);
                "dead_lettered"
            }
        };
        drop(stats);
        metrics_hook(label, latency);
    }

    /// Drops one session incarnation's queues at every endpoint (its own,
    /// its tenant's and the global ones).
    pub(super) async fn purge_session_queues(
        &self,
        session: &str,
        incarnation: &str,
    ) -> Result<(), StoreError> {
        let blinder = self.store.blinder().clone();
        let part = endpoint::session_part(&blinder, session, incarnation);
        let endpoints: Vec<Arc<Endpoint>> = self
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for e in endpoints {
            let mut queue = e.id.queues_prefix(&blinder);
            queue.extend_from_slice(&part);
            let dropped = self.store.outbox_purge(&queue).await?;
            if dropped > 0 {
                self.adjust_depth(&e.id, -(dropped as i64));
            }
        }
        Ok(())
    }
}

/// Where delivery outcomes are counted for `/metrics`.
fn metrics_hook(outcome: &'static str, latency: Duration) {
    crate::metrics::webhook_delivery(outcome, latency);
}
