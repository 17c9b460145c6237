//! Session density, restart time and pairing latency against fakewa.
//!
//! `cargo bench --bench sessions` (env `WHATSD_BENCH_SESSIONS`, default 1000).
//! `WHATSD_BENCH_CHURN=ROUNDSxN` (e.g. `3x200`) runs only the churn: N
//! sessions created until they show a QR code, then deleted, ROUNDS times;
//! prints resident memory after each round against the baseline, with
//! glibc's in-use and retained heap bytes. `WHATSD_BENCH_NO_RELEASE=1`
//! leaves out the `malloc_trim` hook `whatsd serve` installs,
//! `WHATSD_BENCH_TRIM=1` trims again before each reading,
//! `WHATSD_BENCH_MALLOC_STATS=1` prints glibc's per-arena report,
//! `WHATSD_BENCH_SETTLE_MS` (3000) is the wait before each reading,
//! `WHATSD_BENCH_EXIT=1` ends the process right after the last reading
//! (nothing freed: under heaptrack, what it reports as leaked is what was
//! live then).
//! fakewa runs in a child process (this same binary, `FAKEWA_CHILD=1`), so
//! the resident memory measured here is whatsd's alone. Prints numbers; it
//! asserts nothing about speed.

mod stats;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use whatsd::session::{EventKind, SessionConfig, SessionState, Supervisor};
use whatsd::store::{MasterKey, Store};
use whatsd::wa::WaConfig;

const VERSION: (u32, u32, u32) = (2, 3000, 1_023_456_789);
/// Pairings measured one at a time for latency; the rest go in parallel.
const SEQUENTIAL: usize = 100;
const PARALLEL: usize = 50;

fn main() {
    // The allocator settings `whatsd serve` runs with (see its main.rs).
    if let Some(e) = whatsd::store::release::restart_with_allocator_settings() {
        eprintln!("bench: cannot restart with the allocator settings: {e}");
    }
    stats::init_tracing();
    if std::env::var_os("FAKEWA_CHILD").is_some() {
        return fakewa_child();
    }
    let n: usize = std::env::var("WHATSD_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env("FAKEWA_CHILD", "1")
        // A profiler preloaded into the bench (heaptrack) measures whatsd only.
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start fakewa child");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("child stdout"))
        .read_line(&mut line)
        .expect("fakewa addresses");
    let mut parts = line.split_whitespace();
    let ws_url = parts.next().expect("ws url").to_owned();
    let control: SocketAddr = parts
        .next()
        .expect("control addr")
        .parse()
        .expect("control addr");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match std::env::var("WHATSD_BENCH_CHURN").ok() {
        Some(spec) => {
            let (rounds, per) = spec
                .split_once('x')
                .and_then(|(r, n)| Some((r.parse().ok()?, n.parse().ok()?)))
                .expect("WHATSD_BENCH_CHURN=ROUNDSxN");
            runtime.block_on(churn(rounds, per, ws_url));
        }
        None => runtime.block_on(run(n, ws_url, control)),
    }
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"stop\n");
    }
    let _ = child.wait();
}

fn fakewa_child() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let fake = fakewa::FakeWa::start().await.expect("fakewa starts");
        println!("{} {}", fake.ws_url(), fake.control_addr());
        // Runs until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await;
    });
}

fn config(ws_url: &str) -> SessionConfig {
    SessionConfig {
        wa: WaConfig {
            ws_url: Some(ws_url.to_owned()),
            version: Some(VERSION),
            device_os: "whatsd-bench".into(),
            media_ca_file: None,
        },
        activation_timeout: Duration::from_secs(600),
        // One tenant holds them all here.
        max_per_tenant: usize::MAX,
        ..Default::default()
    }
}

async fn open_store(dir: &Path) -> Store {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Store::open(dir, &MasterKey::from_bytes([7; 32])) {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline && e.to_string().contains("open") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("store: {e}"),
        }
    }
}

