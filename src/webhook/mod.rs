//! Webhooks: every incoming message and session event goes to the
//! tenant's endpoints from a durable outbox in the store.
//!
//! Flow: the library's durability hook (or a session event) → [`Webhooks`]
//! appends one outbox item per interested endpoint and flushes (group
//! commit) → only then is WhatsApp acknowledged → a worker per (endpoint,
//! session) queue delivers the head, signed, and deletes it on 2xx,
//! reschedules it on 408/429/5xx/network errors (attempts and next try are
//! stored), or moves it to the dead letters on any other answer or when it
//! is older than `max_age`. A restart resumes every queue where it stopped.

pub(crate) mod convert;
pub mod delivery;
pub mod endpoint;
pub mod payload;
mod queue;
pub mod target;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;

pub use delivery::{Attempt, HttpTransport, Outcome, Schedule, Transport};
pub use endpoint::{
    Endpoint, EndpointId, EndpointSpec, Format, InvalidEndpoint, Scope, SessionRef,
};
pub use payload::{Me, WebhookEvent};
pub use queue::{DeadLetter, Pending};

pub(crate) use crate::session::now_ms;
use crate::session::{EventSink, Identity, Owner, SessionEvent};
use crate::store::{Store, StoreError};
use crate::task::TaskScope;
use crate::wa::InboundMessage;

/// The name of the endpoint configured in `[webhooks]`.
pub const GLOBAL_ENDPOINT: &str = "default";

/// Webhook settings from the `[webhooks]` config section; reloadable.
#[derive(Clone, Debug)]
pub struct Settings {
    /// An endpoint that receives every session's events.
    pub global: Option<EndpointSpec>,
    /// Allow targets on loopback/private/link-local addresses.
    pub allow_private_targets: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Undelivered events older than this become dead letters.
    pub max_age: Duration,
    pub schedule: Schedule,
    /// Requests in flight at once, over all endpoints.
    pub concurrency: usize,
    /// Deliver `status@broadcast` posts as `message.status` (or drop them).
    pub deliver_status: bool,
    /// Dead letters older than this are deleted.
    pub dead_letter_retention: Duration,
    /// Endpoints one tenant may hold (its own and its sessions').
    pub max_endpoints_per_tenant: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            global: None,
            allow_private_targets: false,
            timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(24 * 3600),
            schedule: Schedule {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(600),
            },
            concurrency: 64,
            deliver_status: true,
            dead_letter_retention: Duration::from_secs(14 * 24 * 3600),
            max_endpoints_per_tenant: 10,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Invalid(#[from] InvalidEndpoint),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Setup(String),
    /// A tenant holds as many endpoints as allowed.
    #[error("{0}")]
    Quota(String),
}

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

/// Handle to the webhook outbox and its workers. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Store,
    settings: RwLock<Settings>,
    allow_private: Arc<AtomicBool>,
    endpoints: RwLock<HashMap<Scope, BTreeMap<String, Arc<Endpoint>>>>,
    transport: Arc<dyn Transport>,
    /// Queues with a running worker.
    active: Mutex<HashSet<Vec<u8>>>,
    stats: Mutex<HashMap<EndpointId, EndpointStats>>,
    pool: Semaphore,
    /// Every webhook task (workers, flushes, the retention sweep) runs in
    /// this subsystem scope; cancelling it is the shutdown signal.
    scope: TaskScope,
}

impl Drop for Inner {
    /// The last handle is gone (no worker holds one either): the tasks that
    /// only watch it, the retention sweep, end too.
    fn drop(&mut self) {
        self.scope.cancel();
    }
}

