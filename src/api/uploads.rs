//! Meta's media upload, `POST /graph/{version}/{phone_number_id}/media`
//! (multipart: `file`, `type`, `messaging_product`) → `{id}`: the bytes
//! are stored as a queued send's are (encrypted, `crate::store::media_blobs`),
//! the record sealed under the session, and `/messages` sends them by
//! `id` as often as wanted until they expire, 30 days later as Meta's do.

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Principal, authenticate_parts};
use super::graph::{GraphError, GraphPath, valid_version};
use super::sessions::visible_session;
use crate::session::media::{Ingest, IngestError};
use crate::session::now_ms;
use crate::session::outbound::BlobMeta;

/// How long an uploaded media id can be sent (Meta: 30 days).
pub const UPLOAD_TTL_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// An upload's record (sealed in the store).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Upload {
    pub blob: BlobMeta,
    pub mime_type: String,
    pub created_ms: i64,
    #[serde(default)]
    pub file_name: Option<String>,
}

/// Meta's upload request.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: the handler reads the parts itself
struct GraphUploadForm {
    /// The bytes.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Their MIME type (e.g. `image/jpeg`); the bytes' own type wins when
    /// whatsd recognizes them.
    #[schema(rename = "type")]
    kind: String,
    /// `whatsapp`.
    messaging_product: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct GraphUploaded {
    /// The media id to send with (`image: {id}` …).
    id: String,
}

fn store_key(prefix: &[u8], media_id: &str) -> Vec<u8> {
    [prefix, media_id.as_bytes()].concat()
}

/// A numeric id, as Meta's media ids are.
fn new_media_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    // 16 digits, never a leading zero.
    (1_000_000_000_000_000 + u64::from_le_bytes(bytes) % 9_000_000_000_000_000).to_string()
}

/// The upload `media_id` of the session under `prefix`, if it exists and
/// has not expired (an expired one is removed).
pub(super) async fn find(
    state: &AppState,
    prefix: &[u8],
    media_id: &str,
) -> Result<Option<Upload>, GraphError> {
    if media_id.is_empty() || media_id.len() > 32 || !media_id.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let key = store_key(prefix, media_id);
    let raw = state.store.media_upload(&key).map_err(internal)?;
    let Some(upload) = raw.and_then(|r| serde_json::from_slice::<Upload>(&r).ok()) else {
        return Ok(None);
    };
    if now_ms() - upload.created_ms > UPLOAD_TTL_MS {
        forget(state, &key, &upload).await;
        return Ok(None);
    }
    Ok(Some(upload))
}

async fn forget(state: &AppState, key: &[u8], upload: &Upload) {
    let _ = state.store.media_upload_remove(key);
    let _ = state.store.media_blob_remove(&upload.blob.name).await;
}

/// Removes the session's expired uploads.
async fn sweep(state: &AppState, prefix: &[u8]) {
    let Ok(items) = state.store.media_uploads(prefix) else {
        return;
    };
    let now = now_ms();
    for item in items {
        if let Ok(upload) = serde_json::from_slice::<Upload>(&item.value)
            && now - upload.created_ms > UPLOAD_TTL_MS
        {
            forget(state, &item.key, &upload).await;
        }
    }
}

fn internal(e: impl std::fmt::Display) -> GraphError {
    GraphError::from_api(super::error::ApiError::internal(&e), "")
}

/// `POST /graph/{version}/{phone_number_id}/media`.
#[utoipa::path(post, path = "/graph/{version}/{phone_number_id}/media", tag = "graph",
    operation_id = "graph_upload_media",
    params(GraphPath),
    request_body(content((GraphUploadForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "stored; send it by id for 30 days", body = GraphUploaded),
        (status = 400, description = "Meta codes 100 (unknown phone number id: subcode 33; not multipart), 2500 (bad version), 131008 (file or messaging_product missing), 131009 (a value whatsd cannot use), 131053 (the media is larger than whatsd takes)", body = super::graph::GraphErrorBody),
        (status = 401, description = "code 190: no valid bearer token", body = super::graph::GraphErrorBody),
        (status = 429, description = "code 4: too many failed authentications from this address", body = super::graph::GraphErrorBody),
        (status = 500, description = "code 131000: something went wrong", body = super::graph::GraphErrorBody),
    ))]
