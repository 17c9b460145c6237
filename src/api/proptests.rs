//! Property tests of what the API parses from clients: ids, phone numbers,
//! JIDs and the other path parameters, JSON bodies and query strings
//! (issue 19: every parser of outside input). Each id rule is compared
//! with a reference predicate written here from the pattern the API
//! document states, without looking at the implementation.

use axum::body::Body;
use axum::extract::{FromRequest, Query};
use axum::http::{Request, StatusCode, Uri, header};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

use super::extract::{ApiJson, ApiJsonOrEmpty, body_session_id, check_id, path_session_id};
use super::media_out::SendMessage as SendText;
use super::sessions::{
    CreateSession, ListQuery, PairCodeRequest, QrQuery, UpdateSession, is_jid, normalize_phone,
};
use super::tenants::CreateTenant;
use super::webhooks::{Page, dead_id};
use super::ws::EventsQuery;
use crate::webhook::endpoint::{EndpointSpec, check_name};

/// `^[a-z0-9_-]{1,64}$`.
fn id_pattern(s: &str) -> bool {
    let n = s.chars().count();
    (1..=64).contains(&n)
        && s.chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// `^[ -]*(\+[ -]*)?[1-9][ -]*([0-9][ -]*){6,14}$`, and the digits it holds.
fn phone_pattern(s: &str) -> Option<String> {
    let sep = |c: char| c == ' ' || c == '-';
    let rest = s.trim_start_matches(sep);
    let rest = rest.strip_prefix('+').unwrap_or(rest);
    if !rest.chars().all(|c| sep(c) || c.is_ascii_digit()) {
        return None;
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    let first_ok = digits.chars().next().is_some_and(|c| c != '0');
    (first_ok && (7..=15).contains(&digits.len())).then_some(digits)
}

/// `^[0-9A-Za-z._:-]{1,64}@[0-9A-Za-z.-]{1,63}$`.
fn jid_pattern(s: &str) -> bool {
    let Some(at) = s.find('@') else { return false };
    let (user, server) = (&s[..at], &s[at + 1..]);
    let user_ok = (1..=64).contains(&user.chars().count())
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    let server_ok = (1..=63).contains(&server.chars().count())
        && server
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    user_ok && server_ok
}

/// Strings near the id rule and far from it.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_-]{0,66}",
        "[a-zA-Z0-9_./ -]{0,66}",
        "[a-z0-9_-]{0,30}[^a-z0-9_-][a-z0-9_-]{0,30}",
        "\\PC{0,70}",
        ".{0,70}",
    ]
}

fn phone_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -]{0,2}\\+?[ -]{0,2}[0-9][0-9 -]{0,20}",
        "\\+?[0-9]{5,17}",
        "[0-9+ ()./-]{0,20}",
        "\\PC{0,20}",
    ]
}

fn jid_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9A-Za-z._:-]{0,66}@[0-9A-Za-z.-]{0,65}",
        "[0-9]{5,15}(:[0-9]{1,2})?@(s\\.whatsapp\\.net|lid|g\\.us)",
        "[^@]{0,10}@.{0,10}(@.{0,4})?",
        "\\PC{0,20}",
    ]
}

/// Any JSON value, with the request types' field names among the keys.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        id_like().prop_map(Value::from),
        phone_like().prop_map(Value::from),
    ];
    let key = prop_oneof![
        3 => select(&[
            "id", "tenant", "start", "phone", "to", "text", "url", "secret", "events", "format",
        ][..])
        .prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ];
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON body, or bytes that are perhaps not JSON at all.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => "[ \t\r\n{}\\[\\]\":,a-z0-9]{0,40}".prop_map(String::into_bytes),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn request(content_type: &str, body: &[u8]) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_vec()))
        .unwrap()
}

