//! One client connection: its socket, its phase (HTTP or WebSocket) and its buffers.
//!
//! The loop in `server` owns a slab of these. A connection starts in the HTTP phase; a
//! successful upgrade request turns it into a WebSocket once the 101 response has been
//! written out in full, so no frame can overtake the handshake.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use tungstenite::protocol::WebSocketContext;

use crate::auth::{AuthError, Claims};
use crate::http::{RequestHead, Response};
use crate::timer::TimerId;

/// A client connection.
pub struct Conn {
    /// The non-blocking socket, registered with the poll for reads and writes.
    pub socket: TcpStream,
    /// The client's address, for logs and per-IP limits.
    pub peer: SocketAddr,
    /// Unique for the server's life; deadlines carry it so a reused slab slot is never
    /// mistaken for the connection a deadline was set for.
    pub serial: u64,
    /// The connection's own deadline on the wheel (timeouts, pings, close wait).
    pub timer: Option<TimerId>,
    /// What the connection is doing now.
    pub phase: Phase,
    /// Accepted on the separate metrics listener (`metrics.listen`), where only
    /// `/metrics` is served.
    pub metrics_port: bool,
}

/// A connection's phase; a `match` on it shows every legal move.
pub enum Phase {
    /// Reading requests, writing responses.
    Http(Box<HttpConn>),
    /// Subscribed (or being refused) as a WebSocket client of one store.
    WebSocket(Box<WsConn>),
}

/// A response held until the pass it was produced in has committed.
pub struct HeldResponse {
    /// The pass epoch it belongs to; a rollback in between voids it.
    pub epoch: u64,
    /// The response to send when the pass commits.
    pub response: Response,
    /// Whether the connection stays open after it.
    pub keep_alive: bool,
    /// Whether it answers a HEAD request (headers only).
    pub head_only: bool,
    /// Route template and start time, for the metrics and the error log.
    pub route: &'static str,
    /// When the request was fully read.
    pub started: Instant,
}

/// A WebSocket upgrade accepted at the HTTP level, waiting for its 101 to be written.
pub struct PendingUpgrade {
    /// Tenant from the path.
    pub tenant: String,
    /// Store from the path.
    pub store: String,
    /// The verdict on the token, decided at the request; a refusal is sent as a close
    /// frame after the handshake, because a browser sees close codes only then.
    pub auth: Result<Claims, AuthError>,
    /// `?since=N`: the client wants the logged alerts after N replayed.
    pub since: Option<u64>,
}

/// State of the HTTP phase.
#[derive(Default)]
pub struct HttpConn {
    /// Bytes read and not yet consumed by a request.
    pub inbuf: Vec<u8>,
    /// Bytes to write; `out_pos` of them are already written.
    pub outbuf: Vec<u8>,
    /// How much of `outbuf` has been written.
    pub out_pos: usize,
    /// Responses waiting for the pass commit, in request order.
    pub held: VecDeque<HeldResponse>,
    /// A parsed head whose body has not fully arrived yet.
    pub head: Option<RequestHead>,
    /// `100 Continue` already sent for the current head.
    pub continue_sent: bool,
    /// When the first byte of the current, incomplete request arrived.
    pub request_started: Option<Instant>,
    /// When the last response was queued: the keep-alive clock. `None` until the first
    /// response, while the request timeout (counted from accept) applies instead.
    pub last_activity: Option<Instant>,
    /// Close once `outbuf` is written (after an error, or `Connection: close`).
    pub close_after_write: bool,
    /// The socket may still hold unread bytes (no WouldBlock since the last readiness).
    pub readable: bool,
    /// The peer closed its sending side.
    pub eof: bool,
    /// Switch to WebSocket once `outbuf` is written.
    pub upgrade: Option<PendingUpgrade>,
}

impl HttpConn {
    /// Bytes queued and not yet written.
    pub fn unwritten(&self) -> usize {
        self.outbuf.len() - self.out_pos
    }

    /// Writes as much of `outbuf` as the socket takes. `Ok(true)` when all of it went.
    pub fn flush(&mut self, socket: &mut TcpStream) -> io::Result<bool> {
        while self.out_pos < self.outbuf.len() {
            match socket.write(&self.outbuf[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.outbuf.clear();
        self.out_pos = 0;
        Ok(true)
    }

    /// Reads what the socket has into `inbuf`, up to `cap` bytes held in total.
    /// Returns the bytes read; sets `eof` on end of stream and clears `readable` when
    /// the socket would block.
    pub fn fill(&mut self, socket: &mut TcpStream, cap: usize) -> io::Result<usize> {
        let mut total = 0;
        let mut chunk = [0u8; 4096];
        while self.inbuf.len() < cap {
            let room = (cap - self.inbuf.len()).min(chunk.len());
            match socket.read(&mut chunk[..room]) {
                Ok(0) => {
                    self.eof = true;
                    self.readable = false;
                    break;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

/// State of the WebSocket phase.
pub struct WsConn {
    /// tungstenite's protocol state and frame buffers; the socket is passed in per call.
    pub ctx: WebSocketContext,
    /// The tenant this connection follows.
    pub tenant: String,
    /// The store this connection follows.
    pub store: String,
    /// Subscribed to the store's alerts (false while being refused).
    pub subscribed: bool,
    /// When anything was last heard from the client: the idle clock.
    pub last_seen: Instant,
    /// We sent a close frame and wait for the client's; the code we sent.
    pub closing: Option<u16>,
    /// The close code the client sent, if it closed first.
    pub peer_close: Option<u16>,
    /// Frames were queued since the last flush.
    pub dirty: bool,
    /// The token's expiry on the wheel.
    pub token_timer: Option<TimerId>,
    /// A read failed for good (protocol error, oversized or invalid message): the
    /// frame reader may hold a half-parsed header, so it must not be called again.
    /// Input is discarded until the peer closes or the close wait ends.
    pub read_failed: bool,
}
