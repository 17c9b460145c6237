//! The HTTP/WebSocket API (axum): REST under `/v1`, the event WebSocket,
//! authentication, limits, and the OpenAPI document.
//!
//! Commands flow `api` → [`Supervisor`]; events flow back through the
//! supervisor's broadcast to [`ws`]. Nothing here touches `wa`.

pub mod auth;
pub mod error;
pub mod extract;
pub mod listener;
pub mod openapi;
pub mod qr;
pub mod sessions;
pub mod tenants;
pub mod ws;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::watch;

use self::auth::Auth;
use self::error::ApiError;
use crate::config::Config;
use crate::session::Supervisor;
use crate::store::Store;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub supervisor: Supervisor,
    pub store: Store,
    pub auth: Arc<Auth>,
    pub config: Config,
    /// Turns `true` when the daemon starts shutting down.
    pub shutdown: watch::Receiver<bool>,
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        supervisor: Supervisor,
        store: Store,
        auth: Arc<Auth>,
        config: Config,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self(Arc::new(Shared {
            supervisor,
            store,
            auth,
            config,
            shutdown,
        }))
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/sessions", get(sessions::list).post(sessions::create))
        .route(
            "/sessions/{id}",
            get(sessions::show).delete(sessions::delete),
        )
        .route("/sessions/{id}/start", post(sessions::start))
        .route("/sessions/{id}/stop", post(sessions::stop))
        .route("/sessions/{id}/reset", post(sessions::reset))
        .route("/sessions/{id}/logout", post(sessions::logout))
        .route("/sessions/{id}/qr", get(sessions::qr))
        .route("/sessions/{id}/pair-code", post(sessions::pair_code))
        .route("/sessions/{id}/messages", post(sessions::send_message))
        .route("/phones/{phone}", get(sessions::phone_sessions))
        .route("/tenants", get(tenants::list).post(tenants::create))
        .route("/tenants/{id}", get(tenants::show).delete(tenants::delete))
        .route("/tenants/{id}/token", post(tenants::rotate_token))
        .route("/ws-tickets", post(tenants::ws_ticket))
        .route("/events", get(ws::events))
        .route("/openapi.json", get(openapi_document));
    let body_limit = usize::try_from(state.config.api.body_limit).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .nest("/v1", v1)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Per-request timeout, response headers, and an access log line that
/// leaves out the query string (it may hold a ticket).
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response =
        match tokio::time::timeout(state.config.api.request_timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took longer than the server's request timeout",
            )
            .into_response(),
        };
    let headers = response.headers_mut();
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    tracing::debug!(
        %method,
        path = %path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let store_ok = state.store.admin_token_hash().is_ok();
    let running = state.supervisor.is_running();
    let stopping = *state.shutdown.borrow();
    if store_ok && running && !stopping {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        let why = if stopping {
            "the daemon is shutting down"
        } else if !store_ok {
            "the store does not answer"
        } else {
            "the session supervisor is not running"
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why).into_response()
    }
}

async fn openapi_document() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn route_not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route; see /v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /v1/openapi.json",
    )
}
