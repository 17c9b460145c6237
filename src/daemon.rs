//! The daemon's lifecycle: open the store, start the supervisor, serve the
//! API until the injected shutdown future resolves, then tear down in order:
//! stop accepting → close WebSockets (1001) → stop sessions → flush the store.
//!
//! Under systemd (`Type=notify`) it reports `READY=1` once the store is open,
//! sessions are being restored and the listener is bound; `WATCHDOG=1` at
//! half of `WatchdogSec=` while the store answers; `STOPPING=1` when the
//! shutdown begins.
//!
//! On SIGHUP the configuration is read again (same file, same environment)
//! and checked; a bad one is logged and the running one kept. The log filter
//! changes at once; every other subsystem that can change live subscribes to
//! the [`ConfigWatch`] it is started with and re-reads its section on
//! `changed()` (the webhook dispatcher: `[webhooks]`). Keys only a restart
//! applies are named in the log.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::auth::{Auth, hash_token, new_token};
use crate::api::listener::{self, Limits};
use crate::api::{self, AppState};
use crate::config::{Config, ConfigError};
use crate::notify::Notifier;
use crate::session::{Supervisor, SupervisorError};
use crate::store::{KeyConfig, Store, StoreError, load_master_key};
use crate::task::TaskScope;
use crate::telemetry::{FilterReload, LogHandle};
use crate::webhook::{WebhookError, Webhooks};

/// Environment variable that may hold the admin token.
pub const ADMIN_TOKEN_ENV: &str = "WHATSD_ADMIN_TOKEN";
/// systemd credential name of the admin token.
pub const ADMIN_TOKEN_CREDENTIAL: &str = "admin-token";
/// Shortest admin token accepted from a file or the environment.
const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// How long in-flight webhook requests get at shutdown (the rest stays in
/// the outbox for the next start).
const WEBHOOK_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long WebSockets get to close at shutdown.
const SOCKET_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long the last tasks (watchdog, reloaders) get once everything stopped.
const TASKS_END_GRACE: Duration = Duration::from_secs(2);

/// The configuration in force, replaced on every successful SIGHUP reload.
/// Subsystems that apply changes live hold a receiver and re-read their
/// section on `changed()`.
pub type ConfigWatch = watch::Receiver<Arc<Config>>;

/// What the binary hands the daemon besides its configuration.
#[derive(Debug, Default)]
pub struct Options {
    /// The file the configuration came from, read again on SIGHUP (`None`:
    /// defaults and the environment only).
    pub config_path: Option<PathBuf>,
    /// The installed log subscriber, whose filter a reload replaces.
    pub log: Option<LogHandle>,
    /// `serve --listen ADDR`: the listen address, over the file's and
    /// `WHATSD_LISTEN`, at start and on every reload.
    pub listen: Option<String>,
    /// `serve --demo`: the embedded fake WhatsApp server, applied to the
    /// configuration at start and on every reload.
    #[cfg(feature = "demo")]
    pub demo: Option<Arc<crate::demo::Demo>>,
}

impl Options {
    pub fn new(config_path: Option<PathBuf>, log: Option<LogHandle>) -> Self {
        Self {
            config_path,
            log,
            listen: None,
            #[cfg(feature = "demo")]
            demo: None,
        }
    }

    /// Listens on `listen` (when given) whatever the configuration says.
    pub fn listening_on(mut self, listen: Option<String>) -> Self {
        self.listen = listen;
        self
    }

    /// What the options change in a configuration read from the file.
    fn adjust(&self, config: &mut Config) {
        if let Some(listen) = &self.listen {
            config.listen.clone_from(listen);
        }
        #[cfg(feature = "demo")]
        if let Some(demo) = &self.demo {
            demo.apply(config);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("webhooks: {0}")]
    Webhook(#[from] WebhookError),
    #[error("session supervisor: {0}")]
    Supervisor(#[from] SupervisorError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("API server: {0}")]
    Serve(std::io::Error),
}

impl RunError {
    /// `sysexits.h`: 78 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 78,
            _ => 1,
        }
    }
}

/// Runs the daemon until `shutdown` resolves, then shuts down gracefully.
/// Prints `listening on ADDR` on stdout once the API accepts connections.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with(config, Options::default(), shutdown).await
}

