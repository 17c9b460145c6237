//! Who is calling: the admin (everything) or a tenant (its own sessions).
//!
//! Tokens are 32 random bytes, hex-encoded with a `wd_` prefix, shown once
//! and kept only as SHA-256 hashes; a presented token is hashed and compared
//! in constant time. Browsers cannot put headers on a WebSocket, so they
//! trade a token for a one-time ticket (`POST /v1/ws-tickets`) that expires
//! quickly; long-lived tokens never travel in URLs. Addresses that keep
//! failing are answered 429 for the rest of their window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};
use tokio::sync::Notify;

use super::AppState;
use super::error::ApiError;
use super::listener::PeerAddr;
use crate::config::AuthConfig;

/// Prefix of every token whatsd issues; makes leaked tokens greppable.
pub const TOKEN_PREFIX: &str = "wd_";
const TICKET_PREFIX: &str = "wdt_";
/// The principal name the admin is counted under for socket limits.
const ADMIN_KEY: &str = "admin";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant(String),
}

impl Principal {
    /// Whether this caller may see sessions of `tenant`.
    pub fn can_see(&self, tenant: &str) -> bool {
        match self {
            Self::Admin => true,
            Self::Tenant(own) => own == tenant,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Self::Admin)
    }

    /// Requires the admin; tenants get 403.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs the admin token"))
        }
    }

    fn socket_key(&self) -> String {
        match self {
            Self::Admin => ADMIN_KEY.to_string(),
            Self::Tenant(id) => format!("tenant:{id}"),
        }
    }
}

/// SHA-256 of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn random_hex(prefix: &str) -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::internal(&"the system random generator failed"))?;
    let mut out = String::with_capacity(prefix.len() + 64);
    out.push_str(prefix);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

/// Compares two token hashes in constant time: `b`'s HMAC under a
/// per-process key is checked against `a` by ring's constant-time verify.
fn hashes_equal(key: &hmac::Key, a: &[u8; 32], b: &[u8; 32]) -> bool {
    let tag = hmac::sign(key, b);
    hmac::verify(key, a, tag.as_ref()).is_ok()
}

/// A fresh long-lived token.
pub fn new_token() -> Result<String, ApiError> {
    random_hex(TOKEN_PREFIX)
}

struct Ticket {
    principal: Principal,
    expires: Instant,
}

struct FailureWindow {
    started: Instant,
    count: u32,
}

