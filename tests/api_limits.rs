//! Listener limits (issue 12, finding 5): an idle flood cannot take the API
//! down. Idle connections are closed by the server (header-read and idle
//! keep-alive timeouts), one address cannot hold every connection, and at
//! the total cap the oldest idle connection makes room for a new one.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{ADMIN, Daemon, Options, closed_by_server, connect_from, next_json, ws_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bounded client: the whole request must be answered within 5 s.
async fn timed_get(daemon: &Daemon, path: &str, token: Option<&str>) -> (u16, Duration) {
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), daemon.get(path, token))
        .await
        .unwrap_or_else(|_| panic!("GET {path} not answered within 5 s"));
    (response.status, started.elapsed())
}

/// One request on an already open connection; the status.
async fn get_on(stream: &mut TcpStream, path: &str) -> u16 {
    let head = format!("GET {path} HTTP/1.1\r\nHost: whatsd\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("answer within 5 s")
        .expect("read");
    common::parse_response(&raw).expect("HTTP answer").status
}

/// How many of `streams` the server has closed within `within` (polled).
async fn count_closed(streams: &mut [TcpStream], within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    let mut closed = vec![false; streams.len()];
    loop {
        for (stream, closed) in streams.iter_mut().zip(closed.iter_mut()) {
            if !*closed {
                *closed = closed_by_server(stream, Duration::from_millis(1)).await;
            }
        }
        let n = closed.iter().filter(|c| **c).count();
        if n == streams.len() || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_cannot_take_the_api_down() {
    common::init_tracing();
    let nofile = common::raise_nofile_limit();
    assert!(
        nofile > 1_300,
        "this test needs ~1,200 descriptors; have {nofile}"
    );
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    // One client address holds the flood: the total cap (1,024) is what is
    // under test here, not the per-address one.
    let options = Options {
        extra_toml: "[api]\nmax_connections = 1024\nmax_connections_per_address = 4096\n\
                     header_read_timeout = \"60s\"\n"
            .into(),
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;

    let started = Instant::now();
    let mut idle = Vec::with_capacity(1_100);
    for _ in 0..1_100 {
        idle.push(TcpStream::connect(daemon.addr).await.expect("connect"));
    }
    println!("opened 1,100 idle connections in {:?}", started.elapsed());

    let (status, healthz) = timed_get(&daemon, "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, admin) = timed_get(&daemon, "/v1/sessions", Some(ADMIN)).await;
    assert_eq!(status, 200);
    println!(
        "under 1,100 idle connections: /healthz {healthz:?}, admin GET /v1/sessions {admin:?}"
    );
    // WebSocket upgrades still work through the new listener.
    let mut ws = ws_connect(daemon.addr, "/v1/events", Some(ADMIN))
        .await
        .expect("socket under the flood");
    assert_eq!(next_json(&mut ws, 5).await["type"], "snapshot");

    // The cap held: the oldest idle connections were closed to make room
    // (76 for the flood past the cap of 1,024, one for the first fresh
    // connection; the ones after it found the room it left).
    let closed = count_closed(&mut idle[..200], Duration::from_secs(5)).await;
    println!("{closed} of the 200 oldest idle connections closed by the server");
    assert!(
        closed >= 77,
        "only {closed} of the oldest idle connections were evicted"
    );
    assert_eq!(
        count_closed(&mut idle[1_000..], Duration::from_millis(200)).await,
        0,
        "the newest idle connections are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_by_the_server() {
    common::init_tracing();
    common::raise_nofile_limit();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = Options {
        extra_toml: "[api]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n".into(),
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let started = Instant::now();
    // Silent connections, and one that never finishes its request head.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(daemon.addr).await.expect("connect"));
    }
    let mut partial = TcpStream::connect(daemon.addr).await.expect("connect");
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A kept-alive connection after one answered request.
    let mut kept = TcpStream::connect(daemon.addr).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let answered = Instant::now();

    assert_eq!(
        count_closed(&mut silent, Duration::from_secs(15)).await,
        20,
        "silent connections must be closed by the server"
    );
    println!("silent connections closed after {:?}", started.elapsed());
    assert!(
        closed_by_server(&mut partial, Duration::from_secs(15)).await,
        "a connection that never completes its head must be closed"
    );
    assert!(
        closed_by_server(&mut kept, Duration::from_secs(15)).await,
        "an idle kept-alive connection must be closed"
    );
    let kept_for = answered.elapsed();
    println!("idle kept-alive connection closed {kept_for:?} after its answer");
    assert!(
        kept_for >= Duration::from_millis(1500),
        "idle_timeout (2 s), not header_read_timeout: {kept_for:?}"
    );
    assert_eq!(timed_get(&daemon, "/healthz", None).await.0, 200);
    // The daemon logged its open-files limits at start.
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("open files limit"))
        .unwrap_or_else(|| panic!("no open files limit in the log:\n{}", common::tail(&log)));
    assert!(line.contains("soft") && line.contains("hard"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection() {
    common::init_tracing();
    common::raise_nofile_limit();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let options = Options {
        extra_toml: "[api]\nmax_connections_per_address = 8\nheader_read_timeout = \"60s\"\n"
            .into(),
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let mut local = TcpStream::connect(daemon.addr).await.expect("connect");

    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(connect_from(daemon.addr, other).await.expect("connect"));
    }
    // The ninth from that address pushes out its oldest idle one...
    let mut ninth = connect_from(daemon.addr, other).await.expect("connect");
    assert!(
        closed_by_server(&mut flood[0], Duration::from_secs(5)).await,
        "the address's oldest idle connection makes room"
    );
    assert_eq!(get_on(&mut ninth, "/healthz").await, 200);
    // ...and leaves other addresses alone.
    assert_eq!(get_on(&mut local, "/healthz").await, 200);
    drop(flood);

    // When every connection of the address is busy (WebSockets), a new
    // one is refused with 503.
    let mut sockets = Vec::new();
    for _ in 0..8 {
        let tcp = connect_from(daemon.addr, other).await.expect("connect");
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}/v1/events", daemon.addr),
            )
            .unwrap();
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {ADMIN}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
            .await
            .expect("socket within the cap");
        assert_eq!(next_json(&mut ws, 5).await["type"], "snapshot");
        sockets.push(ws);
    }
    let mut refused = connect_from(daemon.addr, other).await.expect("connect");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut raw))
        .await
        .expect("refused at once")
        .ok();
    let answer = common::parse_response(&raw).expect("an HTTP answer");
    assert_eq!(answer.status, 503);
    assert_eq!(answer.error_code(), "too_many_connections");
    // The loopback address still gets in.
    assert_eq!(timed_get(&daemon, "/healthz", None).await.0, 200);
}
