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
use super::extract::{ApiJson, ApiPath, ApiQuery, JsonOrCsv};
use super::groups::answered;
use super::openapi::{ErrorBody, SessionPath};
use super::sessions::{normalize_phone, visible_session};
use crate::hex::{hex, unhex};
use crate::session::contacts::{self, Annotation, Contact};
use crate::wa::contacts::NumberCheck;

/// Page sizes of the directory.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 500;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContactsQuery {
    /// Only people whose phone, LID, push name or address-book name contains
    /// this (any case).
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
#[utoipa::path(get, path = "/sessions/{id}/contacts", operation_id = "list_contacts", tag = "contacts",
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
/// first_seen_ms,last_seen_ms,name`, groups separated by spaces (`name`,
/// the address book's, last so readers by position keep working).
#[utoipa::path(get, path = "/sessions/{id}/contacts.csv", operation_id = "export_contacts", tag = "contacts",
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
        let mut out =
            String::from("phone,lid,push_name,groups,first_seen_ms,last_seen_ms,name\r\n");
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
                    p.name.clone().unwrap_or_default(),
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

/// At most this many rows per import.
const MAX_IMPORT_ROWS: usize = 10_000;

/// One row of an import: who (a phone number or a LID) and what to set.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRow {
    /// International number, country code first.
    #[schema(pattern = r"^[ -]*(\+[ -]*)?[1-9][ -]*([0-9][ -]*){6,14}$")]
    pub phone: Option<String>,
    /// `<digits>@lid`.
    #[schema(pattern = "^[0-9]{1,20}@lid$")]
    pub lid: Option<String>,
    /// Your own id for the person (at most 128 characters); `null` or `""`
    /// clears it.
    #[schema(max_length = 128)]
    pub external_id: Option<String>,
    /// Up to 20 labels of 1 to 64 characters; replaces the labels there.
    #[serde(default)]
    #[schema(schema_with = super::openapi::labels)]
    pub labels: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportContacts {
    #[schema(max_items = 10000)]
    pub contacts: Vec<ImportRow>,
}

#[derive(Serialize, ToSchema)]
pub struct RowProblem {
    /// 1-based row of the import (CSV: not counting the header).
    pub row: usize,
    pub phone: Option<String>,
    pub lid: Option<String>,
    /// `not_found`: the directory has no such person; `invalid`: the row
    /// itself is wrong (`message` says how).
    pub reason: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct ImportReport {
    /// People whose `external_id` and `labels` were set.
    pub updated: usize,
    /// Rows that changed nothing, and why.
    pub problems: Vec<RowProblem>,
}

/// Set `external_id` and `labels` on many people at once, found by phone
/// or LID; idempotent. JSON (`{contacts: [...]}`) or CSV with a header row
/// naming some of `phone,lid,external_id,labels` (labels separated by `;`).
#[utoipa::path(post, path = "/sessions/{id}/contacts/import", operation_id = "import_contacts", tag = "contacts",
    params(SessionPath),
    request_body(content(
        (ImportContacts = "application/json"),
        (String = "text/csv"),
    )),
    responses(
        (status = 200, description = "what was set and which rows did not match", body = ImportReport),
        (status = 400, description = "`invalid_id`; `malformed_json`, `malformed_csv`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session (or another tenant's)", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: neither JSON nor CSV", body = ErrorBody),
        (status = 422, description = "`invalid_body`: more than 10,000 rows, or JSON that does not fit", body = ErrorBody),
    ))]
pub async fn import(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: JsonOrCsv<ImportContacts>,
) -> Result<Json<ImportReport>, ApiError> {
    visible_session(&state, &principal, &id).await?;
    let rows = match body {
        JsonOrCsv::Json(body) => {
            // JSON rows have a schema: a row outside it refuses the import
            // (CSV rows have none and are reported one by one).
            for (i, row) in body.contacts.iter().enumerate() {
                if let Err(RowError::Shape(message)) = annotation(row) {
                    return Err(ApiError::unprocessable(
                        "invalid_body",
                        format!("contacts[{i}]: {message}"),
                    ));
                }
            }
            body.contacts
        }
        JsonOrCsv::Csv(text) => csv_rows(&text)?,
    };
    if rows.len() > MAX_IMPORT_ROWS {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("at most {MAX_IMPORT_ROWS} rows per import"),
        ));
    }
    let prefix = state.supervisor.contacts_prefix(&id).await?;
    let store = state.store.clone();
    let report = tokio::task::spawn_blocking(move || -> Result<ImportReport, ApiError> {
        let mut report = ImportReport {
            updated: 0,
            problems: Vec::new(),
        };
        for (i, row) in rows.into_iter().enumerate() {
            let problem = |reason: &str, message: String, row: &ImportRow| RowProblem {
                row: i + 1,
                phone: row.phone.clone(),
                lid: row.lid.clone(),
                reason: reason.to_owned(),
                message,
            };
            let annotation = match annotation(&row) {
                Ok(a) => a,
                Err(RowError::Shape(message) | RowError::Sense(message)) => {
                    report.problems.push(problem("invalid", message, &row));
                    continue;
                }
            };
            if contacts::annotate(&store, &prefix, &annotation)? {
                report.updated += 1;
            } else {
                let message = "no such person in this session's directory".to_owned();
                report.problems.push(problem("not_found", message, &row));
            }
        }
        Ok(report)
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    state.store.flush().await?;
    Ok(Json(report))
}

/// What is wrong with an import row: its shape (what the schema says), or
/// its sense (it names nobody).
enum RowError {
    Shape(String),
    Sense(String),
}

/// A row checked and normalized.
fn annotation(row: &ImportRow) -> Result<Annotation, RowError> {
    let phone = match row.phone.as_deref() {
        Some(p) => Some(normalize_phone(p).map_err(|e| RowError::Shape(e.message))?),
        None => None,
    };
    let lid = match row.lid.as_deref() {
        Some(l) => {
            let digits = l.strip_suffix("@lid").unwrap_or("");
            if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(RowError::Shape(format!("lid {l:?} is not <digits>@lid")));
            }
            Some(l.to_owned())
        }
        None => None,
    };
    let external_id = row.external_id.clone().filter(|e| !e.is_empty());
    if external_id
        .as_ref()
        .is_some_and(|e| e.chars().count() > 128)
    {
        return Err(RowError::Shape(
            "external_id is at most 128 characters".into(),
        ));
    }
    if row.labels.len() > 20 {
        return Err(RowError::Shape("at most 20 labels".into()));
    }
    let mut labels: Vec<String> = Vec::new();
    for label in &row.labels {
        if label.is_empty() || label.chars().count() > 64 {
            return Err(RowError::Shape("a label has 1 to 64 characters".into()));
        }
        if !labels.contains(label) {
            labels.push(label.clone());
        }
    }
    if phone.is_none() && lid.is_none() {
        return Err(RowError::Sense("a row names a phone or a lid".into()));
    }
    Ok(Annotation {
        phone,
        lid,
        external_id,
        labels,
    })
}

