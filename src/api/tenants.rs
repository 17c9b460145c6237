//! REST handlers for tenants, their tokens, and WebSocket tickets.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Grant, Principal, hash_token, new_token};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, check_id};
use super::openapi::{ErrorBody, Tenant, TenantList, TenantPath, TenantWithToken, WsTicket};
use super::qr::{now_ms, rfc3339_ms};
use super::sessions::DEFAULT_TENANT;
use crate::session::limits::{LimitOverride, Limits};
use crate::store::tenants::TenantRecord;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: String,
}

fn view(record: &TenantRecord, sessions: usize) -> serde_json::Value {
    json!({
        "id": record.id,
        "created_at": rfc3339_ms(record.created_at_ms),
        "created_at_ms": record.created_at_ms,
        "token_issued_at_ms": record.token_issued_at_ms,
        "sessions": sessions,
    })
}

async fn session_count(state: &AppState, tenant: &str) -> usize {
    state
        .supervisor
        .list()
        .await
        .iter()
        .filter(|s| s.tenant == tenant)
        .count()
}

/// The tenant, if the caller may see it (404 otherwise).
fn visible_tenant(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<TenantRecord, ApiError> {
    check_id("tenant", id).map_err(|m| ApiError::bad_request("invalid_id", m))?;
    let not_found = || ApiError::not_found("not_found", format!("no tenant {id:?}"));
    if !principal.can_see(id) {
        return Err(not_found());
    }
    state.store.get_tenant(id)?.ok_or_else(not_found)
}

/// Create a tenant (admin); its token is shown once.
#[utoipa::path(post, path = "/tenants", tag = "tenants", operation_id = "create_tenant",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "created, with its `token`", body = TenantWithToken),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
        (status = 409, description = "`already_exists`", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CreateTenant>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    check_id("tenant", &req.id).map_err(|m| ApiError::unprocessable("invalid_id", m))?;
    let token = new_token()?;
    let now = now_ms();
    let record = TenantRecord {
        version: 0,
        id: req.id.clone(),
        token_hash: hash_token(&token),
        created_at_ms: now,
        token_issued_at_ms: now,
    };
    if state.store.get_tenant(&req.id)?.is_none()
        && let Some(webhooks) = &state.webhooks
    {
        // Anything a deleted tenant of this id left behind (a crash during its
        // delete) is not inherited.
        webhooks.purge_tenant(&req.id).await?;
    }
    if !state.store.create_tenant(&record).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!(
                "tenant {:?} already exists; rotate its token instead",
                req.id
            ),
        ));
    }
    state.auth.set_tenant_token(&record.id, record.token_hash);
    tracing::info!(tenant = %record.id, "tenant created");
    let mut body = view(&record, 0);
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The tenants the caller may see (a tenant token: its own).
#[utoipa::path(get, path = "/tenants", tag = "tenants", operation_id = "list_tenants",
    responses((status = 200, description = "tenants", body = TenantList)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sessions = state.supervisor.list().await;
    let tenants: Vec<_> = state
        .store
        .list_tenants()?
        .iter()
        .filter(|t| principal.can_see(&t.id))
        .map(|t| view(t, sessions.iter().filter(|s| s.tenant == t.id).count()))
        .collect();
    Ok(Json(json!({ "tenants": tenants })))
}

/// Show a tenant.
#[utoipa::path(get, path = "/tenants/{id}", tag = "tenants", operation_id = "show_tenant",
    params(TenantPath),
    responses(
        (status = 200, description = "the tenant", body = Tenant),
        (status = 404, description = "`not_found`: no such tenant (or not the caller's)", body = ErrorBody),
    ))]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = visible_tenant(&state, &principal, &id)?;
    let count = session_count(&state, &id).await;
    Ok(Json(view(&record, count)))
}

/// Delete a tenant that owns no sessions (admin), with its webhook
/// endpoints and dead letters.
#[utoipa::path(delete, path = "/tenants/{id}", tag = "tenants", operation_id = "delete_tenant",
    params(TenantPath),
    responses(
        (status = 204, description = "deleted"),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
        (status = 409, description = "`tenant_not_empty`: the tenant still owns sessions; `default_tenant`: the default tenant cannot be deleted", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    visible_tenant(&state, &principal, &id)?;
    if id == DEFAULT_TENANT {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "default_tenant",
            "the default tenant holds sessions created without a tenant; it cannot be deleted",
        ));
    }
    let count = session_count(&state, &id).await;
    if count > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant_not_empty",
            format!(
                "tenant {id:?} still owns {count} session(s); delete them or move them \
                 (PATCH /v1/sessions/{{id}}) first"
            ),
        ));
    }
    // Its webhook data first, the record last: until the record is gone the
    // tenant exists and a retried delete finishes the job.
    if let Some(webhooks) = &state.webhooks {
        webhooks.purge_tenant(&id).await?;
    }
    state.store.delete_tenant(&id).await?;
    state.auth.remove_tenant(&id);
    tracing::info!(tenant = %id, "tenant deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new token for the tenant; the old one stops working at once.
/// The admin may rotate any tenant's token, a tenant its own.
#[utoipa::path(post, path = "/tenants/{id}/token", tag = "tenants",
    params(TenantPath),
    responses(
        (status = 200, description = "the tenant, with its new `token`", body = TenantWithToken),
        (status = 404, description = "`not_found`: no such tenant (or not the caller's)", body = ErrorBody),
    ))]
