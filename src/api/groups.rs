//! REST handlers for the groups a session's account is in.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::openapi::{ErrorBody, SessionPath};
use super::sessions::{normalize_phone, visible_session};
use crate::wa::WaError;
use crate::wa::groups::{Group, MemberAction, MemberOutcome, parse_group_jid};

/// WhatsApp's own limits: a subject of at most 100 characters; at most
/// 1,024 members, so no more than that many in one call.
const MAX_SUBJECT_CHARS: usize = 100;
const MAX_MEMBERS_PER_CALL: usize = 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    #[schema(min_length = 1, max_length = 100)]
    pub subject: String,
    /// Phone numbers (international, country code first) to add; the
    /// session's account is the creator and joins by itself.
    #[schema(schema_with = super::openapi::phone_numbers_1024)]
    pub participants: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeMembers {
    pub action: MemberAction,
    /// Phone numbers (international, country code first).
    #[schema(schema_with = super::openapi::phone_numbers_1024)]
    pub participants: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberOutcomes {
    /// One entry per person, as WhatsApp answered.
    pub results: Vec<MemberOutcome>,
}

#[derive(Serialize, ToSchema)]
pub struct LeftGroup {
    pub group: String,
    pub left: bool,
}

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
#[utoipa::path(get, path = "/sessions/{id}/groups", operation_id = "list_groups", tag = "groups",
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
    let groups = state.supervisor.queries(&id).await?;
    let groups = answered(groups.list()).await?;
    Ok(Json(GroupList { groups }))
}

/// One group, fresh from WhatsApp: subject, description and participants.
#[utoipa::path(get, path = "/sessions/{id}/groups/{jid}", operation_id = "show_group", tag = "groups",
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
    let groups = state.supervisor.queries(&id).await?;
    answered(groups.get(&jid)).await.map(Json)
}

/// Create a group with the session's account as its super admin.
#[utoipa::path(post, path = "/sessions/{id}/groups", tag = "groups", operation_id = "create_group",
    params(SessionPath),
    request_body = CreateGroup,
    responses(
        (status = 201, description = "the new group", body = Group),
        (status = 400, description = "`invalid_id`; or the body is not JSON", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session (or another tenant's)", body = ErrorBody),
        (status = 409, description = "`not_connected`: the session is not connected to WhatsApp", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_phone`", body = ErrorBody),
        (status = 502, description = "`whatsapp_error`", body = ErrorBody),
        (status = 504, description = "`timeout`", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CreateGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    visible_session(&state, &principal, &id).await?;
    let count = req.subject.chars().count();
    if count == 0 || count > MAX_SUBJECT_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("subject must have 1 to {MAX_SUBJECT_CHARS} characters"),
        ));
    }
    let members = member_jids(&req.participants)?;
    let groups = state.supervisor.queries(&id).await?;
    let group = answered(groups.create(&req.subject, &members)).await?;
    tracing::info!(session = %id, group = %group.jid, "group created");
    Ok((StatusCode::CREATED, Json(group)))
}

/// Add, remove, promote or demote members of a group (the account must be
/// an admin).
#[utoipa::path(post, path = "/sessions/{id}/groups/{jid}/participants", operation_id = "change_group_members", tag = "groups",
    params(SessionGroupPath),
    request_body = ChangeMembers,
    responses(
        (status = 200, description = "how each person fared", body = MemberOutcomes),
        (status = 400, description = "`invalid_id`, `invalid_group`; or the body is not JSON", body = ErrorBody),
        (status = 403, description = "`not_admin`: the account is not an admin of the group", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session; `group_not_found`", body = ErrorBody),
        (status = 409, description = "`not_connected`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_phone`", body = ErrorBody),
        (status = 502, description = "`whatsapp_error`", body = ErrorBody),
        (status = 504, description = "`timeout`", body = ErrorBody),
    ))]
pub async fn members(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, jid)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<ChangeMembers>,
) -> Result<Json<MemberOutcomes>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    parse_group_jid(&jid).map_err(wa_error)?;
    let members = member_jids(&req.participants)?;
    let groups = state.supervisor.queries(&id).await?;
    let results = answered(groups.change(&jid, req.action, &members)).await?;
    Ok(Json(MemberOutcomes { results }))
}

/// The session's account leaves a group.
#[utoipa::path(post, path = "/sessions/{id}/groups/{jid}/leave", operation_id = "leave_group", tag = "groups",
    params(SessionGroupPath),
    responses(
        (status = 200, description = "left", body = LeftGroup),
        (status = 400, description = "`invalid_id`, `invalid_group`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session; `group_not_found`", body = ErrorBody),
        (status = 409, description = "`not_connected`", body = ErrorBody),
        (status = 502, description = "`whatsapp_error`", body = ErrorBody),
        (status = 504, description = "`timeout`", body = ErrorBody),
    ))]
pub async fn leave(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, jid)): ApiPath<(String, String)>,
) -> Result<Json<LeftGroup>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    parse_group_jid(&jid).map_err(wa_error)?;
    let groups = state.supervisor.queries(&id).await?;
    answered(groups.leave(&jid)).await?;
    tracing::info!(session = %id, group = %jid, "left the group");
    Ok(Json(LeftGroup {
        group: jid,
        left: true,
    }))
}

/// Phone numbers → phone-number JIDs; 422 for a bad one, too many or none.
fn member_jids(phones: &[String]) -> Result<Vec<whatsapp_rust::Jid>, ApiError> {
    if phones.is_empty() || phones.len() > MAX_MEMBERS_PER_CALL {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("participants must list 1 to {MAX_MEMBERS_PER_CALL} phone numbers"),
        ));
    }
    let mut jids = Vec::with_capacity(phones.len());
    for phone in phones {
        let digits = normalize_phone(phone)?;
        let jid = whatsapp_rust::Jid::pn(&digits);
        if !jids.contains(&jid) {
            jids.push(jid);
        }
    }
    Ok(jids)
}

pub(super) async fn answered<T>(
    query: impl Future<Output = Result<T, WaError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(answer) => answer.map_err(wa_error),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "WhatsApp did not answer in time",
        )),
    }
}

pub(super) fn wa_error(e: WaError) -> ApiError {
    match e {
        WaError::BadGroup(_) => ApiError::bad_request("invalid_group", e.to_string()),
        WaError::GroupNotFound(_) => ApiError::not_found("group_not_found", e.to_string()),
        WaError::NotAllowed(_) => ApiError::new(StatusCode::FORBIDDEN, "not_admin", e.to_string()),
        e => {
            tracing::warn!("group query: {e}");
            ApiError::new(StatusCode::BAD_GATEWAY, "whatsapp_error", e.to_string())
        }
    }
}
