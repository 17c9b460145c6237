//! Demo routes, served only by `whatsd serve --demo` (feature `demo`): the
//! embedded fake phone scans a session's QR and fake contacts message the
//! session, so the walkthrough needs neither a phone nor the fake's own
//! control API. Same auth as the session routes (admin, or the session's
//! tenant).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{ApiJson, ApiJsonOrEmpty, ApiPath};
use super::openapi::{ErrorBody, SessionPath};
use super::sessions::{MAX_TEXT_CHARS, no_qr, normalize_phone, visible_session};
use crate::demo::{Demo, DemoError};
use crate::session::SessionState;

/// How long a scan waits for a session that is starting to show its QR.
const QR_WAIT: Duration = Duration::from_secs(15);
/// How long a scan waits for the session to connect before answering.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// The contact demo messages come from when the request names none.
const DEMO_CONTACT: &str = "15557654321";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(info))
        .routes(routes!(scan))
        .routes(routes!(message))
}

fn demo(state: &AppState) -> Result<&Arc<Demo>, ApiError> {
    state
        .demo
        .as_ref()
        .ok_or_else(|| ApiError::not_found("demo_off", "the daemon runs without --demo"))
}

fn refused(e: DemoError) -> ApiError {
    let status = match e.code {
        "bad_request" => StatusCode::UNPROCESSABLE_ENTITY,
        "not_found" | "conflict" => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(
        status,
        "demo_phone_refused",
        format!("the demo phone refused: {e}"),
    )
}

#[derive(Serialize, ToSchema)]
struct DemoInfo {
    demo: bool,
    /// The embedded fake WhatsApp server's control API.
    control_url: String,
    /// The contact demo messages come from by default.
    default_contact: String,
}

/// `GET /v1/demo`: 200 in demo mode (the admin page shows its demo buttons).
#[utoipa::path(get, path = "/demo", tag = "demo",
    responses(
        (status = 200, description = "the daemon runs with `--demo`", body = DemoInfo),
        (status = 404, description = "`demo_off`: the daemon runs without `--demo`", body = ErrorBody),
    ))]
async fn info(State(state): State<AppState>, _: Principal) -> Result<Json<DemoInfo>, ApiError> {
    let demo = demo(&state)?;
    Ok(Json(DemoInfo {
        demo: true,
        control_url: demo.control_url(),
        default_contact: DEMO_CONTACT.to_string(),
    }))
}

/// `null` for a field means the same as leaving it out.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    /// The fake phone's number; one derived from the session id by default.
    #[schema(pattern = r"^[ -]*(\+[ -]*)?[1-9][ -]*([0-9][ -]*){6,14}$")]
    phone: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Scanned {
    phone: String,
    jid: String,
    lid: Option<String>,
    /// Where the session ended up (`connected` unless it failed).
    state: SessionState,
}

const DEMO_REFUSED: &str = "`demo_phone_refused`: the fake phone refused";

/// `POST /v1/demo/sessions/{id}/scan`: the fake phone scans the QR the
/// session shows now, and answers once the session is connected (or has
/// stopped trying).
#[utoipa::path(post, path = "/demo/sessions/{id}/scan", tag = "demo",
    params(SessionPath),
    request_body(content = Option<ScanRequest>, description = "optional"),
    responses(
        (status = 200, description = "paired", body = Scanned),
        (status = 404, description = "`demo_off`; `not_found`: no such session; no live QR: `qr_pending`, `already_paired`, `pairing_by_code`, `not_started`", body = ErrorBody),
        (status = 409, description = DEMO_REFUSED, body = ErrorBody),
        (status = 422, description = "`invalid_phone`, or the fake phone refused the request", body = ErrorBody),
        (status = 502, description = DEMO_REFUSED, body = ErrorBody),
        (status = 503, description = "`timeout`: no QR or no connection in time", body = ErrorBody),
    ))]
