//! fakewa's media server: what WhatsApp's CDN (`mmg.whatsapp.net`) does for
//! a client, on `https://127.0.0.1:PORT` with a certificate signed by a CA
//! generated at start (only clients told to trust that CA can reach it).
//!
//! - Upload: `POST /mms/{type}/{token}?auth=&token=` with the encrypted body
//!   (whatsapp-rust-0.7.0/src/upload.rs): the auth token must be the one the
//!   media-connection IQ handed out, the body's SHA-256 (URL-safe base64, no
//!   padding) must be the token, the body at most `Config::media_max_upload`;
//!   answers `{url, direct_path}`.
//! - Download: `GET {direct_path}?…` serves the stored encrypted blob; 404
//!   for an unknown path, 410 once it expired (`Config::media_ttl`, or
//!   [`MediaStore::expire_all`]).
//!
//! Blobs live in memory (a test server), at most `Config::media_store_limit`
//! bytes in all: beyond that an upload gets 507.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

use crate::server::lock;

/// The upload paths whatsapp-rust uses (`MediaType::upload_path`), by the
/// `mms` type they name.
const UPLOAD_TYPES: &[&str] = &[
    "image",
    "video",
    "audio",
    "document",
    "md-msg-hist",
    "md-app-state",
    "sticker-pack",
    "thumbnail-sticker-pack",
    "thumbnail-link",
];

/// A stored encrypted blob, or what is left of it once expired.
struct Blob {
    /// `None` once expired (the bytes are freed, the path answers 410).
    data: Option<Bytes>,
    stored_at: Instant,
}

/// What the CDN holds at a direct path.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The encrypted blob.
    Live(Bytes),
    /// It was there and expired (410).
    Expired,
    /// Never stored (404).
    Missing,
}

/// Why an upload was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum UploadError {
    /// The `auth` parameter is not the media-connection token (401).
    Auth,
    /// The body's SHA-256 is not the token in the path (400).
    Hash,
    /// The body is larger than `Config::media_max_upload` (413).
    TooLarge,
    /// The store is full (`Config::media_store_limit`) (507).
    Full,
}

/// The media CDN's state: its TLS identity, auth token and blobs.
pub struct MediaStore {
    auth: String,
    ca_pem: String,
    #[cfg_attr(not(test), allow(dead_code))]
    ca_der: rustls::pki_types::CertificateDer<'static>,
    tls: Arc<rustls::ServerConfig>,
    addr: OnceLock<SocketAddr>,
    ttl: Duration,
    max_upload: usize,
    store_limit: usize,
    blobs: Mutex<HashMap<String, Blob>>,
    next_id: AtomicU64,
    /// While true, uploads wait (their bodies unread) until released.
    hold: tokio::sync::watch::Sender<bool>,
    /// Uploads waiting on `hold`.
    held: Arc<AtomicUsize>,
}

impl MediaStore {
    /// A new CA, a certificate for `127.0.0.1` and `localhost` signed by it,
    /// and a random auth token.
    pub(crate) fn new(
        ttl: Duration,
        max_upload: usize,
        store_limit: usize,
    ) -> Result<Self, std::io::Error> {
        let (ca_pem, ca_der, tls) = tls_identity().map_err(std::io::Error::other)?;
        let auth =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        Ok(Self {
            auth,
            ca_pem,
            ca_der,
            tls: Arc::new(tls),
            addr: OnceLock::new(),
            ttl,
            max_upload,
            store_limit,
            blobs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            hold: tokio::sync::watch::Sender::new(false),
            held: Arc::default(),
        })
    }

    /// Holds uploads (`true`: each waits, its body unread, until released)
    /// or releases them; answers how many wait now.
    pub fn hold_uploads(&self, hold: bool) -> usize {
        self.hold.send_replace(hold);
        self.uploads_held()
    }

