//! REST handlers for sessions and phones.

use axum::Json;
use axum::extract::{FromRequest, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{
    ApiJson, ApiJsonOrEmpty, ApiPath, ApiQuery, body_session_id, check_id, path_session_id,
};
use super::media_out::{self, SendMessage, SendMessageForm, check_recipient};
use super::openapi::{
    ErrorBody, PairCode, PhonePath, PhoneSessions, SessionList, SessionMessagePath, SessionPath,
};
use super::qr::{QrView, render_png, rfc3339_ms};
use crate::session::outbound::{SendState, SendStatus};
use crate::session::{SessionInfo, SessionState};

/// The tenant sessions belong to when the admin names none.
pub const DEFAULT_TENANT: &str = "default";

/// `null` for a field means the same as leaving it out.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Generated when absent.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: Option<String>,
    /// An existing tenant; default `default` (admin) or the caller's own tenant.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub tenant: Option<String>,
    /// Start right away (default `true`).
    pub start: Option<bool>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only sessions in this state.
    #[param(value_type = Option<SessionState>)]
    pub state: Option<String>,
    /// Only this tenant's sessions.
    pub tenant: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairCodeRequest {
    /// International number, country code first: 7 to 15 digits; an
    /// optional leading `+`, spaces and dashes are ignored.
    #[schema(pattern = r"^[ -]*(\+[ -]*)?[1-9][ -]*([0-9][ -]*){6,14}$")]
    pub phone: String,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QrQuery {
    /// `json`, `svg` or `png`; without it the `Accept` header chooses (`image/png`, `image/svg+xml`), else `json`.
    #[param(pattern = "^(json|svg|png)$")]
    pub format: Option<String>,
}

/// Longest text message accepted, in characters (WhatsApp's own limit is
/// about 65 536).
pub(crate) const MAX_TEXT_CHARS: usize = 64 * 1024;

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

/// Create a session.
#[utoipa::path(post, path = "/sessions", tag = "sessions", operation_id = "create_session",
    request_body(content = Option<CreateSession>, description = "optional: an empty body creates a session with a generated id"),
    responses(
        (status = 201, description = "created", body = SessionInfo),
        (status = 403, description = "`forbidden`: a tenant token named another tenant; `quota_exceeded`: the tenant holds `sessions.max_per_tenant` sessions", body = ErrorBody),
        (status = 409, description = "`already_exists`: a session with that id exists", body = ErrorBody),
        (status = 422, description = "`invalid_id`, `invalid_tenant`, `unknown_tenant`, or the body does not fit", body = ErrorBody),
    ))]
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

/// List the sessions the caller may see.
#[utoipa::path(get, path = "/sessions", tag = "sessions", operation_id = "list_sessions",
    params(ListQuery),
    responses(
        (status = 200, description = "sessions", body = SessionList),
        (status = 403, description = "a tenant token asked for another tenant", body = ErrorBody),
    ))]
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
    Ok(Json(json!({ "sessions": sessions })))
}

/// Show a session.
#[utoipa::path(get, path = "/sessions/{id}", tag = "sessions", operation_id = "show_session",
    params(SessionPath),
    responses(
        (status = 200, description = "the session", body = SessionInfo),
        (status = 404, description = "`not_found`: no such session (or another tenant's)", body = ErrorBody),
    ))]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible_session(&state, &principal, &id).await.map(Json)
}

/// Start a session.
#[utoipa::path(post, path = "/sessions/{id}/start", tag = "sessions",
    params(SessionPath),
    responses(
        (status = 200, description = "the session afterwards", body = SessionInfo),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 409, description = "`invalid_state`: not possible in the session's state", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the session's `qr_per_hour` bucket is empty; `Retry-After` and `RateLimit-*` headers say when", body = ErrorBody),
    ))]
pub async fn start(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    Ok(Json(state.supervisor.start_session(&id).await?))
}

/// Stop a session.
#[utoipa::path(post, path = "/sessions/{id}/stop", tag = "sessions",
    params(SessionPath),
    responses(
        (status = 200, description = "the session afterwards", body = SessionInfo),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 409, description = "`invalid_state`: not possible in the session's state", body = ErrorBody),
    ))]
