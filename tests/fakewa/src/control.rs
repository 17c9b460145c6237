//! The control API: JSON over HTTP, so tests in any language can play the
//! phone and its contacts. Documented in `tests/fakewa/README.md`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::server::{ControlError, Fault, GroupEdit, MediaSend, NewMember, Server};
use crate::state::{MessageKind, ReceiptStatus};

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/control/scan", post(scan))
        .route("/control/pair-code", post(pair_code))
        .route("/control/messages", post(messages))
        .route("/control/outbox", get(outbox))
        .route("/control/receipts", post(receipts))
        .route("/control/groups", post(create_group))
        .route("/control/unregistered", post(unregistered))
        .route("/control/groups/messages", post(group_message))
        .route("/control/groups/participants", post(group_participants))
        .route("/control/groups/info", post(group_info))
        .route("/control/unlink", post(unlink))
        .route("/control/drop", post(drop_conn))
        .route("/control/stall", post(stall))
        .route("/control/replace", post(replace))
        .route("/control/refuse", post(refuse))
        .route("/control/devices", get(devices))
        .route("/control/deliveries", get(deliveries))
        .route("/control/media", post(media_send))
        .route("/control/media/ca.pem", get(media_ca))
        .route("/control/media/expire", post(media_expire))
        .route("/control/media/hold", post(media_hold).get(media_held))
        .route("/control/media/sent/{id}", get(media_sent))
        .route(
            "/control/media/reupload",
            get(reupload_stats).post(reupload_answer),
        )
        .route("/control/receipts-from-devices", get(receipts_from_devices))
        .route("/control/chatstates", get(chatstates))
        .route("/control/address-book", post(address_book))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such control endpoint",
            )
        })
        // `POST /control/media` carries files as base64 (a 100 MB document
        // is ~134 MB of JSON).
        .layer(axum::extract::DefaultBodyLimit::max(160 * 1024 * 1024))
        .with_state(server)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match self {
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Failed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::Gone(_) => StatusCode::GONE,
        };
        error(status, self.code(), &self.to_string())
    }
}

