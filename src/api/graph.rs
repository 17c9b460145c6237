//! Sending as Meta's Graph API does, so code written for the WhatsApp Cloud
//! API sends through whatsd after two changes: its base URL
//! (`http://HOST:PORT/graph`) and its token (a whatsd tenant token).
//!
//! `POST /graph/{version}/{phone_number_id}/messages` takes Meta's request
//! body for `type: "text"`, with the session id as the phone number id, and
//! answers Meta's response; failures come in Meta's error shape with Meta's
//! codes, so the libraries raise their own exceptions. The message goes out
//! through the same path as `POST /v1/sessions/{id}/messages`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{Principal, authenticate_parts};
use super::error::{ApiError, RateLimitHeaders, error_response};
use super::media_out::{self, ReplyTo, SendMessage};
use super::sessions::{normalize_phone, send_text, visible_session};
use crate::hex::hex;
use crate::session::SessionInfo;
use crate::session::media::rekey;
use crate::session::outbound::MediaKind;
use crate::webhook::bsuid;

/// Message types Meta's `/messages` takes that whatsd does not send yet.
const OTHER_TYPES: &[&str] = &["contacts", "interactive", "location", "template"];

/// The Graph routes, documented (merged beside `/v1`, not under it).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(send)).merge(
        // An upload takes in its own body, to the `[media]` limits.
        OpenApiRouter::new()
            .routes(routes!(super::uploads::upload))
            .layer(axum::extract::DefaultBodyLimit::disable()),
    )
}

/// `/graph/{version}/{phone_number_id}/messages`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documentation only: the handler reads the path itself
pub(super) struct GraphPath {
    /// Graph API version as Meta writes it; every version is answered alike.
    #[param(pattern = r"^v[0-9]{1,3}\.[0-9]{1,3}$", example = "v23.0")]
    version: String,
    /// The whatsd session id.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    phone_number_id: String,
}

/// Meta's `/messages` request: `type` `text` (default), `image`, `video`,
/// `audio`, `document`, `sticker` (each an object with `link` or an
/// uploaded `id`, and `caption`, `filename` as Meta takes them) or
/// `reaction` (`{message_id, emoji}`); `context.message_id` quotes a
/// message. Other types are refused with code 131051.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: the body is checked by `parse_body`
struct GraphTextRequest {
    /// `whatsapp`.
    #[schema(pattern = "^whatsapp$")]
    messaging_product: String,
    /// `individual` (the default); groups are refused.
    #[schema(nullable = false)]
    recipient_type: Option<String>,
    /// The recipient's phone number; this or `recipient`.
    #[schema(nullable = false)]
    to: Option<String>,
    /// The recipient's business-scoped user id (`ZZ.` and 39 digits, as the
    /// `cloud_api` webhooks carry it); this or `to`.
    #[schema(nullable = false)]
    recipient: Option<String>,
    /// `text`.
    #[schema(rename = "type", nullable = false)]
    kind: Option<String>,
    #[schema(nullable = false)]
    text: Option<GraphText>,
    #[schema(nullable = false)]
    image: Option<GraphMedia>,
    #[schema(nullable = false)]
    video: Option<GraphMedia>,
    #[schema(nullable = false)]
    audio: Option<GraphMedia>,
    #[schema(nullable = false)]
    document: Option<GraphMedia>,
    #[schema(nullable = false)]
    sticker: Option<GraphMedia>,
    #[schema(nullable = false)]
    reaction: Option<GraphReaction>,
    /// `{message_id}`: the message this one replies to.
    #[schema(nullable = false)]
    context: Option<Value>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct GraphMedia {
    /// An `http(s)` URL whatsd fetches (not loopback/private/link-local).
    #[schema(nullable = false)]
    link: Option<String>,
    /// An id from `POST /graph/{version}/{phone_number_id}/media`.
    #[schema(nullable = false)]
    id: Option<String>,
    /// Image, video and document.
    #[schema(nullable = false)]
    caption: Option<String>,
    /// Document.
    #[schema(nullable = false)]
    filename: Option<String>,
    /// Audio: a voice note (Opus in Ogg).
    #[schema(nullable = false)]
    voice: Option<bool>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct GraphReaction {
    message_id: String,
    /// Empty removes the reaction.
    emoji: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct GraphText {
    /// 1 to 65,536 characters (Meta: 4,096).
    #[schema(min_length = 1, max_length = 65536)]
    body: String,
    #[schema(nullable = false)]
    preview_url: Option<bool>,
}

/// Meta's answer to a send.
#[derive(ToSchema)]
#[allow(dead_code)]
struct GraphSent {
    /// `whatsapp`.
    messaging_product: String,
    /// `{input, wa_id}`, or `{input, user_id}` when sent to a user id.
    contacts: Vec<Value>,
    /// `[{id}]`: the WhatsApp message id.
    messages: Vec<Value>,
}

/// A failure as Meta writes it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct GraphErrorBody {
    /// `{message, type, code, error_subcode?, error_data?, fbtrace_id}`.
    error: Value,
}

/// A failure as Meta writes it:
/// `{"error":{"message","type","code","error_subcode"?,"error_data"?,"fbtrace_id"}}`.
/// `fbtrace_id` is random per answer and logged with the cause.
#[derive(Debug)]
pub(super) struct GraphError {
    status: StatusCode,
    code: u32,
    subcode: Option<u32>,
    kind: &'static str,
    message: String,
    /// `error_data.details`, for the Cloud API's own (131xxx) codes.
    details: Option<String>,
    retry_after: Option<u64>,
    rate_limit: Option<RateLimitHeaders>,
}

impl GraphError {
    pub(super) fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            subcode: None,
            kind: "OAuthException",
            message: message.into(),
            details: None,
            retry_after: None,
            rate_limit: None,
        }
    }

