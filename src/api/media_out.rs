//! Sending media, replies and reactions, marking chats read and showing
//! "typing…": the request shapes of `POST /v1/sessions/{id}/messages`
//! (JSON, or `multipart/form-data` with the bytes), fetching a `url`
//! through the webhook SSRF guard, the per-type limits (413), the sniffed
//! type checked against the declared one (415), and the chat routes.
//!
//! The bytes are taken in as they arrive (never whole in memory), stored
//! encrypted before the 202 (see `crate::session::media`), and uploaded
//! to WhatsApp when the queue sends the message.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::openapi::ErrorBody;
use super::sessions::{MAX_TEXT_CHARS, is_jid, normalize_phone, visible_session};
use crate::config::MediaConfig;
use crate::session::media::{Ingest, IngestError, Ingested, rekey};
use crate::session::outbound::{MediaKind, Outgoing, QueuedMedia, Quoted, Reaction};
use crate::session::sniff;
use crate::wa::media_out::ChatState;

/// Longest caption or file name, in characters.
const MAX_CAPTION_CHARS: usize = 4096;
const MAX_FILE_NAME_CHARS: usize = 255;
/// Largest non-file part of a multipart send.
const MAX_FIELD_BYTES: usize = 64 * 1024;

/// A send: `type` says what (default `text`). Media comes as the `file`
/// part of a `multipart/form-data` request or from `url`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// A phone number (country code first) or a JID (`user@server`, e.g.
    /// `15551234567@s.whatsapp.net`, `120363…@g.us`).
    #[schema(
        pattern = r"^([ -]*(\+[ -]*)?[1-9][ -]*([0-9][ -]*){6,14}|[0-9A-Za-z._:-]{1,64}@[0-9A-Za-z.-]{1,63})$"
    )]
    pub to: String,
    /// `text` (default), `image`, `video`, `audio`, `document`, `sticker`
    /// or `reaction`.
    #[serde(rename = "type")]
    #[schema(
        pattern = "^(text|image|video|audio|document|sticker|reaction)$",
        nullable = false
    )]
    pub kind: Option<String>,
    /// The text of a `text` message (1 to 65,536 characters).
    #[schema(min_length = 1, max_length = 65536, nullable = false)]
    pub text: Option<String>,
    /// Media: fetch the bytes from this `http(s)` URL when the send is
    /// queued (not from loopback, private or link-local addresses).
    #[schema(nullable = false)]
    pub url: Option<String>,
    /// Image, video and document captions.
    #[schema(max_length = 4096, nullable = false)]
    pub caption: Option<String>,
    /// A document's file name (default: the upload's file name).
    #[schema(min_length = 1, max_length = 255, nullable = false)]
    pub file_name: Option<String>,
    /// Audio: a push-to-talk voice note (Opus in Ogg).
    #[schema(nullable = false)]
    pub voice: Option<bool>,
    /// Quote (reply to) this message: its id, or `{id, participant}` with
    /// its author's JID (needed in groups).
    #[schema(nullable = false)]
    pub reply_to: Option<ReplyTo>,
    /// `reaction`: the emoji (empty: removes the reaction).
    #[schema(max_length = 32, nullable = false)]
    pub emoji: Option<String>,
    /// `reaction`: the message reacted to.
    #[schema(nullable = false)]
    pub message_id: Option<String>,
    /// `reaction` in a group: the author's JID of the message reacted to.
    #[schema(nullable = false)]
    pub participant: Option<String>,
}

/// A quoted message: its id, or its id and author.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ReplyTo {
    Id(String),
    Full {
        id: String,
        #[serde(default)]
        participant: Option<String>,
    },
}

/// `multipart/form-data` sends: the `file` part and the fields of
/// [`SendMessage`] (but `url`), as form fields or as one JSON part named
/// `message`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: the handler reads the parts itself
pub struct SendMessageForm {
    /// The bytes (its file name is a document's default `file_name`).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// The other fields as a JSON object (or give them as form fields).
    #[schema(nullable = false)]
    message: Option<String>,
    #[schema(nullable = false)]
    to: Option<String>,
    #[schema(rename = "type", nullable = false)]
    kind: Option<String>,
    #[schema(nullable = false)]
    caption: Option<String>,
    #[schema(nullable = false)]
    file_name: Option<String>,
    #[schema(nullable = false)]
    voice: Option<bool>,
    #[schema(nullable = false)]
    reply_to: Option<String>,
}

