//! Webhook endpoints: who owns them, what they receive, and the checks a
//! new one must pass.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::payload::WebhookEvent;
use super::target::is_forbidden;
use crate::store::ids::Blinder;

/// Every event type a webhook can subscribe to. QR codes and pairing codes
/// are credentials and never leave through webhooks.
pub const EVENT_TYPES: &[&str] = &[
    "message.received",
    "message.status",
    "message.undecryptable",
    "message.sent",
    "session.state",
    "session.paired",
    "session.connected",
    "session.phone",
    "session.phone_unknown",
    "session.push_name",
    "session.logged_out",
    "session.pair_code_error",
    "session.deleted",
    "session.reassigned",
];

/// Shortest accepted signing secret, in characters.
pub const MIN_SECRET_LEN: usize = 16;
const MAX_SECRET_LEN: usize = 512;
const MAX_URL_LEN: usize = 2048;

/// Who an endpoint belongs to. A session's own endpoints replace its
/// tenant's; global endpoints (from the config) get every session's events.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", content = "owner", rename_all = "snake_case")]
pub enum Scope {
    Global,
    Tenant(String),
    /// One incarnation of a session id: a session re-created under the
    /// same id is another owner and never sees these endpoints.
    Session(SessionRef),
}

/// A session endpoint's owner: the session id and its incarnation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SessionRef {
    pub id: String,
    pub incarnation: String,
}

impl SessionRef {
    pub fn new(id: impl Into<String>, incarnation: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            incarnation: incarnation.into(),
        }
    }
}

/// Reads the owner as written today (`{"id", "incarnation"}`) or before
/// incarnations existed (the session id alone: incarnation empty, which no
/// live session has).
impl<'de> Deserialize<'de> for SessionRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Legacy(String),
            Current { id: String, incarnation: String },
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Legacy(id) => Self::new(id, ""),
            Stored::Current { id, incarnation } => Self { id, incarnation },
        })
    }
}

/// An endpoint's full name: its scope and a name unique within it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointId {
    #[serde(flatten)]
    pub scope: Scope,
    pub name: String,
}

impl EndpointId {
    pub fn new(scope: Scope, name: impl Into<String>) -> Self {
        Self {
            scope,
            name: name.into(),
        }
    }

    /// The plain name: length-prefixed parts, so no name prefixes another.
    /// Never stored as is (it holds tenant and session ids): see
    /// [`EndpointId::key`].
    fn plain_key(&self) -> Vec<u8> {
        let mut key = Vec::new();
        match &self.scope {
            Scope::Global => {
                push_part(&mut key, b"g");
                push_part(&mut key, b"");
            }
            Scope::Tenant(t) => {
                push_part(&mut key, b"t");
                push_part(&mut key, t.as_bytes());
            }
            Scope::Session(s) => {
                push_part(&mut key, b"s");
                push_part(&mut key, s.id.as_bytes());
                push_part(&mut key, s.incarnation.as_bytes());
            }
        }
        push_part(&mut key, self.name.as_bytes());
        key
    }

    /// The store key: a keyed hash of the plain name ([`KEY_LEN`] bytes).
    pub fn key(&self, blinder: &Blinder) -> Vec<u8> {
        blinder
            .blind(b"webhook.endpoint", &self.plain_key())
            .to_vec()
    }

    /// The outbox queue of this endpoint for one incarnation of a session:
    /// the endpoint's key, then a keyed hash of the session ([`QUEUE_LEN`]
    /// bytes in all; fixed lengths keep every prefix unambiguous).
    pub fn queue(&self, blinder: &Blinder, session: &str, incarnation: &str) -> Vec<u8> {
        let mut queue = self.key(blinder);
        queue.extend_from_slice(&session_part(blinder, session, incarnation));
        queue
    }

    /// The prefix of all this endpoint's queues.
    pub fn queues_prefix(&self, blinder: &Blinder) -> Vec<u8> {
        self.key(blinder)
    }
}

/// Length of an endpoint key.
pub const KEY_LEN: usize = crate::store::ids::BLIND_LEN;
/// Length of a queue prefix (endpoint key ‖ session part).
pub const QUEUE_LEN: usize = 2 * crate::store::ids::BLIND_LEN;