    /// A Cloud API error: Meta's title in `message`, ours in the details.
    pub(super) fn cloud(
        status: StatusCode,
        code: u32,
        title: &str,
        details: impl Into<String>,
    ) -> Self {
        Self {
            details: Some(details.into()),
            ..Self::new(status, code, format!("(#{code}) {title}"))
        }
    }

    /// 131008: a required parameter is missing.
    pub(super) fn missing(details: impl Into<String>) -> Self {
        Self::cloud(
            StatusCode::BAD_REQUEST,
            131_008,
            "Required parameter is missing",
            details,
        )
    }

    /// 131009: a parameter has a value whatsd cannot use.
    pub(super) fn invalid(details: impl Into<String>) -> Self {
        Self::cloud(
            StatusCode::BAD_REQUEST,
            131_009,
            "Parameter value is not valid",
            details,
        )
    }

    /// What Meta answers for a phone number id that does not exist or is
    /// not the caller's: the same words for both, so nothing leaks.
    fn unknown_object(id: &str) -> Self {
        Self {
            subcode: Some(33),
            kind: "GraphMethodException",
            ..Self::new(
                StatusCode::BAD_REQUEST,
                100,
                format!(
                    "Unsupported post request. Object with ID '{id}' does not exist, cannot be \
                     loaded due to missing permissions, or does not support this operation"
                ),
            )
        }
    }

