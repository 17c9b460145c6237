//! Bad input is answered with the right 4xx and a JSON error, and the
//! daemon keeps serving.

mod common;

use std::time::Duration;

use common::{ADMIN, Daemon, close_code, next_json, request, ws_connect, ws_send_text};
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn post_raw(
    daemon: &Daemon,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> common::Response {
    request(
        daemon.addr,
        "POST",
        path,
        Some(ADMIN),
        Some((content_type, body.to_vec())),
    )
    .await
}

fn expect(r: &common::Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.error_code(), code, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_the_daemon_keeps_serving() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let json_type = "application/json";

    expect(
        &post_raw(&daemon, "/v1/sessions", json_type, b"{\"id\": ").await,
        400,
        "malformed_json",
    );
    expect(
        &post_raw(&daemon, "/v1/sessions", json_type, b"{\"id\":\"x\",}").await,
        400,
        "malformed_json",
    );
    expect(
        &post_raw(
            &daemon,
            "/v1/sessions",
            json_type,
            br#"{"id":"x","colour":"red"}"#,
        )
        .await,
        422,
        "invalid_body",
    );
    expect(
        &post_raw(&daemon, "/v1/sessions", json_type, br#"{"start":"yes"}"#).await,
        422,
        "invalid_body",
    );
    expect(
        &post_raw(&daemon, "/v1/sessions", "text/plain", br#"{"id":"x"}"#).await,
        415,
        "unsupported_media_type",
    );
    expect(
        &post_raw(
            &daemon,
            "/v1/tenants",
            "application/x-www-form-urlencoded",
            b"id=x",
        )
        .await,
        415,
        "unsupported_media_type",
    );
    let huge = vec![b' '; 2 * 1024 * 1024];
    expect(
        &post_raw(&daemon, "/v1/sessions", json_type, &huge).await,
        413,
        "body_too_large",
    );

    // Ids in bodies: 422.
    let long = "a".repeat(65);
    for id in ["../x", "", long.as_str(), "café", "UPPER", "a b"] {
        let r = daemon
            .post(
                "/v1/sessions",
                Some(ADMIN),
                Some(json!({ "id": id, "start": false })),
            )
            .await;
        expect(&r, 422, "invalid_id");
    }
    for id in ["../x", "", "Ünïcode"] {
        let r = daemon
            .post("/v1/tenants", Some(ADMIN), Some(json!({ "id": id })))
            .await;
        expect(&r, 422, "invalid_id");
    }
    // Ids in paths: 400.
    for path in [
        "/v1/sessions/..%2Fx",
        "/v1/sessions/caf%C3%A9",
        &format!("/v1/sessions/{long}"),
        "/v1/sessions/%FF",
        "/v1/sessions/..%2F..%2Fetc%2Fpasswd/qr",
    ] {
        let r = daemon.get(path, Some(ADMIN)).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        r.error_code();
    }

    // Unknown things.
    expect(
        &daemon.get("/v1/sessions/nope", Some(ADMIN)).await,
        404,
        "not_found",
    );
    expect(
        &daemon
            .post("/v1/sessions/nope/start", Some(ADMIN), None)
            .await,
        404,
        "not_found",
    );
    expect(
        &daemon.get("/v1/nothing-here", Some(ADMIN)).await,
        404,
        "route_not_found",
    );
    expect(
        &daemon.delete("/v1/sessions", Some(ADMIN)).await,
        405,
        "method_not_allowed",
    );
    expect(
        &daemon.get("/v1/sessions?state=flying", Some(ADMIN)).await,
        400,
        "bad_query",
    );
    expect(
        &daemon.get("/v1/sessions?colour=red", Some(ADMIN)).await,
        400,
        "bad_query",
    );

    // Wrong state and bad values.
    let created = daemon
        .post(
            "/v1/sessions",
            Some(ADMIN),
            Some(json!({ "id": "idle", "start": false })),
        )
        .await;
    assert_eq!(created.status, 201);
    let dup = daemon
        .post("/v1/sessions", Some(ADMIN), Some(json!({ "id": "idle" })))
        .await;
    expect(&dup, 409, "already_exists");
    let send = daemon
        .post(
            "/v1/sessions/idle/messages",
            Some(ADMIN),
            Some(json!({ "to": "15550001111", "text": "hi" })),
        )
        .await;
    expect(&send, 409, "not_paired");
    let send = daemon
        .post(
            "/v1/sessions/idle/messages",
            Some(ADMIN),
            Some(json!({ "to": "15550001111" })),
        )
        .await;
    expect(&send, 422, "invalid_body");
    let code = daemon
        .post(
            "/v1/sessions/idle/pair-code",
            Some(ADMIN),
            Some(json!({ "phone": "call me" })),
        )
        .await;
    expect(&code, 422, "invalid_phone");
    expect(
        &daemon.get("/v1/sessions/idle/qr", Some(ADMIN)).await,
        404,
        "not_started",
    );
    expect(
        &daemon
            .get("/v1/sessions/idle/qr?format=gif", Some(ADMIN))
            .await,
        400,
        "bad_query",
    );
    expect(
        &daemon.get("/v1/phones/not-a-phone", Some(ADMIN)).await,
        400,
        "invalid_phone",
    );

    // Missing and wrong tokens.
    expect(&daemon.get("/v1/sessions", None).await, 401, "unauthorized");
    expect(
        &daemon.get("/v1/sessions", Some("wd_0000")).await,
        401,
        "unauthorized",
    );
    let basic = common::raw_request(
        daemon.addr,
        format!("GET /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {ADMIN}\r\nConnection: close\r\n\r\n").into_bytes(),
        Vec::new(),
    )
    .await;
    assert_eq!(basic.status, 401);

    // WebSocket: a bad ticket, not an upgrade, garbage from the client.
    let (status, body) = ws_connect(daemon.addr, "/v1/events?ticket=wdt_bogus", None)
        .await
        .expect_err("refused");
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    expect(
        &daemon.get("/v1/events", Some(ADMIN)).await,
        400,
        "not_a_websocket",
    );
    let (status, _) = ws_connect(daemon.addr, "/v1/events?session=..%2Fx", Some(ADMIN))
        .await
        .expect_err("refused");
    assert_eq!(status, 400);

    let mut ws = ws_connect(daemon.addr, "/v1/events", Some(ADMIN))
        .await
        .expect("opens");
    assert_eq!(next_json(&mut ws, 10).await["type"], "snapshot");
    ws_send_text(&mut ws, "{ not json at all").await;
    ws_send_text(&mut ws, "").await;
    let _ = ws
        .send(Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into()))
        .await;
    assert_eq!(close_code(&mut ws, 10).await, Some(1008));

    // Raw bytes that are not WebSocket frames at all, after a valid handshake.
    let mut tcp = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    let handshake = format!(
        "GET /v1/events HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {ADMIN}\r\n\r\n",
        daemon.addr
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    tcp.write_all(&[0xff; 64]).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink))
        .await
        .expect("the server drops a socket that sends garbage")
        .ok();

    // Still serving, REST and WebSocket.
    assert_eq!(daemon.get("/healthz", None).await.status, 200);
    assert_eq!(daemon.get("/readyz", None).await.status, 200);
    assert_eq!(
        daemon.get("/v1/sessions/idle", Some(ADMIN)).await.status,
        200
    );
    let mut ws = ws_connect(daemon.addr, "/v1/events?session=idle", Some(ADMIN))
        .await
        .expect("opens");
    assert_eq!(next_json(&mut ws, 10).await["sessions"][0]["id"], "idle");
    assert!(
        !daemon.log().contains("panicked"),
        "{}",
        common::tail(&daemon.log())
    );
}