/// The session half of a queue name.
pub fn session_part(blinder: &Blinder, session: &str, incarnation: &str) -> [u8; KEY_LEN] {
    let mut plain = Vec::new();
    push_part(&mut plain, session.as_bytes());
    push_part(&mut plain, incarnation.as_bytes());
    blinder.blind(b"webhook.queue", &plain)
}

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.scope {
            Scope::Global => write!(f, "global/{}", self.name),
            Scope::Tenant(t) => write!(f, "tenant/{t}/{}", self.name),
            Scope::Session(s) => write!(f, "session/{}/{}", s.id, self.name),
        }
    }
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

/// The body shape an endpoint receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// whatsd's own JSON, signed with `X-Whatsd-Signature`.
    #[default]
    Whatsd,
    /// Meta's WhatsApp Cloud API webhook shape, signed with
    /// `X-Hub-Signature-256`. Carries incoming messages only.
    CloudApi,
}

/// What a client sends to create or replace an endpoint.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// An absolute http(s) URL without credentials, at most 2048
    /// characters. Loopback, private, link-local and metadata addresses
    /// need `webhooks.allow_private_targets`.
    #[schema(pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s]+", max_length = 2048)]
    pub url: String,
    /// The HMAC-SHA256 signing key; never shown again.
    #[schema(min_length = 16, max_length = 512)]
    pub secret: String,
    /// Event types to receive; empty or absent means all of them.
    #[serde(default)]
    #[schema(schema_with = crate::api::openapi::event_types)]
    pub events: Vec<String>,
    #[serde(default)]
    pub format: Format,
}

/// A stored endpoint. The secret is sealed at rest and never shown again.
#[derive(Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: EndpointId,
    /// The tenant it belongs to (a session endpoint: the session's tenant;
    /// global: empty).
    pub tenant: String,
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    pub format: Format,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("format", &self.format)
            .finish()
    }
}

impl Endpoint {
    /// Whether this endpoint receives `event` (`from_me`: a message the
    /// account's owner sent from the phone).
    pub fn wants(&self, event: &WebhookEvent, from_me: bool) -> bool {
        let kind = event.kind.as_str();
        if self.format == Format::CloudApi && !super::payload::cloud_api_carries(event, from_me) {
            return false;
        }
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }

    /// What the API shows (no secret).
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.id.name,
            "scope": match &self.id.scope {
                Scope::Global => "global",
                Scope::Tenant(_) => "tenant",
                Scope::Session(_) => "session",
            },
            "owner": match &self.id.scope {
                Scope::Global => "",
                Scope::Tenant(o) => o,
                Scope::Session(s) => &s.id,
            },
            "tenant": self.tenant,
            "url": self.url,
            "events": self.events,
            "format": self.format,
            "secret_set": !self.secret.is_empty(),
            "created_at_ms": self.created_at_ms,
            "updated_at_ms": self.updated_at_ms,
        })
    }
}

/// Why an endpoint was refused; shown to the client as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidEndpoint {
    #[error("endpoint names are 1-64 characters of a-z, 0-9, '_' and '-'")]
    Name,
    #[error("url: {0}")]
    Url(String),
    #[error(
        "secret must be {MIN_SECRET_LEN}-{MAX_SECRET_LEN} characters (the HMAC key the receiver verifies with)"
    )]
    Secret,
    #[error("unknown event type {0:?}; known: {known}", known = EVENT_TYPES.join(", "))]
    Event(String),
    #[error(
        "url {0} resolves to a loopback, private, link-local or metadata address; set webhooks.allow_private_targets = true to allow it"
    )]
    PrivateTarget(String),
}

pub fn check_name(name: &str) -> Result<(), InvalidEndpoint> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidEndpoint::Name)
    }
}

/// Checks everything that does not need the network. The URL's host, if it
/// is a name, is checked against private addresses when it is resolved.
pub fn check_spec(spec: &EndpointSpec, allow_private: bool) -> Result<(), InvalidEndpoint> {
    check_url(&spec.url, allow_private)?;
    // Counted in characters, as the API document's minLength/maxLength are.
    let secret_len = spec.secret.chars().count();
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret_len) {
        return Err(InvalidEndpoint::Secret);
    }
    for event in &spec.events {
        if !EVENT_TYPES.contains(&event.as_str()) {
            return Err(InvalidEndpoint::Event(event.clone()));
        }
    }
    Ok(())
}