pub async fn stop(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    Ok(Json(state.supervisor.stop(&id).await?))
}

/// Wipe the session's keys; it pairs again when started.
#[utoipa::path(post, path = "/sessions/{id}/reset", tag = "sessions",
    params(SessionPath),
    responses(
        (status = 200, description = "the session afterwards", body = SessionInfo),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 409, description = "`invalid_state`: not possible in the session's state", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the session's `resets_per_hour` bucket is empty; `Retry-After` and `RateLimit-*` headers say when", body = ErrorBody),
    ))]
pub async fn reset(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    Ok(Json(state.supervisor.reset(&id).await?))
}

/// Unlink the device from the phone.
#[utoipa::path(post, path = "/sessions/{id}/logout", tag = "sessions",
    params(SessionPath),
    responses(
        (status = 200, description = "the session afterwards", body = SessionInfo),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 409, description = "`invalid_state`: not possible in the session's state", body = ErrorBody),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    Ok(Json(state.supervisor.logout(&id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSession {
    /// Move the session to this tenant (admin only); it must exist.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub tenant: String,
}

/// `PATCH /v1/sessions/{id}`: the admin moves a session (and the number it
/// is paired with) to another tenant. From the moment it answers, the
/// session's events and messages reach only the new tenant's endpoints and
/// sockets; its session-level endpoints are removed; deliveries already
/// queued for the old tenant still go to the old tenant.
#[utoipa::path(patch, path = "/sessions/{id}", tag = "sessions", operation_id = "move_session",
    params(SessionPath),
    request_body = UpdateSession,
    responses(
        (status = 200, description = "the session afterwards", body = SessionInfo),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 409, description = "not possible in the session's state", body = ErrorBody),
        (status = 422, description = "`invalid_tenant`, `unknown_tenant`, or the body does not fit", body = ErrorBody),
    ))]
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

/// Delete a session and everything attached to it (device keys, its
/// webhook endpoints, queued deliveries, dead letters).
#[utoipa::path(delete, path = "/sessions/{id}", tag = "sessions", operation_id = "delete_session",
    params(SessionPath),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
    ))]
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

/// The live pairing QR.
#[utoipa::path(get, path = "/sessions/{id}/qr", tag = "sessions",
    params(SessionPath, QrQuery),
    responses(
        (status = 200, description = "the QR; holds a credential: whoever sees it can link a device", content(
            (QrView = "application/json"),
            (String = "image/svg+xml"),
            (Vec<u8> = "image/png"),
        )),
        (status = 404, description = "`not_found`: no such session; or no live QR: `qr_pending`, `already_paired`, `pairing_by_code`, `not_started`", body = ErrorBody),
    ))]
pub async fn qr(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<QrQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let info = visible_session(&state, &principal, &id).await?;
    let format = match query.format.as_deref() {
        Some(format) => format,
        None => format_from_accept(&headers),
    };
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

/// The QR format an `Accept` header asks for (without `?format=`): the
/// first of `image/png`, `image/svg+xml` and `application/json` it names,
/// in its order; JSON otherwise.
fn format_from_accept(headers: &axum::http::HeaderMap) -> &'static str {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for part in accept.split(',') {
        match part.split(';').next().unwrap_or_default().trim() {
            "image/png" => return "png",
            "image/svg+xml" => return "svg",
            "application/json" => return "json",
            _ => {}
        }
    }
    "json"
}

/// Digits only: spaces and dashes anywhere are dropped, then one leading
/// `+`; 7–15 digits must remain, the first not 0 (a country code). The
/// document's phone pattern says the same.
pub fn normalize_phone(phone: &str) -> Result<String, ApiError> {
    let kept: String = phone.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let digits = kept.strip_prefix('+').unwrap_or(&kept);
    if !(7..=15).contains(&digits.len())
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.starts_with('0')
    {
        return Err(ApiError::unprocessable(
            "invalid_phone",
            "phone must be an international number: 7 to 15 digits, country code first (no leading 0)",
        ));
    }
    Ok(digits.to_string())
}

