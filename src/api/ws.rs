//! `GET /v1/events`: a WebSocket of session events.
//!
//! The first frame is a `snapshot` of every session in scope (with its live
//! QR, if any); then one JSON text frame per event. The server pings every
//! `ws_ping_interval`. A consumer that falls behind the event broadcast is
//! closed with 1013 (try again later) instead of being buffered for; one
//! whose socket stops draining is dropped after `ws_send_timeout`. At
//! shutdown every socket is closed with 1001.
//!
//! Authorisation is checked for every frame, not only at connect: a frame
//! goes out only if its tenant is the socket principal's own (the admin
//! sees all) and the token the socket was opened with is still current.
//! Rotating a tenant's token or deleting the tenant closes its sockets
//! with 4401. A socket following one session stops (4404) once an event
//! shows that session id under another tenant than the one it resolved
//! at connect: the session it followed was deleted and the id reused.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::auth::{Grant, Principal, SocketSlot, grant_from_parts};
use super::error::ApiError;
use super::extract::{ApiQuery, check_id, path_session_id};
use super::openapi::ErrorBody;
use super::qr::{QrView, now_ms, rfc3339_ms};
use crate::session::{EventKind, SessionEvent, SessionInfo};

/// Close codes (RFC 6455 §7.4.1).
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
const CLOSE_POLICY: u16 = 1008;
/// The socket's token was rotated or its tenant deleted (private range).
pub const CLOSE_TOKEN_REVOKED: u16 = 4401;
/// The session a `?session=` socket followed was deleted.
pub const CLOSE_SESSION_GONE: u16 = 4404;
/// Clients only send control frames; anything bigger is refused.
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Follow one session.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub session: Option<String>,
    /// Follow one tenant's sessions.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub tenant: Option<String>,
    /// A one-time ticket from `POST /v1/ws-tickets` instead of the
    /// `Authorization` header (browsers); refused once its token is rotated
    /// or its tenant deleted.
    pub ticket: Option<String>,
    /// Refused: long-lived tokens never go in URLs.
    #[param(ignore)]
    pub token: Option<String>,
    /// Refused, like `token`.
    #[param(ignore)]
    pub access_token: Option<String>,
}

/// Which sessions a socket follows.
#[derive(Clone, Debug)]
pub enum Scope {
    All,
    Tenant(String),
    /// One session: the incarnation of its id, owned by `tenant`, that
    /// existed when the socket opened.
    Session {
        id: String,
        tenant: String,
        incarnation: String,
    },
}

impl Scope {
    fn matches(&self, session: &str, tenant: &str, incarnation: &str) -> bool {
        match self {
            Self::All => true,
            Self::Tenant(t) => t == tenant,
            Self::Session {
                id,
                tenant: owner,
                incarnation: own,
            } => id == session && owner == tenant && own == incarnation,
        }
    }

    /// The followed session is gone: deleted, moved to another tenant, or
    /// its id now names another session.
    fn lost(&self, event: &SessionEvent) -> bool {
        matches!(self, Self::Session { id, tenant, incarnation }
            if *id == event.session
                && (*tenant != event.tenant
                    || *incarnation != event.incarnation
                    || matches!(event.kind, EventKind::Deleted {})))
    }
}

/// A WebSocket of session events: a `snapshot` frame, then `session.*`
/// and `message.*` frames.
#[utoipa::path(get, path = "/events", tag = "events",
    params(EventsQuery),
    responses(
        (status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "`not_a_websocket`: not a WebSocket upgrade request; `token_in_url`; `invalid_id`; `bad_query`: both `session` and `tenant`", body = ErrorBody),
        (status = 403, description = "`forbidden`: a tenant token asked for another tenant", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 429, description = "`too_many_sockets`: this token holds as many WebSockets as it may; or `too_many_auth_failures`", body = ErrorBody),
    ))]
