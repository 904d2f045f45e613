//! cargo fuzz target: request heads, routing and body parsing on arbitrary bytes.
//!
//! The input is one HTTP request as a client could send it. Whatever it holds, the head
//! parser must return (never panic), its verdict must be consistent with the input
//! length, and a routed request's body must be checked without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stockalert::api::{self, Route};
use stockalert::http::{self, HeadLimits};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        max_head_bytes: 16_384,
        max_headers: 64,
    };
    let head = match http::parse_head(data, limits) {
        Ok(Some(head)) => head,
        Ok(None) => {
            assert!(data.len() <= limits.max_head_bytes, "partial head past the limit");
            return;
        }
        Err(error) => {
            assert!((400..=505).contains(&error.status()));
            return;
        }
    };
    assert!(head.head_len <= data.len() && head.head_len <= limits.max_head_bytes);
    assert!(head.path.starts_with('/'));

    let _ = head.query_param("token");
    let _ = head.bearer_token();
    let route = match api::route(head.method, &head.path) {
        Ok(route) => route,
        Err(error) => {
            assert!(error.response().status >= 400);
            return;
        }
    };
    let body = &data[head.head_len..];
    let body = &body[..body.len().min(head.content_length.unwrap_or(0))];
    if let Route::Stock { call, .. } = &route {
        let _ = api::check_body(call, body);
    }
});
