//! The store dashboard as the real binary serves it: the page, its files and their
//! headers. The page's behaviour in a browser is tested by `e2e/` in headless Chromium.

mod common;

use common::{HttpClient, Reply, TestServer};

/// The policy every dashboard file must carry, word for word.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn get(server: &TestServer, path: &str) -> Reply {
    let reply = server.http("GET", path, None, None);
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    reply
}

fn assert_static_headers(reply: &Reply, content_type: &str) {
    assert_eq!(reply.header("Content-Type"), Some(content_type));
    assert_eq!(reply.header("Content-Security-Policy"), Some(CSP));
    assert_eq!(reply.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(reply.header("Cache-Control"), Some("no-cache"));
}

#[test]
fn root_serves_the_page_with_a_strict_policy() {
    let server = TestServer::start();
    let page = get(&server, "/");
    assert_static_headers(&page, "text/html; charset=utf-8");

    let html = page.text();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains(r#"<script type="module" src="/dashboard.js"></script>"#));
    assert!(html.contains(r#"<link rel="stylesheet" href="/dashboard.css">"#));
    for field in ["tenant", "store", "token"] {
        assert!(
            html.contains(&format!(r#"<label for="{field}">"#)),
            "no label for {field}"
        );
    }
}

#[test]
fn page_has_no_inline_script_style_or_handler() {
    let server = TestServer::start();
    let html = get(&server, "/").text().to_ascii_lowercase();

    // Every <script> loads a file and holds no code.
    let mut scripts = 0;
    for (at, _) in html.match_indices("<script") {
        let tag_end = at + html[at..].find('>').expect("script tag closes");
        assert!(html[at..tag_end].contains(" src="), "inline script at {at}");
        assert!(
            html[tag_end + 1..].starts_with("</script>"),
            "script body at {at}"
        );
        scripts += 1;
    }
    assert_eq!(scripts, 1);
    assert!(!html.contains("<style"));
    assert!(!html.contains(" style="));
    assert!(!html.contains("javascript:"));
    for handler in [" onclick=", " onload=", " onsubmit=", " onerror="] {
        assert!(!html.contains(handler), "inline handler {handler}");
    }
}

#[test]
fn script_style_client_and_icon_are_served_with_their_types() {
    let server = TestServer::start();
    let cases = [
        (
            "/dashboard.js",
            "text/javascript; charset=utf-8",
            "connectStockAlerts",
        ),
        (
            "/stock-alerts-client.js",
            "text/javascript; charset=utf-8",
            "export function",
        ),
        (
            "/dashboard.css",
            "text/css; charset=utf-8",
            ".alert.minimum_stock",
        ),
        ("/favicon.svg", "image/svg+xml", "<svg"),
    ];
    for (path, content_type, marker) in cases {
        let reply = get(&server, path);
        assert_static_headers(&reply, content_type);
        assert!(reply.text().contains(marker), "{path} lacks {marker}");
    }

    // The client the page imports is the one the examples ship.
    let client = get(&server, "/stock-alerts-client.js");
    let shipped = std::fs::read("examples/browser-client.js").expect("example client");
    assert_eq!(client.body, shipped);
}

#[test]
fn head_gets_headers_only_and_other_methods_get_405() {
    use std::io::Read as _;

    let server = TestServer::start();
    let full = get(&server, "/dashboard.css");

    // Read to the end: the harness client cannot frame a bodiless HEAD reply.
    let mut client = HttpClient::connect(server.addr);
    client.send(
        "HEAD",
        "/dashboard.css",
        None,
        None,
        &[("Connection", "close")],
    );
    let mut raw = String::new();
    client.stream.read_to_string(&mut raw).expect("HEAD reply");
    let length = format!("Content-Length: {}\r\n", full.body.len());
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains(&length), "{raw}");
    assert!(raw.contains("Content-Security-Policy: "), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "HEAD reply has a body: {raw}");

    let post = server.http("POST", "/", None, Some("{}"));
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
}

#[test]
fn unknown_files_and_query_strings_are_handled() {
    let server = TestServer::start();
    assert_eq!(server.http("GET", "/index.html", None, None).status, 404);
    assert_eq!(server.http("GET", "/dashboard.js/", None, None).status, 404);
    assert_eq!(server.http("GET", "/../Cargo.toml", None, None).status, 404);

    // A query string does not change which file is served.
    let page = get(&server, "/?tenant=t1");
    assert!(page.text().contains("/dashboard.js"));
}