    /// Maps an error of the shared send path (or of authentication).
    pub(super) fn from_api(err: ApiError, phone_number_id: &str) -> Self {
        let status = err.status;
        match err.code {
            "unauthorized" => Self::new(
                StatusCode::UNAUTHORIZED,
                190,
                format!("Invalid OAuth access token: {}", err.message),
            ),
            "too_many_auth_failures" => Self {
                retry_after: err.retry_after,
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    4,
                    "(#4) Application request limit reached: too many failed authentications",
                )
            },
            // The session's send limit is what Meta calls the number's
            // throughput: 130429, "Rate limit hit".
            "rate_limited" => Self {
                retry_after: err.retry_after,
                rate_limit: err.rate_limit,
                ..Self::cloud(
                    StatusCode::TOO_MANY_REQUESTS,
                    130_429,
                    "Rate limit hit",
                    err.message,
                )
            },
            "not_found" | "invalid_id" => Self::unknown_object(phone_number_id),
            "media_too_large"
            | "unsupported_media_type"
            | "url_not_allowed"
            | "url_fetch_failed"
            | "invalid_url" => Self::cloud(
                StatusCode::BAD_REQUEST,
                131_053,
                "Media upload error",
                err.message,
            ),
            "not_paired" => Self::cloud(
                StatusCode::SERVICE_UNAVAILABLE,
                131_016,
                "Service unavailable",
                err.message,
            ),
            "invalid_body" | "invalid_phone" | "bad_request" => Self::invalid(err.message),
            "not_connected" | "timeout" | "shutting_down" => Self::cloud(
                StatusCode::SERVICE_UNAVAILABLE,
                131_016,
                "Service unavailable",
                err.message,
            ),
            "send_failed" => Self::cloud(
                StatusCode::BAD_GATEWAY,
                131_000,
                "Something went wrong",
                err.message,
            ),
            _ => Self::cloud(
                if status.is_server_error() {
                    status
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                },
                131_000,
                "Something went wrong",
                err.message,
            ),
        }
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let mut bytes = [0u8; 12];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        let trace = hex(&bytes);
        tracing::debug!(
            fbtrace_id = %trace,
            code = self.code,
            status = self.status.as_u16(),
            message = %self.message,
            "graph API request refused"
        );
        let mut error = json!({
            "message": self.message,
            "type": self.kind,
            "code": self.code,
            "fbtrace_id": trace,
        });
        if let Some(subcode) = self.subcode {
            error["error_subcode"] = json!(subcode);
        }
        if let Some(details) = self.details {
            error["error_data"] = json!({ "messaging_product": "whatsapp", "details": details });
        }
        let mut response = error_response(self.status, json!({ "error": error }), self.retry_after);
        if let Some(rate_limit) = &self.rate_limit {
            rate_limit.apply(response.headers_mut());
        }
        response
    }
}

