//! Crash test: every write the sled backend acknowledged survives SIGKILL.
//!
//! The parent re-runs this test binary as a child (`crash_child`, selected
//! by an environment variable). The child writes batches through the durable
//! paths forever and prints `WHATSD-ACK <n>` after each one returns `Ok`.
//! The parent SIGKILLs it after a random number of acks (the child keeps
//! writing, so the kill lands mid-write), reopens the store and checks that
//! every acknowledged batch is there and readable. Several rounds reuse the
//! same store, so recovery after a crash is itself crashed into.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use wacore::store::traits::{
    MsgSecretEntry, MsgSecretStore, PendingInboundRow, ProtocolStore, SignalStore,
};
use whatsd::store::{MasterKey, Store};

const CHILD_ENV: &str = "WHATSD_STORE_CRASH_CHILD";
const DIR_ENV: &str = "WHATSD_STORE_CRASH_DIR";
const BASE_ENV: &str = "WHATSD_STORE_CRASH_BASE";
const ACK: &str = "WHATSD-ACK ";
const ROUNDS: u64 = 4;
const ROWS_PER_BATCH: u64 = 8;
/// Upper bound on how long the parent waits for the next ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

fn key_file(dir: &Path) -> PathBuf {
    dir.join("test-master.key")
}

fn address(batch: u64, row: u64) -> String {
    format!("{batch}{row:02}@s.whatsapp.net")
}

fn payload(batch: u64, row: u64) -> Vec<u8> {
    format!("batch {batch} row {row} ").repeat(8).into_bytes()
}

fn identity(batch: u64, row: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&batch.to_be_bytes());
    key[8..16].copy_from_slice(&row.to_be_bytes());
    key
}

/// Prekey ids: batch `n`'s rows, 8 consecutive ids (u32: rounds start at
/// multiples of 1,000,000, well below 2^32 / 8).
fn prekey_id(n: u64, row: u64) -> u32 {
    u32::try_from(n * ROWS_PER_BATCH + row).expect("prekey id fits u32")
}

/// Batches alternate the uploaded flag.
fn uploaded(n: u64) -> bool {
    n.is_multiple_of(2)
}

/// Batch `n` uses one of the durable write paths, in rotation.
async fn write_batch(b: &whatsd::store::DeviceBackend, n: u64) {
    let rows: Vec<u64> = (0..ROWS_PER_BATCH).collect();
    match n % 6 {
        0 => {
            let batch: Vec<(Arc<str>, Bytes)> = rows
                .iter()
                .map(|&r| (address(n, r).into(), Bytes::from(payload(n, r))))
                .collect();
            b.put_sessions_batch(&batch).await.expect("sessions batch");
        }
        1 => {
            let batch: Vec<(Arc<str>, Bytes)> = rows
                .iter()
                .map(|&r| (address(n, r).into(), Bytes::from(payload(n, r))))
                .collect();
            b.put_sender_keys_batch(&batch)
                .await
                .expect("sender keys batch");
        }
        2 => {
            let batch: Vec<(Arc<str>, [u8; 32])> = rows
                .iter()
                .map(|&r| (address(n, r).into(), identity(n, r)))
                .collect();
            b.put_identities_batch(&batch)
                .await
                .expect("identities batch");
        }
        3 => {
            // Consecutive prekey batches share buckets (64 ids to a row),
            // so a later batch rewrites a row holding acknowledged ones.
            let batch: Vec<(u32, Bytes)> = rows
                .iter()
                .map(|&r| (prekey_id(n, r), Bytes::from(payload(n, r))))
                .collect();
            b.store_prekeys_batch(&batch, uploaded(n))
                .await
                .expect("prekeys batch");
        }
        4 => {
            // Message secrets live in the history database (src/store/dbs.rs):
            // its writes are durable through the same group commit.
            let batch: Vec<MsgSecretEntry> = rows
                .iter()
                .map(|&r| MsgSecretEntry {
                    chat: Arc::from("chat@g.us"),
                    sender: Arc::from("sender@lid"),
                    msg_id: Arc::from(address(n, r)),
                    secret: identity(n, r),
                    expires_at: 0,
                    message_ts: n as i64,
                })
                .collect();
            b.put_msg_secrets(batch).await.expect("message secrets");
        }
        _ => {
            let ids: Vec<String> = rows.iter().map(|&r| address(n, r)).collect();
            let bodies: Vec<Vec<u8>> = rows.iter().map(|&r| payload(n, r)).collect();
            let batch: Vec<PendingInboundRow<'_>> = ids
                .iter()
                .zip(&bodies)
                .map(|(id, body)| PendingInboundRow {
                    chat: "chat@g.us",
                    sender: "sender@lid",
                    id,
                    message: body,
                })
                .collect();
            b.store_pending_inbound_batch(&batch)
                .await
                .expect("pending inbound batch");
        }
    }
}

