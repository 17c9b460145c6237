//! One delivery attempt over HTTP, how its result is classified, and when
//! to try again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backoff::backoff::Backoff;

use super::target::{GuardedResolver, is_forbidden};

/// Response bodies are read up to this many bytes (for the error message).
const RESPONSE_CAP: usize = 2048;

/// A signed request, ready to send.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// What became of an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// 2xx: done.
    Delivered { status: u16 },
    /// 408, 429, 5xx, or the network failed: try again later.
    Retry {
        error: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Any other status: the receiver refuses this event; dead-letter it.
    Reject { error: String, status: Option<u16> },
}

/// Sends attempts. The daemon uses [`HttpTransport`]; tests can count and
/// script outcomes.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    async fn send(&self, attempt: Attempt) -> Outcome;
}

/// HTTP/1.1 with keep-alive (reqwest, rustls on ring), no redirects, no
/// proxies, internal addresses refused unless allowed.
pub struct HttpTransport {
    client: reqwest::Client,
    allow_private: Arc<AtomicBool>,
}

impl HttpTransport {
    pub fn new(allow_private: Arc<AtomicBool>) -> Result<Self, String> {
        // Both TLS users in the process (this and the WhatsApp transport)
        // use ring; installing it first avoids an ambiguous provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: Arc::clone(&allow_private),
            }))
            .user_agent(concat!("whatsd/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Self {
            client,
            allow_private,
        })
    }
}

#[async_trait::async_trait]
impl Transport for HttpTransport {
    async fn send(&self, attempt: Attempt) -> Outcome {
        let url = match reqwest::Url::parse(&attempt.url) {
            Ok(url) => url,
            Err(e) => {
                return Outcome::Reject {
                    error: format!("bad url: {e}"),
                    status: None,
                };
            }
        };
        if !self.allow_private.load(Ordering::Relaxed) {
            let literal = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(ip.into()),
                Some(url::Host::Ipv6(ip)) => Some(ip.into()),
                _ => None,
            };
            if literal.is_some_and(is_forbidden) {
                return Outcome::Reject {
                    error: "the target is a loopback/private/link-local address (webhooks.allow_private_targets is false)".into(),
                    status: None,
                };
            }
        }
        let mut request = self
            .client
            .post(url)
            .timeout(attempt.timeout)
            .body(attempt.body);
        for (name, value) in attempt.headers {
            request = request.header(name, value);
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    error: error_chain(&e),
                    status: None,
                    retry_after: None,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read a little of the body (keeps the connection reusable for
        // small answers, and explains failures), never more.
        let mut snippet = Vec::new();
        while snippet.len() < RESPONSE_CAP {
            match tokio::time::timeout(attempt.timeout, response.chunk()).await {
                Ok(Ok(Some(chunk))) => snippet.extend_from_slice(&chunk),
                _ => break,
            }
        }
        snippet.truncate(RESPONSE_CAP);
        classify(status, retry_after, &snippet)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// 2xx delivered; 408/429/5xx retried; anything else refused for good.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let error = if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        )
    };
    match status {
        200..=299 => Outcome::Delivered { status },
        408 | 429 | 500..=599 => Outcome::Retry {
            error,
            status: Some(status),
            retry_after: if status == 429 { retry_after } else { None },
        },
        _ => Outcome::Reject {
            error,
            status: Some(status),
        },
    }
}

/// The retry schedule: exponential from `initial`, doubling, capped at
/// `max`, with ±20 % jitter (the `backoff` crate's randomization).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub initial: Duration,
    pub max: Duration,
}

impl Schedule {
    pub const JITTER: f64 = 0.2;

    /// How long to wait after the `attempts`-th failed attempt (1-based).
    pub fn delay(&self, attempts: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(30))
            .min(self.max);
        let mut b = backoff::ExponentialBackoff {
            current_interval: base,
            initial_interval: self.initial,
            randomization_factor: Self::JITTER,
            multiplier: 2.0,
            max_interval: self.max,
            max_elapsed_time: None,
            ..Default::default()
        };
        b.next_backoff().unwrap_or(base).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(200, None, b""), Outcome::Delivered { status: 200 });
        assert_eq!(classify(204, None, b""), Outcome::Delivered { status: 204 });
        for status in [408, 429, 500, 502, 503] {
            assert!(
                matches!(classify(status, None, b""), Outcome::Retry { .. }),
                "{status}"
            );
        }
        for status in [301, 400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(classify(status, None, b""), Outcome::Reject { .. }),
                "{status}"
            );
        }
        let Outcome::Retry { retry_after, .. } =
            classify(429, Some(Duration::from_secs(7)), b"slow down")
        else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
        let Outcome::Reject { error, .. } = classify(400, None, b"bad field x") else {
            panic!()
        };
        assert_eq!(error, "HTTP 400: bad field x");
    }

    #[test]
    fn schedule_doubles_with_jitter_up_to_the_cap() {
        let s = Schedule {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
        };
        for (attempt, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 512.0)] {
            for _ in 0..50 {
                let d = s.delay(attempt).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                    "attempt {attempt}: {d}"
                );
            }
        }
        for _ in 0..50 {
            assert!(s.delay(11) <= Duration::from_secs(600));
            assert!(s.delay(40) <= Duration::from_secs(600));
            assert!(s.delay(40) >= Duration::from_secs(480));
        }
    }
}