/// `v` and a dotted number, as Meta writes its versions (`v23.0`). whatsd
/// answers every version the same way.
pub(super) fn valid_version(version: &str) -> bool {
    let Some((major, minor)) = version.strip_prefix('v').and_then(|v| v.split_once('.')) else {
        return false;
    };
    [major, minor]
        .iter()
        .all(|n| (1..=3).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Who a request sends to: what the caller wrote, and the address the
/// session's send path takes.
struct Recipient {
    input: String,
    address: String,
    /// `wa_id` (a phone number) or `user_id` (a BSUID) in the answer.
    answer_key: &'static str,
    answer_value: String,
}

/// The text request, checked field by field as Meta documents it.
fn parse_body(
    state: &AppState,
    session: &SessionInfo,
    body: &[u8],
) -> Result<(Recipient, GraphSend, Option<String>), GraphError> {
    let body: Value = serde_json::from_slice(body).map_err(|e| {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            100,
            format!("(#100) The request body is not valid JSON: {e}"),
        )
    })?;
    let Some(body) = body.as_object() else {
        return Err(GraphError::invalid(
            "the request body must be a JSON object",
        ));
    };
    match body.get("messaging_product") {
        None => return Err(GraphError::missing("messaging_product is required")),
        Some(Value::String(p)) if p.eq_ignore_ascii_case("whatsapp") => {}
        Some(other) => {
            return Err(GraphError::invalid(format!(
                "messaging_product must be \"whatsapp\", not {other}"
            )));
        }
    }
    match body.get("recipient_type") {
        None => {}
        Some(Value::String(t)) if t == "individual" => {}
        Some(other) => {
            return Err(GraphError::invalid(format!(
                "recipient_type {other} is not supported by whatsd yet; only \"individual\""
            )));
        }
    }
    let kind = match body.get("type") {
        None => "text",
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err(GraphError::invalid(format!(
                "type must be a string, not {other}"
            )));
        }
    };
    if OTHER_TYPES.contains(&kind) {
        return Err(GraphError::cloud(
            StatusCode::BAD_REQUEST,
            131_051,
            "Unsupported message type",
            format!("whatsd does not send {kind} messages yet"),
        ));
    }
    if body
        .get("recipient_identity_key_hash")
        .is_some_and(|v| !v.is_null())
    {
        return Err(GraphError::invalid(
            "recipient_identity_key_hash is not supported by whatsd yet",
        ));
    }
    let reply_to = match body.get("context") {
        None | Some(Value::Null) => None,
        Some(Value::Object(context)) => match context.get("message_id") {
            Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
            _ => return Err(GraphError::missing("context.message_id is required")),
        },
        Some(other) => {
            return Err(GraphError::invalid(format!(
                "context must be an object, not {other}"
            )));
        }
    };
    let object = |name: &str| match body.get(name) {
        None | Some(Value::Null) => Err(GraphError::missing(format!(
            "{name} is required for type {name}"
        ))),
        Some(Value::Object(o)) => Ok(o),
        Some(other) => Err(GraphError::invalid(format!(
            "{name} must be an object, not {other}"
        ))),
    };
    let string = |o: &serde_json::Map<String, Value>, field: &str, path: &str| match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(v)) => Ok(Some(v.clone())),
        Some(other) => Err(GraphError::invalid(format!(
            "{path}.{field} must be a string, not {other}"
        ))),
    };
    let what = match kind {
        "text" => {
            let text = object("text")?;
            let text_body = match text.get("body") {
                None | Some(Value::Null) => {
                    return Err(GraphError::missing("text.body is required"));
                }
                Some(Value::String(b)) if b.is_empty() => {
                    return Err(GraphError::invalid("text.body must not be empty"));
                }
                Some(Value::String(b)) => b.clone(),
                Some(other) => {
                    return Err(GraphError::invalid(format!(
                        "text.body must be a string, not {other}"
                    )));
                }
            };
            if let Some(preview) = text.get("preview_url")
                && !preview.is_boolean()
            {
                return Err(GraphError::invalid(
                    "text.preview_url must be true or false",
                ));
            }
            GraphSend::Text(text_body)
        }
        "reaction" => {
            let reaction = object("reaction")?;
            let Some(message_id) = string(reaction, "message_id", "reaction")? else {
                return Err(GraphError::missing("reaction.message_id is required"));
            };
            let Some(emoji) = string(reaction, "emoji", "reaction")? else {
                return Err(GraphError::missing("reaction.emoji is required"));
            };
            GraphSend::Reaction { message_id, emoji }
        }
        name => {
            let Some(media_kind) = MediaKind::parse(name) else {
                return Err(GraphError::invalid(format!(
                    "type {name:?} is not a message type whatsd sends"
                )));
            };
            let media = object(name)?;
            let link = string(media, "link", name)?;
            let id = string(media, "id", name)?;
            let source = match (link, id) {
                (Some(link), None) => MediaSource::Link(link),
                (None, Some(id)) => MediaSource::Id(id),
                (None, None) => {
                    return Err(GraphError::missing(format!(
                        "{name}.link or {name}.id is required"
                    )));
                }
                (Some(_), Some(_)) => {
                    return Err(GraphError::invalid(format!(
                        "give {name}.link or {name}.id, not both"
                    )));
                }
            };
            let voice = match media.get("voice") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(v)) => Some(*v),
                Some(other) => {
                    return Err(GraphError::invalid(format!(
                        "{name}.voice must be true or false, not {other}"
                    )));
                }
            };
            GraphSend::Media {
                kind: media_kind,
                source,
                caption: string(media, "caption", name)?,
                filename: string(media, "filename", name)?,
                voice,
            }
        }
    };
    let recipient = recipient(state, session, body)?;
    Ok((recipient, what, reply_to))
}