/// [`run`], with SIGHUP reloading `options.config_path`.
pub async fn run_with(
    mut config: Config,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    options.adjust(&mut config);
    config.check()?;
    raise_fd_limit();
    let hup = Hangup::listen();
    let notifier = Notifier::from_env();
    let (config_tx, config_watch) = watch::channel(Arc::new(config.clone()));
    let key_config = KeyConfig::from_env(config.master_key_file.clone());
    let (key, key_source) = load_master_key(&key_config, &config.data_dir)?;
    let store = Store::open(&config.data_dir, &key)?;
    drop(key);
    tracing::info!(data_dir = %config.data_dir.display(), ?key_source, "store open");

    ensure_default_tenant(&store).await?;
    let admin_hash = admin_token_hash(&config, &store).await?;
    let tenants = store
        .list_tenants()?
        .into_iter()
        .map(|t| (t.token_hash, t.id));
    let auth = Arc::new(
        Auth::new(admin_hash, tenants, config.auth.clone())
            .with_trusted_proxies(config.api.trusted_proxies.clone()),
    );

    // One cancellation tree for every task of the daemon (src/task.rs).
    let root = TaskScope::root();
    let webhooks = Webhooks::start_in(&root, store.clone(), config.webhook_settings()?).await?;
    {
        let webhooks = webhooks.clone();
        crate::metrics::set_outbox_source(Arc::new(move || webhooks.totals()));
    }
    let supervisor = Supervisor::start_in(
        &root,
        store.clone(),
        config.session_config(),
        Some(Arc::new(webhooks.clone())),
    )
    .await?;
    webhooks.retain_sessions(&supervisor.owners()?).await?;
    webhooks.set_media_source(Arc::new(api::media::InlineMedia::new(
        supervisor.clone(),
        store.clone(),
        config.media.retention_days,
    )));
    root.spawn_until_cancelled(apply_webhook_settings(
        webhooks.clone(),
        config_watch.clone(),
    ));

    let addr = config.listen_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let bound = listener.local_addr().map_err(RunError::Serve)?;

    // The API: cancelled when the shutdown begins; its connections and
    // WebSockets are counted in it until they close.
    let api = root.subsystem();
    let state = AppState::new(
        supervisor.clone(),
        store.clone(),
        Arc::clone(&auth),
        config.clone(),
        api.clone(),
        Some(webhooks.clone()),
    );
    #[cfg(feature = "demo")]
    let state = state.with_demo(options.demo.clone());
    let app = api::router(state);
    root.spawn_until_cancelled({
        let api = api.clone();
        let notifier = notifier.clone();
        async move {
            shutdown.await;
            notifier.notify("STOPPING=1");
            tracing::info!("shutting down: the API stops accepting");
            api.cancel();
        }
    });
    let mut server = root.spawn(listener::serve(
        listener,
        app,
        Limits::from_config(&config.api),
        api.clone(),
    ));

    tracing::info!(addr = %bound, "API listening");
    announce(&format!("listening on {bound}"));
    notifier.notify("READY=1\nSTATUS=serving the API");
    root.spawn_until_cancelled(watchdog(notifier.clone(), store.clone()));
    root.spawn_until_cancelled(expire_media(store.clone(), config.media.retention_days));
    root.spawn_until_cancelled(crate::store::release::periodically(store.clone()));
    // Reloading ends when the shutdown begins.
    api.child()
        .spawn_until_cancelled(reload_on_sighup(hup, options, config_tx));
    // Subsystems that apply settings live were started above with
    // `config_watch.clone()`.
    drop(config_watch);

    let served = tokio::select! {
        result = &mut server => Some(result),
        _ = api.cancelled() => None,
    };
    let outcome = match served {
        // The server ended on its own: tear down anyway, then report.
        Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(RunError::Serve(e)),
        Some(Err(e)) => Err(RunError::Serve(std::io::Error::other(e.to_string()))),
        None => {
            // In-flight requests are bounded by the request timeout.
            let drain = config.api.request_timeout + Duration::from_secs(1);
            if tokio::time::timeout(drain, &mut server).await.is_err() {
                tracing::warn!("requests still running after the drain period; dropping them");
                server.abort();
            }
            Ok(())
        }
    };
    if outcome.is_err() {
        notifier.notify("STOPPING=1");
    }
    api.cancel();
    if !api.wait(SOCKET_CLOSE_GRACE).await {
        tracing::warn!("some connections or WebSockets did not close in time");
    }
    tracing::info!("stopping sessions");
    supervisor.shutdown().await;
    // After the sessions: their last events are in the outbox already.
    webhooks.shutdown(WEBHOOK_STOP_GRACE).await;
    store.flush().await?;
    // Whatever is left (the watchdog, the reloaders) ends here; the
    // daemon returns only once every task it spawned has.
    root.cancel();
    if root.wait(TASKS_END_GRACE).await {
        tracing::info!("stopped; every task ended");
    } else {
        tracing::warn!(left = root.live_tasks(), "stopped; some tasks did not end");
    }
    outcome
}