/// What the JSON extractor makes of `body` for `T`: `Ok`, or the status
/// and code of its refusal.
fn extract<T: serde::de::DeserializeOwned>(
    rt: &tokio::runtime::Runtime,
    content_type: &str,
    body: &[u8],
) -> Result<T, (StatusCode, &'static str)> {
    rt.block_on(ApiJson::<T>::from_request(request(content_type, body), &()))
        .map(|ApiJson(v)| v)
        .map_err(|e| (e.status, e.code))
}

/// Every body refusal is 400 `malformed_json` for bytes that are not JSON
/// and 422 `invalid_body` for JSON of the wrong shape.
fn refused_properly(body: &[u8], err: (StatusCode, &'static str)) -> Result<(), TestCaseError> {
    let is_json = serde_json::from_slice::<Value>(body).is_ok();
    let want = if is_json {
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
    } else {
        (StatusCode::BAD_REQUEST, "malformed_json")
    };
    prop_assert_eq!(err, want);
    Ok(())
}

proptest! {
    /// Session and tenant ids, endpoint names: accepted exactly when they
    /// match `[a-z0-9_-]{1,64}`, by every copy of the rule; an id the API
    /// accepts is one the store takes.
    #[test]
    fn ids_are_accepted_exactly_when_they_match_the_pattern(id in id_like()) {
        let want = id_pattern(&id);
        prop_assert_eq!(check_id("session", &id).is_ok(), want);
        prop_assert_eq!(check_id("tenant", &id).is_ok(), want);
        prop_assert_eq!(check_name(&id).is_ok(), want);
        prop_assert_eq!(crate::session::valid_session_id(&id), want);
        match path_session_id(&id) {
            Ok(()) => prop_assert!(want),
            Err(e) => {
                prop_assert!(!want);
                prop_assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_id"));
            }
        }
        match body_session_id(&id) {
            Ok(()) => prop_assert!(want),
            Err(e) => prop_assert_eq!((e.status, e.code), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_id")),
        }
        if want {
            prop_assert!(crate::store::validate_session_id(&id).is_ok());
        }
    }

    /// Phone numbers: accepted exactly when they match the documented
    /// pattern; the result is the digits, and normalizing it again changes
    /// nothing.
    #[test]
    fn phones_are_accepted_exactly_when_they_match_the_pattern(phone in phone_like()) {
        match normalize_phone(&phone) {
            Ok(digits) => {
                prop_assert_eq!(Some(digits.clone()), phone_pattern(&phone));
                prop_assert_eq!(normalize_phone(&digits).ok(), Some(digits.clone()));
                prop_assert_eq!(normalize_phone(&format!("+{digits}")).ok(), Some(digits));
            }
            Err(e) => {
                prop_assert_eq!(phone_pattern(&phone), None);
                prop_assert_eq!((e.status, e.code), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_phone"));
            }
        }
    }

    /// A message recipient that contains `@` is a JID, accepted exactly
    /// when it matches the documented pattern.
    #[test]
    fn jids_are_accepted_exactly_when_they_match_the_pattern(to in jid_like()) {
        prop_assert_eq!(is_jid(&to), jid_pattern(&to));
    }

    /// Dead-letter ids are 1 to 19 decimal digits, and read back as the
    /// number they spell; Graph API versions are `v` and a dotted number.
    #[test]
    fn dead_letter_ids_and_graph_versions(raw in "[0-9]{0,21}|\\PC{0,21}|v[0-9]{0,4}\\.[0-9]{0,4}") {
        let digits = (1..=19).contains(&raw.len()) && raw.chars().all(|c| c.is_ascii_digit());
        match dead_id(&raw) {
            Ok(n) => {
                prop_assert!(digits);
                prop_assert_eq!(Some(n), raw.parse::<u64>().ok());
            }
            Err(e) => {
                prop_assert!(!digits);
                prop_assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_id"));
            }
        }
        let version = raw
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(a, b)| {
                [a, b].iter().all(|n| (1..=3).contains(&n.len()) && n.chars().all(|c| c.is_ascii_digit()))
            });
        prop_assert_eq!(super::graph::valid_version(&raw), version);
    }

    /// Any body for any request type: a value, 400 `malformed_json` or 422
    /// `invalid_body`; never a panic, never another answer.
    #[test]
    fn any_body_is_parsed_or_refused_with_the_documented_error(body in body()) {
        let rt = runtime();
        let json = "application/json";
        macro_rules! each {
            ($($t:ty),*) => {$(
                if let Err(err) = extract::<$t>(&rt, json, &body) {
                    refused_properly(&body, err)?;
                }
            )*};
        }
        each!(CreateSession, PairCodeRequest, SendText, UpdateSession, CreateTenant, EndpointSpec);
        // The same bytes under another media type: 415, whatever they are.
        let err = extract::<CreateTenant>(&rt, "text/plain", &body).unwrap_err();
        prop_assert_eq!(err, (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
        // An empty (blank) body is a default session, whatever the type.
        let blank = rt
            .block_on(ApiJsonOrEmpty::<CreateSession>::from_request(request("text/plain", b" \n"), &()))
            .map(|ApiJsonOrEmpty(v)| v);
        let default_session = matches!(blank, Ok(CreateSession { id: None, tenant: None, start: None }));
        prop_assert!(default_session);
    }

    /// Well-typed bodies come through field for field, whatever the
    /// strings hold (validation of their content is the handlers' part,
    /// tested above); a field too many is refused.
    #[test]
    fn well_typed_bodies_keep_their_values(
        id in proptest::option::of(id_like()),
        tenant in proptest::option::of(id_like()),
        start in proptest::option::of(any::<bool>()),
        to in jid_like(),
        text in "\\PC{0,40}",
        extra in "[a-z]{1,8}",
    ) {
        let rt = runtime();
        let json = "application/json";
        let body = json!({ "id": id, "tenant": tenant, "start": start });
        let got: CreateSession = extract(&rt, json, &serde_json::to_vec(&body).unwrap()).unwrap();
        prop_assert_eq!((got.id, got.tenant.clone(), got.start), (id, tenant, start));
        let got: SendText = extract(&rt, json, &serde_json::to_vec(&json!({ "to": to, "text": text })).unwrap()).unwrap();
        prop_assert_eq!((got.to, got.text), (to.clone(), Some(text)));
        let mut with_extra = json!({ "phone": to });
        prop_assume!(extra != "phone");
        with_extra[&extra] = json!(1);
        let err = extract::<PairCodeRequest>(&rt, json, &serde_json::to_vec(&with_extra).unwrap()).unwrap_err();
        prop_assert_eq!(err, (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"));
    }

    /// Any query string for any query type: parsed or refused, never a
    /// panic; a single known parameter comes through as sent.
    #[test]
    fn any_query_is_parsed_or_refused(
        query in "[a-z_=&%0-9A-F+.-]{0,40}|\\PC{0,20}",
        value in "[a-z0-9_-]{1,20}",
    ) {
        let escaped: String = query
            .chars()
            .map(|c| if c.is_ascii_graphic() { c.to_string() } else { format!("%{:02X}", u32::from(c) & 0xff) })
            .collect();
        if let Ok(uri) = format!("/x?{escaped}").parse::<Uri>() {
            let _ = Query::<ListQuery>::try_from_uri(&uri);
            let _ = Query::<QrQuery>::try_from_uri(&uri);
            let _ = Query::<EventsQuery>::try_from_uri(&uri);
            let _ = Query::<Page>::try_from_uri(&uri);
        }
        let uri: Uri = format!("/x?session={value}").parse().unwrap();
        let Query(q) = Query::<EventsQuery>::try_from_uri(&uri).unwrap();
        prop_assert_eq!(q.session, Some(value.clone()));
        let uri: Uri = format!("/x?state={value}&tenant={value}").parse().unwrap();
        let Query(q) = Query::<ListQuery>::try_from_uri(&uri).unwrap();
        prop_assert_eq!((q.state, q.tenant), (Some(value.clone()), Some(value)));
    }
}
