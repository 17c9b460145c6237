//! Received media, downloaded through whatsd: `GET /v1/sessions/{id}/
//! messages/{message_id}/media` streams an attachment's decrypted bytes,
//! and Meta's two-step download (`GET /graph/{version}/{media_id}` → a URL,
//! then `GET` that URL with the same bearer token) leads to it.
//!
//! A download fetches the encrypted file from WhatsApp's CDN into a
//! temporary file in `<data_dir>/media-tmp` (ciphertext only: the file is
//! as WhatsApp stores it), proves its `file_enc_sha256` and MAC, then
//! decrypts it into the response body as the client reads, checking the
//! plaintext SHA-256 on the way (the last bytes are held back until it
//! matches; on a mismatch the body is cut off). Memory stays bounded by a
//! few 64 KiB buffers whatever the file's size.
//!
//! The refs a download needs live under the session incarnation's prefix
//! (see [`crate::store::media_refs`]): a session deleted and created again
//! under the same id, or moved to another tenant, reaches none of the
//! media received before.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::ApiPath;
use super::openapi::{ErrorBody, SessionMessagePath};
use super::sessions::visible_session;
use crate::hex::hex;
use crate::lock;
use crate::session::outbound;
use crate::store::media_refs::{self, MediaRef};
use crate::wa::media::{MediaError, decrypt_into};

/// Where downloads keep their encrypted temporary files.
pub const TMP_DIR: &str = "media-tmp";
/// Decrypted bytes per body chunk.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the decrypting thread and the connection.
const CHUNKS_IN_FLIGHT: usize = 4;

fn not_found(message_id: &str) -> ApiError {
    ApiError::not_found(
        "media_not_found",
        format!("this session received no media in a message {message_id:?}"),
    )
}

fn expired(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "media_expired",
        format!("the media is no longer available: {why}"),
    )
}

fn undecryptable(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "media_undecryptable",
        format!("the media from WhatsApp could not be verified or decrypted: {why}"),
    )
}

/// A message id as the API takes it (the same rule as the send status).
fn check_message_id(id: &str) -> Result<(), ApiError> {
    if (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            "a message id is 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
        ))
    }
}

/// How long refs are kept (`media.retention_days`), in ms.
pub fn retention_ms(state: &AppState) -> i64 {
    i64::from(state.config.media.retention_days) * 86_400_000
}

/// The ref of `message_id` in `incarnation`'s media, unless expired.
async fn find_ref(
    state: &AppState,
    incarnation: &str,
    message_id: &str,
) -> Result<(Vec<u8>, MediaRef), ApiError> {
    let prefix = outbound::prefix(state.store.blinder(), incarnation);
    let key = media_refs::key(&prefix, message_id);
    let store = state.store.clone();
    let lookup = key.clone();
    let found = tokio::task::spawn_blocking(move || store.media_ref(&lookup))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let r = found.ok_or_else(|| not_found(message_id))?;
    if r.expired(retention_ms(state), crate::session::now_ms()) {
        return Err(expired("it is older than media.retention_days"));
    }
    Ok((key, r))
}

/// Download a received attachment.
///
/// The decrypted bytes, with the attachment's `Content-Type`, its length
/// and (for documents) its file name. Needs the session connected: the
/// file is fetched from WhatsApp's servers at each request.
#[utoipa::path(get, path = "/sessions/{id}/messages/{message_id}/media", tag = "sessions",
    operation_id = "download_media",
    params(SessionMessagePath),
    responses(
        (status = 200, description = "the file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session (or another tenant's); `media_not_found`: no media received in that message", body = ErrorBody),
        (status = 409, description = "`not_connected`: the session is not connected", body = ErrorBody),
        (status = 410, description = "`media_expired`: WhatsApp no longer has the file (the sender's phone is asked to upload it again: try again later; once the phone has answered that it cannot, it stays 410), or it is older than `media.retention_days`", body = ErrorBody),
        (status = 502, description = "`media_undecryptable`: the file does not match its hashes or MAC; `media_unavailable`: WhatsApp's media servers did not deliver it", body = ErrorBody),
    ))]