/// An outbox item about to be appended: (queue, endpoint, stored value).
type Item = (Vec<u8>, EndpointId, Vec<u8>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Webhooks {
    /// [`Webhooks::start_in`] a tree of its own (tests and benches).
    pub async fn start(store: Store, settings: Settings) -> Result<Self, WebhookError> {
        Self::start_in(&TaskScope::root(), store, settings).await
    }

    /// Loads the endpoints, resumes every queue left in the outbox, and
    /// delivers over HTTP. Every task runs in a subsystem scope below
    /// `parent`: cancelling `parent` stops them too.
    pub async fn start_in(
        parent: &TaskScope,
        store: Store,
        settings: Settings,
    ) -> Result<Self, WebhookError> {
        let allow_private = Arc::new(AtomicBool::new(settings.allow_private_targets));
        let transport =
            HttpTransport::new(Arc::clone(&allow_private)).map_err(WebhookError::Setup)?;
        Self::start_with_in(parent, store, settings, Arc::new(transport), allow_private).await
    }

    /// [`Webhooks::start`] over any transport (tests script outcomes).
    pub async fn start_with(
        store: Store,
        settings: Settings,
        transport: Arc<dyn Transport>,
        allow_private: Arc<AtomicBool>,
    ) -> Result<Self, WebhookError> {
        Self::start_with_in(
            &TaskScope::root(),
            store,
            settings,
            transport,
            allow_private,
        )
        .await
    }

    /// [`Webhooks::start_in`] over any transport.
    pub async fn start_with_in(
        parent: &TaskScope,
        store: Store,
        settings: Settings,
        transport: Arc<dyn Transport>,
        allow_private: Arc<AtomicBool>,
    ) -> Result<Self, WebhookError> {
        allow_private.store(settings.allow_private_targets, Ordering::Relaxed);
        let inner = Arc::new(Inner {
            store,
            pool: Semaphore::new(settings.concurrency.max(1)),
            settings: RwLock::new(settings.clone()),
            allow_private,
            endpoints: RwLock::new(HashMap::new()),
            transport,
            active: Mutex::new(HashSet::new()),
            stats: Mutex::new(HashMap::new()),
            scope: parent.subsystem(),
        });
        let webhooks = Self { inner };
        for item in webhooks.inner.store.webhook_endpoints()? {
            match serde_json::from_slice::<Endpoint>(&item.value) {
                Ok(endpoint) => webhooks.inner.install(endpoint),
                Err(e) => tracing::error!("skipping an unreadable webhook endpoint: {e}"),
            }
        }
        webhooks.apply_global(&settings)?;
        // Resume: count what is pending and start a worker per queue.
        let mut queues = HashSet::new();
        let blinder = webhooks.inner.store.blinder().clone();
        for item in webhooks.inner.store.outbox_all()? {
            if let Ok(p) = serde_json::from_slice::<Pending>(&item.value) {
                webhooks.inner.adjust_depth(&p.endpoint, 1);
                queues.insert(p.queue(&blinder));
            }
        }
        if !queues.is_empty() {
            tracing::info!(queues = queues.len(), "resuming webhook deliveries");
        }
        for queue in queues {
            webhooks.inner.kick(queue);
        }
        webhooks.spawn_retention_sweep();
        Ok(webhooks)
    }

    /// Deletes dead letters older than the retention, now and every hour.
    fn spawn_retention_sweep(&self) {
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

    /// Applies new settings (SIGHUP): timeouts, retry schedule, private
    /// targets, status policy and the global endpoint. The request pool
    /// size needs a restart.
    pub fn reload(&self, settings: Settings) -> Result<(), WebhookError> {
        self.apply_global(&settings)?;
        self.inner
            .allow_private
            .store(settings.allow_private_targets, Ordering::Relaxed);
        *self
            .inner
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = settings;
        Ok(())
    }

    fn apply_global(&self, settings: &Settings) -> Result<(), WebhookError> {
        let id = EndpointId::new(Scope::Global, GLOBAL_ENDPOINT);
        match &settings.global {
            Some(spec) => {
                endpoint::check_spec(spec, settings.allow_private_targets)?;
                let now = now_ms();
                self.inner.install(Endpoint {
                    id,
                    tenant: String::new(),
                    url: spec.url.clone(),
                    secret: spec.secret.clone(),
                    events: spec.events.clone(),
                    format: spec.format,
                    created_at_ms: now,
                    updated_at_ms: now,
                });
            }
            None => {
                self.inner.uninstall(&id);
            }
        }
        Ok(())
    }

    /// Cancels every webhook task and waits for them, for at most
    /// `timeout`; pending items stay in the outbox.
    pub async fn shutdown(&self, timeout: Duration) {
        self.inner.scope.cancel();
        if !self.inner.scope.wait(timeout).await {
            tracing::warn!(
                tasks = self.live_tasks(),
                "webhook tasks still running after {}s",
                timeout.as_secs_f64()
            );
        }
    }

    /// Webhook tasks still running: workers, outbox flushes and the
    /// retention sweep.
    pub fn live_tasks(&self) -> usize {
        self.inner.scope.live_tasks()
    }

    // ---- endpoints -----------------------------------------------------

    /// Creates or replaces an endpoint. `tenant` is the tenant the endpoint
    /// belongs to (the session's tenant for a session endpoint). Returns
    /// the endpoint and whether it is new.
    pub async fn put_endpoint(
        &self,
        id: EndpointId,
        tenant: &str,
        spec: EndpointSpec,
    ) -> Result<(Endpoint, bool), WebhookError> {
        endpoint::check_name(&id.name)?;
        let allow_private = self.inner.settings().allow_private_targets;
        endpoint::check_spec(&spec, allow_private)?;
        if !allow_private {
            check_resolved(&spec.url).await?;
        }
        let existing = self.endpoint(&id);
        if existing.is_none() && !matches!(id.scope, Scope::Global) {
            let max = self.inner.settings().max_endpoints_per_tenant;
            let held = self.tenant_endpoints(tenant).len();
            if held >= max {
                return Err(WebhookError::Quota(format!(
                    "tenant {tenant:?} already has {held} webhook endpoints, the most allowed \
                     (webhooks.max_endpoints_per_tenant = {max})"
                )));
            }
        }
        let now = now_ms();
        let endpoint = Endpoint {
            id: id.clone(),
            tenant: tenant.to_string(),
            url: spec.url,
            secret: spec.secret,
            events: spec.events,
            format: spec.format,
            created_at_ms: existing.as_ref().map_or(now, |e| e.created_at_ms),
            updated_at_ms: now,
        };
        let value =
            serde_json::to_vec(&endpoint).map_err(|e| WebhookError::Setup(e.to_string()))?;
        self.inner
            .store
            .put_webhook_endpoint(&id.key(self.inner.store.blinder()), &value)
            .await?;
        self.inner.install(endpoint.clone());
        Ok((endpoint, existing.is_none()))
    }

    pub fn endpoint(&self, id: &EndpointId) -> Option<Arc<Endpoint>> {
        self.inner.endpoint(id)
    }

    /// The endpoints of one scope, by name.
    pub fn endpoints(&self, scope: &Scope) -> Vec<Arc<Endpoint>> {
        self.inner
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every endpoint that belongs to `tenant` (its own and its sessions').
    pub fn tenant_endpoints(&self, tenant: &str) -> Vec<Arc<Endpoint>> {
        let all = self
            .inner
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Arc<Endpoint>> = all
            .iter()
            .filter(|(scope, _)| !matches!(scope, Scope::Global))
            .flat_map(|(_, m)| m.values())
            .filter(|e| e.tenant == tenant)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Deletes an endpoint and drops its pending deliveries. Returns
    /// whether it existed.
    pub async fn delete_endpoint(&self, id: &EndpointId) -> Result<bool, WebhookError> {
        let blinder = self.inner.store.blinder().clone();
        let existed = self
            .inner
            .store
            .delete_webhook_endpoint(&id.key(&blinder))
            .await?;
        self.inner.uninstall(id);
        let dropped = self
            .inner
            .store
            .outbox_purge(&id.queues_prefix(&blinder))
            .await?;
        if dropped > 0 {
            tracing::info!(endpoint = %id, dropped, "deleted a webhook endpoint with pending deliveries");
        }
        lock(&self.inner.stats).remove(id);
        Ok(existed)
    }

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

    // ---- dead letters --------------------------------------------------

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

    // ---- ownership -----------------------------------------------------

    /// Removes a tenant's webhook data: its endpoints (and its sessions'),
    /// their queues, and the dead letters it owns. Durable on return. Run
    /// when a tenant is deleted and again when an id is (re-)created, so a
    /// tenant id always starts empty.
    pub async fn purge_tenant(&self, tenant: &str) -> Result<usize, WebhookError> {
        let mut removed = 0;
        for endpoint in self.tenant_endpoints(tenant) {
            if self.delete_endpoint(&endpoint.id).await? {
                removed += 1;
            }
        }
        // Endpoints not loaded (unreadable values) cannot be matched by tenant;
        // only loaded ones can reach anyone. Durable: removing dead letters
        // flushes.
        removed += self.purge_dead(None, DeadScope::Tenant(tenant)).await?;
        Ok(removed)
    }

    /// Removes the session endpoints of owners not in `live` (left behind by
    /// a crash or written before incarnations). Returns how many.
    pub async fn retain_sessions(&self, live: &[Owner]) -> Result<usize, WebhookError> {
        let live: HashSet<SessionRef> = live
            .iter()
            .map(|o| SessionRef::new(&o.session, &o.incarnation))
            .collect();
        let orphans: Vec<EndpointId> = self
            .inner
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(scope, m)| match scope {
                Scope::Session(owner) if !live.contains(owner) => Some(m.values()),
                _ => None,
            })
            .flatten()
            .map(|e| e.id.clone())
            .collect();
        for id in &orphans {
            tracing::warn!(endpoint = %id, "removing a session webhook endpoint whose session is gone");
            self.delete_endpoint(id).await?;
        }
        Ok(orphans.len())
    }

    /// Deletes one owner's own endpoints, with their queues.
    async fn delete_session_endpoints(&self, owner: &SessionRef) -> Result<(), WebhookError> {
        for endpoint in self.endpoints(&Scope::Session(owner.clone())) {
            self.delete_endpoint(&endpoint.id).await?;
        }
        Ok(())
    }

    /// Deletes, durably, every dead letter for which `doomed` holds (one
    /// scan). Returns how many.
    async fn remove_dead_where(
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

    // ---- enqueueing ----------------------------------------------------

    fn me_of(&self, session: &str, live: Identity) -> Me {
        if !live.phone.is_empty() {
            return live.into();
        }
        match self.inner.store.get_record(session) {
            Ok(Some(r)) => Me {
                phone: r.phone,
                jid: r.jid,
                lid: r.lid,
            },
            _ => live.into(),
        }
    }
}

/// Refuses a URL whose host resolves only to internal addresses. A host
/// that does not resolve now is accepted (deliveries retry and say why).
async fn check_resolved(url: &str) -> Result<(), WebhookError> {
    let parsed = endpoint::check_url(url, true)?;
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return Ok(());
    };
    if let Ok(addrs) = tokio::net::lookup_host((host.trim_matches(['[', ']']), port)).await {
        let addrs: Vec<_> = addrs.collect();
        if !addrs.is_empty() && addrs.iter().all(|a| target::is_forbidden(a.ip())) {
            return Err(InvalidEndpoint::PrivateTarget(url.to_string()).into());
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl EventSink for Webhooks {
    async fn messages(
        &self,
        owner: &Owner,
        me: Identity,
        batch: Vec<InboundMessage>,
    ) -> anyhow::Result<()> {
        let (session, tenant) = (owner.session.as_str(), owner.tenant.as_str());
        // Protocol messages (key shares, history-sync notices) are the
        // library's business, not messages anyone sent.
        let sent: Vec<&InboundMessage> = batch
            .iter()
            .filter(|m| m.content.kind != "protocol")
            .collect();
        for _ in &sent {
            crate::metrics::inc_message_received();
        }
        let me = self.me_of(session, me);
        let deliver_status = self.inner.settings().deliver_status;
        let now = now_ms();
        let events: Vec<(WebhookEvent, bool)> = sent
            .into_iter()
            .filter(|m| deliver_status || !m.is_status)
            .map(|m| {
                (
                    payload::message_event(session, tenant, &me, m, now),
                    m.from_me,
                )
            })
            .collect();
        let items = self.inner.append(&owner.incarnation, events)?;
        if !items.is_empty() {
            self.inner.store.flush().await?;
            self.inner.after_append(items);
        }
        Ok(())
    }

    fn session_event(&self, event: &SessionEvent) {
        let me = self.me_of(&event.session, Identity::default());
        let Some(webhook) = payload::session_event(event, &me) else {
            return;
        };
        // Written now, in the session's order; flushed right after.
        let items = match self
            .inner
            .append(&event.incarnation, vec![(webhook, false)])
        {
            Ok(items) if !items.is_empty() => items,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(session = %event.session, "webhook outbox: {e}");
                return;
            }
        };
        let inner = Arc::clone(&self.inner);
        // Tracked, not cancelled: the flush makes what is written durable.
        self.inner.scope.spawn(async move {
            if let Err(e) = inner.store.flush().await {
                tracing::error!("flushing the webhook outbox: {e}");
            }
            inner.after_append(items);
        });
    }

    async fn session_deleted(&self, owner: &Owner) -> anyhow::Result<()> {
        let me = SessionRef::new(&owner.session, &owner.incarnation);
        self.delete_session_endpoints(&me).await?;
        // Its queues at every other endpoint (tenant and global) and what
        // died there.
        let blinder = self.inner.store.blinder().clone();
        let part = endpoint::session_part(&blinder, &owner.session, &owner.incarnation);
        let endpoints: Vec<Arc<Endpoint>> = self
            .inner
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for e in endpoints {
            let mut queue = e.id.queues_prefix(&blinder);
            queue.extend_from_slice(&part);
            let dropped = self.inner.store.outbox_purge(&queue).await?;
            if dropped > 0 {
                self.inner.adjust_depth(&e.id, -(dropped as i64));
            }
        }
        // Every dead letter of this incarnation, at its own endpoints and at
        // the others (one scan; durable on return).
        self.remove_dead_where(|d| {
            d.pending.event.session == owner.session && d.pending.incarnation == owner.incarnation
        })
        .await?;
        Ok(())
    }

    async fn session_reassigned(&self, old: &Owner, _new: &Owner) -> anyhow::Result<()> {
        // Queued deliveries stay in the old tenant's queues and reach the old
        // tenant: they happened while it owned the session.
        let old = SessionRef::new(&old.session, &old.incarnation);
        self.delete_session_endpoints(&old).await?;
        self.remove_dead_where(
            |d| matches!(&d.pending.endpoint.scope, Scope::Session(s) if *s == old),
        )
        .await?;
        Ok(())
    }
}

impl Inner {
    fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn endpoint(&self, id: &EndpointId) -> Option<Arc<Endpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id.scope)
            .and_then(|m| m.get(&id.name))
            .cloned()
    }

    fn install(&self, endpoint: Endpoint) {
        let mut all = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        all.entry(endpoint.id.scope.clone())
            .or_default()
            .insert(endpoint.id.name.clone(), Arc::new(endpoint));
    }

    fn uninstall(&self, id: &EndpointId) {
        let mut all = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = all.get_mut(&id.scope) {
            m.remove(&id.name);
            if m.is_empty() {
                all.remove(&id.scope);
            }
        }
    }

    /// (queue, endpoint, stored value) for every endpoint that wants each
    /// event: the session's own endpoints if it has any, else its
    /// tenant's; plus the global ones.
    fn items_for(&self, incarnation: &str, events: Vec<(WebhookEvent, bool)>) -> Vec<Item> {
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
                .filter(|e| e.wants(&event.kind, from_me));
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
    fn append(
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
    fn after_append(self: &Arc<Self>, items: Vec<Item>) {
        let mut queues = HashSet::new();
        for (queue, _, _) in items {
            queues.insert(queue);
        }
        for queue in queues {
            self.kick(queue);
        }
    }

    /// Starts a worker for `queue` unless one runs.
    fn kick(self: &Arc<Self>, queue: Vec<u8>) {
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
    fn finish(&self, queue: &[u8]) -> bool {
        let mut active = lock(&self.active);
        if matches!(self.store.outbox_head(queue), Ok(Some(_))) {
            return false;
        }
        active.remove(queue);
        true
    }

    fn finish_on_shutdown(&self, queue: &[u8]) {
        lock(&self.active).remove(queue);
    }

    fn adjust_depth(&self, id: &EndpointId, delta: i64) {
        let mut stats = lock(&self.stats);
        let s = stats.entry(id.clone()).or_default();
        s.queue_depth = s.queue_depth.saturating_add_signed(delta);
    }

    fn oldest_pending_ms(&self, id: &EndpointId) -> Option<i64> {
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
    fn observe(&self, pending: &Pending, outcome: &Outcome, latency: Duration) {
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
        crate::webhook::metrics_hook(label, latency);
    }

    /// Moves an item to the dead letters.
    fn kill(&self, key: &[u8], pending: Pending, reason: String) {
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

/// Where delivery outcomes are counted for `/metrics`.
fn metrics_hook(outcome: &'static str, latency: Duration) {
    crate::metrics::webhook_delivery(outcome, latency);
}

#[cfg(test)]
mod tests;