/// What a send request carried: its fields and, for media, its stored bytes.
pub struct ParsedSend {
    pub req: SendMessage,
    pub media: Option<Ingested>,
    /// The upload's own file name and content type (multipart).
    pub upload_name: Option<String>,
    pub upload_type: Option<String>,
}

/// The declared kind of a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendKind {
    Text,
    Media(MediaKind),
    Reaction,
}

pub fn send_kind(kind: Option<&str>) -> Result<SendKind, ApiError> {
    match kind.unwrap_or("text") {
        "text" => Ok(SendKind::Text),
        "reaction" => Ok(SendKind::Reaction),
        other => MediaKind::parse(other).map(SendKind::Media).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_body",
                format!(
                    "unknown type {other:?}: text, image, video, audio, document, sticker or reaction"
                ),
            )
        }),
    }
}

/// The most a kind may be, per the config.
pub fn limit_of(config: &MediaConfig, kind: MediaKind) -> u64 {
    match kind {
        MediaKind::Image => config.max_image_bytes,
        MediaKind::Video => config.max_video_bytes,
        MediaKind::Audio => config.max_audio_bytes,
        MediaKind::Document => config.max_document_bytes,
        MediaKind::Sticker => config.max_sticker_bytes,
    }
}

fn too_large(kind: Option<MediaKind>, limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "media_too_large",
        match kind {
            Some(kind) => format!("{} is limited to {limit} bytes", kind.as_str()),
            None => format!("media is limited to {limit} bytes"),
        },
    )
}

fn ingest_error(err: IngestError, kind: Option<MediaKind>) -> ApiError {
    match err {
        IngestError::TooLarge { limit } => too_large(kind, limit),
        IngestError::Empty => ApiError::unprocessable("invalid_body", "the media is empty"),
        IngestError::Source(e) => {
            ApiError::bad_request("bad_body", format!("reading the media: {e}"))
        }
        e => ApiError::internal(&e),
    }
}

/// Reads a send request: JSON, or multipart with a `file` part. A `url`
/// is fetched here too. Media bytes end up in a committed blob of the
/// session under `prefix`.
pub async fn parse_send(
    state: &AppState,
    prefix: &[u8],
    request: Request,
) -> Result<ParsedSend, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        return parse_multipart(state, prefix, request).await;
    }
    let body_limit = usize::try_from(state.config.api.body_limit).unwrap_or(usize::MAX);
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, body_limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the limit (send media as multipart/form-data or by url)",
        )
    })?;
    let request = Request::from_parts(parts, Body::from(bytes));
    let ApiJson(req) = ApiJson::<SendMessage>::from_request(request, &()).await?;
    let media = match (&req.url, send_kind(req.kind.as_deref())?) {
        (Some(url), SendKind::Media(kind)) => Some(fetch_url(state, prefix, url, kind).await?),
        _ => None,
    };
    Ok(ParsedSend {
        req,
        media,
        upload_name: None,
        upload_type: None,
    })
}

async fn parse_multipart(
    state: &AppState,
    prefix: &[u8],
    request: Request,
) -> Result<ParsedSend, ApiError> {
    let mut multipart = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request("bad_body", e.body_text()))?;
    let mut fields = serde_json::Map::new();
    let mut media = None;
    let mut upload_name = None;
    let mut upload_type = None;
    let mut declared: Option<MediaKind> = None;
    let read_error = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request("bad_body", format!("multipart: {}", e.body_text()))
    };
    while let Some(mut field) = multipart.next_field().await.map_err(read_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            if media.is_some() {
                return Err(ApiError::unprocessable(
                    "invalid_body",
                    "one file part per send",
                ));
            }
            upload_name = field.file_name().map(str::to_owned);
            upload_type = field.content_type().map(str::to_owned);
            let cap = declared.map_or_else(
                || state.config.media.max_any(),
                |k| limit_of(&state.config.media, k),
            );
            let mut ingest = Ingest::start(&state.store, prefix, cap, declared)
                .await
                .map_err(|e| ingest_error(e, declared))?;
            while let Some(chunk) = field.chunk().await.map_err(read_error)? {
                ingest
                    .push(&chunk)
                    .await
                    .map_err(|e| ingest_error(e, declared))?;
            }
            media = Some(
                ingest
                    .finish()
                    .await
                    .map_err(|e| ingest_error(e, declared))?,
            );
            continue;
        }
        let mut value = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(read_error)? {
            value.extend_from_slice(&chunk);
            if value.len() > MAX_FIELD_BYTES {
                return Err(ApiError::unprocessable(
                    "invalid_body",
                    format!("field {name:?} is longer than {MAX_FIELD_BYTES} bytes"),
                ));
            }
        }
        let text = String::from_utf8(value).map_err(|_| {
            ApiError::unprocessable("invalid_body", format!("field {name:?} is not UTF-8"))
        })?;
        if name == "message" {
            let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&text) else {
                return Err(ApiError::unprocessable(
                    "invalid_body",
                    "the message part must be a JSON object",
                ));
            };
            fields.extend(object);
        } else if name == "voice" {
            fields.insert(name, json!(matches!(text.as_str(), "true" | "1" | "yes")));
        } else {
            fields.insert(name, Value::String(text));
        }
        if let Some(Value::String(kind)) = fields.get("type") {
            declared = MediaKind::parse(kind);
        }
    }
    if fields.contains_key("url") {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "a multipart send carries its bytes as the file part, not a url",
        ));
    }
    let req: SendMessage = serde_json::from_value(Value::Object(fields)).map_err(|e| {
        ApiError::unprocessable("invalid_body", format!("the fields do not fit: {e}"))
    })?;
    Ok(ParsedSend {
        req,
        media,
        upload_name,
        upload_type,
    })
}

