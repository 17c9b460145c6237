//! Process-wide metrics, rendered in the Prometheus text exposition format
//! (version 0.0.4) at `GET /metrics`.
//!
//! Counters are plain atomics bumped through the free functions below, from
//! wherever the event happens; gauges are read when scraped (sessions by
//! state from the supervisor, the outbox from a registered source, the
//! store's size, the process's memory and, from a source the binary
//! installs, the heap as the allocator counts it). Labels only ever take values from
//! fixed sets (`&'static str`): no per-session or per-message labels. The
//! rate-limit buckets, kept per session, are exported by bucket: how many
//! sessions have an empty one and how full the emptiest is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use crate::session::limits::{Bucket, Levels, Limits};
use crate::session::{SessionState, Supervisor};
use crate::store::Store;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the webhook delivery latency buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds (seconds) of the store's group-commit flush buckets: a sled
/// flush plus one `fdatasync`, sub-millisecond on a fast disk, seconds on a
/// stalled one.
pub const FLUSH_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Outbox gauges: (pending deliveries, age in seconds of the oldest one).
pub type OutboxSource = Arc<dyn Fn() -> (u64, f64) + Send + Sync>;

/// What the allocator holds, as glibc's `mallinfo2` counts it: the bytes
/// of live allocations and the free space kept in its arenas. Their sum
/// minus what was given back is most of the resident memory; a growing
/// `free` with a flat `in_use` is the allocator keeping space, not the
/// daemon keeping data (docs/TROUBLESHOOTING.md, "Memory growing").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapFigures {
    /// Bytes in allocated chunks, mmapped ones included.
    pub in_use: u64,
    /// Bytes in free chunks of the arenas, resident or already given back.
    pub free: u64,
}

static HEAP_SOURCE: OnceLock<fn() -> HeapFigures> = OnceLock::new();

/// Installs where the heap gauges come from (the binary's `mallinfo2`
/// call: this library forbids `unsafe`). The first one wins; returns
/// whether it was this one. Called at scrape time.
pub fn set_heap_source(source: fn() -> HeapFigures) -> bool {
    HEAP_SOURCE.set(source).is_ok()
}

/// The process's memory at scrape time.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    resident: Option<u64>,
    heap: Option<HeapFigures>,
}

impl Memory {
    fn now() -> Self {
        Self {
            resident: resident_memory_bytes(),
            heap: HEAP_SOURCE.get().map(|figures| figures()),
        }
    }
}

/// Cumulative buckets over fixed upper bounds, as Prometheus reads them.
struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

struct Registry {
    transitions: Mutex<BTreeMap<&'static str, u64>>,
    webhook_deliveries: Mutex<BTreeMap<&'static str, u64>>,
    pairing_attempts: AtomicU64,
    pairing_successes: AtomicU64,
    pairing_timeouts: AtomicU64,
    qr_issued: AtomicU64,
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
    dead_letters_expired: AtomicU64,
    latency: Histogram<{ LATENCY_BUCKETS.len() }>,
    store_flush: Histogram<{ FLUSH_BUCKETS.len() }>,
    outbox: RwLock<Option<OutboxSource>>,
}

static REGISTRY: Registry = Registry {
    transitions: Mutex::new(BTreeMap::new()),
    webhook_deliveries: Mutex::new(BTreeMap::new()),
    pairing_attempts: AtomicU64::new(0),
    pairing_successes: AtomicU64::new(0),
    pairing_timeouts: AtomicU64::new(0),
    qr_issued: AtomicU64::new(0),
    messages_received: AtomicU64::new(0),
    messages_sent: AtomicU64::new(0),
    dead_letters_expired: AtomicU64::new(0),
    latency: Histogram::new(&LATENCY_BUCKETS),
    store_flush: Histogram::new(&FLUSH_BUCKETS),
    outbox: RwLock::new(None),
};

/// Each session's rate-limit buckets as its actor last wrote them (the
/// levels are computed at scrape time: buckets refill with no one looking).
static BUCKETS: Mutex<BTreeMap<String, (Limits, Levels)>> = Mutex::new(BTreeMap::new());

/// Rate-limit refusals and waits, by (bucket, outcome).
static RATE_LIMITED: Mutex<BTreeMap<(&'static str, &'static str), u64>> =
    Mutex::new(BTreeMap::new());

/// Outcomes of a rate-limited request: refused (429) or delayed (a queued
/// send waits for its token).
pub const RATE_LIMIT_OUTCOMES: [&str; 2] = ["refused", "delayed"];