/// How often received media refs past `media.retention_days` are deleted.
const MEDIA_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Deletes received media refs past their retention, at start and then
/// every [`MEDIA_SWEEP_INTERVAL`]; empties the downloads' temporary area
/// once (nothing is in flight at start).
async fn expire_media(store: Store, retention_days: u32) {
    crate::api::media::clear_tmp(store.data_dir());
    let retention_ms = i64::from(retention_days) * 86_400_000;
    let mut ticker = tokio::time::interval(MEDIA_SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let store = store.clone();
        let swept = tokio::task::spawn_blocking(move || {
            store.media_refs_expire(retention_ms, crate::session::now_ms())
        })
        .await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(expired = n, "received media past its retention forgotten"),
            Ok(Err(e)) => tracing::error!("expiring received media: {e}"),
            Err(e) => tracing::error!("expiring received media: {e}"),
        }
    }
}

/// Pings systemd's watchdog at half its timeout while the store answers
/// through its real path (the gate and sled, see [`Store::probe`], given a
/// quarter of the timeout), through the drain too (systemd's stop timeout
/// bounds that). A stalled runtime or a stuck or dead store stops the pings
/// and systemd restarts us.
async fn watchdog(notifier: Notifier, store: Store) {
    let Some(timeout) = notifier.watchdog() else {
        return;
    };
    let mut ticker = tokio::time::interval(timeout / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.probe(timeout / 4).await {
            Ok(()) => notifier.notify("WATCHDOG=1"),
            Err(e) => {
                tracing::error!(error = %e, "the store does not answer; withholding the watchdog ping")
            }
        }
    }
}

/// Applies the `[webhooks]` section of every reloaded configuration.
async fn apply_webhook_settings(webhooks: Webhooks, mut config: ConfigWatch) {
    while config.changed().await.is_ok() {
        let new = config.borrow_and_update().clone();
        match new.webhook_settings() {
            Ok(settings) => match webhooks.reload(settings) {
                Ok(()) => tracing::info!("webhook settings applied"),
                Err(e) => tracing::error!(error = %e, "webhook settings refused"),
            },
            Err(e) => tracing::error!(error = %e, "webhook settings refused"),
        }
    }
}

/// SIGHUP, listened for from the start of [`run_with`]: a hangup that
/// arrives before the reloader runs must not hit the default action, which
/// ends the process.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading is off");
                })
                .ok();
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    /// The next SIGHUP; never, where there is no SIGHUP.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Reloads on every SIGHUP (until its scope is cancelled).
async fn reload_on_sighup(
    mut hup: Hangup,
    options: Options,
    config_tx: watch::Sender<Arc<Config>>,
) {
    let running = config_tx.borrow().clone();
    loop {
        hup.recv().await;
        tracing::info!(signal = "SIGHUP", "reloading the configuration");
        reload(&options, &running, &config_tx);
    }
}

/// Every setting, as (name, applied live?, comparable form). Only names are
/// logged: the values may be secret.
fn settings(c: &Config) -> Vec<(&'static str, bool, String)> {
    vec![
        ("listen", false, c.listen.clone()),
        ("data_dir", false, format!("{:?}", c.data_dir)),
        ("master_key_file", false, format!("{:?}", c.master_key_file)),
        ("auth", false, format!("{:?}", c.auth)),
        ("api", false, format!("{:?}", c.api)),
        ("whatsapp", false, format!("{:?}", c.whatsapp)),
        ("sessions", false, format!("{:?}", c.sessions)),
        (
            "webhooks.concurrency",
            false,
            c.webhooks.concurrency.to_string(),
        ),
        (
            "webhooks",
            true,
            format!("{:?}", c.webhooks.settings().ok()),
        ),
        ("log.filter", true, c.log.filter.clone()),
        ("log.format", false, c.log.format.clone()),
        ("webhooks", true, format!("{:?}", c.webhooks)),
    ]
}

/// Reads and checks the configuration again; applies the log filter and
/// publishes the new configuration, or keeps the old one if it is bad.
/// Settings that need a restart are compared with those the daemon started
/// with, so each reload names all of them.
fn reload(options: &Options, running: &Config, config_tx: &watch::Sender<Arc<Config>>) {
    let new = match Config::load(options.config_path.as_deref()) {
        Ok(mut new) => {
            options.adjust(&mut new);
            new
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the running configuration stays");
            return;
        }
    };
    let published = config_tx.borrow().clone();
    let mut live = Vec::new();
    let mut restart = Vec::new();
    let compared = settings(&published)
        .into_iter()
        .zip(settings(running))
        .zip(settings(&new));
    for (((name, applies_live, last), (_, _, started)), (_, _, now)) in compared {
        if applies_live && last != now {
            live.push(name);
        } else if !applies_live && started != now {
            restart.push(name);
        }
    }
    if live.contains(&"log.filter")
        && let Some(log) = &options.log
    {
        match log.set_filter(&new.log.filter) {
            Ok(FilterReload::Applied) => {}
            Ok(FilterReload::HeldByEnv) => {
                tracing::warn!("log.filter changed, but RUST_LOG is set and keeps precedence");
            }
            Err(e) => tracing::error!(error = %e, "cannot apply the new log filter"),
        }
    }
    config_tx.send_replace(Arc::new(new));
    if !restart.is_empty() {
        tracing::warn!(
            needs_restart = ?restart,
            "changed settings that apply only after a restart; the running values stay"
        );
    }
    tracing::info!(applied = ?live, "configuration reloaded");
}

