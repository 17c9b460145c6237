//! Why the soak's disk grows (issue 19): sled 0.34 alone, no whatsd.
//!
//! `cargo bench --offline --bench sled_growth` (env `SLED_GROWTH_STEPS`,
//! default 50,000; prints numbers, asserts nothing).
//!
//! A store shaped like whatsd's: 200 trees of 16 stable 2 KiB rows (the
//! device keyspaces), and per step nine overwrites of one of their five hot
//! rows (Signal sessions, sender keys) and, depending on the case, one new
//! 220-byte row in another tree (a send's status; the library's message
//! secrets and retry copies grow the same way); a flush every 100 steps
//! (`SLED_GROWTH_FLUSH_EVERY`), as the group commit does. Cases, each in a
//! fresh database:
//!
//! - `hot only`: the overwrites, nothing grows;
//! - `hot + growing tree`: plus the new rows at random keys, same database;
//! - `hot + growing tree, keys in order`: the new rows at increasing keys;
//! - `hot + growing tree in a 2nd db`: the new rows in a database of their
//!   own;
//! - `history db alone`: only the second database's share of whatsd's
//!   history database: each new row is overwritten three times soon after
//!   (a send's status: queued, sent, delivered, read), and a queue row is
//!   inserted and removed per step.
//!
//! - `hot + outbox and buffer churn`: hot rows, plus 1 KiB queue items in
//!   and out (50 steps later) and a buffer row in and out per step;
//! - `hot + a re-pairing every 1,000 steps`: hot rows, plus one tree
//!   dropped and made again with its stable rows; `… emptied, kept`: the
//!   tree emptied by one batch of removes instead (what `Store::wipe_device`
//!   does); `… emptied, dropped`: emptied, then dropped;
//! - `hot + outbox with receiver outages`: the churn case, but the queue's
//!   receiver is away for 1,500 of every 7,000 steps (the queue grows to
//!   1,500 items, then drains), as in the soak.
//!
//! `SLED_GROWTH_FLUSHER_MS=N` opens the databases with sled's periodic
//! flusher every N ms (whatsd keeps it off, see `sled_gate`): the only
//! place sled 0.34 rewrites pages out of mostly-dead segments in a loop
//! (`attempt_gc`), besides one page per node replacement.
//!
//! Printed per case: the bytes of live rows written, and what the
//! databases' directories take on disk at the end (allocated blocks, as
//! `du` and the soak count them); the load average before and after.

mod stats;
use stats::{disk_bytes, loadavg};

use std::path::Path;
use std::time::Instant;

const TREES: usize = 200;
const STABLE_ROWS: u32 = 16;
const HOT_ROWS: u64 = 5;
const VALUE: usize = 2048;
const OVERWRITES_PER_STEP: u64 = 9;
const GROWING_ROW: usize = 220;

#[derive(Clone, Copy, PartialEq)]
enum Growth {
    None,
    Random,
    InOrder,
    OwnDb,
    History,
    /// `History`, plus per step two rows in one of 200 per-session trees.
    HistoryTrees,
    /// Hot rows, plus a queue (1 KiB items in, out 50 steps later) and a
    /// buffer row in and out per step: the outbox and pending-inbound rows.
    HotQueue,
    /// Hot rows, plus one tree dropped and made again (its stable rows
    /// written anew) every 1,000 steps: a re-pairing.
    HotRepair,
    /// `HotRepair`, the tree emptied by one batch of removes instead of
    /// dropped.
    HotRepairClear,
    /// `HotRepair`, the tree emptied by one batch of removes, then dropped.
    HotRepairClearDrop,
    /// `HotQueue`, but the queue's receiver is away for 1,500 of every
    /// 7,000 steps: the queue grows, then drains (the soak's receiver
    /// outages).
    HotQueueOutage,
}

