//! Property test: arbitrary bytes, cut into arbitrary fragments, sent to the request
//! path and to a live WebSocket of the real binary, which must stay up and keep every
//! acknowledged update.
//!
//! A hand-rolled generator with a fixed seed keeps every run the same (set
//! `STOCKALERT_FUZZ_SEED` to explore another sequence) and the case budget bounded
//! (`STOCKALERT_FUZZ_CASES` per path, default 300).

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{HttpClient, TestServer, raw_upgrade};

/// Seed of the default run.
const SEED: u64 = 0x5eed_f02a_1e5e_ed00;

/// Cases per path in the default run.
const DEFAULT_CASES: usize = 300;

/// Cases between two health checks.
const CHECK_EVERY: usize = 25;

/// SplitMix64: small, fast and good enough to pick bytes and cuts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Well-formed inputs the mutations start from, so the fuzz reaches past the first
/// parse error.
fn seeds(token: &str) -> Vec<Vec<u8>> {
    let update = r#"{"quantityChange": 1, "updateType": "sale"}"#;
    let batch = r#"{"updates": [{"itemCode": "F", "quantityChange": 2, "updateType": "sale"}]}"#;
    vec![
        common::format_request("GET", "/health", None, None, &[]),
        common::format_request(
            "PUT",
            "/api/v1/tenants/t1/stores/s1/stock/F/update",
            Some(token),
            Some(update),
            &[],
        ),
        common::format_request(
            "POST",
            "/api/v1/tenants/t1/stores/s1/stock/updates",
            Some(token),
            Some(batch),
            &[("Expect", "100-continue")],
        ),
        common::format_request(
            "GET",
            &format!("/api/v1/ws/t1/s1?token={token}"),
            None,
            None,
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", common::RAW_WS_KEY),
                ("Sec-WebSocket-Version", "13"),
            ],
        ),
    ]
}

/// One HTTP-path input: random bytes, or a seed mutated (bytes flipped, cut short,
/// repeated, with junk spliced in).
fn http_input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(4) == 0 {
        let len = rng.below(2048);
        return rng.bytes(len);
    }
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..rng.below(4) {
        if input.is_empty() {
            break;
        }
        match rng.below(5) {
            0 => {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8;
            }
            1 => input.truncate(rng.below(input.len())),
            2 => input.extend_from_within(..),
            3 => {
                let at = rng.below(input.len());
                let junk = rng.below(64);
                let junk = rng.bytes(junk);
                input.splice(at..at, junk);
            }
            _ => {
                let at = rng.below(input.len());
                input.insert(at, b"\r\n\0:%/."[rng.below(7)]);
            }
        }
    }
    input
}

/// One WebSocket-path input: frames with random flags, opcodes, masks and lengths
/// (some announcing more than they carry), or plain random bytes.
fn ws_input(rng: &mut Rng) -> Vec<u8> {
    if rng.below(4) == 0 {
        let len = rng.below(1024);
        return rng.bytes(len);
    }
    let mut input = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let first = (rng.next() as u8 & 0xf0) | [0x0, 0x1, 0x2, 0x8, 0x9, 0xa, 0x3][rng.below(7)];
        let len = [0, 1, 4, 125, 126, 300, 5000][rng.below(7)];
        let masked = rng.below(8) != 0;
        let mut header = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => header.push(mask_bit | len as u8),
            126..=65535 => {
                header.push(mask_bit | 126);
                header.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                header.push(mask_bit | 127);
                header.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            header.extend_from_slice(&rng.bytes(4));
        }
        input.extend_from_slice(&header);
        let carried = if rng.below(5) == 0 {
            rng.below(len + 1)
        } else {
            len
        };
        let payload = rng.bytes(carried.min(2048));
        input.extend_from_slice(&payload);
    }
    input
}

/// Writes `input` in random fragments; write errors (the server closed) end it.
fn send_fragmented(rng: &mut Rng, stream: &mut TcpStream, input: &[u8]) {
    let _ = stream.set_nodelay(true);
    let mut rest = input;
    while !rest.is_empty() {
        let cut = 1 + rng.below(rest.len().min(512));
        let (piece, tail) = rest.split_at(cut);
        if stream.write_all(piece).is_err() {
            return;
        }
        rest = tail;
    }
}

fn budget() -> (u64, usize) {
    let seed = std::env::var("STOCKALERT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let cases = std::env::var("STOCKALERT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    (seed, cases)
}

/// A server that does not rate-limit the fuzzer itself.
fn fuzz_server() -> TestServer {
    TestServer::start_with(
        "[server]\nnew_connections_per_ip_per_second = 1000000\nnew_connections_burst = \
         1000000\n[auth]\nfailure_limit = 1000000\n[http]\nrequest_timeout_seconds = 1",
        &[],
    )
}

/// Asserts the server answers and still holds `expected` for item K.
fn assert_alive(server: &TestServer, expected: f64, case: usize, seed: u64) {
    let mut probe = HttpClient::connect(server.addr);
    probe.send("GET", "/health", None, None, &[]);
    let reply = probe.try_read();
    assert!(
        reply.is_some_and(|r| r.status == 200),
        "seed {seed} case {case}: server stopped answering; logs:\n{}",
        server.log_text()
    );
    let reply = server.http(
        "GET",
        "/api/v1/tenants/t1/stores/s2/stock/K",
        Some(&server.token("t1", &["s2"])),
        None,
    );
    assert_eq!(
        reply.status,
        200,
        "seed {seed} case {case}: {}",
        reply.text()
    );
    assert_eq!(
        reply.json()["data"]["currentQuantity"].as_f64(),
        Some(expected),
        "seed {seed} case {case}: an acknowledged update was lost"
    );
}

#[test]
fn arbitrary_fragmented_bytes_on_the_request_path_never_take_the_server_down() {
    let (seed, cases) = budget();
    let server = fuzz_server();
    let token = server.token("t1", &["s1"]);
    let seeds = seeds(&token);
    let mut rng = Rng(seed);
    assert_eq!(server.update("t1", "s2", "K", 5.0).status, 200);

    for case in 0..cases {
        let input = http_input(&mut rng, &seeds);
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        send_fragmented(&mut rng, &mut stream, &input);
        drop(stream);
        if case % CHECK_EVERY == CHECK_EVERY - 1 {
            assert_alive(&server, 5.0, case, seed);
        }
    }
    assert_alive(&server, 5.0, cases, seed);
}

#[test]
fn arbitrary_fragmented_bytes_on_a_websocket_never_take_the_server_down() {
    let (seed, cases) = budget();
    let server = fuzz_server();
    let token = server.token("t1", &["s1"]);
    let target = format!("/api/v1/ws/t1/s1?token={token}");
    let mut rng = Rng(seed ^ 0xface);
    assert_eq!(server.update("t1", "s2", "K", 5.0).status, 200);

    for case in 0..cases {
        let (status, mut ws) = raw_upgrade(server.addr, &target, &[]);
        assert_eq!(status, 101, "seed {seed} case {case}");
        let input = ws_input(&mut rng);
        send_fragmented(&mut rng, &mut ws.stream, &input);
        drop(ws);
        if case % CHECK_EVERY == CHECK_EVERY - 1 {
            assert_alive(&server, 5.0, case, seed);
        }
    }
    assert_alive(&server, 5.0, cases, seed);
}