/// A JSON body whose rejection is itself a JSON error.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => {
                let status = match rejection {
                    JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(error(status, "bad_request", &rejection.body_text()))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanReq {
    qr: String,
    phone: Option<String>,
}

async fn scan(State(s): State<Arc<Server>>, Body(req): Body<ScanReq>) -> Response {
    match s.scan(&req.qr, req.phone.as_deref()).await {
        Ok(paired) => Json(paired).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PairCodeReq {
    phone: String,
    code: String,
}

async fn pair_code(State(s): State<Arc<Server>>, Body(req): Body<PairCodeReq>) -> Response {
    match s.enter_pair_code(&req.phone, &req.code).await {
        Ok(paired) => Json(paired).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageReq {
    to_phone: String,
    from_phone: String,
    text: String,
    #[serde(default = "default_kind")]
    kind: MessageKind,
}

fn default_kind() -> MessageKind {
    MessageKind::Dm
}

async fn messages(State(s): State<Arc<Server>>, Body(req): Body<MessageReq>) -> Response {
    match s.send_message(&req.to_phone, &req.from_phone, &req.text, req.kind) {
        Ok(id) => Json(json!({"id": id})).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptReq {
    /// The account whose device sent the message.
    to_phone: String,
    /// The contact that received it and now sends the receipt.
    from_phone: String,
    message_id: String,
    status: ReceiptStatus,
}

async fn receipts(State(s): State<Arc<Server>>, Body(req): Body<ReceiptReq>) -> Response {
    match s.send_receipt(&req.to_phone, &req.from_phone, &req.message_id, req.status) {
        Ok(()) => Json(json!({})).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupReq {
    subject: String,
    description: Option<String>,
    /// The first member creates the group.
    members: Vec<NewMember>,
}

async fn create_group(State(s): State<Arc<Server>>, Body(req): Body<GroupReq>) -> Response {
    match s.create_group(&req.subject, req.description.as_deref(), req.members) {
        Ok(group) => Json(json!({
            "jid": group.jid(),
            "members": group.members.iter().map(|m| json!({
                "phone": m.phone,
                "lid": format!("{}@lid", m.lid),
                "role": m.role,
                "lid_only": m.lid_only,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupMessageReq {
    group: String,
    from_phone: String,
    text: String,
}

async fn group_message(State(s): State<Arc<Server>>, Body(req): Body<GroupMessageReq>) -> Response {
    match s.post_in_group(&req.group, &req.from_phone, &req.text) {
        Ok(id) => Json(json!({"id": id})).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupParticipantsReq {
    group: String,
    by_phone: String,
    /// `add`, `remove`, `promote` or `demote`.
    action: String,
    phones: Vec<String>,
}

async fn group_participants(
    State(s): State<Arc<Server>>,
    Body(req): Body<GroupParticipantsReq>,
) -> Response {
    let edit = GroupEdit::Participants {
        action: req.action,
        phones: req.phones,
    };
    match s.change_group(&req.group, &req.by_phone, edit) {
        Ok(id) => Json(json!({"id": id})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A new subject, or a new (or, with `null`, deleted) description.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupInfoReq {
    group: String,
    by_phone: String,
    subject: Option<String>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
}

/// Tells a `null` field from a missing one.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

async fn group_info(State(s): State<Arc<Server>>, Body(req): Body<GroupInfoReq>) -> Response {
    let edit = match (req.subject, req.description) {
        (Some(subject), None) => GroupEdit::Subject(subject),
        (None, Some(description)) => GroupEdit::Description(description),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give either subject or description",
            );
        }
    };
    match s.change_group(&req.group, &req.by_phone, edit) {
        Ok(id) => Json(json!({"id": id})).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhonesReq {
    phones: Vec<String>,
}

async fn unregistered(State(s): State<Arc<Server>>, Body(req): Body<PhonesReq>) -> Response {
    match s.set_unregistered(&req.phones) {
        Ok(()) => Json(json!({"unregistered": req.phones})).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct OutboxQuery {
    from_phone: Option<String>,
}

async fn outbox(State(s): State<Arc<Server>>, Query(q): Query<OutboxQuery>) -> Response {
    Json(json!({"messages": s.outbox(q.from_phone.as_deref())})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhoneReq {
    phone: String,
}

async fn unlink(State(s): State<Arc<Server>>, Body(req): Body<PhoneReq>) -> Response {
    match s.unlink(&req.phone) {
        Ok(n) => Json(json!({"devices": n})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn fault(s: &Server, phone: &str, fault: Fault) -> Response {
    match s.fault(phone, fault) {
        Ok(n) => Json(json!({"connections": n})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn drop_conn(State(s): State<Arc<Server>>, Body(req): Body<PhoneReq>) -> Response {
    fault(&s, &req.phone, Fault::Drop).await
}

async fn stall(State(s): State<Arc<Server>>, Body(req): Body<PhoneReq>) -> Response {
    fault(&s, &req.phone, Fault::Stall).await
}

async fn replace(State(s): State<Arc<Server>>, Body(req): Body<PhoneReq>) -> Response {
    fault(&s, &req.phone, Fault::Replace).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefuseReq {
    seconds: u64,
}

async fn refuse(State(s): State<Arc<Server>>, Body(req): Body<RefuseReq>) -> Response {
    if req.seconds > 3600 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "seconds must be at most 3600",
        );
    }
    s.refuse_for(req.seconds);
    Json(json!({"refusing_for": req.seconds})).into_response()
}

async fn devices(State(s): State<Arc<Server>>) -> Response {
    Json(json!({"devices": s.devices()})).into_response()
}

async fn deliveries(State(s): State<Arc<Server>>) -> Response {
    Json(json!({"deliveries": s.deliveries()})).into_response()
}

async fn media_send(State(s): State<Arc<Server>>, Body(req): Body<MediaSend>) -> Response {
    use base64::Engine;
    let data = match base64::engine::general_purpose::STANDARD.decode(req.data_base64.as_bytes()) {
        Ok(data) => data,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("data_base64 is not base64: {e}"),
            );
        }
    };
    match s.send_media(&req, &data) {
        Ok(sent) => Json(sent).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn media_ca(State(s): State<Arc<Server>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
        s.media_ca_pem(),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireReq {}

async fn media_expire(State(s): State<Arc<Server>>, Body(_req): Body<ExpireReq>) -> Response {
    Json(json!({"expired": s.media.expire_all()})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldReq {
    hold: bool,
}

async fn media_hold(State(s): State<Arc<Server>>, Body(req): Body<HoldReq>) -> Response {
    let waiting = s.media.hold_uploads(req.hold);
    Json(json!({"hold": req.hold, "waiting": waiting})).into_response()
}

async fn media_held(State(s): State<Arc<Server>>) -> Response {
    Json(json!({"waiting": s.media.uploads_held()})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReuploadReq {
    answer: crate::media_retry::ReuploadAnswer,
}

/// How the contacts' phones answer re-upload requests from now on.
async fn reupload_answer(State(s): State<Arc<Server>>, Body(req): Body<ReuploadReq>) -> Response {
    s.reuploads.set_answer(req.answer);
    Json(s.reuploads.stats()).into_response()
}

async fn reupload_stats(State(s): State<Arc<Server>>) -> Response {
    Json(s.reuploads.stats()).into_response()
}

async fn media_sent(
    State(s): State<Arc<Server>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match s.sent_media(&id) {
        Ok((plain, mimetype)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                mimetype.unwrap_or_else(|| "application/octet-stream".into()),
            )],
            plain,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct PhoneQuery {
    phone: Option<String>,
}

async fn receipts_from_devices(
    State(s): State<Arc<Server>>,
    Query(q): Query<PhoneQuery>,
) -> Response {
    Json(json!({"receipts": s.device_receipts(q.phone.as_deref())})).into_response()
}

async fn chatstates(State(s): State<Arc<Server>>, Query(q): Query<PhoneQuery>) -> Response {
    Json(json!({"chatstates": s.chatstates(q.phone.as_deref())})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressBookReq {
    phone: String,
    contacts: Vec<crate::appstate::BookEntry>,
}

/// The phone's address book is now `contacts` (the whole book).
async fn address_book(State(s): State<Arc<Server>>, Body(req): Body<AddressBookReq>) -> Response {
    match s.set_address_book(&req.phone, req.contacts) {
        Ok(version) => Json(json!({"version": version})).into_response(),
        Err(e) => e.into_response(),
    }
}