    /// How many uploads wait on [`MediaStore::hold_uploads`].
    pub fn uploads_held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Waits while uploads are held, counted while waiting (until released,
    /// or until the server drops the request).
    async fn pass_hold(&self) {
        struct Waiting(Arc<AtomicUsize>);
        impl Drop for Waiting {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let mut rx = self.hold.subscribe();
        if !*rx.borrow_and_update() {
            return;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self.held.clone());
        let _ = rx.wait_for(|held| !*held).await;
    }

    /// The CA certificate (PEM) that signed the media server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The media-connection auth token.
    pub fn auth(&self) -> &str {
        &self.auth
    }

    /// `127.0.0.1:PORT` once the server listens.
    pub fn host(&self) -> Option<String> {
        self.addr.get().map(|a| a.to_string())
    }

    pub(crate) fn set_addr(&self, addr: SocketAddr) {
        let _ = self.addr.set(addr);
    }

    /// The full URL of `direct_path`.
    pub fn url(&self, direct_path: &str) -> String {
        format!(
            "https://{}{direct_path}",
            self.host().unwrap_or_else(|| "127.0.0.1:0".into())
        )
    }

    fn expired(&self, blob: &Blob) -> bool {
        blob.data.is_none() || blob.stored_at.elapsed() >= self.ttl
    }

    /// Stores an encrypted blob of `mms_type` (`image`, `video`, …); answers
    /// its direct path.
    pub fn store(&self, mms_type: &str, data: Bytes) -> Result<String, UploadError> {
        if data.len() > self.max_upload {
            return Err(UploadError::TooLarge);
        }
        let mut blobs = lock(&self.blobs);
        // Expired blobs free their bytes (their paths still answer 410).
        for blob in blobs.values_mut() {
            if blob.data.is_some() && blob.stored_at.elapsed() >= self.ttl {
                blob.data = None;
            }
        }
        let used: usize = blobs
            .values()
            .filter_map(|b| b.data.as_ref().map(Bytes::len))
            .sum();
        if used + data.len() > self.store_limit {
            return Err(UploadError::Full);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nonce: u64 = rand::random();
        let direct_path = format!("/v/t62.fakewa-{mms_type}/{id:06}-{nonce:016x}.enc");
        blobs.insert(
            direct_path.clone(),
            Blob {
                data: Some(data),
                stored_at: Instant::now(),
            },
        );
        Ok(direct_path)
    }

    /// Checks and stores an upload as the CDN does.
    pub fn upload(
        &self,
        mms_type: &str,
        auth: &str,
        token: &str,
        body: Bytes,
    ) -> Result<String, UploadError> {
        if auth != self.auth {
            return Err(UploadError::Auth);
        }
        if body.len() > self.max_upload {
            return Err(UploadError::TooLarge);
        }
        if sha256_b64(&body) != token {
            return Err(UploadError::Hash);
        }
        self.store(mms_type, body)
    }

    /// The blob at `direct_path`.
    pub fn get(&self, direct_path: &str) -> Lookup {
        let blobs = lock(&self.blobs);
        match blobs.get(direct_path) {
            None => Lookup::Missing,
            Some(blob) if self.expired(blob) => Lookup::Expired,
            Some(blob) => blob.data.clone().map_or(Lookup::Expired, Lookup::Live),
        }
    }

    /// Expires every blob stored so far; answers how many were live.
    pub fn expire_all(&self) -> usize {
        let mut n = 0;
        for blob in lock(&self.blobs).values_mut() {
            if blob.data.take().is_some() {
                n += 1;
            }
        }
        n
    }

    /// Bytes held by live blobs.
    pub fn bytes_stored(&self) -> usize {
        lock(&self.blobs)
            .values()
            .filter_map(|b| b.data.as_ref().map(Bytes::len))
            .sum()
    }
}

/// SHA-256 of `data`, URL-safe base64 without padding (the CDN's token).
pub fn sha256_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(data))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut hash =
        wacore_libsignal::crypto::CryptographicHash::new("SHA-256").expect("SHA-256 is supported");
    hash.update(data);
    hash.finalize_sha256_array()
        .expect("a SHA-256 hash gives 32 bytes")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CA and a server certificate for `127.0.0.1`/`localhost` signed by it.
type Identity = (
    String,
    rustls::pki_types::CertificateDer<'static>,
    rustls::ServerConfig,
);

fn tls_identity() -> Result<Identity, Box<dyn std::error::Error + Send + Sync>> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        DnType::CommonName,
        "fakewa media test CA (never trust outside tests)",
    );
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "fakewa media");
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )?;
    Ok((ca_cert.pem(), ca_cert.der().clone(), config))
}

