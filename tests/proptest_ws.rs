//! Property tests of what `/v1/events` does with client frames (issue 19:
//! every parser of outside input). The socket only sends: text frames
//! (anything, JSON or not) are ignored and the socket stays open; a binary
//! frame of any contents is answered with close 1008; a message over the
//! 16 KiB limit ends the socket. Never a panic, and the daemon keeps
//! serving. One daemon for all cases; each case opens its own socket.

mod common;

use std::time::Duration;

use common::{ADMIN, Daemon, Ws, close_code, next_json, next_message, ws_connect};
use futures_util::SinkExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio_tungstenite::tungstenite::Message;

/// The server's limit on one client message (`MAX_CLIENT_MESSAGE`).
const LIMIT: usize = 16 * 1024;

/// Opens a socket and reads its snapshot. A socket of the previous case
/// may still hold its slot for a moment after its close: retried, bounded.
async fn open(daemon: &Daemon) -> Ws {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ws_connect(daemon.addr, "/v1/events", Some(ADMIN)).await {
            Ok(mut ws) => {
                assert_eq!(next_json(&mut ws, 10).await["type"], "snapshot");
                return ws;
            }
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((status, body)) => panic!("socket refused: {status} {body}"),
        }
    }
}

/// A ping from the client is answered with a pong carrying its payload:
/// the socket is open and reading.
async fn still_open(ws: &mut Ws, payload: &[u8]) -> Result<(), TestCaseError> {
    ws.send(Message::Ping(payload.to_vec().into()))
        .await
        .map_err(|e| TestCaseError::fail(format!("send ping: {e}")))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_message(ws, left).await {
            Some(Some(Message::Pong(p))) if p.as_ref() == payload => return Ok(()),
            Some(Some(Message::Pong(_) | Message::Ping(_))) => continue,
            other => return Err(TestCaseError::fail(format!("no pong: {other:?}"))),
        }
    }
}

async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    while let Some(Some(_)) = next_message(&mut ws, Duration::from_secs(5)).await {}
}

fn text_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,64}",
        2 => ".{0,64}",
        1 => "\\{\"type\":\"[a-z.]{0,12}\"(,\"[a-z]{1,6}\":[0-9]{1,4}){0,3}\\}",
        1 => ".{1000,4000}",
    ]
}

#[test]
fn proptest_client_frames_are_ignored_or_refused_as_documented() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // No session ever starts: the WhatsApp URL is never dialled.
    let (_dir, daemon) = rt.block_on(Daemon::start("ws://127.0.0.1:9/ws/chat"));

    // Any text frames, then a ping: still open, and answered.
    let texts = (
        proptest::collection::vec(text_frame(), 1..5),
        proptest::collection::vec(any::<u8>(), 0..16),
    );
    TestRunner::new(Config::with_cases(48))
        .run(&texts, |(frames, ping)| {
            rt.block_on(async {
                let mut ws = open(&daemon).await;
                for text in &frames {
                    ws.send(Message::Text(text.as_str().into()))
                        .await
                        .map_err(|e| TestCaseError::fail(format!("send: {e}")))?;
                }
                still_open(&mut ws, &ping).await?;
                close(ws).await;
                Ok(())
            })
        })
        .unwrap();

    // Any binary frame, after any text: close 1008.
    let binaries = (
        proptest::collection::vec(text_frame(), 0..3),
        proptest::collection::vec(any::<u8>(), 0..4096),
    );
    TestRunner::new(Config::with_cases(32))
        .run(&binaries, |(texts, binary)| {
            rt.block_on(async {
                let mut ws = open(&daemon).await;
                for text in &texts {
                    let _ = ws.send(Message::Text(text.as_str().into())).await;
                }
                let _ = ws.send(Message::Binary(binary.into())).await;
                prop_assert_eq!(close_code(&mut ws, 10).await, Some(1008));
                close(ws).await;
                Ok(())
            })
        })
        .unwrap();

    // Over the limit, text or binary: the socket ends (the protocol layer
    // refuses the message), whatever came before.
    let oversized = (any::<bool>(), LIMIT + 1..LIMIT * 2, any::<u8>());
    TestRunner::new(Config::with_cases(8))
        .run(&oversized, |(binary, len, byte)| {
            rt.block_on(async {
                let mut ws = open(&daemon).await;
                let message = if binary {
                    Message::Binary(vec![byte; len].into())
                } else {
                    Message::Text("x".repeat(len).into())
                };
                let _ = ws.send(message).await;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match next_message(&mut ws, left).await {
                        None => return Err(TestCaseError::fail("socket still open after 10 s")),
                        Some(None | Some(Message::Close(_))) => break,
                        Some(Some(_)) => continue,
                    }
                }
                Ok(())
            })
        })
        .unwrap();

    // Still serving: REST and a fresh socket.
    rt.block_on(async {
        assert_eq!(daemon.get("/healthz", None).await.status, 200);
        let mut ws = open(&daemon).await;
        still_open(&mut ws, b"done").await.unwrap();
    });
    let log = daemon.log();
    assert!(!log.contains("panicked"), "{}", common::tail(&log));
}
