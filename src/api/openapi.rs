//! The OpenAPI 3.1 document of the API, served at `/v1/openapi.json`.
//!
//! Generated, not hand-kept: every handler carries `#[utoipa::path]` and the
//! router is built from those handlers with `routes!()` ([`super::api`]), so
//! a route is served only with its documentation, and the request and
//! response types derive their schemas. What every operation shares is
//! added here once, from what it takes (see [`shared_answers`]): the
//! `{error:{code,message}}` body, 401/429 from authentication, 503 from the
//! request timeout, 400 for a malformed path or query, and 400/413/415/422
//! from the JSON body extractor.
//!
//! The patterns below are the validators' rules written as regular
//! expressions (`extract::check_id`, `webhook::endpoint::check_name`,
//! `sessions::normalize_phone`, `webhooks::dead_id`); schemathesis
//! (`tests/openapi/run.sh`) checks in CI that the server accepts what they
//! match and refuses what they do not.

use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::session::SessionInfo;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "whatsd",
        description = "Self-hosted WhatsApp multi-device session daemon. Every route except /healthz, /readyz, this document and the admin page (/, /admin) needs `Authorization: Bearer <token>`: the admin token, or a tenant token (scoped to that tenant's sessions). Errors are always `{\"error\":{\"code\",\"message\"}}`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// The document, generated once from the routes.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, mut openapi) = super::api().split_for_parts();
        openapi.info.version = env!("CARGO_PKG_VERSION").to_string();
        let mut doc = serde_json::to_value(&openapi).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the OpenAPI document does not serialize");
            json!({})
        });
        shared_answers(&mut doc);
        doc
    })
}

/// Adds to every operation the answers it shares with the others, unless
/// the operation documents that status itself.
fn shared_answers(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut().filter_map(Value::as_object_mut) {
        for op in item.values_mut().filter_map(Value::as_object_mut) {
            let public = op
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| {
                    s.iter()
                        .all(|r| r.as_object().is_some_and(|r| r.is_empty()))
                });
            let takes_params = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|p| !p.is_empty());
            let takes_body = op.contains_key("requestBody");
            let mut shared: Vec<(&str, &str)> = vec![(
                "503",
                "`timeout`: the request took longer than `api.request_timeout`; or the daemon is shutting down",
            )];
            if !public {
                shared.push(("401", "`unauthorized`: no bearer token, or not a valid one"));
                shared.push((
                    "429",
                    "`too_many_auth_failures`: too many failed authentications from this client address (valid tokens are never throttled)",
                ));
            }
            if takes_params || takes_body {
                shared.push((
                    "400",
                    "a path or query parameter, or the body, is malformed (`invalid_id`, `invalid_name`, `invalid_phone`, `bad_path`, `bad_query`, `malformed_json`, `bad_body`)",
                ));
            }
            if takes_body {
                shared.push((
                    "413",
                    "`body_too_large`: the body is larger than `api.body_limit`",
                ));
                shared.push((
                    "415",
                    "`unsupported_media_type`: a body without `Content-Type: application/json`",
                ));
                shared.push((
                    "422",
                    "`invalid_body`: the JSON does not fit the schema (unknown fields included)",
                ));
            }
            let responses = op
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            if let Some(responses) = responses {
                for (status, description) in shared {
                    responses
                        .entry(status)
                        .or_insert_with(|| error_response(description));
                }
            }
        }
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
    })
}

// ---- shared schemas -----------------------------------------------------

/// Every error: `{"error":{"code","message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable.
    pub code: String,
    /// For people; may change.
    pub message: String,
}

/// `{ "status": … }` from `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    pub status: String,
}

// ---- path parameters ----------------------------------------------------

/// `/sessions/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionPath {
    /// Session id.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: String,
}

/// `/tenants/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// Tenant id.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: String,
}

/// `/sessions/{id}/webhooks/{name}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionEndpointPath {
    /// Session id.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: String,
    /// Endpoint name (not `status` or `dead-letters`, which are routes of their own).
    #[param(pattern = "^(?!status$|dead-letters$)[a-z0-9_-]{1,64}$")]
    pub name: String,
}

/// `/sessions/{id}/messages/{message_id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionMessagePath {
    /// Session id.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: String,
    /// The message id the send answered.
    #[param(pattern = "^[0-9A-Za-z._-]{1,128}$")]
    pub message_id: String,
}

