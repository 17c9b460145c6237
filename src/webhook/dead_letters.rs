//! Dead letters: deliveries that gave up (refused, or older than
//! `max_age`). Moving an item there, listing them per tenant
//! ([`DeadScope`]), redelivering, deleting, and expiring them after the
//! retention (now and then, in a task of the webhooks' scope).

use std::sync::Arc;
use std::time::Duration;

use super::queue::{DeadLetter, Pending};
use super::{Inner, Scope, WebhookError, Webhooks, lock, now_ms};

/// Whose dead letters a listing covers.
#[derive(Clone, Copy, Debug)]
pub enum DeadScope<'a> {
    /// Every dead letter (the admin): global endpoints' too.
    All,
    /// Only those of endpoints that belong to this tenant (its own and its
    /// sessions').
    Tenant(&'a str),
}

impl DeadScope<'_> {
    /// Whether `dead` belongs to this scope: by the endpoint's owner, not by
    /// the event (a global endpoint's dead letters are the admin's alone).
    fn covers(&self, dead: &DeadLetter) -> bool {
        match self {
            Self::All => true,
            Self::Tenant(t) => match &dead.pending.endpoint.scope {
                Scope::Global => false,
                Scope::Tenant(owner) => owner == t,
                Scope::Session(_) => dead.pending.event.tenant == *t,
            },
        }
    }
}

impl Webhooks {
    /// Deletes dead letters older than the retention, now and every hour.
    pub(super) fn spawn_retention_sweep(&self) {
        let weak = Arc::downgrade(&self.inner);
        let scope = self.inner.scope.clone();
        self.inner.scope.spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(3600));
            loop {
                // An expiry under way finishes; only the wait is cut short.
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = scope.cancelled() => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let webhooks = Webhooks { inner };
                if let Err(e) = webhooks.expire_dead_letters(now_ms()).await {
                    tracing::error!("expiring dead letters: {e}");
                }
            }
        });
    }

    /// Deletes the dead letters that died before `now_ms` minus the
    /// retention. Returns how many.
    pub async fn expire_dead_letters(&self, now_ms: i64) -> Result<usize, WebhookError> {
        let retention = self.inner.settings().dead_letter_retention;
        let cutoff =
            now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let removed = self.remove_dead_where(|dead| dead.died_ms < cutoff).await?;
        if removed > 0 {
            crate::metrics::dead_letters_expired(removed as u64);
            tracing::info!(removed, "expired dead letters past their retention");
        }
        Ok(removed)
    }

    /// Dead letters after id `after`, oldest first, of `scope`.
    pub fn dead_letters(
        &self,
        scope: DeadScope<'_>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetter)>, WebhookError> {
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            let page = self.inner.store.dead_letters(cursor, 256)?;
            if page.is_empty() {
                break;
            }
            for item in &page {
                cursor = item.seq();
                let dead = match serde_json::from_slice::<DeadLetter>(&item.value) {
                    Ok(dead) => dead,
                    Err(e) => {
                        tracing::error!(id = cursor, "skipping an unreadable dead letter: {e}");
                        continue;
                    }
                };
                if scope.covers(&dead) {
                    out.push((cursor, dead));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    fn dead_letter(
        &self,
        id: u64,
        scope: DeadScope<'_>,
    ) -> Result<Option<DeadLetter>, WebhookError> {
        let Some(item) = self.inner.store.dead_letter(id)? else {
            return Ok(None);
        };
        let dead: DeadLetter = serde_json::from_slice(&item.value)
            .map_err(|e| WebhookError::Setup(format!("unreadable dead letter: {e}")))?;
        Ok(scope.covers(&dead).then_some(dead))
    }

    /// Puts a dead letter back at the end of its queue with fresh attempts.
    /// Returns false if there is no such dead letter (for this tenant) or
    /// its endpoint is gone.
    pub async fn redeliver(&self, id: u64, scope: DeadScope<'_>) -> Result<bool, WebhookError> {
        let Some(dead) = self.dead_letter(id, scope)? else {
            return Ok(false);
        };
        let mut pending = dead.pending;
        if self.endpoint(&pending.endpoint).is_none() {
            return Ok(false);
        }
        pending.attempts = 0;
        pending.next_ms = 0;
        pending.created_ms = now_ms();
        let queue = pending.queue(self.inner.store.blinder());
        let value = serde_json::to_vec(&pending).map_err(|e| WebhookError::Setup(e.to_string()))?;
        if self
            .inner
            .store
            .dead_requeue(id, &queue, &value)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        self.inner.adjust_depth(&pending.endpoint, 1);
        self.inner.kick(queue);
        Ok(true)
    }

    /// Deletes one dead letter (`Some(id)`) or all of `scope`'s (`None`).
    pub async fn purge_dead(
        &self,
        id: Option<u64>,
        scope: DeadScope<'_>,
    ) -> Result<usize, WebhookError> {
        let ids: Vec<u64> = match id {
            Some(id) => match self.dead_letter(id, scope)? {
                Some(_) => vec![id],
                None => vec![],
            },
            None => self
                .dead_letters(scope, 0, usize::MAX)?
                .into_iter()
                .map(|(id, _)| id)
                .collect(),
        };
        Ok(self.inner.store.dead_remove(&ids).await?)
    }

    /// Deletes, durably, every dead letter for which `doomed` holds (one
    /// scan). Returns how many.
    pub(super) async fn remove_dead_where(
        &self,
        doomed: impl Fn(&DeadLetter) -> bool,
    ) -> Result<usize, WebhookError> {
        let ids: Vec<u64> = self
            .dead_letters(DeadScope::All, 0, usize::MAX)?
            .into_iter()
            .filter(|(_, dead)| doomed(dead))
            .map(|(id, _)| id)
            .collect();
        Ok(self.inner.store.dead_remove(&ids).await?)
    }
}

impl Inner {
    /// Moves an item to the dead letters.
    pub(super) fn kill(&self, key: &[u8], pending: Pending, reason: String) {
        tracing::warn!(
            session = %pending.event.session,
            endpoint = %pending.endpoint,
            event = %pending.event.id,
            "webhook delivery dead-lettered: {reason}"
        );
        let endpoint = pending.endpoint.clone();
        let dead = DeadLetter {
            pending,
            reason,
            died_ms: now_ms(),
        };
        let value = serde_json::to_vec(&dead).unwrap_or_default();
        match self.store.outbox_kill(key, &value) {
            Ok(_) => {
                self.adjust_depth(&endpoint, -1);
                let mut stats = lock(&self.stats);
                stats.entry(endpoint).or_default().dead_lettered += 1;
            }
            Err(e) => tracing::error!("moving a webhook to the dead letters: {e}"),
        }
    }
}