/// Fetches `url`'s bytes (through the webhook SSRF guard, within
/// `media.url_timeout`, capped at `kind`'s limit) into a blob.
pub async fn fetch_url(
    state: &AppState,
    prefix: &[u8],
    url: &str,
    kind: MediaKind,
) -> Result<Ingested, ApiError> {
    let config = &state.config.media;
    let allow_private = config.allow_private_urls;
    let parsed = crate::webhook::endpoint::check_url(url, allow_private).map_err(|e| match e {
        crate::webhook::endpoint::InvalidEndpoint::PrivateTarget(_) => not_allowed(url),
        e => ApiError::unprocessable("invalid_url", e.to_string()),
    })?;
    let limit = limit_of(config, kind);
    let fetch = async {
        let response = url_client(allow_private)?
            .get(parsed)
            .send()
            .await
            .map_err(|e| {
                let chain = format!("{e:?}");
                if chain.contains("loopback/private") {
                    not_allowed(url)
                } else {
                    ApiError::unprocessable("url_fetch_failed", format!("fetching {url}: {e}"))
                }
            })?;
        if !response.status().is_success() {
            return Err(ApiError::unprocessable(
                "url_fetch_failed",
                format!("fetching {url}: answered {}", response.status()),
            ));
        }
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large(Some(kind), limit));
        }
        let mut response = response;
        let mut ingest = Ingest::start(&state.store, prefix, limit, Some(kind))
            .await
            .map_err(|e| ingest_error(e, Some(kind)))?;
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            ApiError::unprocessable("url_fetch_failed", format!("fetching {url}: {e}"))
        })? {
            ingest
                .push(&chunk)
                .await
                .map_err(|e| ingest_error(e, Some(kind)))?;
        }
        ingest
            .finish()
            .await
            .map_err(|e| ingest_error(e, Some(kind)))
    };
    match tokio::time::timeout(config.url_timeout, fetch).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::unprocessable(
            "url_fetch_failed",
            format!("fetching {url} took longer than {:?}", config.url_timeout),
        )),
    }
}

fn not_allowed(url: &str) -> ApiError {
    ApiError::unprocessable(
        "url_not_allowed",
        format!("{url} is (or resolves to) a loopback, private or link-local address"),
    )
}

/// The HTTP client for `url` sends: no redirects, no proxy, the webhook
/// guard's resolver (names that resolve to internal addresses fail).
fn url_client(allow_private: bool) -> Result<reqwest::Client, ApiError> {
    static CLIENTS: std::sync::OnceLock<[Option<reqwest::Client>; 2]> = std::sync::OnceLock::new();
    let clients = CLIENTS.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        [false, true].map(|allow| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .dns_resolver(Arc::new(crate::webhook::target::GuardedResolver {
                    allow_private: Arc::new(AtomicBool::new(allow)),
                }))
                .user_agent(concat!("whatsd/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .ok()
        })
    });
    clients[usize::from(allow_private)]
        .clone()
        .ok_or_else(|| ApiError::internal(&"cannot build the media HTTP client"))
}

/// The recipient as the queue takes it.
pub fn check_recipient(to: &str) -> Result<String, ApiError> {
    if to.contains('@') {
        if !is_jid(to) {
            return Err(ApiError::unprocessable(
                "invalid_body",
                "to must be a phone number (digits) or a JID (user@server)",
            ));
        }
        Ok(to.to_string())
    } else {
        normalize_phone(to)
    }
}

