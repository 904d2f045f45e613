//! The stock HTTP API through the real binary: every route's envelope, each error
//! status, and the HTTP/1.1 framing cases (100-continue, keep-alive, pipelining, a
//! request dribbled one byte at a time, HEAD).

mod common;

use std::io::Read;

use common::{HttpClient, Reply, TestServer, format_request, token_with, unix_now};
use serde_json::{Value, json};

/// Path prefix of one store's stock API.
fn stock(tenant: &str, store: &str) -> String {
    format!("/api/v1/tenants/{tenant}/stores/{store}/stock")
}

/// Asserts the failure envelope: `success: false`, the status echoed in `code`,
/// `data: null`, and a message containing `needle`.
fn assert_failure(reply: &Reply, status: u16, needle: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], status, "{body}");
    assert!(body["data"].is_null(), "{body}");
    assert!(body["operation"].is_string(), "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "message {message:?} does not name {needle:?}"
    );
}

/// Asserts the success envelope and returns its `data`.
fn data(reply: &Reply, operation: &str) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["code"], 200, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert_eq!(body["operation"], operation, "{body}");
    body["data"].clone()
}

/// Item codes of a list of items, in the order given.
fn codes(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("an array of items")
        .iter()
        .map(|item| item["itemCode"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn update_returns_the_camel_case_record_and_get_returns_the_item() {
    let server = TestServer::start();
    let token = server.token("t1", &["s1"]);
    let base = stock("t1", "s1");

    let body = r#"{"quantityChange": 12.5, "updateType": "purchase",
        "referenceId": "TX-1", "operatorId": "op7", "note": "delivery"}"#;
    let reply = server.http(
        "PUT",
        &format!("{base}/A1/update"),
        Some(&token),
        Some(body),
    );
    let record = data(&reply, "update_stock");
    let fields: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "tenantId",
        "storeCode",
        "itemCode",
        "updateType",
        "quantityChange",
        "beforeQuantity",
        "afterQuantity",
        "referenceId",
        "timestamp",
        "operatorId",
        "note",
    ];
    let mut got = fields.clone();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected, "{record}");
    assert_eq!(record["tenantId"], "t1");
    assert_eq!(record["storeCode"], "s1");
    assert_eq!(record["itemCode"], "A1");
    assert_eq!(record["updateType"], "purchase");
    assert_eq!(record["quantityChange"], 12.5);
    assert_eq!(record["beforeQuantity"], 0.0);
    assert_eq!(record["afterQuantity"], 12.5);
    assert_eq!(record["referenceId"], "TX-1");
    assert_eq!(record["operatorId"], "op7");
    assert_eq!(record["note"], "delivery");
    assert!(record["timestamp"].as_str().unwrap().ends_with('Z'));

    // The reorder and minimum calls answer with the item itself.
    let reply = server.http(
        "PUT",
        &format!("{base}/A1/reorder"),
        Some(&token),
        Some(r#"{"reorderPoint": 5, "reorderQuantity": 20}"#),
    );
    let item = data(&reply, "set_reorder_point");
    assert_eq!(
        (
            item["reorderPoint"].clone(),
            item["reorderQuantity"].clone()
        ),
        (json!(5.0), json!(20.0))
    );
    let reply = server.http(
        "PUT",
        &format!("{base}/A1/minimum"),
        Some(&token),
        Some(r#"{"minimumQuantity": 3}"#),
    );
    assert_eq!(data(&reply, "set_minimum_stock")["minimumQuantity"], 3.0);

    let reply = server.http("GET", &format!("{base}/A1"), Some(&token), None);
    let item = data(&reply, "get_stock");
    let mut keys: Vec<&str> = item
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = vec![
        "tenantId",
        "storeCode",
        "itemCode",
        "currentQuantity",
        "minimumQuantity",
        "reorderPoint",
        "reorderQuantity",
        "lastUpdated",
        "lastTransactionId",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected, "{item}");
    assert_eq!(item["currentQuantity"], 12.5);
    assert_eq!(item["minimumQuantity"], 3.0);
    assert_eq!(item["reorderPoint"], 5.0);
    assert_eq!(item["reorderQuantity"], 20.0);
    assert_eq!(item["lastTransactionId"], "TX-1");
    assert!(item["lastUpdated"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn snake_case_keys_are_accepted_like_camel_case() {
    let server = TestServer::start();
    let token = server.token("t1", &[]);
    let base = stock("t1", "s1");

    let body = r#"{"quantity_change": -4, "update_type": "sale", "reference_id": "R9",
        "operator_id": "op1"}"#;
    let reply = server.http("PUT", &format!("{base}/B/update"), Some(&token), Some(body));
    let record = data(&reply, "update_stock");
    assert_eq!(record["afterQuantity"], -4.0);
    assert_eq!(record["referenceId"], "R9");
    assert_eq!(record["operatorId"], "op1");

    let body = r#"{"reorder_point": 7, "reorder_quantity": 70}"#;
    let reply = server.http(
        "PUT",
        &format!("{base}/B/reorder"),
        Some(&token),
        Some(body),
    );
    assert_eq!(data(&reply, "set_reorder_point")["reorderPoint"], 7.0);

    let body = r#"{"minimum_quantity": 2}"#;
    let reply = server.http(
        "PUT",
        &format!("{base}/B/minimum"),
        Some(&token),
        Some(body),
    );
    assert_eq!(data(&reply, "set_minimum_stock")["minimumQuantity"], 2.0);
}

#[test]
fn thresholds_on_a_new_item_create_it_at_zero() {
    let server = TestServer::start();
    let token = server.token("t1", &["s1"]);
    let base = stock("t1", "s1");
    server.set_minimum("t1", "s1", "NEW", 4.0);

    let reply = server.http("GET", &format!("{base}/NEW"), Some(&token), None);
    let item = data(&reply, "get_stock");
    assert_eq!(item["currentQuantity"], 0.0);
    assert_eq!(item["minimumQuantity"], 4.0);
    assert_eq!(item["reorderPoint"], 0.0);
}

#[test]
fn list_is_sorted_by_item_code_and_paginated() {
    let server = TestServer::start();
    let token = server.token("t1", &["s1"]);
    for item in ["C", "A", "E", "B", "D"] {
        assert_eq!(server.update("t1", "s1", item, 1.0).status, 200);
    }
    server.update("t1", "s2", "OTHER", 1.0);

    let reply = server.http("GET", &stock("t1", "s1"), Some(&token), None);
    let page = data(&reply, "get_store_stocks");
    assert_eq!(codes(&page["data"]), ["A", "B", "C", "D", "E"]);
    assert_eq!(
        page["metadata"],
        json!({"total": 5, "page": 1, "limit": 100, "sort": null, "filter": null})
    );

    let path = format!("{}?page=2&limit=2", stock("t1", "s1"));
    let page = data(
        &server.http("GET", &path, Some(&token), None),
        "get_store_stocks",
    );
    assert_eq!(codes(&page["data"]), ["C", "D"]);
    assert_eq!(
        page["metadata"],
        json!({"total": 5, "page": 2, "limit": 2, "sort": null, "filter": null})
    );

    let path = format!("{}?page=4&limit=2", stock("t1", "s1"));
    let page = data(
        &server.http("GET", &path, Some(&token), None),
        "get_store_stocks",
    );
    assert_eq!(codes(&page["data"]), Vec::<String>::new());
    assert_eq!(page["metadata"]["total"], 5);

    for query in ["limit=0", "limit=1001", "page=0", "page=x"] {
        let path = format!("{}?{query}", stock("t1", "s1"));
        let reply = server.http("GET", &path, Some(&token), None);
        let needle = query.split('=').next().unwrap();
        assert_failure(&reply, 400, needle);
    }
    let path = format!("{}?limit=1000", stock("t1", "s1"));
    assert_eq!(server.http("GET", &path, Some(&token), None).status, 200);
}

#[test]
fn history_is_newest_first_and_paginated() {
    let server = TestServer::start();
    let token = server.token("t1", &["s1"]);
    for change in [1.0, 2.0, 3.0] {
        assert_eq!(server.update("t1", "s1", "H", change).status, 200);
    }
    server.update("t1", "s1", "OTHER", 9.0);

    let path = format!("{}/H/history?page=1&limit=2", stock("t1", "s1"));
    let page = data(
        &server.http("GET", &path, Some(&token), None),
        "get_stock_history",
    );
    let changes: Vec<f64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["quantityChange"].as_f64().unwrap())
        .collect();
    assert_eq!(changes, [3.0, 2.0]);
    assert_eq!(page["data"][0]["beforeQuantity"], 3.0);
    assert_eq!(page["data"][0]["afterQuantity"], 6.0);
    assert_eq!(
        page["metadata"],
        json!({"total": 3, "page": 1, "limit": 2, "sort": null, "filter": null})
    );

    let path = format!("{}/H/history?page=2&limit=2", stock("t1", "s1"));
    let page = data(
        &server.http("GET", &path, Some(&token), None),
        "get_stock_history",
    );
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["quantityChange"], 1.0);
}

#[test]
fn low_and_reorder_alert_lists_follow_the_rules_at_equality() {
    let server = TestServer::start();
    let token = server.token("t1", &["s1"]);
    // Reorder point 10: at 9 and 10 listed, at 11 not; a zero point never lists.
    for (item, stock_level) in [("R09", 9.0), ("R10", 10.0), ("R11", 11.0)] {
        server.update("t1", "s1", item, stock_level);
        server.set_reorder("t1", "s1", item, 10.0, 1.0);
    }
    server.update("t1", "s1", "R00", -5.0);
    // Minimum 5: only under it is low; at 5 it is not; a zero minimum never is.
    for (item, stock_level) in [("M04", 4.0), ("M05", 5.0), ("M06", 6.0)] {
        server.update("t1", "s1", item, stock_level);
        server.set_minimum("t1", "s1", item, 5.0);
    }
    server.update("t1", "s1", "M00", -1.0);

    let path = format!("{}/reorder-alerts", stock("t1", "s1"));
    let reply = server.http("GET", &path, Some(&token), None);
    assert_eq!(codes(&data(&reply, "get_reorder_alerts")), ["R09", "R10"]);

    let path = format!("{}/low", stock("t1", "s1"));
    let reply = server.http("GET", &path, Some(&token), None);
    assert_eq!(codes(&data(&reply, "get_low_stocks")), ["M04"]);
}

#[test]
fn bad_bodies_and_identifiers_get_400_naming_the_problem() {
    let server = TestServer::start();
    let token = server.token("t1", &[]);
    let base = stock("t1", "s1");
    let update = format!("{base}/ITEM/update");
    let reorder = format!("{base}/ITEM/reorder");
    let minimum = format!("{base}/ITEM/minimum");

    let cases: [(&str, &str, &str); 10] = [
        (
            &update,
            r#"{"quantityChange": 1, "updateType": "sale""#,
            "invalid request body",
        ),
        (&update, r#"{"updateType": "sale"}"#, "quantityChange"),
        (
            &update,
            r#"{"quantityChange": "3", "updateType": "sale"}"#,
            "invalid type",
        ),
        (
            &update,
            r#"{"quantityChange": 1, "updateType": "stolen"}"#,
            "stolen",
        ),
        (
            &update,
            r#"{"quantityChange": 1e999, "updateType": "sale"}"#,
            "invalid request body",
        ),
        (
            &reorder,
            r#"{"reorderPoint": -1, "reorderQuantity": 5}"#,
            "reorderPoint",
        ),
        (
            &reorder,
            r#"{"reorderPoint": 1, "reorderQuantity": -5}"#,
            "reorderQuantity",
        ),
        (&reorder, r#"{"reorderPoint": 1}"#, "reorderQuantity"),
        (&minimum, r#"{"minimumQuantity": -0.5}"#, "minimumQuantity"),
        (
            &minimum,
            r#"{"minimumQuantity": null}"#,
            "invalid request body",
        ),
    ];
    for (path, body, needle) in cases {
        let reply = server.http("PUT", path, Some(&token), Some(body));
        assert_failure(&reply, 400, needle);
    }

    // A rejected body changed nothing.
    let reply = server.http("GET", &format!("{base}/ITEM"), Some(&token), None);
    assert_eq!(reply.status, 404, "{}", reply.text());

    let long = "x".repeat(65);
    let bad_paths = [
        (format!("{base}/{long}/update"), "item_code"),
        (format!("{base}/bad$item/update"), "item_code"),
        (format!("{base}/../update"), "item_code"),
        (
            "/api/v1/tenants/t%201/stores/s1/stock/A/update".to_owned(),
            "tenant_id",
        ),
        (
            format!("/api/v1/tenants/t1/stores/{long}/stock/A/update"),
            "store_code",
        ),
    ];
    for (path, needle) in bad_paths {
        let body = r#"{"quantityChange": 1, "updateType": "sale"}"#;
        let reply = server.http("PUT", &path, Some(&token), Some(body));
        assert_failure(&reply, 400, needle);
    }
    let path = format!("{base}/{}", "y".repeat(64));
    assert_eq!(server.http("GET", &path, Some(&token), None).status, 404);
}

#[test]
fn missing_or_invalid_tokens_get_401_with_a_bearer_challenge() {
    let server = TestServer::start();
    let path = format!("{}/A", stock("t1", "s1"));
    let expired = token_with("t1", &[], unix_now() - 60, common::SECRET);
    let forged = token_with(
        "t1",
        &[],
        unix_now() + 60,
        "not-the-secret-0123456789abcdefgh",
    );

    for token in [
        None,
        Some("garbage"),
        Some(expired.as_str()),
        Some(forged.as_str()),
    ] {
        let reply = server.http("GET", &path, token, None);
        assert_eq!(reply.status, 401, "{token:?}: {}", reply.text());
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let body = reply.json();
        assert_eq!(
            (body["success"].clone(), body["code"].clone()),
            (json!(false), json!(401))
        );
        assert!(body["data"].is_null());
    }

    // A scheme other than Bearer is no token at all.
    let mut client = HttpClient::connect(server.addr);
    let token = server.token("t1", &[]);
    let basic = format!("Basic {token}");
    client.send("GET", &path, None, None, &[("Authorization", &basic)]);
    assert_eq!(client.read().status, 401);
}

#[test]
fn tokens_of_another_tenant_or_store_get_403() {
    let server = TestServer::start();
    let path = format!("{}/A", stock("t1", "s1"));

    let other_tenant = server.token("t2", &[]);
    assert_failure(
        &server.http("GET", &path, Some(&other_tenant), None),
        403,
        "",
    );
    let other_store = server.token("t1", &["s2", "s3"]);
    let reply = server.http("GET", &path, Some(&other_store), None);
    assert_failure(&reply, 403, "");
    assert_eq!(reply.header("www-authenticate"), None);

    // The same store list that excludes s1 includes s3, and a tenant-wide token works.
    let path_s3 = format!("{}/A", stock("t1", "s3"));
    assert_eq!(
        server
            .http("GET", &path_s3, Some(&other_store), None)
            .status,
        404
    );
    let tenant_wide = server.token("t1", &[]);
    assert_eq!(
        server.http("GET", &path, Some(&tenant_wide), None).status,
        404
    );
}

#[test]
fn unknown_routes_and_unknown_items_get_404() {
    let server = TestServer::start();
    let token = server.token("t1", &[]);
    // `/` is the dashboard (tests/dashboard.rs); everything unknown is 404.
    for path in [
        "/nope",
        "/api/v1/tenants/t1",
        "/api/v1/tenants/t1/stores/s1/stock/A/b/c",
    ] {
        assert_failure(&server.http("GET", path, Some(&token), None), 404, "");
    }
    let reply = server.http(
        "GET",
        &format!("{}/MISSING", stock("t1", "s1")),
        Some(&token),
        None,
    );
    assert_failure(&reply, 404, "MISSING");
}

#[test]
fn wrong_methods_get_405_with_allow() {
    let server = TestServer::start();
    let token = server.token("t1", &[]);
    let base = stock("t1", "s1");
    let cases = [
        ("GET", format!("{base}/A/update"), "PUT"),
        ("POST", format!("{base}/A/reorder"), "PUT"),
        ("PUT", format!("{base}/low"), "GET, HEAD"),
        ("DELETE", format!("{base}/A"), "GET, HEAD"),
        ("POST", "/health".to_owned(), "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let body = (method == "PUT" || method == "POST").then_some("{}");
        let reply = server.http(method, &path, Some(&token), body);
        assert_failure(&reply, 405, allow);
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }
}

#[test]
fn bodies_without_content_length_get_411_and_chunked_bodies_are_refused() {
    let server = TestServer::start();
    let token = server.token("t1", &[]);
    let path = format!("{}/A/update", stock("t1", "s1"));

    let mut client = HttpClient::connect(server.addr);
    let head = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    client.write_raw(head.as_bytes());
    let reply = client.read();
    assert_failure(&reply, 411, "Content-Length");
    assert!(
        client.closed(),
        "the connection stays open after losing framing"
    );

    let mut client = HttpClient::connect(server.addr);
    let body = r#"{"quantityChange": 1, "updateType": "sale"}"#;
    let chunked = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    client.write_raw(chunked.as_bytes());
    assert_failure(&client.read(), 411, "chunked");
    assert!(client.closed());

    // Nothing was applied.
    let reply = server.http(
        "GET",
        &format!("{}/A", stock("t1", "s1")),
        Some(&token),
        None,
    );
    assert_eq!(reply.status, 404);
}

#[test]
fn oversized_bodies_get_413_and_oversized_heads_get_431() {
    let server = TestServer::start_with(
        "[http]\nmax_body_bytes = 256\nmax_head_bytes = 2048\nmax_headers = 16",
        &[],
    );
    let token = server.token("t1", &[]);
    let path = format!("{}/A/update", stock("t1", "s1"));

    let note = "n".repeat(300);
    let body = format!(r#"{{"quantityChange": 1, "updateType": "sale", "note": "{note}"}}"#);
    let reply = server.http("PUT", &path, Some(&token), Some(&body));
    assert_failure(&reply, 413, "256");

    // Exactly at the limit is still served (the body's own problems aside).
    let fill =
        "n".repeat(256 - r#"{"quantityChange": 1, "updateType": "sale", "note": ""}"#.len());
    let body = format!(r#"{{"quantityChange": 1, "updateType": "sale", "note": "{fill}"}}"#);
    assert_eq!(body.len(), 256);
    let reply = server.http("PUT", &path, Some(&token), Some(&body));
    assert_eq!(reply.status, 200, "{}", reply.text());

    let long = "v".repeat(3000);
    let mut client = HttpClient::connect(server.addr);
    client.send("GET", "/health", None, None, &[("X-Long", &long)]);
    assert_failure(&client.read(), 431, "2048");

    let mut client = HttpClient::connect(server.addr);
    let many: Vec<(String, String)> = (0..20).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    client.send("GET", "/health", None, None, &many);
    assert_failure(&client.read(), 431, "16");
}

#[test]
fn other_http_versions_get_505_and_garbage_gets_400() {
    let server = TestServer::start();
    let mut client = HttpClient::connect(server.addr);
    client.write_raw(b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n");
    assert_failure(&client.read(), 505, "HTTP/1");

    let mut client = HttpClient::connect(server.addr);
    client.write_raw(b"GET /health HTTX/1.1\r\nHost: x\r\n\r\n");
    assert_failure(&client.read(), 400, "malformed");

    // HTTP/1.0 is served, and closed after the response.
    let mut client = HttpClient::connect(server.addr);
    client.write_raw(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(client.read().status, 200);
    assert!(client.closed());
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = TestServer::start();
    let token = server.token("t1", &[]);
    let path = format!("{}/A/update", stock("t1", "s1"));
    let body = r#"{"quantityChange": 5, "updateType": "initial"}"#;
    let mut client = HttpClient::connect(server.addr);

    let request = format_request(
        "PUT",
        &path,
        Some(&token),
        Some(body),
        &[("Expect", "100-continue")],
    );
    let head_len = request.len() - body.len();
    client.write_raw(&request[..head_len]);
    assert!(client.read_continue(), "no 100 Continue before the body");
    client.write_raw(body.as_bytes());
    let reply = client.read();
    assert_eq!(data(&reply, "update_stock")["afterQuantity"], 5.0);

    // A request that cannot be served is refused without waiting for its body.
    let mut client = HttpClient::connect(server.addr);
    let request = format_request(
        "PUT",
        "/nope",
        None,
        Some(body),
        &[("Expect", "100-continue")],
    );
    client.write_raw(&request[..request.len() - body.len()]);
    assert_failure(&client.read(), 404, "");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = TestServer::start();
    let token = server.token("t1", &[]);
    let path = format!("{}/K/update", stock("t1", "s1"));
    let body = r#"{"quantityChange": 1, "updateType": "sale"}"#;
    let mut client = HttpClient::connect(server.addr);

    for expected in 1..=5 {
        client.send("PUT", &path, Some(&token), Some(body), &[]);
        let reply = client.read();
        assert_ne!(
            reply.header("connection"),
            Some("close"),
            "closed after {expected}"
        );
        assert_eq!(
            data(&reply, "update_stock")["afterQuantity"],
            f64::from(expected)
        );
    }
    // An error response that keeps framing keeps the connection too.
    client.send("GET", "/nope", None, None, &[]);
    assert_eq!(client.read().status, 404);
    client.send("GET", "/health", None, None, &[("Connection", "close")]);
    assert_eq!(client.read().status, 200);
    assert!(client.closed(), "Connection: close was not honoured");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start();
    let token = server.token("t1", &[]);
    let base = stock("t1", "s1");
    let mut client = HttpClient::connect(server.addr);

    let mut batch = Vec::new();
    for change in [1, 2, 3] {
        let body = format!(r#"{{"quantityChange": {change}, "updateType": "sale"}}"#);
        batch.extend(format_request(
            "PUT",
            &format!("{base}/P/update"),
            Some(&token),
            Some(&body),
            &[],
        ));
    }
    batch.extend(format_request(
        "GET",
        &format!("{base}/P"),
        Some(&token),
        None,
        &[],
    ));
    batch.extend(format_request("GET", "/missing", None, None, &[]));
    batch.extend(format_request("GET", "/health", None, None, &[]));
    client.write_raw(&batch);

    for after in [1.0, 3.0, 6.0] {
        assert_eq!(data(&client.read(), "update_stock")["afterQuantity"], after);
    }
    assert_eq!(data(&client.read(), "get_stock")["currentQuantity"], 6.0);
    assert_eq!(client.read().status, 404);
    assert_eq!(client.read().status, 200);
}

#[test]
fn a_request_sent_one_byte_at_a_time_is_served() {
    let server = TestServer::start();
    let token = server.token("t1", &[]);
    let body = r#"{"quantityChange": 7, "updateType": "purchase"}"#;
    let path = format!("{}/D/update", stock("t1", "s1"));
    let mut client = HttpClient::connect(server.addr);
    client.stream.set_nodelay(true).unwrap();

    let request = format_request("PUT", &path, Some(&token), Some(body), &[]);
    for byte in &request {
        client.write_raw(std::slice::from_ref(byte));
    }
    assert_eq!(data(&client.read(), "update_stock")["afterQuantity"], 7.0);

    // And the connection is still in step for the next request.
    client.send(
        "GET",
        &format!("{}/D", stock("t1", "s1")),
        Some(&token),
        None,
        &[],
    );
    assert_eq!(data(&client.read(), "get_stock")["currentQuantity"], 7.0);
}

#[test]
fn head_answers_like_get_without_a_body() {
    let server = TestServer::start();
    let token = server.token("t1", &[]);
    server.update("t1", "s1", "A", 2.0);
    let path = format!("{}/A", stock("t1", "s1"));
    let get = server.http("GET", &path, Some(&token), None);

    let mut client = HttpClient::connect(server.addr);
    client.send(
        "HEAD",
        &path,
        Some(&token),
        None,
        &[("Connection", "close")],
    );
    let mut raw = Vec::new();
    client.stream.read_to_end(&mut raw).expect("read to EOF");
    let text = String::from_utf8(raw).unwrap();

    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "HEAD response carried a body: {text}"
    );
    let length = format!("content-length: {}", get.body.len());
    assert!(text.to_ascii_lowercase().contains(&length), "{text}");
}

#[test]
fn health_needs_no_token() {
    let server = TestServer::start();
    let reply = server.http("GET", "/health", None, None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "ok");
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
}

#[test]
fn http_errors_are_logged_without_tokens_or_query_strings() {
    let server = TestServer::start();
    let token = server.token("t9", &[]);
    let path = format!("{}/A?page=1&secretish=zzz", stock("t1", "s1"));
    assert_eq!(server.http("GET", &path, Some(&token), None).status, 403);
    assert_eq!(
        server.http("GET", &path, Some("abc.def.ghi"), None).status,
        401
    );

    let logged = server.wait_log(|v| v["event"] == "http_error" && v["status"] == 401);
    assert_eq!(logged["level"], "info", "{logged}");
    assert_eq!(logged["route"], "stock_get", "{logged}");
    server.wait_log(|v| v["event"] == "http_error" && v["status"] == 403);
    let text = server.log_text();
    for secret in [
        token.as_str(),
        "abc.def.ghi",
        "secretish",
        "zzz",
        common::SECRET,
    ] {
        assert!(!text.contains(secret), "{secret} reached the log:\n{text}");
    }
}