pub async fn events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    if query.token.is_some() || query.access_token.is_some() {
        return Err(ApiError::bad_request(
            "token_in_url",
            "never put a token in a URL; use the Authorization header or a ticket from POST /v1/ws-tickets",
        ));
    }
    let grant = match &query.ticket {
        Some(ticket) => match state.auth.redeem_ticket(ticket) {
            Some(grant) => grant,
            None => {
                let ip = state.auth.client_ip(&parts);
                return Err(state.auth.failed(
                    ip,
                    ApiError::unauthorized("unknown, used, expired or revoked ticket"),
                ));
            }
        },
        None => grant_from_parts(&state, &parts)?,
    };
    let principal = &grant.principal;
    let scope = resolve_scope(&state, principal, &query).await?;
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state)
        .await
        .map_err(|r| ApiError::bad_request("not_a_websocket", r.body_text()))?;
    let Some(slot) = state.auth.acquire_socket(principal) else {
        return Err(ApiError::too_many(
            "too_many_sockets",
            "this token holds as many WebSockets as it may; close one first",
            1,
        ));
    };
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| {
            // axum runs the socket in a task of its own: counted in the
            // API's scope, so shutdown waits for it to close.
            let held = state.scope.hold();
            async move {
                serve_socket(state, grant, scope, socket, slot).await;
                drop(held);
            }
        }))
}

async fn resolve_scope(
    state: &AppState,
    principal: &Principal,
    query: &EventsQuery,
) -> Result<Scope, ApiError> {
    match (&query.session, &query.tenant) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "bad_query",
            "give either session or tenant, not both",
        )),
        (Some(id), None) => {
            path_session_id(id)?;
            let info = state.supervisor.get(id).await?;
            if !principal.can_see(&info.tenant) {
                return Err(ApiError::session_not_found(id));
            }
            Ok(Scope::Session {
                id: id.clone(),
                tenant: info.tenant,
                incarnation: info.incarnation,
            })
        }
        (None, Some(tenant)) => {
            check_id("tenant", tenant).map_err(|m| ApiError::bad_request("invalid_id", m))?;
            if !principal.can_see(tenant) {
                return Err(ApiError::forbidden(
                    "a tenant token can only follow its own tenant",
                ));
            }
            Ok(Scope::Tenant(tenant.clone()))
        }
        (None, None) => Ok(match principal {
            Principal::Admin => Scope::All,
            Principal::Tenant(own) => Scope::Tenant(own.clone()),
        }),
    }
}

/// A session and its live QR, as the snapshot shows it.
fn snapshot_entry(state: &AppState, info: &SessionInfo) -> Value {
    let mut entry = json!(info);
    let qr = state
        .supervisor
        .live_qr(&info.id)
        .and_then(|qr| QrView::new(&qr).ok());
    entry["qr"] = json!(qr);
    entry
}

async fn snapshot(state: &AppState, scope: &Scope) -> Value {
    let sessions: Vec<Value> = match scope {
        Scope::Session {
            id,
            tenant,
            incarnation,
        } => match state.supervisor.get(id).await {
            Ok(info) if &info.tenant == tenant && &info.incarnation == incarnation => {
                vec![snapshot_entry(state, &info)]
            }
            _ => Vec::new(),
        },
        _ => state
            .supervisor
            .list()
            .await
            .iter()
            .filter(|s| scope.matches(&s.id, &s.tenant, &s.incarnation))
            .map(|s| snapshot_entry(state, s))
            .collect(),
    };
    json!({ "type": "snapshot", "at_ms": now_ms(), "sessions": sessions })
}

/// The JSON frame for one event. QR events gain an SVG and an RFC 3339
/// `expires_at`.
pub fn event_frame(event: &SessionEvent) -> Option<String> {
    let mut value = serde_json::to_value(event).ok()?;
    match &event.kind {
        EventKind::Qr { qr, .. } => {
            let view = QrView::new(qr).ok()?;
            value["svg"] = json!(view.svg);
            value["expires_at"] = json!(view.expires_at);
        }
        EventKind::PairCode { expires_at_ms, .. } => {
            value["expires_at"] = json!(rfc3339_ms(*expires_at_ms));
        }
        _ => {}
    }
    serde_json::to_string(&value).ok()
}

