//! The daemon's configuration: a TOML file (optional), then `WHATSD_…`
//! environment variables on top, then a semantic [`Config::check`].
//!
//! Every key has a default, so `whatsd serve` works with no file at all.
//! Durations are written as `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"14d"` or a
//! bare number of seconds; sizes as `"1MiB"`, `"64KiB"`, `"1000"` or a bare
//! number of bytes. Each key `a.b_c` can be overridden by the environment
//! variable `WHATSD_A_B_C` (top-level keys: `WHATSD_LISTEN`, …).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::session::SessionConfig;
use crate::wa::WaConfig;

/// Default listen address: loopback only; put a TLS proxy in front to expose it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "WHATSD_";

/// `WHATSD_…` variables that are not configuration keys (secrets and CLI
/// settings); the overlay leaves them alone.
const NOT_CONFIG_VARS: &[&str] = &[
    "WHATSD_ADMIN_TOKEN",
    "WHATSD_TOKEN",
    "WHATSD_TOKEN_FILE",
    "WHATSD_URL",
    "WHATSD_CONFIG",
    "WHATSD_FAULTS",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP/WebSocket API. Port 0 picks a free port (the
    /// bound address is printed as `listening on ADDR`).
    pub listen: String,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// The store's master key (32 raw bytes or 64 hex digits). Unset:
    /// `$CREDENTIALS_DIRECTORY/master-key`, then `<data_dir>/master.key`
    /// (generated on first start).
    pub master_key_file: Option<PathBuf>,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub whatsapp: WhatsAppConfig,
    pub sessions: SessionsConfig,
    /// Rate limits per session (tenants and sessions may be given their
    /// own through the API).
    pub limits: crate::session::limits::Limits,
    pub webhooks: WebhooksConfig,
    /// Media received and sent.
    pub media: MediaConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_string(),
            data_dir: PathBuf::from(crate::store::DEFAULT_DATA_DIR),
            master_key_file: None,
            auth: AuthConfig::default(),
            api: ApiConfig::default(),
            whatsapp: WhatsAppConfig::default(),
            sessions: SessionsConfig::default(),
            limits: crate::session::limits::Limits::default(),
            webhooks: WebhooksConfig::default(),
            media: MediaConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File holding the admin token. Unset: `$WHATSD_ADMIN_TOKEN`, then
    /// `$CREDENTIALS_DIRECTORY/admin-token`, then a token generated on the
    /// first start (printed once, stored hashed).
    pub admin_token_file: Option<PathBuf>,
    /// WebSocket connections one token may hold at once.
    pub max_sockets_per_token: usize,
    /// Lifetime of a one-time WebSocket ticket.
    #[serde(deserialize_with = "de_duration")]
    pub ticket_ttl: Duration,
    /// Failed authentications one address may make per `failure_window`
    /// before it is answered 429 until the window passes.
    pub failure_limit: u32,
    #[serde(deserialize_with = "de_duration")]
    pub failure_window: Duration,
    /// Unused WebSocket tickets one principal may hold at once; more: 429
    /// `too_many_tickets`.
    pub max_tickets_per_principal: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            admin_token_file: None,
            max_sockets_per_token: 16,
            ticket_ttl: Duration::from_secs(30),
            failure_limit: 10,
            failure_window: Duration::from_secs(60),
            max_tickets_per_principal: 32,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest request body accepted.
    #[serde(deserialize_with = "de_size")]
    pub body_limit: u64,
    /// Longest a request may take before it is answered 503.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// Open TCP connections (HTTP and WebSocket) at once. At the cap a new
    /// connection pushes out the oldest idle one (no request in flight);
    /// if none is idle, it is refused.
    pub max_connections: usize,
    /// Open connections from one client address (peers in
    /// `trusted_proxies` are exempt); past it, that address's oldest idle
    /// connection is closed, or the new one refused.
    pub max_connections_per_address: usize,
    /// A request's head must arrive within this time of the connection
    /// opening or of its first byte, else the connection is closed.
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Reverse proxies (CIDRs like `"10.0.0.0/8"` or addresses) whose
    /// `X-Forwarded-For` header names the client, for the failed-auth
    /// throttle. Empty: the TCP peer is the client.
    #[serde(deserialize_with = "de_cidrs")]
    pub trusted_proxies: Vec<Cidr>,
    /// How often the server pings each WebSocket.
    #[serde(deserialize_with = "de_duration")]
    pub ws_ping_interval: Duration,
    /// A WebSocket write that takes longer than this drops the socket.
    #[serde(deserialize_with = "de_duration")]
    pub ws_send_timeout: Duration,
    /// The API's base URL as clients reach it (`https://whatsd.example.com`),
    /// for the absolute media URLs in webhooks and Graph answers. Unset:
    /// webhooks carry the path alone, Graph answers use the request's `Host`.
    pub public_url: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_address: 64,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
            ws_ping_interval: Duration::from_secs(20),
            ws_send_timeout: Duration::from_secs(10),
            public_url: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhatsAppConfig {
    /// WebSocket URL of WhatsApp. Unset: WhatsApp's own. Tests point it at fakewa.
    pub ws_url: Option<String>,
    /// Client version `"MAJOR.MINOR.PATCH"`. Unset: learned from WhatsApp Web.
    pub version: Option<String>,
    /// Name shown on the phone's "Linked devices" list. Unset: the library default.
    pub device_os: Option<String>,
    /// A PEM CA the media HTTP client trusts: fakewa's media server. Test and
    /// demo builds only: refused by a build that verifies WhatsApp's
    /// certificate chain (a release build).
    pub media_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    #[serde(deserialize_with = "de_duration")]
    pub activation_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub phone_poll_budget: Duration,
    pub start_concurrency: usize,
    #[serde(deserialize_with = "de_duration")]
    pub health_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub stuck_after: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub silent_after: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub expiry: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// Sessions one tenant may hold (creates beyond it: 403 `quota_exceeded`).
    pub max_per_tenant: usize,
    /// How long a send's status is kept after its last change.
    #[serde(deserialize_with = "de_duration")]
    pub send_status_retention: Duration,
}

impl Default for SessionsConfig {
    /// The supervisor's own defaults: one source of truth.
    fn default() -> Self {
        let d = crate::session::SessionConfig::default();
        Self {
            activation_timeout: d.activation_timeout,
            phone_poll_budget: d.phone_poll_budget,
            start_concurrency: d.start_concurrency,
            health_interval: d.health_interval,
            stuck_after: d.stuck_after,
            silent_after: d.silent_after,
            expiry: d.expiry,
            shutdown_timeout: d.shutdown_timeout,
            max_per_tenant: d.max_per_tenant,
            send_status_retention: d.send_status_retention,
        }
    }
}

/// `[media]`: what media sends accept. The size limits default to
/// WhatsApp's own (Meta's Cloud API numbers) and may only be set lower.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    #[serde(deserialize_with = "de_size")]
    pub max_image_bytes: u64,
    #[serde(deserialize_with = "de_size")]
    pub max_video_bytes: u64,
    #[serde(deserialize_with = "de_size")]
    pub max_audio_bytes: u64,
    #[serde(deserialize_with = "de_size")]
    pub max_document_bytes: u64,
    #[serde(deserialize_with = "de_size")]
    pub max_sticker_bytes: u64,
    /// How long fetching a send's `url` may take.
    #[serde(deserialize_with = "de_duration")]
    pub url_timeout: Duration,
    /// Let a send's `url` reach loopback/private/link-local addresses (as
    /// `webhooks.allow_private_targets` does for webhooks). Off: 422
    /// `url_not_allowed`.
    pub allow_private_urls: bool,
    /// Days a received attachment stays downloadable through whatsd (its
    /// keys are kept that long; WhatsApp itself keeps the file for about
    /// 30 days).
    pub retention_days: u32,
}

/// WhatsApp's limits, the defaults and the most `[media]` may set.
pub const MEDIA_LIMITS: [(&str, u64); 5] = [
    ("max_image_bytes", 5 * 1024 * 1024),
    ("max_video_bytes", 16 * 1024 * 1024),
    ("max_audio_bytes", 16 * 1024 * 1024),
    ("max_document_bytes", 100 * 1024 * 1024),
    ("max_sticker_bytes", 500 * 1024),
];

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_image_bytes: MEDIA_LIMITS[0].1,
            max_video_bytes: MEDIA_LIMITS[1].1,
            max_audio_bytes: MEDIA_LIMITS[2].1,
            max_document_bytes: MEDIA_LIMITS[3].1,
            max_sticker_bytes: MEDIA_LIMITS[4].1,
            url_timeout: Duration::from_secs(20),
            allow_private_urls: false,
            retention_days: 30,
        }
    }
}