fn open(path: &Path) -> sled::Db {
    let flusher = std::env::var("SLED_GROWTH_FLUSHER_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    sled::Config::new()
        .path(path)
        .cache_capacity(64 << 20)
        .flush_every_ms(flusher)
        .open()
        .expect("open sled")
}

fn run(name: &str, growth: Growth, steps: u64) {
    let flush_every: u64 = std::env::var("SLED_GROWTH_FLUSH_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open(&dir.path().join("db"));
    let own = open(&dir.path().join("growth"));
    let trees = if matches!(growth, Growth::History | Growth::HistoryTrees) {
        0
    } else {
        TREES
    };
    let mut hot: Vec<sled::Tree> = (0..trees)
        .map(|i| db.open_tree(format!("device/{i}")).expect("tree"))
        .collect();
    for tree in &hot {
        for k in 0..STABLE_ROWS {
            tree.insert(k.to_be_bytes(), vec![1u8; VALUE])
                .expect("insert");
        }
    }
    let growing = match growth {
        Growth::OwnDb | Growth::History | Growth::HistoryTrees => own.open_tree("send_status"),
        _ => db.open_tree("send_status"),
    }
    .expect("tree");
    let queue = match growth {
        Growth::HotQueue | Growth::HotQueueOutage => db.open_tree("webhook_outbox"),
        _ => own.open_tree("send_queue"),
    }
    .expect("tree");
    let sessions: Vec<sled::Tree> = if growth == Growth::HistoryTrees {
        (0..TREES)
            .map(|i| own.open_tree(format!("device_history/{i}")).expect("tree"))
            .collect()
    } else {
        Vec::new()
    };
    let started = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut grown = 0u64;
    let mut recent: std::collections::VecDeque<Vec<u8>> = Default::default();
    for step in 0..steps {
        if let Some(tree) = sessions.get(step as usize % TREES.max(1)) {
            for len in [110usize, 85] {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                tree.insert(x.to_be_bytes(), vec![5u8; len])
                    .expect("insert");
                grown += len as u64;
            }
        }
        if matches!(growth, Growth::History | Growth::HistoryTrees) {
            queue
                .insert(step.to_be_bytes(), vec![3u8; 400])
                .expect("insert");
            queue.remove(step.to_be_bytes()).expect("remove");
            if let Some(key) = recent.get(step as usize % 16) {
                growing
                    .insert(key.clone(), vec![8u8; GROWING_ROW])
                    .expect("insert");
            }
        }
        if matches!(growth, Growth::HotQueue | Growth::HotQueueOutage) {
            queue
                .insert(step.to_be_bytes(), vec![4u8; 1024])
                .expect("insert");
            let away = growth == Growth::HotQueueOutage && step % 7000 >= 5500;
            if !away {
                // Everything older than 50 steps leaves, the backlog too.
                while let Some(first) = queue.first().expect("first") {
                    let at = u64::from_be_bytes(first.0.as_ref().try_into().expect("key"));
                    if at + 50 > step {
                        break;
                    }
                    queue.remove(first.0).expect("remove");
                }
            }
            let buffer = &hot[step as usize % TREES];
            buffer.insert(b"pending", vec![6u8; 300]).expect("insert");
            buffer.remove(b"pending").expect("remove");
        }
        if matches!(
            growth,
            Growth::HotRepair | Growth::HotRepairClear | Growth::HotRepairClearDrop
        ) && step % 1000 == 999
        {
            let at = (step / 1000) as usize % TREES;
            let name = format!("device/{at}");
            if growth == Growth::HotRepair {
                db.drop_tree(name.as_bytes()).expect("drop");
            } else {
                let mut batch = sled::Batch::default();
                for key in hot[at].iter().keys() {
                    batch.remove(key.expect("key"));
                }
                hot[at].apply_batch(batch).expect("clear");
                if growth == Growth::HotRepairClearDrop {
                    db.drop_tree(name.as_bytes()).expect("drop");
                }
            }
            let tree = db.open_tree(name).expect("tree");
            for k in 0..STABLE_ROWS {
                tree.insert(k.to_be_bytes(), vec![2u8; VALUE])
                    .expect("insert");
            }
            hot[at] = tree;
        }
        for j in 0..OVERWRITES_PER_STEP {
            if matches!(growth, Growth::History | Growth::HistoryTrees) {
                break;
            }
            let tree = &hot[((step * OVERWRITES_PER_STEP + j) % TREES as u64) as usize];
            let key = (((step + j) % HOT_ROWS) as u32).to_be_bytes();
            tree.insert(key, vec![(step % 251) as u8; VALUE])
                .expect("insert");
        }
        let key = match growth {
            Growth::None
            | Growth::HotQueue
            | Growth::HotQueueOutage
            | Growth::HotRepair
            | Growth::HotRepairClear
            | Growth::HotRepairClearDrop => None,
            Growth::InOrder => Some(step.to_be_bytes().to_vec()),
            Growth::Random | Growth::OwnDb | Growth::History | Growth::HistoryTrees => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Some([x.to_be_bytes(), step.to_be_bytes()].concat())
            }
        };
        if let Some(key) = key {
            growing
                .insert(key.clone(), vec![7u8; GROWING_ROW])
                .expect("insert");
            grown += GROWING_ROW as u64;
            recent.push_front(key);
            recent.truncate(48);
        }
        if step % flush_every == flush_every - 1 {
            db.flush().expect("flush");
            own.flush().expect("flush");
        }
    }
    db.flush().expect("flush");
    own.flush().expect("flush");
    let stable = if matches!(growth, Growth::History | Growth::HistoryTrees) {
        0
    } else {
        TREES as u64 * STABLE_ROWS as u64 * VALUE as u64
    };
    let live = stable + grown;
    let (main, second) = (
        disk_bytes(&dir.path().join("db")),
        disk_bytes(&dir.path().join("growth")),
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "{name:<36} {steps:>7} {:>9.1} {:>9.1} {:>9.1} {:>7.1}x {:>6.1}",
        mib(live),
        mib(main),
        mib(second),
        (main + second) as f64 / live as f64,
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let steps: u64 = std::env::var("SLED_GROWTH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    println!("load average {}", loadavg());
    println!(
        "{:<36} {:>7} {:>9} {:>9} {:>9} {:>8} {:>6}",
        "case", "steps", "live MiB", "db MiB", "2nd MiB", "disk/live", "secs"
    );
    let only = std::env::var("SLED_GROWTH_CASES").unwrap_or_default();
    let cases = [
        ("hot only", Growth::None),
        ("hot + growing tree", Growth::Random),
        ("hot + growing tree, keys in order", Growth::InOrder),
        ("hot + growing tree in a 2nd db", Growth::OwnDb),
        ("history db alone", Growth::History),
        ("history db, 200 session trees", Growth::HistoryTrees),
        ("hot + outbox and buffer churn", Growth::HotQueue),
        ("hot + a re-pairing every 1,000 steps", Growth::HotRepair),
        (
            "hot + re-pairing, tree emptied, kept",
            Growth::HotRepairClear,
        ),
        (
            "hot + re-pairing, emptied, dropped",
            Growth::HotRepairClearDrop,
        ),
        ("hot + outbox with receiver outages", Growth::HotQueueOutage),
    ];
    for (at, (name, growth)) in cases.into_iter().enumerate() {
        if only.is_empty() || only.split(',').any(|c| c == (at + 1).to_string()) {
            run(name, growth, steps);
        }
    }
    println!("load average {}", loadavg());
}
