//! `GET /metrics` is Prometheus text (checked by a small parser of the
//! exposition format), admin-only, and its counters move when a session
//! pairs against fakewa, sends a message, receives one and the webhook for
//! it is delivered.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{ADMIN, Daemon};
use serde_json::json;

/// One sample: family name, sorted labels, value.
type Series = BTreeMap<(String, Vec<(String, String)>), f64>;

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("bad label in {text:?}"))?;
        if !is_metric_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err(format!("bad escape in {text:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {text:?}")),
            }
        };
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels.sort();
    Ok(labels)
}

/// Parses the text exposition format 0.0.4: `# HELP`/`# TYPE` lines, one
/// TYPE per family before its samples, samples `name{labels} value`, no
/// series twice. Returns the samples.
fn parse_exposition(text: &str) -> Result<Series, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut series = Series::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ) {
                        return Err(format!("bad type {kind:?}"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(format!("TYPE of {name} twice"));
                    }
                }
                (Some("HELP"), Some(name), _) if is_metric_name(name) => {}
                _ => return Err(format!("bad comment line {line:?}")),
            }
            continue;
        }
        let (head, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value: {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value in {line:?}"))?,
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (
                name,
                parse_labels(
                    rest.strip_suffix('}')
                        .ok_or_else(|| format!("unclosed labels: {line:?}"))?,
                )?,
            ),
            None => (head, Vec::new()),
        };
        if !is_metric_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .ok_or_else(|| format!("sample {name} before its TYPE"))?;
        if kind == "counter" && !name.ends_with("_total") {
            return Err(format!("counter {name} does not end in _total"));
        }
        if series
            .insert((name.to_string(), labels.clone()), value)
            .is_some()
        {
            return Err(format!("series {name}{labels:?} twice"));
        }
    }
    Ok(series)
}

fn sample(series: &Series, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    *series
        .get(&(name.to_string(), labels.clone()))
        .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
}