async fn run(n: usize, ws_url: String, control: SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rss_start = rss_kib();
    let store = open_store(dir.path()).await;
    let supervisor = Supervisor::start(store.clone(), config(&ws_url))
        .await
        .expect("supervisor");
    let rss_empty = rss_kib();

    println!("pairing {n} sessions against fakewa (child process) ...");
    let started = Instant::now();
    let mut to_paired = Vec::new();
    let mut to_connected = Vec::new();
    for i in 0..n.min(SEQUENTIAL) {
        let (p, c) = pair_one(&supervisor, control, i).await;
        to_paired.push(p);
        to_connected.push(c);
    }
    let mut next = n.min(SEQUENTIAL);
    while next < n {
        let batch: Vec<usize> = (next..(next + PARALLEL).min(n)).collect();
        next += batch.len();
        let jobs = batch.into_iter().map(|i| {
            let supervisor = supervisor.clone();
            tokio::spawn(async move { pair_one(&supervisor, control, i).await })
        });
        for job in jobs.collect::<Vec<_>>() {
            job.await.expect("pairing task");
        }
    }
    let pairing_time = started.elapsed();
    let connected = count_connected(&supervisor).await;
    assert_eq!(connected, n, "every session connected");
    let rss_all = rss_kib();
    let keyspaces = keyspace_bytes(&store, n);

    // Idle: all sessions connected, nothing happening but keepalives.
    let cpu_before = cpu_ticks();
    let idle = Duration::from_secs(20);
    tokio::time::sleep(idle).await;
    let cpu_idle = (cpu_ticks() - cpu_before) as f64 / ticks_per_sec() / idle.as_secs_f64() * 100.0;

    // Restart: a new supervisor on the same data dir reconnects everything.
    supervisor.shutdown().await;
    drop(supervisor);
    drop(store);
    // The clock starts before the store opens: process start to all connected.
    let restart_began = Instant::now();
    let restart_began_ms = unix_ms();
    let supervisor = Supervisor::start(open_store(dir.path()).await, config(&ws_url))
        .await
        .expect("supervisor again");
    let deadline = Instant::now() + Duration::from_secs(600);
    // Records still say "connected" from before: count only fresh logins.
    while count_connected_since(&supervisor, restart_began_ms).await < n {
        assert!(
            Instant::now() < deadline,
            "restart did not reconnect everything in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restart_time = restart_began.elapsed();
    supervisor.shutdown().await;

    let per_session_kib = (rss_all.saturating_sub(rss_empty)) as f64 / n as f64;
    println!();
    println!("sessions                      {n}");
    println!(
        "pairing all                   {:.1} s",
        pairing_time.as_secs_f64()
    );
    println!(
        "scan -> paired   (n={:>4})    p50 {:>7.1} ms   p99 {:>7.1} ms",
        to_paired.len(),
        pct(&mut to_paired, 50.0),
        pct(&mut to_paired, 99.0)
    );
    println!(
        "scan -> connected (n={:>4})   p50 {:>7.1} ms   p99 {:>7.1} ms",
        to_connected.len(),
        pct(&mut to_connected, 50.0),
        pct(&mut to_connected, 99.0)
    );
    println!(
        "RSS at start / empty / all    {} / {} / {} KiB",
        rss_start, rss_empty, rss_all
    );
    println!(
        "RSS per connected session     {:.0} KiB ({:.2} MiB)",
        per_session_kib,
        per_session_kib / 1024.0
    );
    println!("{keyspaces}");
    println!(
        "idle CPU, {n} connected       {cpu_idle:.1} % of one core (over {} s)",
        idle.as_secs()
    );
    println!(
        "restart -> all connected      {:.1} s",
        restart_time.as_secs_f64()
    );
}

/// Bytes per paired device: keys and stored (sealed) values of every
/// session's device keyspace, averaged, with the prekeys' share.
fn keyspace_bytes(store: &Store, n: usize) -> String {
    let (mut bytes, mut rows, mut prekeys) = (0u64, 0u64, 0u64);
    for i in 0..n {
        let usage = store
            .device_keyspace_usage(&format!("bench-{i}"))
            .expect("keyspace usage");
        bytes += usage.bytes();
        rows += usage.rows();
        prekeys += usage
            .by_kind
            .iter()
            .filter(|(kind, _)| whatsd::store::device::is_prekey_kind(**kind))
            .map(|(_, k)| k.key_bytes + k.value_bytes)
            .sum::<u64>();
    }
    let n = n.max(1) as f64;
    format!(
        "bytes per paired device       {:.0} B in {:.0} rows (prekeys {:.0} B)",
        bytes as f64 / n,
        rows as f64 / n,
        prekeys as f64 / n
    )
}

/// Creates `per` sessions, waits for each one's QR code, deletes them all;
/// `rounds` times. Memory is read once the library's tasks are gone (a
/// bounded wait) and the store's release after the deletes has run.
async fn churn(rounds: usize, per: usize, ws_url: String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let supervisor = Supervisor::start(open_store(dir.path()).await, config(&ws_url))
        .await
        .expect("supervisor");
    let trim = std::env::var_os("WHATSD_BENCH_TRIM").is_some();
    // What `whatsd serve` installs: malloc_trim once deletes settle (the
    // store drains sled's deferred frees either way).
    let release = std::env::var_os("WHATSD_BENCH_NO_RELEASE").is_none();
    if release {
        whatsd::store::release::set_hook(glibc::trim);
    }
    println!(
        "malloc_trim after deletes: {}; GLIBC_TUNABLES={}",
        if release {
            "on"
        } else {
            "off (WHATSD_BENCH_NO_RELEASE)"
        },
        std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
    );
    // Warm-up round: code paths, pools and caches reach their steady size.
    churn_round(&supervisor, 0, per.min(20)).await;
    let baseline = settle(trim).await;
    println!("churn: {rounds} rounds x {per} sessions (create until QR, delete)");
    println!("baseline   {baseline}");
    for round in 1..=rounds {
        let started = Instant::now();
        churn_round(&supervisor, round, per).await;
        let tasks = whatsd::wa::live_library_tasks();
        let mem = settle(trim).await;
        println!(
            "round {round:>2}   {mem} ({:+.1} % RSS vs baseline) {:.1} s, library tasks left {tasks}",
            (mem.rss as f64 / baseline.rss as f64 - 1.0) * 100.0,
            started.elapsed().as_secs_f64(),
        );
    }
    if std::env::var_os("WHATSD_BENCH_EXIT").is_some() {
        std::process::exit(0);
    }
    supervisor.shutdown().await;
}

/// Resident memory and what glibc's allocator says about its heap.
#[derive(Clone, Copy)]
struct Mem {
    rss: u64,
    anon: u64,
    file: u64,
    threads: u64,
    /// Bytes handed out by malloc and not freed (live), KiB.
    in_use: u64,
    /// Bytes free inside malloc's arenas (retained, not returned), KiB.
    free: u64,
    /// RSS after `malloc_trim(0)`, when asked for (`WHATSD_BENCH_TRIM`).
    trimmed: Option<u64>,
}

impl std::fmt::Display for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:>6} KiB (anon {:>6}, file {:>6}, {:>3} threads)  malloc in use {:>6} KiB  free in arenas {:>6} KiB",
            self.rss, self.anon, self.file, self.threads, self.in_use, self.free
        )?;
        if let Some(t) = self.trimmed {
            write!(f, "  RSS after malloc_trim {t:>6} KiB")?;
        }
        Ok(())
    }
}

