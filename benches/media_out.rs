//! Media send throughput (issue 16): a document of each size taken in
//! (encrypted with WhatsApp's media scheme, written to the blob store),
//! then queued and sent — uploaded by the library from the blob file to
//! fakewa's HTTPS media server, and the message sent — against the raw
//! HTTPS upload ceiling: the same encrypted bytes POSTed to the same
//! server with the same HTTP client (whatsd's ureq client trusting
//! fakewa's CA), measured in the same run.
//!
//! `cargo bench -p whatsd --bench media_out` (prints MB/s; asserts
//! nothing about speed). Knob: `MEDIA_BENCH_SIZES_MB` (comma-separated,
//! default `1,16,64`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use whatsapp_rust::http::{HttpClient, HttpRequest};
use whatsd::session::media::Ingest;
use whatsd::session::outbound::{MediaKind, Outgoing, QueuedMedia, SendState};
use whatsd::session::{SessionConfig, SessionState, Supervisor};
use whatsd::store::{MasterKey, Store};
use whatsd::wa::WaConfig;

const VERSION: (u32, u32, u32) = (2, 3000, 1_023_456_789);
const PHONE: &str = "16660000001";
const CONTACT: &str = "15557700001";

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

/// URL-safe base64 without padding (the upload token's encoding).
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
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
    let sizes: Vec<usize> = std::env::var("MEDIA_BENCH_SIZES_MB")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64]);
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("media-ca.pem");
    std::fs::write(&ca, fake.media_ca_pem()).expect("CA file");
    let store = Store::open(&dir.path().join("data"), &MasterKey::generate().unwrap()).unwrap();
    let config = SessionConfig {
        wa: WaConfig {
            ws_url: Some(fake.ws_url()),
            version: Some(VERSION),
            device_os: "whatsd-bench".into(),
            media_ca_file: Some(ca.clone()),
        },
        activation_timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let supervisor = Supervisor::start(store.clone(), config)
        .await
        .expect("supervisor");
    supervisor
        .create(Some("media".into()), "bench".into(), true)
        .await
        .expect("create");
    let (_, qr) = supervisor
        .wait_qr("media", Duration::from_secs(60))
        .await
        .expect("qr");
    fake.server
        .scan(&qr.expect("no QR").code, Some(PHONE))
        .await
        .expect("scan");
    supervisor
        .wait_until("media", Duration::from_secs(120), |i| {
            i.state == SessionState::Connected
        })
        .await
        .expect("connected");
    let limits = whatsd::session::limits::LimitOverride {
        sends_per_minute: Some(1_000_000),
        sends_per_hour: Some(1_000_000),
        sends_per_day: Some(1_000_000),
        ..Default::default()
    };
    supervisor
        .set_limits("media", Some(limits))
        .await
        .expect("limits");
    let prefix = supervisor.contacts_prefix("media").await.expect("prefix");
    let http = Arc::new(whatsd::wa::http::client(Some(&ca)).expect("HTTP client"));
    let auth = fake.server.media.auth().to_owned();
    let media_addr = fake.media_addr();

    println!("media send throughput against fakewa's HTTPS media server (2 worker threads)");
    println!(
        "{:>8}  {:>14}  {:>16}  {:>18}  {:>10}",
        "size", "ingest MB/s", "upload+send MB/s", "raw HTTPS MB/s", "of ceiling"
    );
    for size_mb in sizes {
        let size = size_mb * 1024 * 1024;
        let plain: Vec<u8> = {
            let mut v = b"%PDF-1.4\n".to_vec();
            v.extend((0..size - 9).map(|i| (i * 31 % 253) as u8));
            v
        };
        // Taken in as the API does: 64 KiB chunks.
        let started = Instant::now();
        let mut ingest = Ingest::start(&store, &prefix, u64::MAX, Some(MediaKind::Document))
            .await
            .expect("ingest");
        for chunk in plain.chunks(64 * 1024) {
            ingest.push(chunk).await.expect("push");
        }
        let ingested = ingest.finish().await.expect("finish");
        let ingest_time = started.elapsed();
        let blob_path = store.media_blob_path(&ingested.blob.name).unwrap();
        let ciphertext = std::fs::read(&blob_path).expect("blob");

        // The ceiling first (the blob goes with the send).
        let token = base64_url(&ingested.blob.file_enc_sha256);
        let url = format!("https://{media_addr}/mms/document/{token}?auth={auth}&token={token}");
        let body = bytes::Bytes::from(ciphertext);
        let raw_len = body.len();
        let started = Instant::now();
        let answer = http
            .execute(
                HttpRequest::post(url)
                    .with_header("Content-Type", "application/octet-stream")
                    .with_body(body),
            )
            .await
            .expect("raw upload");
        let raw_time = started.elapsed();
        assert!(
            answer.status_code < 300,
            "raw upload answered {}",
            answer.status_code
        );

        let started = Instant::now();
        let out = Outgoing {
            media: Some(QueuedMedia {
                kind: MediaKind::Document,
                ptt: false,
                mimetype: "application/pdf".into(),
                caption: None,
                file_name: Some(format!("bench-{size_mb}.pdf")),
                blob: ingested.blob,
            }),
            ..Outgoing::default()
        };
        let (status, _) = supervisor
            .enqueue_outgoing("media", CONTACT, out, None)
            .await
            .expect("enqueue");
        loop {
            let now = supervisor
                .send_status("media", &status.id)
                .await
                .expect("status")
                .expect("known");
            match now.status {
                SendState::Queued => tokio::time::sleep(Duration::from_millis(5)).await,
                SendState::Failed | SendState::Cancelled => panic!("send failed: {now:?}"),
                _ => break,
            }
        }
        let send_time = started.elapsed();
        let send = mb_per_s(size, send_time);
        let raw = mb_per_s(raw_len, raw_time);
        println!(
            "{:>6}MB  {:>14.1}  {:>16.1}  {:>18.1}  {:>9.0}%",
            size_mb,
            mb_per_s(size, ingest_time),
            send,
            raw,
            100.0 * send / raw
        );
    }
    supervisor.shutdown().await;
}