/// A TLS listener for axum: TCP accepts and handshakes run in their own
/// tasks, so a slow client never holds up the others.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Serves the media CDN on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    media: Arc<MediaStore>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    media.set_addr(addr);
    let acceptor = TlsAcceptor::from(media.tls.clone());
    let (tx, rx) = mpsc::channel(64);
    let mut accept_stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = accept_stop.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("media accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, "media TLS handshake failed: {e}"),
                    Err(_) => tracing::info!(%peer, "media TLS handshake timed out"),
                }
            });
        }
    });
    let router = router(media);
    let mut stop = shutdown;
    axum::serve(TlsListener { rx, addr }, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

fn router(media: Arc<MediaStore>) -> Router {
    Router::new()
        .route("/mms/{kind}/{token}", post(upload))
        .fallback(download)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(media)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct UploadQuery {
    #[serde(default)]
    auth: String,
    token: Option<String>,
    resume: Option<String>,
    file_offset: Option<u64>,
}

async fn upload(
    State(media): State<Arc<MediaStore>>,
    Path((kind, token)): Path<(String, String)>,
    Query(q): Query<UploadQuery>,
    request: Request,
) -> Response {
    if !UPLOAD_TYPES.contains(&kind.as_str()) {
        return error(StatusCode::NOT_FOUND, "not_found", "unknown media type");
    }
    if q.auth != media.auth {
        return error(StatusCode::UNAUTHORIZED, "bad_auth", "bad media auth token");
    }
    if q.token.as_deref().is_some_and(|t| t != token) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_token",
            "the token parameter differs from the path's",
        );
    }
    if q.resume.is_some() {
        // Resumable-upload check: fakewa keeps no partial uploads.
        return error(StatusCode::NOT_FOUND, "not_found", "no upload in progress");
    }
    if q.file_offset.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "fakewa does not resume uploads",
        );
    }
    media.pass_hold().await;
    let body = match axum::body::to_bytes(request.into_body(), media.max_upload).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the upload exceeds the size limit",
            );
        }
    };
    match media.upload(&kind, &q.auth, &token, body) {
        Ok(direct_path) => axum::Json(json!({
            "url": media.url(&direct_path),
            "direct_path": direct_path,
        }))
        .into_response(),
        Err(UploadError::Auth) => {
            error(StatusCode::UNAUTHORIZED, "bad_auth", "bad media auth token")
        }
        Err(UploadError::Hash) => error(
            StatusCode::BAD_REQUEST,
            "bad_hash",
            "the body's SHA-256 is not the token",
        ),
        Err(UploadError::TooLarge) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the upload exceeds the size limit",
        ),
        Err(UploadError::Full) => error(
            StatusCode::INSUFFICIENT_STORAGE,
            "full",
            "fakewa's media store is full",
        ),
    }
}

async fn download(State(media): State<Arc<MediaStore>>, request: Request) -> Response {
    if request.method() != axum::http::Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method", "GET only");
    }
    match media.get(request.uri().path()) {
        Lookup::Live(data) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(data),
        )
            .into_response(),
        Lookup::Missing => error(StatusCode::NOT_FOUND, "not_found", "no such media"),
        Lookup::Expired => error(StatusCode::GONE, "expired", "this media expired"),
    }
}

/// A media message a device sent, as `GET /control/outbox` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OutboxMedia {
    /// `image`, `video`, `audio`, `document` or `sticker` (a voice note is
    /// `audio` with `ptt`).
    #[serde(rename = "type")]
    pub kind: String,
    pub mimetype: Option<String>,
    pub caption: Option<String>,
    pub file_name: Option<String>,
    pub file_length: Option<u64>,
    /// The plaintext's SHA-256 the message declares (`file_sha256`).
    pub sha256_hex: Option<String>,
    pub seconds: Option<u32>,
    pub ptt: bool,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// What fakewa found at the message's direct path when it arrived:
    /// `ok` (the blob's SHA-256 is `file_enc_sha256`, its MAC verifies with
    /// the message's media key, the plaintext's SHA-256 is `file_sha256`),
    /// `missing` (no such blob), `bad_hash` or `bad_mac`.
    pub download: &'static str,
}

