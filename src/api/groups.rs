//! REST handlers for the groups a session's account is in.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::ApiPath;
use super::openapi::{ErrorBody, SessionPath};
use super::sessions::visible_session;
use crate::wa::WaError;
use crate::wa::groups::{Group, parse_group_jid};

/// How long WhatsApp may take to answer a group query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(20);

/// `/sessions/{id}/groups/{jid}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionGroupPath {
    /// Session id.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: String,
    /// The group's JID.
    #[param(pattern = "^[0-9]{1,40}@g\\.us$", example = "120363000000000001@g.us")]
    pub jid: String,
}

#[derive(Serialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<Group>,
}

/// The groups the session's account is in, with their participants.
#[utoipa::path(get, path = "/sessions/{id}/groups", tag = "groups",
    params(SessionPath),
    responses(
        (status = 200, description = "every group, by JID", body = GroupList),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session (or another tenant's)", body = ErrorBody),
        (status = 409, description = "`not_connected`: the session is not connected to WhatsApp", body = ErrorBody),
        (status = 502, description = "`whatsapp_error`: WhatsApp refused or answered something unexpected", body = ErrorBody),
        (status = 504, description = "`timeout`: WhatsApp did not answer in time", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<GroupList>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    let groups = state.supervisor.groups(&id).await?;
    let groups = answered(groups.list()).await?;
    Ok(Json(GroupList { groups }))
}

/// One group, fresh from WhatsApp: subject, description and participants.
#[utoipa::path(get, path = "/sessions/{id}/groups/{jid}", tag = "groups",
    params(SessionGroupPath),
    responses(
        (status = 200, description = "the group", body = Group),
        (status = 400, description = "`invalid_id`, `invalid_group`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session; `group_not_found`: no such group, or the account is not in it", body = ErrorBody),
        (status = 409, description = "`not_connected`: the session is not connected to WhatsApp", body = ErrorBody),
        (status = 502, description = "`whatsapp_error`: WhatsApp refused or answered something unexpected", body = ErrorBody),
        (status = 504, description = "`timeout`: WhatsApp did not answer in time", body = ErrorBody),
    ))]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, jid)): ApiPath<(String, String)>,
) -> Result<Json<Group>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    parse_group_jid(&jid).map_err(wa_error)?;
    let groups = state.supervisor.groups(&id).await?;
    answered(groups.get(&jid)).await.map(Json)
}

async fn answered<T>(query: impl Future<Output = Result<T, WaError>>) -> Result<T, ApiError> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(answer) => answer.map_err(wa_error),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "WhatsApp did not answer in time",
        )),
    }
}

fn wa_error(e: WaError) -> ApiError {
    match e {
        WaError::BadGroup(_) => ApiError::bad_request("invalid_group", e.to_string()),
        WaError::GroupNotFound(_) => ApiError::not_found("group_not_found", e.to_string()),
        e => {
            tracing::warn!("group query: {e}");
            ApiError::new(StatusCode::BAD_GATEWAY, "whatsapp_error", e.to_string())
        }
    }
}
