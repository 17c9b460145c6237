//! REST handlers for webhook endpoints (tenant and session level), their
//! delivery status, and dead letters.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, check_id};
use super::openapi::{
    DeadLetterPage, DeadPath, DeliveryStatus, Endpoint, EndpointList, ErrorBody, Purged,
    Redelivering, SessionEndpointPath, SessionPath, TenantDeadPath, TenantEndpointPath, TenantPath,
};
use super::sessions::visible_session;
use crate::webhook::{
    DeadLetter, DeadScope, EndpointId, EndpointSpec, InvalidEndpoint, Scope, SessionRef,
    WebhookError, Webhooks,
};

/// Names that are routes of their own.
const RESERVED_NAMES: &[&str] = &["status", "dead-letters"];

fn webhooks(state: &AppState) -> Result<&Webhooks, ApiError> {
    state.webhooks.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_unavailable",
            "webhooks are not running in this process",
        )
    })
}

impl From<WebhookError> for ApiError {
    fn from(err: WebhookError) -> Self {
        match err {
            WebhookError::Invalid(InvalidEndpoint::PrivateTarget(m)) => ApiError::unprocessable(
                "private_target",
                InvalidEndpoint::PrivateTarget(m).to_string(),
            ),
            WebhookError::Invalid(e) => ApiError::unprocessable("invalid_webhook", e.to_string()),
            WebhookError::Store(e) => e.into(),
            WebhookError::Setup(e) => ApiError::internal(&e),
            WebhookError::Quota(m) => ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", m),
        }
    }
}

/// The tenant id from the path, if it exists and the caller may act for it
/// (404 otherwise).
fn tenant_scope(state: &AppState, principal: &Principal, tenant: &str) -> Result<(), ApiError> {
    check_id("tenant", tenant).map_err(|m| ApiError::bad_request("invalid_id", m))?;
    if principal.can_see(tenant) && state.store.get_tenant(tenant)?.is_some() {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "not_found",
            format!("no tenant {tenant:?}"),
        ))
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    crate::webhook::endpoint::check_name(name)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    if RESERVED_NAMES.contains(&name) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("{name:?} is reserved"),
        ));
    }
    Ok(())
}

fn endpoint_not_found(id: &EndpointId) -> ApiError {
    ApiError::not_found("not_found", format!("no webhook endpoint {id}"))
}

async fn put(
    state: &AppState,
    id: EndpointId,
    tenant: &str,
    spec: EndpointSpec,
) -> Result<Response, ApiError> {
    check_name(&id.name)?;
    let (endpoint, created) = webhooks(state)?.put_endpoint(id, tenant, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(endpoint.view())).into_response())
}

fn list(state: &AppState, scope: Scope) -> Result<Json<serde_json::Value>, ApiError> {
    let endpoints: Vec<_> = webhooks(state)?
        .endpoints(&scope)
        .iter()
        .map(|e| e.view())
        .collect();
    Ok(Json(json!({ "webhooks": endpoints })))
}

fn show(state: &AppState, id: EndpointId) -> Result<Json<serde_json::Value>, ApiError> {
    check_name(&id.name)?;
    match webhooks(state)?.endpoint(&id) {
        Some(e) => Ok(Json(e.view())),
        None => Err(endpoint_not_found(&id)),
    }
}

async fn delete(state: &AppState, id: EndpointId) -> Result<StatusCode, ApiError> {
    check_name(&id.name)?;
    if webhooks(state)?.delete_endpoint(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(endpoint_not_found(&id))
    }
}

// ---- tenant level --------------------------------------------------------

/// The tenant's webhook endpoints.
#[utoipa::path(get, path = "/tenants/{id}/webhooks", tag = "webhooks",
    params(TenantPath),
    responses(
        (status = 200, description = "endpoints", body = EndpointList),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
    ))]
pub async fn tenant_list(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    tenant_scope(&state, &principal, &tenant)?;
    list(&state, Scope::Tenant(tenant))
}