/// What a Graph request sends.
enum GraphSend {
    Text(String),
    Media {
        kind: MediaKind,
        source: MediaSource,
        caption: Option<String>,
        filename: Option<String>,
        voice: Option<bool>,
    },
    Reaction {
        message_id: String,
        emoji: String,
    },
}

enum MediaSource {
    Link(String),
    Id(String),
}

/// `to` (a phone number) or `recipient` (a BSUID this session gave out).
fn recipient(
    state: &AppState,
    session: &SessionInfo,
    body: &serde_json::Map<String, Value>,
) -> Result<Recipient, GraphError> {
    let field = |name: &str| match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(GraphError::invalid(format!(
            "{name} must be a string, not {other}"
        ))),
    };
    match (field("to")?, field("recipient")?) {
        (None, None) => Err(GraphError::missing(
            "to (a phone number) or recipient (a user id) is required",
        )),
        (Some(_), Some(_)) => Err(GraphError::invalid("give to or recipient, not both")),
        (Some(to), None) => {
            let address = if to.contains('@') {
                to.clone()
            } else {
                normalize_phone(&to).map_err(|e| GraphError::invalid(e.message))?
            };
            let wa_id = address.split('@').next().unwrap_or_default().to_string();
            Ok(Recipient {
                input: to,
                address,
                answer_key: "wa_id",
                answer_value: wa_id,
            })
        }
        (None, Some(user_id)) => {
            let Some(contact) = bsuid::contact(
                state.store.blinder(),
                &session.id,
                &session.incarnation,
                &user_id,
            ) else {
                return Err(GraphError::invalid(format!(
                    "recipient {user_id:?} is not a user id this phone number id gave out"
                )));
            };
            Ok(Recipient {
                input: user_id.clone(),
                address: contact.address(),
                answer_key: "user_id",
                answer_value: user_id,
            })
        }
    }
}

/// `POST /graph/{version}/{phone_number_id}/messages`.
#[utoipa::path(post, path = "/graph/{version}/{phone_number_id}/messages", tag = "graph",
    params(GraphPath),
    request_body = GraphTextRequest,
    responses(
        (status = 200, description = "sent", body = GraphSent),
        (status = 400, description = "Meta codes 100 (bad or unknown parameter, unknown phone number id: subcode 33), 2500 (bad version), 131008 (required parameter missing), 131009 (parameter value not valid), 131051 (message type not supported yet)", body = GraphErrorBody),
        (status = 401, description = "code 190: no valid bearer token", body = GraphErrorBody),
        (status = 413, description = "code 100: the body is larger than `api.body_limit`", body = GraphErrorBody),
        (status = 429, description = "code 4: too many failed authentications from this address; code 130429: the session's send rate limit (`Retry-After`, `RateLimit-*`)", body = GraphErrorBody),
        (status = 500, description = "code 131000: something went wrong", body = GraphErrorBody),
        (status = 502, description = "code 131000: WhatsApp did not take the message", body = GraphErrorBody),
        (status = 503, description = "code 131016: the session is not connected, or the daemon is stopping; whatsd's `timeout` error when the request outlives `api.request_timeout`", body = GraphErrorBody),
    ))]
