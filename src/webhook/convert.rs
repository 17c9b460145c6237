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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::endpoint::Format;
    use crate::webhook::payload::{Me, WebhookEvent};

    fn blinder() -> Blinder {
        Blinder::from_bytes(&[7; 32])
    }

    /// Session s1 of tenant acme, made at 1000 ms, converted as incarnation inc-1.
    fn sessions() -> LegacySessions {
        HashMap::from([(
            "s1".to_string(),
            LegacySession {
                tenant: "acme".into(),
                created_at_ms: 1_000,
                incarnation: "inc-1".into(),
            },
        )])
    }

    fn legacy_session_endpoint(session: &str) -> EndpointId {
        EndpointId::new(Scope::Session(SessionRef::new(session, "")), "hook")
    }

    fn endpoint_value(id: &EndpointId, tenant: &str, created_at_ms: i64) -> Vec<u8> {
        serde_json::to_vec(&Endpoint {
            id: id.clone(),
            tenant: tenant.into(),
            url: "http://127.0.0.1:9/hook".into(),
            secret: "secret".into(),
            events: vec![],
            format: Format::Whatsd,
            created_at_ms,
            updated_at_ms: created_at_ms,
        })
        .unwrap()
    }

    fn pending_value(endpoint: &EndpointId, session: &str, tenant: &str) -> Vec<u8> {
        serde_json::to_vec(&Pending {
            endpoint: endpoint.clone(),
            event: WebhookEvent {
                id: "e1".into(),
                kind: "message".into(),
                session: session.into(),
                tenant: tenant.into(),
                occurred_at: "2026-01-01T00:00:00.000Z".into(),
                me: Me::default(),
                data: serde_json::json!({}),
            },
            incarnation: String::new(),
            created_ms: 5,
            attempts: 2,
            next_ms: 0,
            last_error: None,
        })
        .unwrap()
    }

    #[test]
    fn a_session_endpoint_is_kept_only_for_the_session_it_was_made_for() {
        let (blinder, sessions) = (blinder(), sessions());
        let legacy = legacy_session_endpoint("s1");
        let mut renamed = Renamed::new();
        let (key, value) = endpoint(
            &endpoint_value(&legacy, "acme", 2_000),
            &sessions,
            &blinder,
            &mut renamed,
        )
        .expect("made after its session, same tenant: kept");
        let kept: Endpoint = serde_json::from_slice(&value).unwrap();
        assert_eq!(
            kept.id.scope,
            Scope::Session(SessionRef::new("s1", "inc-1"))
        );
        assert_eq!(key, kept.id.key(&blinder));
        assert_eq!(renamed[&legacy], Some(kept.id));

        // Older than the session, another tenant's, or an unknown session's:
        // it outlived an earlier session with that id.
        for (id, tenant, created_at_ms) in [
            (legacy.clone(), "acme", 500),
            (legacy.clone(), "other", 2_000),
            (legacy_session_endpoint("gone"), "acme", 2_000),
        ] {
            let mut renamed = Renamed::new();
            let value = endpoint_value(&id, tenant, created_at_ms);
            assert!(endpoint(&value, &sessions, &blinder, &mut renamed).is_none());
            assert_eq!(renamed[&id], None, "{id:?} of {tenant} at {created_at_ms}");
        }

        // A tenant's endpoint keeps its id; an unreadable value goes.
        let tenant = EndpointId::new(Scope::Tenant("acme".into()), "hook");
        let mut renamed = Renamed::new();
        let value = endpoint_value(&tenant, "acme", 0);
        let (key, _) = endpoint(&value, &sessions, &blinder, &mut renamed).expect("kept");
        assert_eq!(key, tenant.key(&blinder));
        assert_eq!(renamed[&tenant], Some(tenant.clone()));
        assert!(endpoint(b"{not json", &sessions, &blinder, &mut renamed).is_none());
    }

    #[test]
    fn an_outbox_item_follows_its_endpoint_and_gets_its_session_incarnation() {
        let (blinder, sessions) = (blinder(), sessions());
        let legacy = legacy_session_endpoint("s1");
        let converted = EndpointId::new(Scope::Session(SessionRef::new("s1", "inc-1")), "hook");
        let renamed = Renamed::from([(legacy.clone(), Some(converted.clone()))]);
        let seq = 42u64.to_be_bytes();
        let key = [b"old queue".as_slice(), &seq].concat();

        let value = pending_value(&legacy, "s1", "acme");
        let (new_key, value) =
            outbox_item(&key, &value, &sessions, &blinder, &renamed).expect("kept");
        let moved: Pending = serde_json::from_slice(&value).unwrap();
        assert_eq!(moved.endpoint, converted);
        assert_eq!(moved.incarnation, "inc-1");
        assert_eq!(moved.attempts, 2);
        assert_eq!(new_key, [moved.queue(&blinder), seq.to_vec()].concat());

        // Its endpoint dropped (or never seen): the item goes too.
        let dropped = Renamed::from([(legacy.clone(), None)]);
        let value = pending_value(&legacy, "s1", "acme");
        assert!(outbox_item(&key, &value, &sessions, &blinder, &dropped).is_none());
        assert!(outbox_item(&key, &value, &sessions, &blinder, &Renamed::new()).is_none());

        // A tenant endpoint's item keeps its endpoint; an event whose
        // session belongs to another tenant gets no incarnation.
        let tenant = EndpointId::new(Scope::Tenant("other".into()), "hook");
        let value = pending_value(&tenant, "s1", "other");
        let (_, moved) =
            outbox_item(&key, &value, &sessions, &blinder, &Renamed::new()).expect("kept");
        let moved: Pending = serde_json::from_slice(&moved).unwrap();
        assert_eq!((moved.endpoint, moved.incarnation.as_str()), (tenant, ""));

        // No room for a sequence number in the key, or an unreadable value.
        assert!(outbox_item(b"short", &value, &sessions, &blinder, &Renamed::new()).is_none());
        assert!(outbox_item(&key, b"{not json", &sessions, &blinder, &Renamed::new()).is_none());
    }
}