async fn assert_batch_present(b: &whatsd::store::DeviceBackend, n: u64) {
    for r in 0..ROWS_PER_BATCH {
        let a = address(n, r);
        let what = format!("acknowledged batch {n} row {r}");
        match n % 6 {
            0 => assert_eq!(
                b.get_session(&a).await.expect(&what).as_deref(),
                Some(&payload(n, r)[..]),
                "{what} (session)"
            ),
            1 => assert_eq!(
                b.get_sender_key(&a).await.expect(&what),
                Some(payload(n, r)),
                "{what} (sender key)"
            ),
            2 => assert_eq!(
                b.load_identity(&a).await.expect(&what),
                Some(identity(n, r)),
                "{what} (identity)"
            ),
            3 => assert_eq!(
                b.load_prekey(prekey_id(n, r))
                    .await
                    .expect(&what)
                    .as_deref(),
                Some(&payload(n, r)[..]),
                "{what} (prekey)"
            ),
            4 => assert_eq!(
                b.get_msg_secret("chat@g.us", "sender@lid", &a)
                    .await
                    .expect(&what),
                Some(identity(n, r).to_vec()),
                "{what} (message secret)"
            ),
            _ => assert_eq!(
                b.get_pending_inbound("chat@g.us", "sender@lid", &a)
                    .await
                    .expect(&what),
                Some(payload(n, r)),
                "{what} (pending inbound)"
            ),
        }
    }
}

/// The child (this same test, re-run with `CHILD_ENV` set): write forever,
/// acknowledging each durable batch on stdout.
fn crash_child() {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("data dir"));
    let base: u64 = std::env::var(BASE_ENV)
        .expect("base")
        .parse()
        .expect("base number");
    let key = MasterKey::from_file(&key_file(&dir)).expect("key");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = Store::open(&dir, &key).expect("open store");
        let backend = store.device_backend("crash").expect("backend");
        let mut out = std::io::stdout().lock();
        for n in base.. {
            write_batch(&backend, n).await;
            writeln!(out, "\n{ACK}{n}").expect("ack");
            out.flush().expect("ack flush");
        }
    });
}

fn random_below(bound: u32) -> u32 {
    let mut bytes = [0u8; 4];
    SystemRandom::new().fill(&mut bytes).expect("random");
    u32::from_be_bytes(bytes) % bound
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return crash_child();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let key = MasterKey::generate().expect("key");
    key.write_new_file(&key_file(dir.path())).expect("key file");
    let exe = std::env::current_exe().expect("test executable");
    let mut acked: Vec<u64> = Vec::new();

    for round in 0..ROUNDS {
        let kill_after = 1 + random_below(150) as usize;
        let mut child = Command::new(&exe)
            .args([
                "acknowledged_writes_survive_sigkill",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .env(DIR_ENV, dir.path())
            .env(BASE_ENV, (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line
                    .find(ACK)
                    .and_then(|at| line[at + ACK.len()..].trim().parse().ok())
                    && tx.send(n).is_err()
                {
                    break;
                }
            }
        });

        let mut this_round = 0usize;
        while this_round < kill_after {
            match rx.recv_timeout(ACK_TIMEOUT) {
                Ok(n) => {
                    acked.push(n);
                    this_round += 1;
                }
                Err(err) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!("round {round}: no ack after {this_round} ({err:?}); child: {status:?}");
                }
            }
        }
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap child");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "round {round}: the child must die by SIGKILL, not exit ({status:?})"
            );
        }
        // Acks already in the pipe when the kill landed count too.
        reader.join().expect("reader thread");
        acked.extend(rx.try_iter());

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let store = Store::open(dir.path(), &key).expect("reopen after SIGKILL");
            let backend = store.device_backend("crash").expect("backend");
            for &n in &acked {
                assert_batch_present(&backend, n).await;
            }
        });
    }
    assert!(acked.len() >= ROUNDS as usize);
    eprintln!(
        "{} acknowledged batches over {ROUNDS} SIGKILL rounds all survived",
        acked.len()
    );
}
