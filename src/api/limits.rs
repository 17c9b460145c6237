//! REST handlers for a session's rate limits: see each bucket, set the
//! session's own limits. (A tenant's are under `/tenants/{id}/limits`.)

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::openapi::{ErrorBody, SessionPath};
use super::sessions::visible_session;
use crate::session::limits::{Bucket, LimitOverride, Limits, LimitsView};

/// A session's rate limits and each bucket's level.
#[utoipa::path(get, path = "/sessions/{id}/limits", tag = "sessions", operation_id = "show_session_limits",
    params(SessionPath),
    responses(
        (status = 200, description = "the limits in force and each bucket now", body = LimitsView),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
    ))]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<LimitsView>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    Ok(Json(state.supervisor.limits(&id).await?))
}

/// Set a session's own limits (`{}` removes them). A tenant token may
/// lower its session's limits, not raise them above the tenant's.
#[utoipa::path(put, path = "/sessions/{id}/limits", tag = "sessions", operation_id = "set_session_limits",
    params(SessionPath),
    request_body = LimitOverride,
    responses(
        (status = 200, description = "the limits now", body = LimitsView),
        (status = 403, description = "`forbidden`: a tenant token asked for more than its tenant's limits", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 422, description = "`invalid_limits`: each limit is a whole number from 1 to 1000000; `invalid_body`", body = ErrorBody),
    ))]
pub async fn set(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<LimitsView>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    let over = parse(body)?;
    if !principal.is_admin() {
        let now = state.supervisor.limits(&id).await?;
        within(&over, &now.tenant_limits)?;
    }
    let over = (!over.is_empty()).then_some(over);
    Ok(Json(state.supervisor.set_limits(&id, over).await?))
}

/// The body as limits: an object of known fields (422 `invalid_body`
/// otherwise; serde alone would take `[20]` for the first field), each
/// limit a whole number (`20.0` too) in range (422 `invalid_limits`).
pub(crate) fn parse(mut body: serde_json::Value) -> Result<LimitOverride, ApiError> {
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "the body is a JSON object of limits, e.g. {\"sends_per_minute\": 10}",
        ));
    };
    // JSON Schema counts `20.0` as an integer; serde does not.
    for value in fields.values_mut() {
        if let Some(f) = value.as_f64()
            && value.is_f64()
            && f.fract() == 0.0
            && (0.0..=f64::from(u32::MAX)).contains(&f)
        {
            *value = serde_json::Value::from(f as u64);
        }
    }
    let over: LimitOverride = serde_json::from_value(body).map_err(|e| {
        ApiError::unprocessable("invalid_body", format!("the JSON body does not fit: {e}"))
    })?;
    over.check()
        .map_err(|m| ApiError::unprocessable("invalid_limits", m))?;
    Ok(over)
}

/// 403 if `over` raises a limit above `ceiling`.
fn within(over: &LimitOverride, ceiling: &Limits) -> Result<(), ApiError> {
    let asked = ceiling.with(over);
    for bucket in Bucket::ALL {
        if asked.get(bucket) > ceiling.get(bucket) {
            return Err(ApiError::forbidden(format!(
                "{} = {} is above the tenant's limit of {}: only the admin may raise it",
                bucket.as_str(),
                asked.get(bucket),
                ceiling.get(bucket)
            )));
        }
    }
    Ok(())
}
