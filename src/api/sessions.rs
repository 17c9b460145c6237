//! REST handlers for sessions and phones.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{
    ApiJson, ApiJsonOrEmpty, ApiPath, ApiQuery, body_session_id, check_id, path_session_id,
};
use super::qr::{QrView, render_png, rfc3339_ms};
use crate::session::{SessionInfo, SessionState};

/// The tenant sessions belong to when the admin names none.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub id: Option<String>,
    pub tenant: Option<String>,
    /// Start right away (default `true`).
    pub start: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<String>,
    pub tenant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairCodeRequest {
    pub phone: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendText {
    pub to: String,
    pub text: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrQuery {
    pub format: Option<String>,
}

#[derive(Serialize)]
struct SessionList {
    sessions: Vec<SessionInfo>,
}

/// Longest text message accepted (WhatsApp's own limit is about 65 536 chars).
pub(crate) const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The session, if the caller may see it; 404 otherwise (whether it
/// exists or belongs to someone else is not revealed).
pub async fn visible_session(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<SessionInfo, ApiError> {
    path_session_id(id)?;
    let info = state.supervisor.get(id).await?;
    if principal.can_see(&info.tenant) {
        Ok(info)
    } else {
        Err(ApiError::session_not_found(id))
    }
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJsonOrEmpty(req): ApiJsonOrEmpty<CreateSession>,
) -> Result<Response, ApiError> {
    if let Some(id) = &req.id {
        body_session_id(id)?;
    }
    let tenant = match (&principal, req.tenant) {
        (Principal::Admin, None) => DEFAULT_TENANT.to_string(),
        (Principal::Admin, Some(t)) => {
            check_id("tenant", &t).map_err(|m| ApiError::unprocessable("invalid_tenant", m))?;
            if state.store.get_tenant(&t)?.is_none() {
                return Err(ApiError::unprocessable(
                    "unknown_tenant",
                    format!("no tenant {t:?}; create it with POST /v1/tenants first"),
                ));
            }
            t
        }
        (Principal::Tenant(own), None) => own.clone(),
        (Principal::Tenant(own), Some(t)) if &t == own => t,
        (Principal::Tenant(_), Some(_)) => {
            return Err(ApiError::forbidden(
                "a tenant token can only create its own sessions",
            ));
        }
    };
    let info = state
        .supervisor
        .create(req.id, tenant, req.start.unwrap_or(true))
        .await?;
    tracing::info!(session = %info.id, tenant = %info.tenant, "session created through the API");
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let wanted_state = match &query.state {
        Some(s) => Some(SessionState::parse(s).ok_or_else(|| {
            let names: Vec<_> = SessionState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(
                "bad_query",
                format!("unknown state {s:?}; one of {}", names.join(", ")),
            )
        })?),
        None => None,
    };
    if let (Principal::Tenant(own), Some(t)) = (&principal, &query.tenant)
        && t != own
    {
        return Err(ApiError::forbidden(
            "a tenant token can only list its own sessions",
        ));
    }
    let sessions: Vec<SessionInfo> = state
        .supervisor
        .list()
        .await
        .into_iter()
        .filter(|s| principal.can_see(&s.tenant))
        .filter(|s| query.tenant.as_ref().is_none_or(|t| &s.tenant == t))
        .filter(|s| wanted_state.is_none_or(|w| s.state == w))
        .collect();
    Ok(Json(json!(SessionList { sessions })))
}

pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible_session(&state, &principal, &id).await.map(Json)
}

pub async fn start(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    Ok(Json(state.supervisor.start_session(&id).await?))
}

pub async fn stop(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    Ok(Json(state.supervisor.stop(&id).await?))
}

pub async fn reset(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    Ok(Json(state.supervisor.reset(&id).await?))
}

pub async fn logout(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    Ok(Json(state.supervisor.logout(&id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSession {
    /// Move the session to this tenant (admin only).
    pub tenant: String,
}

/// `PATCH /v1/sessions/{id}`: the admin moves a session (and the number it
/// is paired with) to another tenant. From the moment it answers, the
/// session's events and messages reach only the new tenant's endpoints and
/// sockets; its session-level endpoints are removed; deliveries already
/// queued for the old tenant still go to the old tenant.
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateSession>,
) -> Result<Json<SessionInfo>, ApiError> {
    principal.require_admin()?;
    visible_session(&state, &principal, &id).await?;
    check_id("tenant", &req.tenant).map_err(|m| ApiError::unprocessable("invalid_tenant", m))?;
    if state.store.get_tenant(&req.tenant)?.is_none() {
        return Err(ApiError::unprocessable(
            "unknown_tenant",
            format!(
                "no tenant {:?}; create it with POST /v1/tenants first",
                req.tenant
            ),
        ));
    }
    let info = state.supervisor.reassign(&id, &req.tenant).await?;
    tracing::info!(session = %id, tenant = %info.tenant, "session reassigned through the API");
    Ok(Json(info))
}

pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    visible_session(&state, &principal, &id).await?;
    state.supervisor.delete(&id).await?;
    tracing::info!(session = %id, "session deleted through the API");
    Ok(StatusCode::NO_CONTENT)
}

/// Why there is no QR to show, as a stable code.
pub(crate) fn no_qr(info: &SessionInfo) -> ApiError {
    let (code, why) = match info.state {
        SessionState::Starting => (
            "qr_pending",
            "the session is starting; the first QR is on its way",
        ),
        SessionState::PairCode => (
            "pairing_by_code",
            "the session is pairing with a phone-number code",
        ),
        SessionState::Paired
        | SessionState::Connecting
        | SessionState::Connected
        | SessionState::Disconnected => ("already_paired", "the session is already paired"),
        SessionState::Qr => ("qr_pending", "the next QR is on its way"),
        SessionState::Created
        | SessionState::Stopped
        | SessionState::Failed
        | SessionState::LoggedOut => (
            "not_started",
            "the session is not running; start it to get a QR",
        ),
    };
    ApiError::not_found(
        code,
        format!(
            "no live QR for session {:?} (state {}): {why}",
            info.id, info.state
        ),
    )
}

pub async fn qr(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<QrQuery>,
) -> Result<Response, ApiError> {
    let info = visible_session(&state, &principal, &id).await?;
    let format = query.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "svg" | "png") {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("unknown format {format:?}; one of json, svg, png"),
        ));
    }
    let Some(live) = state.supervisor.live_qr(&id) else {
        return Err(no_qr(&info));
    };
    let no_store = (header::CACHE_CONTROL, "no-store");
    let view = QrView::new(&live).map_err(|e| ApiError::internal(&e))?;
    Ok(match format {
        "svg" => (
            [(header::CONTENT_TYPE, "image/svg+xml"), no_store],
            view.svg,
        )
            .into_response(),
        "png" => {
            let png = render_png(&live.code).map_err(|e| ApiError::internal(&e))?;
            ([(header::CONTENT_TYPE, "image/png"), no_store], png).into_response()
        }
        _ => ([no_store], Json(view)).into_response(),
    })
}

/// Digits only (a leading `+` and spaces or dashes are dropped), 7–15 of them.
pub fn normalize_phone(phone: &str) -> Result<String, ApiError> {
    let trimmed = phone.trim();
    let trimmed = trimmed.strip_prefix('+').unwrap_or(trimmed);
    let digits: String = trimmed
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .collect();
    if !(7..=15).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::unprocessable(
            "invalid_phone",
            "phone must be an international number: 7 to 15 digits, country code first",
        ));
    }
    Ok(digits)
}