/// Session `id`'s limits and buckets now.
pub fn set_session_buckets(id: &str, limits: &Limits, levels: &Levels) {
    let mut map = BUCKETS.lock().unwrap_or_else(|p| p.into_inner());
    map.insert(id.to_owned(), (*limits, levels.clone()));
}

/// Session `id` is gone (or its buckets started again).
pub fn forget_session_buckets(id: &str) {
    BUCKETS.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
}

/// A request hit an empty bucket (`outcome`: `refused` or `delayed`).
pub fn inc_rate_limited(bucket: &'static str, outcome: &'static str) {
    let mut map = RATE_LIMITED.lock().unwrap_or_else(|p| p.into_inner());
    *map.entry((bucket, outcome)).or_insert(0) += 1;
}

fn render_rate_limits(out: &mut String) {
    let now = crate::session::limits::now_ms();
    let mut exhausted: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut lowest: BTreeMap<&'static str, f64> = BTreeMap::new();
    {
        let map = BUCKETS.lock().unwrap_or_else(|p| p.into_inner());
        for (limits, levels) in map.values() {
            for bucket in Bucket::ALL {
                let limit = limits.get(bucket);
                let ratio = levels.ratio(bucket, limit, now);
                if levels.remaining(bucket, limit, now) == 0 {
                    *exhausted.entry(bucket.as_str()).or_insert(0) += 1;
                }
                let low = lowest.entry(bucket.as_str()).or_insert(1.0);
                *low = low.min(ratio);
            }
        }
    }
    header(
        out,
        "whatsd_rate_limit_exhausted_sessions",
        "gauge",
        "Sessions whose rate-limit bucket is empty, by bucket.",
    );
    for bucket in Bucket::ALL {
        let n = exhausted.get(bucket.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "whatsd_rate_limit_exhausted_sessions{{bucket=\"{}\"}} {n}",
            bucket.as_str()
        );
    }
    header(
        out,
        "whatsd_rate_limit_lowest_level_ratio",
        "gauge",
        "How full the emptiest session's bucket is (0 empty, 1 full), by bucket.",
    );
    for bucket in Bucket::ALL {
        let v = lowest.get(bucket.as_str()).copied().unwrap_or(1.0);
        let _ = writeln!(
            out,
            "whatsd_rate_limit_lowest_level_ratio{{bucket=\"{}\"}} {v}",
            bucket.as_str()
        );
    }
    header(
        out,
        "whatsd_rate_limited_total",
        "counter",
        "Requests that found a rate-limit bucket empty, by bucket and outcome (refused: 429; delayed: a queued send waited).",
    );
    let counts = RATE_LIMITED.lock().unwrap_or_else(|p| p.into_inner());
    for bucket in Bucket::ALL {
        for outcome in RATE_LIMIT_OUTCOMES {
            let n = counts
                .get(&(bucket.as_str(), outcome))
                .copied()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "whatsd_rate_limited_total{{bucket=\"{}\",outcome=\"{outcome}\"}} {n}",
                bucket.as_str()
            );
        }
    }
}

/// Webhook delivery outcomes, always exported (0 until they happen).
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "retried", "dead_lettered"];

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    *map.entry(key).or_insert(0) += 1;
}

/// A session entered state `to` (`SessionState::as_str`).
pub fn inc_transition(to: &'static str) {
    bump(&REGISTRY.transitions, to);
}

/// A session began pairing (QR or phone-number code).
pub fn inc_pairing_attempt() {
    REGISTRY.pairing_attempts.fetch_add(1, Ordering::Relaxed);
}

/// A phone linked a pairing session.
pub fn inc_pairing_success() {
    REGISTRY.pairing_successes.fetch_add(1, Ordering::Relaxed);
}

/// A pairing gave up at the activation timeout.
pub fn inc_pairing_timeout() {
    REGISTRY.pairing_timeouts.fetch_add(1, Ordering::Relaxed);
}

/// A pairing QR code was shown.
pub fn inc_qr_issued() {
    REGISTRY.qr_issued.fetch_add(1, Ordering::Relaxed);
}

/// A message arrived from WhatsApp.
pub fn inc_message_received() {
    REGISTRY.messages_received.fetch_add(1, Ordering::Relaxed);
}

/// WhatsApp accepted a message we sent.
pub fn inc_message_sent() {
    REGISTRY.messages_sent.fetch_add(1, Ordering::Relaxed);
}

/// Dead letters deleted because they outlived `webhooks.dead_letter_retention`.
pub fn dead_letters_expired(n: u64) {
    REGISTRY
        .dead_letters_expired
        .fetch_add(n, Ordering::Relaxed);
}

