//! Sessions: the state machine, one task per session, and the supervisor
//! that owns them. Commands come in through [`Supervisor`]; every change is
//! persisted to the store first, then broadcast as a [`SessionEvent`].

mod actor;
pub mod contacts;
mod event;
pub mod limits;
pub mod media;
pub mod outbound;
pub mod phone;
pub mod sniff;
mod state;
mod supervisor;

use std::time::Duration;

use serde::Serialize;

pub use event::{AckStatus, EventKind, Identity, PairingQr, Party, SessionEvent};
pub use state::{Reason, SessionState};
pub use supervisor::Supervisor;

use crate::proto::v1::SessionRecord;
use crate::store::StoreError;

/// Who a session belongs to right now. Data attached to a session is owned
/// by (session id, incarnation), never by the id alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Owner {
    pub session: String,
    pub tenant: String,
    pub incarnation: String,
}

impl Owner {
    pub fn of(record: &SessionRecord) -> Self {
        Self {
            session: record.id.clone(),
            tenant: record.tenant.clone(),
            incarnation: record.incarnation.clone(),
        }
    }
}

/// Where a session's messages and events go beyond the live broadcast: the
/// durable webhook outbox. Implemented by `crate::webhook`.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync {
    /// Durably records incoming messages; WhatsApp is acknowledged only
    /// after `Ok`. Must be idempotent (a message may come again).
    async fn messages(
        &self,
        owner: &Owner,
        me: Identity,
        batch: Vec<crate::wa::InboundMessage>,
    ) -> anyhow::Result<()>;

    /// Records a session event, in the order the session emits them. Runs
    /// on the session's task: it must not block for long.
    fn session_event(&self, event: &SessionEvent);

    /// Removes everything attached to `owner` (its session endpoints,
    /// queued deliveries and dead letters), durably. Called while deleting
    /// the session, before its record goes.
    async fn session_deleted(&self, owner: &Owner) -> anyhow::Result<()>;

    /// The session now belongs to `new` (another tenant, a new
    /// incarnation): what belonged to `old` alone (its session endpoints)
    /// is removed; deliveries already queued stay with the old tenant.
    async fn session_reassigned(&self, old: &Owner, new: &Owner) -> anyhow::Result<()>;
}

/// A new random incarnation id (32 hex digits).
pub fn new_incarnation() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    crate::hex::hex(&bytes)
}

/// How many transitions a record keeps.
pub const TRANSITIONS_KEPT: usize = 20;

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub wa: crate::wa::WaConfig,
    /// A pairing that has not reached `connected` this long after it began
    /// is stopped and its keys wiped.
    pub activation_timeout: Duration,
    /// How long to poll for a phone number the pairing did not report.
    pub phone_poll_budget: Duration,
    /// Sessions started at once when the daemon restarts.
    pub start_concurrency: usize,
    /// How often the health sweep runs.
    pub health_interval: Duration,
    /// A session in a transient state longer than this is restarted.
    pub stuck_after: Duration,
    /// A connected session that received nothing for this long is reconnected.
    pub silent_after: Duration,
    /// A paired session unreachable for this long is `failed(expired)`.
    pub expiry: Duration,
    /// Bound on stopping one session's client.
    pub shutdown_timeout: Duration,
    /// Sessions one tenant may hold.
    pub max_per_tenant: usize,
    /// How long the status of a send is kept after its last change (see
    /// [`outbound::expire`]); at least the idempotency window.
    pub send_status_retention: Duration,
    /// Rate limits before tenant and session overrides.
    pub limits: limits::Limits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            wa: crate::wa::WaConfig::default(),
            activation_timeout: Duration::from_secs(5 * 60),
            phone_poll_budget: Duration::from_secs(60),
            start_concurrency: 32,
            health_interval: Duration::from_secs(5 * 60),
            stuck_after: Duration::from_secs(2 * 60),
            silent_after: Duration::from_secs(5 * 60),
            expiry: Duration::from_secs(14 * 24 * 3600),
            shutdown_timeout: Duration::from_secs(10),
            max_per_tenant: 100,
            send_status_retention: Duration::from_secs(30 * 24 * 3600),
            limits: limits::Limits::default(),
        }
    }
}

