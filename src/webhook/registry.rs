//! The endpoint registry: which endpoints exist, per scope (global,
//! tenant, session), kept in memory and in the store. The API's endpoint
//! create/replace/list/delete, the tenant quota, and the removal of the
//! endpoints an owner leaves behind (a deleted tenant, a gone session).

use std::collections::HashSet;
use std::sync::Arc;

use super::dead_letters::DeadScope;
use super::endpoint::{
    self, Endpoint, EndpointId, EndpointSpec, InvalidEndpoint, Scope, SessionRef,
};
use super::{Inner, WebhookError, Webhooks, lock, now_ms, target};
use crate::session::Owner;

impl Webhooks {
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
    pub(super) async fn delete_session_endpoints(
        &self,
        owner: &SessionRef,
    ) -> Result<(), WebhookError> {
        for endpoint in self.endpoints(&Scope::Session(owner.clone())) {
            self.delete_endpoint(&endpoint.id).await?;
        }
        Ok(())
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

impl Inner {
    pub(super) fn endpoint(&self, id: &EndpointId) -> Option<Arc<Endpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id.scope)
            .and_then(|m| m.get(&id.name))
            .cloned()
    }

    pub(super) fn install(&self, endpoint: Endpoint) {
        let mut all = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        all.entry(endpoint.id.scope.clone())
            .or_default()
            .insert(endpoint.id.name.clone(), Arc::new(endpoint));
    }

    pub(super) fn uninstall(&self, id: &EndpointId) {
        let mut all = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = all.get_mut(&id.scope) {
            m.remove(&id.name);
            if m.is_empty() {
                all.remove(&id.scope);
            }
        }
    }
}
