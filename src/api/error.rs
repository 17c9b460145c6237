//! The API's one error type: a status, a stable machine-readable code and a
//! human message, rendered as `{"error":{"code","message"}}`. Internal
//! causes are logged here and never sent to the client.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::session::SupervisorError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 answers.
    pub retry_after: Option<u64>,
    /// `RateLimit-Limit`, `-Remaining` and `-Reset` for a rate-limit refusal.
    pub rate_limit: Option<RateLimitHeaders>,
}

/// The `RateLimit-*` headers of a refusal (IETF draft
/// `ratelimit-headers`): the bucket's limit, what is left (0) and the
/// seconds until it is full again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
}

impl RateLimitHeaders {
    pub fn of(exhausted: &crate::session::limits::Exhausted) -> Self {
        Self {
            limit: exhausted.limit,
            remaining: 0,
            reset_secs: exhausted.full_secs(),
        }
    }

    pub(crate) fn apply(&self, headers: &mut axum::http::HeaderMap) {
        for (name, value) in [
            ("ratelimit-limit", u64::from(self.limit)),
            ("ratelimit-remaining", u64::from(self.remaining)),
            ("ratelimit-reset", self.reset_secs),
        ] {
            headers.insert(name, HeaderValue::from(value));
        }
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            rate_limit: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn session_not_found(id: &str) -> Self {
        Self::not_found("not_found", format!("no session {id:?}"))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// A failure whose cause must not reach the client: logged, then
    /// answered 500 with a generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error while serving a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (logged on the server)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = error_response(self.status, body, self.retry_after);
        if let Some(rate_limit) = &self.rate_limit {
            rate_limit.apply(response.headers_mut());
        }
        response
    }
}

/// An error answer in any shape (ours, or Meta's on `/graph`): the JSON
/// body with `Retry-After` when given and `WWW-Authenticate` on a 401.
pub(crate) fn error_response(
    status: StatusCode,
    body: serde_json::Value,
    retry_after: Option<u64>,
) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after
        && let Ok(value) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl From<SupervisorError> for ApiError {
    fn from(err: SupervisorError) -> Self {
        let code = err.code();
        if let SupervisorError::RateLimited(exhausted) = &err {
            return Self {
                rate_limit: Some(RateLimitHeaders::of(exhausted)),
                ..Self::too_many(code, err.to_string(), exhausted.retry_after_secs())
            };
        }
        let status = match &err {
            SupervisorError::NotFound(_) => StatusCode::NOT_FOUND,
            SupervisorError::AlreadyExists(_) => StatusCode::CONFLICT,
            SupervisorError::Quota(_) => StatusCode::FORBIDDEN,
            SupervisorError::InvalidId(_) => StatusCode::UNPROCESSABLE_ENTITY,
            SupervisorError::InvalidState { .. }
            | SupervisorError::NotConnected(_)
            | SupervisorError::NotPaired(_) => StatusCode::CONFLICT,
            SupervisorError::PairCode { reason, .. } if reason.contains("rate") => {
                StatusCode::TOO_MANY_REQUESTS
            }
            SupervisorError::PairCode { reason, .. } if reason == "code_outstanding" => {
                StatusCode::CONFLICT
            }
            SupervisorError::PairCode { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            SupervisorError::BadRequest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            SupervisorError::Send(_) => StatusCode::BAD_GATEWAY,
            SupervisorError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            SupervisorError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            SupervisorError::Store(_) => return Self::internal(&err),
            SupervisorError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            SupervisorError::NothingToRead(_) => StatusCode::NOT_FOUND,
        };
        Self::new(status, code, err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        Self::internal(&err)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("bad_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("bad_query", rejection.body_text())
    }
}
