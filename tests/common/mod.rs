//! Test support: the real `stockalert` binary on 127.0.0.1 port 0 with a temporary data
//! directory, a raw-TCP HTTP client, and tungstenite WebSocket clients.
//!
//! Every wait here is bounded by a generous timeout that only guards against hangs; no
//! test asserts on how fast anything happens.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// The HS256 secret every test server uses.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// Upper bound for any single wait: only a hang guard.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Log lines captured from the server's stderr, with a signal for new ones.
#[derive(Default)]
struct LogSink {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A running server process.
pub struct TestServer {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    logs: Arc<LogSink>,
    /// The data directory (kept across restarts by `restart`).
    pub dir: Arc<tempfile::TempDir>,
    /// The TOML overrides it was started with.
    overrides: String,
    env: Vec<(String, String)>,
}

/// Deep-merges `overlay` into `base`.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(more)) => merge(inner, more),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl TestServer {
    /// Starts a server with the test defaults.
    pub fn start() -> TestServer {
        TestServer::start_with("", &[])
    }

    /// Starts a server with extra TOML (merged over the test defaults) and environment.
    pub fn start_with(overrides: &str, env: &[(&str, &str)]) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TestServer::launch(dir, overrides.to_owned(), env)
    }

    fn launch(dir: Arc<tempfile::TempDir>, overrides: String, env: Vec<(String, String)>) -> Self {
        let data_dir = dir.path().join("data");
        let mut config: toml::Table = toml::from_str(&format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            [auth]
            jwt_secret = "{SECRET}"
            [storage]
            data_dir = "{}"
            durability = "normal"
            [alerts]
            cooldown_seconds = 0
            "#,
            data_dir.display()
        ))
        .expect("base config");
        merge(
            &mut config,
            toml::from_str(&overrides).expect("override TOML"),
        );
        let config_path = dir.path().join("stockalert.toml");
        std::fs::write(&config_path, toml::to_string(&config).expect("config text"))
            .expect("write config");

        let mut command = Command::new(env!("CARGO_BIN_EXE_stockalert"));
        command
            .arg("--config")
            .arg(&config_path)
            .env_remove("ALERT_COOLDOWN_SECONDS")
            .env_remove("STOCKALERT_LISTEN")
            .env_remove("STOCKALERT_JWT_SECRET")
            .env_remove("STOCKALERT_LOG_LEVEL")
            .env_remove("STOCKALERT_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in &env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn stockalert");

        let logs = Arc::new(LogSink::default());
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
        });

        let mut server = TestServer {
            child: Some(child),
            addr: "127.0.0.1:1".parse().unwrap(),
            logs,
            dir,
            overrides,
            env,
        };
        let started = server.wait_log(|v| v["event"] == "server_started");
        server.addr = started["listen"]
            .as_str()
            .expect("listen field")
            .parse()
            .expect("addr");
        server
    }

    /// Stops this server (SIGTERM) and starts another on the same data directory.
    pub fn restart(mut self) -> TestServer {
        let status = self.terminate();
        assert!(status.success(), "server exited with {status}");
        let dir = Arc::clone(&self.dir);
        let overrides = std::mem::take(&mut self.overrides);
        let env = std::mem::take(&mut self.env);
        TestServer::launch(dir, overrides, env)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        signal(child.id(), "-TERM");
        let status = wait_exit(child);
        self.child = None;
        status
    }

    /// Sends SIGKILL and waits for the exit.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
    }

    /// Every log line so far, parsed; a line that is not JSON fails the test.
    pub fn logs(&self) -> Vec<Value> {
        let lines = self.logs.lines.lock().unwrap().clone();
        lines
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|_| panic!("log line not JSON: {line}"))
            })
            .collect()
    }

    /// Raw log text, for checks that something never appears.
    pub fn log_text(&self) -> String {
        self.logs.lines.lock().unwrap().join("\n")
    }

    /// Waits for a log line matching `pred` and returns it.
    pub fn wait_log(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut lines = self.logs.lines.lock().unwrap();
        loop {
            for line in lines.iter() {
                if let Ok(value) = serde_json::from_str::<Value>(line) {
                    if pred(&value) {
                        return value;
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("no matching log line; logs:\n{}", lines.join("\n"));
            }
            let exited = self.child.is_none();
            assert!(!exited, "server is not running");
            lines = self
                .logs
                .grew
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// A token for `tenant`, limited to `stores` (none: every store), valid an hour.
    pub fn token(&self, tenant: &str, stores: &[&str]) -> String {
        token_with(tenant, stores, unix_now() + 3600, SECRET)
    }

    /// `ws://` URL of a store's alert socket with `token`.
    pub fn ws_url(&self, tenant: &str, store: &str, token: &str) -> String {
        format!(
            "ws://{}/api/v1/ws/{tenant}/{store}?token={token}",
            self.addr
        )
    }

    /// Opens an alert socket and returns it with the first (connection) message.
    pub fn subscribe(&self, tenant: &str, store: &str) -> (Ws, Value) {
        let token = self.token(tenant, &[store]);
        let mut ws = connect_ws(&self.ws_url(tenant, store, &token));
        let greeting = ws.next_json();
        assert_eq!(greeting["type"], "connection", "{greeting}");
        (ws, greeting)
    }

    /// Sends one HTTP request on a fresh connection.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut client = HttpClient::connect(self.addr);
        client.send(method, path, token, body, &[]);
        client.read()
    }

    /// `PUT …/{item}/update` with a quantity change.
    pub fn update(&self, tenant: &str, store: &str, item: &str, change: f64) -> Reply {
        let token = self.token(tenant, &[store]);
        let body = format!(r#"{{"quantityChange": {change}, "updateType": "sale"}}"#);
        let path = format!("/api/v1/tenants/{tenant}/stores/{store}/stock/{item}/update");
        self.http("PUT", &path, Some(&token), Some(&body))
    }

    /// Sets reorder point and reorder quantity.
    pub fn set_reorder(&self, tenant: &str, store: &str, item: &str, point: f64, qty: f64) {
        let token = self.token(tenant, &[store]);
        let body = format!(r#"{{"reorderPoint": {point}, "reorderQuantity": {qty}}}"#);
        let path = format!("/api/v1/tenants/{tenant}/stores/{store}/stock/{item}/reorder");
        let reply = self.http("PUT", &path, Some(&token), Some(&body));
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    /// Sets the minimum quantity.
    pub fn set_minimum(&self, tenant: &str, store: &str, item: &str, minimum: f64) {
        let token = self.token(tenant, &[store]);
        let body = format!(r#"{{"minimumQuantity": {minimum}}}"#);
        let path = format!("/api/v1/tenants/{tenant}/stores/{store}/stock/{item}/minimum");
        let reply = self.http("PUT", &path, Some(&token), Some(&body));
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    /// Whether the server is still answering `/health` with 200.
    pub fn healthy(&self) -> bool {
        self.http("GET", "/health", None, None).status == 200
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token with the given claims.
pub fn token_with(tenant: &str, stores: &[&str], exp: u64, secret: &str) -> String {
    let mut claims = serde_json::json!({"tenant_id": tenant, "exp": exp, "sub": "test"});
    match stores {
        [] => {}
        [one] => claims["store_code"] = (*one).into(),
        many => claims["store_codes"] = many.iter().map(|s| Value::from(*s)).collect(),
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("key"),
    )
    .expect("sign")
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 client over one TCP connection.
pub struct HttpClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpClient {
    pub fn connect(addr: SocketAddr) -> HttpClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        HttpClient {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Formats and sends one request.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) {
        self.write_raw(&format_request(method, path, token, body, extra));
    }

    /// Reads one response (Content-Length framed).
    pub fn read(&mut self) -> Reply {
        self.try_read().expect("a response")
    }

    /// Reads one response, or `None` if the server closed the connection first.
    pub fn try_read(&mut self) -> Option<Reply> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) =
                response.parse(&self.buf).expect("valid response head")
            {
                let status = response.code.expect("status");
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.trim().parse::<usize>().expect("length"));
                if status == 100 {
                    self.buf.drain(..head_len);
                    continue;
                }
                while self.buf.len() < head_len + length {
                    if !self.fill() {
                        return None;
                    }
                }
                let body = self.buf[head_len..head_len + length].to_vec();
                self.buf.drain(..head_len + length);
                return Some(Reply {
                    status,
                    headers,
                    body,
                });
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads the interim `100 Continue` head, returning whether it came.
    pub fn read_continue(&mut self) -> bool {
        while !self.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if !self.fill() {
                return false;
            }
        }
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        if text.starts_with("HTTP/1.1 100") {
            let end = text.find("\r\n\r\n").unwrap() + 4;
            self.buf.drain(..end);
            return true;
        }
        false
    }

    /// Whether the server closed the connection (EOF or reset) with nothing more sent.
    pub fn closed(&mut self) -> bool {
        !self.fill() && self.buf.is_empty()
    }

    fn fill(&mut self) -> bool {
        fill_from(&mut self.stream, &mut self.buf)
    }
}

/// The bytes of one HTTP/1.1 request.
pub fn format_request(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if let Some(token) = token {
        text.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    if let Some(body) = body {
        text.push_str(body);
    }
    text.into_bytes()
}

/// A tungstenite WebSocket client with a read timeout.
pub struct Ws {
    pub socket: WebSocket<MaybeTlsStream<TcpStream>>,
}

/// Connects a WebSocket client (the handshake must succeed).
pub fn connect_ws(url: &str) -> Ws {
    let (socket, response) = tungstenite::connect(url).expect("websocket handshake");
    assert_eq!(response.status(), 101);
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
    }
    Ws { socket }
}

impl Ws {
    /// The next text message, parsed as JSON (pings and pongs are skipped).
    pub fn next_json(&mut self) -> Value {
        loop {
            match self.socket.read().expect("a message") {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("JSON text message");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// The next text message as a string.
    pub fn next_text(&mut self) -> String {
        loop {
            match self.socket.read().expect("a message") {
                Message::Text(text) => return text.as_str().to_owned(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.socket.read() {
                Ok(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.as_str().to_owned());
                }
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(Message::Text(text)) => panic!("expected close, got text {text}"),
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got error {e}"),
            }
        }
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) {
        self.socket.send(Message::Text(text.into())).expect("send");
    }

    /// Asserts that no text message arrives before the server answers a `ping` text:
    /// the server handles a connection's messages in order, so a `pong` reply proves
    /// everything sent to it before was already written.
    pub fn assert_nothing_pending(&mut self) {
        self.send_text("ping");
        let next = self.next_text();
        assert_eq!(
            next, "pong",
            "expected no message before the pong, got {next}"
        );
    }
}

impl TestServer {
    /// Whether any log line so far contains `needle`; cheap enough to poll in a loop
    /// (nothing is parsed or copied).
    pub fn logged(&self, needle: &str) -> bool {
        let lines = self.logs.lines.lock().unwrap();
        lines.iter().any(|line| line.contains(needle))
    }
}

/// The separate metrics listener's address, from the `server_started` log line
/// (`metrics.listen` must be set).
pub fn metrics_addr(server: &TestServer) -> SocketAddr {
    let started = server.wait_log(|v| v["event"] == "server_started");
    started["metrics_listen"]
        .as_str()
        .expect("metrics_listen field")
        .parse()
        .expect("metrics addr")
}

/// `GET /metrics` on `addr`, with `token` as its bearer token if given.
pub fn scrape(addr: SocketAddr, token: Option<&str>) -> Reply {
    let mut client = HttpClient::connect(addr);
    client.send("GET", "/metrics", token, None, &[]);
    client.read()
}

/// The value of one sample of an exposition text, `series` written exactly as in
/// the text (name and labels, e.g. `x_total{result="accepted"}`); `None` if absent.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("sample value"))
}

/// Durability support: restarts around a stopped server, and the database file.
impl TestServer {
    /// The SQLite database file in the data directory.
    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("data").join("stockalert.db")
    }

    /// Stops this server (SIGTERM), runs `between` on the database file while no server
    /// is running, then starts another on the same data directory.
    pub fn restart_with(mut self, between: impl FnOnce(&std::path::Path)) -> TestServer {
        let status = self.terminate();
        assert!(status.success(), "server exited with {status}");
        between(&self.db_path());
        let dir = Arc::clone(&self.dir);
        let overrides = std::mem::take(&mut self.overrides);
        let env = std::mem::take(&mut self.env);
        TestServer::launch(dir, overrides, env)
    }

    /// SIGKILLs this server (no shutdown of any kind) and starts another on the same
    /// data directory.
    pub fn restart_after_kill(mut self) -> TestServer {
        self.kill();
        let dir = Arc::clone(&self.dir);
        let overrides = std::mem::take(&mut self.overrides);
        let env = std::mem::take(&mut self.env);
        TestServer::launch(dir, overrides, env)
    }

    /// Sends one request with extra headers on a fresh connection.
    pub fn http_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let token = self.token_for_path(path);
        let mut client = HttpClient::connect(self.addr);
        client.send(method, path, token.as_deref(), body, extra);
        client.read()
    }

    /// A token for the tenant and store named in a stock API path, if it is one.
    pub fn token_for_path(&self, path: &str) -> Option<String> {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["", "api", "v1", "tenants", tenant, "stores", store, ..] => {
                Some(self.token(tenant, &[*store]))
            }
            _ => None,
        }
    }
}

/// The WebSocket key of every hand-made upgrade (the RFC 6455 sample nonce).
pub const RAW_WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket driven by hand over raw TCP, for frames a well-behaved client library
/// refuses to send (unmasked, oversized, fragmented control frames).
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// Sends an upgrade request for `target` with `extra` headers and reads the response
/// head. Returns the status and, for a 101, the raw socket.
pub fn raw_upgrade(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> (u16, RawWs) {
    let mut text = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {RAW_WS_KEY}\r\n"
    );
    let has_version = extra
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-version"));
    if !has_version {
        text.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");

    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(text.as_bytes()).expect("write upgrade");
    RawWs::after_upgrade(stream)
}

/// Reads what `stream` has onto `buf`; false on end of stream or reset.
fn fill_from(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
        Err(e) => panic!("read failed: {e}"),
    }
}

impl RawWs {
    fn fill(&mut self) -> bool {
        fill_from(&mut self.stream, &mut self.buf)
    }

    /// Writes one frame: `first` is the FIN bit and opcode byte, `payload` is masked
    /// when `masked`, and the header announces `announced` bytes (default: the
    /// payload's length) so an oversized message need not be sent in full.
    pub fn send_frame(&mut self, first: u8, masked: bool, payload: &[u8], announced: Option<u64>) {
        let len = announced.unwrap_or(payload.len() as u64);
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut frame = vec![first];
        if len < 126 {
            frame.push(mask_bit | len as u8);
        } else if len <= u64::from(u16::MAX) {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&len.to_be_bytes());
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        if masked {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        // The server may close as soon as it sees the header: a failed write is fine.
        let _ = self.stream.write_all(&frame);
    }

    /// Reads the next whole server frame: its opcode and payload; `None` at EOF.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((opcode, start, len)) = frame_bounds(&self.buf) {
                if self.buf.len() >= start + len {
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads frames until the server's close frame and returns its code (1005 when it
    /// has none); panics if the connection ends without one.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.read_frame() {
                Some((0x8, payload)) if payload.len() >= 2 => {
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
                Some((0x8, _)) => return 1005,
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

/// Opcode, payload start and payload length of the unmasked frame at the start of
/// `buf`, once its header is complete.
fn frame_bounds(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let opcode = buf.first()? & 0x0f;
    let short = buf.get(1)? & 0x7f;
    match short {
        126 => {
            let bytes = buf.get(2..4)?;
            Some((
                opcode,
                4,
                usize::from(u16::from_be_bytes([bytes[0], bytes[1]])),
            ))
        }
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((opcode, 10, u64::from_be_bytes(bytes) as usize))
        }
        n => Some((opcode, 2, usize::from(n))),
    }
}

/// Reads one response from a fresh connection without sending anything first: what a
/// connection refused at the door is told.
pub fn read_refusal(addr: SocketAddr) -> Option<Reply> {
    let mut client = HttpClient::connect(addr);
    client.try_read()
}

/// The value of one Prometheus sample line (`name{labels} value`) in `text`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse::<f64>().ok())
}

/// Freezing the process, for tests that need several requests to land in one loop pass.
impl TestServer {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Stops the process (SIGSTOP) and waits until the kernel reports it stopped, so
    /// that bytes written from now on pile up unread until [`TestServer::resume`].
    pub fn pause(&self) {
        let pid = self.pid();
        signal(pid, "-STOP");
        let stat_path = format!("/proc/{pid}/stat");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let stat = std::fs::read_to_string(&stat_path).expect("read /proc stat");
            // The state letter follows the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.trim().chars().next());
            if state == Some('T') {
                return;
            }
            assert!(Instant::now() < deadline, "server did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }
}

/// The bytes of a WebSocket upgrade request for `target` (path and query), with the
/// RFC 6455 sample key and version 13.
pub fn upgrade_request(target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {RAW_WS_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// One final masked client frame of `opcode` carrying `payload` (under 126 bytes).
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let key = [0x0f, 0x1e, 0x2d, 0x3c];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// What a bounded read of one WebSocket frame found.
#[derive(Debug)]
pub enum FrameRead {
    /// A whole frame: opcode and payload.
    Frame(u8, Vec<u8>),
    /// The server closed the connection.
    Eof,
    /// Nothing complete arrived within the wait.
    TimedOut,
}

impl RawWs {
    /// Reads the response head of an upgrade already written on `stream`; returns the
    /// status and the socket, with any bytes after the head kept for frame reads.
    pub fn after_upgrade(stream: TcpStream) -> (u16, RawWs) {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut raw = RawWs {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(at) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(raw.fill(), "connection closed before the response head");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .expect("status code");
        raw.buf.drain(..end);
        (status, raw)
    }

    /// Reads the next whole frame, waiting at most `wait` for each read.
    pub fn frame_within(&mut self, wait: Duration) -> FrameRead {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let read = loop {
            if let Some((opcode, start, len)) = frame_bounds(&self.buf) {
                if self.buf.len() >= start + len {
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    break FrameRead::Frame(opcode, payload);
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => break FrameRead::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break FrameRead::Eof,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break FrameRead::TimedOut;
                }
                Err(e) => panic!("read failed: {e}"),
            }
        };
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        read
    }

    /// The text of every text frame up to the server's `pong` answer to a `ping` text
    /// sent now (pings and pongs skipped): everything the server had queued before.
    pub fn texts_until_pong(&mut self) -> Vec<String> {
        self.send_frame(0x81, true, b"ping", None);
        let mut texts = Vec::new();
        loop {
            match self.read_frame() {
                Some((0x1, payload)) => {
                    let text = String::from_utf8(payload).expect("UTF-8 text frame");
                    if text == "pong" {
                        return texts;
                    }
                    texts.push(text);
                }
                Some((0x8, payload)) => panic!("closed before the pong: {payload:?}"),
                Some(_) => continue,
                None => panic!("connection ended before the pong"),
            }
        }
    }
}
