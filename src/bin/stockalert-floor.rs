//! The latency floor: a relay that does only the syscalls the stock alert path needs.
//!
//! It speaks just enough of the stockalert API for `stockalert-load` to drive it: it
//! completes WebSocket upgrades on `/api/v1/ws/{tenant}/{store}` with a fixed 101 and
//! greeting, and for every `PUT …/stores/{store}/…/update` it writes one fixed alert
//! frame to each subscriber of that store, then a fixed 200. Any other request gets the
//! fixed 200 alone. It parses nothing beyond request boundaries and the store segment of
//! the path: no auth, no JSON, no storage, no timers. Whatever the real server takes on
//! top of this is its own cost.
//!
//! Shortcuts, on purpose: no limits on buffers or connections, and a client that sends
//! a malformed head is simply dropped.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

/// The listener's token; connections use their slab key, which never reaches it.
const LISTENER: Token = Token(usize::MAX);

/// The fixed greeting frame's payload.
const GREETING: &str = r#"{"type":"connection","status":"connected"}"#;

/// The fixed alert payload: the shape and size of a real reorder alert.
const ALERT: &str = concat!(
    r#"{"type":"stock_alert","alert_type":"reorder_point","tenant_id":"bench","#,
    r#""store_code":"store0000","item_code":"ITEM0","current_quantity":-1.0,"#,
    r#""reorder_point":1000000000.0,"reorder_quantity":1.0,"#,
    r#""timestamp":"2024-01-01T00:00:00.000Z"}"#
);

/// The fixed response to every HTTP request.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
Content-Length: 16\r\n\r\n{\"success\":true}";

/// Why the floor could not run.
#[derive(Debug)]
enum FloorError {
    /// The command line was not `--listen ADDR`.
    Usage(String),
    /// Binding, polling or registering failed.
    Io(io::Error),
}

impl std::fmt::Display for FloorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FloorError::Usage(what) => write!(f, "bad command line: {what}"),
            FloorError::Io(error) => write!(f, "socket failure: {error}"),
        }
    }
}

impl From<io::Error> for FloorError {
    fn from(error: io::Error) -> Self {
        FloorError::Io(error)
    }
}

/// One client connection.
struct Conn {
    /// The socket, non-blocking, registered under the slab key.
    socket: TcpStream,
    /// Bytes read and not yet consumed as whole requests.
    inbuf: Vec<u8>,
    /// Bytes the kernel did not take yet; flushed on the next writable event.
    outbuf: Vec<u8>,
    /// The store this connection subscribed to, once it is a WebSocket.
    store: Option<String>,
}

/// What one whole request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// A WebSocket upgrade for `store` with the client's `Sec-WebSocket-Key`.
    Upgrade { store: String, key: String },
    /// A stock update for `store`.
    Update { store: String },
    /// Anything else.
    Other,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stockalert-floor: {error}");
            ExitCode::from(2)
        }
    }
}

/// Binds, prints `listening on ADDR` on stdout, and serves until killed.
fn run() -> Result<(), FloorError> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = match (args.next().as_deref(), args.next()) {
        (Some("--listen"), Some(addr)) => addr
            .parse()
            .map_err(|_| FloorError::Usage(format!("not an address: {addr}")))?,
        _ => {
            return Err(FloorError::Usage(
                "usage: stockalert-floor --listen ADDR".into(),
            ));
        }
    };

    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    let mut conns: Slab<Conn> = Slab::new();
    let mut stores: HashMap<String, Vec<usize>> = HashMap::new();
    let alert = text_frame(ALERT);
    let mut events = Events::with_capacity(1024);
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept(&poll, &mut listener, &mut conns)?;
                continue;
            }
            let key = event.token().0;
            if event.is_writable() {
                if let Some(conn) = conns.get_mut(key) {
                    if flush(conn).is_err() {
                        close(&poll, &mut conns, &mut stores, key);
                        continue;
                    }
                }
            }
            if event.is_readable() && !serve(&mut conns, &mut stores, key, &alert) {
                close(&poll, &mut conns, &mut stores, key);
            }
        }
    }
}

