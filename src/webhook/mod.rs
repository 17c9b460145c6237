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
//!
//! Here: the [`Webhooks`] handle, its settings, start, reload and shutdown.
//! Every task runs in the webhooks' [`TaskScope`]. The rest, by concern:
//! `registry` (endpoints), `outbox` (queues, depth and stats), `queue`
//! (the delivery worker), `dead_letters`, `sink` (the sessions' side).

pub mod bsuid;
pub(crate) mod convert;
mod dead_letters;
pub mod delivery;
pub mod endpoint;
mod outbox;
pub mod payload;
mod queue;
mod registry;
mod sink;
pub mod target;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

pub use dead_letters::DeadScope;
pub use delivery::{Attempt, HttpTransport, Outcome, Schedule, Transport};
pub use endpoint::{
    Endpoint, EndpointId, EndpointSpec, Format, InvalidEndpoint, Scope, SessionRef,
};
pub use outbox::EndpointStats;
pub use payload::{Me, WebhookEvent};
pub use queue::{DeadLetter, Pending};

use crate::lock;
pub(crate) use crate::session::now_ms;
use crate::store::{Store, StoreError};
use crate::task::TaskScope;

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
    /// `api.public_url`: makes `data.media.url` absolute.
    pub media_base_url: Option<String>,
    /// Received media up to this size goes in the webhook too; 0: never.
    pub inline_media_max_bytes: u64,
}

/// Where the delivery workers get a received attachment's bytes for
/// `webhooks.inline_media_max_bytes` (the daemon's is the same download
/// the API serves, see `crate::api::media::InlineMedia`).
#[async_trait::async_trait]
pub trait MediaSource: Send + Sync {
    /// The decrypted bytes of the attachment of `message_id`, received by
    /// `session` in `incarnation`, if it is at most `max` bytes and can be
    /// had now.
    async fn fetch(
        &self,
        session: &str,
        incarnation: &str,
        message_id: &str,
        max: u64,
    ) -> Option<Vec<u8>>;
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
            media_base_url: None,
            inline_media_max_bytes: 0,
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
    /// For inline media; set once the sessions exist.
    media: std::sync::OnceLock<Arc<dyn MediaSource>>,
}

impl Drop for Inner {
    /// The last handle is gone (no worker holds one either): the tasks that
    /// only watch it, the retention sweep, end too.
    fn drop(&mut self) {
        self.scope.cancel();
    }
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
            media: std::sync::OnceLock::new(),
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

    /// Where inline media comes from (the daemon sets it once).
    pub fn set_media_source(&self, source: Arc<dyn MediaSource>) {
        let _ = self.inner.media.set(source);
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
}

impl Inner {
    fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
