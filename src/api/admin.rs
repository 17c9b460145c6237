//! The admin page: one HTML page with its script and stylesheet, compiled
//! into the binary so the daemon serves it offline, with no web server or
//! CDN in front. The page talks to the REST API and the event WebSocket
//! like any other client; it holds the token in `sessionStorage` only.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

const INDEX_HTML: &str = include_str!("admin/index.html");
const APP_JS: &str = include_str!("admin/app.js");
const APP_CSS: &str = include_str!("admin/app.css");

/// Only our own files; QR codes arrive as `data:` SVG images, received
/// pictures as `blob:` URLs of what the page fetched itself (the media
/// route needs the Authorization header); the page never runs inline
/// script or style, and no other site may frame it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page at `/` and `/admin`, and its assets under `/admin/`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(admin))
        .routes(routes!(script))
        .routes(routes!(stylesheet))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 4] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    (headers, body).into_response()
}

/// The admin page (it asks for a token itself).
#[utoipa::path(get, path = "/", tag = "admin page", security(()),
    responses((status = 200, description = "the page", content_type = "text/html", body = String)))]
async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The admin page, as at `/`.
#[utoipa::path(get, path = "/admin", tag = "admin page", security(()),
    responses((status = 200, description = "the page", content_type = "text/html", body = String)))]
async fn admin() -> Response {
    index().await
}

#[utoipa::path(get, path = "/admin/app.js", tag = "admin page", security(()),
    responses((status = 200, description = "the page's script", content_type = "text/javascript", body = String)))]
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

#[utoipa::path(get, path = "/admin/app.css", tag = "admin page", security(()),
    responses((status = 200, description = "the page's stylesheet", content_type = "text/css", body = String)))]
async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