fn check_message_id(field: &str, id: &str) -> Result<(), ApiError> {
    if (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_body",
            format!("{field} must be a message id: 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-'"),
        ))
    }
}

fn check_participant(field: &str, jid: &str) -> Result<(), ApiError> {
    if is_jid(jid) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_body",
            format!("{field} must be a JID (user@server)"),
        ))
    }
}

/// A document's file name: no path, no control characters.
fn clean_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    let clean: String = base.chars().filter(|c| !c.is_control()).collect();
    (!clean.is_empty()).then(|| clean.chars().take(MAX_FILE_NAME_CHARS).collect())
}

/// Checks a parsed send and turns it into what the queue takes; a media
/// blob that does not fit is removed by the caller.
pub async fn outgoing(
    state: &AppState,
    prefix: &[u8],
    parsed: &mut ParsedSend,
) -> Result<Outgoing, ApiError> {
    let req = &parsed.req;
    let kind = send_kind(req.kind.as_deref())?;
    let bad = |m: String| ApiError::unprocessable("invalid_body", m);
    let reply_to = match &req.reply_to {
        None => None,
        Some(ReplyTo::Id(id)) => Some(Quoted {
            id: id.clone(),
            participant: None,
        }),
        Some(ReplyTo::Full { id, participant }) => Some(Quoted {
            id: id.clone(),
            participant: participant.clone(),
        }),
    };
    if let Some(quoted) = &reply_to {
        check_message_id("reply_to", &quoted.id)?;
        if let Some(p) = &quoted.participant {
            check_participant("reply_to.participant", p)?;
        }
    }
    let not_for = |field: &str, what: &str| bad(format!("{field} does not go with {what}"));
    if kind != SendKind::Reaction {
        for (field, given) in [
            ("emoji", req.emoji.is_some()),
            ("message_id", req.message_id.is_some()),
            ("participant", req.participant.is_some()),
        ] {
            if given {
                return Err(not_for(field, "this type (reactions only)"));
            }
        }
    }
    match kind {
        SendKind::Text => {
            for (field, given) in [
                ("url", req.url.is_some()),
                ("caption", req.caption.is_some()),
                ("file_name", req.file_name.is_some()),
                ("voice", req.voice.is_some()),
                ("file", parsed.media.is_some()),
            ] {
                if given {
                    return Err(not_for(field, "a text message"));
                }
            }
            let text = req.text.clone().unwrap_or_default();
            if text.is_empty() {
                return Err(bad("text must not be empty".into()));
            }
            if text.chars().count() > MAX_TEXT_CHARS {
                return Err(bad(format!(
                    "text is longer than {MAX_TEXT_CHARS} characters"
                )));
            }
            Ok(Outgoing {
                text,
                reply_to,
                ..Outgoing::default()
            })
        }
        SendKind::Reaction => {
            for (field, given) in [
                ("text", req.text.is_some()),
                ("url", req.url.is_some()),
                ("caption", req.caption.is_some()),
                ("file_name", req.file_name.is_some()),
                ("voice", req.voice.is_some()),
                ("reply_to", req.reply_to.is_some()),
                ("file", parsed.media.is_some()),
            ] {
                if given {
                    return Err(not_for(field, "a reaction"));
                }
            }
            let Some(message_id) = req.message_id.clone() else {
                return Err(bad("a reaction needs message_id".into()));
            };
            check_message_id("message_id", &message_id)?;
            let Some(emoji) = req.emoji.clone() else {
                return Err(bad("a reaction needs emoji (empty removes it)".into()));
            };
            if emoji.chars().count() > 32 || emoji.chars().any(char::is_control) {
                return Err(bad("emoji must be one emoji (at most 32 characters)".into()));
            }
            if let Some(p) = &req.participant {
                check_participant("participant", p)?;
            }
            Ok(Outgoing {
                reaction: Some(Reaction {
                    message_id,
                    emoji,
                    from_me: false,
                    participant: req.participant.clone(),
                }),
                ..Outgoing::default()
            })
        }
        SendKind::Media(kind) => {
            if req.text.is_some() {
                return Err(bad("media carries a caption, not text".into()));
            }
            let voice = req.voice.unwrap_or(false);
            if req.voice.is_some() && kind != MediaKind::Audio {
                return Err(not_for("voice", kind.as_str()));
            }
            if req.file_name.is_some() && kind != MediaKind::Document {
                return Err(not_for("file_name", kind.as_str()));
            }
            if req.caption.is_some() && matches!(kind, MediaKind::Audio | MediaKind::Sticker) {
                return Err(not_for("caption", kind.as_str()));
            }
            if let Some(caption) = &req.caption
                && caption.chars().count() > MAX_CAPTION_CHARS
            {
                return Err(bad(format!(
                    "caption is longer than {MAX_CAPTION_CHARS} characters"
                )));
            }
            let Some(media) = parsed.media.take() else {
                return Err(bad(format!(
                    "{} needs its bytes: a multipart file part, or url",
                    kind.as_str()
                )));
            };
            let media = fit(state, prefix, kind, voice, media).await?;
            let mimetype = match (media.sniffed, kind) {
                (Some(mime), _) => mime.to_owned(),
                (None, _) => parsed
                    .upload_type
                    .clone()
                    .filter(|t| valid_mime(t))
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
            };
            let file_name = match kind {
                MediaKind::Document => Some(
                    req.file_name
                        .as_deref()
                        .or(parsed.upload_name.as_deref())
                        .or_else(|| req.url.as_deref().and_then(|u| u.split('?').next()))
                        .and_then(clean_file_name)
                        .unwrap_or_else(|| "file".to_owned()),
                ),
                _ => None,
            };
            Ok(Outgoing {
                media: Some(QueuedMedia {
                    kind,
                    ptt: voice,
                    mimetype,
                    caption: req.caption.clone(),
                    file_name,
                    blob: media.blob,
                }),
                reply_to,
                ..Outgoing::default()
            })
        }
    }
}