/// Accepts every pending connection.
fn accept(poll: &Poll, listener: &mut TcpListener, conns: &mut Slab<Conn>) -> io::Result<()> {
    loop {
        let (mut socket, _) = match listener.accept() {
            Ok(pair) => pair,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A connection reset before accept, or out of descriptors: skip this one.
            Err(_) => return Ok(()),
        };
        let _ = socket.set_nodelay(true);
        let entry = conns.vacant_entry();
        poll.registry().register(
            &mut socket,
            Token(entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Conn {
            socket,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            store: None,
        });
    }
}

/// Reads what `key` sent and answers every whole request in it. Returns whether the
/// connection stays open.
fn serve(
    conns: &mut Slab<Conn>,
    stores: &mut HashMap<String, Vec<usize>>,
    key: usize,
    alert: &[u8],
) -> bool {
    let Some(conn) = conns.get_mut(key) else {
        return true;
    };

    // Read to WouldBlock: mio readiness is edge-triggered.
    let mut chunk = [0u8; 16384];
    loop {
        match conn.socket.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => conn.inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }

    // A WebSocket client only sends pongs and closes: drop them unread.
    if conn.store.is_some() {
        conn.inbuf.clear();
        return true;
    }

    loop {
        let Some(conn) = conns.get_mut(key) else {
            return true;
        };
        let Some((length, request)) = next_request(&conn.inbuf) else {
            return true;
        };
        conn.inbuf.drain(..length);
        match request {
            Request::Upgrade {
                store,
                key: client_key,
            } => {
                let accept = tungstenite::handshake::derive_accept_key(client_key.as_bytes());
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                conn.outbuf.extend_from_slice(head.as_bytes());
                conn.outbuf.extend_from_slice(&text_frame(GREETING));
                conn.store = Some(store.clone());
                stores.entry(store).or_default().push(key);
                return flush(conn).is_ok();
            }
            Request::Update { store } => {
                // Alerts first, as the real server does.
                for &member in stores.get(&store).map_or(&[][..], Vec::as_slice) {
                    if let Some(subscriber) = conns.get_mut(member) {
                        subscriber.outbuf.extend_from_slice(alert);
                        let _ = flush(subscriber);
                    }
                }
            }
            Request::Other => {}
        }
        let Some(conn) = conns.get_mut(key) else {
            return true;
        };
        conn.outbuf.extend_from_slice(RESPONSE);
        if flush(conn).is_err() {
            return false;
        }
    }
}

/// Writes as much of the connection's outbound buffer as the kernel takes.
fn flush(conn: &mut Conn) -> io::Result<()> {
    while !conn.outbuf.is_empty() {
        match conn.socket.write(&conn.outbuf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.outbuf.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Drops connection `key` and its subscription.
fn close(
    poll: &Poll,
    conns: &mut Slab<Conn>,
    stores: &mut HashMap<String, Vec<usize>>,
    key: usize,
) {
    let Some(mut conn) = conns.try_remove(key) else {
        return;
    };
    let _ = poll.registry().deregister(&mut conn.socket);
    if let Some(store) = conn.store {
        if let Some(members) = stores.get_mut(&store) {
            members.retain(|&k| k != key);
        }
    }
}

/// Finds the first whole request in `buf`: its length in bytes and what it asks for.
/// `None` while the head or the body is incomplete.
fn next_request(buf: &[u8]) -> Option<(usize, Request)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = &buf[..head_end];
    let body = header(head, b"content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < head_end + body {
        return None;
    }

    let line_end = find(head, b"\r\n").unwrap_or(head.len());
    let mut parts = head[..line_end].split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let segments: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let text = |s: &[u8]| String::from_utf8_lossy(s).into_owned();

    let request = match (method, segments.as_slice()) {
        (b"GET", [b"", b"api", b"v1", b"ws", _tenant, store]) => {
            match header(head, b"sec-websocket-key") {
                Some(key) => Request::Upgrade {
                    store: text(store),
                    key: text(key),
                },
                None => Request::Other,
            }
        }
        (
            b"PUT",
            [
                b"",
                b"api",
                b"v1",
                b"tenants",
                _,
                b"stores",
                store,
                ..,
                b"update",
            ],
        ) => Request::Update { store: text(store) },
        _ => Request::Other,
    };
    Some((head_end + body, request))
}

/// The trimmed value of header `name` (lowercase) in `head`, if present.
fn header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        if !line[..colon].eq_ignore_ascii_case(name) {
            return None;
        }
        Some(line[colon + 1..].trim_ascii())
    })
}

/// Where `needle` first starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An unmasked, final WebSocket text frame carrying `payload`.
fn text_frame(payload: &str) -> Vec<u8> {
    let bytes = payload.as_bytes();
    let mut frame = vec![0x81];
    match bytes.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(bytes);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_is_found_with_its_store_and_body_length() {
        let raw = b"PUT /api/v1/tenants/t/stores/s7/stock/I/update HTTP/1.1\r\n\
Content-Length: 3\r\n\r\nabcGET";
        let (length, request) = next_request(raw).unwrap();
        assert_eq!(length, raw.len() - 3);
        assert_eq!(request, Request::Update { store: "s7".into() });
    }

    #[test]
    fn incomplete_body_waits() {
        let raw = b"PUT /x HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc";
        assert_eq!(next_request(raw), None);
        assert_eq!(next_request(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn upgrade_takes_store_and_key_and_ignores_query() {
        let raw = b"GET /api/v1/ws/t/s2?token=x HTTP/1.1\r\nSec-WebSocket-Key:  abc== \r\n\r\n";
        let (_, request) = next_request(raw).unwrap();
        assert_eq!(
            request,
            Request::Upgrade {
                store: "s2".into(),
                key: "abc==".into()
            }
        );
    }

    #[test]
    fn frame_lengths_use_the_right_encoding() {
        assert_eq!(text_frame("hi"), b"\x81\x02hi");
        let long = "x".repeat(300);
        let frame = text_frame(&long);
        assert_eq!(&frame[..4], &[0x81, 126, 1, 44]);
        assert_eq!(frame.len(), 304);
    }
}