/// Raises the soft open-files limit to the hard one and logs both: every
/// connection, WebSocket and store file is a descriptor, and the common
/// soft default (1024) is below `api.max_connections` plus the store's.
/// The limits are read from `/proc/self/limits` (a failed read is only
/// logged); `setrlimit` is called only when there is something to raise.
fn raise_fd_limit() {
    let Some((soft, hard)) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_files_limits(&text))
    else {
        tracing::info!("open files limit unknown (no /proc/self/limits); left as is");
        return;
    };
    // "unlimited" hard limits cannot be a soft one: take the usual nr_open.
    let target = hard.unwrap_or(1 << 20);
    if soft.is_some_and(|soft| soft >= target) {
        tracing::info!(soft = ?soft, hard = ?hard, "open files limit");
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(target),
        maximum: hard,
    };
    match rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            soft_was = ?soft,
            soft = target,
            hard = ?hard,
            "open files limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            soft = ?soft,
            hard = ?hard,
            "cannot raise the open files limit; set LimitNOFILE="
        ),
    }
}

/// The `Max open files` soft and hard limits (`None`: unlimited).
fn open_files_limits(text: &str) -> Option<(Option<u64>, Option<u64>)> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let parse = |f: Option<&str>| match f? {
        "unlimited" => Some(None),
        n => n.parse().ok().map(Some),
    };
    Some((parse(fields.next())?, parse(fields.next())?))
}

/// A line on stdout that scripts and tests wait for.
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim().to_string())
}

fn checked_token(token: String, source: &str) -> Result<[u8; 32], ConfigError> {
    if token.len() < MIN_ADMIN_TOKEN_LEN
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::Invalid(format!(
            "the admin token from {source} must be at least {MIN_ADMIN_TOKEN_LEN} characters without spaces"
        )));
    }
    Ok(hash_token(&token))
}

/// Makes sure the `default` tenant (owner of sessions created without a
/// tenant) exists as a real tenant: listed, with webhooks and dead letters
/// of its own. Its token is random and unknown until the admin rotates it.
async fn ensure_default_tenant(store: &Store) -> Result<(), RunError> {
    use crate::api::sessions::DEFAULT_TENANT;
    if store.get_tenant(DEFAULT_TENANT)?.is_some() {
        return Ok(());
    }
    let token = crate::api::auth::new_token().map_err(|_| {
        RunError::Store(crate::store::StoreError::Crypto(
            "the system random generator failed",
        ))
    })?;
    let now = crate::session::now_ms();
    let record = crate::store::tenants::TenantRecord {
        version: 0,
        id: DEFAULT_TENANT.to_string(),
        token_hash: crate::api::auth::hash_token(&token),
        created_at_ms: now,
        token_issued_at_ms: now,
    };
    if store.create_tenant(&record).await? {
        tracing::info!("created the default tenant (rotate its token to use it)");
    }
    Ok(())
}

/// The admin token's hash: from `auth.admin_token_file`, `$WHATSD_ADMIN_TOKEN`,
/// the systemd credential `admin-token`, or a token generated on an earlier
/// start. On the very first start a token is generated, printed once on
/// stdout, and only its hash is kept.
async fn admin_token_hash(config: &Config, store: &Store) -> Result<[u8; 32], RunError> {
    if let Some(path) = &config.auth.admin_token_file {
        let source = format!("auth.admin_token_file ({})", path.display());
        return Ok(checked_token(read_token_file(path)?, &source)?);
    }
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
        return Ok(checked_token(token.trim().to_string(), ADMIN_TOKEN_ENV)?);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(ADMIN_TOKEN_CREDENTIAL);
        if path.exists() {
            return Ok(checked_token(
                read_token_file(&path)?,
                "the systemd credential admin-token",
            )?);
        }
    }
    if let Some(hash) = store.admin_token_hash()? {
        return Ok(hash);
    }
    let token =
        new_token().map_err(|_| StoreError::Crypto("the system random generator failed"))?;
    let hash = hash_token(&token);
    store.set_admin_token_hash(&hash).await?;
    announce(&format!(
        "admin token (shown once; only its hash is kept): {token}"
    ));
    tracing::warn!(
        "generated an admin token and printed it on stdout once; store it somewhere safe"
    );
    Ok(hash)
}