/// A JID as `send_message` takes it: `user@server`, the user 1–64 of
/// `0-9A-Za-z._:-` (a device suffix included), the server 1–63 of
/// `0-9A-Za-z.-`.
pub(super) fn is_jid(to: &str) -> bool {
    let Some((user, server)) = to.split_once('@') else {
        return false;
    };
    let user_ok = (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    let server_ok = (1..=63).contains(&server.len())
        && server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    user_ok && server_ok
}

/// Pair with a phone-number code instead of a QR.
#[utoipa::path(post, path = "/sessions/{id}/pair-code", tag = "sessions",
    params(SessionPath),
    request_body = PairCodeRequest,
    responses(
        (status = 200, description = "the code to type on the phone", body = PairCode),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 409, description = "`invalid_state`: not possible in the session's state; `pair_code_rejected`: an earlier code is still valid", body = ErrorBody),
        (status = 422, description = "`invalid_phone`, or WhatsApp refused (`pair_code_rejected`)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the session's `pair_codes_per_hour` bucket is empty (`Retry-After`, `RateLimit-*`); or WhatsApp rate-limits pairing codes for this number", body = ErrorBody),
    ))]
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

/// `POST /sessions/{id}/messages` options.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SendQuery {
    /// `sent`: send now and answer once WhatsApp took the message (409 if
    /// the session is not connected), without the queue.
    #[param(pattern = "^sent$")]
    pub wait: Option<String>,
}

/// `POST /sessions/{id}/messages` headers.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyHeader {
    /// The same key within 24 h answers the first send instead of sending
    /// again (1 to 255 visible ASCII characters).
    #[serde(rename = "Idempotency-Key")]
    #[param(pattern = "^[!-~]{1,255}$")]
    pub idempotency_key: Option<String>,
}

/// The `Idempotency-Key` header, if any: 400 when malformed.
fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if crate::session::outbound::valid_idempotency_key(key) => Ok(Some(key.to_owned())),
        _ => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// Send a message: text, media (image, video, audio or voice note,
