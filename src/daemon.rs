//! The daemon's lifecycle: open the store, start the supervisor, serve the
//! API until the injected shutdown future resolves, then tear down in order:
//! stop accepting → close WebSockets (1001) → stop sessions → flush the store.

use std::future::{Future, IntoFuture};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::auth::{Auth, hash_token, new_token};
use crate::api::listener::{CappedListener, PeerAddr};
use crate::api::{self, AppState};
use crate::config::{Config, ConfigError};
use crate::session::{Supervisor, SupervisorError};
use crate::store::{KeyConfig, Store, StoreError, load_master_key};

/// Environment variable that may hold the admin token.
pub const ADMIN_TOKEN_ENV: &str = "WHATSD_ADMIN_TOKEN";
/// systemd credential name of the admin token.
pub const ADMIN_TOKEN_CREDENTIAL: &str = "admin-token";
/// Shortest admin token accepted from a file or the environment.
const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// How long WebSockets get to close at shutdown.
const SOCKET_CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
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
    config.check()?;
    let key_config = KeyConfig::from_env(config.master_key_file.clone());
    let (key, key_source) = load_master_key(&key_config, &config.data_dir)?;
    let store = Store::open(&config.data_dir, &key)?;
    drop(key);
    tracing::info!(data_dir = %config.data_dir.display(), ?key_source, "store open");

    let admin_hash = admin_token_hash(&config, &store).await?;
    let tenants = store
        .list_tenants()?
        .into_iter()
        .map(|t| (t.token_hash, t.id));
    let auth = Arc::new(Auth::new(admin_hash, tenants, config.auth.clone()));

    let supervisor = Supervisor::start(store.clone(), config.session_config()).await?;

    let addr = config.listen_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let bound = listener.local_addr().map_err(RunError::Serve)?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState::new(
        supervisor.clone(),
        store.clone(),
        Arc::clone(&auth),
        config.clone(),
        shutdown_rx.clone(),
    );
    let app = api::router(state).into_make_service_with_connect_info::<PeerAddr>();
    let signal = {
        let tx = shutdown_tx.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: the API stops accepting");
            let _ = tx.send(true);
        }
    };
    let server = axum::serve(
        CappedListener::new(listener, config.api.max_connections),
        app,
    )
    .with_graceful_shutdown(signal)
    .into_future();
    let mut server = tokio::spawn(server);

    tracing::info!(addr = %bound, "API listening");
    announce(&format!("listening on {bound}"));

    let mut stopping = shutdown_rx.clone();
    let served = tokio::select! {
        result = &mut server => Some(result),
        _ = stopping.wait_for(|s| *s) => None,
    };
    if let Some(result) = served {
        // The server ended on its own: tear down anyway, then report.
        let _ = shutdown_tx.send(true);
        supervisor.shutdown().await;
        store.flush().await?;
        return match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RunError::Serve(e)),
            Err(e) => Err(RunError::Serve(std::io::Error::other(e.to_string()))),
        };
    }
    // In-flight requests are bounded by the request timeout.
    let drain = config.api.request_timeout + Duration::from_secs(1);
    if tokio::time::timeout(drain, &mut server).await.is_err() {
        tracing::warn!("requests still running after the drain period; dropping them");
        server.abort();
    }
    if !auth.sockets_closed(SOCKET_CLOSE_GRACE).await {
        tracing::warn!("some WebSockets did not close in time");
    }
    tracing::info!("stopping sessions");
    supervisor.shutdown().await;
    store.flush().await?;
    tracing::info!("stopped");
    Ok(())
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