/// What [`dead_letters_expired`] counted so far.
pub fn dead_letters_expired_total() -> u64 {
    REGISTRY.dead_letters_expired.load(Ordering::Relaxed)
}

/// One webhook delivery attempt ended with `outcome` (`delivered`,
/// `retried` or `dead_lettered`) after `latency`.
pub fn webhook_delivery(outcome: &'static str, latency: Duration) {
    bump(&REGISTRY.webhook_deliveries, outcome);
    REGISTRY.latency.observe(latency);
}

/// One group commit of the store (sled flush and `fdatasync`) took `took`,
/// whether it succeeded or not.
pub fn store_flush(took: Duration) {
    REGISTRY.store_flush.observe(took);
}

/// Registers where the outbox gauges come from (the webhook dispatcher);
/// replaces an earlier source. Called at scrape time, so keep it cheap.
pub fn set_outbox_source(source: OutboxSource) {
    *REGISTRY.outbox.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
}

/// The whole exposition.
pub async fn render(supervisor: &Supervisor, store: &Store) -> String {
    let mut by_state: BTreeMap<&'static str, u64> =
        SessionState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for session in supervisor.list().await {
        *by_state.entry(session.state.as_str()).or_insert(0) += 1;
    }
    let store_size = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.size_on_disk())
            .await
            .ok()
            .and_then(Result::ok)
    };
    let usage = store_usage(store).await;
    let mut out = String::with_capacity(4096);
    render_into(
        &mut out,
        &by_state,
        store_size,
        usage.as_deref(),
        Memory::now(),
    );
    out
}

/// How old the per-tree figures may be before a scrape reads the store
/// again: a full scan (chunked, see [`Store::tree_usage`]), so at most
/// about once a minute however often Prometheus scrapes.
const STORE_USAGE_MAX_AGE: Duration = Duration::from_secs(50);

type UsageFigures = Arc<BTreeMap<String, crate::store::TreeUsage>>;

/// The per-tree figures, read again when older than
/// [`STORE_USAGE_MAX_AGE`]; one scan at a time, concurrent scrapes wait for
/// it. `None` if the scan failed.
async fn store_usage(store: &Store) -> Option<UsageFigures> {
    static LAST: tokio::sync::Mutex<Option<(std::time::Instant, UsageFigures)>> =
        tokio::sync::Mutex::const_new(None);
    let mut last = LAST.lock().await;
    if let Some((at, figures)) = last.as_ref()
        && at.elapsed() < STORE_USAGE_MAX_AGE
    {
        return Some(Arc::clone(figures));
    }
    let scanned = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.tree_usage())
            .await
            .ok()
            .and_then(Result::ok)
    };
    match scanned {
        Some(figures) => {
            let figures = Arc::new(figures);
            *last = Some((std::time::Instant::now(), Arc::clone(&figures)));
            Some(figures)
        }
        None => None,
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
}

