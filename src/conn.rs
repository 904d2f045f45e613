//! One client connection: its socket, its phase (HTTP or WebSocket) and its buffers.
//!
//! The loop in `server` owns a slab of these. A connection starts in the HTTP phase; a
//! successful upgrade request turns it into a WebSocket once the 101 response has been
//! written out in full, so no frame can overtake the handshake.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use mio::net::TcpStream;
use tungstenite::Bytes;
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

/// Frames the server framed itself (each alert once for its whole store, the greeting,
/// replies), waiting for the socket, oldest first. Shared `Bytes`: an alert queued to a
/// thousand connections is one allocation.
#[derive(Default)]
pub struct FrameQueue {
    /// Whole frames; the first may be partly written.
    frames: VecDeque<Bytes>,
    /// Bytes of the first frame already written.
    head_written: usize,
    /// Bytes queued and not yet written, across all frames.
    unwritten: usize,
}

impl FrameQueue {
    /// Queues one complete frame.
    pub fn push(&mut self, frame: Bytes) {
        self.unwritten += frame.len();
        self.frames.push_back(frame);
    }

    /// Bytes queued and not yet written.
    pub fn unwritten(&self) -> usize {
        self.unwritten
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops every frame not yet begun; a frame partly written stays, since cutting it
    /// would corrupt the stream. For a connection being closed as a slow consumer.
    pub fn drop_unstarted(&mut self) {
        let keep = usize::from(self.head_written > 0);
        self.frames.truncate(keep);
        self.unwritten = self
            .frames
            .front()
            .map_or(0, |f| f.len() - self.head_written);
    }

    /// Writes as much as the socket takes. `Ok(true)` when the queue is empty; its
    /// storage is then released, so an idle connection holds none.
    pub fn drain(&mut self, socket: &mut impl Write) -> io::Result<bool> {
        while let Some(front) = self.frames.front() {
            match socket.write(&front[self.head_written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.head_written += n;
                    self.unwritten -= n;
                    if self.head_written == front.len() {
                        self.frames.pop_front();
                        self.head_written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.frames = VecDeque::new();
        Ok(true)
    }
}

/// The socket as tungstenite sees it. The server's own queued frames go out before any
/// byte of tungstenite's, and tungstenite's bytes are refused (WouldBlock) until they
/// have, so neither can split or overtake the other. This holds because frames are only
/// queued while tungstenite holds nothing unwritten (see [`WsConn::ctx_pending`]).
pub struct Wire<'a> {
    /// The connection's socket.
    pub socket: &'a mut TcpStream,
    /// The connection's own frame queue.
    pub frames: &'a mut FrameQueue,
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.read(buf)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.frames.drain(self.socket)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.frames.drain(self.socket)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.socket.flush()
    }
}

/// The store a WebSocket follows. One is shared (`Rc`) by every connection of the
/// store and the subscriber map, so a connection holds a pointer, not two strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreKey {
    /// The tenant the store belongs to.
    pub tenant_id: String,
    /// The store within the tenant.
    pub store_code: String,
}

/// State of the WebSocket phase.
pub struct WsConn {
    /// tungstenite's protocol state and frame buffers; the socket is passed in per call.
    pub ctx: WebSocketContext,
    /// The tenant and store this connection follows (shared with the subscriber map).
    pub subscription: Rc<StoreKey>,
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
    /// Frames the server framed itself, written ahead of tungstenite's bytes.
    pub frames: FrameQueue,
    /// tungstenite may hold unwritten bytes (set by any call that can write, cleared by a
    /// complete flush). While set, new messages go through tungstenite, behind them.
    pub ctx_pending: bool,
    /// When the token runs out (`None`: beyond what an `Instant` can hold). Checked by
    /// the connection's own deadline, which never sleeps past it: one timer-wheel entry
    /// per connection instead of two.
    pub token_expires: Option<Instant>,
    /// A read failed for good (protocol error, oversized or invalid message): the
    /// frame reader may hold a half-parsed header, so it must not be called again.
    /// Input is discarded until the peer closes or the close wait ends.
    pub read_failed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes, then would block.
    struct Narrow {
        written: Vec<u8>,
        room: usize,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room).min(3); // short writes, as sockets do
            self.written.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frames_go_out_whole_and_in_order_across_would_block() {
        let mut queue = FrameQueue::default();
        queue.push(Bytes::from_static(b"first"));
        queue.push(Bytes::from_static(b"second"));
        assert_eq!(queue.unwritten(), 11);

        let mut socket = Narrow {
            written: Vec::new(),
            room: 7,
        };
        assert!(!queue.drain(&mut socket).unwrap());
        assert_eq!(socket.written, b"firstse");
        assert_eq!(queue.unwritten(), 4);

        socket.room = 100;
        assert!(queue.drain(&mut socket).unwrap());
        assert_eq!(socket.written, b"firstsecond");
        assert!(queue.is_empty());
        assert_eq!(queue.unwritten(), 0);
    }

    #[test]
    fn drop_unstarted_keeps_a_partly_written_frame_only() {
        let mut queue = FrameQueue::default();
        queue.push(Bytes::from_static(b"abcdef"));
        queue.push(Bytes::from_static(b"ghi"));
        let mut socket = Narrow {
            written: Vec::new(),
            room: 2,
        };
        assert!(!queue.drain(&mut socket).unwrap());

        queue.drop_unstarted();
        assert_eq!(queue.unwritten(), 4, "the rest of the begun frame stays");
        socket.room = 100;
        assert!(queue.drain(&mut socket).unwrap());
        assert_eq!(socket.written, b"abcdef");

        let mut untouched = FrameQueue::default();
        untouched.push(Bytes::from_static(b"xyz"));
        untouched.drop_unstarted();
        assert!(untouched.is_empty());
        assert_eq!(untouched.unwritten(), 0);
    }

    #[test]
    fn a_socket_error_is_reported_not_swallowed() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut queue = FrameQueue::default();
        queue.push(Bytes::from_static(b"x"));
        assert_eq!(
            queue.drain(&mut Broken).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