pub async fn pair_code(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PairCodeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    let phone = normalize_phone(&req.phone)?;
    let issued = state.supervisor.pair_code(&id, &phone).await?;
    Ok(Json(json!({
        "code": issued.code,
        "expires_at": rfc3339_ms(issued.expires_at_ms),
        "expires_at_ms": issued.expires_at_ms,
    })))
}

pub async fn send_message(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<SendText>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let message_id = send_text(&state, &principal, &id, &req.to, &req.text).await?;
    Ok(Json(json!({ "id": message_id })))
}

/// Sends `text` to `to` (a phone number or a JID) through session `id` as
/// `principal`; answers the WhatsApp message id. The one send path of
/// `POST /v1/sessions/{id}/messages` and the Graph API's `/messages`.
pub async fn send_text(
    state: &AppState,
    principal: &Principal,
    id: &str,
    to: &str,
    text: &str,
) -> Result<String, ApiError> {
    let info = visible_session(state, principal, id).await?;
    if text.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "text must not be empty",
        ));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("text is longer than {MAX_TEXT_BYTES} bytes"),
        ));
    }
    let to = to.trim();
    if to.is_empty() || to.len() > 128 || to.contains(['\0', '/']) {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "to must be a phone number (digits) or a JID",
        ));
    }
    let to = if to.contains('@') {
        to.to_string()
    } else {
        normalize_phone(to)?
    };
    if info.state != SessionState::Connected {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_connected",
            format!("session {id:?} is {}, not connected", info.state),
        ));
    }
    Ok(state.supervisor.send_text(id, &to, text).await?)
}

pub async fn phone_sessions(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(phone): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let phone =
        normalize_phone(&phone).map_err(|e| ApiError::bad_request("invalid_phone", e.message))?;
    let sessions: Vec<SessionInfo> = state
        .supervisor
        .sessions_for_phone(&phone)
        .await?
        .into_iter()
        .filter(|s| principal.can_see(&s.tenant))
        .collect();
    Ok(Json(json!({ "phone": phone, "sessions": sessions })))
}