pub async fn upload(State(state): State<AppState>, request: Request) -> Response {
    match uploaded(&state, request).await {
        Ok(id) => axum::Json(json!({ "id": id })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn uploaded(state: &AppState, request: Request) -> Result<String, GraphError> {
    let (mut parts, body) = request.into_parts();
    let principal: Principal =
        authenticate_parts(state, &parts).map_err(|e| GraphError::from_api(e, ""))?;
    let Path((version, id)) = Path::<(String, String)>::from_request_parts(&mut parts, state)
        .await
        .map_err(|e| GraphError::invalid(e.body_text()))?;
    if !valid_version(&version) {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            2500,
            format!("Unknown path components: /{version}/{id}/media (versions look like v23.0)"),
        ));
    }
    visible_session(state, &principal, &id)
        .await
        .map_err(|e| GraphError::from_api(e, &id))?;
    let prefix = state
        .supervisor
        .contacts_prefix(&id)
        .await
        .map_err(|e| GraphError::from_api(e.into(), &id))?;
    sweep(state, &prefix).await;
    let request = Request::from_parts(parts, body);
    let mut multipart = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|e| {
            GraphError::new(
                StatusCode::BAD_REQUEST,
                100,
                format!(
                    "(#100) The upload must be multipart/form-data: {}",
                    e.body_text()
                ),
            )
        })?;
    let bad_part = |e: axum::extract::multipart::MultipartError| GraphError::invalid(e.body_text());
    let cap = state.config.media.max_any();
    let mut stored = None;
    let mut declared = None;
    let mut product = None;
    let mut file_name = None;
    while let Some(mut field) = multipart.next_field().await.map_err(bad_part)? {
        match field.name().unwrap_or_default() {
            "file" => {
                if stored.is_some() {
                    return Err(GraphError::invalid("one file per upload"));
                }
                file_name = field.file_name().map(str::to_owned);
                let mut ingest = Ingest::start(&state.store, &prefix, cap, None)
                    .await
                    .map_err(internal)?;
                while let Some(chunk) = field.chunk().await.map_err(bad_part)? {
                    ingest.push(&chunk).await.map_err(ingest_error)?;
                }
                stored = Some(ingest.finish().await.map_err(ingest_error)?);
            }
            name => {
                let name = name.to_owned();
                let mut value = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad_part)? {
                    value.extend_from_slice(&chunk);
                    if value.len() > 1024 {
                        return Err(GraphError::invalid(format!("{name} is too long")));
                    }
                }
                let value = String::from_utf8_lossy(&value).trim().to_owned();
                match name.as_str() {
                    "type" => declared = Some(value),
                    "messaging_product" => product = Some(value),
                    _ => {}
                }
            }
        }
    }
    let remove = |name: String| async move {
        let _ = state.store.media_blob_remove(&name).await;
    };
    let Some(stored) = stored else {
        return Err(GraphError::missing("file is required"));
    };
    if !product
        .as_deref()
        .is_some_and(|p| p.eq_ignore_ascii_case("whatsapp"))
    {
        remove(stored.blob.name.clone()).await;
        return Err(GraphError::missing(
            "messaging_product must be \"whatsapp\"",
        ));
    }
    let mime_type = match (stored.sniffed, declared) {
        (Some(mime), _) => mime.to_owned(),
        (None, Some(declared)) if declared.contains('/') && declared.len() <= 100 => declared,
        (None, _) => "application/octet-stream".to_owned(),
    };
    let media_id = new_media_id();
    let record = Upload {
        blob: stored.blob,
        mime_type,
        created_ms: now_ms(),
        file_name,
    };
    let raw = serde_json::to_vec(&record).map_err(internal)?;
    if let Err(e) = state
        .store
        .media_upload_put(&store_key(&prefix, &media_id), &raw)
        .await
    {
        remove(record.blob.name.clone()).await;
        return Err(internal(e));
    }
    Ok(media_id)
}

fn ingest_error(e: IngestError) -> GraphError {
    match e {
        IngestError::TooLarge { limit } => GraphError::cloud(
            StatusCode::BAD_REQUEST,
            131_053,
            "Media upload error",
            format!("the file is larger than {limit} bytes"),
        ),
        IngestError::Empty => GraphError::invalid("the file is empty"),
        IngestError::Source(e) => GraphError::invalid(e),
        e => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_look_like_meta_ids() {
        let id = new_media_id();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(id, new_media_id());
        assert_ne!(store_key(&[1; 32], "1"), store_key(&[2; 32], "1"));
    }
}