pub fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, InvalidEndpoint> {
    if url.chars().count() > MAX_URL_LEN {
        return Err(InvalidEndpoint::Url(format!(
            "longer than {MAX_URL_LEN} characters"
        )));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| InvalidEndpoint::Url(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(InvalidEndpoint::Url(
            "the scheme must be http or https".into(),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(InvalidEndpoint::Url(
            "credentials do not belong in the URL; the request is signed with the secret".into(),
        ));
    }
    let Some(host) = parsed.host() else {
        return Err(InvalidEndpoint::Url("no host".into()));
    };
    if !allow_private {
        let literal = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name == "localhost" || name.ends_with(".localhost") {
                    return Err(InvalidEndpoint::PrivateTarget(url.to_string()));
                }
                None
            }
        };
        if literal.is_some_and(is_forbidden) {
            return Err(InvalidEndpoint::PrivateTarget(url.to_string()));
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::tests::spec;

    #[test]
    fn urls_are_checked() {
        assert!(check_spec(&spec("https://hooks.example.com/wa"), false).is_ok());
        assert!(check_spec(&spec("http://hooks.example.com:8080/wa"), false).is_ok());
        for (url, why) in [
            ("ftp://example.com/x", "scheme"),
            ("https://user:pw@example.com/x", "credentials"),
            ("not a url", "relative"),
        ] {
            let err = check_spec(&spec(url), true).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
        for url in [
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "http://10.1.2.3/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/hook",
            "http://[fd00:ec2::254]/hook",
            "http://[::ffff:127.0.0.1]/hook",
        ] {
            assert!(
                matches!(
                    check_spec(&spec(url), false),
                    Err(InvalidEndpoint::PrivateTarget(_))
                ),
                "{url} must be refused"
            );
            assert!(
                check_spec(&spec(url), true).is_ok(),
                "{url} allowed on request"
            );
        }
    }

    #[test]
    fn secrets_names_and_events_are_checked() {
        let mut s = spec("https://example.com/");
        s.secret = "short".into();
        assert_eq!(check_spec(&s, false), Err(InvalidEndpoint::Secret));
        let mut s = spec("https://example.com/");
        s.events = vec!["message.received".into(), "session.qr".into()];
        assert_eq!(
            check_spec(&s, false),
            Err(InvalidEndpoint::Event("session.qr".into()))
        );
        assert!(check_name("crm-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("Has Space").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn keys_are_blinded_and_queues_fixed_length() {
        let b = Blinder::from_bytes(&[7; 32]);
        let a = EndpointId::new(Scope::Tenant("tenant-x".into()), "a");
        let ab = EndpointId::new(Scope::Tenant("tenant-x".into()), "ab");
        assert_ne!(a.key(&b), ab.key(&b));
        assert_eq!(a.key(&b).len(), KEY_LEN);
        let q = a.queue(&b, "shop-1", "i1");
        assert_eq!(q.len(), QUEUE_LEN);
        assert!(q.starts_with(&a.queues_prefix(&b)));
        assert_ne!(
            q,
            a.queue(&b, "shop-1", "i2"),
            "incarnations get their own queues"
        );
        assert!(
            !ab.queue(&b, "shop-1", "i1")
                .starts_with(&a.queues_prefix(&b))
        );
        for key in [a.key(&b), q] {
            assert!(
                !key.windows(8).any(|w| w == b"tenant-x"),
                "no plain id in a key"
            );
        }
        // Two incarnations of one session id are different owners.
        let s1 = EndpointId::new(Scope::Session(SessionRef::new("shop-1", "i1")), "spy");
        let s2 = EndpointId::new(Scope::Session(SessionRef::new("shop-1", "i2")), "spy");
        assert_ne!(s1.key(&b), s2.key(&b));
    }

    #[test]
    fn legacy_session_owners_read_with_no_incarnation() {
        let id: EndpointId =
            serde_json::from_str(r#"{"scope":"session","owner":"shop-1","name":"spy"}"#).unwrap();
        assert_eq!(id.scope, Scope::Session(SessionRef::new("shop-1", "")));
        let now = serde_json::to_string(&EndpointId::new(
            Scope::Session(SessionRef::new("shop-1", "i1")),
            "spy",
        ))
        .unwrap();
        let back: EndpointId = serde_json::from_str(&now).unwrap();
        assert_eq!(back.scope, Scope::Session(SessionRef::new("shop-1", "i1")));
    }
}
