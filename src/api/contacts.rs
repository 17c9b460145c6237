//! REST handlers for the people a session deals with: which numbers are on
//! WhatsApp.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::groups::answered;
use super::openapi::{ErrorBody, SessionPath};
use super::sessions::{normalize_phone, visible_session};
use crate::wa::contacts::NumberCheck;

/// At most this many numbers per call (WhatsApp's usync takes batches).
const MAX_PHONES: usize = 500;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckNumbers {
    /// International numbers, country code first.
    #[schema(min_items = 1, max_items = 500)]
    pub phones: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct NumberChecks {
    /// One entry per distinct number, in the order asked.
    pub results: Vec<NumberCheck>,
}

/// Which of these numbers are on WhatsApp, with their JIDs.
#[utoipa::path(post, path = "/sessions/{id}/contacts/check", tag = "contacts",
    params(SessionPath),
    request_body = CheckNumbers,
    responses(
        (status = 200, description = "the answers", body = NumberChecks),
        (status = 400, description = "`invalid_id`; or the body is not JSON", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session (or another tenant's)", body = ErrorBody),
        (status = 409, description = "`not_connected`: the session is not connected to WhatsApp", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_phone`", body = ErrorBody),
        (status = 502, description = "`whatsapp_error`", body = ErrorBody),
        (status = 504, description = "`timeout`", body = ErrorBody),
    ))]
pub async fn check(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CheckNumbers>,
) -> Result<Json<NumberChecks>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    if req.phones.is_empty() || req.phones.len() > MAX_PHONES {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("phones must list 1 to {MAX_PHONES} numbers"),
        ));
    }
    let mut phones = Vec::with_capacity(req.phones.len());
    for phone in &req.phones {
        let digits = normalize_phone(phone)?;
        if !phones.contains(&digits) {
            phones.push(digits);
        }
    }
    let queries = state.supervisor.queries(&id).await?;
    let results = answered(queries.on_whatsapp(&phones)).await?;
    Ok(Json(NumberChecks { results }))
}
