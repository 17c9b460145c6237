//! Soak: a real `whatsd serve` process with 200 paired sessions under load
//! and churn for a long time, against an in-process fakewa and webhook
//! receiver on loopback.
//!
//! `cargo bench --bench soak` (not in CI). Knobs (not `WHATSD_…`: the
//! daemon refuses unknown `WHATSD_` variables):
//!
//! | variable | default | |
//! |---|---|---|
//! | `SOAK_MINUTES` | 20 | length of the loaded run |
//! | `SOAK_SESSIONS` | 200 | paired sessions |
//! | `SOAK_RATE_IN` | 50 | messages/s from fakewa contacts to the sessions |
//! | `SOAK_RATE_OUT` | 5 | sends/s through `POST /v1/sessions/{id}/messages` |
//! | `SOAK_KILL_EVERY_MIN` | 10 | `kill -9` of the daemon, restarted after `SOAK_DOWN_SECS` (10); 0: never |
//! | `SOAK_RECEIVER_OUTAGE_EVERY_MIN` | 7 | the receiver answers 503 for `SOAK_RECEIVER_OUTAGE_SECS` (30); 0: never |
//! | `SOAK_DROP_EVERY_MIN` | 1 | fakewa closes `SOAK_DROPS` (5) sessions' connections; 0: never |
//! | `SOAK_UNLINK_EVERY_MIN` | 5 | one phone unlinks its device, the session is paired again; 0: never |
//! | `SOAK_SAMPLE_SECS` | 60 | sampling period |
//! | `SOAK_CSV` | `target/soak.csv` | the samples; the per-tree figures go next to it, in `<stem>-trees.csv` |
//!
//! Every sample prints and writes to the CSV: the daemon's RSS, open fds and
//! threads (from `/proc/<pid>`), the WhatsApp library's live tasks, the
//! webhook outbox depth and the store size (from `/metrics`), the data
//! dir's size on disk (its blocks, as `du`), the live bytes in the store
//! (keys and values, summed over its trees), the heap as glibc counts it
//! (in use and kept free, `whatsd_heap_*`), and the messages so far; the
//! live entries and bytes of every tree (device keyspaces summed by row
//! kind, from `whatsd_store_tree_*`) go to a second CSV, one row per tree
//! and sample, and the trees that grew are printed at the end.
//!
//! Pass criteria, checked at the end: every message fakewa accepted for a
//! session arrived at the receiver at least once (counted by message id);
//! the slopes of RSS (and of the heap in use and free), fds and disk after
//! warm-up (least squares over the samples after the first 20 % of the run)
//! are printed per hour. Exits 1 when a message is lost. fakewa queues
//! messages for a device that is offline (a daemon outage) and drops its
//! queue when the phone unlinks the device: before an unlink the generator
//! leaves that phone alone until its queue is empty (every message it got
//! acknowledged), so nothing counted is dropped by fakewa itself.

#[path = "../tests/common/mod.rs"]
mod common;

mod stats;
use stats::{disk_bytes, loadavg};

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::{ADMIN, Daemon, Options};
use serde_json::{Value, json};
use tokio::sync::watch;

const CONTACTS: usize = 4;
const SECRET: &str = "soak-webhook-secret-0123456789";

struct Knobs {
    minutes: f64,
    sessions: usize,
    rate_in: f64,
    rate_out: f64,
    kill_every: f64,
    down_secs: u64,
    outage_every: f64,
    outage_secs: u64,
    drop_every: f64,
    drops: usize,
    unlink_every: f64,
    sample_secs: u64,
    csv: PathBuf,
}

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Knobs {
    fn from_env() -> Self {
        Knobs {
            minutes: knob("SOAK_MINUTES", 20.0),
            sessions: knob("SOAK_SESSIONS", 200),
            rate_in: knob("SOAK_RATE_IN", 50.0),
            rate_out: knob("SOAK_RATE_OUT", 5.0),
            kill_every: knob("SOAK_KILL_EVERY_MIN", 10.0),
            down_secs: knob("SOAK_DOWN_SECS", 10),
            outage_every: knob("SOAK_RECEIVER_OUTAGE_EVERY_MIN", 7.0),
            outage_secs: knob("SOAK_RECEIVER_OUTAGE_SECS", 30),
            drop_every: knob("SOAK_DROP_EVERY_MIN", 1.0),
            drops: knob("SOAK_DROPS", 5),
            unlink_every: knob("SOAK_UNLINK_EVERY_MIN", 5.0),
            sample_secs: knob("SOAK_SAMPLE_SECS", 60),
            csv: std::env::var_os("SOAK_CSV")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak.csv")),
        }
    }
}

