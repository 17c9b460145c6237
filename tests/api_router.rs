//! Router-level tests: the API served in-process over a real supervisor and
//! store, with small limits: the body cap and the connection cap.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use whatsd::api::auth::{Auth, hash_token};
use whatsd::api::listener::{CappedListener, PeerAddr};
use whatsd::api::{AppState, router};
use whatsd::config::Config;
use whatsd::session::Supervisor;
use whatsd::store::{MasterKey, Store};

struct InProcess {
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

async fn serve(config: Config) -> InProcess {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &MasterKey::from_bytes([5; 32])).unwrap();
    let supervisor = Supervisor::start(store.clone(), config.session_config())
        .await
        .unwrap();
    let auth = Arc::new(Auth::new(
        hash_token(common::ADMIN),
        [],
        config.auth.clone(),
    ));
    let (stop, stopped) = watch::channel(false);
    let state = AppState::new(
        supervisor,
        store,
        auth,
        config.clone(),
        stopped.clone(),
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state).into_make_service_with_connect_info::<PeerAddr>();
    let mut until = stopped;
    tokio::spawn(
        axum::serve(
            CappedListener::new(listener, config.api.max_connections),
            app,
        )
        .with_graceful_shutdown(async move {
            let _ = until.wait_for(|s| *s).await;
        })
        .into_future(),
    );
    InProcess {
        addr,
        _dir: dir,
        _stop: stop,
    }
}

#[tokio::test]
async fn the_body_limit_comes_from_the_config() {
    let mut config = Config::default();
    config.api.body_limit = 2048;
    let api = serve(config).await;
    let small = format!("{{\"id\":\"ok\",\"start\":false{}}}", " ".repeat(1000));
    let r = common::request(
        api.addr,
        "POST",
        "/v1/sessions",
        Some(common::ADMIN),
        Some(("application/json", small.into_bytes())),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let big = format!("{{\"id\":\"big\",\"start\":false{}}}", " ".repeat(4000));
    let r = common::request(
        api.addr,
        "POST",
        "/v1/sessions",
        Some(common::ADMIN),
        Some(("application/json", big.into_bytes())),
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "body_too_large");
    assert_eq!(
        common::request(api.addr, "GET", "/readyz", None, None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let mut config = Config::default();
    config.api.max_connections = 1;
    let api = serve(config).await;
    // Hold the only slot with an idle connection.
    let mut hog = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    hog.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let waiting = tokio::spawn(common::request(api.addr, "GET", "/healthz", None, None));
    // Bounded check that the second request is held back while the slot is taken.
    let held = tokio::time::timeout(Duration::from_millis(300), async {
        while !waiting.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(held.is_err(), "a connection over the cap must wait");
    drop(hog);
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once the slot frees")
        .unwrap();
    assert_eq!(r.status, 200);
}
