//! Alerts end to end: the real binary, a real WebSocket client, updates over HTTP.

mod common;

use common::{TestServer, connect_ws, token_with, unix_now};

#[test]
fn connection_message_then_reorder_alert_field_by_field() {
    let server = TestServer::start();
    server.set_reorder("tenant001", "store001", "ITEM001", 50.0, 100.0);
    server.update("tenant001", "store001", "ITEM001", 60.0);
    let (mut ws, greeting) = server.subscribe("tenant001", "store001");

    assert_eq!(greeting["status"], "connected");
    assert_eq!(greeting["tenant_id"], "tenant001");
    assert_eq!(greeting["store_code"], "store001");
    assert!(greeting["timestamp"].as_str().unwrap().ends_with('Z'));

    let reply = server.update("tenant001", "store001", "ITEM001", -20.0);
    assert_eq!(reply.status, 200, "{}", reply.text());

    let text = ws.next_text();
    let prefix = concat!(
        r#"{"type":"stock_alert","alert_type":"reorder_point","tenant_id":"tenant001","#,
        r#""store_code":"store001","item_code":"ITEM001","current_quantity":40.0,"#,
        r#""reorder_point":50.0,"reorder_quantity":100.0,"timestamp":""#
    );
    assert!(text.starts_with(prefix), "{text}");
    let alert: serde_json::Value = serde_json::from_str(&text).unwrap();
    let timestamp = alert["timestamp"].as_str().unwrap();
    assert_eq!(
        timestamp.len(),
        "2024-01-01T12:34:56.789Z".len(),
        "{timestamp}"
    );
    assert!(timestamp.ends_with('Z'));
}

#[test]
fn minimum_alert_follows_reorder_alert_for_one_update() {
    let server = TestServer::start();
    server.set_reorder("t1", "s1", "A", 20.0, 30.0);
    server.set_minimum("t1", "s1", "A", 10.0);
    server.update("t1", "s1", "A", 50.0);
    let (mut ws, _) = server.subscribe("t1", "s1");

    server.update("t1", "s1", "A", -45.0);

    let first = ws.next_json();
    let second = ws.next_json();
    assert_eq!(first["alert_type"], "reorder_point");
    assert_eq!(second["alert_type"], "minimum_stock");
    assert_eq!(second["current_quantity"], 5.0);
    assert_eq!(second["minimum_quantity"], 10.0);
    assert_eq!(second["reorder_quantity"], 30.0);
    assert!(second.get("reorder_point").is_none(), "{second}");
}

#[test]
fn auth_failures_complete_the_handshake_then_close_1008() {
    let server = TestServer::start();
    let base = format!("ws://{}/api/v1/ws/t1/s1", server.addr);
    let cases = [
        (base.clone(), "No token provided"),
        (format!("{base}?token="), "No token provided"),
        (format!("{base}?token=not.a.jwt"), "Authentication failed"),
        (
            format!(
                "{base}?token={}",
                token_with("t1", &[], unix_now() - 10, common::SECRET)
            ),
            "Authentication failed",
        ),
        (
            format!(
                "{base}?token={}",
                token_with(
                    "t1",
                    &[],
                    unix_now() + 60,
                    "another-secret-0123456789abcdef-xyz"
                )
            ),
            "Authentication failed",
        ),
        (
            format!("{base}?token={}", server.token("t2", &[])),
            "Tenant ID mismatch",
        ),
        (
            format!("{base}?token={}", server.token("t1", &["s2"])),
            "Store access denied",
        ),
    ];

    for (url, reason) in cases {
        let mut ws = connect_ws(&url);
        let (code, text) = ws.expect_close();
        assert_eq!((code, text.as_str()), (1008, reason), "{reason}");
    }
    assert!(server.healthy());
    assert!(
        !server.log_text().contains("token="),
        "a query string reached the log"
    );
}

#[test]
fn alerts_reach_every_client_of_the_store_and_no_other() {
    let server = TestServer::start();
    server.set_reorder("t1", "s1", "A", 10.0, 5.0);
    let (mut first, _) = server.subscribe("t1", "s1");
    let (mut second, _) = server.subscribe("t1", "s1");
    let (mut other_store, _) = server.subscribe("t1", "s2");
    let (mut other_tenant, _) = server.subscribe("t2", "s1");

    server.update("t1", "s1", "A", 3.0);

    assert_eq!(first.next_json()["item_code"], "A");
    assert_eq!(second.next_json()["item_code"], "A");
    other_store.assert_nothing_pending();
    other_tenant.assert_nothing_pending();
}

#[test]
fn late_joiner_gets_the_current_state_without_seq_or_cooldown() {
    let server = TestServer::start_with("[alerts]\ncooldown_seconds = 3600", &[]);
    server.set_reorder("t1", "s1", "LOW", 20.0, 30.0);
    server.set_minimum("t1", "s1", "LOW", 10.0);
    server.set_reorder("t1", "s1", "FINE", 5.0, 30.0);
    server.update("t1", "s1", "FINE", 50.0);

    let (mut ws, _) = server.subscribe("t1", "s1");
    let reorder = ws.next_json();
    let minimum = ws.next_json();
    assert_eq!(
        (
            reorder["item_code"].as_str(),
            reorder["alert_type"].as_str()
        ),
        (Some("LOW"), Some("reorder_point"))
    );
    assert_eq!(minimum["alert_type"], "minimum_stock");
    assert!(reorder.get("seq").is_none(), "{reorder}");
    ws.assert_nothing_pending();

    // The current-state alerts started no cooldown: a live alert still goes out.
    server.update("t1", "s1", "LOW", -1.0);
    assert_eq!(ws.next_json()["alert_type"], "reorder_point");
    assert_eq!(ws.next_json()["alert_type"], "minimum_stock");
}
