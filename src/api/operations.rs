//! Routes for operators: Prometheus metrics and store backups (admin only).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::openapi::ErrorBody;

/// `GET /metrics`: the Prometheus text exposition (admin).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "the metrics, text exposition format 0.0.4", content_type = "text/plain", body = String),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let body = crate::metrics::render(&state.supervisor, &state.store).await;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        body,
    )
        .into_response())
}

/// `POST /v1/admin/backup`: a consistent copy of the whole store, values
/// still sealed with the master key (which is not included).
#[utoipa::path(post, path = "/admin/backup", tag = "operations",
    responses(
        (status = 200, description = "the backup file (`whatsd store restore --in`)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
    ))]
pub async fn backup(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let store = state.store.clone();
    let bytes = tokio::task::spawn_blocking(move || store.backup())
        .await
        .map_err(|e| ApiError::internal(&e))??;
    tracing::info!(bytes = bytes.len(), "store backup taken");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"whatsd-backup.wdb\""),
            ),
        ],
        bytes,
    )
        .into_response())
}