pub async fn download(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, message_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let info = visible_session(&state, &principal, &id).await?;
    check_message_id(&message_id)?;
    let (key, r) = find_ref(&state, &info.incarnation, &message_id).await?;
    stream(&state, &id, key, r).await
}

/// Removes a temporary file when the download is over, however it ends.
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A new private temporary file in the data dir's download area.
fn tmp_file(data_dir: &Path) -> std::io::Result<(TmpFile, std::fs::File)> {
    let dir = data_dir.join(TMP_DIR);
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&dir)?;
    let mut name = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut name);
    let path = dir.join(format!("{}.enc", hex(&name)));
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&path)?;
    Ok((TmpFile(path), file))
}

/// Empties the download area (daemon start: nothing is in flight).
pub fn clear_tmp(data_dir: &Path) {
    let dir = data_dir.join(TMP_DIR);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Fetches, proves and streams `r`.
async fn stream(
    state: &AppState,
    id: &str,
    key: Vec<u8>,
    r: MediaRef,
) -> Result<Response, ApiError> {
    let queries = state.supervisor.queries(id).await?;
    let data_dir = state.store.data_dir().to_path_buf();
    let (tmp, file) = tokio::task::spawn_blocking(move || tmp_file(&data_dir))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    let reader = file.try_clone().map_err(|e| ApiError::internal(&e))?;
    let fetched = match queries.fetch_media(&r, file).await {
        Ok(fetched) => fetched,
        Err(MediaError::Expired(why)) => {
            let next = if r.reupload_refused {
                "the sender's phone answered that it cannot upload it again"
            } else if ask_reupload(state, queries, key, r) {
                "the sender's phone was asked to upload it again, try again later"
            } else {
                "too many files are being asked of senders' phones at once, try again later"
            };
            return Err(expired(&format!("{why}; {next}")));
        }
        Err(MediaError::Undecryptable(why)) => {
            tracing::warn!(session = %id, message = %r.message_id, "media refused: {why}");
            return Err(undecryptable(&why));
        }
        Err(e @ MediaError::Unavailable(_)) => {
            tracing::warn!(session = %id, message = %r.message_id, "media fetch failed: {e}");
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "media_unavailable",
                e.to_string(),
            ));
        }
    };
    let headers = headers(&r, fetched.plaintext_len);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    let held = state.scope.hold();
    let session = id.to_string();
    tokio::task::spawn_blocking(move || {
        let _held = held;
        let _tmp = tmp;
        let mut reader = reader;
        if let Err(e) = std::io::Seek::rewind(&mut reader) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut body = BodySender {
            tx: &tx,
            buf: Vec::with_capacity(2 * CHUNK),
        };
        match decrypt_into(&r, reader, &mut body) {
            Ok(_) => {
                let rest = std::mem::take(&mut body.buf);
                let _ = tx.blocking_send(Ok(Bytes::from(rest)));
            }
            Err(e) => {
                tracing::warn!(session = %session, message = %r.message_id, "media body cut off: {e}");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((headers, Body::from_stream(chunks)).into_response())
}

/// The body's writer: sends full chunks to the connection, always holding
/// the last bytes back until the caller has verified the whole file.
struct BodySender<'a> {
    tx: &'a tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for BodySender<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        // `>` keeps at least one byte back: a body is never complete before
        // the plaintext hash is checked.
        while self.buf.len() > CHUNK {
            let rest = self.buf.split_off(CHUNK);
            let chunk = std::mem::replace(&mut self.buf, rest);
            self.tx
                .blocking_send(Ok(Bytes::from(chunk)))
                .map_err(|_| std::io::Error::other("the client went away"))?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `Content-Type`, `Content-Length` and `Content-Disposition` of `r`.
fn headers(r: &MediaRef, len: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mime = HeaderValue::from_str(&r.mimetype)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, mime);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&file_name(r))) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers
}

/// The file name a download is saved under: the document's own, else the
/// message id with an extension for its type.
pub fn file_name(r: &MediaRef) -> String {
    if let Some(name) = r.file_name.as_deref().filter(|n| !n.trim().is_empty()) {
        return name.to_string();
    }
    let ext = match r.mimetype.split(';').next().unwrap_or_default().trim() {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "video/mp4" => "mp4",
        "audio/ogg" => "ogg",
        "audio/mpeg" => "mp3",
        "audio/mp4" => "m4a",
        "application/pdf" => "pdf",
        _ => "bin",
    };
    format!("{}.{ext}", r.message_id)
}

/// `attachment; filename="…"` (RFC 6266); a name that is not plain ASCII
/// also gets `filename*=UTF-8''…` (the exact name, percent-encoded),
/// written first: simple parsers (pywa's) take what follows the last
/// `filename=`, the ASCII fallback with quotes, backslashes, controls and
/// other characters replaced.
pub fn content_disposition(name: &str) -> String {
    let plain = |c: char| c == ' ' || c.is_ascii_graphic() && c != '"' && c != '\\';
    let ascii: String = name
        .chars()
        .map(|c| if plain(c) { c } else { '_' })
        .collect();
    if name.chars().all(plain) {
        return format!("attachment; filename=\"{ascii}\"");
    }
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename*=UTF-8''{encoded}; filename=\"{ascii}\"")
}