/// Authentication state shared by all requests.
pub struct Auth {
    admin_hash: [u8; 32],
    /// Random per process; only for constant-time comparisons.
    compare_key: hmac::Key,
    /// Token hash → tenant id.
    tenants: RwLock<HashMap<[u8; 32], String>>,
    /// Ticket hash → ticket.
    tickets: Mutex<HashMap<[u8; 32], Ticket>>,
    failures: Mutex<HashMap<IpAddr, FailureWindow>>,
    sockets: Mutex<HashMap<String, usize>>,
    /// All open WebSockets, for shutdown.
    open_sockets: Mutex<usize>,
    sockets_closed: Notify,
    config: AuthConfig,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(
        admin_hash: [u8; 32],
        tenants: impl IntoIterator<Item = ([u8; 32], String)>,
        config: AuthConfig,
    ) -> Self {
        let compare_key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &admin_hash));
        Self {
            admin_hash,
            compare_key,
            tenants: RwLock::new(tenants.into_iter().collect()),
            tickets: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            sockets: Mutex::new(HashMap::new()),
            open_sockets: Mutex::new(0),
            sockets_closed: Notify::new(),
            config,
        }
    }

    /// The principal a token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let hash = hash_token(token);
        if hashes_equal(&self.compare_key, &hash, &self.admin_hash) {
            return Some(Principal::Admin);
        }
        let tenants = self.tenants.read().ok()?;
        // The map is keyed by the hash of a 256-bit random token: how long a
        // lookup takes says nothing useful about any token.
        let (stored, tenant) = tenants.get_key_value(&hash)?;
        if !hashes_equal(&self.compare_key, &hash, stored) {
            return None;
        }
        Some(Principal::Tenant(tenant.clone()))
    }

    /// Installs (or replaces) a tenant's token hash.
    pub fn set_tenant_token(&self, tenant: &str, hash: [u8; 32]) {
        if let Ok(mut tenants) = self.tenants.write() {
            tenants.retain(|_, t| t != tenant);
            tenants.insert(hash, tenant.to_string());
        }
    }

    pub fn remove_tenant(&self, tenant: &str) {
        if let Ok(mut tenants) = self.tenants.write() {
            tenants.retain(|_, t| t != tenant);
        }
        if let Ok(mut tickets) = self.tickets.lock() {
            tickets.retain(|_, t| t.principal != Principal::Tenant(tenant.to_string()));
        }
    }

    /// A one-time ticket for the WebSocket, valid for `ticket_ttl`.
    pub fn issue_ticket(&self, principal: Principal) -> Result<(String, Duration), ApiError> {
        let ticket = random_hex(TICKET_PREFIX)?;
        let now = Instant::now();
        let mut tickets = self
            .tickets
            .lock()
            .map_err(|_| ApiError::internal(&"ticket lock poisoned"))?;
        tickets.retain(|_, t| t.expires > now);
        tickets.insert(
            hash_token(&ticket),
            Ticket {
                principal,
                expires: now + self.config.ticket_ttl,
            },
        );
        Ok((ticket, self.config.ticket_ttl))
    }

    /// Spends a ticket: `None` if unknown, used or expired.
    pub fn redeem_ticket(&self, ticket: &str) -> Option<Principal> {
        let hash = hash_token(ticket);
        let mut tickets = self.tickets.lock().ok()?;
        let found = tickets.remove(&hash)?;
        (found.expires > Instant::now()).then_some(found.principal)
    }

    /// 429 while `ip` is over its failure budget.
    pub fn check_throttle(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = ip else { return Ok(()) };
        let Ok(mut failures) = self.failures.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let window = self.config.failure_window;
        if let Some(entry) = failures.get(&ip) {
            let elapsed = now.saturating_duration_since(entry.started);
            if elapsed >= window {
                failures.remove(&ip);
            } else if entry.count >= self.config.failure_limit {
                let retry = (window - elapsed).as_secs().max(1);
                return Err(ApiError::too_many(
                    "too_many_auth_failures",
                    "too many failed authentications from this address; retry later",
                    retry,
                ));
            }
        }
        Ok(())
    }

    pub fn record_failure(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        let now = Instant::now();
        let window = self.config.failure_window;
        if failures.len() > 10_000 {
            failures.retain(|_, e| now.saturating_duration_since(e.started) < window);
        }
        let entry = failures.entry(ip).or_insert(FailureWindow {
            started: now,
            count: 0,
        });
        if now.saturating_duration_since(entry.started) >= window {
            *entry = FailureWindow {
                started: now,
                count: 0,
            };
        }
        entry.count = entry.count.saturating_add(1);
        if entry.count == self.config.failure_limit {
            tracing::warn!(%ip, "address reached the authentication failure limit");
        }
    }

    /// Takes one of the principal's WebSocket slots; `None` when all are used.
    pub fn acquire_socket(self: &Arc<Self>, principal: &Principal) -> Option<SocketSlot> {
        let key = principal.socket_key();
        let mut sockets = self.sockets.lock().ok()?;
        let used = sockets.entry(key.clone()).or_insert(0);
        if *used >= self.config.max_sockets_per_token {
            return None;
        }
        *used += 1;
        if let Ok(mut open) = self.open_sockets.lock() {
            *open += 1;
        }
        Some(SocketSlot {
            auth: Arc::clone(self),
            key,
        })
    }

    /// Waits until every WebSocket has closed, or `timeout` passes.
    pub async fn sockets_closed(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.sockets_closed.notified();
                if self.open_sockets.lock().map(|n| *n == 0).unwrap_or(true) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// One open WebSocket; gives its slot back on drop.
pub struct SocketSlot {
    auth: Arc<Auth>,
    key: String,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        if let Ok(mut sockets) = self.auth.sockets.lock()
            && let Some(used) = sockets.get_mut(&self.key)
        {
            *used = used.saturating_sub(1);
            if *used == 0 {
                sockets.remove(&self.key);
            }
        }
        if let Ok(mut open) = self.auth.open_sockets.lock() {
            *open = open.saturating_sub(1);
        }
        self.auth.sockets_closed.notify_waiters();
    }
}