impl MediaConfig {
    fn values(&self) -> [u64; 5] {
        [
            self.max_image_bytes,
            self.max_video_bytes,
            self.max_audio_bytes,
            self.max_document_bytes,
            self.max_sticker_bytes,
        ]
    }

    /// The largest any kind may be.
    pub fn max_any(&self) -> u64 {
        self.values().into_iter().max().unwrap_or(0)
    }

    fn check(&self) -> Result<(), String> {
        for ((name, most), value) in MEDIA_LIMITS.iter().zip(self.values()) {
            if value == 0 || value > *most {
                return Err(format!(
                    "media.{name} must be from 1 to {most} bytes (WhatsApp's own limit)"
                ));
            }
        }
        if self.url_timeout.is_zero() {
            return Err("media.url_timeout must be greater than zero".into());
        }
        Ok(())
    }
}

/// `[webhooks]`: delivery settings, and an optional endpoint that gets
/// every session's events (tenants add their own through the API).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Global endpoint URL; empty: none.
    pub url: String,
    /// Its signing secret (at least 16 bytes); prefer `secret_file`.
    pub secret: String,
    /// File holding the signing secret.
    pub secret_file: Option<PathBuf>,
    /// Event types the global endpoint receives; empty: all.
    pub events: Vec<String>,
    /// `"whatsd"` or `"cloud_api"`.
    pub format: String,
    /// Allow webhook targets on loopback/private/link-local addresses.
    pub allow_private_targets: bool,
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub initial_backoff: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_backoff: Duration,
    /// Requests in flight at once over all endpoints.
    pub concurrency: usize,
    /// `"deliver"` `status@broadcast` posts as `message.status`, or `"drop"`.
    pub status_broadcast: String,
    /// Dead letters older than this are deleted.
    #[serde(deserialize_with = "de_duration")]
    pub dead_letter_retention: Duration,
    /// Webhook endpoints one tenant may hold (its own and its sessions').
    pub max_endpoints_per_tenant: usize,
    /// Received media of at most this many bytes is put in the webhook
    /// itself as `data.media.data_base64`; 0: never.
    #[serde(deserialize_with = "de_size")]
    pub inline_media_max_bytes: u64,
}