/// What the API shows about a session.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    pub id: String,
    pub tenant: String,
    /// Internal: which incarnation of the id this is (see [`Owner`]).
    #[serde(skip)]
    pub incarnation: String,
    pub state: SessionState,
    pub reason: Option<Reason>,
    pub reason_message: Option<String>,
    pub phone: String,
    pub jid: String,
    pub lid: String,
    pub push_name: String,
    pub business_name: String,
    pub platform: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub paired_at_ms: i64,
    pub last_connected_at_ms: i64,
    pub transitions: Vec<TransitionInfo>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TransitionInfo {
    pub from: SessionState,
    pub to: SessionState,
    pub reason: Option<Reason>,
    pub at_ms: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PairCodeIssued {
    pub code: String,
    pub expires_at_ms: i64,
}

impl SessionInfo {
    pub(crate) fn from_record(r: &SessionRecord) -> Self {
        let state = SessionState::parse(&r.state).unwrap_or(SessionState::Failed);
        Self {
            id: r.id.clone(),
            tenant: r.tenant.clone(),
            incarnation: r.incarnation.clone(),
            state,
            reason: parse_reason(&r.reason),
            reason_message: (!r.reason_message.is_empty()).then(|| r.reason_message.clone()),
            phone: r.phone.clone(),
            jid: r.jid.clone(),
            lid: r.lid.clone(),
            push_name: r.push_name.clone(),
            business_name: r.business_name.clone(),
            platform: r.platform.clone(),
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            paired_at_ms: r.paired_at_ms,
            last_connected_at_ms: r.last_connected_at_ms,
            transitions: r
                .transitions
                .iter()
                .map(|t| TransitionInfo {
                    from: SessionState::parse(&t.from).unwrap_or(SessionState::Failed),
                    to: SessionState::parse(&t.to).unwrap_or(SessionState::Failed),
                    reason: parse_reason(&t.reason),
                    at_ms: t.at_ms,
                })
                .collect(),
        }
    }
}

pub(crate) fn parse_reason(s: &str) -> Option<Reason> {
    if s.is_empty() {
        return None;
    }
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("session {0} not found")]
    NotFound(String),
    #[error("session {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Quota(String),
    #[error("invalid session id {0:?}: use 1-64 characters from a-z, 0-9, '_' and '-'")]
    InvalidId(String),
    #[error("session {id} is {state}; cannot {action}")]
    InvalidState {
        id: String,
        state: SessionState,
        action: &'static str,
    },
    #[error("session {0} is not connected")]
    NotConnected(String),
    #[error("session {0} has never been paired: there is no account to send from")]
    NotPaired(String),
    #[error("pairing code refused ({reason}): {message}")]
    PairCode { reason: String, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("send failed: {0}")]
    Send(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("{0}")]
    RateLimited(limits::Exhausted),
    /// Mark-read without ids, and nothing received in that chat.
    #[error("{0}")]
    NothingToRead(String),
}

impl SupervisorError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::Quota(_) => "quota_exceeded",
            Self::InvalidId(_) => "invalid_id",
            Self::InvalidState { .. } => "invalid_state",
            Self::NotConnected(_) => "not_connected",
            Self::NotPaired(_) => "not_paired",
            Self::PairCode { .. } => "pair_code_rejected",
            Self::BadRequest(_) => "bad_request",
            Self::Send(_) => "send_failed",
            Self::Store(_) => "store_error",
            Self::ShuttingDown => "shutting_down",
            Self::Timeout(_) => "timeout",
            Self::RateLimited(_) => "rate_limited",
            Self::NothingToRead(_) => "nothing_to_read",
        }
    }
}

/// Session ids: `[a-z0-9_-]{1,64}`.
pub fn valid_session_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        for ok in ["a", "shop-1", "x_y", &"a".repeat(64)] {
            assert!(valid_session_id(ok), "{ok}");
        }
        for bad in ["", "../x", "A", "é", "a b", &"a".repeat(65), "a/b"] {
            assert!(!valid_session_id(bad), "{bad}");
        }
    }
}
