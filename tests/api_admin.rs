//! The admin page is served by the daemon itself at `/` and `/admin`, with
//! its script and stylesheet, a strict Content-Security-Policy and no
//! caching; no token is needed to load it (the API calls it makes need one).
//! The page's behaviour in a real browser: `tests/browser/run.sh`.

mod common;

use common::Daemon;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_and_its_assets_are_served() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;

    for path in ["/", "/admin"] {
        let page = daemon.get(path, None).await;
        assert_eq!(page.status, 200, "GET {path}: {}", page.text());
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8"),
            "GET {path}"
        );
        assert_eq!(page.header("cache-control"), Some("no-store"), "GET {path}");
        let csp = page.header("content-security-policy").expect("a CSP");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "CSP lacks {directive:?}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(page.header("x-frame-options"), Some("DENY"));
        let html = page.text();
        assert!(html.contains("<script src=\"/admin/app.js\""), "{html}");
        assert!(html.contains("href=\"/admin/app.css\""), "{html}");
        // No inline script or style: the CSP would block it.
        assert!(!html.contains("<script>") && !html.contains("<style"));
        assert!(!html.contains(" style=\""));
    }

    let script = daemon.get("/admin/app.js", None).await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(script.text().contains("/v1/ws-tickets"));
    let style = daemon.get("/admin/app.css", None).await;
    assert_eq!(style.status, 200);
    assert_eq!(
        style.header("content-type"),
        Some("text/css; charset=utf-8")
    );
    assert_eq!(style.header("cache-control"), Some("no-store"));

    // Anything else under /admin is an ordinary API 404.
    let missing = daemon.get("/admin/nope.js", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "route_not_found");
    let post = daemon.post("/admin", None, None).await;
    assert_eq!(post.status, 405);
}