async fn scrape(daemon: &Daemon) -> Series {
    let r = daemon.get("/metrics", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain") && t.contains("version=0.0.4")),
        "{:?}",
        r.headers
    );
    parse_exposition(&r.text()).unwrap_or_else(|e| panic!("{e}\n{}", r.text()))
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    assert!(parse_exposition("# TYPE a_total counter\na_total 1\n").is_ok());
    assert!(parse_exposition("a 1\n").is_err(), "no TYPE");
    assert!(parse_exposition("# TYPE a gauge\na{x=\"1} 1\n").is_err());
    assert!(parse_exposition("# TYPE a gauge\na 1\na 2\n").is_err());
    assert!(parse_exposition("# TYPE a gauge\na one\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na 1\n").is_err());
    let h =
        "# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n";
    assert_eq!(parse_exposition(h).unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_pairing_messages_and_a_webhook_delivery() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, mut daemon) = Daemon::start_with_local_webhooks(&fake.ws_url()).await;
    let (hook_url, received) = common::webhook_receiver().await;

    assert_eq!(daemon.get("/metrics", None).await.status, 401);
    let tenant = daemon
        .post("/v1/tenants", Some(ADMIN), Some(json!({ "id": "shop" })))
        .await;
    assert_eq!(tenant.status, 201, "{}", tenant.text());
    let tenant_token = tenant.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        daemon.get("/metrics", Some(&tenant_token)).await.status,
        403
    );

    let before = scrape(&daemon).await;
    assert_eq!(
        sample(&before, "whatsd_sessions", &[("state", "connected")]),
        0.0
    );
    let families: BTreeSet<&str> = before.keys().map(|(name, _)| name.as_str()).collect();
    for family in [
        "whatsd_pairing_attempts_total",
        "whatsd_qr_codes_issued_total",
        "whatsd_messages_received_total",
        "whatsd_webhook_outbox_depth",
        "whatsd_webhook_outbox_oldest_age_seconds",
        "whatsd_webhook_delivery_duration_seconds_count",
        "whatsd_store_size_bytes",
        "process_resident_memory_bytes",
        "whatsd_heap_in_use_bytes",
        "whatsd_heap_free_bytes",
    ] {
        assert!(families.contains(family), "{family} missing: {families:?}");
    }
    for outcome in ["delivered", "retried", "dead_lettered"] {
        sample(
            &before,
            "whatsd_webhook_deliveries_total",
            &[("outcome", outcome)],
        );
    }
    assert!(sample(&before, "process_resident_memory_bytes", &[]) > 0.0);
    // The binary installs glibc's counts: a serving daemon holds megabytes
    // (sled's caches, the runtime), and some of its frees stay in the arenas.
    assert!(sample(&before, "whatsd_heap_in_use_bytes", &[]) > 1_048_576.0);
    assert!(sample(&before, "whatsd_heap_free_bytes", &[]) > 0.0);

    let hook = daemon
        .put(
            "/v1/tenants/shop/webhooks/crm",
            json!({ "url": hook_url, "secret": "webhook-secret-0123456789" }),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.text());

    common::pair(&daemon, &fake, "m1", Some("shop"), "15550001111").await;
    let incoming = common::control(
        fake.control_addr(),
        "/control/messages",
        json!({ "to_phone": "15550001111", "from_phone": "15550003333", "text": "hi" }),
    )
    .await;
    assert_eq!(incoming.status, 200, "{}", incoming.text());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !received
        .lock()
        .unwrap()
        .iter()
        .any(|event| event["type"] == "message.received")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook got no message.received in 30 s: {:?}",
            received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = daemon
        .post(
            "/v1/sessions/m1/messages?wait=sent",
            Some(ADMIN),
            Some(json!({ "to": "15550002222", "text": "hello" })),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text());

    // The receiver records a request before its 200 reaches the daemon,
    // which counts the delivery then: scrape until the counter catches up
    // with what the receiver recorded (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (after, posted) = loop {
        let posted = received.lock().unwrap().len() as f64;
        let after = scrape(&daemon).await;
        let delivered = sample(
            &after,
            "whatsd_webhook_deliveries_total",
            &[("outcome", "delivered")],
        ) - sample(
            &before,
            "whatsd_webhook_deliveries_total",
            &[("outcome", "delivered")],
        );
        if delivered >= posted {
            break (after, posted);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{delivered} deliveries counted, the receiver got {posted}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(delta("whatsd_pairing_attempts_total", &[]), 1.0);
    assert_eq!(delta("whatsd_pairing_successes_total", &[]), 1.0);
    assert_eq!(delta("whatsd_pairing_timeouts_total", &[]), 0.0);
    assert!(delta("whatsd_qr_codes_issued_total", &[]) >= 1.0);
    assert_eq!(delta("whatsd_messages_sent_total", &[]), 1.0);
    assert_eq!(delta("whatsd_messages_received_total", &[]), 1.0);
    assert!(posted >= 2.0, "session events and the message: {posted}");
    let delivered = delta(
        "whatsd_webhook_deliveries_total",
        &[("outcome", "delivered")],
    );
    assert_eq!(
        delta(
            "whatsd_webhook_deliveries_total",
            &[("outcome", "dead_lettered")]
        ),
        0.0
    );
    assert!(delta("whatsd_webhook_delivery_duration_seconds_count", &[]) >= delivered);
    for to in ["starting", "qr", "paired", "connected"] {
        assert!(
            delta("whatsd_session_transitions_total", &[("to", to)]) >= 1.0,
            "a transition to {to}"
        );
    }
    assert_eq!(
        sample(&after, "whatsd_sessions", &[("state", "connected")]),
        1.0
    );
    assert!(sample(&after, "whatsd_store_size_bytes", &[]) > 0.0);

    let status = daemon.terminate().await;
    assert!(status.success(), "{status:?}");
}
