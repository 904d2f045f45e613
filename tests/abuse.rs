//! Abuse end to end: bad input, every limit and timeout, token lifetimes, key
//! algorithms, origins and store isolation, against the real binary.

mod common;

use std::net::Shutdown;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{
    HttpClient, TestServer, connect_ws, metric, raw_upgrade, read_refusal, token_with, unix_now,
};
use serde_json::json;

/// Path of the update call for one item of t1/s1.
const UPDATE: &str = "/api/v1/tenants/t1/stores/s1/stock/KEEP/update";

/// What one bad input must get.
enum Expect {
    /// This HTTP status, then the connection may close.
    Status(u16),
    /// A 101, then a WebSocket close frame with this code.
    Close(u16),
    /// The connection closes without any response.
    Silence,
}

/// How one bad input is delivered.
enum Send {
    /// Raw bytes on a fresh connection; the write side is shut after them when the
    /// flag is set.
    Http(Vec<u8>, bool),
    /// Frames on an accepted alert socket of t1/s1: (first byte, masked, payload,
    /// announced length).
    Frame(u8, bool, Vec<u8>, Option<u64>),
    /// An upgrade request with these extra headers.
    Upgrade(Vec<(&'static str, &'static str)>),
}

fn request(method: &str, path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
    common::format_request(method, path, token, Some(body), &[])
}

