//! Metrics and health end to end: exact counters after a scripted sequence, the
//! exposition format checked by promtool, access settings, and `/health` on a locked
//! store.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::{
    HttpClient, PATIENCE, TestServer, connect_ws, metrics_addr, sample, scrape, token_with,
    unix_now,
};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;

/// Scrapes `/metrics` on `addr` and returns the text, asserting a 200.
fn scrape_text(addr: SocketAddr) -> String {
    let reply = scrape(addr, None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        reply.headers
    );
    reply.text()
}

/// One sample's value, failing the test with the whole text if it is missing.
fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Floods a subscribed client's socket with masked `ping` text frames without ever
/// reading, until the server drops the connection. Each frame makes the server queue
/// a `pong`, so its outbound queue overflows once the socket buffers are full.
fn flood_pings_without_reading(ws: &mut common::Ws) {
    // FIN + text, masked with a zero key, 4 bytes: "ping".
    let frame = [0x81, 0x84, 0, 0, 0, 0, b'p', b'i', b'n', b'g'];
    let chunk: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 6000)
        .collect();
    let MaybeTlsStream::Plain(stream) = ws.socket.get_mut() else {
        panic!("plain TCP expected");
    };
    stream.set_write_timeout(Some(PATIENCE)).unwrap();

    // Hang guard: far more than any socket buffers plus the configured queue.
    for _ in 0..5000 {
        if stream.write_all(&chunk).is_err() {
            return;
        }
    }
    panic!("the server never dropped a client that does not read");
}