/// Create or replace a tenant webhook endpoint.
#[utoipa::path(put, path = "/tenants/{id}/webhooks/{name}", tag = "webhooks",
    params(TenantEndpointPath),
    request_body = EndpointSpec,
    responses(
        (status = 200, description = "replaced", body = Endpoint),
        (status = 201, description = "created", body = Endpoint),
        (status = 403, description = "`quota_exceeded`: `webhooks.max_endpoints_per_tenant` reached", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
        (status = 422, description = "`invalid_webhook`: bad url, secret or event type; `private_target`: a loopback, private or metadata address without `webhooks.allow_private_targets`; or the body does not fit", body = ErrorBody),
        (status = 503, description = "`webhooks_unavailable`, `timeout`", body = ErrorBody),
    ))]
pub async fn tenant_put(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((tenant, name)): ApiPath<(String, String)>,
    ApiJson(spec): ApiJson<EndpointSpec>,
) -> Result<Response, ApiError> {
    tenant_scope(&state, &principal, &tenant)?;
    let id = EndpointId::new(Scope::Tenant(tenant.clone()), name);
    put(&state, id, &tenant, spec).await
}

/// Show a tenant webhook endpoint.
#[utoipa::path(get, path = "/tenants/{id}/webhooks/{name}", tag = "webhooks",
    params(TenantEndpointPath),
    responses(
        (status = 200, description = "the endpoint", body = Endpoint),
        (status = 404, description = "`not_found`: no such tenant or endpoint", body = ErrorBody),
    ))]
pub async fn tenant_show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((tenant, name)): ApiPath<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    tenant_scope(&state, &principal, &tenant)?;
    show(&state, EndpointId::new(Scope::Tenant(tenant), name))
}

/// Delete a tenant webhook endpoint and its pending deliveries.
#[utoipa::path(delete, path = "/tenants/{id}/webhooks/{name}", tag = "webhooks",
    params(TenantEndpointPath),
    responses(
        (status = 204, description = "deleted, with its pending deliveries"),
        (status = 404, description = "`not_found`: no such tenant or endpoint", body = ErrorBody),
    ))]
pub async fn tenant_delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((tenant, name)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    tenant_scope(&state, &principal, &tenant)?;
    delete(&state, EndpointId::new(Scope::Tenant(tenant), name)).await
}

/// Delivery status of every endpoint of the tenant and of its sessions.
#[utoipa::path(get, path = "/tenants/{id}/webhooks/status", tag = "webhooks",
    params(TenantPath),
    responses(
        (status = 200, description = "per-endpoint status: queue depth, oldest pending age, attempts, last error, last success", body = DeliveryStatus),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
    ))]
pub async fn tenant_status(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    tenant_scope(&state, &principal, &tenant)?;
    let webhooks = webhooks(&state)?;
    let endpoints = webhooks.tenant_endpoints(&tenant);
    Ok(Json(json!({ "endpoints": webhooks.status(&endpoints) })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Dead letters with an id above this one (default 0).
    #[serde(default)]
    #[param(required = false, minimum = 0)]
    pub after: i64,
    /// Page size (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

fn dead_view(id: u64, dead: &DeadLetter) -> serde_json::Value {
    json!({
        "id": id.to_string(),
        "endpoint": dead.pending.endpoint.to_string(),
        "reason": dead.reason,
        "died_at_ms": dead.died_ms,
        "attempts": dead.pending.attempts,
        "last_error": dead.pending.last_error,
        "event": dead.pending.event,
    })
}

/// 1 to 19 decimal digits (no sign), as the document's pattern says.
pub(super) fn dead_id(raw: &str) -> Result<u64, ApiError> {
    let digits = (1..=19).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| raw.parse().ok()).flatten().ok_or_else(|| {
        ApiError::bad_request("invalid_id", format!("{raw:?} is not a dead-letter id"))
    })
}

// One implementation of each dead-letter operation; the tenant routes and
// the admin routes differ only in the scope they pass.

fn list_dead(
    state: &AppState,
    scope: DeadScope<'_>,
    page: Page,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = page.limit.unwrap_or(100);
    let (Ok(after), Ok(limit @ 1..=1000)) = (u64::try_from(page.after), usize::try_from(limit))
    else {
        return Err(ApiError::bad_request(
            "bad_query",
            "after must be at least 0, limit 1 to 1000",
        ));
    };
    let dead = webhooks(state)?.dead_letters(scope, after, limit)?;
    let next = (dead.len() == limit).then(|| dead.last().map(|(id, _)| id.to_string()));
    let items: Vec<_> = dead.iter().map(|(id, d)| dead_view(*id, d)).collect();
    Ok(Json(
        json!({ "dead_letters": items, "next_after": next.flatten() }),
    ))
}

async fn redeliver_one(
    state: &AppState,
    scope: DeadScope<'_>,
    id: &str,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = dead_id(id)?;
    if webhooks(state)?.redeliver(id, scope).await? {
        Ok(Json(json!({ "redelivering": 1 })))
    } else {
        Err(ApiError::not_found(
            "not_found",
            format!("no dead letter {id} (or its endpoint was deleted)"),
        ))
    }
}

async fn delete_one(
    state: &AppState,
    scope: DeadScope<'_>,
    id: &str,
) -> Result<StatusCode, ApiError> {
    let id = dead_id(id)?;
    if webhooks(state)?.purge_dead(Some(id), scope).await? == 1 {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "not_found",
            format!("no dead letter {id}"),
        ))
    }
}

