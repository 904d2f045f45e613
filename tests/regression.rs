//! Regression tests for bugs found in review, each pinned through the real binary.
//!
//! Every test here failed on the code the review looked at, for the reason its name
//! states; the comment above each says how it failed there.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{
    FrameRead, HttpClient, RawWs, TestServer, format_request, masked_frame, raw_upgrade,
    token_with, unix_now, upgrade_request,
};
use serde_json::Value;

/// How long a test waits for a frame that must come at once; only a hang guard.
const SHORT_WAIT: Duration = Duration::from_secs(5);

/// The update path of `item` in store t1/s1.
fn update_path(item: &str) -> String {
    format!("/api/v1/tenants/t1/stores/s1/stock/{item}/update")
}

/// An update body moving the stock by `change`.
fn update_body(change: f64) -> String {
    format!(r#"{{"quantityChange": {change}, "updateType": "sale"}}"#)
}

/// Sends a valid update and then `second` in one write on one keep-alive connection,
/// and asserts the answers come in request order: the update's 200 (held for the pass
/// commit), then `status` closing the connection.
fn assert_error_answered_after_held_update(second: &[u8], status: u16) {
    let server = TestServer::start();
    let token = server.token("t1", &["s1"]);
    let mut bytes = format_request(
        "PUT",
        &update_path("ITEM1"),
        Some(&token),
        Some(&update_body(5.0)),
        &[],
    );
    bytes.extend_from_slice(second);

    let mut client = HttpClient::connect(server.addr);
    client.write_raw(&bytes);

    let first = client.read();
    assert_eq!(first.status, 200, "first answer: {}", first.text());
    let error = client.read();
    assert_eq!(error.status, status, "second answer: {}", error.text());
    assert_eq!(error.header("connection"), Some("close"));
    assert!(client.closed(), "the connection must close after the error");
}

// Failed: the 400 was written at once while the 200 was still held for the commit,
// so the client read 400 first.
#[test]
fn malformed_request_behind_a_held_update_is_answered_after_it() {
    assert_error_answered_after_held_update(b"GARBAGE\r\n\r\n", 400);
}

// Failed: as above, the 413 overtook the held 200.
#[test]
fn oversized_body_behind_a_held_update_is_answered_after_it() {
    let token = token_with("t1", &["s1"], unix_now() + 3600, common::SECRET);
    let second = format!(
        "PUT {} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 100000\r\n\r\n",
        update_path("ITEM2")
    );
    assert_error_answered_after_held_update(second.as_bytes(), 413);
}

/// The `seq` of every alert in `texts`, in order; the connection message is skipped.
fn alert_seqs(texts: &[String]) -> Vec<u64> {
    texts
        .iter()
        .map(|text| serde_json::from_str::<Value>(text).expect("JSON frame"))
        .filter(|v| v["type"] == "stock_alert")
        .map(|v| {
            v["seq"]
                .as_u64()
                .expect("a live or replayed alert carries seq")
        })
        .collect()
}

// Failed (in most rounds): the upgrade taken in the same pass as an alerting update
// read the uncommitted alert in its replay and then got it again from the fan-out,
// so one seq arrived twice.
#[test]
fn subscriber_joining_in_the_pass_of_an_alert_gets_it_exactly_once() {
    let server = TestServer::start();
    server.set_reorder("t1", "s1", "A", 1000.0, 1.0);
    let token = server.token("t1", &["s1"]);
    let target = format!("/api/v1/ws/t1/s1?since=0&token={token}");

    for round in 1..=5u64 {
        // Both connections accepted and idle before the server is frozen.
        let mut writer = HttpClient::connect(server.addr);
        writer.send("GET", "/health", None, None, &[]);
        assert_eq!(writer.read().status, 200);
        let mut joiner = HttpClient::connect(server.addr);
        joiner.send("GET", "/health", None, None, &[]);
        assert_eq!(joiner.read().status, 200);

        // The alerting update and the upgrade land in one pass.
        server.pause();
        writer.send(
            "PUT",
            &update_path("A"),
            Some(&token),
            Some(&update_body(-1.0)),
            &[],
        );
        joiner.write_raw(&upgrade_request(&target));
        server.resume();

        let reply = writer.read();
        assert_eq!(reply.status, 200, "{}", reply.text());
        let (status, mut ws) = RawWs::after_upgrade(joiner.stream);
        assert_eq!(status, 101);
        let texts = ws.texts_until_pong();
        let greeting: Value = serde_json::from_str(&texts[0]).expect("connection message");
        assert_eq!(greeting["type"], "connection", "{greeting}");

        // Rounds 1..=round each committed one alert: each seq once, none missing.
        let seqs = alert_seqs(&texts);
        let expected: Vec<u64> = (1..=round).collect();
        assert_eq!(seqs, expected, "round {round}: alerts received {texts:?}");
        let last_seq = greeting["last_seq"].as_u64().expect("last_seq");
        assert!(last_seq <= round, "round {round}: last_seq {last_seq}");
    }
}

// Failed: the alert was written to a socket already closed by the server, tungstenite
// refused the send, and the connection was dropped as "write failed" with a null
// close code instead of the 1008 it was closing with.
#[test]
fn alert_sent_while_closing_keeps_the_close_code_in_the_log() {
    let server = TestServer::start();
    server.set_reorder("t1", "s1", "A", 10.0, 1.0);
    let token = token_with("t1", &["s1"], unix_now() + 2, common::SECRET);
    let target = format!("/api/v1/ws/t1/s1?token={token}");
    let (status, mut ws) = raw_upgrade(server.addr, &target, &[]);
    assert_eq!(status, 101);
    let peer = ws.stream.local_addr().expect("local addr").to_string();

    // Wait for the expiry close; do not answer it.
    let code = ws.expect_close();
    assert_eq!(code, 1008);

    let reply = server.update("t1", "s1", "A", -1.0);
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Now complete the close handshake so the server ends the connection at once.
    ws.send_frame(0x88, true, &1008u16.to_be_bytes(), None);
    let line = server.wait_log(|v| v["event"] == "websocket_disconnected" && v["peer"] == peer);
    assert_eq!(line["close_code"], 1008, "{line}");
}

// Failed: the frame arrived with the upgrade, was handed to tungstenite as already
// read, and nothing read it until more bytes came: no pong.
#[test]
fn frame_pipelined_with_the_upgrade_is_answered() {
    let server = TestServer::start();
    let token = server.token("t1", &["s1"]);
    let mut bytes = upgrade_request(&format!("/api/v1/ws/t1/s1?token={token}"));
    bytes.extend_from_slice(&masked_frame(0x1, b"ping"));

    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.write_all(&bytes).expect("write");
    let (status, mut ws) = RawWs::after_upgrade(stream);
    assert_eq!(status, 101);

    let mut texts = Vec::new();
    loop {
        match ws.frame_within(SHORT_WAIT) {
            FrameRead::Frame(0x1, payload) if payload == b"pong" => break,
            FrameRead::Frame(0x1, payload) => {
                texts.push(String::from_utf8_lossy(&payload).into_owned())
            }
            FrameRead::Frame(0x8, payload) => panic!("closed: {payload:?}"),
            FrameRead::Frame(..) => continue,
            other => panic!("no pong for the pipelined ping ({other:?}) after {texts:?}"),
        }
    }
    assert!(
        !texts.is_empty(),
        "the connection message comes before the pong"
    );
}

// Failed: the response carried no Connection header (an HTTP/1.0 client reads that
// as "closes after the response") while the server kept the connection open and
// served the next request on it.
#[test]
fn http_1_0_keep_alive_is_announced_or_the_connection_closes() {
    let server = TestServer::start();
    let request = b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n";
    let mut client = HttpClient::connect(server.addr);
    client.write_raw(request);
    let first = client.read();
    assert_eq!(first.status, 200);
    let announced = first
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive"));

    // A failed write means the server already closed, which is one allowed outcome.
    let _ = client.stream.write_all(request);
    let second = client.try_read();
    if announced {
        let second = second.expect("keep-alive was announced: a second answer");
        assert_eq!(second.status, 200);
    } else {
        assert!(
            second.is_none(),
            "no keep-alive header, yet the connection stayed open and answered {:?}",
            second.map(|r| r.status)
        );
    }
}

// Failed: the message was built as a JSON map with sorted keys, so it opened with
// `{"last_seq":`.
#[test]
fn connection_message_fields_come_in_documented_order() {
    let server = TestServer::start();
    let token = server.token("t1", &["s1"]);
    let target = format!("/api/v1/ws/t1/s1?token={token}");
    let (status, mut ws) = raw_upgrade(server.addr, &target, &[]);
    assert_eq!(status, 101);

    let first = match ws.frame_within(SHORT_WAIT) {
        FrameRead::Frame(0x1, payload) => String::from_utf8(payload).expect("UTF-8"),
        other => panic!("expected the connection message, got {other:?}"),
    };
    let prefix = concat!(
        r#"{"type":"connection","status":"connected","tenant_id":"t1","#,
        r#""store_code":"s1","timestamp":""#
    );
    assert!(first.starts_with(prefix), "{first}");
}

// Failed: the header was read as text, a non-UTF-8 value read as "no header", and the
// update was applied with 200 and no key.
#[test]
fn non_utf8_idempotency_key_is_refused_and_changes_nothing() {
    let server = TestServer::start();
    let token = server.token("t1", &["s1"]);
    let body = update_body(7.0);
    let mut bytes = format!(
        "PUT {} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n",
        update_path("ITEM7")
    )
    .into_bytes();
    bytes.extend_from_slice(b"Idempotency-Key: \xff\xfe\r\n");
    bytes.extend_from_slice(
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );

    let mut client = HttpClient::connect(server.addr);
    client.write_raw(&bytes);
    let reply = client.read();
    assert_eq!(reply.status, 400, "{}", reply.text());

    let item = server.http(
        "GET",
        "/api/v1/tenants/t1/stores/s1/stock/ITEM7",
        Some(&token),
        None,
    );
    assert_eq!(item.status, 404, "the item was touched: {}", item.text());
}
