//! Webhook delivery throughput and end-to-end message latency.
//!
//! `cargo bench -p whatsd --bench webhook` (prints numbers; asserts nothing
//! about speed).
//!
//! 1. Outbox alone: [`Webhooks`] over a sled store in a temp dir delivers to
//!    an in-process axum receiver on loopback. Events go in through the
//!    `EventSink` impl (durable append + group-commit flush), one task per
//!    session. Measured: enqueue with the workers stopped (durable writes/s),
//!    draining that backlog after a restart, and enqueue while delivering
//!    (first enqueue → receiver counted all). The ceiling is the same
//!    receiver driven by a reqwest load generator with the delivery pool's
//!    concurrency and the same body.
//! 2. End to end: fakewa → whatsapp-rust client → session → durability hook
//!    → outbox → receiver. Each message's text carries fakewa's send time
//!    (`sent-us:<unix µs>`); the receiver subtracts it from its own clock
//!    (same machine). Paced at `RATE` msgs/s, then as fast as the pipeline
//!    takes with `WINDOW` messages outstanding.
//!
//!    Also printed: the store's group commits (sled flushes) per message.
//!
//!    Then the same run twice more, fresh sessions at the same fakewa: with
//!    the webhooks' workers stopped (each message appended to the outbox
//!    and committed, then counted: the path without delivery), and with
//!    the sessions' messages going to a sink that only counts them (the
//!    ceiling that WhatsApp's side — fakewa, the library, the session
//!    actor — leaves for whatsd's outbox and delivery). The ratios of the
//!    maximum rates are printed last.
//!
//! Env knobs: `WHATSD_BENCH_E2E_SESSIONS` (sessions end to end, default 8),
//! `WHATSD_BENCH_ONLY=e2e` (skip part 1), `WHATSD_BENCH_FDATASYNC=0` (group
//! commits stop at sled's flush, as before power-loss durability: measures
//! what the `fdatasync` costs). Syscalls per message:
//! `strace -c -f -e trace=fdatasync,fsync,sync_file_range,pwrite64 <bench binary> --bench`.
//!
//! fakewa, the receiver and whatsd run on three runtimes with named threads,
//! so the CPU each used is read per thread from `/proc/self/task`.

mod stats;
use stats::percentile as pct;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tokio::sync::Semaphore;
use whatsd::session::{EventSink, Identity, SessionConfig, SessionState, Supervisor};
use whatsd::store::{MasterKey, Store};
use whatsd::wa::inbound::Content;
use whatsd::wa::{InboundMessage, WaConfig};
use whatsd::webhook::{EndpointId, EndpointSpec, Format, Scope, Settings, Webhooks};

const VERSION: (u32, u32, u32) = (2, 3000, 1_023_456_789);
const MARK: &str = "sent-us:";
const SECRET: &str = "bench-secret-0123456789abcdef";

/// Outbox alone: events per run, sessions (one enqueue task each), tenants.
const EVENTS: usize = 20_000;
const SESSIONS: usize = 100;
const TENANTS: usize = 10;

/// End to end: sessions × contacts sending, paced rate and duration, and
/// the messages in flight for the maximum-rate run.
/// Default sessions; `WHATSD_BENCH_E2E_SESSIONS` overrides.
const E2E_SESSIONS: usize = 8;
const CONTACTS: usize = 4;
const RATE: usize = 1_000;
const PACED_FOR: Duration = Duration::from_secs(10);
const MAX_MESSAGES: usize = 20_000;
const WINDOW: usize = 512;

const WAIT: Duration = Duration::from_secs(300);

