//! Who is calling: the admin (everything) or a tenant (its own sessions).
//!
//! Tokens are 32 random bytes, hex-encoded with a `wd_` prefix, shown once
//! and kept only as SHA-256 hashes; a presented token is hashed and compared
//! in constant time. Browsers cannot put headers on a WebSocket, so they
//! trade a token for a one-time ticket (`POST /v1/ws-tickets`) that expires
//! quickly; long-lived tokens never travel in URLs.
//!
//! Every tenant token has a *generation*: a number that changes whenever
//! the token is rotated or the tenant deleted (and is never reused, so a
//! tenant re-created under the same id gets a fresh one). Tickets and open
//! WebSockets remember the generation they were granted under; a ticket of
//! an older generation is refused, and sockets hear of every revocation
//! (see [`Auth::revocations`]) and close with 4401.
//!
//! Only failed authentications are throttled: an address (the client's,
//! behind a trusted proxy: see [`Auth::client_ip`]) whose failures exceed
//! the budget gets 429 instead of 401 for the rest of its window, while a
//! request with a valid token is always served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};
use tokio::sync::watch;

use super::AppState;
use super::error::ApiError;
use super::listener::PeerAddr;
use crate::config::{AuthConfig, Cidr};

/// Prefix of every token whatsd issues; makes leaked tokens greppable.
pub const TOKEN_PREFIX: &str = "wd_";
const TICKET_PREFIX: &str = "wdt_";
/// The principal name the admin is counted under for socket limits.
const ADMIN_KEY: &str = "admin";
/// The admin token's generation: it changes only with a restart, which
/// closes every socket and forgets every ticket anyway.
const ADMIN_GENERATION: u64 = 0;

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
    crate::hex::push_hex(&mut out, &bytes);
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

/// A principal together with the generation of the token that proved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub principal: Principal,
    pub generation: u64,
}

struct Ticket {
    grant: Grant,
    expires: Instant,
}

