//! Router-level tests: the API served in-process, through the daemon's own
//! listener, over a real supervisor and store, with a small body cap.
//! (Connection limits: tests/api_limits.rs.)

mod common;

use std::sync::Arc;

use tokio_util::sync::DropGuard;
use whatsd::api::auth::{Auth, hash_token};
use whatsd::api::listener::{self, Limits};
use whatsd::api::{AppState, router};
use whatsd::config::Config;
use whatsd::session::Supervisor;
use whatsd::store::{MasterKey, Store};
use whatsd::task::TaskScope;

struct InProcess {
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _stop: DropGuard,
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
    let scope = TaskScope::root();
    let state = AppState::new(supervisor, store, auth, config.clone(), scope.clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(listener::serve(
        listener,
        router(state),
        Limits::from_config(&config.api),
        scope.clone(),
    ));
    InProcess {
        addr,
        _dir: dir,
        _stop: scope.token().drop_guard(),
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