fn main() {
    stats::init_tracing();
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("runtime")
    };
    let receiver_rt = runtime("receiver");
    let fakewa_rt = runtime("fakewa");
    let whatsd_rt = runtime("whatsd");

    let receiver = Arc::new(Receiver::default());
    let addr = receiver_rt.block_on(serve(Arc::clone(&receiver)));
    let fake = fakewa_rt
        .block_on(fakewa::FakeWa::start())
        .expect("fakewa starts");
    let url = format!("http://{addr}/hook");

    whatsd_rt.block_on(async {
        if std::env::var("WHATSD_BENCH_ONLY").as_deref() != Ok("e2e") {
            outbox_alone(&receiver, &url).await;
        }
        let full = end_to_end(&receiver, &url, &fake, Path::Webhook, 0).await;
        let outbox = end_to_end(&receiver, &url, &fake, Path::Outbox, 2).await;
        let ceiling = end_to_end(&receiver, &url, &fake, Path::Library, 1).await;
        println!();
        println!(
            "end to end against its ceiling (same run): {full:.0} / {ceiling:.0} msgs/s = {:.2}; \
             without delivery {outbox:.0} msgs/s = {:.2}",
            full / ceiling,
            outbox / ceiling
        );
    });
    fake.stop();
}

// ---- the receiver ---------------------------------------------------------

#[derive(Default)]
struct Receiver {
    /// POSTs that carried a send stamp.
    stamped: AtomicUsize,
    /// Receive time − send stamp, µs.
    latencies: Mutex<Vec<i64>>,
    /// One body, for the load generator.
    sample: Mutex<Option<Bytes>>,
    /// Gets a permit back per stamped POST (the end-to-end window).
    window: Mutex<Option<Arc<Semaphore>>>,
}

impl Receiver {
    fn reset(&self) {
        self.stamped.store(0, Ordering::SeqCst);
        lock(&self.latencies).clear();
        *lock(&self.window) = None;
    }