pub async fn rotate_token(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut record = visible_tenant(&state, &principal, &id)?;
    let token = new_token()?;
    record.token_hash = hash_token(&token);
    record.token_issued_at_ms = now_ms();
    state.store.put_tenant(&record).await?;
    state.auth.set_tenant_token(&record.id, record.token_hash);
    tracing::info!(tenant = %id, "tenant token rotated");
    let count = session_count(&state, &id).await;
    let mut body = view(&record, count);
    body["token"] = json!(token);
    Ok(Json(body))
}

/// A one-time ticket for `GET /v1/events?ticket=…` (browsers cannot set
/// headers on a WebSocket). It carries the generation of the token that
/// asked for it: rotating that token or deleting the tenant voids it.
#[utoipa::path(post, path = "/ws-tickets", tag = "events",
    responses(
        (status = 201, description = "the ticket", body = WsTicket),
        (status = 429, description = "`too_many_tickets`: too many unused tickets for this token; or `too_many_auth_failures`", body = ErrorBody),
    ))]
pub async fn ws_ticket(State(state): State<AppState>, grant: Grant) -> Result<Response, ApiError> {
    let (ticket, ttl) = state.auth.issue_ticket(grant)?;
    let expires_at_ms = now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "ticket": ticket,
            "expires_at": rfc3339_ms(expires_at_ms),
            "expires_at_ms": expires_at_ms,
        })),
    )
        .into_response())
}

/// A tenant's rate limits: the config's with the tenant's override.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct TenantLimits {
    pub tenant: String,
    /// The limits its sessions get (unless a session has its own).
    pub limits: Limits,
    /// Set for the tenant; `null`: the config's apply.
    #[serde(rename = "override")]
    pub tenant_override: Option<LimitOverride>,
}

fn tenant_limits(state: &AppState, id: &str) -> Result<TenantLimits, ApiError> {
    let tenant_override: Option<LimitOverride> = state
        .store
        .send_limits(&state.store.tenant_limits_key(id))?
        .and_then(|raw| serde_json::from_slice(&raw).ok());
    Ok(TenantLimits {
        tenant: id.to_owned(),
        limits: state
            .config
            .limits
            .with(&tenant_override.unwrap_or_default()),
        tenant_override,
    })
}

/// A tenant's rate limits (a tenant token: its own).
#[utoipa::path(get, path = "/tenants/{id}/limits", tag = "tenants", operation_id = "show_tenant_limits",
    params(TenantPath),
    responses(
        (status = 200, description = "the tenant's limits", body = TenantLimits),
        (status = 404, description = "`not_found`: no such tenant (or not the caller's)", body = ErrorBody),
    ))]
pub async fn show_limits(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantLimits>, ApiError> {
    visible_tenant(&state, &principal, &id)?;
    Ok(Json(tenant_limits(&state, &id)?))
}

/// Set a tenant's rate limits (admin); `{}` removes them. They apply to
/// its sessions at once (a queue waiting for tokens looks again).
#[utoipa::path(put, path = "/tenants/{id}/limits", tag = "tenants", operation_id = "set_tenant_limits",
    params(TenantPath),
    request_body = LimitOverride,
    responses(
        (status = 200, description = "the tenant's limits now", body = TenantLimits),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant", body = ErrorBody),
        (status = 422, description = "`invalid_limits`: each limit is a whole number from 1 to 1000000; `invalid_body`", body = ErrorBody),
    ))]
pub async fn set_limits(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<TenantLimits>, ApiError> {
    principal.require_admin()?;
    visible_tenant(&state, &principal, &id)?;
    let over = super::limits::parse(body)?;
    let raw = if over.is_empty() {
        None
    } else {
        Some(serde_json::to_vec(&over).map_err(|e| ApiError::internal(&e))?)
    };
    state
        .store
        .send_limits_put(&state.store.tenant_limits_key(&id), raw.as_deref(), true)
        .await?;
    // A queue waiting for tokens under the old limits looks again now (a
    // session re-plans its queue whenever its limits are read).
    for session in state.supervisor.list().await {
        if session.tenant == id {
            let _ = state.supervisor.limits(&session.id).await;
        }
    }
    tracing::info!(tenant = %id, "rate limits set");
    Ok(Json(tenant_limits(&state, &id)?))
}
