//! `/v1/openapi.json` is an OpenAPI 3.1 document that lists exactly the
//! routes the daemon serves, with exactly the methods each one takes.

mod common;

use std::collections::BTreeSet;

use common::{ADMIN, Daemon, request};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The routes registered in the router's source, with `/v1` for the nested ones.
fn routes_in_source() -> BTreeSet<String> {
    let source = include_str!("../src/api/mod.rs");
    source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .map(|path| {
            if path == "/healthz" || path == "/readyz" || path == "/metrics" {
                path.to_string()
            } else {
                format!("/v1{path}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let r = daemon.get("/v1/openapi.json", None).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");

    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(
        documented,
        routes_in_source(),
        "documented paths vs. router"
    );

    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "probe")
            .replace("{phone}", "15550000000");
        for method in METHODS {
            let r = request(
                daemon.addr,
                &method.to_uppercase(),
                &concrete,
                Some(ADMIN),
                None,
            )
            .await;
            if let Some(op) = item.get(method) {
                assert!(op["responses"].is_object(), "{method} {path} has responses");
                assert_ne!(
                    r.status, 405,
                    "{method} {path} is documented but not served"
                );
                if r.status == 404 {
                    assert_ne!(
                        r.error_code(),
                        "route_not_found",
                        "{method} {path} is documented but not routed"
                    );
                }
            } else {
                assert_eq!(
                    r.status,
                    405,
                    "{method} {path} is served but not documented: {}",
                    r.text()
                );
            }
        }
    }
}