impl std::fmt::Debug for WebhooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhooksConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("secret_file", &self.secret_file)
            .field("events", &self.events)
            .field("format", &self.format)
            .field("allow_private_targets", &self.allow_private_targets)
            .finish_non_exhaustive()
    }
}

impl Default for WebhooksConfig {
    /// The webhook module's own defaults: one source of truth.
    fn default() -> Self {
        let d = crate::webhook::Settings::default();
        Self {
            url: String::new(),
            secret: String::new(),
            secret_file: None,
            events: Vec::new(),
            format: "whatsd".to_string(),
            allow_private_targets: d.allow_private_targets,
            timeout: d.timeout,
            max_age: d.max_age,
            initial_backoff: d.schedule.initial,
            max_backoff: d.schedule.max,
            concurrency: d.concurrency,
            status_broadcast: "deliver".to_string(),
            dead_letter_retention: d.dead_letter_retention,
            max_endpoints_per_tenant: d.max_endpoints_per_tenant,
            inline_media_max_bytes: 0,
        }
    }
}

impl Config {
    /// The webhook module's settings, with what it needs from other
    /// sections (`api.public_url` for media URLs); reads `secret_file`.
    pub fn webhook_settings(&self) -> Result<crate::webhook::Settings, ConfigError> {
        let mut settings = self.webhooks.settings()?;
        settings.media_base_url = self.api.public_url.clone();
        Ok(settings)
    }
}

impl WebhooksConfig {
    /// The webhook module's settings; reads `secret_file`.
    pub fn settings(&self) -> Result<crate::webhook::Settings, ConfigError> {
        self.build_settings(true)
    }