/// The caller's address, when the server recorded it.
pub fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|ConnectInfo(PeerAddr(addr))| addr.ip())
}

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Authenticates with the `Authorization: Bearer` header.
pub fn authenticate_parts(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
    let ip = peer_ip(parts);
    state.auth.check_throttle(ip)?;
    let Some(token) = bearer(parts) else {
        state.auth.record_failure(ip);
        return Err(ApiError::unauthorized(
            "send `Authorization: Bearer <token>`",
        ));
    };
    match state.auth.authenticate(token) {
        Some(principal) => Ok(principal),
        None => {
            state.auth.record_failure(ip);
            Err(ApiError::unauthorized("invalid token"))
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate_parts(state, parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(limit: u32) -> Arc<Auth> {
        let config = AuthConfig {
            failure_limit: limit,
            max_sockets_per_token: 2,
            ..AuthConfig::default()
        };
        Arc::new(Auth::new(
            hash_token("admin-secret"),
            [(hash_token("t1-secret"), "t1".to_string())],
            config,
        ))
    }

    #[test]
    fn tokens_map_to_principals() {
        let a = auth(3);
        assert_eq!(a.authenticate("admin-secret"), Some(Principal::Admin));
        assert_eq!(
            a.authenticate("t1-secret"),
            Some(Principal::Tenant("t1".into()))
        );
        assert_eq!(a.authenticate("nope"), None);
        a.set_tenant_token("t1", hash_token("t1-new"));
        assert_eq!(a.authenticate("t1-secret"), None);
        assert_eq!(
            a.authenticate("t1-new"),
            Some(Principal::Tenant("t1".into()))
        );
        a.remove_tenant("t1");
        assert_eq!(a.authenticate("t1-new"), None);
        let token = new_token().unwrap();
        assert!(token.starts_with("wd_") && token.len() == 67);
    }

    #[test]
    fn tickets_work_once() {
        let a = auth(3);
        let (ticket, ttl) = a.issue_ticket(Principal::Admin).unwrap();
        assert_eq!(ttl, Duration::from_secs(30));
        assert_eq!(a.authenticate(&ticket), None, "a ticket is not a token");
        assert_eq!(a.redeem_ticket(&ticket), Some(Principal::Admin));
        assert_eq!(a.redeem_ticket(&ticket), None);
    }

    #[test]
    fn failures_throttle_an_address() {
        let a = auth(3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(a.check_throttle(Some(ip)).is_ok());
            a.record_failure(Some(ip));
        }
        let err = a.check_throttle(Some(ip)).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(a.check_throttle(Some(other)).is_ok());
    }

    #[test]
    fn socket_slots_are_bounded_and_returned() {
        let a = auth(3);
        let p = Principal::Tenant("t1".into());
        let s1 = a.acquire_socket(&p).unwrap();
        let _s2 = a.acquire_socket(&p).unwrap();
        assert!(a.acquire_socket(&p).is_none());
        assert!(a.acquire_socket(&Principal::Admin).is_some());
        drop(s1);
        assert!(a.acquire_socket(&p).is_some());
    }
}
