//! Demo routes, served only by `whatsd serve --demo` (feature `demo`): the
//! embedded fake phone scans a session's QR and fake contacts message the
//! session, so the walkthrough needs neither a phone nor the fake's own
//! control API. Same auth as the session routes (admin, or the session's
//! tenant).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{ApiJson, ApiJsonOrEmpty, ApiPath};
use super::sessions::{MAX_TEXT_BYTES, no_qr, normalize_phone, visible_session};
use crate::demo::{Demo, DemoError};
use crate::session::SessionState;

/// How long a scan waits for a session that is starting to show its QR.
const QR_WAIT: Duration = Duration::from_secs(15);
/// How long a scan waits for the session to connect before answering.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// The contact demo messages come from when the request names none.
const DEMO_CONTACT: &str = "15557654321";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/demo", get(info))
        .route("/demo/sessions/{id}/scan", post(scan))
        .route("/demo/sessions/{id}/messages", post(message))
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

/// `GET /v1/demo`: 200 in demo mode (the admin page shows its demo buttons).
async fn info(State(state): State<AppState>, _: Principal) -> Result<Json<Value>, ApiError> {
    let demo = demo(&state)?;
    Ok(Json(json!({
        "demo": true,
        "control_url": demo.control_url(),
        "default_contact": DEMO_CONTACT,
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    /// The fake phone's number; one derived from the session id by default.
    phone: Option<String>,
}

/// `POST /v1/demo/sessions/{id}/scan`: the fake phone scans the QR the
/// session shows now.
async fn scan(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJsonOrEmpty(req): ApiJsonOrEmpty<ScanRequest>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "phone": paired.phone,
        "jid": paired.jid,
        "lid": paired.lid,
        "state": info.state,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageRequest {
    text: String,
    /// The contact's number (default 15557654321).
    from: Option<String>,
}

/// `POST /v1/demo/sessions/{id}/messages`: a fake contact sends the
/// session's phone a text, which arrives like any WhatsApp message.
async fn message(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<MessageRequest>,
) -> Result<Json<Value>, ApiError> {
    let demo = demo(&state)?;
    let info = visible_session(&state, &principal, &id).await?;
    if req.text.is_empty() || req.text.len() > MAX_TEXT_BYTES {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("text must be 1 to {MAX_TEXT_BYTES} bytes"),
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
    let message_id = demo.send(&info.phone, &from, &req.text).map_err(refused)?;
    Ok(Json(
        json!({ "id": message_id, "to": info.phone, "from": from }),
    ))
}

/// A stable fake number per session id (`1555` and seven digits), so two
/// demo sessions never share a phone.
fn phone_for(id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let bytes: [u8; 8] = digest.as_ref()[..8].try_into().unwrap_or_default();
    format!("1555{:07}", u64::from_be_bytes(bytes) % 10_000_000)
}
