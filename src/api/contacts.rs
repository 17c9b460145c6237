//! REST handlers for the people a session deals with: its contacts
//! directory (JSON pages and CSV), and which numbers are on WhatsApp.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::groups::answered;
use super::openapi::{ErrorBody, SessionPath};
use super::sessions::{normalize_phone, visible_session};
use crate::session::contacts::{self, Contact};
use crate::store::ids::{hex, unhex};
use crate::wa::contacts::NumberCheck;

/// Page sizes of the directory.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 500;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContactsQuery {
    /// Only people whose phone, LID or push name contains this (any case).
    #[param(max_length = 100)]
    pub q: Option<String>,
    /// The `next` of the previous page.
    #[param(pattern = "^[0-9a-f]{128}$")]
    pub after: Option<String>,
    /// 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct ContactPage {
    pub contacts: Vec<Contact>,
    /// Pass as `after` for the next page; `null` on the last.
    pub next: Option<String>,
}

/// The directory's cursor: a key under the session's prefix.
fn cursor(prefix: &[u8], after: Option<&str>) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(after) = after else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request("bad_query", "after must be the next of a previous page");
    let suffix = unhex(after)
        .filter(|s| s.len() == 32 + 32)
        .ok_or_else(bad)?;
    // A cursor names a position, never data: a foreign prefix only starts
    // the scan somewhere else in this session's own range.
    Ok(Some([prefix, &suffix[32..]].concat()))
}

/// Every person the session has seen, one entry per person, a page at a time.
#[utoipa::path(get, path = "/sessions/{id}/contacts", tag = "contacts",
    params(SessionPath, ContactsQuery),
    responses(
        (status = 200, description = "a page", body = ContactPage),
        (status = 400, description = "`invalid_id`, `bad_query`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session (or another tenant's)", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ContactsQuery>,
) -> Result<Json<ContactPage>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    if query.q.as_ref().is_some_and(|q| q.chars().count() > 100) {
        return Err(ApiError::bad_request(
            "bad_query",
            "q is at most 100 characters",
        ));
    }
    let prefix = state.supervisor.contacts_prefix(&id).await?;
    let after = cursor(&prefix, query.after.as_deref())?;
    let store = state.store.clone();
    let q = query.q.clone();
    let (contacts, next) = tokio::task::spawn_blocking(move || {
        contacts::page(&store, &prefix, q.as_deref(), after.as_deref(), limit)
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(ContactPage {
        contacts,
        next: next.map(|k| hex(&k)),
    }))
}

/// The whole directory as CSV (RFC 4180): `phone,lid,push_name,groups,
/// first_seen_ms,last_seen_ms`, groups separated by spaces.
#[utoipa::path(get, path = "/sessions/{id}/contacts.csv", tag = "contacts",
    params(SessionPath),
    responses(
        (status = 200, description = "the directory", content_type = "text/csv", body = String),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session (or another tenant's)", body = ErrorBody),
    ))]
pub async fn csv(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    visible_session(&state, &principal, &id).await?;
    let prefix = state.supervisor.contacts_prefix(&id).await?;
    let store = state.store.clone();
    let body = tokio::task::spawn_blocking(move || -> Result<String, ApiError> {
        let mut out = String::from("phone,lid,push_name,groups,first_seen_ms,last_seen_ms\r\n");
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (people, next) = contacts::page(&store, &prefix, None, after.as_deref(), 1000)?;
            for p in &people {
                let fields = [
                    p.phone.clone().unwrap_or_default(),
                    p.lid.clone().unwrap_or_default(),
                    p.push_name.clone().unwrap_or_default(),
                    p.groups.join(" "),
                    p.first_seen_ms.to_string(),
                    p.last_seen_ms.to_string(),
                ];
                let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.push_str(&row.join(","));
                out.push_str("\r\n");
            }
            match next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"contacts.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// One RFC 4180 field: quoted when it holds a comma, quote or line break;
/// a leading `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet
/// does not run a push name as a formula.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

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

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("15551234567"), "15551234567");
        assert_eq!(csv_field("Ada, Inc"), "\"Ada, Inc\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("@x,y"), "\"'@x,y\"");
        assert_eq!(csv_field(""), "");
    }
}