/// Checks stored bytes against the declared kind (415, 413) and re-keys
/// them when they were encrypted for another kind. On error the blob is
/// removed.
pub async fn fit(
    state: &AppState,
    prefix: &[u8],
    kind: MediaKind,
    voice: bool,
    media: Ingested,
) -> Result<Ingested, ApiError> {
    if !sniff::fits(kind, voice, media.sniffed) {
        let _ = state.store.media_blob_remove(&media.blob.name).await;
        let what = if voice { "a voice note" } else { kind.as_str() };
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "{what} takes {}; these bytes are {}",
                sniff::accepted(kind, voice),
                media.sniffed.unwrap_or("of an unknown type")
            ),
        ));
    }
    let limit = limit_of(&state.config.media, kind);
    if media.size() > limit {
        let _ = state.store.media_blob_remove(&media.blob.name).await;
        return Err(too_large(Some(kind), limit));
    }
    if media.blob.encrypted_as.same_keys(kind) {
        return Ok(media);
    }
    let rekeyed = rekey(&state.store, prefix, &media.blob, kind).await;
    let _ = state.store.media_blob_remove(&media.blob.name).await;
    let mut rekeyed = rekeyed.map_err(|e| ingest_error(e, Some(kind)))?;
    rekeyed.sniffed = media.sniffed;
    Ok(rekeyed)
}

/// `type/subtype` with token characters only.
fn valid_mime(mime: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    mime.split_once('/')
        .is_some_and(|(a, b)| token(a) && token(b))
}

// ---- chats ---------------------------------------------------------------

/// `/sessions/{id}/chats/{chat}/…`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ChatPath {
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    id: String,
    /// A phone number or a JID.
    #[param(
        pattern = r"^([ -]*(\+[ -]*)?[1-9][ -]*([0-9][ -]*){6,14}|[0-9A-Za-z._:-]{1,64}@[0-9A-Za-z.-]{1,63})$"
    )]
    chat: String,
}

/// A WhatsApp message id.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
pub struct MessageId(pub String);

/// A JID (`user@server`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(pattern = "^[0-9A-Za-z._:-]{1,64}@[0-9A-Za-z.-]{1,63}$")]
pub struct JidString(pub String);

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// The messages to mark read (at most 256); absent or empty: the
    /// latest message received in the chat since the daemon started.
    #[schema(max_items = 256, nullable = false)]
    pub message_ids: Option<Vec<MessageId>>,
    /// In a group: the messages' author.
    #[schema(nullable = false)]
    pub participant: Option<JidString>,
}

#[derive(Debug, ToSchema, serde::Serialize)]
pub struct MarkedRead {
    pub chat: String,
    pub message_ids: Vec<String>,
}

