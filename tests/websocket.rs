//! WebSocket alerts through the real binary: threshold rules at equality, cooldowns,
//! fan-out, slow consumers, pings and idle timeouts, close handshakes, shutdown, logs.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{PATIENCE, TestServer, Ws};
use serde_json::Value;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

/// Asserts every log line so far is a JSON object opening with a millisecond UTC
/// `timestamp`, a lower-case `level` and an `event` name.
fn assert_logs_well_formed(server: &TestServer) {
    for line in server.logs() {
        let timestamp = line["timestamp"].as_str().unwrap_or_default();
        assert_eq!(timestamp.len(), "2024-01-01T12:34:56.789Z".len(), "{line}");
        assert!(timestamp.ends_with('Z'), "{line}");
        let level = line["level"].as_str().unwrap_or_default();
        assert!(
            ["error", "warn", "info", "debug", "trace"].contains(&level),
            "{line}"
        );
        assert!(
            line["event"].as_str().is_some_and(|e| !e.is_empty()),
            "{line}"
        );
    }
}

/// The `websocket_disconnected` line of the connection from `peer`.
fn disconnected_line(server: &TestServer, peer: &str) -> Value {
    server.wait_log(|v| v["event"] == "websocket_disconnected" && v["peer"] == peer)
}

/// The client's local address, as the server logs it as the peer.
fn peer_of(ws: &Ws) -> String {
    match ws.socket.get_ref() {
        tungstenite::stream::MaybeTlsStream::Plain(stream) => {
            stream.local_addr().expect("local addr").to_string()
        }
        _ => unreachable!("tests use plain TCP"),
    }
}