/// `/tenants/{id}/webhooks/{name}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantEndpointPath {
    /// Tenant id.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: String,
    /// Endpoint name (not `status` or `dead-letters`, which are routes of their own).
    #[param(pattern = "^(?!status$|dead-letters$)[a-z0-9_-]{1,64}$")]
    pub name: String,
}

/// `/webhooks/dead-letters/{dead}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeadPath {
    /// Dead-letter id (decimal digits).
    #[param(pattern = "^[0-9]{1,19}$")]
    pub dead: String,
}

/// `/tenants/{id}/webhooks/dead-letters/{dead}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantDeadPath {
    /// Tenant id.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: String,
    /// Dead-letter id (decimal digits).
    #[param(pattern = "^[0-9]{1,19}$")]
    pub dead: String,
}

/// `/phones/{phone}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PhonePath {
    /// International number, country code first: 7 to 15 digits, the
    /// first not 0; an optional leading `+`, spaces and dashes are ignored.
    #[param(pattern = r"^[ -]*(\+[ -]*)?[1-9][ -]*([0-9][ -]*){6,14}$")]
    pub phone: String,
}

// ---- response bodies the handlers build as JSON values ------------------

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct PhoneSessions {
    /// The number, normalized to digits.
    pub phone: String,
    pub sessions: Vec<SessionInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct PairCode {
    /// The code to type on the phone.
    pub code: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub expires_at_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Sent {
    /// The message id.
    pub id: String,
}

#[derive(Serialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub created_at_ms: i64,
    pub token_issued_at_ms: i64,
    /// How many sessions it owns.
    pub sessions: u64,
}

/// A tenant with its token: shown once, when created or rotated.
#[derive(Serialize, ToSchema)]
pub struct TenantWithToken {
    pub id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub created_at_ms: i64,
    pub token_issued_at_ms: i64,
    pub sessions: u64,
    /// The tenant's bearer token; not shown again.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
}

#[derive(Serialize, ToSchema)]
pub struct WsTicket {
    /// For `GET /v1/events?ticket=`; one use.
    pub ticket: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub expires_at_ms: i64,
}

/// A webhook endpoint, without its secret.
#[derive(Serialize, ToSchema)]
pub struct Endpoint {
    pub name: String,
    #[schema(pattern = "^(global|tenant|session)$")]
    pub scope: String,
    /// The tenant or session id it belongs to (empty for global endpoints).
    pub owner: String,
    pub tenant: String,
    pub url: String,
    #[schema(schema_with = event_types)]
    pub events: Vec<String>,
    pub format: crate::webhook::endpoint::Format,
    pub secret_set: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointList {
    pub webhooks: Vec<Endpoint>,
}

/// One endpoint's delivery status.
#[derive(Serialize, ToSchema)]
pub struct EndpointStatus {
    pub endpoint: Endpoint,
    pub queue_depth: u64,
    pub oldest_pending_age_ms: Option<i64>,
    pub attempts: u64,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    pub last_success_at_ms: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryStatus {
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetter {
    #[schema(pattern = "^[0-9]{1,19}$")]
    pub id: String,
    pub endpoint: String,
    pub reason: String,
    pub died_at_ms: i64,
    pub attempts: u64,
    pub last_error: Option<String>,
    /// The event as it would have been delivered.
    #[schema(value_type = Object)]
    pub event: Value,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `after` for the next page; null on the last.
    pub next_after: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Purged {
    pub purged: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Redelivering {
    pub redelivering: u64,
}

/// What `normalize_phone` takes: an international number, 7 to 15 digits,
/// country code first; spaces, dashes and a leading `+` are ignored.
pub const PHONE_PATTERN: &str = r"^[ -]*(\+[ -]*)?[1-9][ -]*([0-9][ -]*){6,14}$";

/// An array of 1 to `max` phone numbers.
fn phone_numbers(max: usize) -> ArrayBuilder {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(PHONE_PATTERN)),
        )
        .min_items(Some(1))
        .max_items(Some(max))
}

pub fn phone_numbers_500() -> impl Into<RefOr<Schema>> {
    phone_numbers(500)
}

pub fn phone_numbers_1024() -> impl Into<RefOr<Schema>> {
    phone_numbers(1024)
}

/// Up to 20 labels of 1 to 64 characters.
pub fn labels() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(64)),
        )
        .max_items(Some(20))
}

/// The webhook event types, as an array schema of their names.
pub fn event_types() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new().items(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(crate::webhook::endpoint::EVENT_TYPES.iter().copied())),
    )
}