/// The tenants' token hashes and generations, changed together.
#[derive(Default)]
struct TenantTokens {
    /// Token hash → tenant id.
    by_hash: HashMap<[u8; 32], String>,
    /// Tenant id → generation of its current token.
    generation: HashMap<String, u64>,
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
    tenants: RwLock<TenantTokens>,
    /// Source of generations; never hands out the same one twice.
    next_generation: AtomicU64,
    /// Bumped on every rotation or deletion; sockets re-check their grant.
    revoked: watch::Sender<u64>,
    /// Ticket hash → ticket.
    tickets: Mutex<HashMap<[u8; 32], Ticket>>,
    failures: Mutex<HashMap<IpAddr, FailureWindow>>,
    /// Peers whose `X-Forwarded-For` names the client.
    trusted_proxies: Vec<Cidr>,
    sockets: Mutex<HashMap<String, usize>>,
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
        let mut tokens = TenantTokens::default();
        let mut next = ADMIN_GENERATION + 1;
        for (hash, tenant) in tenants {
            tokens.generation.insert(tenant.clone(), next);
            tokens.by_hash.insert(hash, tenant);
            next += 1;
        }
        Self {
            admin_hash,
            compare_key,
            tenants: RwLock::new(tokens),
            next_generation: AtomicU64::new(next),
            revoked: watch::Sender::new(0),
            tickets: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            trusted_proxies: Vec::new(),
            sockets: Mutex::new(HashMap::new()),
            config,
        }
    }

    /// Trusts `X-Forwarded-For` from these peers (`api.trusted_proxies`).
    pub fn with_trusted_proxies(mut self, proxies: Vec<Cidr>) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// The principal a token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        self.grant(token).map(|g| g.principal)
    }

    /// The principal a token belongs to, with its token's generation.
    pub fn grant(&self, token: &str) -> Option<Grant> {
        let hash = hash_token(token);
        if hashes_equal(&self.compare_key, &hash, &self.admin_hash) {
            return Some(Grant {
                principal: Principal::Admin,
                generation: ADMIN_GENERATION,
            });
        }
        let tenants = self.tenants.read().ok()?;
        // The map is keyed by the hash of a 256-bit random token: how long a
        // lookup takes says nothing useful about any token.
        let (stored, tenant) = tenants.by_hash.get_key_value(&hash)?;
        if !hashes_equal(&self.compare_key, &hash, stored) {
            return None;
        }
        let generation = *tenants.generation.get(tenant)?;
        Some(Grant {
            principal: Principal::Tenant(tenant.clone()),
            generation,
        })
    }

    /// Whether `grant` is still the principal's current token generation
    /// (false once the token was rotated or the tenant deleted).
    pub fn is_current(&self, grant: &Grant) -> bool {
        match &grant.principal {
            Principal::Admin => grant.generation == ADMIN_GENERATION,
            Principal::Tenant(tenant) => self
                .tenants
                .read()
                .map(|t| t.generation.get(tenant) == Some(&grant.generation))
                .unwrap_or(false),
        }
    }

    /// Changes on every token rotation and tenant deletion; holders of a
    /// [`Grant`] re-check it with [`Auth::is_current`].
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revoked.subscribe()
    }

    fn fresh_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Installs (or replaces) a tenant's token hash. A replaced token's
    /// tickets and sockets are revoked.
    pub fn set_tenant_token(&self, tenant: &str, hash: [u8; 32]) {
        if let Ok(mut tenants) = self.tenants.write() {
            tenants.by_hash.retain(|_, t| t != tenant);
            tenants.by_hash.insert(hash, tenant.to_string());
            let generation = self.fresh_generation();
            tenants.generation.insert(tenant.to_string(), generation);
        }
        self.forget_tickets(tenant);
        self.revoked.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Forgets a deleted tenant: its token, tickets and sockets are revoked.
    pub fn remove_tenant(&self, tenant: &str) {
        if let Ok(mut tenants) = self.tenants.write() {
            tenants.by_hash.retain(|_, t| t != tenant);
            tenants.generation.remove(tenant);
        }
        self.forget_tickets(tenant);
        self.revoked.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn forget_tickets(&self, tenant: &str) {
        if let Ok(mut tickets) = self.tickets.lock() {
            tickets.retain(|_, t| t.grant.principal != Principal::Tenant(tenant.to_string()));
        }
    }

    /// A one-time ticket for the WebSocket, valid for `ticket_ttl`. At most
    /// `max_tickets_per_principal` may be outstanding per principal.
    pub fn issue_ticket(&self, grant: Grant) -> Result<(String, Duration), ApiError> {
        let ticket = random_hex(TICKET_PREFIX)?;
        let now = Instant::now();
        let mut tickets = self
            .tickets
            .lock()
            .map_err(|_| ApiError::internal(&"ticket lock poisoned"))?;
        tickets.retain(|_, t| t.expires > now);
        let mut outstanding = 0;
        let mut first_expiry: Option<Instant> = None;
        for t in tickets
            .values()
            .filter(|t| t.grant.principal == grant.principal)
        {
            outstanding += 1;
            first_expiry = Some(first_expiry.map_or(t.expires, |e| e.min(t.expires)));
        }
        if outstanding >= self.config.max_tickets_per_principal {
            let retry = first_expiry
                .map(|e| e.saturating_duration_since(now).as_secs() + 1)
                .unwrap_or(1);
            return Err(ApiError::too_many(
                "too_many_tickets",
                "this principal holds as many unused WebSocket tickets as it may; use or let some expire",
                retry,
            ));
        }
        tickets.insert(
            hash_token(&ticket),
            Ticket {
                grant,
                expires: now + self.config.ticket_ttl,
            },
        );
        Ok((ticket, self.config.ticket_ttl))
    }

    /// Spends a ticket: `None` if unknown, used, expired, or issued under
    /// a token that has since been rotated or deleted.
    pub fn redeem_ticket(&self, ticket: &str) -> Option<Grant> {
        let hash = hash_token(ticket);
        let found = self.tickets.lock().ok()?.remove(&hash)?;
        (found.expires > Instant::now() && self.is_current(&found.grant)).then_some(found.grant)
    }

    /// The address failures are counted under: the peer's, or, when the
    /// peer is a trusted proxy, the rightmost `X-Forwarded-For` entry that
    /// is not itself a trusted proxy (entries to its left are whatever the
    /// client chose to send).
    pub fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = peer_ip(parts)?;
        if !self.is_trusted_proxy(peer) {
            return Some(peer);
        }
        let mut entries = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        while let Some(entry) = entries.pop() {
            let Ok(ip) = entry.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
                // The proxy itself wrote this entry: count it as the proxy.
                return Some(peer);
            };
            if !self.is_trusted_proxy(ip) {
                return Some(ip);
            }
        }
        Some(peer)
    }

    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// Turns a failed authentication into its answer: 429 once `ip` is
    /// over its failure budget, else `error` (and the failure is counted).
    pub fn failed(&self, ip: Option<IpAddr>, error: ApiError) -> ApiError {
        if let Err(throttled) = self.check_throttle(ip) {
            return throttled;
        }
        self.record_failure(ip);
        error
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
        Some(SocketSlot {
            auth: Arc::clone(self),
            key,
        })
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
    }
}

/// The TCP peer's address, when the server recorded it.
pub fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|ConnectInfo(PeerAddr(addr))| addr.ip().to_canonical())
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

/// Authenticates with the `Authorization: Bearer` header. A valid token is
/// never throttled; failures count against the client's address.
pub fn authenticate_parts(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
    grant_from_parts(state, parts).map(|g| g.principal)
}