    /// `read_secret = false` checks everything but the secret file's
    /// contents (for `validate-config` on another machine's file).
    fn build_settings(&self, read_secret: bool) -> Result<crate::webhook::Settings, ConfigError> {
        use crate::webhook::{EndpointSpec, Format, Schedule, Settings};
        let bad = |msg: String| ConfigError::Invalid(format!("webhooks.{msg}"));
        let format = match self.format.as_str() {
            "whatsd" => Format::Whatsd,
            "cloud_api" => Format::CloudApi,
            other => {
                return Err(bad(format!(
                    "format = {other:?} must be \"whatsd\" or \"cloud_api\""
                )));
            }
        };
        let deliver_status = match self.status_broadcast.as_str() {
            "deliver" => true,
            "drop" => false,
            other => {
                return Err(bad(format!(
                    "status_broadcast = {other:?} must be \"deliver\" or \"drop\""
                )));
            }
        };
        let global = if self.url.is_empty() {
            None
        } else {
            let secret = match &self.secret_file {
                Some(_) if !read_secret => "x".repeat(crate::webhook::endpoint::MIN_SECRET_LEN),
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_string(),
                None => self.secret.clone(),
            };
            let spec = EndpointSpec {
                url: self.url.clone(),
                secret,
                events: self.events.clone(),
                format,
            };
            crate::webhook::endpoint::check_spec(&spec, self.allow_private_targets)
                .map_err(|e| bad(format!("url/secret/events: {e}")))?;
            Some(spec)
        };
        for (name, value) in [
            ("timeout", self.timeout),
            ("max_age", self.max_age),
            ("initial_backoff", self.initial_backoff),
            ("max_backoff", self.max_backoff),
            ("dead_letter_retention", self.dead_letter_retention),
        ] {
            if value.is_zero() {
                return Err(bad(format!("{name} must be greater than zero")));
            }
        }
        if self.initial_backoff > self.max_backoff {
            return Err(bad("initial_backoff must not exceed max_backoff".into()));
        }
        if self.concurrency == 0 {
            return Err(bad("concurrency must be at least 1".into()));
        }
        if self.max_endpoints_per_tenant == 0 {
            return Err(bad("max_endpoints_per_tenant must be at least 1".into()));
        }
        Ok(Settings {
            global,
            allow_private_targets: self.allow_private_targets,
            timeout: self.timeout,
            max_age: self.max_age,
            schedule: Schedule {
                initial: self.initial_backoff,
                max: self.max_backoff,
            },
            concurrency: self.concurrency,
            deliver_status,
            dead_letter_retention: self.dead_letter_retention,
            max_endpoints_per_tenant: self.max_endpoints_per_tenant,
            media_base_url: None,
            inline_media_max_bytes: self.inline_media_max_bytes,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `"info"` or `"whatsd=debug,info"`. `RUST_LOG` wins.
    pub filter: String,
    /// `"auto"` (human on a terminal, JSON lines otherwise), `"human"`
    /// (alias `"text"`) or `"json"`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".to_string(),
            format: "auto".to_string(),
        }
    }
}

/// Why a configuration was refused. Reported with exit code 78.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Kinds of value an environment variable is converted to.
#[derive(Clone, Copy)]
enum EnvKind {
    Str,
    Int,
    Bool,
    /// Comma-separated list of strings.
    List,
}

/// Every key the environment may set, as (TOML path, kind).
const ENV_KEYS: &[(&[&str], EnvKind)] = &[
    (&["listen"], EnvKind::Str),
    (&["data_dir"], EnvKind::Str),
    (&["master_key_file"], EnvKind::Str),
    (&["auth", "admin_token_file"], EnvKind::Str),
    (&["auth", "max_sockets_per_token"], EnvKind::Int),
    (&["auth", "ticket_ttl"], EnvKind::Str),
    (&["auth", "failure_limit"], EnvKind::Int),
    (&["auth", "failure_window"], EnvKind::Str),
    (&["auth", "max_tickets_per_principal"], EnvKind::Int),
    (&["api", "body_limit"], EnvKind::Str),
    (&["api", "request_timeout"], EnvKind::Str),
    (&["api", "max_connections"], EnvKind::Int),
    (&["api", "max_connections_per_address"], EnvKind::Int),
    (&["api", "header_read_timeout"], EnvKind::Str),
    (&["api", "idle_timeout"], EnvKind::Str),
    (&["api", "trusted_proxies"], EnvKind::List),
    (&["api", "ws_ping_interval"], EnvKind::Str),
    (&["api", "ws_send_timeout"], EnvKind::Str),
    (&["api", "public_url"], EnvKind::Str),
    (&["whatsapp", "ws_url"], EnvKind::Str),
    (&["whatsapp", "version"], EnvKind::Str),
    (&["whatsapp", "device_os"], EnvKind::Str),
    (&["whatsapp", "media_ca_file"], EnvKind::Str),
    (&["sessions", "activation_timeout"], EnvKind::Str),
    (&["sessions", "phone_poll_budget"], EnvKind::Str),
    (&["sessions", "start_concurrency"], EnvKind::Int),
    (&["sessions", "health_interval"], EnvKind::Str),
    (&["sessions", "stuck_after"], EnvKind::Str),
    (&["sessions", "silent_after"], EnvKind::Str),
    (&["sessions", "expiry"], EnvKind::Str),
    (&["sessions", "send_status_retention"], EnvKind::Str),
    (&["sessions", "shutdown_timeout"], EnvKind::Str),
    (&["sessions", "max_per_tenant"], EnvKind::Int),
    (&["limits", "sends_per_minute"], EnvKind::Int),
    (&["limits", "sends_per_hour"], EnvKind::Int),
    (&["limits", "sends_per_day"], EnvKind::Int),
    (&["limits", "qr_per_hour"], EnvKind::Int),
    (&["limits", "pair_codes_per_hour"], EnvKind::Int),
    (&["limits", "resets_per_hour"], EnvKind::Int),
    (&["limits", "human_pacing"], EnvKind::Bool),
    (&["webhooks", "url"], EnvKind::Str),
    (&["webhooks", "secret"], EnvKind::Str),
    (&["webhooks", "secret_file"], EnvKind::Str),
    (&["webhooks", "events"], EnvKind::List),
    (&["webhooks", "format"], EnvKind::Str),
    (&["webhooks", "allow_private_targets"], EnvKind::Bool),
    (&["webhooks", "timeout"], EnvKind::Str),
    (&["webhooks", "max_age"], EnvKind::Str),
    (&["webhooks", "initial_backoff"], EnvKind::Str),
    (&["webhooks", "max_backoff"], EnvKind::Str),
    (&["webhooks", "concurrency"], EnvKind::Int),
    (&["webhooks", "status_broadcast"], EnvKind::Str),
    (&["webhooks", "dead_letter_retention"], EnvKind::Str),
    (&["webhooks", "max_endpoints_per_tenant"], EnvKind::Int),
    (&["media", "max_image_bytes"], EnvKind::Str),
    (&["media", "max_video_bytes"], EnvKind::Str),
    (&["media", "max_audio_bytes"], EnvKind::Str),
    (&["media", "max_document_bytes"], EnvKind::Str),
    (&["media", "max_sticker_bytes"], EnvKind::Str),
    (&["media", "url_timeout"], EnvKind::Str),
    (&["media", "allow_private_urls"], EnvKind::Bool),
    (&["webhooks", "inline_media_max_bytes"], EnvKind::Str),
    (&["media", "retention_days"], EnvKind::Int),
    (&["log", "filter"], EnvKind::Str),
    (&["log", "format"], EnvKind::Str),
];

fn env_name(path: &[&str]) -> String {
    format!("{ENV_PREFIX}{}", path.join("_").to_ascii_uppercase())
}

impl Config {
    /// Reads `path` (if any), overlays the process environment, and checks
    /// the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment (tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let file_path = path.map_or_else(|| PathBuf::from("<none>"), Path::to_path_buf);
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: file_path.clone(),
            message: describe_toml_error(&text, &e),
        };
        // The file alone first: its errors carry line and column.
        toml::from_str::<Config>(&text).map_err(parse_err)?;
        let mut table: toml::Table = toml::from_str(&text).map_err(parse_err)?;
        let mut overlaid = Vec::new();
        for (var, value) in env {
            if !var.starts_with(ENV_PREFIX) || NOT_CONFIG_VARS.contains(&var.as_str()) {
                continue;
            }
            let Some((key, kind)) = ENV_KEYS.iter().find(|(key, _)| env_name(key) == var) else {
                return Err(ConfigError::Env {
                    var,
                    message: "not a configuration key (see config/example.toml)".to_string(),
                });
            };
            let value = match kind {
                EnvKind::Str => toml::Value::String(value),
                EnvKind::Int => match value.trim().parse::<i64>() {
                    Ok(n) => toml::Value::Integer(n),
                    Err(_) => {
                        return Err(ConfigError::Env {
                            var,
                            message: "expected an integer".to_string(),
                        });
                    }
                },
                EnvKind::Bool => match value.trim() {
                    "true" | "1" | "yes" => toml::Value::Boolean(true),
                    "false" | "0" | "no" => toml::Value::Boolean(false),
                    _ => {
                        return Err(ConfigError::Env {
                            var,
                            message: "expected true or false".to_string(),
                        });
                    }
                },
                EnvKind::List => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.to_string()))
                        .collect(),
                ),
            };
            set_path(&mut table, key, value);
            overlaid.push(var);
        }
        let config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Env {
                var: overlaid.join(", "),
                message: without_values(e.message()),
            })?;
        config.check()?;
        Ok(config)
    }

    /// Semantic checks the types cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.listen_addr().is_err() {
            return bad(format!(
                "listen = {:?} is not an address like \"127.0.0.1:8080\"",
                self.listen
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir must not be empty".into());
        }
        if let Some(url) = &self.whatsapp.ws_url
            && !(url.starts_with("ws://") || url.starts_with("wss://"))
        {
            return bad(format!(
                "whatsapp.ws_url = {url:?} must start with ws:// or wss://"
            ));
        }
        if let Some(version) = &self.whatsapp.version
            && parse_version(version).is_none()
        {
            return bad(format!(
                "whatsapp.version = {version:?} must look like \"2.3000.1023456789\""
            ));
        }
        if let Some(os) = &self.whatsapp.device_os
            && os.trim().is_empty()
        {
            return bad("whatsapp.device_os must not be empty".into());
        }
        if let Some(base) = &self.api.public_url
            && (url::Url::parse(base).map_or(true, |u| {
                !matches!(u.scheme(), "http" | "https")
                    || u.query().is_some()
                    || u.fragment().is_some()
            }))
        {
            return bad(format!(
                "api.public_url = {base:?} must be an http:// or https:// URL without query"
            ));
        }
        if self.media.retention_days == 0 {
            return bad("media.retention_days must be at least 1".into());
        }
        if let Some(path) = &self.whatsapp.media_ca_file {
            // The boundary first: a release build refuses the key whatever
            // the file holds.
            if crate::wa::build_info::cert_chain_verification_enforced() {
                return bad(
                    "whatsapp.media_ca_file (WHATSD_WHATSAPP_MEDIA_CA_FILE) is for tests against \
                     fakewa only: this build verifies WhatsApp's certificate chain and refuses \
                     to trust another CA"
                        .into(),
                );
            }
            if let Err(e) = crate::wa::http::read_ca_file(path) {
                return bad(format!("whatsapp.media_ca_file: {e}"));
            }
        }
        let positive = [
            ("auth.ticket_ttl", self.auth.ticket_ttl),
            ("auth.failure_window", self.auth.failure_window),
            ("api.request_timeout", self.api.request_timeout),
            ("api.header_read_timeout", self.api.header_read_timeout),
            ("api.idle_timeout", self.api.idle_timeout),
            ("api.ws_ping_interval", self.api.ws_ping_interval),
            ("api.ws_send_timeout", self.api.ws_send_timeout),
            (
                "sessions.activation_timeout",
                self.sessions.activation_timeout,
            ),
            (
                "sessions.phone_poll_budget",
                self.sessions.phone_poll_budget,
            ),
            ("sessions.health_interval", self.sessions.health_interval),
            ("sessions.stuck_after", self.sessions.stuck_after),
            ("sessions.silent_after", self.sessions.silent_after),
            ("sessions.expiry", self.sessions.expiry),
            ("sessions.shutdown_timeout", self.sessions.shutdown_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return bad(format!("{name} must be greater than zero"));
            }
        }
        let counts = [
            (
                "auth.max_sockets_per_token",
                self.auth.max_sockets_per_token,
            ),
            ("auth.failure_limit", self.auth.failure_limit as usize),
            ("api.max_connections", self.api.max_connections),
            (
                "api.max_connections_per_address",
                self.api.max_connections_per_address,
            ),
            (
                "auth.max_tickets_per_principal",
                self.auth.max_tickets_per_principal,
            ),
            (
                "sessions.start_concurrency",
                self.sessions.start_concurrency,
            ),
            ("sessions.max_per_tenant", self.sessions.max_per_tenant),
        ];
        for (name, value) in counts {
            if value == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if let Err(message) = self.limits.check() {
            return bad(format!("limits.{message}"));
        }
        if self.auth.ticket_ttl > Duration::from_secs(300) {
            return bad("auth.ticket_ttl must be at most 5m: tickets travel in URLs".into());
        }
        if self.sessions.send_status_retention.as_millis()
            < crate::session::outbound::IDEMPOTENCY_WINDOW_MS as u128
        {
            return bad(
                "sessions.send_status_retention must be at least 1d: an Idempotency-Key names its send for a day"
                    .into(),
            );
        }
        if self.api.body_limit < 1024 {
            return bad("api.body_limit must be at least 1KiB".into());
        }
        self.webhooks.build_settings(false)?;
        if let Err(message) = self.media.check() {
            return bad(message);
        }
        if !matches!(self.log.format.as_str(), "auto" | "human" | "text" | "json") {
            return bad(format!(
                "log.format = {:?} must be \"auto\", \"human\" or \"json\"",
                self.log.format
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            return bad(format!(
                "log.filter = {:?} is not a valid tracing filter",
                self.log.filter
            ));
        }
        Ok(())
    }

    /// The listen address (checked by [`Config::check`]).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("listen = {:?}", self.listen)))
    }

    /// The supervisor's settings.
    pub fn session_config(&self) -> SessionConfig {
        let defaults = WaConfig::default();
        let wa = WaConfig {
            ws_url: self.whatsapp.ws_url.clone(),
            version: self.whatsapp.version.as_deref().and_then(parse_version),
            device_os: self
                .whatsapp
                .device_os
                .clone()
                .unwrap_or(defaults.device_os),
            media_ca_file: self.whatsapp.media_ca_file.clone(),
        };
        let s = &self.sessions;
        SessionConfig {
            wa,
            activation_timeout: s.activation_timeout,
            phone_poll_budget: s.phone_poll_budget,
            start_concurrency: s.start_concurrency,
            health_interval: s.health_interval,
            stuck_after: s.stuck_after,
            silent_after: s.silent_after,
            expiry: s.expiry,
            shutdown_timeout: s.shutdown_timeout,
            max_per_tenant: s.max_per_tenant,
            send_status_retention: s.send_status_retention,
            limits: self.limits,
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry((*first).to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

/// `"2.3000.1023456789"` → `(2, 3000, 1023456789)`.
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.trim().split('.');
    let v = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(v)
}

/// `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"14d"`, `"90"` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"30s\", \"5m\" or \"500ms\""))?;
    let scale = |mul: u64| {
        n.checked_mul(mul)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    };
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => scale(1),
        "m" => scale(60),
        "h" => scale(3600),
        "d" => scale(86_400),
        other => Err(format!(
            "{s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
        )),
    }
}

/// `"1MiB"`, `"64KiB"`, `"1000"` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"1MiB\" or \"65536\""))?;
    let mul = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1024,
        "MiB" | "M" => 1024 * 1024,
        "GiB" | "G" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    String(String),
}

// The messages below never include the value: a config error may be
// logged, and the value on a mistyped line may be a secret.

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumberOrString::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a duration like \"30s\" or seconds"))?
    {
        NumberOrString::Number(secs) => Ok(Duration::from_secs(secs)),
        NumberOrString::String(s) => parse_duration(&s).map_err(|_| {
            serde::de::Error::custom(
                "not a duration like \"30s\", \"5m\" or \"500ms\" (units: ms, s, m, h, d)",
            )
        }),
    }
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumberOrString::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a size like \"1MiB\" or bytes"))?
    {
        NumberOrString::Number(n) => Ok(n),
        NumberOrString::String(s) => parse_size(&s).map_err(|_| {
            serde::de::Error::custom(
                "not a size like \"1MiB\" or \"65536\" (units: B, KiB, MiB, GiB)",
            )
        }),
    }
}

fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// An address range like `"10.0.0.0/8"`, `"fd00::/8"` or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_bits(u32::from(ip).into(), 32, self.prefix)
                    == mask_bits(u32::from(net).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_bits(u128::from(ip), 128, self.prefix)
                    == mask_bits(u128::from(net), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `width`-bit number.
fn mask_bits(n: u128, width: u32, prefix: u8) -> u128 {
    let drop = width.saturating_sub(u32::from(prefix));
    if drop >= 128 { 0 } else { (n >> drop) << drop }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || "trusted_proxies entries must look like \"10.0.0.0/8\" or \"::1\"".to_string();
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let network = network.to_canonical();
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => width,
        };
        if prefix > width {
            return Err(bad());
        }
        Ok(Self { network, prefix })
    }
}

/// A file error as `line L, column C, key `K`: what is wrong`, without the
/// offending line or value (toml's own rendering quotes both).
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = without_values(error.message());
    let Some(offset) = error.span().map(|s| s.start.min(text.len())) else {
        return message;
    };
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = text
        .get(line_start..offset)
        .map_or(offset - line_start, |t| t.chars().count())
        + 1;
    match key_at(text, line_start, offset) {
        Some(key) => format!("line {line}, column {column}, key `{key}`: {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// The dotted key whose value holds `offset`, if it looks like a key: the
/// left side of the nearest `key =` line at or above, under its table.
fn key_at(text: &str, line_start: usize, offset: usize) -> Option<String> {
    let is_key = |k: &str| {
        !k.is_empty()
            && k.len() <= 80
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
    };
    let mut key = None;
    let mut table = None;
    let head = &text[..line_start];
    let current = text[line_start..].lines().next().unwrap_or("");
    let column = offset - line_start;
    if let Some(eq) = current.find('=') {
        // An error left of `=` is in the key itself: do not repeat it.
        if column <= eq {
            return None;
        }
        key = Some(current[..eq].trim().to_string());
    }
    for l in head.lines().rev() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix('[') {
            table = Some(
                name.trim_matches(|c| c == '[' || c == ']')
                    .trim()
                    .to_string(),
            );
            break;
        }
        if key.is_none()
            && let Some(eq) = l.find('=')
        {
            key = Some(l[..eq].trim().to_string());
        }
    }
    let key = key.filter(|k| is_key(k))?;
    Some(match table.filter(|t| is_key(t)) {
        Some(table) => format!("{table}.{key}"),
        None => key,
    })
}

/// A deserializer message with any quoted value taken out: serde writes
/// `invalid type: string "…", expected …` and `unknown variant `…``.
fn without_values(message: &str) -> String {
    let message = message.trim_end();
    for kind in [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
    ] {
        if message.starts_with(kind) {
            return match message.find(", expected") {
                Some(i) => format!("{kind}{}", &message[i..]),
                None => kind.to_string(),
            };
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_with_env(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn no_file_gives_working_defaults() {
        let c = Config::load_with_env(None, Vec::new()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./sessions"));
        assert_eq!(c.api.body_limit, 1024 * 1024);
        assert_eq!(c.sessions.expiry, Duration::from_secs(14 * 86_400));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("14d").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("2048").unwrap(), 2048);
        assert!(parse_size("1 furlong").is_err());
        assert_eq!(
            parse_version("2.3000.1023456789"),
            Some((2, 3000, 1_023_456_789))
        );
        assert_eq!(parse_version("2.3000"), None);
        assert_eq!(parse_version("2.3000.1.4"), None);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = load("[api]\nbody_limt = \"1MiB\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("body_limt"), "{err}");
        let err = load("lisen = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load(
            "listen = \"127.0.0.1:1\"\n[sessions]\nstart_concurrency = 4\n",
            &[
                ("WHATSD_LISTEN", "127.0.0.1:0"),
                ("WHATSD_SESSIONS_START_CONCURRENCY", "7"),
                ("WHATSD_WHATSAPP_VERSION", "2.3000.1"),
                ("WHATSD_API_BODY_LIMIT", "2MiB"),
                ("WHATSD_ADMIN_TOKEN", "not config"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.sessions.start_concurrency, 7);
        assert_eq!(c.api.body_limit, 2 << 20);
        assert_eq!(c.session_config().wa.version, Some((2, 3000, 1)));
    }

    #[test]
    fn bad_environment_is_named() {
        let err = load("", &[("WHATSD_SESSIONS_START_CONCURRENCY", "many")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("WHATSD_SESSIONS_START_CONCURRENCY"), "{err}");
        let err = load("", &[("WHATSD_LISTN", "x")]).unwrap_err().to_string();
        assert!(err.contains("WHATSD_LISTN"), "{err}");
        let err = load("", &[("WHATSD_API_REQUEST_TIMEOUT", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("WHATSD_API_REQUEST_TIMEOUT"), "{err}");
        assert!(!err.contains("soon"), "values are never repeated: {err}");
    }

    #[test]
    fn file_errors_name_the_place_but_never_the_value() {
        let secret = "wd_0123456789abcdef0123456789abcdef";
        for (text, needle) in [
            (
                format!("[auth]\nfailure_limit = 3\nadmin_token_file = {secret}\n"),
                "line 3, column 20, key `auth.admin_token_file`",
            ),
            (
                format!("[webhooks]\nsecret = 42{secret}\n"),
                "line 2, column 12, key `webhooks.secret`: invalid float",
            ),
            (
                format!("[webhooks]\nsecret = [\"{secret}\"]\n"),
                "line 2, column 10, key `webhooks.secret`: invalid type, expected a string",
            ),
            (
                format!("[api]\nrequest_timeout = \"{secret}\"\n"),
                "line 2, column 19, key `api.request_timeout`",
            ),
        ] {
            let err = load(&text, &[]).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains(secret), "{text}: {err}");
            assert!(!err.contains("0123456789"), "{text}: {err}");
        }
    }

    #[test]
    fn trusted_proxies_are_cidrs() {
        let c = load(
            "[api]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\", \"192.168.1.7\"]\n",
            &[],
        )
        .unwrap();
        let has = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            c.api.trusted_proxies.iter().any(|p| p.contains(ip))
        };
        assert!(has("10.200.3.4"));
        assert!(has("::ffff:10.0.0.1"), "v4-mapped addresses count as v4");
        assert!(has("::1") && has("192.168.1.7"));
        assert!(!has("11.0.0.1") && !has("192.168.1.8") && !has("::2"));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let err = load("[api]\ntrusted_proxies = [\"10.0.0.0/99\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.trusted_proxies"), "{err}");
    }

    #[test]
    fn semantic_checks() {
        for (text, needle) in [
            ("listen = \"localhost\"", "listen"),
            ("[whatsapp]\nws_url = \"http://x\"", "ws_url"),
            ("[whatsapp]\nversion = \"latest\"", "version"),
            ("[sessions]\nstart_concurrency = 0", "start_concurrency"),
            ("[api]\nrequest_timeout = \"0s\"", "request_timeout"),
            ("[log]\nformat = \"xml\"", "format"),
            ("[limits]\nsends_per_minute = 0", "limits.sends_per_minute"),
            ("[limits]\nsends_per_day = 2000000", "limits.sends_per_day"),
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    /// A PEM file holding one certificate, for `whatsapp.media_ca_file`.
    fn test_ca_file() -> &'static str {
        static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PATH.get_or_init(|| {
            let path = std::env::temp_dir()
                .join(format!("whatsd-config-test-ca-{}.pem", std::process::id()));
            std::fs::write(
                &path,
                "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n",
            )
            .unwrap();
            path.display().to_string()
        })
    }

    /// Test builds skip the certificate-chain check, so they take a media
    /// CA; the file must hold certificates. (Release builds refuse the key:
    /// checked by CI against the release binary.)
    #[test]
    fn media_ca_file_must_hold_certificates() {
        assert!(!crate::wa::build_info::cert_chain_verification_enforced());
        let ca = test_ca_file();
        let config = load(&format!("[whatsapp]\nmedia_ca_file = {ca:?}"), &[]).unwrap();
        assert_eq!(
            config.session_config().wa.media_ca_file.as_deref(),
            Some(std::path::Path::new(ca))
        );
        let err = load("[whatsapp]\nmedia_ca_file = \"/nonexistent/ca.pem\"", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("media_ca_file") && err.contains("cannot read"),
            "{err}"
        );
        let empty =
            std::env::temp_dir().join(format!("whatsd-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = load(
            &format!(
                "[whatsapp]\nmedia_ca_file = {:?}",
                empty.display().to_string()
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("holds no certificate"), "{err}");
    }

    #[test]
    fn every_env_key_maps_to_a_real_key() {
        for (path, kind) in ENV_KEYS {
            let value = match kind {
                EnvKind::Int => "3",
                EnvKind::Bool => "true",
                EnvKind::List if path[1] == "trusted_proxies" => "10.0.0.0/8, ::1",
                EnvKind::List => "message.received, session.connected",
                EnvKind::Str if path[0] == "webhooks" => match path[1] {
                    // A global endpoint needs its secret; the pair is below.
                    "url" => continue,
                    "secret" => "0123456789abcdef",
                    "format" => "cloud_api",
                    "status_broadcast" => "drop",
                    "secret_file" => "/tmp/x",
                    "inline_media_max_bytes" => "1MiB",
                    _ => "1m",
                },
                EnvKind::Str => match *path.last().unwrap() {
                    "listen" => "127.0.0.1:0",
                    "ws_url" => "ws://127.0.0.1:1/ws/chat",
                    "version" => "2.3000.1",
                    "body_limit" => "2MiB",
                    p if p.starts_with("max_") && p.ends_with("_bytes") => "100KiB",
                    "format" => "json",
                    "filter" => "debug",
                    "media_ca_file" => test_ca_file(),
                    p if p.ends_with("_file") || p == "data_dir" => "/tmp/x",
                    "device_os" => "x",
                    "public_url" => "https://whatsd.example.com",
                    "send_status_retention" => "2d",
                    _ => "1m",
                },
            };
            let var = env_name(path);
            load("", &[(&var, value)]).unwrap_or_else(|e| panic!("{var}: {e}"));
        }
        let config = load(
            "",
            &[
                ("WHATSD_WEBHOOKS_URL", "https://hooks.example.com/x"),
                ("WHATSD_WEBHOOKS_SECRET", "0123456789abcdef"),
            ],
        )
        .unwrap();
        let global = config.webhooks.settings().unwrap().global.unwrap();
        assert_eq!(global.url, "https://hooks.example.com/x");
        let err = load("", &[("WHATSD_WEBHOOKS_URL", "http://127.0.0.1:1/x")]).unwrap_err();
        assert!(err.to_string().contains("webhooks."), "{err}");
    }
}

#[cfg(test)]
mod proptests;
