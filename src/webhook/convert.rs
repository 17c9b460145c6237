//! Webhook entries of a format-1 store, converted during the store's
//! conversion to format 2 (see `crate::store::migrate`): keys that held
//! tenant and session ids in plain text become keyed hashes, and session
//! endpoints get the owner (session id, incarnation) they provably belong
//! to. Pure functions over opened values: the store re-seals the results.

use std::collections::HashMap;

use super::endpoint::{Endpoint, EndpointId, Scope, SessionRef};
use super::queue::Pending;
use crate::store::ids::Blinder;

/// What the conversion knows of a session from its format-1 record.
#[derive(Clone, Debug)]
pub(crate) struct LegacySession {
    pub tenant: String,
    pub created_at_ms: i64,
    /// The incarnation the converted record gets.
    pub incarnation: String,
}

/// Session id → what its record says.
pub(crate) type LegacySessions = HashMap<String, LegacySession>;

/// Legacy endpoint id → its new id (`None`: dropped).
pub(crate) type Renamed = HashMap<EndpointId, Option<EndpointId>>;

/// A format-1 endpoint under its new key, or `None` when it must go: a
/// session endpoint is kept only when it provably belongs to the session
/// its id names now (same tenant, made after the session); otherwise it
/// outlived an earlier session with that id.
pub(crate) fn endpoint(
    plain: &[u8],
    sessions: &LegacySessions,
    blinder: &Blinder,
    renamed: &mut Renamed,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut endpoint: Endpoint = serde_json::from_slice(plain).ok()?;
    let old = endpoint.id.clone();
    if let Scope::Session(owner) = &endpoint.id.scope {
        let belongs = sessions
            .get(&owner.id)
            .filter(|s| s.tenant == endpoint.tenant && endpoint.created_at_ms >= s.created_at_ms);
        let Some(session) = belongs else {
            tracing::warn!(endpoint = %old, "dropping a session webhook endpoint that outlived its session");
            renamed.insert(old, None);
            return None;
        };
        endpoint.id.scope = Scope::Session(SessionRef::new(&owner.id, &session.incarnation));
    }
    renamed.insert(old, Some(endpoint.id.clone()));
    let value = serde_json::to_vec(&endpoint).ok()?;
    Some((endpoint.id.key(blinder), value))
}

/// A format-1 outbox item (key: queue ‖ seq) under its new key, or `None`
/// when its endpoint was dropped.
pub(crate) fn outbox_item(
    key: &[u8],
    plain: &[u8],
    sessions: &LegacySessions,
    blinder: &Blinder,
    renamed: &Renamed,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut pending: Pending = serde_json::from_slice(plain).ok()?;
    if let Scope::Session(_) = pending.endpoint.scope {
        pending.endpoint = renamed.get(&pending.endpoint).cloned().flatten()?;
    }
    if pending.incarnation.is_empty() {
        pending.incarnation = sessions
            .get(&pending.event.session)
            .filter(|s| s.tenant == pending.event.tenant)
            .map(|s| s.incarnation.clone())
            .unwrap_or_default();
    }
    let seq = key.get(key.len().checked_sub(8)?..)?;
    let mut new_key = pending.queue(blinder);
    new_key.extend_from_slice(seq);
    Some((new_key, serde_json::to_vec(&pending).ok()?))
}