/// Where a sent message's media is and how to open it.
#[derive(Clone, Debug)]
pub struct MediaRef {
    pub direct_path: String,
    pub media_key: Vec<u8>,
    pub media_type: wacore::download::MediaType,
}

/// The media fields of a message, whichever kind it is.
struct Fields<'a> {
    kind: &'static str,
    media_type: wacore::download::MediaType,
    mimetype: &'a Option<String>,
    caption: Option<&'a String>,
    file_name: Option<&'a String>,
    file_length: Option<u64>,
    file_sha256: &'a Option<Vec<u8>>,
    file_enc_sha256: &'a Option<Vec<u8>>,
    media_key: &'a Option<Vec<u8>>,
    direct_path: &'a Option<String>,
    seconds: Option<u32>,
    ptt: bool,
    width: Option<u32>,
    height: Option<u32>,
}

fn fields(msg: &waproto::whatsapp::Message) -> Option<Fields<'_>> {
    use wacore::download::MediaType;
    if let Some(m) = msg.image_message.as_option() {
        return Some(Fields {
            kind: "image",
            media_type: MediaType::Image,
            mimetype: &m.mimetype,
            caption: m.caption.as_ref(),
            file_name: None,
            file_length: m.file_length,
            file_sha256: &m.file_sha256,
            file_enc_sha256: &m.file_enc_sha256,
            media_key: &m.media_key,
            direct_path: &m.direct_path,
            seconds: None,
            ptt: false,
            width: m.width,
            height: m.height,
        });
    }
    if let Some(m) = msg.video_message.as_option() {
        return Some(Fields {
            kind: "video",
            media_type: MediaType::Video,
            mimetype: &m.mimetype,
            caption: m.caption.as_ref(),
            file_name: None,
            file_length: m.file_length,
            file_sha256: &m.file_sha256,
            file_enc_sha256: &m.file_enc_sha256,
            media_key: &m.media_key,
            direct_path: &m.direct_path,
            seconds: m.seconds,
            ptt: false,
            width: m.width,
            height: m.height,
        });
    }
    if let Some(m) = msg.audio_message.as_option() {
        return Some(Fields {
            kind: "audio",
            media_type: MediaType::Audio,
            mimetype: &m.mimetype,
            caption: None,
            file_name: None,
            file_length: m.file_length,
            file_sha256: &m.file_sha256,
            file_enc_sha256: &m.file_enc_sha256,
            media_key: &m.media_key,
            direct_path: &m.direct_path,
            seconds: m.seconds,
            ptt: m.ptt.unwrap_or(false),
            width: None,
            height: None,
        });
    }
    if let Some(m) = msg.document_message.as_option() {
        return Some(Fields {
            kind: "document",
            media_type: MediaType::Document,
            mimetype: &m.mimetype,
            caption: m.caption.as_ref(),
            file_name: m.file_name.as_ref(),
            file_length: m.file_length,
            file_sha256: &m.file_sha256,
            file_enc_sha256: &m.file_enc_sha256,
            media_key: &m.media_key,
            direct_path: &m.direct_path,
            seconds: None,
            ptt: false,
            width: None,
            height: None,
        });
    }
    if let Some(m) = msg.sticker_message.as_option() {
        return Some(Fields {
            kind: "sticker",
            media_type: MediaType::Sticker,
            mimetype: &m.mimetype,
            caption: None,
            file_name: None,
            file_length: m.file_length,
            file_sha256: &m.file_sha256,
            file_enc_sha256: &m.file_enc_sha256,
            media_key: &m.media_key,
            direct_path: &m.direct_path,
            seconds: None,
            ptt: false,
            width: m.width,
            height: m.height,
        });
    }
    None
}