fn render_into(
    out: &mut String,
    sessions: &BTreeMap<&'static str, u64>,
    store_size: Option<u64>,
    usage: Option<&BTreeMap<String, crate::store::TreeUsage>>,
    memory: Memory,
) {
    let r = &REGISTRY;
    let _ = writeln!(out, "# HELP whatsd_build_info The running version.");
    let _ = writeln!(out, "# TYPE whatsd_build_info gauge");
    let _ = writeln!(
        out,
        "whatsd_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    render_rate_limits(out);

    header(out, "whatsd_sessions", "gauge", "Sessions by state.");
    for (state, n) in sessions {
        let _ = writeln!(out, "whatsd_sessions{{state=\"{state}\"}} {n}");
    }

    header(
        out,
        "whatsd_session_transitions_total",
        "counter",
        "State transitions since start, by the state entered.",
    );
    let transitions = r.transitions.lock().unwrap_or_else(|p| p.into_inner());
    for state in SessionState::ALL {
        let n = transitions.get(state.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "whatsd_session_transitions_total{{to=\"{}\"}} {n}",
            state.as_str()
        );
    }
    drop(transitions);

    counter(
        out,
        "whatsd_pairing_attempts_total",
        "Pairings begun.",
        &r.pairing_attempts,
    );
    counter(
        out,
        "whatsd_pairing_successes_total",
        "Pairings the phone completed.",
        &r.pairing_successes,
    );
    counter(
        out,
        "whatsd_pairing_timeouts_total",
        "Pairings abandoned at the activation timeout.",
        &r.pairing_timeouts,
    );
    counter(
        out,
        "whatsd_qr_codes_issued_total",
        "Pairing QR codes shown.",
        &r.qr_issued,
    );
    counter(
        out,
        "whatsd_messages_received_total",
        "Messages received from WhatsApp.",
        &r.messages_received,
    );
    counter(
        out,
        "whatsd_messages_sent_total",
        "Messages WhatsApp accepted from us.",
        &r.messages_sent,
    );
    counter(
        out,
        "whatsd_webhook_dead_letters_expired_total",
        "Dead letters deleted at the end of their retention.",
        &r.dead_letters_expired,
    );

    header(
        out,
        "whatsd_webhook_deliveries_total",
        "counter",
        "Webhook delivery attempts by outcome.",
    );
    let deliveries = r
        .webhook_deliveries
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut outcomes: Vec<&'static str> = WEBHOOK_OUTCOMES.to_vec();
    outcomes.extend(
        deliveries
            .keys()
            .copied()
            .filter(|k| !WEBHOOK_OUTCOMES.contains(k)),
    );
    for outcome in outcomes {
        let n = deliveries.get(outcome).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "whatsd_webhook_deliveries_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    drop(deliveries);

    r.latency.render(
        out,
        "whatsd_webhook_delivery_duration_seconds",
        "Time from a delivery attempt's start to its answer.",
    );
    r.store_flush.render(
        out,
        "whatsd_store_flush_duration_seconds",
        "Time a group commit of the store (sled flush and fdatasync) took.",
    );

    let source = r.outbox.read().unwrap_or_else(|p| p.into_inner()).clone();
    let (depth, oldest) = source.map_or((0, 0.0), |f| f());
    header(
        out,
        "whatsd_webhook_outbox_depth",
        "gauge",
        "Webhook deliveries waiting in the outbox.",
    );
    let _ = writeln!(out, "whatsd_webhook_outbox_depth {depth}");
    header(
        out,
        "whatsd_webhook_outbox_oldest_age_seconds",
        "gauge",
        "Age of the oldest pending webhook delivery (0 when none).",
    );
    let _ = writeln!(out, "whatsd_webhook_outbox_oldest_age_seconds {oldest}");
    header(
        out,
        "whatsd_library_tasks",
        "gauge",
        "Tasks whatsapp-rust runs for all sessions (they end with their session).",
    );
    let _ = writeln!(
        out,
        "whatsd_library_tasks {}",
        crate::wa::live_library_tasks()
    );

    if let Some(bytes) = store_size {
        header(
            out,
            "whatsd_store_size_bytes",
            "gauge",
            "Size of the store on disk.",
        );
        let _ = writeln!(out, "whatsd_store_size_bytes {bytes}");
    }
    if let Some(usage) = usage {
        header(
            out,
            "whatsd_store_tree_entries",
            "gauge",
            "Live entries per store tree (device keyspaces summed by row kind), read at most once a minute.",
        );
        for (tree, figures) in usage {
            let _ = writeln!(
                out,
                "whatsd_store_tree_entries{{tree=\"{tree}\"}} {}",
                figures.entries
            );
        }
        header(
            out,
            "whatsd_store_tree_bytes",
            "gauge",
            "Live key and stored value bytes per store tree (device keyspaces summed by row kind); the rest of the size on disk is space sled has not reclaimed.",
        );
        for (tree, figures) in usage {
            let _ = writeln!(
                out,
                "whatsd_store_tree_bytes{{tree=\"{tree}\"}} {}",
                figures.bytes
            );
        }
    }
    if let Some(bytes) = memory.resident {
        header(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the daemon process.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {bytes}");
    }
    if let Some(heap) = memory.heap {
        header(
            out,
            "whatsd_heap_in_use_bytes",
            "gauge",
            "Bytes the daemon's allocations hold (glibc mallinfo2: uordblks + hblkhd).",
        );
        let _ = writeln!(out, "whatsd_heap_in_use_bytes {}", heap.in_use);
        header(
            out,
            "whatsd_heap_free_bytes",
            "gauge",
            "Free space the allocator keeps in its arenas (glibc mallinfo2: fordblks), resident or given back; the 10-minute release returns its whole pages.",
        );
        let _ = writeln!(out, "whatsd_heap_free_bytes {}", heap.free);
    }
}

/// `VmRSS` from `/proc/self/status` (Linux), in bytes.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_proc_status() {
        assert_eq!(
            parse_vm_rss("Name:\twhatsd\nVmRSS:\t   12345 kB\nThreads: 3\n"),
            Some(12345 * 1024)
        );
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        #[cfg(target_os = "linux")]
        assert!(resident_memory_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&FLUSH_BUCKETS);
        for ms in [3, 2_000, 10_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "X.");
        for line in [
            "# TYPE x_seconds histogram",
            "x_seconds_bucket{le=\"0.0025\"} 0",
            "x_seconds_bucket{le=\"0.005\"} 1",
            "x_seconds_bucket{le=\"1\"} 1",
            "x_seconds_bucket{le=\"2.5\"} 2",
            "x_seconds_bucket{le=\"+Inf\"} 3",
            "x_seconds_sum 12.003",
            "x_seconds_count 3",
        ] {
            assert!(out.lines().any(|l| l == line), "{line}:\n{out}");
        }
    }

    /// The store's group commit feeds the flush histogram.
    #[tokio::test]
    async fn store_flushes_are_timed() {
        let count = || REGISTRY.store_flush.count.load(Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::store::MasterKey::from_bytes([5; 32])).unwrap();
        let before = count();
        store.flush().await.unwrap();
        assert!(count() > before);
        let mut out = String::new();
        render_into(&mut out, &BTreeMap::new(), None, None, Memory::default());
        assert!(
            out.lines()
                .any(|l| l.starts_with("whatsd_store_flush_duration_seconds_count ")),
            "{out}"
        );
    }

    #[test]
    fn exposition_has_every_family_once() {
        webhook_delivery("delivered", Duration::from_millis(30));
        set_outbox_source(Arc::new(|| (3, 1.5)));
        let mut out = String::new();
        let sessions = SessionState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let usage = BTreeMap::from([(
            "send_status".to_string(),
            crate::store::TreeUsage {
                entries: 2,
                bytes: 300,
            },
        )]);
        let memory = Memory {
            resident: Some(1 << 20),
            heap: Some(HeapFigures {
                in_use: 600_000,
                free: 70_000,
            }),
        };
        render_into(&mut out, &sessions, Some(4096), Some(&usage), memory);
        for family in [
            "whatsd_sessions",
            "whatsd_session_transitions_total",
            "whatsd_webhook_deliveries_total",
            "whatsd_webhook_delivery_duration_seconds",
            "whatsd_store_flush_duration_seconds",
            "whatsd_webhook_outbox_depth",
            "whatsd_store_size_bytes",
            "whatsd_store_tree_entries",
            "whatsd_store_tree_bytes",
            "process_resident_memory_bytes",
            "whatsd_heap_in_use_bytes",
            "whatsd_heap_free_bytes",
            "whatsd_rate_limit_exhausted_sessions",
            "whatsd_rate_limit_lowest_level_ratio",
            "whatsd_rate_limited_total",
        ] {
            let types = out
                .lines()
                .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
                .count();
            assert_eq!(types, 1, "{family}:\n{out}");
        }
        assert!(out.contains("whatsd_webhook_outbox_depth 3\n"), "{out}");
        assert!(out.contains("whatsd_heap_in_use_bytes 600000\n"), "{out}");
        assert!(out.contains("whatsd_heap_free_bytes 70000\n"), "{out}");
        assert!(
            out.contains("whatsd_store_tree_bytes{tree=\"send_status\"} 300\n"),
            "{out}"
        );
        assert!(
            out.contains("whatsd_webhook_delivery_duration_seconds_bucket{le=\"0.05\"} "),
            "{out}"
        );
        assert!(out.contains("whatsd_sessions{state=\"connected\"} 0\n"));
    }

    #[test]
    fn rate_limits_are_exported_by_bucket_not_by_session() {
        let limits = Limits {
            sends_per_minute: 1,
            ..Limits::default()
        };
        let mut levels = Levels::default();
        let now = crate::session::limits::now_ms();
        levels.take(&Bucket::SENDS, &limits, now).unwrap();
        set_session_buckets("metrics-test-session", &limits, &levels);
        inc_rate_limited("sends_per_minute", "refused");
        let mut out = String::new();
        render_rate_limits(&mut out);
        forget_session_buckets("metrics-test-session");
        assert!(!out.contains("metrics-test-session"), "{out}");
        assert!(
            out.contains("whatsd_rate_limit_lowest_level_ratio{bucket=\"sends_per_minute\"} 0\n"),
            "{out}"
        );
        assert!(
            !out.contains(
                "whatsd_rate_limited_total{bucket=\"sends_per_minute\",outcome=\"refused\"} 0\n"
            ),
            "{out}"
        );
    }
}
