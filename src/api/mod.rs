//! The HTTP/WebSocket API (axum): REST under `/v1`, the event WebSocket,
//! authentication, limits, the OpenAPI document, and the admin page.
//!
//! Commands flow `api` → [`Supervisor`]; events flow back through the
//! supervisor's broadcast to [`ws`]. Nothing here touches `wa`.

pub mod admin;
pub mod auth;
#[cfg(feature = "demo")]
mod demo;
pub mod error;
pub mod extract;
pub mod graph;
pub mod listener;
pub mod openapi;
pub mod operations;
pub mod qr;
pub mod sessions;
pub mod tenants;
pub mod webhooks;
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
use axum::routing::{delete, get, post};
use serde_json::json;

use self::auth::Auth;
use self::error::ApiError;
use crate::config::Config;
use crate::session::Supervisor;
use crate::store::Store;
use crate::task::TaskScope;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub supervisor: Supervisor,
    pub store: Store,
    pub auth: Arc<Auth>,
    pub config: Config,
    /// The API's scope: cancelled when the daemon starts shutting down.
    /// Connections and WebSockets are counted in it until they close.
    pub scope: TaskScope,
    /// The webhook outbox; `None` only in router tests without one.
    pub webhooks: Option<crate::webhook::Webhooks>,
    /// `serve --demo`: the embedded fake WhatsApp server.
    #[cfg(feature = "demo")]
    pub demo: Option<Arc<crate::demo::Demo>>,
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
        scope: TaskScope,
        webhooks: Option<crate::webhook::Webhooks>,
    ) -> Self {
        Self(Arc::new(Shared {
            supervisor,
            store,
            auth,
            config,
            scope,
            webhooks,
            #[cfg(feature = "demo")]
            demo: None,
        }))
    }

    /// Serves the demo routes with this fake (call before sharing the state).
    #[cfg(feature = "demo")]
    pub fn with_demo(mut self, demo: Option<Arc<crate::demo::Demo>>) -> Self {
        Arc::get_mut(&mut self.0)
            .expect("with_demo is called on a fresh state")
            .demo = demo;
        self
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/sessions", get(sessions::list).post(sessions::create))
        .route(
            "/sessions/{id}",
            get(sessions::show)
                .patch(sessions::update)
                .delete(sessions::delete),
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
        .route("/tenants/{id}/webhooks", get(webhooks::tenant_list))
        .route(
            "/tenants/{id}/webhooks/status",
            get(webhooks::tenant_status),
        )
        .route(
            "/tenants/{id}/webhooks/dead-letters",
            get(webhooks::dead_list).delete(webhooks::dead_purge),
        )
        .route(
            "/tenants/{id}/webhooks/dead-letters/redeliver",
            post(webhooks::dead_redeliver_all),
        )
        .route(
            "/tenants/{id}/webhooks/dead-letters/{dead}",
            delete(webhooks::dead_delete),
        )
        .route(
            "/tenants/{id}/webhooks/dead-letters/{dead}/redeliver",
            post(webhooks::dead_redeliver),
        )
        .route(
            "/tenants/{id}/webhooks/{name}",
            get(webhooks::tenant_show)
                .put(webhooks::tenant_put)
                .delete(webhooks::tenant_delete),
        )
        .route("/sessions/{id}/webhooks", get(webhooks::session_list))
        .route(
            "/sessions/{id}/webhooks/{name}",
            get(webhooks::session_show)
                .put(webhooks::session_put)
                .delete(webhooks::session_delete),
        )
        .route(
            "/webhooks/dead-letters",
            get(webhooks::admin_dead_list).delete(webhooks::admin_dead_purge),
        )
        .route(
            "/webhooks/dead-letters/{dead}",
            delete(webhooks::admin_dead_delete),
        )
        .route(
            "/webhooks/dead-letters/{dead}/redeliver",
            post(webhooks::admin_dead_redeliver),
        )
        .route("/ws-tickets", post(tenants::ws_ticket))
        .route("/events", get(ws::events))
        .route("/admin/backup", post(operations::backup))
        .route("/openapi.json", get(openapi_document));
    #[cfg(feature = "demo")]
    let v1 = v1.merge(demo::routes());
    let body_limit = usize::try_from(state.config.api.body_limit).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(operations::metrics))
        .nest("/v1", v1)
        .merge(admin::routes())
        .merge(graph::routes())
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

/// How long `/readyz` waits for the store's probe.
const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /readyz`: ready while the store answers through its real path (the
/// gate and sled, see [`Store::probe`]), the supervisor runs and the daemon
/// is not stopping.
async fn readyz(State(state): State<AppState>) -> Response {
    let store_ok = match state.store.probe(READY_PROBE_TIMEOUT).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "readiness: the store does not answer");
            false
        }
    };
    let running = state.supervisor.is_running();
    let stopping = state.scope.is_cancelled();
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