/// [`authenticate_parts`], with the token's generation.
pub fn grant_from_parts(state: &AppState, parts: &Parts) -> Result<Grant, ApiError> {
    let Some(token) = bearer(parts) else {
        let ip = state.auth.client_ip(parts);
        return Err(state.auth.failed(
            ip,
            ApiError::unauthorized("send `Authorization: Bearer <token>`"),
        ));
    };
    match state.auth.grant(token) {
        Some(grant) => Ok(grant),
        None => {
            let ip = state.auth.client_ip(parts);
            Err(state
                .auth
                .failed(ip, ApiError::unauthorized("invalid token")))
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate_parts(state, parts)
    }
}

impl FromRequestParts<AppState> for Grant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        grant_from_parts(state, parts)
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

    fn admin() -> Grant {
        Grant {
            principal: Principal::Admin,
            generation: ADMIN_GENERATION,
        }
    }

    #[test]
    fn tickets_work_once() {
        let a = auth(3);
        let (ticket, ttl) = a.issue_ticket(admin()).unwrap();
        assert_eq!(ttl, Duration::from_secs(30));
        assert_eq!(a.authenticate(&ticket), None, "a ticket is not a token");
        assert_eq!(a.redeem_ticket(&ticket), Some(admin()));
        assert_eq!(a.redeem_ticket(&ticket), None);
    }

    #[test]
    fn rotation_and_deletion_revoke_grants_and_tickets() {
        let a = auth(3);
        let old = a.grant("t1-secret").unwrap();
        let (ticket, _) = a.issue_ticket(old.clone()).unwrap();
        let revocations = a.revocations();
        a.set_tenant_token("t1", hash_token("t1-new"));
        assert!(revocations.has_changed().unwrap());
        assert!(!a.is_current(&old));
        assert_eq!(a.redeem_ticket(&ticket), None, "issued before the rotation");
        let new = a.grant("t1-new").unwrap();
        assert!(a.is_current(&new));
        // A ticket that survived in the map is still refused by generation.
        a.tickets.lock().unwrap().insert(
            hash_token("stale"),
            Ticket {
                grant: old,
                expires: Instant::now() + Duration::from_secs(30),
            },
        );
        assert_eq!(a.redeem_ticket("stale"), None);
        a.remove_tenant("t1");
        assert!(!a.is_current(&new));
        // Re-created under the same id: a fresh generation.
        a.set_tenant_token("t1", hash_token("t1-again"));
        assert!(!a.is_current(&new));
        assert!(a.is_current(&a.grant("t1-again").unwrap()));
    }

    #[test]
    fn outstanding_tickets_are_capped_per_principal() {
        let config = AuthConfig {
            max_tickets_per_principal: 2,
            ..AuthConfig::default()
        };
        let a = Auth::new(
            hash_token("admin-secret"),
            [(hash_token("t1-secret"), "t1".to_string())],
            config,
        );
        let t1 = a.grant("t1-secret").unwrap();
        let first = a.issue_ticket(t1.clone()).unwrap().0;
        a.issue_ticket(t1.clone()).unwrap();
        let err = a.issue_ticket(t1.clone()).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code, "too_many_tickets");
        assert!(
            a.issue_ticket(admin()).is_ok(),
            "other principals unaffected"
        );
        assert!(a.redeem_ticket(&first).is_some());
        assert!(a.issue_ticket(t1).is_ok(), "a spent ticket frees its slot");
    }

    #[test]
    fn forwarded_for_counts_only_behind_trusted_proxies() {
        let a = Auth::new(hash_token("admin-secret"), [], AuthConfig::default())
            .with_trusted_proxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let parts = |peer: &str, xff: &[&str]| {
            let mut builder = axum::http::Request::builder();
            for v in xff {
                builder = builder.header("x-forwarded-for", *v);
            }
            let (mut parts, _) = builder.body(()).unwrap().into_parts();
            let addr: std::net::SocketAddr = format!("{peer}:1234").parse().unwrap();
            parts.extensions.insert(ConnectInfo(PeerAddr(addr)));
            parts
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Untrusted peers cannot choose their address.
        assert_eq!(
            a.client_ip(&parts("192.0.2.1", &["1.2.3.4"])),
            ip("192.0.2.1")
        );
        // Behind the proxy: the rightmost untrusted entry.
        assert_eq!(
            a.client_ip(&parts("10.0.0.1", &["6.6.6.6, 1.2.3.4", "10.0.0.9"])),
            ip("1.2.3.4")
        );
        assert_eq!(a.client_ip(&parts("10.0.0.1", &[])), ip("10.0.0.1"));
        assert_eq!(a.client_ip(&parts("10.0.0.1", &["junk"])), ip("10.0.0.1"));
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
