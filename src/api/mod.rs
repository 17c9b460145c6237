//! The HTTP/WebSocket API (axum): REST under `/v1`, the event WebSocket,
//! authentication, limits, the OpenAPI document, and the admin page.
//!
//! Commands flow `api` → [`Supervisor`]; events flow back through the
//! supervisor's broadcast to [`ws`]. Nothing here touches `wa`.

pub mod admin;
pub mod auth;
pub mod contacts;
#[cfg(feature = "demo")]
mod demo;
pub mod error;
pub mod extract;
pub mod graph;
pub mod groups;
mod limits;
pub mod listener;
pub mod media;
pub mod media_out;
pub mod openapi;
pub mod operations;
pub mod qr;
pub mod sessions;
pub mod tenants;
pub mod uploads;
pub mod webhooks;
pub mod ws;

#[cfg(test)]
mod proptests;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// Media re-upload requests waiting for the sender's phone.
    pub reuploads: media::Reuploads,
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
            reuploads: media::Reuploads::default(),
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

/// Every documented route: the REST API under `/v1`, health, metrics and
/// the admin page. Each handler carries its `#[utoipa::path]`, and
/// `routes!()` takes the method and path from it, so nothing is served that
/// [`openapi::document`] does not describe.
///
/// Another module adds its routes the same way: a `pub fn routes() ->
/// OpenApiRouter<AppState>` built with `routes!()` over annotated handlers,
/// merged below (`.merge(graph::routes())`); its paths are documented from
/// its annotations, its schemas collected from their `body = …` types.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(sessions::list, sessions::create))
        .routes(routes!(sessions::show, sessions::update, sessions::delete))
        .routes(routes!(sessions::start))
        .routes(routes!(sessions::stop))
        .routes(routes!(sessions::reset))
        .routes(routes!(sessions::logout))
        .routes(routes!(sessions::qr))
        .routes(routes!(sessions::pair_code))
        .merge(
            // Media arrive as large bodies: the send takes in its own
            // (JSON to `api.body_limit`, media to the `[media]` limits).
            OpenApiRouter::new()
                .routes(routes!(sessions::send_message))
                .layer(DefaultBodyLimit::disable()),
        )
        .routes(routes!(media_out::mark_read))
        .routes(routes!(media_out::presence))
        .routes(routes!(sessions::message_status, sessions::cancel_message))
        .routes(routes!(media::download))
        .routes(routes!(sessions::phone_sessions))
        .routes(routes!(limits::show, limits::set))
        .routes(routes!(tenants::show_limits, tenants::set_limits))
        .routes(routes!(groups::list, groups::create))
        .routes(routes!(groups::show))
        .routes(routes!(groups::members))
        .routes(routes!(groups::leave))
        .routes(routes!(contacts::check))
        .routes(routes!(contacts::list))
        .routes(routes!(contacts::csv))
        .routes(routes!(contacts::import))
        .routes(routes!(tenants::list, tenants::create))
        .routes(routes!(tenants::show, tenants::delete))
        .routes(routes!(tenants::rotate_token))
        .routes(routes!(webhooks::tenant_list))
        .routes(routes!(webhooks::tenant_status))
        .routes(routes!(webhooks::dead_list, webhooks::dead_purge))
        .routes(routes!(webhooks::dead_redeliver_all))
        .routes(routes!(webhooks::dead_delete))
        .routes(routes!(webhooks::dead_redeliver))
        .routes(routes!(
            webhooks::tenant_show,
            webhooks::tenant_put,
            webhooks::tenant_delete
        ))
        .routes(routes!(webhooks::session_list))
        .routes(routes!(
            webhooks::session_show,
            webhooks::session_put,
            webhooks::session_delete
        ))
        .routes(routes!(
            webhooks::admin_dead_list,
            webhooks::admin_dead_purge
        ))
        .routes(routes!(webhooks::admin_dead_delete))
        .routes(routes!(webhooks::admin_dead_redeliver))
        .routes(routes!(tenants::ws_ticket))
        .routes(routes!(ws::events))
        .routes(routes!(operations::backup))
        .routes(routes!(openapi_document));
    #[cfg(feature = "demo")]
    let v1 = v1.merge(demo::routes());
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(operations::metrics))
        .nest("/v1", v1)
        .merge(admin::routes())
        .merge(graph::routes())
        .routes(routes!(media::graph_media))
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let (routes, _) = api().split_for_parts();
    let body_limit = usize::try_from(state.config.api.body_limit).unwrap_or(usize::MAX);
    routes
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

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "up", body = openapi::Status)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// How long `/readyz` waits for the store's probe.
const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /readyz`: ready while the store answers through its real path (the
/// gate and sled, see [`Store::probe`]), the supervisor runs and the daemon
/// is not stopping.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "ready", body = openapi::Status),
        (status = 503, description = "`not_ready`: the store does not answer, the supervisor is not running, or the daemon is shutting down", body = openapi::ErrorBody),
    ))]
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

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = serde_json::Value)))]
async fn openapi_document() -> Json<&'static serde_json::Value> {
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