/// Mark messages of a chat read (blue ticks for the sender).
#[utoipa::path(post, path = "/sessions/{id}/chats/{chat}/read", tag = "sessions",
    operation_id = "mark_chat_read",
    params(ChatPath),
    request_body(content = Option<MarkRead>, description = "optional: an empty body marks the latest message received"),
    responses(
        (status = 200, description = "marked read", body = MarkedRead),
        (status = 404, description = "`not_found`: no such session; `nothing_to_read`: no ids given and nothing received from that chat since the daemon started", body = ErrorBody),
        (status = 409, description = "`not_connected`", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_phone`", body = ErrorBody),
        (status = 502, description = "`send_failed`", body = ErrorBody),
    ))]
pub async fn mark_read(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, chat)): ApiPath<(String, String)>,
    super::extract::ApiJsonOrEmpty(req): super::extract::ApiJsonOrEmpty<Option<MarkRead>>,
) -> Result<Json<MarkedRead>, ApiError> {
    let req = req.unwrap_or_default();
    visible_session(&state, &principal, &id).await?;
    let chat = check_recipient(&chat)?;
    let ids: Vec<String> = req
        .message_ids
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.0)
        .collect();
    let participant = req.participant.map(|p| p.0);
    if ids.len() > 256 {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "at most 256 message ids",
        ));
    }
    for message_id in &ids {
        check_message_id("message_ids", message_id)?;
    }
    if let Some(p) = &participant {
        check_participant("participant", p)?;
    }
    let marked = state
        .supervisor
        .mark_read(&id, &chat, ids, participant)
        .await?;
    Ok(Json(MarkedRead {
        chat,
        message_ids: marked,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Presence {
    /// `typing`, `recording` (a voice note) or `paused` (stops either).
    #[schema(pattern = "^(typing|recording|paused)$")]
    pub state: String,
}

/// Show "typing…" or "recording…" in a chat, or stop it.
#[utoipa::path(post, path = "/sessions/{id}/chats/{chat}/presence", tag = "sessions",
    operation_id = "set_chat_presence",
    params(ChatPath),
    request_body = Presence,
    responses(
        (status = 204, description = "shown"),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        (status = 409, description = "`not_connected`", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_phone`", body = ErrorBody),
        (status = 502, description = "`send_failed`", body = ErrorBody),
    ))]
pub async fn presence(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, chat)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<Presence>,
) -> Result<StatusCode, ApiError> {
    visible_session(&state, &principal, &id).await?;
    let chat = check_recipient(&chat)?;
    let chat_state = match req.state.as_str() {
        "typing" => ChatState::Typing,
        "recording" => ChatState::Recording,
        "paused" => ChatState::Paused,
        other => {
            return Err(ApiError::unprocessable(
                "invalid_body",
                format!("state {other:?}: typing, recording or paused"),
            ));
        }
    };
    state.supervisor.chat_state(&id, &chat, chat_state).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_limits_and_names() {
        assert_eq!(send_kind(None).unwrap(), SendKind::Text);
        assert_eq!(
            send_kind(Some("sticker")).unwrap(),
            SendKind::Media(MediaKind::Sticker)
        );
        assert_eq!(send_kind(Some("reaction")).unwrap(), SendKind::Reaction);
        assert!(send_kind(Some("gif")).is_err());
        let config = MediaConfig::default();
        assert_eq!(limit_of(&config, MediaKind::Image), 5 * 1024 * 1024);
        assert_eq!(limit_of(&config, MediaKind::Sticker), 500 * 1024);
        assert_eq!(limit_of(&config, MediaKind::Document), 100 * 1024 * 1024);
        assert_eq!(config.max_any(), 100 * 1024 * 1024);
        assert_eq!(
            clean_file_name("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            clean_file_name("C:\\x\\report.pdf").as_deref(),
            Some("report.pdf")
        );
        assert_eq!(clean_file_name("a\u{0}b.pdf").as_deref(), Some("ab.pdf"));
        assert_eq!(clean_file_name("/"), None);
        assert!(valid_mime("application/pdf"));
        assert!(!valid_mime("text/html; charset=utf-8\r\nX: y"));
        let reply: SendMessage = serde_json::from_value(json!({
            "to": "15551234567", "text": "hi", "reply_to": {"id": "ABC", "participant": "1@s.whatsapp.net"}
        }))
        .unwrap();
        assert!(matches!(reply.reply_to, Some(ReplyTo::Full { .. })));
        let reply: SendMessage =
            serde_json::from_value(json!({"to": "15551234567", "text": "hi", "reply_to": "ABC"}))
                .unwrap();
        assert!(matches!(reply.reply_to, Some(ReplyTo::Id(_))));
    }
}