/// Re-upload requests at most in flight at once (each waits up to 30 s
/// for the phone's answer).
const MAX_REUPLOADS: usize = 256;

/// The media re-upload requests in flight, by ref key (the session
/// incarnation's prefix and the message id): one at a time per file.
#[derive(Default)]
pub struct Reuploads(Arc<Mutex<HashSet<Vec<u8>>>>);

/// A ref's request in flight; it ends when this is dropped.
struct InFlight {
    set: Arc<Mutex<HashSet<Vec<u8>>>>,
    key: Vec<u8>,
}

impl Reuploads {
    /// `key`'s request, unless one is in flight already (`Ok(None)`), or
    /// too many are (`Err`).
    fn begin(&self, key: &[u8]) -> Result<Option<InFlight>, ()> {
        let mut set = lock(&self.0);
        if set.contains(key) {
            return Ok(None);
        }
        if set.len() >= MAX_REUPLOADS {
            return Err(());
        }
        set.insert(key.to_vec());
        Ok(Some(InFlight {
            set: self.0.clone(),
            key: key.to_vec(),
        }))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.key);
    }
}

/// Asks the sender's phone to upload the file again, in the background
/// (the phone answers in its own time), unless it is being asked already:
/// a client retrying meanwhile asks nothing more. A new path is written to
/// the ref, and so is a refusal (the phone no longer has the file: it is
/// not asked again). False when too many requests are in flight.
fn ask_reupload(state: &AppState, queries: crate::wa::Queries, key: Vec<u8>, r: MediaRef) -> bool {
    let in_flight = match state.reuploads.begin(&key) {
        Ok(Some(in_flight)) => in_flight,
        Ok(None) => return true,
        Err(()) => return false,
    };
    let store = state.store.clone();
    state.scope.spawn_until_cancelled(async move {
        // Held until the answer is written: a download meanwhile still
        // finds the old ref, and must not ask again.
        let _in_flight = in_flight;
        // A download that read the ref before the last request's answer was
        // written comes here with the old path: nothing to ask then.
        let (lookup, reader) = (key.clone(), store.clone());
        let current = tokio::task::spawn_blocking(move || reader.media_ref(&lookup))
            .await
            .map_err(|e| e.to_string())
            .and_then(|found| found.map_err(|e| e.to_string()));
        match current {
            Ok(Some(now)) if now.direct_path == r.direct_path && !now.reupload_refused => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(message = %r.message_id, "reading a media ref: {e}");
                return;
            }
        }
        let updated = match queries.request_reupload(&r).await {
            Ok(direct_path) => MediaRef {
                direct_path,
                url: String::new(),
                ..r.clone()
            },
            Err(MediaError::Expired(why)) => {
                tracing::info!(message = %r.message_id, "media re-upload refused: {why}");
                MediaRef {
                    reupload_refused: true,
                    ..r.clone()
                }
            }
            Err(e) => {
                tracing::info!(message = %r.message_id, "media re-upload not done: {e}");
                return;
            }
        };
        let done =
            tokio::task::spawn_blocking(move || store.media_ref_update(&key, &updated)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(message = %r.message_id, "recording a media re-upload's answer: {e}");
        }
    });
    true
}