/// The content of a message a device sent: its own copy comes wrapped in
/// `device_sent_message`.
pub(crate) fn content(msg: &waproto::whatsapp::Message) -> &waproto::whatsapp::Message {
    match msg
        .device_sent_message
        .as_option()
        .and_then(|d| d.message.as_option())
    {
        Some(inner) => inner,
        None => msg,
    }
}

impl MediaStore {
    /// The media of `msg`, if it carries any, with what fakewa finds at its
    /// direct path.
    pub(crate) fn describe(
        &self,
        msg: &waproto::whatsapp::Message,
    ) -> Option<(OutboxMedia, Option<MediaRef>)> {
        let f = fields(content(msg))?;
        let media_ref = match (f.direct_path, f.media_key) {
            (Some(direct_path), Some(media_key)) => Some(MediaRef {
                direct_path: direct_path.clone(),
                media_key: media_key.clone(),
                media_type: f.media_type,
            }),
            _ => None,
        };
        let download = match &media_ref {
            None => "missing",
            Some(r) => match self.get(&r.direct_path) {
                Lookup::Missing | Lookup::Expired => "missing",
                Lookup::Live(blob) => {
                    if f.file_enc_sha256.as_deref() != Some(&sha256(&blob)[..]) {
                        "bad_hash"
                    } else {
                        match wacore::download::DownloadUtils::verify_and_decrypt(
                            &blob,
                            &r.media_key,
                            r.media_type,
                        ) {
                            Err(_) => "bad_mac",
                            Ok(plain) if f.file_sha256.as_deref() != Some(&sha256(&plain)[..]) => {
                                "bad_hash"
                            }
                            Ok(_) => "ok",
                        }
                    }
                }
            },
        };
        Some((
            OutboxMedia {
                kind: f.kind.to_owned(),
                mimetype: f.mimetype.clone(),
                caption: f.caption.cloned(),
                file_name: f.file_name.cloned(),
                file_length: f.file_length,
                sha256_hex: f.file_sha256.as_deref().map(hex),
                seconds: f.seconds,
                ptt: f.ptt,
                width: f.width,
                height: f.height,
                download,
            },
            media_ref,
        ))
    }

    /// The plaintext of the media at `r`.
    pub fn open(&self, r: &MediaRef) -> Result<Vec<u8>, OpenError> {
        match self.get(&r.direct_path) {
            Lookup::Missing => Err(OpenError::Missing),
            Lookup::Expired => Err(OpenError::Expired),
            Lookup::Live(blob) => wacore::download::DownloadUtils::verify_and_decrypt(
                &blob,
                &r.media_key,
                r.media_type,
            )
            .map_err(|e| OpenError::Undecryptable(e.to_string())),
        }
    }
}

/// Why a sent message's media cannot be opened.
#[derive(Debug)]
pub enum OpenError {
    Missing,
    Expired,
    Undecryptable(String),
}

/// The quoted message of a reply (`ContextInfo.stanza_id`/`participant`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplyTo {
    pub id: String,
    pub participant: Option<String>,
}

/// A reaction a device sent.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Reaction {
    pub target_id: String,
    /// Empty: the reaction was removed.
    pub emoji: String,
    pub from_me: bool,
}

/// The message `msg` replies to, if any.
pub(crate) fn reply_to(msg: &waproto::whatsapp::Message) -> Option<ReplyTo> {
    let m = content(msg);
    let ctx = [
        m.extended_text_message
            .as_option()
            .and_then(|x| x.context_info.as_option()),
        m.image_message
            .as_option()
            .and_then(|x| x.context_info.as_option()),
        m.video_message
            .as_option()
            .and_then(|x| x.context_info.as_option()),
        m.audio_message
            .as_option()
            .and_then(|x| x.context_info.as_option()),
        m.document_message
            .as_option()
            .and_then(|x| x.context_info.as_option()),
        m.sticker_message
            .as_option()
            .and_then(|x| x.context_info.as_option()),
    ]
    .into_iter()
    .flatten()
    .next()?;
    Some(ReplyTo {
        id: ctx.stanza_id.clone()?,
        participant: ctx.participant.clone(),
    })
}

