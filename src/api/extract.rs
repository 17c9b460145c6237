//! Extractors that answer bad input with [`ApiError`] instead of axum's
//! plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body: 415 without a JSON content type, 413 over the body limit,
/// 400 when it is not JSON, 422 when it does not fit the type (unknown
/// fields included: request types deny them).
pub struct ApiJson<T>(pub T);

/// Like [`ApiJson`], but an empty body (with any or no content type) means
/// `T::default()`: `curl -X POST …/sessions` works.
pub struct ApiJsonOrEmpty<T>(pub T);

async fn read_body(req: Request) -> Result<(bool, Bytes), ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    let bytes = Bytes::from_request(req, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the limit",
            )
        } else {
            ApiError::bad_request("bad_body", rejection.body_text())
        }
    })?;
    Ok((is_json, bytes))
}

fn parse<T: DeserializeOwned>(is_json: bool, bytes: &[u8]) -> Result<T, ApiError> {
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    // serde stops at the first error: a body whose start does not fit the
    // type (`0\t0` for an object) may not be JSON at all further on.
    serde_json::from_slice(bytes).map_err(|e| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => {
                ApiError::unprocessable("invalid_body", format!("the JSON body does not fit: {e}"))
            }
            Err(syntax) => ApiError::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: {syntax}"),
            ),
        }
    })
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (is_json, bytes) = read_body(req).await?;
        parse(is_json, &bytes).map(Self)
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for ApiJsonOrEmpty<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (is_json, bytes) = read_body(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        parse(is_json, &bytes).map(Self)
    }
}

/// A body that is JSON (parsed as `T`) or CSV (`Content-Type: text/csv`,
/// UTF-8, handed on as text).
pub enum JsonOrCsv<T> {
    Json(T),
    Csv(String),
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonOrCsv<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let is_csv = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/csv"));
        let (is_json, bytes) = read_body(req).await?;
        if is_csv {
            return String::from_utf8(bytes.to_vec())
                .map(Self::Csv)
                .map_err(|_| ApiError::bad_request("malformed_csv", "the CSV body is not UTF-8"));
        }
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON (`application/json`) or CSV (`text/csv`)",
            ));
        }
        parse(is_json, &bytes).map(Self::Json)
    }
}

/// Path parameters; a bad one is 400.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Self(v))
            .map_err(ApiError::from)
    }
}

/// Query parameters; a bad one is 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(ApiError::from)
    }
}

/// Session and tenant ids: `[a-z0-9_-]{1,64}`.
pub fn check_id(kind: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{kind} id must not be empty"));
    }
    if id.len() > 64 {
        return Err(format!(
            "{kind} id is {} bytes long; at most 64 are allowed",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "{kind} id {id:?} contains {bad:?}; only a-z, 0-9, '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// A session id taken from a URL path: 400 when malformed.
pub fn path_session_id(id: &str) -> Result<(), ApiError> {
    check_id("session", id).map_err(|m| ApiError::bad_request("invalid_id", m))
}

/// A session id taken from a body: 422 when malformed.
pub fn body_session_id(id: &str) -> Result<(), ApiError> {
    check_id("session", id).map_err(|m| ApiError::unprocessable("invalid_id", m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("session", "abc-1_2").is_ok());
        assert!(check_id("session", &"a".repeat(64)).is_ok());
        for bad in ["", "../x", "A", "é", "a b", "a/b", "a.b"] {
            assert!(check_id("session", bad).is_err(), "{bad:?}");
        }
        assert!(check_id("session", &"a".repeat(65)).is_err());
    }

    #[test]
    fn bodies_that_are_not_json_are_malformed_even_when_their_start_does_not_fit() {
        let status = |body: &[u8]| {
            parse::<std::collections::BTreeMap<String, u32>>(true, body)
                .map_err(|e| (e.status, e.code))
                .err()
        };
        let malformed = Some((StatusCode::BAD_REQUEST, "malformed_json"));
        let unfit = Some((StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"));
        assert_eq!(
            status(b"0\t0"),
            malformed,
            "found by the body property test"
        );
        assert_eq!(status(b"0"), unfit);
        assert_eq!(status(b"{\"a\": \"x\"} ]"), malformed);
        assert_eq!(status(b"{\"a\": \"x\"}"), unfit);
        assert_eq!(status(b"{\"a\": 1}"), None);
    }
}