    fn latencies(&self) -> Vec<f64> {
        let mut v: Vec<f64> = lock(&self.latencies)
            .iter()
            .map(|us| *us as f64 / 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Counts a message that carries a send stamp, arrived at `now` (µs).
    fn arrived(&self, body: &[u8], now: i64) {
        if let Some(sent) = stamp(body) {
            lock(&self.latencies).push(now - sent);
            self.stamped.fetch_add(1, Ordering::SeqCst);
            if let Some(window) = lock(&self.window).as_ref() {
                window.add_permits(1);
            }
        }
    }

    /// Bounded poll until `n` stamped POSTs arrived; returns when the last did.
    async fn wait_for(&self, n: usize, what: &str) {
        let deadline = Instant::now() + WAIT;
        while self.stamped.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} webhooks arrived in {WAIT:?}",
                self.stamped.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn hook(State(r): State<Arc<Receiver>>, body: Bytes) -> StatusCode {
    r.arrived(&body, now_us());
    let mut sample = lock(&r.sample);
    if sample.is_none() {
        *sample = Some(body);
    }
    StatusCode::OK
}

async fn serve(receiver: Arc<Receiver>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn stamp(body: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find(MARK)? + MARK.len()..];
    let end = rest
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

// ---- 1. outbox alone ------------------------------------------------------

async fn outbox_alone(receiver: &Receiver, url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &MasterKey::from_bytes([7; 32])).expect("store");
    store
        .set_power_loss_durable(power_loss_durable())
        .expect("power-loss durability");
    let settings = Settings {
        allow_private_targets: true,
        ..Default::default()
    };
    println!(
        "outbox alone: {EVENTS} events over {SESSIONS} sessions, {TENANTS} tenant endpoints, pool {}",
        settings.concurrency
    );
    let flush = flush_latency(&store, 300).await;

    // (a) Workers stopped: durable appends only.
    let stopped = Webhooks::start(store.clone(), settings.clone())
        .await
        .expect("webhooks");
    for t in 0..TENANTS {
        let tenant = format!("tenant{t}");
        stopped
            .put_endpoint(
                EndpointId::new(Scope::Tenant(tenant.clone()), "bench"),
                &tenant,
                EndpointSpec {
                    url: url.to_owned(),
                    secret: SECRET.into(),
                    events: vec![],
                    format: Format::Whatsd,
                },
            )
            .await
            .expect("endpoint");
    }
    stopped.shutdown(Duration::from_secs(5)).await;
    let enqueue_only = enqueue(&stopped, "a").await;

    // (b) A restart resumes the backlog.
    receiver.reset();
    let started = Instant::now();
    let webhooks = Webhooks::start(store.clone(), settings.clone())
        .await
        .expect("webhooks again");
    receiver.wait_for(EVENTS, "backlog").await;
    let drain = started.elapsed();

    // (c) Enqueue while delivering.
    receiver.reset();
    let started = Instant::now();
    let enqueue_live = enqueue(&webhooks, "c").await;
    receiver.wait_for(EVENTS, "live").await;
    let live = started.elapsed();
    let live_latency = receiver.latencies();
    webhooks.shutdown(Duration::from_secs(5)).await;

    // (d) The ceiling: the receiver alone, same concurrency, same body.
    let body = lock(&receiver.sample).clone().expect("a sample body");
    let ceiling = load(url, body.clone(), settings.concurrency).await;
    let ceiling_100 = load(url, body.clone(), 100).await;
    receiver.reset();

    let rate = |d: Duration| EVENTS as f64 / d.as_secs_f64();
    println!();
    println!(
        "store flush (1 append + flush, serial)  p50 {:.2} ms  p99 {:.2} ms  => {:.0} flushes/s for one writer",
        pct(&flush, 50.0),
        pct(&flush, 99.0),
        1000.0 / pct(&flush, 50.0)
    );
    println!(
        "enqueue only (workers stopped)          {:>8.0} events/s  ({:.2} s)",
        rate(enqueue_only),
        enqueue_only.as_secs_f64()
    );
    println!(
        "backlog drain after restart             {:>8.0} deliveries/s  ({:.2} s)",
        rate(drain),
        drain.as_secs_f64()
    );
    println!(
        "enqueue while delivering                {:>8.0} events/s  ({:.2} s)",
        rate(enqueue_live),
        enqueue_live.as_secs_f64()
    );
    println!(
        "sustained, first enqueue -> all POSTed  {:>8.0} deliveries/s  ({:.2} s)",
        rate(live),
        live.as_secs_f64()
    );
    println!(
        "  enqueue -> POST received              p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        pct(&live_latency, 50.0),
        pct(&live_latency, 99.0),
        pct(&live_latency, 100.0)
    );
    println!(
        "ceiling: reqwest -> receiver, {:>3} conc {:>8.0} requests/s  ({} B bodies)",
        settings.concurrency,
        ceiling,
        body.len()
    );
    println!("ceiling: reqwest -> receiver, 100 conc {ceiling_100:>8.0} requests/s");
    println!(
        "sustained / ceiling                     {:.2}  (backlog drain / ceiling {:.2})",
        rate(live) / ceiling,
        rate(drain) / ceiling
    );
    println!();
}

/// Latency of one small outbox append plus a flush, one after another (the
/// items go to a queue no endpoint owns and are removed again).
async fn flush_latency(store: &Store, n: usize) -> Vec<f64> {
    let value = vec![b'x'; 700];
    let mut out = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        keys.extend(
            store
                .outbox_append(&[(&b"\x00bench-flush"[..], value.as_slice())])
                .expect("append"),
        );
        store.flush().await.expect("flush");
        out.push(started.elapsed().as_secs_f64() * 1e3);
    }
    for key in keys {
        store.outbox_remove(&key).expect("remove");
    }
    out.sort_by(f64::total_cmp);
    out
}

/// `EVENTS` messages through the durability hook's entry point, one task
/// per session, one message per call. Returns the time until all are durable.
async fn enqueue(webhooks: &Webhooks, run: &str) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let webhooks = webhooks.clone();
            let owner = whatsd::session::Owner {
                session: format!("s{s}"),
                tenant: format!("tenant{}", s % TENANTS),
                incarnation: format!("i{s}"),
            };
            let run = run.to_owned();
            tokio::spawn(async move {
                for i in 0..EVENTS / SESSIONS {
                    let message = InboundMessage {
                        id: format!("{run}-{}-{i}", owner.session),
                        chat: "15550001111@s.whatsapp.net".into(),
                        sender: "15550001111@s.whatsapp.net".into(),
                        sender_phone: "15550001111".into(),
                        push_name: "Bench Contact".into(),
                        timestamp: now_us() / 1_000_000,
                        content: Content {
                            kind: "text",
                            text: Some(format!("hello from the bench {MARK}{}", now_us())),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    webhooks
                        .messages(&owner, Identity::default(), vec![message])
                        .await
                        .expect("enqueue");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("enqueue task");
    }
    started.elapsed()
}

/// `EVENTS` POSTs of `body` over `concurrency` keep-alive connections.
async fn load(url: &str, body: Bytes, concurrency: usize) -> f64 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, body, url) = (
                client.clone(),
                Arc::clone(&next),
                body.clone(),
                url.to_owned(),
            );
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < EVENTS {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("POST");
                    assert!(r.status().is_success());
                    let _ = r.bytes().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("load task");
    }
    EVENTS as f64 / started.elapsed().as_secs_f64()
}

// ---- 2. end to end --------------------------------------------------------

/// What the sessions' messages go to in an end-to-end run.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// The daemon's path: durable outbox append, group commit, HTTP POST
    /// to the receiver.
    Webhook,
    /// The daemon's path without delivery: the message is appended to the
    /// outbox and committed (the webhooks' workers are stopped), then
    /// counted.
    Outbox,
    /// The ceiling: a sink that counts each message as it is handed over
    /// (no outbox, no commit, no HTTP); what WhatsApp's side of the path
    /// (fakewa, the library's decryption and acks, the session) allows.
    Library,
}

/// An [`EventSink`] that records every message's latency as the receiver
/// would, at the moment the session hands it over; with `outbox`, only
/// after that sink (the webhooks, workers stopped) made it durable.
struct CountingSink {
    receiver: Arc<Receiver>,
    outbox: Option<Webhooks>,
}

#[async_trait::async_trait]
impl EventSink for CountingSink {
    async fn messages(
        &self,
        owner: &whatsd::session::Owner,
        me: Identity,
        batch: Vec<InboundMessage>,
    ) -> anyhow::Result<()> {
        let Some(outbox) = &self.outbox else {
            for text in batch.iter().filter_map(|m| m.content.text.as_deref()) {
                self.receiver.arrived(text.as_bytes(), now_us());
            }
            return Ok(());
        };
        let texts: Vec<Option<String>> = batch.iter().map(|m| m.content.text.clone()).collect();
        outbox.messages(owner, me, batch).await?;
        for text in texts.iter().flatten() {
            self.receiver.arrived(text.as_bytes(), now_us());
        }
        Ok(())
    }

    fn session_event(&self, _event: &whatsd::session::SessionEvent) {}

    async fn session_deleted(&self, _owner: &whatsd::session::Owner) -> anyhow::Result<()> {
        Ok(())
    }

    async fn session_reassigned(
        &self,
        _old: &whatsd::session::Owner,
        _new: &whatsd::session::Owner,
    ) -> anyhow::Result<()> {
        Ok(())
    }
}

/// One end-to-end run over `path`; `run` keeps its sessions and contacts
/// apart from another run's at the same fakewa. Returns the max rate.
async fn end_to_end(
    receiver: &Arc<Receiver>,
    url: &str,
    fake: &fakewa::FakeWa,
    path: Path,
    run: usize,
) -> f64 {
    println!();
    println!(
        "== end to end, {} ==",
        match path {
            Path::Webhook => "fakewa -> whatsd -> durable outbox -> webhook POST",
            Path::Outbox => "no delivery: fakewa -> whatsd -> durable outbox (workers stopped)",
            Path::Library => "the ceiling: fakewa -> whatsd's sessions -> a counting sink",
        }
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &MasterKey::from_bytes([9; 32])).expect("store");
    let power_loss = power_loss_durable();
    store
        .set_power_loss_durable(power_loss)
        .expect("power-loss durability");
    println!(
        "end to end: group commits {} (WHATSD_BENCH_FDATASYNC=0 turns it off)",
        if power_loss {
            "fdatasync sled's log (power-loss durable)"
        } else {
            "stop at sled's flush (process-crash durable only)"
        }
    );
    let webhooks = Webhooks::start(
        store.clone(),
        Settings {
            allow_private_targets: true,
            ..Default::default()
        },
    )
    .await
    .expect("webhooks");
    webhooks
        .put_endpoint(
            EndpointId::new(Scope::Tenant("bench".into()), "bench"),
            "bench",
            EndpointSpec {
                url: url.to_owned(),
                secret: SECRET.into(),
                events: vec!["message.received".into()],
                format: Format::Whatsd,
            },
        )
        .await
        .expect("endpoint");
    let sink: Arc<dyn EventSink> = match path {
        Path::Webhook => Arc::new(webhooks.clone()),
        Path::Outbox => {
            // Stopped: appends and commits, delivers nothing.
            webhooks.shutdown(Duration::from_secs(5)).await;
            Arc::new(CountingSink {
                receiver: Arc::clone(receiver),
                outbox: Some(webhooks.clone()),
            })
        }
        Path::Library => Arc::new(CountingSink {
            receiver: Arc::clone(receiver),
            outbox: None,
        }),
    };
    let config = SessionConfig {
        wa: WaConfig {
            ws_url: Some(fake.ws_url()),
            version: Some(VERSION),
            device_os: "whatsd-bench".into(),
            media_ca_file: None,
        },
        activation_timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let supervisor = Supervisor::start_with_sink(store.clone(), config, Some(sink))
        .await
        .expect("supervisor");
    let sessions: usize = std::env::var("WHATSD_BENCH_E2E_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(E2E_SESSIONS);
    println!(
        "end to end: pairing {sessions} sessions, {CONTACTS} contacts each, against fakewa ..."
    );
    let pairings: Vec<_> = (0..sessions)
        .map(|i| {
            let (supervisor, server) = (supervisor.clone(), Arc::clone(&fake.server));
            tokio::spawn(async move { pair(&supervisor, &server, run * 1000 + i).await })
        })
        .collect();
    let mut phones = Vec::new();
    for p in pairings {
        phones.push(p.await.expect("pairing"));
    }
    let pairs: Vec<(String, String)> = phones
        .iter()
        .enumerate()
        .flat_map(|(i, phone)| {
            (0..CONTACTS).map(move |c| (phone.clone(), format!("1777{run}{i:03}{c:04}")))
        })
        .collect();
    let send = |k: usize| {
        let (to, from) = &pairs[k % pairs.len()];
        let text = format!("bench {k} {MARK}{}", now_us());
        fake.server
            .send_message(to, from, &text, fakewa::MessageKind::Dm)
            .expect("send");
    };

    // Warm-up: each contact's first message sets up its Signal session.
    receiver.reset();
    for k in 0..pairs.len() {
        send(k);
    }
    receiver.wait_for(pairs.len(), "warm-up").await;

    // Paced.
    receiver.reset();
    let flushes_before = store.flush_count();
    let total = RATE * PACED_FOR.as_secs() as usize;
    let tick = Duration::from_millis(10);
    let per_tick = RATE / 100;
    let mut interval = tokio::time::interval(tick);
    let started = Instant::now();
    let mut k = 0;
    while k < total {
        interval.tick().await;
        for _ in 0..per_tick {
            send(k);
            k += 1;
        }
    }
    let sending = started.elapsed();
    receiver.wait_for(total, "paced").await;
    let paced = receiver.latencies();
    let paced_flushes = store.flush_count() - flushes_before;

    // As fast as it goes, with WINDOW messages outstanding.
    receiver.reset();
    let window = Arc::new(Semaphore::new(WINDOW));
    *lock(&receiver.window) = Some(Arc::clone(&window));
    let cpu_before = cpu_by_thread();
    // Probes what one more durable append waits for meanwhile.
    let (stop_probe, mut stopped) = tokio::sync::watch::channel(false);
    let probe = tokio::spawn({
        let store = store.clone();
        async move {
            let mut out = Vec::new();
            while !*stopped.borrow() {
                out.extend(flush_latency(&store, 1).await);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    _ = stopped.changed() => {}
                }
            }
            out.sort_by(f64::total_cmp);
            out
        }
    });
    let flushes_before = store.flush_count();
    let started = Instant::now();
    for k in 0..MAX_MESSAGES {
        window.acquire().await.expect("window").forget();
        send(k);
    }
    receiver.wait_for(MAX_MESSAGES, "max").await;
    let max_time = started.elapsed();
    let max_flushes = store.flush_count() - flushes_before;
    let cpu = cpu_delta(&cpu_before, &cpu_by_thread());
    let _ = stop_probe.send(true);
    let probed = probe.await.expect("flush probe");
    let max_latency = receiver.latencies();
    receiver.reset();

    println!();
    println!(
        "paced: {total} messages at {RATE}/s target, sent in {:.2} s ({:.0}/s achieved), {} sessions x {CONTACTS} contacts",
        sending.as_secs_f64(),
        total as f64 / sending.as_secs_f64(),
        phones.len()
    );
    println!(
        "  fakewa send -> POST received          p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        pct(&paced, 50.0),
        pct(&paced, 90.0),
        pct(&paced, 99.0),
        pct(&paced, 100.0)
    );
    println!(
        "  group commits (sled flushes)          {paced_flushes} ({:.3} per message)",
        paced_flushes as f64 / total as f64
    );
    println!(
        "max: {MAX_MESSAGES} messages, {WINDOW} in flight      {:>8.0} msgs/s  ({:.2} s)",
        MAX_MESSAGES as f64 / max_time.as_secs_f64(),
        max_time.as_secs_f64()
    );
    println!(
        "  fakewa send -> POST received          p50 {:.1} ms  p99 {:.1} ms",
        pct(&max_latency, 50.0),
        pct(&max_latency, 99.0)
    );
    println!(
        "  append + flush meanwhile (n={:>4})     p50 {:.2} ms  p99 {:.2} ms",
        probed.len(),
        pct(&probed, 50.0),
        pct(&probed, 99.0)
    );
    println!(
        "  group commits (sled flushes)          {max_flushes} ({:.3} per message, the probe's included)",
        max_flushes as f64 / MAX_MESSAGES as f64
    );
    println!("  CPU during the max run (% of one core, by thread group; 200 % = both cores):");
    for (group, ticks) in &cpu {
        println!(
            "    {group:<24} {:>6.1} %",
            *ticks as f64 / 100.0 / max_time.as_secs_f64() * 100.0
        );
    }
    supervisor.shutdown().await;
    webhooks.shutdown(Duration::from_secs(5)).await;
    MAX_MESSAGES as f64 / max_time.as_secs_f64()
}

/// Creates session `i`, scans its QR as a fresh number, waits for it to
/// connect. Returns its phone number.
async fn pair(supervisor: &Supervisor, server: &fakewa::Server, i: usize) -> String {
    let id = format!("e2e-{i}");
    supervisor
        .create(Some(id.clone()), "bench".into(), true)
        .await
        .expect("create");
    let (_, qr) = supervisor
        .wait_qr(&id, Duration::from_secs(60))
        .await
        .expect("session");
    let code = qr.expect("no QR").code;
    let phone = format!("1666{i:07}");
    server.scan(&code, Some(&phone)).await.expect("scan");
    let info = supervisor
        .wait_until(&id, Duration::from_secs(120), |info| {
            info.state == SessionState::Connected
        })
        .await
        .expect("session");
    assert_eq!(info.state, SessionState::Connected, "{id} did not connect");
    phone
}

// ---- helpers --------------------------------------------------------------

/// Whether group commits `fdatasync` sled's log (the store's default);
/// `WHATSD_BENCH_FDATASYNC=0` measures without.
fn power_loss_durable() -> bool {
    std::env::var("WHATSD_BENCH_FDATASYNC").as_deref() != Ok("0")
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// utime + stime (clock ticks) per live thread, by thread name.
fn cpu_by_thread() -> BTreeMap<u64, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map(|(_, n)| n).unwrap_or("?");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(tid, (name.to_owned(), field(11) + field(12)));
    }
    out
}

/// CPU ticks used between two snapshots, grouped by thread name (threads
/// that ended in between are not counted).
fn cpu_delta(
    before: &BTreeMap<u64, (String, u64)>,
    after: &BTreeMap<u64, (String, u64)>,
) -> Vec<(String, u64)> {
    let mut groups: BTreeMap<String, u64> = BTreeMap::new();
    for (tid, (name, ticks)) in after {
        let start = before.get(tid).map_or(0, |(_, t)| *t);
        let group = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        *groups.entry(group.to_owned()).or_default() += ticks.saturating_sub(start);
    }
    let mut out: Vec<_> = groups.into_iter().filter(|(_, t)| *t > 0).collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.1));
    out
}