/// The rows of an import CSV: a header naming columns of
/// `phone,lid,external_id,labels` (others refused), then one row each.
fn csv_rows(text: &str) -> Result<Vec<ImportRow>, ApiError> {
    let bad = |m: String| ApiError::bad_request("malformed_csv", m);
    let mut records = parse_csv(text).map_err(bad)?.into_iter();
    let Some(header) = records.next() else {
        return Ok(Vec::new());
    };
    let mut columns = Vec::with_capacity(header.len());
    for name in &header {
        let name = name.trim().trim_start_matches('\u{feff}');
        if !matches!(name, "phone" | "lid" | "external_id" | "labels") {
            return Err(bad(format!(
                "unknown column {name:?}: use phone, lid, external_id, labels"
            )));
        }
        columns.push(name.to_owned());
    }
    let mut rows = Vec::new();
    for (i, record) in records.enumerate() {
        if record.iter().all(|f| f.is_empty()) {
            continue;
        }
        if record.len() != columns.len() {
            return Err(bad(format!(
                "row {} has {} fields; the header has {}",
                i + 1,
                record.len(),
                columns.len()
            )));
        }
        let mut row = ImportRow::default();
        for (name, value) in columns.iter().zip(record) {
            match name.as_str() {
                "phone" => row.phone = Some(value).filter(|v| !v.is_empty()),
                "lid" => row.lid = Some(value).filter(|v| !v.is_empty()),
                "external_id" => row.external_id = Some(value),
                _ => {
                    row.labels = value
                        .split(';')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect()
                }
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// RFC 4180 records (quoted fields, `""` for a quote, CRLF or LF).
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            '"' => {
                return Err(format!(
                    "a quote inside an unquoted field (record {})",
                    records.len() + 1
                ));
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                was_quoted = false;
            }
            c if was_quoted => {
                return Err(format!(
                    "text after a closing quote: {c:?} (record {})",
                    records.len() + 1
                ));
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    if !field.is_empty() || !record.is_empty() || was_quoted {
        record.push(field);
        records.push(record);
    }
    Ok(records)
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
    #[schema(schema_with = super::openapi::phone_numbers_500)]
    pub phones: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct NumberChecks {
    /// One entry per distinct number, in the order asked.
    pub results: Vec<NumberCheck>,
}

/// Which of these numbers are on WhatsApp, with their JIDs.
#[utoipa::path(post, path = "/sessions/{id}/contacts/check", operation_id = "check_numbers", tag = "contacts",
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
    use super::{csv_field, parse_csv};

    #[test]
    fn csv_records_parse_as_rfc_4180_says() {
        let text = "phone,labels\r\n15551234567,\"a;b\"\r\n\"1555\"\"x\",\"two\nlines\"\n,\n";
        assert_eq!(
            parse_csv(text).unwrap(),
            vec![
                vec!["phone".to_string(), "labels".into()],
                vec!["15551234567".into(), "a;b".into()],
                vec!["1555\"x".into(), "two\nlines".into()],
                vec![String::new(), String::new()],
            ]
        );
        assert!(parse_csv("\"open").is_err());
        assert!(parse_csv("a\"b").is_err());
        assert!(parse_csv("\"a\"b").is_err());
        // Our own export reads back.
        let exported = format!("{},{}\r\n", csv_field("x,y"), csv_field("say \"hi\""));
        assert_eq!(
            parse_csv(&exported).unwrap(),
            vec![vec!["x,y".to_string(), "say \"hi\"".into()]]
        );
    }

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