/// The webhook workers' source of inline media
/// (`webhooks.inline_media_max_bytes`): the same fetch, proof and
/// decryption as a download, into memory (bounded by the setting).
pub struct InlineMedia {
    supervisor: crate::session::Supervisor,
    store: crate::store::Store,
    retention_ms: i64,
}

impl InlineMedia {
    pub fn new(
        supervisor: crate::session::Supervisor,
        store: crate::store::Store,
        retention_days: u32,
    ) -> Self {
        Self {
            supervisor,
            store,
            retention_ms: i64::from(retention_days) * 86_400_000,
        }
    }
}

#[async_trait::async_trait]
impl crate::webhook::MediaSource for InlineMedia {
    async fn fetch(
        &self,
        session: &str,
        incarnation: &str,
        message_id: &str,
        max: u64,
    ) -> Option<Vec<u8>> {
        let prefix = outbound::prefix(self.store.blinder(), incarnation);
        let key = media_refs::key(&prefix, message_id);
        let store = self.store.clone();
        let r = tokio::task::spawn_blocking(move || store.media_ref(&key))
            .await
            .ok()?
            .ok()??;
        if r.file_length > max || r.expired(self.retention_ms, crate::session::now_ms()) {
            return None;
        }
        let queries = self.supervisor.queries(session).await.ok()?;
        let data_dir = self.store.data_dir().to_path_buf();
        let (tmp, file) = tokio::task::spawn_blocking(move || tmp_file(&data_dir))
            .await
            .ok()?
            .ok()?;
        let reader = file.try_clone().ok()?;
        let fetched = match queries.fetch_media(&r, file).await {
            Ok(fetched) if fetched.plaintext_len <= max => fetched,
            Ok(_) => return None,
            Err(e) => {
                tracing::info!(%session, message = %message_id, "media not inlined: {e}");
                return None;
            }
        };
        tokio::task::spawn_blocking(move || {
            let _tmp = tmp;
            let mut reader = reader;
            std::io::Seek::rewind(&mut reader).ok()?;
            let mut out = Vec::with_capacity(fetched.plaintext_len as usize);
            decrypt_into(&r, reader, &mut out).ok()?;
            Some(out)
        })
        .await
        .ok()?
    }
}

// ---- Meta's two-step download ------------------------------------------

/// `/graph/{version}/{media_id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documentation only: the handler reads the path itself
struct GraphMediaPath {
    /// Graph API version as Meta writes it.
    #[param(pattern = r"^v[0-9]{1,3}\.[0-9]{1,3}$", example = "v23.0")]
    version: String,
    /// A media id from a `cloud_api` webhook (`image.id`, …).
    #[param(pattern = "^[0-9a-f]{34,288}$")]
    media_id: String,
}

/// Meta's answer to a media id.
#[derive(Serialize, ToSchema)]
pub struct GraphMedia {
    /// `whatsapp`.
    pub messaging_product: &'static str,
    /// Where the bytes are: `GET` it with the same bearer token.
    pub url: String,
    pub mime_type: String,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    pub file_size: u64,
    pub id: String,
}

/// Where a Graph media id's file is (Meta's step one of a download).
#[utoipa::path(get, path = "/graph/{version}/{media_id}", tag = "graph",
    operation_id = "graph_media_url",
    params(GraphMediaPath),
    responses(
        (status = 200, description = "where to download it", body = GraphMedia),
        (status = 400, description = "`bad_version`: not a Graph version", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 404, description = "`media_not_found`: no such media among the caller's sessions", body = ErrorBody),
        (status = 410, description = "`media_expired`: older than `media.retention_days`", body = ErrorBody),
    ))]