async fn purge_all(
    state: &AppState,
    scope: DeadScope<'_>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let purged = webhooks(state)?.purge_dead(None, scope).await?;
    Ok(Json(json!({ "purged": purged })))
}

/// The tenant's dead letters, oldest first.
#[utoipa::path(get, path = "/tenants/{id}/webhooks/dead-letters", tag = "webhooks",
    params(TenantPath, Page),
    responses(
        (status = 200, description = "dead letters, oldest first, and `next_after`", body = DeadLetterPage),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
    ))]
pub async fn dead_list(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<serde_json::Value>, ApiError> {
    tenant_scope(&state, &principal, &tenant)?;
    list_dead(&state, DeadScope::Tenant(&tenant), page)
}

/// Redeliver one dead letter.
#[utoipa::path(post, path = "/tenants/{id}/webhooks/dead-letters/{dead}/redeliver", tag = "webhooks",
    params(TenantDeadPath),
    responses(
        (status = 200, description = "queued again", body = Redelivering),
        (status = 404, description = "`not_found`: no such tenant or dead letter, or its endpoint is gone", body = ErrorBody),
    ))]
pub async fn dead_redeliver(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    tenant_scope(&state, &principal, &tenant)?;
    redeliver_one(&state, DeadScope::Tenant(&tenant), &id).await
}

/// Redeliver all the tenant's dead letters (to the end of their queues).
#[utoipa::path(post, path = "/tenants/{id}/webhooks/dead-letters/redeliver", tag = "webhooks",
    params(TenantPath),
    responses(
        (status = 200, description = "how many were queued again", body = Redelivering),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
    ))]
pub async fn dead_redeliver_all(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    tenant_scope(&state, &principal, &tenant)?;
    let webhooks = webhooks(&state)?;
    let scope = DeadScope::Tenant(&tenant);
    let mut count = 0;
    for (id, _) in webhooks.dead_letters(scope, 0, usize::MAX)? {
        if webhooks.redeliver(id, scope).await? {
            count += 1;
        }
    }
    Ok(Json(json!({ "redelivering": count })))
}

/// Delete one dead letter.
#[utoipa::path(delete, path = "/tenants/{id}/webhooks/dead-letters/{dead}", tag = "webhooks",
    params(TenantDeadPath),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "`not_found`: no such tenant or dead letter", body = ErrorBody),
    ))]
pub async fn dead_delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    tenant_scope(&state, &principal, &tenant)?;
    delete_one(&state, DeadScope::Tenant(&tenant), &id).await
}

/// Purge the tenant's dead letters.
#[utoipa::path(delete, path = "/tenants/{id}/webhooks/dead-letters", tag = "webhooks",
    params(TenantPath),
    responses(
        (status = 200, description = "how many were purged", body = Purged),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
    ))]
pub async fn dead_purge(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    tenant_scope(&state, &principal, &tenant)?;
    purge_all(&state, DeadScope::Tenant(&tenant)).await
}

// ---- admin: every dead letter (global endpoints' too) ---------------------

/// Every dead letter, global endpoints' and every tenant's, oldest first (admin).
#[utoipa::path(get, path = "/webhooks/dead-letters", tag = "webhooks",
    params(Page),
    responses(
        (status = 200, description = "dead letters, oldest first, and `next_after`", body = DeadLetterPage),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
    ))]