/// The reaction `msg` carries, if any.
pub(crate) fn reaction(msg: &waproto::whatsapp::Message) -> Option<Reaction> {
    let r = content(msg).reaction_message.as_option()?;
    let key = r.key.as_option()?;
    Some(Reaction {
        target_id: key.id.clone()?,
        emoji: r.text.clone().unwrap_or_default(),
        from_me: key.from_me.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A media server on 127.0.0.1:0 with small limits.
    async fn start(ttl: Duration) -> (Arc<MediaStore>, watch::Sender<bool>) {
        let media = Arc::new(MediaStore::new(ttl, 1024, 3000).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        media.set_addr(listener.local_addr().unwrap());
        let (stop, rx) = watch::channel(false);
        tokio::spawn(serve(media.clone(), listener, rx));
        (media, stop)
    }

    /// One HTTPS request trusting only the media CA; (status, body).
    async fn https(media: &MediaStore, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(media.ca_der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(media.addr.get().unwrap()).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .expect("TLS with the media CA");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response");
        let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
        (status, raw[split + 4..].to_vec())
    }

    fn upload_path(media: &MediaStore, token: &str, auth: &str) -> String {
        let _ = media;
        format!("/mms/image/{token}?auth={auth}&token={token}")
    }

    #[tokio::test]
    async fn upload_is_checked_like_the_cdn_does() {
        let (media, _stop) = start(Duration::from_secs(3600)).await;
        let body = vec![7u8; 500];
        let token = sha256_b64(&body);
        let auth = media.auth().to_owned();

        let (status, _) = https(&media, "POST", &upload_path(&media, &token, "wrong"), &body).await;
        assert_eq!(status, 401, "a wrong auth token is refused");

        let other = sha256_b64(b"something else");
        let (status, _) = https(&media, "POST", &upload_path(&media, &other, &auth), &body).await;
        assert_eq!(
            status, 400,
            "a body whose SHA-256 is not the token is refused"
        );

        let big = vec![1u8; 1025];
        let big_token = sha256_b64(&big);
        let (status, _) = https(
            &media,
            "POST",
            &upload_path(&media, &big_token, &auth),
            &big,
        )
        .await;
        assert_eq!(status, 413, "a body above the limit is refused");
        assert_eq!(media.bytes_stored(), 0, "nothing refused was stored");

        let (status, answer) =
            https(&media, "POST", &upload_path(&media, &token, &auth), &body).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        let direct_path = answer["direct_path"].as_str().unwrap();
        assert_eq!(answer["url"], media.url(direct_path));
        let (status, served) = https(&media, "GET", direct_path, b"").await;
        assert_eq!((status, served), (200, body.clone()));

        let (status, _) = https(&media, "GET", "/v/t62.fakewa-image/none.enc", b"").await;
        assert_eq!(status, 404);

        // 3000 bytes in all: 500 stored, 1000 + 1000 fit, the next does not.
        for i in 0..2u8 {
            let b = vec![i; 1000];
            let t = sha256_b64(&b);
            let (status, _) = https(&media, "POST", &upload_path(&media, &t, &auth), &b).await;
            assert_eq!(status, 200);
        }
        let b = vec![9u8; 1000];
        let t = sha256_b64(&b);
        let (status, _) = https(&media, "POST", &upload_path(&media, &t, &auth), &b).await;
        assert_eq!(status, 507, "the store's bound holds");
    }

    #[tokio::test]
    async fn expired_media_answers_410() {
        let (media, _stop) = start(Duration::from_secs(3600)).await;
        let path = media.store("image", Bytes::from_static(b"blob")).unwrap();
        assert_eq!(https(&media, "GET", &path, b"").await.0, 200);
        assert_eq!(media.expire_all(), 1);
        assert_eq!(https(&media, "GET", &path, b"").await.0, 410);
        assert_eq!(media.bytes_stored(), 0, "expired blobs free their bytes");

        // A TTL of zero: expired as soon as stored.
        let (media, _stop) = start(Duration::ZERO).await;
        let path = media.store("image", Bytes::from_static(b"blob")).unwrap();
        assert_eq!(https(&media, "GET", &path, b"").await.0, 410);
    }
}