pub async fn graph_media(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiPath((version, media_id)): ApiPath<(String, String)>,
) -> Result<Json<GraphMedia>, ApiError> {
    if !super::graph::valid_version(&version) {
        return Err(ApiError::bad_request(
            "bad_version",
            "Graph versions look like v23.0",
        ));
    }
    let missing = || {
        ApiError::not_found(
            "media_not_found",
            format!("no media {media_id:?} among this token's sessions"),
        )
    };
    let (prefix, message_id) = media_refs::parse_graph_media_id(&media_id)
        .filter(|(_, id)| check_message_id(id).is_ok())
        .ok_or_else(missing)?;
    let blinder = state.store.blinder();
    let session = state
        .supervisor
        .list()
        .await
        .into_iter()
        .filter(|s| principal.can_see(&s.tenant))
        .find(|s| media_refs::graph_media_id_of(blinder, &s.incarnation, &prefix))
        .ok_or_else(missing)?;
    let (_, r) = find_ref(&state, &session.incarnation, &message_id)
        .await
        .map_err(|e| {
            if e.code == "media_not_found" {
                missing()
            } else {
                e
            }
        })?;
    let url = format!(
        "{}/v1/sessions/{}/messages/{}/media",
        base_url(&state, &headers),
        session.id,
        message_id
    );
    Ok(Json(GraphMedia {
        messaging_product: "whatsapp",
        url,
        mime_type: r.mimetype.clone(),
        sha256: hex(&r.file_sha256),
        file_size: r.file_length,
        id: media_id,
    }))
}

/// The API's public base URL: `api.public_url`, else what the request
/// was addressed to (`Host`, plain HTTP).
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = state.config.api.public_url.as_deref() {
        return base.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_are_opaque_and_bound_to_an_incarnation() {
        use crate::store::media_refs::{graph_media_id, graph_media_id_of, parse_graph_media_id};
        let blinder = crate::store::ids::Blinder::from_bytes(&[4; 32]);
        let id = graph_media_id(&blinder, "inc-1", "3EB0ABC");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert!(!id.contains("inc-1"));
        let (prefix, message) = parse_graph_media_id(&id).unwrap();
        assert_eq!(message, "3EB0ABC");
        // The refs' own prefix (the outbound queue's).
        assert_eq!(prefix[..], outbound::prefix(&blinder, "inc-1")[..16]);
        assert!(graph_media_id_of(&blinder, "inc-1", &prefix));
        // Another incarnation of the same session id: another prefix.
        assert!(!graph_media_id_of(&blinder, "inc-2", &prefix));
        assert_ne!(graph_media_id(&blinder, "inc-2", "3EB0ABC"), id);
        for bad in ["", "zz", "00", &"0".repeat(32), &id[..id.len() - 1]] {
            assert!(parse_graph_media_id(bad).is_none(), "{bad}");
        }
        // A message id outside the API's alphabet is refused by the handler.
        let slash = format!("{}2f", &id);
        assert!(parse_graph_media_id(&slash).is_some_and(|(_, m)| check_message_id(&m).is_err()));
    }

    #[test]
    fn one_reupload_in_flight_per_file_and_a_bound_on_all() {
        let reuploads = Reuploads::default();
        let first = reuploads.begin(b"a").unwrap().expect("asked");
        assert!(reuploads.begin(b"a").unwrap().is_none(), "already asked");
        drop(first);
        let again = reuploads.begin(b"a").unwrap();
        assert!(again.is_some(), "asked again once answered");
        let held: Vec<_> = (1..MAX_REUPLOADS)
            .map(|i| reuploads.begin(&i.to_be_bytes()).unwrap().unwrap())
            .collect();
        assert!(reuploads.begin(b"b").is_err(), "too many in flight");
        drop(held);
        assert!(reuploads.begin(b"b").unwrap().is_some());
    }

    #[test]
    fn file_names_are_safe_in_a_header() {
        assert_eq!(
            content_disposition("a\"b\\c é.pdf"),
            "attachment; filename*=UTF-8''a%22b%5Cc%20%C3%A9.pdf; filename=\"a_b_c _.pdf\""
        );
        assert_eq!(
            content_disposition("3EB0.jpg"),
            "attachment; filename=\"3EB0.jpg\""
        );
        assert!(HeaderValue::from_str(&content_disposition("x\r\ny")).is_ok());
        let r = MediaRef {
            message_id: "3EB0".into(),
            mimetype: "audio/ogg; codecs=opus".into(),
            ..Default::default()
        };
        assert_eq!(file_name(&r), "3EB0.ogg");
    }
}