#[test]
fn scripted_sequence_gives_exact_counters() {
    let server = TestServer::start_with(
        "[alerts]\ncooldown_seconds = 3600\n[websocket]\nmax_outbound_queue_bytes = 8192\n",
        &[],
    );
    server.update("t1", "s1", "R", 20.0);
    server.set_reorder("t1", "s1", "R", 10.0, 5.0);
    server.update("t1", "s1", "M", 20.0);
    server.set_minimum("t1", "s1", "M", 5.0);

    // Two subscribers of s1, two refused for their tokens.
    let (mut first, _) = server.subscribe("t1", "s1");
    let (mut second, _) = server.subscribe("t1", "s1");
    let base = format!("ws://{}/api/v1/ws/t1/s1", server.addr);
    let mut no_token = connect_ws(&base);
    assert_eq!(no_token.expect_close().0, 1008);
    let expired = token_with("t1", &[], unix_now() - 10, common::SECRET);
    let mut bad_token = connect_ws(&format!("{base}?token={expired}"));
    assert_eq!(bad_token.expect_close().0, 1008);

    // One alert of each type, each to both subscribers.
    assert_eq!(server.update("t1", "s1", "R", -15.0).status, 200);
    assert_eq!(server.update("t1", "s1", "M", -18.0).status, 200);
    for ws in [&mut first, &mut second] {
        assert_eq!(ws.next_json()["alert_type"], "reorder_point");
        assert_eq!(ws.next_json()["alert_type"], "minimum_stock");
    }

    // Still under the reorder point, but the cooldown holds the alert back.
    assert_eq!(server.update("t1", "s1", "R", -1.0).status, 200);
    first.assert_nothing_pending();

    // A client of another store that never reads.
    let (mut slow, _) = server.subscribe("t1", "s2");
    flood_pings_without_reading(&mut slow);
    server.wait_log(|v| v["event"] == "websocket_slow_consumer");

    // A clean close by the first subscriber.
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    first.socket.close(Some(normal)).unwrap();
    // Read on until the server's close reply ends the connection.
    while first.socket.read().is_ok() {}

    let text = scrape_text(server.addr);
    let attempts = "stockalert_websocket_connection_attempts_total";
    assert_eq!(
        value(&text, &format!("{attempts}{{result=\"accepted\"}}")),
        3.0
    );
    assert_eq!(
        value(&text, &format!("{attempts}{{result=\"auth_failed\"}}")),
        2.0
    );
    assert_eq!(
        value(&text, &format!("{attempts}{{result=\"rejected\"}}")),
        0.0
    );
    assert_eq!(value(&text, "stockalert_websocket_connections"), 1.0);

    let disconnects = "stockalert_websocket_disconnects_total";
    assert_eq!(
        value(&text, &format!("{disconnects}{{code=\"1000\"}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("{disconnects}{{code=\"1013\"}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("{disconnects}{{code=\"abnormal\"}}")),
        0.0
    );
    assert_eq!(
        value(&text, &format!("{disconnects}{{code=\"1008\"}}")),
        0.0
    );
    assert_eq!(
        value(&text, "stockalert_slow_consumer_disconnects_total"),
        1.0
    );

    let sent = "stockalert_alerts_sent_total";
    assert_eq!(
        value(&text, &format!("{sent}{{alert_type=\"reorder_point\"}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("{sent}{{alert_type=\"minimum_stock\"}}")),
        1.0
    );
    assert_eq!(value(&text, "stockalert_alert_frames_delivered_total"), 4.0);
    let suppressed = "stockalert_alerts_suppressed_total";
    assert_eq!(
        value(
            &text,
            &format!("{suppressed}{{alert_type=\"reorder_point\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{suppressed}{{alert_type=\"minimum_stock\"}}")
        ),
        0.0
    );
    assert_eq!(value(&text, "stockalert_alert_latency_seconds_count"), 2.0);

    let requests = "stockalert_http_requests_total";
    assert_eq!(
        value(
            &text,
            &format!("{requests}{{route=\"stock_update\",status=\"200\"}}")
        ),
        5.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{requests}{{route=\"stock_reorder\",status=\"200\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{requests}{{route=\"websocket\",status=\"101\"}}")
        ),
        5.0
    );
    let updates = "stockalert_http_request_duration_seconds_count{route=\"stock_update\"}";
    assert_eq!(value(&text, updates), 5.0);
    assert_eq!(value(&text, "stockalert_items"), 2.0);
    assert_eq!(value(&text, "stockalert_db_rollbacks_total"), 0.0);
    assert!(value(&text, "stockalert_db_commit_duration_seconds_count") >= 6.0);
    assert!(value(&text, "process_open_fds") > 0.0);
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);
    assert!(value(&text, "process_start_time_seconds") > 1.6e9);

    // Labels come from templates only: no raw path, identifier or token leaks in.
    assert!(!text.contains("t1") && !text.contains("s2") && !text.contains("token"));

    // The scrape itself is counted once it has been answered.
    let again = scrape_text(server.addr);
    let scrapes = format!("{requests}{{route=\"metrics\",status=\"200\"}}");
    assert_eq!(value(&again, &scrapes), 1.0);
}

#[test]
fn refusal_at_the_connection_limit_counts_as_rejected() {
    let server = TestServer::start_with(
        "[server]\nmax_connections = 2\nmax_connections_per_ip = 2\n",
        &[],
    );

    // Two keep-alive clients hold both slots; the server has seen both.
    let mut held = HttpClient::connect(server.addr);
    held.send("GET", "/health", None, None, &[]);
    assert_eq!(held.read().status, 200);
    let mut other = HttpClient::connect(server.addr);
    other.send("GET", "/health", None, None, &[]);
    assert_eq!(other.read().status, 200);

    let mut refused = HttpClient::connect(server.addr);
    assert_eq!(refused.read().status, 503);

    held.send("GET", "/metrics", None, None, &[]);
    let text = held.read().text();
    let attempts = "stockalert_websocket_connection_attempts_total";
    assert_eq!(
        value(&text, &format!("{attempts}{{result=\"rejected\"}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("{attempts}{{result=\"accepted\"}}")),
        0.0
    );
}

#[test]
fn exposition_passes_promtool_check_metrics() {
    let server = TestServer::start();
    server.set_reorder("t1", "s1", "A", 10.0, 5.0);
    let (mut ws, _) = server.subscribe("t1", "s1");
    server.update("t1", "s1", "A", 3.0);
    ws.next_json();
    let text = scrape_text(server.addr);

    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !in_ci => {
            eprintln!("promtool not installed: exposition check skipped (CI runs it)");
            return;
        }
        Err(error) => panic!("cannot run promtool (CI installs it): {error}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool output");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn health_turns_503_while_the_store_is_locked_and_recovers() {
    let server = TestServer::start();
    let healthy = server.http("GET", "/health", None, None);
    assert_eq!(healthy.status, 200, "{}", healthy.text());
    let body = healthy.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["storage_writable"], true);
    assert_eq!(body["websocket_connections"], 0);
    assert!(body["uptime_seconds"].is_u64(), "{body}");

    let db = server.dir.path().join("data").join("stockalert.db");
    let other = rusqlite::Connection::open(&db).expect("open the database");
    other
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");

    let locked = server.http("GET", "/health", None, None);
    assert_eq!(locked.status, 503, "{}", locked.text());
    assert_eq!(locked.json()["storage_writable"], false);
    assert_eq!(locked.json()["status"], "storage_unwritable");

    other
        .execute_batch("ROLLBACK")
        .expect("release the write lock");
    let back = server.http("GET", "/health", None, None);
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(back.json()["storage_writable"], true);
}

#[test]
fn metrics_can_be_switched_off() {
    let server = TestServer::start_with("[metrics]\nenabled = false\n", &[]);
    let reply = scrape(server.addr, None);
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert!(!reply.text().contains("stockalert_"));
    assert!(server.healthy());
}

#[test]
fn a_metrics_bearer_token_is_required_when_set() {
    let token = "scrape-only-0123456789";
    let server = TestServer::start_with(&format!("[metrics]\nbearer_token = \"{token}\"\n"), &[]);

    assert_eq!(scrape(server.addr, None).status, 401);
    assert_eq!(scrape(server.addr, Some("scrape-only-wrong")).status, 401);
    let reply = scrape(server.addr, Some(token));
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .text()
            .contains("stockalert_websocket_connections 0\n")
    );
    assert!(
        !server.log_text().contains(token),
        "the metrics token reached the log"
    );
}

#[test]
fn a_separate_listener_serves_metrics_and_only_metrics() {
    let server = TestServer::start_with("[metrics]\nlisten = \"127.0.0.1:0\"\n", &[]);
    let metrics = metrics_addr(&server);
    assert_ne!(metrics, server.addr);

    // The figures are on the metrics listener…
    let text = scrape_text(metrics);
    assert!(text.contains("# TYPE stockalert_websocket_connections gauge\n"));

    // …and nowhere else, while the API stays on the main one only.
    assert_eq!(scrape(server.addr, None).status, 404);
    let mut client = HttpClient::connect(metrics);
    client.send("GET", "/health", None, None, &[]);
    assert_eq!(client.read().status, 404);
    assert!(server.healthy());
    let (_ws, greeting) = server.subscribe("t1", "s1");
    assert_eq!(greeting["status"], "connected");
}