/// document, sticker; from a multipart upload or a `url`), or a reaction;
/// any but a reaction may quote (`reply_to`). Queued (durably: media
/// bytes included) and sent in order once the session is connected;
/// `?wait=sent` sends a text at once instead.
#[utoipa::path(post, path = "/sessions/{id}/messages", tag = "sessions",
    operation_id = "send_message",
    params(SessionPath, SendQuery, IdempotencyHeader),
    request_body(content(
        (SendMessage = "application/json"),
        (SendMessageForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "`?wait=sent`: sent; or the send an `Idempotency-Key` already named", body = SendStatus),
        (status = 202, description = "queued", body = SendStatus),
        (status = 400, description = "`invalid_idempotency_key`, `bad_query` (`?wait=sent` is for plain text), `bad_body`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 409, description = "`not_paired`: the session has never been paired; with `?wait=sent`, `not_connected`", body = ErrorBody),
        (status = 413, description = "`media_too_large`: over the type's limit (`[media]`); `body_too_large`: a JSON body over `api.body_limit`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the bytes are not what `type` takes (sniffed from the bytes), or the body is neither JSON nor multipart", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_phone`: bad fields; `invalid_url`, `url_not_allowed` (loopback, private or link-local), `url_fetch_failed`", body = ErrorBody),
        (status = 429, description = "`?wait=sent`: `rate_limited`: a send bucket is empty; `Retry-After` and `RateLimit-*` headers say when (queued sends wait instead)", body = ErrorBody),
        (status = 502, description = "`?wait=sent`: `send_failed`: WhatsApp did not take the message", body = ErrorBody),
    ))]
pub async fn send_message(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<SendQuery>,
    headers: axum::http::HeaderMap,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<SendStatus>), ApiError> {
    let key = idempotency_key(&headers)?;
    if query.wait.is_some() {
        let multipart = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/"));
        if multipart {
            return Err(ApiError::bad_request(
                "bad_query",
                "?wait=sent sends plain text only; queue media, replies and reactions",
            ));
        }
        let ApiJson(req) = ApiJson::<SendMessage>::from_request(request, &state).await?;
        let plain_text = req.kind.as_deref().unwrap_or("text") == "text"
            && req.reply_to.is_none()
            && req.url.is_none();
        if !plain_text {
            return Err(ApiError::bad_request(
                "bad_query",
                "?wait=sent sends plain text only; queue media, replies and reactions",
            ));
        }
        let text = req.text.unwrap_or_default();
        let message_id = send_text(&state, &principal, &id, &req.to, &text).await?;
        let status = state
            .supervisor
            .send_status(&id, &message_id)
            .await?
            .ok_or_else(|| ApiError::internal(&"the send left no status"))?;
        return Ok((StatusCode::OK, Json(status)));
    }
    visible_session(&state, &principal, &id).await?;
    let prefix = state.supervisor.contacts_prefix(&id).await?;
    let mut parsed = media_out::parse_send(&state, &prefix, request).await?;
    let checked = match check_recipient(&parsed.req.to) {
        Ok(to) => media_out::outgoing(&state, &prefix, &mut parsed)
            .await
            .map(|out| (to, out)),
        Err(e) => Err(e),
    };
    let (to, out) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            if let Some(media) = parsed.media.take() {
                let _ = state.store.media_blob_remove(&media.blob.name).await;
            }
            return Err(e);
        }
    };
    let (status, new) = state
        .supervisor
        .enqueue_outgoing(&id, &to, out, key)
        .await?;
    let code = if new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(status)))
}

/// A send's status.
#[utoipa::path(get, path = "/sessions/{id}/messages/{message_id}", tag = "sessions",
    params(SessionMessagePath),
    responses(
        (status = 200, description = "its status", body = SendStatus),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session, or it sent no such message", body = ErrorBody),
    ))]
pub async fn message_status(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, message_id)): ApiPath<(String, String)>,
) -> Result<Json<SendStatus>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    path_message_id(&message_id)?;
    match state.supervisor.send_status(&id, &message_id).await? {
        Some(status) => Ok(Json(status)),
        None => Err(message_not_found(&id, &message_id)),
    }
}

/// Cancel a queued send.
#[utoipa::path(delete, path = "/sessions/{id}/messages/{message_id}", tag = "sessions",
    params(SessionMessagePath),
    responses(
        (status = 200, description = "cancelled (`status: cancelled`)", body = SendStatus),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session, or it sent no such message", body = ErrorBody),
        (status = 409, description = "`not_queued`: it has left the queue already, or is on its way (a media send can be cancelled while it uploads, not once its message is being sent)", body = ErrorBody),
    ))]
pub async fn cancel_message(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, message_id)): ApiPath<(String, String)>,
) -> Result<Json<SendStatus>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    path_message_id(&message_id)?;
    match state.supervisor.cancel_send(&id, &message_id).await? {
        Some(status) if status.status == SendState::Cancelled => Ok(Json(status)),
        Some(status) if status.status == SendState::Queued => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_queued",
            format!("message {message_id:?} is being sent; it can no longer be cancelled"),
        )),
        Some(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_queued",
            format!(
                "message {message_id:?} is {}, no longer queued",
                serde_json::to_value(status.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        )),
        None => Err(message_not_found(&id, &message_id)),
    }
}

fn path_message_id(id: &str) -> Result<(), ApiError> {
    if (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            "a message id is 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
        ))
    }
}

fn message_not_found(id: &str, message_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("session {id:?} sent no message {message_id:?}"),
    )
}

/// Checks a send's text and recipient; answers the recipient as sent on.
fn check_send(to: &str, text: &str) -> Result<String, ApiError> {
    if text.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "text must not be empty",
        ));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("text is longer than {MAX_TEXT_CHARS} characters"),
        ));
    }
    if to.contains('@') {
        if !is_jid(to) {
            return Err(ApiError::unprocessable(
                "invalid_body",
                "to must be a phone number (digits) or a JID (user@server)",
            ));
        }
        Ok(to.to_string())
    } else {
        normalize_phone(to)
    }
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
    let to = check_send(to, text)?;
    if info.state != SessionState::Connected {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_connected",
            format!("session {id:?} is {}, not connected", info.state),
        ));
    }
    Ok(state.supervisor.send_text(id, &to, text).await?)
}

/// The sessions paired with a phone number.
#[utoipa::path(get, path = "/phones/{phone}", tag = "sessions",
    params(PhonePath),
    responses(
        (status = 200, description = "sessions", body = PhoneSessions),
    ))]
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