enum Flow {
    Continue,
    Stop,
}

async fn send(socket: &mut WebSocket, message: Message, timeout: Duration) -> Flow {
    match tokio::time::timeout(timeout, socket.send(message)).await {
        Ok(Ok(())) => Flow::Continue,
        _ => Flow::Stop,
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str, timeout: Duration) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = send(socket, Message::Close(Some(frame)), timeout).await;
}

async fn serve_socket(
    state: AppState,
    grant: Grant,
    scope: Scope,
    mut socket: WebSocket,
    slot: SocketSlot,
) {
    let _slot = slot;
    let mut revocations = state.auth.revocations();
    let send_timeout = state.config.api.ws_send_timeout;
    let shutdown = state.scope.token();
    if shutdown.is_cancelled() {
        close(
            &mut socket,
            CLOSE_GOING_AWAY,
            "server shutting down",
            send_timeout,
        )
        .await;
        return;
    }
    // Subscribe before taking the snapshot, so nothing falls in between.
    let mut events = state.supervisor.subscribe();
    if !state.auth.is_current(&grant) {
        close(
            &mut socket,
            CLOSE_TOKEN_REVOKED,
            "token revoked",
            send_timeout,
        )
        .await;
        return;
    }
    let first = snapshot(&state, &scope).await.to_string();
    if let Flow::Stop = send(&mut socket, Message::Text(first.into()), send_timeout).await {
        return;
    }
    let period = state.config.api.ws_ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::debug!(?scope, "event socket opened");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                close(&mut socket, CLOSE_GOING_AWAY, "server shutting down", send_timeout).await;
                break;
            }
            changed = revocations.changed() => {
                if changed.is_err() || !state.auth.is_current(&grant) {
                    tracing::info!(?scope, "event socket closed: token revoked");
                    close(&mut socket, CLOSE_TOKEN_REVOKED, "token revoked", send_timeout).await;
                    break;
                }
            }
            _ = ping.tick() => {
                if let Flow::Stop = send(&mut socket, Message::Ping(Default::default()), send_timeout).await {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pongs and the odd text frame are fine; the protocol layer
                // rejects malformed frames and oversized messages.
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(Message::Binary(_))) => {
                    close(&mut socket, CLOSE_POLICY, "this socket only sends", send_timeout).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "event socket read failed");
                    break;
                }
            },
            event = events.recv() => match event {
                Ok(event) => {
                    if scope.lost(&event) {
                        tracing::info!(?scope, "event socket closed: its session was deleted");
                        close(&mut socket, CLOSE_SESSION_GONE, "session deleted", send_timeout).await;
                        break;
                    }
                    // Authorised per frame: the principal may see this
                    // tenant, with a token that is still current.
                    if !grant.principal.can_see(&event.tenant)
                        || !scope.matches(&event.session, &event.tenant, &event.incarnation)
                    {
                        continue;
                    }
                    if !state.auth.is_current(&grant) {
                        close(&mut socket, CLOSE_TOKEN_REVOKED, "token revoked", send_timeout).await;
                        break;
                    }
                    let Some(frame) = event_frame(&event) else { continue };
                    if let Flow::Stop = send(&mut socket, Message::Text(frame.into()), send_timeout).await {
                        tracing::info!(?scope, "event socket dropped: not draining");
                        break;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(?scope, missed, "event socket closed: consumer too slow");
                    close(&mut socket, CLOSE_TRY_AGAIN_LATER, "consumer too slow; reconnect for a fresh snapshot", send_timeout).await;
                    break;
                }
                Err(RecvError::Closed) => {
                    close(&mut socket, CLOSE_GOING_AWAY, "server shutting down", send_timeout).await;
                    break;
                }
            },
        }
    }
    tracing::debug!(?scope, "event socket closed");
}