fn phone(i: usize) -> String {
    format!("1555{i:07}")
}

fn contact(i: usize, c: usize) -> String {
    format!("1777{i:04}{c:03}")
}

fn session_id(i: usize) -> String {
    format!("soak-{i}")
}

// ---- the webhook receiver -------------------------------------------------

#[derive(Default)]
struct Receiver {
    /// `message.received` POSTs by message id.
    seen: Mutex<HashMap<String, u32>>,
    posts: AtomicU64,
    refused: AtomicU64,
    /// Answers 503 while set.
    down: AtomicBool,
}

async fn hook(State(r): State<Arc<Receiver>>, Json(event): Json<Value>) -> StatusCode {
    if r.down.load(Ordering::SeqCst) {
        r.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.posts.fetch_add(1, Ordering::Relaxed);
    if event["type"] == "message.received"
        && let Some(id) = event["data"]["message_id"].as_str()
    {
        *lock(&r.seen).entry(id.to_owned()).or_default() += 1;
    }
    StatusCode::OK
}

async fn serve_receiver(receiver: Arc<Receiver>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

// ---- shared state ---------------------------------------------------------

/// What the load, the churn and the sampler share.
struct Soak {
    fake: fakewa::FakeWa,
    receiver: Arc<Receiver>,
    http: reqwest::Client,
    /// The daemon's address while it runs (its port changes on restart).
    addr: watch::Sender<Option<SocketAddr>>,
    /// The daemon's pid while it runs, 0 while it is down.
    pid: AtomicU32,
    /// Phones the generators leave alone (an unlink and re-pair under way).
    paused: Vec<AtomicBool>,
    /// Message ids fakewa accepted for a session.
    expected: Mutex<HashSet<String>>,
    /// Texts of the sends the daemon accepted.
    sends: Mutex<HashSet<String>>,
    send_refused: AtomicU64,
    churn: Mutex<Churn>,
    stop: AtomicBool,
}

#[derive(Default, Clone)]
struct Churn {
    kills: u32,
    outages: u32,
    drops: u32,
    unlinks: u32,
    unlinks_skipped: u32,
    repair_failures: u32,
    /// Seconds from restart until every session was connected again.
    reconnect_secs: Vec<f64>,
}

impl Soak {
    fn addr(&self) -> Option<SocketAddr> {
        *self.addr.borrow()
    }

    fn churn(&self) -> std::sync::MutexGuard<'_, Churn> {
        lock(&self.churn)
    }

    /// An API request as the admin; `None` when the daemon is unreachable.
    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let addr = self.addr()?;
        let mut request = self
            .http
            .request(method, format!("http://{addr}{path}"))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(20));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.ok()?;
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn metrics(&self) -> HashMap<String, f64> {
        let Some(addr) = self.addr() else {
            return HashMap::new();
        };
        let text = match self
            .http
            .get(format!("http://{addr}/metrics"))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(20))
            .send()
            .await
        {
            Ok(r) => String::from_utf8_lossy(&r.bytes().await.unwrap_or_default()).into_owned(),
            Err(_) => return HashMap::new(),
        };
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// Polls session `id` until `done(state)`, bounded.
    async fn wait_state(&self, id: &str, within: Duration, done: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some((200, info)) = self
                .api(reqwest::Method::GET, &format!("/v1/sessions/{id}"), None)
                .await
                && done(info["state"].as_str().unwrap_or_default())
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Starts session `i` (created or logged out) and scans its QR as its
    /// phone; true once it is connected.
    async fn pair(&self, i: usize) -> bool {
        let id = session_id(i);
        match self
            .api(
                reqwest::Method::POST,
                &format!("/v1/sessions/{id}/start"),
                None,
            )
            .await
        {
            Some((200, _)) => {}
            other => {
                eprintln!("soak: start {id}: {other:?}");
                return false;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let code = loop {
            if let Some((200, qr)) = self
                .api(
                    reqwest::Method::GET,
                    &format!("/v1/sessions/{id}/qr?format=json"),
                    None,
                )
                .await
                && let Some(code) = qr["code"].as_str()
            {
                break code.to_owned();
            }
            if Instant::now() > deadline {
                eprintln!("soak: {id} showed no QR within 60 s");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if let Err(e) = self.fake.server.scan(&code, Some(&phone(i))).await {
            eprintln!("soak: scan for {id}: {e}");
            return false;
        }
        self.wait_state(&id, Duration::from_secs(120), |s| s == "connected")
            .await
    }

    /// Sessions connected that logged in at or after `since_ms`.
    async fn connected_since(&self, since_ms: i64) -> usize {
        let Some((200, list)) = self.api(reqwest::Method::GET, "/v1/sessions", None).await else {
            return 0;
        };
        list["sessions"]
            .as_array()
            .map(|sessions| {
                sessions
                    .iter()
                    .filter(|s| {
                        s["state"] == "connected"
                            && s["last_connected_at_ms"].as_i64().unwrap_or(0) >= since_ms
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

// ---- load -----------------------------------------------------------------

/// Calls `each(i, k)` `rate` times a second until the soak stops: the
/// `k`-th tick, for session `i` = `k` mod sessions (round robin), skipping
/// paused sessions.
async fn paced(soak: &Soak, rate: f64, mut each: impl FnMut(usize, usize)) {
    let n = soak.paused.len();
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k = 0usize;
    while !soak.stop.load(Ordering::SeqCst) {
        interval.tick().await;
        let i = k % n;
        k += 1;
        if !soak.paused[i].load(Ordering::SeqCst) {
            each(i, k);
        }
    }
}

/// `rate` messages/s from the contacts to the sessions.
async fn inbound(soak: Arc<Soak>, rate: f64) {
    let n = soak.paused.len();
    paced(&soak, rate, |i, k| {
        let c = ((k - 1) / n) % CONTACTS;
        match soak.fake.server.send_message(
            &phone(i),
            &contact(i, c),
            &format!("soak in {k}"),
            fakewa::MessageKind::Dm,
        ) {
            Ok(id) => {
                lock(&soak.expected).insert(id);
            }
            Err(e) => eprintln!("soak: fakewa refused a message to {}: {e}", phone(i)),
        }
    })
    .await;
}

/// `rate` sends/s through the API.
async fn outbound(soak: Arc<Soak>, rate: f64) {
    paced(&soak, rate, |i, k| {
        let text = format!("soak out {k}");
        let body = json!({ "to": contact(i, k % CONTACTS), "text": text });
        // One at a time would let a slow answer halve the rate.
        let soak = Arc::clone(&soak);
        tokio::spawn(async move {
            match soak
                .api(
                    reqwest::Method::POST,
                    &format!("/v1/sessions/{}/messages", session_id(i)),
                    Some(body),
                )
                .await
            {
                Some((200 | 202, _)) => {
                    lock(&soak.sends).insert(text);
                }
                _ => {
                    soak.send_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    })
    .await;
}

// ---- churn ----------------------------------------------------------------

/// When each kind of churn is next due.
struct Schedule {
    every: Duration,
    next: Option<Instant>,
}

impl Schedule {
    /// Every `minutes` (0: never), the first one `offset` into the period.
    fn new(start: Instant, minutes: f64, offset: f64) -> Self {
        let every = Duration::from_secs_f64(minutes * 60.0);
        Schedule {
            every,
            next: (minutes > 0.0).then(|| start + every.mul_f64(offset)),
        }
    }

    fn due(&mut self) -> bool {
        match self.next {
            Some(at) if Instant::now() >= at => {
                self.next = Some(at + self.every);
                true
            }
            _ => false,
        }
    }
}

/// One churn action at a time, so a re-pair never meets a restart.
async fn churn(soak: Arc<Soak>, mut daemon: Daemon, knobs: &Knobs, until: Instant) -> Daemon {
    let start = Instant::now();
    let mut kill = Schedule::new(start, knobs.kill_every, 1.0);
    let mut outage = Schedule::new(start, knobs.outage_every, 0.5);
    let mut drop = Schedule::new(start, knobs.drop_every, 0.25);
    let mut unlink = Schedule::new(start, knobs.unlink_every, 0.8);
    let n = soak.paused.len();
    let mut victim = 0usize;
    let mut next_victim = || {
        // A stride coprime with most session counts walks all of them.
        victim = (victim + 37) % n;
        victim
    };
    while Instant::now() < until {
        if kill.due() {
            kill_and_restart(&soak, &mut daemon, knobs.down_secs).await;
        }
        if outage.due() {
            let receiver = Arc::clone(&soak.receiver);
            let secs = knobs.outage_secs;
            receiver.down.store(true, Ordering::SeqCst);
            soak.churn().outages += 1;
            println!("churn: receiver answers 503 for {secs} s");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                receiver.down.store(false, Ordering::SeqCst);
            });
        }
        if drop.due() {
            let mut dropped = 0;
            for _ in 0..knobs.drops {
                let i = next_victim();
                if soak
                    .fake
                    .server
                    .fault(&phone(i), fakewa::Fault::Drop)
                    .is_ok()
                {
                    dropped += 1;
                }
            }
            soak.churn().drops += dropped;
            println!("churn: fakewa dropped {dropped} sessions' connections");
        }
        if unlink.due() {
            unlink_and_repair(&soak, next_victim()).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    daemon
}

async fn kill_and_restart(soak: &Soak, daemon: &mut Daemon, down_secs: u64) {
    let pid = daemon.child.as_ref().and_then(|c| c.id());
    soak.addr.send_replace(None);
    soak.pid.store(0, Ordering::SeqCst);
    daemon.kill().await;
    println!("churn: kill -9 of the daemon (pid {pid:?}); down for {down_secs} s");
    tokio::time::sleep(Duration::from_secs(down_secs)).await;
    let started = Instant::now();
    let restarted_ms = unix_ms();
    daemon.restart().await;
    soak.addr.send_replace(Some(daemon.addr));
    soak.pid.store(
        daemon.child.as_ref().and_then(|c| c.id()).unwrap_or(0),
        Ordering::SeqCst,
    );
    let n = soak.paused.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    // The records say `connected` from before the kill: count the sessions
    // that logged in again since the restart.
    while soak.connected_since(restarted_ms).await < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let connected = soak.connected_since(restarted_ms).await;
    println!(
        "churn: restarted (pid {:?}), {connected}/{n} connected after {secs:.1} s",
        daemon.child.as_ref().and_then(|c| c.id())
    );
    let mut churn = soak.churn();
    churn.kills += 1;
    churn.reconnect_secs.push(secs);
}

/// The phone of session `i` removes its device; the session is paired
/// again with the same phone. Skipped when the phone's queue does not
/// drain (fakewa would drop what is in it).
async fn unlink_and_repair(soak: &Soak, i: usize) {
    let p = phone(i);
    soak.paused[i].store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    let pending = || {
        soak.fake
            .server
            .devices()
            .iter()
            .filter(|d| d.phone == p && !d.removed)
            .map(|d| d.pending_messages)
            .sum::<usize>()
    };
    while pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Sends already accepted for this session would fail with it.
    let idle = pending() == 0 && soak.addr().is_some();
    if !idle {
        soak.paused[i].store(false, Ordering::SeqCst);
        soak.churn().unlinks_skipped += 1;
        println!("churn: unlink of {p} skipped (queue not drained or daemon down)");
        return;
    }
    let id = session_id(i);
    let started = Instant::now();
    let ok = soak.fake.server.unlink(&p).is_ok()
        && soak
            .wait_state(&id, Duration::from_secs(60), |s| s == "logged_out")
            .await
        && soak.pair(i).await;
    soak.paused[i].store(false, Ordering::SeqCst);
    let mut churn = soak.churn();
    if ok {
        churn.unlinks += 1;
        println!(
            "churn: {p} unlinked {id}, paired again in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        churn.repair_failures += 1;
        println!("churn: {p} unlinked {id}; pairing it again FAILED");
    }
}

// ---- samples --------------------------------------------------------------

struct Sample {
    minute: f64,
    rss_mib: f64,
    fds: f64,
    threads: f64,
    library_tasks: f64,
    outbox_depth: f64,
    store_mib: f64,
    disk_mib: f64,
    connected: f64,
    in_sent: usize,
    in_received: usize,
    out_accepted: usize,
    out_at_fakewa: usize,
    /// Live key and value bytes in the store, all trees.
    live_mib: f64,
    /// On disk (blocks, as `du`): the state database (`db`) and the
    /// history database (`history`), see `src/store/dbs.rs`.
    state_disk_mib: f64,
    history_disk_mib: f64,
    /// The heap as glibc counts it (`whatsd_heap_in_use_bytes`,
    /// `whatsd_heap_free_bytes`): live allocations, and free space the
    /// allocator keeps. RSS minus the first is what the second, code and
    /// stacks take.
    heap_in_use_mib: f64,
    heap_free_mib: f64,
    /// Tree → (live entries, live bytes), from `whatsd_store_tree_*`.
    trees: std::collections::BTreeMap<String, (f64, f64)>,
}

const CSV_HEADER: &str = "minute,rss_mib,fds,threads,library_tasks,outbox_depth,store_mib,disk_mib,connected,in_sent,in_received,out_accepted,out_at_fakewa,live_mib,state_disk_mib,history_disk_mib,heap_in_use_mib,heap_free_mib";
const TREES_CSV_HEADER: &str = "minute,tree,entries,bytes";

impl Sample {
    /// The fields in table order, each with its decimals.
    fn fields(&self) -> [(f64, usize); 13] {
        [
            (self.minute, 2),
            (self.rss_mib, 1),
            (self.fds, 0),
            (self.threads, 0),
            (self.library_tasks, 0),
            (self.outbox_depth, 0),
            (self.store_mib, 1),
            (self.disk_mib, 1),
            (self.connected, 0),
            (self.in_sent as f64, 0),
            (self.in_received as f64, 0),
            (self.out_accepted as f64, 0),
            (self.out_at_fakewa as f64, 0),
        ]
    }

    fn csv(&self) -> String {
        let mut row = self
            .fields()
            .iter()
            .map(|(v, decimals)| format!("{v:.decimals$}"))
            .collect::<Vec<_>>()
            .join(",");
        row.push_str(&format!(
            ",{:.1},{:.1},{:.1},{:.1},{:.1}",
            self.live_mib,
            self.state_disk_mib,
            self.history_disk_mib,
            self.heap_in_use_mib,
            self.heap_free_mib
        ));
        row
    }

    /// Rows under [`TREES_CSV_HEADER`].
    fn trees_csv(&self) -> String {
        self.trees
            .iter()
            .map(|(tree, (entries, bytes))| {
                format!("{:.2},{tree},{entries},{bytes}\n", self.minute)
            })
            .collect()
    }

    /// The trees above 1 MiB, biggest first, for the log.
    fn trees_line(&self) -> String {
        let mut big: Vec<_> = self
            .trees
            .iter()
            .filter(|(_, (_, bytes))| *bytes >= 1048576.0)
            .collect();
        big.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        let listed = big
            .iter()
            .map(|(tree, (entries, bytes))| format!("{tree} {entries:.0}/{:.1}", bytes / 1048576.0))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "       disk: state db {:.1} MiB, history db {:.1} MiB; live {:.1} MiB (entries/MiB): {listed}",
            self.state_disk_mib, self.history_disk_mib, self.live_mib
        )
    }

    /// A row under [`TABLE_HEADER`].
    fn line(&self) -> String {
        const WIDTHS: [usize; 13] = [6, 8, 5, 4, 6, 7, 8, 8, 5, 8, 8, 7, 7];
        let mut line = self
            .fields()
            .iter()
            .zip(WIDTHS)
            .map(|((v, decimals), width)| format!("{v:>width$.decimals$}"))
            .collect::<Vec<_>>()
            .join(" ");
        line.push_str(&format!(
            " {:>8.1} {:>8.1}",
            self.heap_in_use_mib, self.heap_free_mib
        ));
        line
    }
}

const TABLE_HEADER: &str = "minute  RSS MiB   fds thrd libtsk  outbox store MiB disk MiB conn.  in sent  in rcvd out acc out@fwa heap use heapfree";

/// Whether a tree of `whatsd_store_tree_*` lives in the history database
/// (src/store/dbs.rs; device rows by kind: message secrets and sent-message
/// copies).
fn history_tree(tree: &str) -> bool {
    matches!(
        tree,
        "send_queue"
            | "send_status"
            | "send_idempotency"
            | "contacts"
            | "media_refs"
            | "device/msg_secret"
            | "device/sent_message"
    )
}

/// Live MiB of the trees of one database (history or state).
fn live_mib_in(sample: &Sample, history: bool) -> f64 {
    sample
        .trees
        .iter()
        .filter(|(tree, _)| history_tree(tree) == history)
        .map(|(_, (_, bytes))| bytes)
        .sum::<f64>()
        / 1048576.0
}

/// A number from `/proc/<pid>/status`.
fn proc_status(pid: u32, field: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn open_fds(pid: u32) -> Option<f64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64)
}

async fn sample(soak: &Soak, pid: Option<u32>, data_dir: &Path, minute: f64) -> Sample {
    let metrics = soak.metrics().await;
    let metric = |name: &str| metrics.get(name).copied().unwrap_or(f64::NAN);
    let mut trees = std::collections::BTreeMap::new();
    for (name, value) in &metrics {
        let tree_of = |family: &str| {
            name.strip_prefix(family)?
                .strip_prefix("{tree=\"")?
                .strip_suffix("\"}")
                .map(str::to_owned)
        };
        if let Some(tree) = tree_of("whatsd_store_tree_entries") {
            trees.entry(tree).or_insert((f64::NAN, f64::NAN)).0 = *value;
        } else if let Some(tree) = tree_of("whatsd_store_tree_bytes") {
            trees.entry(tree).or_insert((f64::NAN, f64::NAN)).1 = *value;
        }
    }
    let live_mib = if trees.is_empty() {
        f64::NAN
    } else {
        trees.values().map(|(_, b)| b).sum::<f64>() / 1048576.0
    };
    let status = |field: &str| pid.and_then(|p| proc_status(p, field)).unwrap_or(f64::NAN);
    let out_texts: HashSet<String> = soak
        .fake
        .server
        .outbox(None)
        .into_iter()
        .filter_map(|e| e.text)
        .collect();
    let out_at_fakewa = lock(&soak.sends)
        .iter()
        .filter(|t| out_texts.contains(*t))
        .count();
    let expected = lock(&soak.expected).clone();
    let in_received = {
        let seen = lock(&soak.receiver.seen);
        expected.iter().filter(|id| seen.contains_key(*id)).count()
    };
    Sample {
        minute,
        rss_mib: status("VmRSS:") / 1024.0,
        fds: pid.and_then(open_fds).unwrap_or(f64::NAN),
        threads: status("Threads:"),
        library_tasks: metric("whatsd_library_tasks"),
        outbox_depth: metric("whatsd_webhook_outbox_depth"),
        store_mib: metric("whatsd_store_size_bytes") / 1048576.0,
        disk_mib: disk_bytes(data_dir) as f64 / 1048576.0,
        connected: metric("whatsd_sessions{state=\"connected\"}"),
        in_sent: expected.len(),
        in_received,
        out_accepted: lock(&soak.sends).len(),
        out_at_fakewa,
        live_mib,
        state_disk_mib: disk_bytes(&data_dir.join("db")) as f64 / 1048576.0,
        history_disk_mib: disk_bytes(&data_dir.join("history")) as f64 / 1048576.0,
        heap_in_use_mib: metric("whatsd_heap_in_use_bytes") / 1048576.0,
        heap_free_mib: metric("whatsd_heap_free_bytes") / 1048576.0,
        trees,
    }
}

/// Least-squares slope of `y` over `x`, skipping NaNs.
fn slope(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let points: Vec<(f64, f64)> = points.filter(|(_, y)| y.is_finite()).collect();
    let n = points.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    sxy / sxx
}

/// Samples every `sample_secs` until `until`.
async fn sampler(
    soak: Arc<Soak>,
    data_dir: PathBuf,
    knobs: &Knobs,
    start: Instant,
    until: Instant,
    csv: &mut std::fs::File,
    trees_csv: &mut std::fs::File,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    println!("{TABLE_HEADER}");
    let period = Duration::from_secs(knobs.sample_secs);
    let mut next = start + period;
    while next <= until + Duration::from_millis(10) {
        tokio::time::sleep_until(next.into()).await;
        next += period;
        let minute = start.elapsed().as_secs_f64() / 60.0;
        let pid = soak.pid.load(Ordering::SeqCst);
        let s = sample(&soak, (pid != 0).then_some(pid), &data_dir, minute).await;
        println!("{}", s.line());
        println!("{}", s.trees_line());
        let _ = writeln!(csv, "{}", s.csv());
        let _ = csv.flush();
        let _ = write!(trees_csv, "{}", s.trees_csv());
        let _ = trees_csv.flush();
        samples.push(s);
    }
    samples
}

// ---- main -----------------------------------------------------------------

fn main() {
    let knobs = Knobs::from_env();
    stats::init_tracing();
    common::raise_nofile_limit();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let lost = runtime.block_on(run(knobs));
    std::process::exit(if lost == 0 { 0 } else { 1 });
}

async fn run(knobs: Knobs) -> usize {
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let receiver = Arc::new(Receiver::default());
    let hook_url = serve_receiver(Arc::clone(&receiver)).await;
    let (dir, daemon) = Daemon::start_with(
        &fake.ws_url(),
        Options {
            env: vec![("RUST_LOG".into(), "warn".into())],
            extra_toml: format!(
                "\n[sessions]\nmax_per_tenant = {}\n\n[webhooks]\nallow_private_targets = true\n",
                knobs.sessions + 10
            ),
            ..Default::default()
        },
    )
    .await;
    let data_dir = dir.path().join("data");
    let (addr, _) = watch::channel(Some(daemon.addr));
    let n = knobs.sessions;
    let soak = Arc::new(Soak {
        fake,
        receiver,
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client"),
        addr,
        pid: AtomicU32::new(daemon.child.as_ref().and_then(|c| c.id()).unwrap_or(0)),
        paused: (0..n).map(|_| AtomicBool::new(false)).collect(),
        expected: Mutex::default(),
        sends: Mutex::default(),
        send_refused: AtomicU64::new(0),
        churn: Mutex::default(),
        stop: AtomicBool::new(false),
    });
    println!(
        "soak: {} min, {n} sessions, {} msgs/s in, {} sends/s out; kill -9 every {} min (down {} s), receiver 503 every {} min for {} s, {} drops every {} min, unlink + re-pair every {} min; samples every {} s to {}",
        knobs.minutes,
        knobs.rate_in,
        knobs.rate_out,
        knobs.kill_every,
        knobs.down_secs,
        knobs.outage_every,
        knobs.outage_secs,
        knobs.drops,
        knobs.drop_every,
        knobs.unlink_every,
        knobs.sample_secs,
        knobs.csv.display()
    );
    println!("load average at start: {}", loadavg());

    let (status, body) = soak
        .api(
            reqwest::Method::PUT,
            "/v1/tenants/default/webhooks/soak",
            Some(json!({ "url": hook_url, "secret": SECRET, "events": ["message.received"] })),
        )
        .await
        .expect("daemon answers");
    assert!(status == 200 || status == 201, "webhook: {status} {body}");

    // Pair all sessions, a few at a time.
    let started = Instant::now();
    for i in 0..n {
        let (status, body) = soak
            .api(
                reqwest::Method::POST,
                "/v1/sessions",
                Some(json!({ "id": session_id(i), "start": false })),
            )
            .await
            .expect("daemon answers");
        assert_eq!(status, 201, "create: {body}");
    }
    let mut next = 0;
    while next < n {
        let batch: Vec<_> = (next..(next + 10).min(n))
            .map(|i| {
                let soak = Arc::clone(&soak);
                tokio::spawn(async move { soak.pair(i).await })
            })
            .collect();
        next += batch.len();
        for job in batch {
            assert!(job.await.expect("pairing task"), "a session did not pair");
        }
    }
    println!(
        "paired {n} sessions in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut csv = std::fs::File::create(&knobs.csv).expect("create the CSV");
    writeln!(csv, "{CSV_HEADER}").expect("write the CSV");
    let trees_path = knobs.csv.with_file_name(format!(
        "{}-trees.csv",
        knobs
            .csv
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "soak".into())
    ));
    let mut trees_csv = std::fs::File::create(&trees_path).expect("create the trees CSV");
    writeln!(trees_csv, "{TREES_CSV_HEADER}").expect("write the trees CSV");

    // The loaded run.
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(knobs.minutes * 60.0);
    let load_in = tokio::spawn(inbound(Arc::clone(&soak), knobs.rate_in));
    let load_out = tokio::spawn(outbound(Arc::clone(&soak), knobs.rate_out));
    let (daemon, samples) = tokio::join!(
        churn(Arc::clone(&soak), daemon, &knobs, until),
        sampler(
            Arc::clone(&soak),
            data_dir.clone(),
            &knobs,
            start,
            until,
            &mut csv,
            &mut trees_csv
        )
    );
    soak.stop.store(true, Ordering::SeqCst);
    let _ = load_in.await;
    let _ = load_out.await;

    // Drain: every message accepted by fakewa reaches the receiver.
    soak.receiver.down.store(false, Ordering::SeqCst);
    let drain_started = Instant::now();
    let expected = lock(&soak.expected).clone();
    let missing = |soak: &Soak| {
        let seen = lock(&soak.receiver.seen);
        expected
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .cloned()
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while !missing(&soak).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lost = missing(&soak);
    let drain = drain_started.elapsed().as_secs_f64();
    let pid = daemon.child.as_ref().and_then(|c| c.id());
    let last = sample(&soak, pid, &data_dir, start.elapsed().as_secs_f64() / 60.0).await;
    let (duplicates, posts) = {
        let seen = lock(&soak.receiver.seen);
        (
            seen.values()
                .map(|c| (*c as u64).saturating_sub(1))
                .sum::<u64>(),
            soak.receiver.posts.load(Ordering::Relaxed),
        )
    };

    // Slopes after warm-up, per hour.
    let warm = knobs.minutes * 0.2;
    let after: Vec<&Sample> = samples.iter().filter(|s| s.minute >= warm).collect();
    let per_hour =
        |f: fn(&Sample) -> f64| slope(after.iter().copied().map(|s| (s.minute, f(s)))) * 60.0;
    let churn = soak.churn().clone();
    let mut reconnect = churn.reconnect_secs.clone();
    reconnect.sort_by(f64::total_cmp);

    println!();
    println!(
        "after {:.1} min of load (drain {drain:.1} s):",
        knobs.minutes
    );
    println!("{TABLE_HEADER}");
    println!("{}", last.line());
    println!("{}", last.trees_line());
    let _ = write!(trees_csv, "{}", last.trees_csv());
    println!(
        "messages in: {} accepted by fakewa, {} arrived at the receiver, {} lost, {} duplicate POSTs ({} POSTs, {} answered 503)",
        expected.len(),
        expected.len() - lost.len(),
        lost.len(),
        duplicates,
        posts,
        soak.receiver.refused.load(Ordering::Relaxed)
    );
    println!(
        "sends out: {} accepted by the API ({} refused or unreachable), {} reached fakewa",
        last.out_accepted,
        soak.send_refused.load(Ordering::Relaxed),
        last.out_at_fakewa
    );
    println!(
        "churn: {} kill -9 + restart (all reconnected after {}), {} receiver outages, {} connection drops, {} unlink + re-pair ({} skipped, {} failed)",
        churn.kills,
        reconnect
            .iter()
            .map(|s| format!("{s:.1} s"))
            .collect::<Vec<_>>()
            .join(", "),
        churn.outages,
        churn.drops,
        churn.unlinks,
        churn.unlinks_skipped,
        churn.repair_failures
    );
    println!(
        "slopes after warm-up (minute {warm:.1} on, {} samples, least squares): RSS {:+.1} MiB/h (heap in use {:+.1}, heap free {:+.1}), fds {:+.1}/h, disk {:+.1} MiB/h, store {:+.1} MiB/h, outbox {:+.1}/h, threads {:+.1}/h, library tasks {:+.1}/h",
        after.len(),
        per_hour(|s| s.rss_mib),
        per_hour(|s| s.heap_in_use_mib),
        per_hour(|s| s.heap_free_mib),
        per_hour(|s| s.fds),
        per_hour(|s| s.disk_mib),
        per_hour(|s| s.store_mib),
        per_hour(|s| s.outbox_depth),
        per_hour(|s| s.threads),
        per_hour(|s| s.library_tasks),
    );
    // Per tree: live bytes and entries at the first sample after warm-up
    // and at the end, and the slope of its bytes.
    if let (Some(first), true) = (after.first(), !last.trees.is_empty()) {
        println!(
            "live store after warm-up (minute {:.1} → end), per tree: entries, MiB, slope of MiB/h",
            first.minute
        );
        for (tree, (entries, bytes)) in &last.trees {
            let (e0, b0) = first
                .trees
                .get(tree)
                .copied()
                .unwrap_or((f64::NAN, f64::NAN));
            let tree_slope = slope(
                after
                    .iter()
                    .map(|s| (s.minute, s.trees.get(tree).map_or(f64::NAN, |t| t.1))),
            ) * 60.0
                / 1048576.0;
            println!(
                "  {tree:<28} {e0:>9.0} → {entries:>9.0}  {:>8.2} → {:>8.2} MiB  {tree_slope:+.2} MiB/h",
                b0 / 1048576.0,
                bytes / 1048576.0
            );
        }
        println!(
            "live store slope {:+.1} MiB/h (disk {:+.1} MiB/h: the rest is space sled has not reclaimed)",
            per_hour(|s| s.live_mib),
            per_hour(|s| s.disk_mib)
        );
        println!(
            "state database: disk {:.1} → {:.1} MiB, slope {:+.1} MiB/h (live {:+.2} MiB/h); \
             history database: disk {:.1} → {:.1} MiB, slope {:+.1} MiB/h (live {:+.2} MiB/h)",
            first.state_disk_mib,
            last.state_disk_mib,
            per_hour(|s| s.state_disk_mib),
            per_hour(|s| live_mib_in(s, false)),
            first.history_disk_mib,
            last.history_disk_mib,
            per_hour(|s| s.history_disk_mib),
            per_hour(|s| live_mib_in(s, true)),
        );
    }
    println!("load average at end: {}", loadavg());
    if lost.is_empty() {
        println!("PASS: no message lost");
    } else {
        println!(
            "FAIL: {} messages lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
    drop(daemon);
    soak.fake.stop();
    lost.len()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