/// The quantity of t1/s1/KEEP as the server reports it.
fn kept_quantity(server: &TestServer) -> f64 {
    let token = server.token("t1", &["s1"]);
    let reply = server.http(
        "GET",
        "/api/v1/tenants/t1/stores/s1/stock/KEEP",
        Some(&token),
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["data"]["currentQuantity"]
        .as_f64()
        .unwrap_or_else(|| panic!("no quantity in {}", reply.text()))
}

#[test]
fn each_bad_input_gets_its_answer_and_nothing_is_lost() {
    let server = TestServer::start_with("[http]\nrequest_timeout_seconds = 1", &[]);
    let token = server.token("t1", &["s1"]);
    let mut expected = 0.0;

    let long_line = {
        let mut bytes = b"GET /".to_vec();
        bytes.extend(std::iter::repeat_n(b'a', 100 * 1024));
        bytes.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        bytes
    };
    let many_headers = {
        let mut bytes = b"GET /health HTTP/1.1\r\n".to_vec();
        for i in 0..10_000 {
            bytes.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes
    };
    let with_length = |length: &str| {
        format!("PUT {UPDATE} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
            .into_bytes()
    };
    let short_body = {
        let mut bytes = with_length("100");
        bytes.extend_from_slice(br#"{"quantityChange""#);
        bytes
    };
    let bad_json = |body: &str| request("PUT", UPDATE, Some(&token), body);

    let cases: Vec<(&str, Send, Expect)> =
        vec![
        (
            "garbage bytes",
            Send::Http(b"\x00\x01\xff\xfe GARBAGE\r\n\r\n".to_vec(), false),
            Expect::Status(400),
        ),
        (
            "100 KB request line",
            Send::Http(long_line, false),
            Expect::Status(431),
        ),
        (
            "10,000 headers",
            Send::Http(many_headers, false),
            Expect::Status(431),
        ),
        (
            "negative Content-Length",
            Send::Http(with_length("-5"), false),
            Expect::Status(400),
        ),
        (
            "Content-Length past u64",
            Send::Http(with_length("99999999999999999999999"), false),
            Expect::Status(400),
        ),
        (
            "Content-Length of usize::MAX on a stock route",
            Send::Http(with_length("18446744073709551615"), false),
            Expect::Status(413),
        ),
        (
            "Content-Length of usize::MAX on an unknown path",
            Send::Http(
                b"GET /nope HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\nGET /health \
                  HTTP/1.1\r\n\r\n"
                    .to_vec(),
                false,
            ),
            Expect::Status(404),
        ),
        (
            "body shorter than announced, then silence",
            Send::Http(short_body.clone(), false),
            Expect::Status(408),
        ),
        (
            "body shorter than announced, then EOF",
            Send::Http(short_body, true),
            Expect::Silence,
        ),
        (
            "invalid UTF-8 in the path",
            Send::Http(
                b"GET /api/v1/tenants/t\xff\xfe/stores/s1/stock HTTP/1.1\r\n\r\n".to_vec(),
                false,
            ),
            Expect::Status(400),
        ),
        (
            "dot-dot segment",
            Send::Http(
                request("GET", "/api/v1/tenants/../stores/s1/stock", Some(&token), ""),
                false,
            ),
            Expect::Status(400),
        ),
        (
            "percent-encoded slash",
            Send::Http(
                request(
                    "GET",
                    "/api/v1/tenants/t1/stores/s1%2F..%2Fs2/stock",
                    Some(&token),
                    "",
                ),
                false,
            ),
            Expect::Status(400),
        ),
        (
            "duplicate JSON keys",
            Send::Http(
                bad_json(
                    r#"{"quantityChange": 1, "quantityChange": 500, "updateType": "sale"}"#,
                ),
                false,
            ),
            Expect::Status(400),
        ),
        (
            "NaN in JSON",
            Send::Http(
                bad_json(r#"{"quantityChange": NaN, "updateType": "sale"}"#),
                false,
            ),
            Expect::Status(400),
        ),
        (
            "1e400 in JSON",
            Send::Http(
                bad_json(r#"{"quantityChange": 1e400, "updateType": "sale"}"#),
                false,
            ),
            Expect::Status(400),
        ),
        (
            "WebSocket frame without masking",
            Send::Frame(0x81, false, b"ping".to_vec(), None),
            Expect::Close(1002),
        ),
        (
            "1 MB WebSocket message",
            Send::Frame(0x81, true, vec![b'a'; 4096], Some(1 << 20)),
            Expect::Close(1009),
        ),
        (
            "fragmented control frame",
            Send::Frame(0x09, true, b"x".to_vec(), None),
            Expect::Close(1002),
        ),
        (
            "wrong Sec-WebSocket-Version",
            Send::Upgrade(vec![("Sec-WebSocket-Version", "8")]),
            Expect::Status(426),
        ),
    ];

    for (name, send, expect) in cases {
        // An acknowledged update before each case, which must survive it.
        let reply = server.update("t1", "s1", "KEEP", 1.0);
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        expected += 1.0;

        match (send, expect) {
            (Send::Http(bytes, shut), expect) => {
                let mut client = HttpClient::connect(server.addr);
                client.write_raw(&bytes);
                if shut {
                    client.stream.shutdown(Shutdown::Write).expect("shutdown");
                }
                let reply = client.try_read();
                match expect {
                    Expect::Status(status) => {
                        let reply = reply.unwrap_or_else(|| panic!("{name}: no response"));
                        assert_eq!(reply.status, status, "{name}: {}", reply.text());
                    }
                    Expect::Silence => {
                        assert!(reply.is_none(), "{name}: {reply:?}");
                    }
                    Expect::Close(_) => unreachable!("{name}"),
                }
            }
            (Send::Frame(first, masked, payload, announced), Expect::Close(code)) => {
                let target = format!("/api/v1/ws/t1/s1?token={token}");
                let (status, mut ws) = raw_upgrade(server.addr, &target, &[]);
                assert_eq!(status, 101, "{name}");
                let greeting = ws.read_frame().expect("greeting");
                assert_eq!(greeting.0, 0x1, "{name}");
                ws.send_frame(first, masked, &payload, announced);
                assert_eq!(ws.expect_close(), code, "{name}");
            }
            (Send::Upgrade(headers), Expect::Status(status)) => {
                let target = format!("/api/v1/ws/t1/s1?token={token}");
                let (got, _) = raw_upgrade(server.addr, &target, &headers);
                assert_eq!(got, status, "{name}");
            }
            _ => unreachable!("{name}: case and expectation do not fit"),
        }

        let mut probe = HttpClient::connect(server.addr);
        probe.send("GET", "/health", None, None, &[]);
        let healthy = probe.try_read().is_some_and(|r| r.status == 200);
        assert!(
            healthy,
            "{name}: server stopped serving: {}",
            server.log_text()
        );
        assert_eq!(
            kept_quantity(&server),
            expected,
            "{name}: an update was lost"
        );
    }
}

#[test]
fn per_ip_connection_cap_answers_503_and_counts_the_refusal() {
    let server = TestServer::start_with(
        "[server]\nmax_connections_per_ip = 2\nnew_connections_burst = 100",
        &[],
    );
    let mut first = HttpClient::connect(server.addr);
    let mut second = HttpClient::connect(server.addr);
    for client in [&mut first, &mut second] {
        client.send("GET", "/health", None, None, &[]);
        assert_eq!(client.read().status, 200);
    }

    let refused = read_refusal(server.addr).expect("a 503");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert_eq!(refused.header("Connection"), Some("close"));

    // A slot freed is a slot for the same client again.
    drop(first);
    let metrics = loop {
        let mut client = HttpClient::connect(server.addr);
        client.send("GET", "/metrics", None, None, &[]);
        if let Some(reply) = client.try_read().filter(|r| r.status == 200) {
            break reply.text();
        }
    };
    let sample = "stockalert_websocket_connection_attempts_total{result=\"rejected\"}";
    assert!(metric(&metrics, sample).unwrap_or(0.0) >= 1.0, "{metrics}");
}

#[test]
fn connect_rate_per_ip_answers_429_with_retry_after_and_logs_once() {
    let server = TestServer::start_with(
        "[server]\nnew_connections_per_ip_per_second = 1\nnew_connections_burst = 2",
        &[],
    );
    assert!(server.healthy());
    assert!(server.healthy());

    let mut refused = 0;
    for _ in 0..5 {
        if let Some(reply) = read_refusal(server.addr) {
            assert_eq!(reply.status, 429, "{}", reply.text());
            let retry: u64 = reply
                .header("Retry-After")
                .expect("Retry-After")
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry), "{retry}");
            refused += 1;
        }
    }
    assert!(refused >= 4, "only {refused} of 5 refused");

    // One summary line for the window, not one per attempt.
    let line = server.wait_log(|v| v["event"] == "connections_refused");
    assert!(line["rate_limited"].as_u64().unwrap() >= 4, "{line}");
    assert_eq!(line["client"], "127.0.0.1");
    let per_attempt = server
        .logs()
        .iter()
        .filter(|v| v["event"] == "connections_refused")
        .count();
    assert_eq!(per_attempt, 1);
}

#[test]
fn total_connection_limit_answers_503() {
    let server = TestServer::start_with(
        "[server]\nmax_connections = 2\nmax_connections_per_ip = 2",
        &[],
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = HttpClient::connect(server.addr);
        client.send("GET", "/health", None, None, &[]);
        assert_eq!(client.read().status, 200);
        held.push(client);
    }
    let refused = read_refusal(server.addr).expect("a 503");
    assert_eq!(refused.status, 503);
    assert!(
        refused.text().contains("limit of 2 connections"),
        "{}",
        refused.text()
    );
}

#[test]
fn head_header_and_body_limits_with_a_larger_batch_limit() {
    let server = TestServer::start_with(
        "[http]\nmax_head_bytes = 512\nmax_headers = 8\nmax_body_bytes = 200\n\
         max_batch_body_bytes = 2000",
        &[],
    );
    let token = server.token("t1", &["s1"]);

    let long = "x".repeat(600);
    let reply = server.http("GET", &format!("/health?{long}"), None, None);
    assert_eq!(reply.status, 431);

    let mut client = HttpClient::connect(server.addr);
    let headers: Vec<(String, String)> = (0..9).map(|i| (format!("X-{i}"), "1".into())).collect();
    let extra: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    client.send("GET", "/health", None, None, &extra);
    assert_eq!(client.read().status, 431);

    let note = "n".repeat(250);
    let body = format!(r#"{{"quantityChange": 1, "updateType": "sale", "note": "{note}"}}"#);
    let reply = server.http("PUT", UPDATE, Some(&token), Some(&body));
    assert_eq!(reply.status, 413, "{}", reply.text());

    let line = format!(
        r#"{{"itemCode": "KEEP", "quantityChange": 1, "updateType": "sale", "note": "{note}"}}"#
    );
    let batch = format!(r#"{{"updates": [{line}]}}"#);
    assert!(batch.len() > 200 && batch.len() < 2000);
    let path = "/api/v1/tenants/t1/stores/s1/stock/updates";
    let reply = server.http("POST", path, Some(&token), Some(&batch));
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[test]
fn slow_head_gets_408_and_idle_keep_alive_is_closed() {
    let server = TestServer::start_with(
        "[http]\nrequest_timeout_seconds = 1\nkeep_alive_seconds = 1",
        &[],
    );
    let mut slow = HttpClient::connect(server.addr);
    slow.write_raw(b"GET /health HTTP/1.1\r\nHost: x\r\n");
    let reply = slow.read();
    assert_eq!(reply.status, 408);
    assert!(slow.closed());

    let mut idle = HttpClient::connect(server.addr);
    idle.send("GET", "/health", None, None, &[]);
    assert_eq!(idle.read().status, 200);
    assert!(
        idle.closed(),
        "an idle keep-alive connection must be closed"
    );
    server.wait_log(|v| v["event"] == "http_request_timeout");
}

#[test]
fn inbound_websocket_message_over_the_limit_closes_1009() {
    let server = TestServer::start_with("[websocket]\nmax_message_bytes = 256", &[]);
    let (mut ws, _) = server.subscribe("t1", "s1");
    ws.send_text(&"a".repeat(300));
    assert_eq!(ws.expect_close().0, 1009);
    assert!(server.healthy());
}

#[test]
fn token_expiry_closes_1008_at_that_moment() {
    let server = TestServer::start();
    let exp = unix_now() + 2;
    let token = token_with("t1", &["s1"], exp, common::SECRET);
    let mut ws = connect_ws(&server.ws_url("t1", "s1", &token));
    assert_eq!(ws.next_json()["type"], "connection");
    let (code, reason) = ws.expect_close();
    assert_eq!((code, reason.as_str()), (1008, "Token expired"));
    assert!(now_secs() >= exp as f64, "closed before the token expired");
}

#[test]
fn renewal_replaces_the_token_and_moves_its_expiry() {
    let server = TestServer::start();
    let first_exp = unix_now() + 2;
    let token = token_with("t1", &["s1"], first_exp, common::SECRET);
    let mut ws = connect_ws(&server.ws_url("t1", "s1", &token));
    assert_eq!(ws.next_json()["type"], "connection");

    let renewed_exp = first_exp + 2;
    let renewed = token_with("t1", &["s1"], renewed_exp, common::SECRET);
    ws.send_text(&json!({"type": "token", "token": renewed}).to_string());
    ws.assert_nothing_pending();

    let (code, reason) = ws.expect_close();
    assert_eq!((code, reason.as_str()), (1008, "Token expired"));
    assert!(
        now_secs() >= renewed_exp as f64,
        "closed at the old expiry, not the renewed one"
    );
}

#[test]
fn renewal_with_a_bad_or_foreign_token_closes_1008() {
    let server = TestServer::start();
    let cases = [
        json!({"type": "token", "token": "not.a.jwt"}).to_string(),
        json!({"type": "token"}).to_string(),
        json!({"type": "token", "token": server.token("t1", &["s2"])}).to_string(),
        json!({"type": "token", "token": server.token("t2", &[])}).to_string(),
        json!({"type": "token", "token": token_with("t1", &[], unix_now() - 5, common::SECRET)})
            .to_string(),
    ];
    for message in cases {
        let (mut ws, _) = server.subscribe("t1", "s1");
        ws.send_text(&message);
        let (code, reason) = ws.expect_close();
        assert_eq!(
            (code, reason.as_str()),
            (1008, "Authentication failed"),
            "{message}"
        );
    }
    assert!(server.healthy());
    assert!(
        !server.log_text().contains("not.a.jwt"),
        "a token reached the log"
    );
}

#[test]
fn repeated_auth_failures_get_429_for_the_rest_of_the_window() {
    let server =
        TestServer::start_with("[auth]\nfailure_limit = 3\nfailure_window_seconds = 2", &[]);
    let path = "/api/v1/tenants/t1/stores/s1/stock";
    let good = server.token("t1", &["s1"]);
    let foreign = server.token("t1", &["s2"]);

    assert_eq!(server.http("GET", path, Some("bad"), None).status, 401);
    assert_eq!(server.http("GET", path, Some(&foreign), None).status, 403);
    let mut ws = connect_ws(&server.ws_url("t1", "s1", "bad"));
    assert_eq!(ws.expect_close().0, 1008);

    // Past the limit: even a good token waits, and so does an upgrade.
    let blocked = server.http("GET", path, Some(&good), None);
    assert_eq!(blocked.status, 429, "{}", blocked.text());
    assert!(blocked.header("Retry-After").is_some());
    let target = format!("/api/v1/ws/t1/s1?token={good}");
    let (status, _) = raw_upgrade(server.addr, &target, &[]);
    assert_eq!(status, 429);
    assert!(server.healthy(), "health is not guarded");

    // One line for the window, with the count; then the client may try again.
    let line = server.wait_log(|v| v["event"] == "auth_failures");
    assert_eq!(line["count"], 3, "{line}");
    assert_eq!(line["blocked"], 2, "{line}");
    assert_eq!(server.http("GET", path, Some(&good), None).status, 200);
    let warnings = server
        .logs()
        .iter()
        .filter(|v| v["event"] == "auth_failures_blocked")
        .count();
    assert_eq!(warnings, 1);
}

#[test]
fn origin_allow_list_refuses_other_origins_with_403() {
    let server = TestServer::start_with(
        "[websocket]\nallowed_origins = [\"https://backoffice.example\"]",
        &[],
    );
    let token = server.token("t1", &["s1"]);
    let target = format!("/api/v1/ws/t1/s1?token={token}");

    let (status, _) = raw_upgrade(server.addr, &target, &[("Origin", "https://evil.example")]);
    assert_eq!(status, 403);
    let (status, _) = raw_upgrade(server.addr, &target, &[]);
    assert_eq!(status, 403, "no Origin is not an allowed origin");
    let (status, mut ws) = raw_upgrade(
        server.addr,
        &target,
        &[("Origin", "https://backoffice.example")],
    );
    assert_eq!(status, 101);
    assert_eq!(ws.read_frame().expect("greeting").0, 0x1);
}

/// Keys, algorithm and token for one asymmetric case.
fn asymmetric(algorithm: &str, public: &str, private: &str) {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let server = TestServer::start_with(
        &format!(
            "[auth]\nalgorithm = \"{algorithm}\"\njwt_secret = \"\"\n\
             public_key_file = \"{fixtures}{public}\""
        ),
        &[],
    );
    let pem = std::fs::read(format!("{fixtures}{private}")).expect("private key");
    let (key, alg) = if algorithm == "RS256" {
        (
            jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
            jsonwebtoken::Algorithm::RS256,
        )
    } else {
        (
            jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("ec key"),
            jsonwebtoken::Algorithm::ES256,
        )
    };
    let claims = json!({"tenant_id": "t1", "store_code": "s1", "exp": unix_now() + 600});
    let token =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).expect("sign");

    let body = r#"{"quantityChange": 7, "updateType": "purchase"}"#;
    let reply = server.http("PUT", UPDATE, Some(&token), Some(body));
    assert_eq!(reply.status, 200, "{algorithm}: {}", reply.text());

    let hs256 = server.token("t1", &["s1"]);
    let reply = server.http("PUT", UPDATE, Some(&hs256), Some(body));
    assert_eq!(reply.status, 401, "{algorithm} server took an HS256 token");

    let mut ws = connect_ws(&server.ws_url("t1", "s1", &token));
    assert_eq!(ws.next_json()["type"], "connection");
}

#[test]
fn rs256_tokens_verify_end_to_end() {
    asymmetric("RS256", "rsa_public.pem", "rsa_test_only_private.pem");
}

#[test]
fn es256_tokens_verify_end_to_end() {
    asymmetric("ES256", "ec_public.pem", "ec_test_only_private.pem");
}

#[test]
fn tokens_cannot_reach_another_store_or_tenant() {
    let server = TestServer::start_with("[auth]\nfailure_limit = 100", &[]);
    let s1_only = server.token("t1", &["s1"]);
    let other_tenant = server.token("t2", &[]);
    let body = r#"{"quantityChange": 5, "updateType": "purchase"}"#;
    let s2 = "/api/v1/tenants/t1/stores/s2/stock/X/update";

    let reply = server.http("PUT", s2, Some(&s1_only), Some(body));
    assert_eq!(reply.status, 403, "{}", reply.text());
    let reply = server.http("PUT", UPDATE, Some(&other_tenant), Some(body));
    assert_eq!(reply.status, 403, "{}", reply.text());
    let reply = server.http(
        "GET",
        "/api/v1/tenants/t1/stores/s2/stock",
        Some(&s1_only),
        None,
    );
    assert_eq!(reply.status, 403);

    let mut ws = connect_ws(&server.ws_url("t1", "s2", &s1_only));
    assert_eq!(ws.expect_close(), (1008, "Store access denied".to_owned()));
    let mut ws = connect_ws(&server.ws_url("t1", "s1", &other_tenant));
    assert_eq!(ws.expect_close(), (1008, "Tenant ID mismatch".to_owned()));

    // Nothing of s2 was written, and a renewal cannot move a socket to s2's tenant.
    let everything = server.token("t1", &[]);
    let reply = server.http(
        "GET",
        "/api/v1/tenants/t1/stores/s2/stock/X",
        Some(&everything),
        None,
    );
    assert_eq!(reply.status, 404, "{}", reply.text());
}

/// Seconds since the epoch, with fractions.
fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