pub async fn admin_dead_list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require_admin()?;
    list_dead(&state, DeadScope::All, page)
}

/// Redeliver one dead letter (admin).
#[utoipa::path(post, path = "/webhooks/dead-letters/{dead}/redeliver", tag = "webhooks",
    params(DeadPath),
    responses(
        (status = 200, description = "queued again", body = Redelivering),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dead letter, or its endpoint is gone", body = ErrorBody),
    ))]
pub async fn admin_dead_redeliver(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require_admin()?;
    redeliver_one(&state, DeadScope::All, &id).await
}

/// Delete one dead letter (admin).
#[utoipa::path(delete, path = "/webhooks/dead-letters/{dead}", tag = "webhooks",
    params(DeadPath),
    responses(
        (status = 204, description = "deleted"),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dead letter", body = ErrorBody),
    ))]
pub async fn admin_dead_delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    delete_one(&state, DeadScope::All, &id).await
}

/// Purge every dead letter (admin).
#[utoipa::path(delete, path = "/webhooks/dead-letters", tag = "webhooks",
    responses(
        (status = 200, description = "how many were purged", body = Purged),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
    ))]
pub async fn admin_dead_purge(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require_admin()?;
    purge_all(&state, DeadScope::All).await
}

// ---- session level (replaces the tenant's endpoints for that session) -----

/// A session's endpoints belong to this incarnation of its id.
fn session_scope(info: &crate::session::SessionInfo) -> Scope {
    Scope::Session(SessionRef::new(&info.id, &info.incarnation))
}

/// The session's own webhook endpoints (they replace the tenant's for this session).
#[utoipa::path(get, path = "/sessions/{id}/webhooks", tag = "webhooks",
    params(SessionPath),
    responses(
        (status = 200, description = "endpoints", body = EndpointList),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
    ))]
pub async fn session_list(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(session): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let info = visible_session(&state, &principal, &session).await?;
    list(&state, session_scope(&info))
}

/// Create or replace a session webhook endpoint.
#[utoipa::path(put, path = "/sessions/{id}/webhooks/{name}", tag = "webhooks",
    params(SessionEndpointPath),
    request_body = EndpointSpec,
    responses(
        (status = 200, description = "replaced", body = Endpoint),
        (status = 201, description = "created", body = Endpoint),
        (status = 403, description = "`quota_exceeded`: `webhooks.max_endpoints_per_tenant` reached", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 422, description = "`invalid_webhook`: bad url, secret or event type; `private_target`: a loopback, private or metadata address without `webhooks.allow_private_targets`; or the body does not fit", body = ErrorBody),
        (status = 503, description = "`webhooks_unavailable`, `timeout`", body = ErrorBody),
    ))]
pub async fn session_put(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((session, name)): ApiPath<(String, String)>,
    ApiJson(spec): ApiJson<EndpointSpec>,
) -> Result<Response, ApiError> {
    let info = visible_session(&state, &principal, &session).await?;
    let id = EndpointId::new(session_scope(&info), name);
    put(&state, id, &info.tenant, spec).await
}

/// Show a session webhook endpoint.
#[utoipa::path(get, path = "/sessions/{id}/webhooks/{name}", tag = "webhooks",
    params(SessionEndpointPath),
    responses(
        (status = 200, description = "the endpoint", body = Endpoint),
        (status = 404, description = "`not_found`: no such session or endpoint", body = ErrorBody),
    ))]
pub async fn session_show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((session, name)): ApiPath<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let info = visible_session(&state, &principal, &session).await?;
    show(&state, EndpointId::new(session_scope(&info), name))
}

/// Delete a session webhook endpoint and its pending deliveries.
#[utoipa::path(delete, path = "/sessions/{id}/webhooks/{name}", tag = "webhooks",
    params(SessionEndpointPath),
    responses(
        (status = 204, description = "deleted, with its pending deliveries"),
        (status = 404, description = "`not_found`: no such session or endpoint", body = ErrorBody),
    ))]
pub async fn session_delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((session, name)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let info = visible_session(&state, &principal, &session).await?;
    delete(&state, EndpointId::new(session_scope(&info), name)).await
}