async fn send(State(state): State<AppState>, request: Request) -> Response {
    match sent(&state, request).await {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn sent(state: &AppState, request: Request) -> Result<Value, GraphError> {
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
            format!("Unknown path components: /{version}/{id}/messages (versions look like v23.0)"),
        ));
    }
    let info = visible_session(state, &principal, &id)
        .await
        .map_err(|e| GraphError::from_api(e, &id))?;
    let request = Request::from_parts(parts, body);
    let bytes = Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                GraphError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    ..GraphError::invalid("the request body is larger than the limit")
                }
            } else {
                GraphError::invalid(rejection.body_text())
            }
        })?;
    let (to, what, reply_to) = parse_body(state, &info, &bytes)?;
    let message_id = match (what, reply_to) {
        (GraphSend::Text(text), None) => send_text(state, &principal, &id, &to.address, &text)
            .await
            .map_err(|e| GraphError::from_api(e, &id))?,
        (what, reply_to) => queue(state, &id, &to.address, what, reply_to).await?,
    };
    Ok(json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": to.input, to.answer_key: to.answer_value }],
        "messages": [{ "id": message_id }],
    }))
}

/// Sends media, replies and reactions through the session's queue (an
/// upload may take a while): the answer carries the message id as soon as
/// the send is stored.
async fn queue(
    state: &AppState,
    id: &str,
    to: &str,
    what: GraphSend,
    reply_to: Option<String>,
) -> Result<String, GraphError> {
    let api = |e: ApiError| GraphError::from_api(e, id);
    let prefix = state
        .supervisor
        .contacts_prefix(id)
        .await
        .map_err(|e| api(e.into()))?;
    let mut req = SendMessage {
        to: to.to_owned(),
        reply_to: reply_to.map(ReplyTo::Id),
        ..SendMessage::default()
    };
    let mut media = None;
    let mut upload_name = None;
    let mut upload_type = None;
    match what {
        GraphSend::Text(text) => req.text = Some(text),
        GraphSend::Reaction { message_id, emoji } => {
            req.kind = Some("reaction".into());
            req.message_id = Some(message_id);
            req.emoji = Some(emoji);
        }
        GraphSend::Media {
            kind,
            source,
            caption,
            filename,
            voice,
        } => {
            req.kind = Some(kind.as_str().into());
            req.caption = caption;
            req.file_name = filename;
            req.voice = voice;
            media = Some(match source {
                MediaSource::Link(link) => {
                    req.url = Some(link.clone());
                    media_out::fetch_url(state, &prefix, &link, kind)
                        .await
                        .map_err(api)?
                }
                MediaSource::Id(media_id) => {
                    let Some(upload) = super::uploads::find(state, &prefix, &media_id).await?
                    else {
                        return Err(GraphError::invalid(format!(
                            "no media {media_id:?} uploaded to this phone number id (or it expired)"
                        )));
                    };
                    upload_name = upload.file_name.clone();
                    upload_type = Some(upload.mime_type.clone());
                    // A copy: the upload stays sendable, the copy goes with the send.
                    rekey(&state.store, &prefix, &upload.blob, kind)
                        .await
                        .map_err(|e| api(ApiError::internal(&e)))?
                }
            });
        }
    }
    let mut parsed = media_out::ParsedSend {
        req,
        media,
        upload_name,
        upload_type,
    };
    let out = match media_out::outgoing(state, &prefix, &mut parsed).await {
        Ok(out) => out,
        Err(e) => {
            if let Some(media) = parsed.media.take() {
                let _ = state.store.media_blob_remove(&media.blob.name).await;
            }
            return Err(api(e));
        }
    };
    let (status, _) = state
        .supervisor
        .enqueue_outgoing(id, to, out, None)
        .await
        .map_err(|e| api(e.into()))?;
    Ok(status.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_meta_writes_them() {
        for ok in ["v21.0", "v23.0", "v1.0", "v100.10"] {
            assert!(valid_version(ok), "{ok}");
        }
        for bad in [
            "", "v", "21.0", "v21", "v21.", "v.0", "vx.0", "v1.0.0", "v1234.0",
        ] {
            assert!(!valid_version(bad), "{bad}");
        }
    }

    #[test]
    fn errors_have_meta_shape() {
        let response = GraphError::unknown_object("shop-1").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let missing = GraphError::missing("text.body is required");
        assert_eq!(missing.code, 131_008);
        assert_eq!(missing.message, "(#131008) Required parameter is missing");
    }
}