/// Reads memory after settling: three seconds (`WHATSD_BENCH_SETTLE_MS`),
/// past the store's release delay after the last delete.
async fn settle(trim: bool) -> Mem {
    let ms = std::env::var("WHATSD_BENCH_SETTLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let (in_use, free) = glibc::heap_kib();
    let rss = rss_kib();
    if std::env::var_os("WHATSD_BENCH_MALLOC_STATS").is_some() {
        glibc::stats();
    }
    if std::env::var_os("WHATSD_BENCH_SMAPS").is_some() {
        print_anon_mappings();
    }
    let trimmed = trim.then(|| {
        glibc::trim();
        rss_kib()
    });
    Mem {
        rss,
        anon: status_field("RssAnon:"),
        file: status_field("RssFile:"),
        threads: status_field("Threads:"),
        in_use,
        free,
        trimmed,
    }
}

/// The anonymous mappings with the most resident memory (stderr): which
/// region holds what RSS a round added.
fn print_anon_mappings() {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut maps: Vec<(String, u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let name = line
                .split_whitespace()
                .nth(5)
                .unwrap_or("[anon]")
                .to_owned();
            let size = first
                .split_once('-')
                .and_then(|(a, b)| {
                    Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
                })
                .unwrap_or(0)
                / 1024;
            maps.push((format!("{first} {name}"), size, 0));
        } else if first == "Rss:"
            && let Some(last) = maps.last_mut()
        {
            last.2 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    maps.retain(|(name, _, _)| !name.contains('/'));
    maps.sort_by_key(|m| std::cmp::Reverse(m.2));
    let total: u64 = maps.iter().map(|m| m.2).sum();
    eprintln!("anon mappings: {} KiB resident in {}", total, maps.len());
    for (name, size, rss) in maps.iter().take(12) {
        eprintln!("  {rss:>7} KiB of {size:>7} KiB  {name}");
    }
}

/// glibc's allocator statistics, for telling live memory from memory the
/// allocator keeps (0 elsewhere).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    #[repr(C)]
    struct MallInfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }

    unsafe extern "C" {
        fn mallinfo2() -> MallInfo2;
        fn malloc_trim(pad: usize) -> i32;
        fn malloc_stats();
    }

    /// glibc's per-arena report, on stderr.
    pub fn stats() {
        // SAFETY: malloc_stats only prints the allocator's counters.
        unsafe { malloc_stats() };
    }

    /// (in use, free but kept), KiB, over all arenas and mmapped chunks.
    pub fn heap_kib() -> (u64, u64) {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct.
        let info = unsafe { mallinfo2() };
        (
            ((info.uordblks + info.hblkhd) / 1024) as u64,
            (info.fordblks / 1024) as u64,
        )
    }

    pub fn trim() {
        // SAFETY: malloc_trim only releases free memory back to the system.
        unsafe { malloc_trim(0) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub fn heap_kib() -> (u64, u64) {
        (0, 0)
    }
    pub fn trim() {}
    pub fn stats() {}
}

async fn churn_round(supervisor: &Supervisor, round: usize, per: usize) {
    let ids: Vec<String> = (0..per).map(|i| format!("churn-{round}-{i}")).collect();
    for id in &ids {
        supervisor
            .create(Some(id.clone()), "bench".into(), true)
            .await
            .expect("create");
    }
    for id in &ids {
        let (_, qr) = supervisor
            .wait_qr(id, Duration::from_secs(60))
            .await
            .expect("session");
        assert!(qr.is_some(), "{id} shows no QR code");
    }
    for id in &ids {
        supervisor.delete(id).await.expect("delete");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while whatsd::wa::live_library_tasks() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates session `i`, scans its first QR as a fresh number, waits for it to
/// connect. Returns (scan→paired, scan→connected) in milliseconds.
async fn pair_one(supervisor: &Supervisor, control: SocketAddr, i: usize) -> (f64, f64) {
    let id = format!("bench-{i}");
    let mut events = supervisor.subscribe();
    supervisor
        .create(Some(id.clone()), "bench".into(), true)
        .await
        .expect("create");
    let (_, qr) = supervisor
        .wait_qr(&id, Duration::from_secs(60))
        .await
        .expect("session");
    let code = qr.expect("no QR").code;
    let scanned = Instant::now();
    let phone = format!("1666{:07}", i);
    let (status, body) = fakewa::control_client::post(
        control,
        "/control/scan",
        serde_json::json!({"qr": code, "phone": phone}),
    )
    .await
    .expect("scan");
    assert_eq!(status, 200, "{body}");
    let mut paired = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(120), events.recv()).await {
            Ok(Ok(e)) if e.session == id => match e.kind {
                EventKind::Paired { .. } => paired = Some(scanned.elapsed()),
                EventKind::Connected { .. } => {
                    let connected = scanned.elapsed();
                    let paired = paired.unwrap_or(connected);
                    return (paired.as_secs_f64() * 1e3, connected.as_secs_f64() * 1e3);
                }
                _ => {}
            },
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) => {
                if supervisor.get(&id).await.map(|s| s.state).ok() == Some(SessionState::Connected)
                {
                    let t = scanned.elapsed().as_secs_f64() * 1e3;
                    return (t, t);
                }
            }
            Ok(Err(e)) => panic!("events closed: {e}"),
            Err(_) => panic!("{id} did not connect"),
        }
    }
}

async fn count_connected_since(supervisor: &Supervisor, since_ms: i64) -> usize {
    supervisor
        .list()
        .await
        .iter()
        .filter(|s| s.state == SessionState::Connected && s.last_connected_at_ms >= since_ms)
        .count()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn count_connected(supervisor: &Supervisor) -> usize {
    count_connected_since(supervisor, 0).await
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn rss_kib() -> u64 {
    status_field("VmRSS:")
}

/// A number from /proc/self/status (KiB for the memory fields).
fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(name)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// utime + stime of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on (no libc call
/// needed for a benchmark's arithmetic).
fn ticks_per_sec() -> f64 {
    100.0
}