async fn scan(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJsonOrEmpty(req): ApiJsonOrEmpty<ScanRequest>,
) -> Result<Json<Scanned>, ApiError> {
    let demo = demo(&state)?;
    visible_session(&state, &principal, &id).await?;
    let phone = match req.phone.as_deref() {
        Some(phone) => normalize_phone(phone)?,
        None => phone_for(&id),
    };
    // A session just created or started shows its first QR within moments.
    let supervisor = &state.supervisor;
    let (info, qr) = supervisor.wait_qr(&id, QR_WAIT).await?;
    let Some(qr) = qr else {
        return Err(no_qr(&info));
    };
    let paired = demo.scan(&qr.code, &phone).await.map_err(refused)?;
    // Answer once the session is connected (or has stopped trying).
    let info = supervisor
        .wait_until(&id, CONNECT_WAIT, |info| {
            !matches!(
                info.state,
                SessionState::Starting
                    | SessionState::Qr
                    | SessionState::Paired
                    | SessionState::Connecting
            )
        })
        .await?;
    Ok(Json(Scanned {
        phone: paired.phone,
        jid: paired.jid,
        lid: paired.lid,
        state: info.state,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MessageRequest {
    /// The text; with `image`, the picture's caption (optional there).
    #[schema(min_length = 1, max_length = 65536)]
    text: Option<String>,
    /// Send the built-in demo picture (a small PNG) instead of a text
    /// message; it arrives as an `image` with a media `url`.
    #[serde(default)]
    image: bool,
    /// The contact's number (default 15557654321); `null` means the default.
    #[schema(pattern = r"^[ -]*(\+[ -]*)?[1-9][ -]*([0-9][ -]*){6,14}$")]
    from: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct DemoSent {
    /// The message id.
    id: String,
    /// The session's phone.
    to: String,
    /// The contact's phone.
    from: String,
}

/// `POST /v1/demo/sessions/{id}/messages`: a fake contact sends the
/// session's phone a text, or with `image: true` the built-in demo picture
/// (captioned by `text`, if any), which arrives like any WhatsApp message.
#[utoipa::path(post, path = "/demo/sessions/{id}/messages", tag = "demo",
    params(SessionPath),
    request_body = MessageRequest,
    responses(
        (status = 200, description = "sent to the session", body = DemoSent),
        (status = 404, description = "`demo_off`; `not_found`: no such session", body = ErrorBody),
        (status = 409, description = "`not_paired`: the session has no phone yet; or the fake phone refused", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_phone`; or the fake phone refused the request", body = ErrorBody),
        (status = 502, description = DEMO_REFUSED, body = ErrorBody),
    ))]
async fn message(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<MessageRequest>,
) -> Result<Json<DemoSent>, ApiError> {
    let demo = demo(&state)?;
    let info = visible_session(&state, &principal, &id).await?;
    let text = req.text.as_deref();
    let text_ok = match text {
        Some(text) => !text.is_empty() && text.chars().count() <= MAX_TEXT_CHARS,
        None => req.image,
    };
    if !text_ok {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("text must be 1 to {MAX_TEXT_CHARS} characters (optional with image)"),
        ));
    }
    if info.phone.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_paired",
            format!("session {id} has no phone yet; pair it first"),
        ));
    }
    let from = match req.from.as_deref() {
        Some(from) => normalize_phone(from)?,
        None => DEMO_CONTACT.to_string(),
    };
    let message_id = if req.image {
        demo.send_image(&info.phone, &from, text)
    } else {
        // Checked above: a text message has its text.
        demo.send(&info.phone, &from, text.unwrap_or_default())
    }
    .map_err(refused)?;
    Ok(Json(DemoSent {
        id: message_id,
        to: info.phone,
        from,
    }))
}

/// A stable fake number per session id (`1555` and seven digits), so two
/// demo sessions never share a phone.
fn phone_for(id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let bytes: [u8; 8] = digest.as_ref()[..8].try_into().unwrap_or_default();
    format!("1555{:07}", u64::from_be_bytes(bytes) % 10_000_000)
}