/// A batch body moving `item` down by one, `lines` times.
fn batch(item: &str, lines: usize) -> String {
    let line = format!(r#"{{"itemCode":"{item}","quantityChange":-1,"updateType":"sale"}}"#);
    format!(r#"{{"updates":[{}]}}"#, vec![line; lines].join(","))
}

#[test]
fn reorder_fires_at_equality_and_minimum_only_below() {
    let server = TestServer::start();
    let (mut ws, _) = server.subscribe("t1", "s1");

    // Reorder point 10: 11 is above, 10 fires, 11 again does not.
    server.update("t1", "s1", "R", 11.0);
    server.set_reorder("t1", "s1", "R", 10.0, 5.0);
    ws.assert_nothing_pending();
    server.update("t1", "s1", "R", -1.0);
    let alert = ws.next_json();
    assert_eq!(alert["alert_type"], "reorder_point");
    assert_eq!(alert["current_quantity"], 10.0);
    assert_eq!(alert["reorder_point"], 10.0);
    server.update("t1", "s1", "R", 1.0);
    ws.assert_nothing_pending();

    // Minimum 5: at 5 nothing, at 4 it fires.
    server.update("t1", "s1", "M", 6.0);
    server.set_minimum("t1", "s1", "M", 5.0);
    server.update("t1", "s1", "M", -1.0);
    ws.assert_nothing_pending();
    server.update("t1", "s1", "M", -1.0);
    let alert = ws.next_json();
    assert_eq!(alert["alert_type"], "minimum_stock");
    assert_eq!(alert["current_quantity"], 4.0);
    assert_eq!(alert["minimum_quantity"], 5.0);
    ws.assert_nothing_pending();
}

#[test]
fn zero_thresholds_never_fire_and_negative_stock_does() {
    let server = TestServer::start();
    let (mut ws, _) = server.subscribe("t1", "s1");

    // No thresholds set (both zero): even a backorder raises nothing.
    server.update("t1", "s1", "Z", -5.0);
    server.update("t1", "s1", "Z", -0.0);
    ws.assert_nothing_pending();

    // A minimum of 1 with the stock at -3: the alert carries the negative level.
    server.set_minimum("t1", "s1", "N", 1.0);
    server.update("t1", "s1", "N", -3.0);
    let alert = ws.next_json();
    assert_eq!(alert["alert_type"], "minimum_stock");
    assert_eq!(alert["current_quantity"], -3.0);
    ws.assert_nothing_pending();
}

#[test]
fn cooldown_zero_alerts_on_every_crossing_update() {
    let server = TestServer::start_with("[alerts]\ncooldown_seconds = 0", &[]);
    server.set_reorder("t1", "s1", "A", 100.0, 1.0);
    let (mut ws, _) = server.subscribe("t1", "s1");
    ws.next_json(); // the current-state alert at 0

    for level in [-1.0, -2.0, -3.0] {
        server.update("t1", "s1", "A", -1.0);
        assert_eq!(ws.next_json()["current_quantity"], level);
    }
    ws.assert_nothing_pending();
}

#[test]
fn short_cooldown_suppresses_then_lets_the_alert_fire_again() {
    let server = TestServer::start_with("[alerts]\ncooldown_seconds = 1", &[]);
    server.update("t1", "s1", "A", 50.0);
    server.update("t1", "s1", "B", 50.0);
    server.set_reorder("t1", "s1", "A", 10.0, 1.0);
    server.set_reorder("t1", "s1", "B", 10.0, 1.0);
    let (mut ws, _) = server.subscribe("t1", "s1");

    let before_first = Instant::now();
    server.update("t1", "s1", "A", -45.0);
    assert_eq!(ws.next_json()["current_quantity"], 5.0);

    // Same item and type: suppressed (dropped, not deferred). Another item is not.
    server.update("t1", "s1", "A", -1.0);
    ws.assert_nothing_pending();
    server.update("t1", "s1", "B", -45.0);
    assert_eq!(ws.next_json()["item_code"], "B");

    // Poll with further updates until one alerts again.
    let deadline = Instant::now() + PATIENCE;
    let mut suppressed = 1;
    let again = loop {
        assert!(Instant::now() < deadline, "the cooldown never ended");
        server.update("t1", "s1", "A", -1.0);
        ws.send_text("ping");
        let text = ws.next_text();
        if text == "pong" {
            suppressed += 1;
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert_eq!(ws.next_text(), "pong");
        break serde_json::from_str::<Value>(&text).unwrap();
    };
    assert!(
        before_first.elapsed() >= Duration::from_secs(1),
        "an alert fired inside the cooldown window"
    );
    assert_eq!(again["item_code"], "A");
    assert_eq!(again["current_quantity"], 4.0 - f64::from(suppressed));
}

#[test]
fn alert_cooldown_env_overrides_the_file() {
    // File: off; env: an hour. The second crossing update is suppressed.
    let server = TestServer::start_with(
        "[alerts]\ncooldown_seconds = 0",
        &[("ALERT_COOLDOWN_SECONDS", "3600")],
    );
    server.set_reorder("t1", "s1", "A", 10.0, 1.0);
    server.update("t1", "s1", "A", 20.0);
    let (mut ws, _) = server.subscribe("t1", "s1");
    server.update("t1", "s1", "A", -15.0);
    assert_eq!(ws.next_json()["current_quantity"], 5.0);
    server.update("t1", "s1", "A", -1.0);
    ws.assert_nothing_pending();

    // File: an hour; env: off. Every crossing update alerts.
    let server = TestServer::start_with(
        "[alerts]\ncooldown_seconds = 3600",
        &[("ALERT_COOLDOWN_SECONDS", "0")],
    );
    server.set_reorder("t1", "s1", "A", 10.0, 1.0);
    server.update("t1", "s1", "A", 20.0);
    let (mut ws, _) = server.subscribe("t1", "s1");
    server.update("t1", "s1", "A", -15.0);
    assert_eq!(ws.next_json()["current_quantity"], 5.0);
    server.update("t1", "s1", "A", -1.0);
    assert_eq!(ws.next_json()["current_quantity"], 4.0);
}

#[test]
fn every_client_of_a_store_gets_every_alert_in_order() {
    let server = TestServer::start();
    server.set_reorder("t1", "s1", "A", 60.0, 1.0);
    server.update("t1", "s1", "A", 100.0);
    let mut clients: Vec<Ws> = (0..4).map(|_| server.subscribe("t1", "s1").0).collect();

    for _ in 0..3 {
        server.update("t1", "s1", "A", -50.0);
    }
    for ws in &mut clients {
        let levels: Vec<Value> = (0..3)
            .map(|_| ws.next_json()["current_quantity"].clone())
            .collect();
        assert_eq!(levels, [50.0, 0.0, -50.0]);
        ws.assert_nothing_pending();
    }
    let sent =
        server.wait_log(|v| v["event"] == "websocket_alert_sent" && v["connection_count"] == 4);
    assert_eq!(sent["alert_type"], "reorder_point");
    assert_eq!(sent["item_code"], "A");
}

/// A client of `tenant`/`store` whose socket has a tiny receive buffer and that never
/// reads after the handshake.
fn stalled_client(server: &TestServer, tenant: &str, store: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};

    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&server.addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    let token = server.token(tenant, &[store]);
    let url = server.ws_url(tenant, store, &token);
    let (ws, _) = tungstenite::client(url.as_str(), stream).expect("handshake");
    ws.into_inner()
}

#[test]
fn a_slow_consumer_is_closed_while_a_healthy_client_gets_every_alert() {
    let server = TestServer::start_with(
        "[websocket]\nmax_outbound_queue_bytes = 65536\n[http]\nmax_batch_body_bytes = 1048576",
        &[],
    );
    // Every update of the longest item code raises both alerts: the most bytes
    // per line, so the flood fills the stalled socket's kernel buffers sooner.
    let flood = "F".repeat(64);
    server.set_reorder("t1", "s1", &flood, 1e9, 1.0);
    server.set_minimum("t1", "s1", &flood, 1e9);
    server.update("t1", "s1", &flood, 1.0);
    server.set_reorder("t1", "s1", "END", 1.0, 1.0);
    server.update("t1", "s1", "END", 5.0);

    let (mut healthy, _) = server.subscribe("t1", "s1");
    // The current-state alert of F; from here on the reader counts.
    assert_eq!(healthy.next_json()["alert_type"], "reorder_point");
    assert_eq!(healthy.next_json()["alert_type"], "minimum_stock");
    let stalled = stalled_client(&server, "t1", "s1");
    let stalled_peer = stalled.local_addr().unwrap().to_string();
    server.wait_log(|v| v["event"] == "websocket_connected" && v["connection_count"] == 2);

    let reader = std::thread::spawn(move || {
        let mut count = 0usize;
        loop {
            let alert = healthy.next_json();
            if alert["item_code"] == "END" {
                return (healthy, count);
            }
            count += 1;
        }
    });

    // Flood the store in batches until the stalled client is cut off.
    let token = server.token("t1", &["s1"]);
    let path = "/api/v1/tenants/t1/stores/s1/stock/updates";
    let per_batch = 200;
    let body = batch(&flood, per_batch);
    let mut lines = 0;
    let slow = |v: &Value| v["event"] == "websocket_slow_consumer";
    while !server.logged("\"websocket_slow_consumer\"") {
        assert!(lines < 50_000, "the stalled client was never cut off");
        let reply = server.http("POST", path, Some(&token), Some(&body));
        assert_eq!(reply.status, 200, "{}", reply.text());
        lines += per_batch;
    }
    let closed = disconnected_line(&server, &stalled_peer);
    assert_eq!(closed["close_code"], 1013, "{closed}");
    assert_eq!(closed["connection_count"], 1, "{closed}");
    let warned = server.wait_log(slow);
    assert_eq!(warned["level"], "warn");
    assert_eq!(warned["peer"], stalled_peer.as_str());

    // The healthy client missed nothing and is still subscribed.
    server.update("t1", "s1", "END", -5.0);
    let (mut healthy, received) = reader.join().expect("reader");
    assert_eq!(received, 2 * lines, "alerts lost by the healthy client");
    healthy.assert_nothing_pending();
    let last =
        server.wait_log(|v| v["event"] == "websocket_alert_sent" && v["item_code"] == "END");
    assert_eq!(last["connection_count"], 1);
    drop(stalled);
    assert_logs_well_formed(&server);
}

#[test]
fn pings_arrive_and_a_client_that_never_answers_is_dropped() {
    let server = TestServer::start_with(
        "[websocket]\nping_interval_seconds = 1\nidle_timeout_seconds = 2",
        &[],
    );
    let (mut silent, _) = server.subscribe("t1", "s1");
    let silent_peer = peer_of(&silent);
    let (mut lively, _) = server.subscribe("t1", "s1");

    // The lively client reads (so tungstenite answers each ping) past the idle timeout.
    let reader = std::thread::spawn(move || {
        let mut pings = 0;
        while pings < 3 {
            match lively.socket.read().expect("lively client read") {
                Message::Ping(_) => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        lively
    });

    let dropped = disconnected_line(&server, &silent_peer);
    assert_eq!(dropped["close_code"], 1001, "{dropped}");
    let idle = server.wait_log(|v| v["event"] == "websocket_idle_timeout");
    assert_eq!(idle["peer"], silent_peer.as_str());

    // The silent client was pinged before it was dropped, then its socket ended.
    let mut pinged = false;
    loop {
        match silent.socket.read() {
            Ok(Message::Ping(_)) => pinged = true,
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert!(pinged, "no server ping reached the silent client");

    let mut lively = reader.join().expect("lively reader");
    lively.assert_nothing_pending();
}

#[test]
fn text_ping_gets_pong_and_a_client_close_is_honoured_and_logged() {
    let server = TestServer::start();
    let (mut first, _) = server.subscribe("t1", "s1");
    let first_peer = peer_of(&first);
    let (mut second, _) = server.subscribe("t1", "s1");
    let second_peer = peer_of(&second);
    let joined = server
        .wait_log(|v| v["event"] == "websocket_connected" && v["peer"] == second_peer.as_str());
    assert_eq!(joined["connection_count"], 2);
    assert_eq!(joined["tenant_id"], "t1");
    assert_eq!(joined["store_code"], "s1");

    first.send_text("ping");
    assert_eq!(first.next_text(), "pong");

    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    first.socket.close(Some(frame)).expect("send close");
    let echoed = loop {
        match first.socket.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => continue,
            Err(e) => panic!("no close reply: {e}"),
        }
    };
    assert_eq!(echoed.map(|f| u16::from(f.code)), Some(1000));
    loop {
        match first.socket.read() {
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("expected a clean end, got {e}"),
            Ok(_) => continue,
        }
    }

    let left = disconnected_line(&server, &first_peer);
    assert_eq!(left["close_code"], 1000, "{left}");
    assert_eq!(left["connection_count"], 1, "{left}");
    second.assert_nothing_pending();
}

#[test]
fn a_client_that_vanishes_is_removed() {
    let server = TestServer::start();
    server.set_reorder("t1", "s1", "A", 10.0, 1.0);
    server.update("t1", "s1", "A", 20.0);
    let (ws, _) = server.subscribe("t1", "s1");
    let peer = peer_of(&ws);
    drop(ws); // no close frame, just the TCP close

    let gone = disconnected_line(&server, &peer);
    assert_eq!(gone["connection_count"], 0, "{gone}");
    server.update("t1", "s1", "A", -15.0);
    let sent = server.wait_log(|v| v["event"] == "websocket_alert_sent");
    assert_eq!(sent["connection_count"], 0);
    assert_eq!(
        server.http("GET", "/health", None, None).json()["websocket_connections"],
        0
    );
}

#[test]
fn sigterm_closes_websockets_with_1001_and_exits_zero() {
    let mut server = TestServer::start();
    let (mut ws, _) = server.subscribe("t1", "s1");
    let peer = peer_of(&ws);

    let reader = std::thread::spawn(move || {
        let close = ws.expect_close();
        // Reading on sends tungstenite's close reply and then sees the end.
        while ws.socket.read().is_ok() {}
        close
    });
    let status = server.terminate();
    let (code, reason) = reader.join().expect("reader");

    assert_eq!((code, reason.as_str()), (1001, "Server shutting down"));
    assert_eq!(status.code(), Some(0), "{status}");
    let logs = server.logs();
    let closed = logs
        .iter()
        .find(|v| v["event"] == "websocket_disconnected" && v["peer"] == peer.as_str())
        .expect("websocket_disconnected logged");
    assert_eq!(closed["close_code"], 1001, "{closed}");
    assert!(logs.iter().any(|v| v["event"] == "server_stopped"));
}

#[test]
fn logs_are_json_lines_without_tokens_or_query_strings() {
    let server = TestServer::start();
    let token = server.token("t1", &["s1"]);
    server.set_reorder("t1", "s1", "A", 10.0, 1.0);
    let (mut ws, _) = server.subscribe("t1", "s1");
    server.update("t1", "s1", "A", 5.0);
    ws.next_json();

    // A refused socket whose query carries a token and another parameter.
    let foreign = server.token("t2", &[]);
    let url = format!("{}&marker=qqq", server.ws_url("t1", "s1", &foreign));
    let mut refused = common::connect_ws(&url);
    assert_eq!(refused.expect_close().0, 1008);
    let failed = server.wait_log(|v| v["event"] == "websocket_auth_failed");
    assert_eq!(failed["level"], "warn");
    assert_eq!(failed["tenant_id"], "t1");
    assert!(
        failed["reason"].is_string() && failed["peer"].is_string(),
        "{failed}"
    );
    server.wait_log(|v| v["event"] == "websocket_alert_sent");

    assert_logs_well_formed(&server);
    let text = server.log_text();
    for secret in [
        token.as_str(),
        foreign.as_str(),
        "token=",
        "qqq",
        common::SECRET,
    ] {
        assert!(!text.contains(secret), "{secret} reached the log");
    }
    let started = server.wait_log(|v| v["event"] == "server_started");
    assert_eq!(started["level"], "info");
}
