//! `/v1/openapi.json` is a well-formed OpenAPI 3.1 document, and the running
//! daemon serves exactly what it documents: every documented path and method
//! reaches a handler, every other method on those paths answers 405.
//! (`tests/openapi/run.sh` goes further: schemathesis against a demo daemon.)

mod common;

use std::collections::BTreeSet;

use common::{ADMIN, Daemon, Options, request};
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// A value for each path parameter that passes its pattern.
fn concrete(path: &str) -> String {
    path.replace("{id}", "probe")
        .replace("{name}", "probe")
        .replace("{dead}", "1")
        .replace("{phone}", "15550000000")
}

/// The error code of an answer, if it is an API error.
fn code(r: &common::Response) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Every `$ref` in `value`, with where it was found.
fn refs<'a>(value: &'a Value, at: &str, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref"
                    && let Some(target) = v.as_str()
                {
                    out.push((at.to_string(), target));
                } else {
                    refs(v, &format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The structure a client generator or schemathesis relies on.
fn check_structure(doc: &Value) {
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer",
        "the bearer scheme is declared"
    );

    let mut found = Vec::new();
    refs(doc, "#", &mut found);
    assert!(!found.is_empty(), "the document uses components");
    for (at, target) in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: external $ref {target}"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{at}: $ref {target} does not resolve"
        );
    }

    let mut operation_ids = BTreeSet::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let in_template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let what = format!("{method} {path}");
            let id = op["operationId"].as_str().expect("operationId");
            assert!(
                operation_ids.insert(id.to_string()),
                "{what}: operationId {id} twice"
            );

            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let declared: BTreeSet<&str> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().expect("parameter name"))
                .collect();
            assert_eq!(declared, in_template, "{what}: path parameters");
            for p in params.iter().filter(|p| p["in"] == "path") {
                assert_eq!(p["required"], true, "{what}: path parameters are required");
                assert!(
                    p["schema"]["pattern"].is_string(),
                    "{what}: path parameter {} has a pattern",
                    p["name"]
                );
            }

            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{what}: a success answer is documented"
            );
            for (status, response) in responses {
                assert!(
                    response["description"].is_string(),
                    "{what} {status}: description"
                );
                // The Graph-compatible routes answer Meta's error shape.
                let ours = !path.starts_with("/graph/");
                if ours && (status.starts_with('4') || status.starts_with('5')) {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{what} {status}: errors are {{error:{{code,message}}}}"
                    );
                }
            }
            let public = op["security"] == serde_json::json!([{}]);
            if !public {
                assert!(responses.contains_key("401"), "{what}: 401 documented");
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{what}: {status} documented"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    // A demo build serves only with --demo (its embedded fake then replaces
    // this one).
    let options = Options {
        args: if cfg!(feature = "demo") {
            vec!["--demo".into()]
        } else {
            Vec::new()
        },
        ..Options::default()
    };
    let (_dir, daemon) = Daemon::start_with(&fake.ws_url(), options).await;
    let r = daemon.get("/v1/openapi.json", None).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    check_structure(&doc);

    let paths = doc["paths"].as_object().expect("paths");
    for must in ["/healthz", "/v1/sessions/{id}/messages", "/v1/openapi.json"] {
        assert!(paths.contains_key(must), "{must} is documented");
    }
    assert_eq!(
        paths.contains_key("/v1/demo/sessions/{id}/scan"),
        cfg!(feature = "demo"),
        "the demo routes are documented exactly in demo builds"
    );

    for (path, item) in paths {
        let url = concrete(path);
        for method in METHODS {
            let r = request(daemon.addr, &method.to_uppercase(), &url, Some(ADMIN), None).await;
            if item.get(method).is_some() {
                assert!(
                    r.status != 405 && code(&r) != "route_not_found",
                    "{method} {path} is documented but not served: {} {}",
                    r.status,
                    r.text()
                );
            } else {
                assert_eq!(
                    (r.status, code(&r).as_str()),
                    (405, "method_not_allowed"),
                    "{method} {path} is served but not documented: {}",
                    r.text()
                );
            }
        }
    }

    let r = daemon.get("/v1/no-such-route", Some(ADMIN)).await;
    assert_eq!((r.status, code(&r).as_str()), (404, "route_not_found"));
}
