//! Received media download throughput (issue 16): a contact sends a large
//! document (50 MiB by default) through fakewa's HTTPS media server; the
//! bench downloads it through `GET /v1/sessions/{id}/messages/{id}/media`
//! (fetch of the encrypted file, hash and MAC proof, streaming decryption)
//! and prints MB/s and the daemon's RSS growth during the download. Beside
//! it, in the same run, the raw HTTPS ceiling: the same encrypted bytes
//! fetched straight from fakewa's media server with the client whatsd uses
//! (`whatsd::wa::http::client`, ureq over rustls, streaming into nothing).
//!
//! `cargo bench --bench media` (or `--profile dev`); `BENCH_MEDIA_MB` sets
//! the size, `BENCH_MEDIA_ROUNDS` the downloads of each kind (default 3).
//! Prints numbers, asserts only that the bytes are right.

#[path = "../tests/common/mod.rs"]
mod common;
mod stats;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{Daemon, control, pair};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use whatsapp_rust::http::{HttpClient, HttpRequest};

const PHONE: &str = "15551260001";
const ADA: &str = "15557800001";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Resident set of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Downloads `path` from the daemon, streaming: (bytes, SHA-256, seconds,
/// peak RSS of the daemon during it, KiB).
async fn download(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    pid: u32,
) -> (u64, Vec<u8>, f64, u64) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.expect("request");
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut header = Vec::new();
    let mut body_len = 0u64;
    let mut in_body = false;
    let mut peak = 0u64;
    let mut last_sample = Instant::now();
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        if !in_body {
            header.extend_from_slice(chunk);
            let Some(end) = header.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let text = String::from_utf8_lossy(&header[..end]).to_string();
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            let rest = header[end + 4..].to_vec();
            sha.update(&rest);
            body_len += rest.len() as u64;
            in_body = true;
            chunk = &[];
        }
        sha.update(chunk);
        body_len += chunk.len() as u64;
        if last_sample.elapsed() > Duration::from_millis(20) {
            peak = peak.max(rss_kib(pid));
            last_sample = Instant::now();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    peak = peak.max(rss_kib(pid));
    (body_len, sha.finish().as_ref().to_vec(), secs, peak)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let mib = env_num("BENCH_MEDIA_MB", 50);
    let rounds = env_num("BENCH_MEDIA_ROUNDS", 3);
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (dir, daemon) = Daemon::start(&fake.ws_url()).await;
    pair(&daemon, &fake, "bench", None, PHONE).await;
    let pid = daemon
        .child
        .as_ref()
        .and_then(|c| c.id())
        .expect("daemon pid");

    let mut plain = vec![0u8; mib * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in plain.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let plain_sha = ring::digest::digest(&ring::digest::SHA256, &plain)
        .as_ref()
        .to_vec();
    let sent = control(
        fake.control_addr(),
        "/control/media",
        json!({
            "to_phone": PHONE, "from_phone": ADA, "type": "document",
            "mimetype": "application/octet-stream", "file_name": "big.bin",
            "data_base64": base64(&plain),
        }),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let sent = sent.json();
    let id = sent["id"].as_str().unwrap().to_string();
    let direct_path = sent["direct_path"].as_str().unwrap().to_string();
    let enc_sha_hex = sent["enc_sha256_hex"].as_str().unwrap().to_string();
    drop(plain);
    let path = format!("/v1/sessions/bench/messages/{id}/media");
    // A warm-up download, repeated until the message is received (its
    // refs stored).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = common::request(daemon.addr, "HEAD", &path, Some(common::ADMIN), None).await;
        if r.status != 404 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The raw ceiling: the same encrypted bytes, same HTTP client, no
    // whatsd in between.
    let ca = dir.path().join("bench-media-ca.pem");
    std::fs::write(&ca, fake.media_ca_pem()).expect("ca");
    let http = whatsd::wa::http::client(Some(&ca)).expect("client");
    let enc = unhex(&enc_sha_hex);
    let token = base64url(&enc);
    let url = format!("https://{}{direct_path}?token={token}", fake.media_addr());
    let mut raw = Vec::new();
    for _ in 0..rounds {
        let http = http.clone();
        let url = url.clone();
        let (len, secs) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let response = http
                .execute_streaming(HttpRequest::get(url))
                .expect("raw GET");
            assert_eq!(response.status_code, 200);
            let mut body = response.body;
            let mut buf = vec![0u8; 256 * 1024];
            let mut len = 0u64;
            loop {
                let n = body.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                len += n as u64;
            }
            (len, started.elapsed().as_secs_f64())
        })
        .await
        .expect("raw");
        raw.push(len as f64 / 1e6 / secs);
    }

    let mut through = Vec::new();
    let mut growth = Vec::new();
    for _ in 0..rounds {
        let before = rss_kib(pid);
        let (len, sha, secs, peak) = download(daemon.addr, &path, common::ADMIN, pid).await;
        assert_eq!(len as usize, mib * 1024 * 1024, "length");
        assert!(sha == plain_sha, "the download differs from what was sent");
        through.push(len as f64 / 1e6 / secs);
        growth.push(peak.saturating_sub(before) as f64 / 1024.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        stats::percentile(v, 50.0)
    };
    println!(
        "media download, {mib} MiB document, {rounds} rounds each (load {}):",
        stats::loadavg()
    );
    println!(
        "  raw HTTPS from the media server (ureq/rustls, same client): median {:.0} MB/s ({:?})",
        median(&mut raw.clone()),
        raw.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "  through whatsd (fetch, prove hash and MAC, decrypt, stream): median {:.0} MB/s ({:?})",
        median(&mut through.clone()),
        through.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "  daemon RSS growth during a download: max {:.1} MiB ({:?})",
        growth.iter().cloned().fold(0.0, f64::max),
        growth
            .iter()
            .map(|v| (v * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn base64url(bytes: &[u8]) -> String {
    base64(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}
