//! The WebSocket side of the loop: the switch from HTTP after a 101, reading client
//! frames, the outbound queue, closing, and fanning alerts out to a store's clients.
//!
//! Alerts are framed once per store ([`text_frame`]) and the same bytes are queued to
//! every subscriber's [`FrameQueue`]; tungstenite reads client frames and writes the
//! control frames (pongs, pings, closes) through a [`Wire`] that keeps both streams of
//! bytes whole and in order.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::Level;
use mio::net::TcpStream;
use serde::Serialize;
use tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Message};

use super::{CLOSE_WAIT, Server, WS_READ_BUFFER};
use crate::conn::{Conn, FrameQueue, Phase, StoreKey, Wire, WsConn};
use crate::event;
use crate::metrics::AttemptResult;
use crate::service::{Deadline, PendingAlert};
use crate::store::{Replay, Timestamp};

/// Frames one text message as the server sends it. Server frames are unmasked, so the
/// bytes are the same for every connection: an alert is framed once for its store.
pub(super) fn text_frame(text: String) -> Bytes {
    let frame = Frame::message(text, OpCode::Data(OpData::Text), true);
    let mut bytes = Vec::with_capacity(frame.len());
    // Formatting into a Vec cannot fail: the only error source is the writer.
    let _ = frame.format(&mut bytes);
    Bytes::from(bytes)
}

/// The `connection` message, fields in the order of the users' contract, then the
/// replay fields this server adds.
#[derive(Serialize)]
struct Greeting<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    tenant_id: &'a str,
    store_code: &'a str,
    timestamp: String,
    /// The store's last logged alert: reconnect with `?since=` this to miss nothing.
    last_seq: u64,
    /// With `?since=`: `complete`, `truncated` (older than the log keeps) or
    /// `unavailable` (the log could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    replay: Option<&'static str>,
}

/// Whether a tungstenite result only says the socket would block.
fn would_block(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The socket and WebSocket state of connection `key`, if it is a WebSocket.
fn ws_of(conn: Option<&mut Conn>) -> Option<(&mut TcpStream, &mut WsConn)> {
    let conn = conn?;
    match &mut conn.phase {
        Phase::WebSocket(ws) => Some((&mut conn.socket, ws)),
        Phase::Http(_) => None,
    }
}

impl Server {
    /// tungstenite settings: a small read buffer (clients send only small frames), the
    /// inbound message limit, and the outbound limit for what tungstenite itself queues.
    pub(super) fn ws_config(&self) -> WebSocketConfig {
        let ws = &self.service.config.websocket;
        let queue = ws.max_outbound_queue_bytes;
        WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(queue.max(1))
            .max_message_size(Some(ws.max_message_bytes))
            .max_frame_size(Some(ws.max_message_bytes))
    }

    /// Time between the server's pings.
    pub(super) fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.service.config.websocket.ping_interval_seconds)
    }

    /// Silence after which a WebSocket is dropped.
    pub(super) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.service.config.websocket.idle_timeout_seconds)
    }

    /// Turns connection `key` into a WebSocket now that its 101 is written: refuse it
    /// with a close frame, or subscribe it and queue the connection message and the
    /// store's current (or replayed) alerts. Frames the client sent along with the
    /// upgrade are read at once: no readiness event will announce them again.
    ///
    /// Must run with no pass write pending, so that what it reads (last sequence number,
    /// current state, the alert log) is committed and no alert of the pass reaches the
    /// client twice (once here, once by the fan-out).
    pub(super) fn start_websocket(&mut self, key: usize) {
        let ws_config = self.ws_config();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let peer = conn.peer;
        let Phase::Http(http) = &mut conn.phase else {
            return;
        };
        let Some(upgrade) = http.upgrade.take() else {
            return;
        };
        let leftover = std::mem::take(&mut http.inbuf);
        let probe = StoreKey {
            tenant_id: upgrade.tenant.clone(),
            store_code: upgrade.store.clone(),
        };
        let subscription = match self.subscribers.get_key_value(&probe) {
            Some((shared, _)) => Rc::clone(shared),
            None => Rc::new(probe),
        };
        let ctx = WebSocketContext::from_partially_read(leftover, Role::Server, Some(ws_config));
        conn.phase = Phase::WebSocket(Box::new(WsConn {
            ctx,
            subscription: Rc::clone(&subscription),
            subscribed: false,
            last_seen: Instant::now(),
            closing: None,
            peer_close: None,
            dirty: false,
            frames: FrameQueue::default(),
            ctx_pending: false,
            token_expires: None,
            read_failed: false,
        }));

        // Refused: the close frame goes right after the handshake.
        let claims = match upgrade.auth {
            Ok(claims) => claims,
            Err(error) => {
                self.service.metrics.attempt(AttemptResult::AuthFailed);
                self.auth_failed(peer);
                event!(
                    Level::Warn,
                    "websocket_auth_failed",
                    peer = peer,
                    tenant_id = upgrade.tenant,
                    store_code = upgrade.store,
                    reason = error.to_string()
                );
                self.ws_close(key, CloseCode::Policy, &error.to_string());
                self.ws_read(key);
                return;
            }
        };

        // Accepted: subscribe, greet, catch the client up, start its clocks.
        let members = self.subscribers.entry(subscription).or_default();
        members.push(key);
        let store_count = members.len();
        self.service.metrics.attempt(AttemptResult::Accepted);
        self.service.metrics.websocket_open += 1;

        let (tenant, store) = (upgrade.tenant.as_str(), upgrade.store.as_str());
        let (replay, catch_up) = self.catch_up(tenant, store, upgrade.since);
        let greeting = Greeting {
            kind: "connection",
            status: "connected",
            tenant_id: tenant,
            store_code: store,
            timestamp: Timestamp::now().to_rfc3339(),
            last_seq: self.service.store.last_seq(tenant, store),
            replay,
        };
        let greeting = serde_json::to_string(&greeting).unwrap_or_default();

        // The catch-up is bounded by the store's items and the log's retention, not by
        // the outbound limit, which guards live alerts against a client that stopped
        // reading; a client that never reads this is dropped by its idle timeout.
        if let Some((_, ws)) = ws_of(self.conns.get_mut(key)) {
            ws.subscribed = true;
            for text in std::iter::once(greeting).chain(catch_up) {
                ws.frames.push(text_frame(text));
            }
        }
        self.mark_dirty(key);
        self.schedule_token_expiry(key, claims.exp);

        event!(
            Level::Info,
            "websocket_connected",
            tenant_id = upgrade.tenant,
            store_code = upgrade.store,
            peer = peer,
            connection_count = store_count
        );
        self.ws_read(key);
    }

    /// What a joining client gets after the greeting: the logged alerts after `since`,
    /// or the store's current-state alerts (no `since`, or `since` older than the log).
    fn catch_up(
        &mut self,
        tenant: &str,
        store: &str,
        since: Option<u64>,
    ) -> (Option<&'static str>, Vec<String>) {
        let Some(since) = since else {
            return (None, self.service.current_alerts(tenant, store));
        };
        match self.service.store.alerts_since(tenant, store, since) {
            Ok(Replay::Alerts(alerts)) => (Some("complete"), alerts),
            Ok(Replay::Truncated) => (
                Some("truncated"),
                self.service.current_alerts(tenant, store),
            ),
            Err(error) => {
                event!(
                    Level::Error,
                    "alert_replay_failed",
                    tenant_id = tenant,
                    store_code = store,
                    error = error.to_string()
                );
                (
                    Some("unavailable"),
                    self.service.current_alerts(tenant, store),
                )
            }
        }
    }

    /// Puts the connection's own deadline at the next ping, or at the token's expiry if
    /// that comes first.
    pub(super) fn restart_ping_clock(&mut self, key: usize) {
        let ping = Instant::now() + self.ping_interval();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let serial = conn.serial;
        let next = match &conn.phase {
            Phase::WebSocket(ws) => ws.token_expires.map_or(ping, |t| t.min(ping)),
            Phase::Http(_) => ping,
        };
        if let Some(old) = conn.timer.take() {
            self.service.timers.cancel(old);
        }
        let deadline = Deadline::Connection { key, serial };
        conn.timer = Some(self.service.timers.insert(next, deadline));
    }

    /// Reads every frame the client sent, until the socket would block.
    pub(super) fn ws_read(&mut self, key: usize) {
        loop {
            let Some((socket, ws)) = ws_of(self.conns.get_mut(key)) else {
                return;
            };
            if ws.read_failed {
                self.ws_discard(key);
                return;
            }

            // A read may write (automatic pongs, the close reply).
            ws.ctx_pending = true;
            let mut wire = Wire {
                socket,
                frames: &mut ws.frames,
            };
            let result = ws.ctx.read(&mut wire);
            if result.is_ok() {
                ws.last_seen = Instant::now();
            }
            self.mark_dirty(key);

            let Some((_, ws)) = ws_of(self.conns.get_mut(key)) else {
                return;
            };
            match result {
                Ok(Message::Text(text)) => {
                    if text.as_str() == "ping" {
                        self.ws_send_text(key, "pong".to_owned());
                    } else if let Some(renewal) = crate::renewal::parse_renewal(text.as_str()) {
                        self.ws_renew(key, renewal);
                    }
                }
                Ok(Message::Close(frame)) => {
                    // tungstenite queued the reply; the next read reports the end.
                    ws.peer_close = Some(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Ok(_) => {}
                Err(error) if would_block(&error) => return,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    let code = ws.closing.or(ws.peer_close);
                    self.remove(key, code, "closed");
                    return;
                }
                Err(tungstenite::Error::Capacity(_)) => {
                    ws.read_failed = true;
                    self.ws_close(key, CloseCode::Size, "Message too big");
                    return;
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    ws.read_failed = true;
                    self.ws_close(key, CloseCode::Invalid, "Invalid UTF-8");
                    return;
                }
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => {
                    // The peer vanished (EOF without a close frame): nothing to answer.
                    self.remove(key, None, "connection lost");
                    return;
                }
                Err(tungstenite::Error::Protocol(_)) => {
                    ws.read_failed = true;
                    self.ws_close(key, CloseCode::Protocol, "Protocol error");
                    return;
                }
                Err(tungstenite::Error::WriteBufferFull(_)) => {
                    self.slow_consumer(key);
                    return;
                }
                Err(_) => {
                    self.remove(key, None, "connection lost");
                    return;
                }
            }
        }
    }

    /// Queues one text message to a WebSocket (a reply such as `pong`).
    pub(super) fn ws_send_text(&mut self, key: usize, text: String) -> bool {
        let message = Message::Text(text.clone().into());
        self.ws_send_frame(key, &text_frame(text), message)
    }

    /// Queues a framed message: onto the connection's frame queue, or, while tungstenite
    /// holds unwritten bytes, through tungstenite behind them (`message` is the same
    /// content unframed). Returns false if the connection is closing or was dropped.
    /// A queue past `websocket.max_outbound_queue_bytes` marks a slow consumer.
    pub(super) fn ws_send_frame(&mut self, key: usize, frame: &Bytes, message: Message) -> bool {
        let limit = self.service.config.websocket.max_outbound_queue_bytes;
        let Some((socket, ws)) = ws_of(self.conns.get_mut(key)) else {
            return false;
        };
        // After a close frame, sent or received, nothing more may be sent.
        if !ws.ctx.can_write() {
            return false;
        }

        if ws.ctx_pending {
            let mut wire = Wire {
                socket,
                frames: &mut ws.frames,
            };
            match ws.ctx.write(&mut wire, message) {
                Ok(()) => {}
                Err(error) if would_block(&error) => {}
                Err(tungstenite::Error::WriteBufferFull(_)) => {
                    self.slow_consumer(key);
                    return false;
                }
                Err(_) => {
                    self.remove(key, None, "write failed");
                    return false;
                }
            }
        } else {
            // Over the limit, first give the socket what it takes: a burst from one pass
            // (a large batch) is not a slow client; a queue the socket will not drain is.
            if ws.frames.unwritten() + frame.len() > limit {
                let drained = ws.frames.drain(socket);
                if drained.is_err() {
                    self.remove(key, None, "write failed");
                    return false;
                }
                if ws.frames.unwritten() + frame.len() > limit {
                    self.slow_consumer(key);
                    return false;
                }
            }
            ws.frames.push(frame.clone());
        }
        self.mark_dirty(key);
        true
    }

    /// Puts a WebSocket on the list flushed at the end of the pass.
    pub(super) fn mark_dirty(&mut self, key: usize) {
        let Some((_, ws)) = ws_of(self.conns.get_mut(key)) else {
            return;
        };
        if !ws.dirty {
            ws.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Writes what a WebSocket has queued: its own frames first, then tungstenite's.
    pub(super) fn ws_flush(&mut self, key: usize) {
        let Some((socket, ws)) = ws_of(self.conns.get_mut(key)) else {
            return;
        };
        ws.dirty = false;
        let mut wire = Wire {
            socket,
            frames: &mut ws.frames,
        };
        match ws.ctx.flush(&mut wire) {
            Ok(()) => ws.ctx_pending = false,
            Err(error) if would_block(&error) => ws.ctx_pending = true,
            Err(tungstenite::Error::ConnectionClosed) => {
                let code = ws.closing.or(ws.peer_close);
                self.remove(key, code, "closed");
            }
            Err(_) => self.remove(key, None, "write failed"),
        }
    }

    /// Starts our side of the close handshake with `code`; the connection is dropped
    /// when the client answers or after [`CLOSE_WAIT`].
    pub(super) fn ws_close(&mut self, key: usize, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let serial = conn.serial;
        let Some((socket, ws)) = ws_of(Some(conn)) else {
            return;
        };
        if ws.closing.is_some() {
            return;
        }
        ws.closing = Some(u16::from(code));
        ws.ctx_pending = true;
        let frame = CloseFrame {
            code,
            reason: reason.to_owned().into(),
        };
        let mut wire = Wire {
            socket,
            frames: &mut ws.frames,
        };
        let result = ws.ctx.close(&mut wire, Some(frame));

        let wait = Instant::now() + CLOSE_WAIT;
        if let Some(conn) = self.conns.get_mut(key) {
            if let Some(old) = conn.timer.take() {
                self.service.timers.cancel(old);
            }
            let deadline = Deadline::Connection { key, serial };
            conn.timer = Some(self.service.timers.insert(wait, deadline));
        }
        match result {
            Ok(()) => {}
            Err(error) if would_block(&error) => self.mark_dirty(key),
            Err(_) => self.remove(key, Some(u16::from(code)), reason),
        }
    }

    /// The client's queue passed the limit: it gets no more alerts, what it has not
    /// begun to receive is dropped (a reconnect with `?since=` replays it), and the
    /// 1013 "Slow consumer" close frame is queued right behind; a client that still
    /// reads sees it, one that does not is dropped after [`CLOSE_WAIT`]. Nobody else
    /// waits for it.
    pub(super) fn slow_consumer(&mut self, key: usize) {
        self.service.metrics.slow_consumers += 1;
        let limit = self.service.config.websocket.max_outbound_queue_bytes;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        event!(
            Level::Warn,
            "websocket_slow_consumer",
            peer = conn.peer,
            queue_limit = limit
        );
        if let Some((_, ws)) = ws_of(Some(conn)) {
            ws.frames.drop_unstarted();
        }
        self.ws_close(key, CloseCode::Again, "Slow consumer");
    }

    /// Sends one committed alert to every subscriber of its store: framed once, the same
    /// bytes queued to each.
    pub(super) fn fan_out(&mut self, alert: &PendingAlert) {
        let store_key = StoreKey {
            tenant_id: alert.tenant_id.clone(),
            store_code: alert.store_code.clone(),
        };
        let members = self
            .subscribers
            .get(&store_key)
            .cloned()
            .unwrap_or_default();
        let frame = text_frame(alert.payload.clone());
        let message = Message::Text(alert.payload.clone().into());

        let mut delivered = 0u64;
        for key in members {
            if self.ws_send_frame(key, &frame, message.clone()) {
                delivered += 1;
            }
        }
        self.service.metrics.alert_sent(alert.kind, delivered);
        event!(
            Level::Info,
            "websocket_alert_sent",
            tenant_id = alert.tenant_id,
            store_code = alert.store_code,
            item_code = alert.item_code,
            alert_type = alert.kind.as_str(),
            connection_count = delivered
        );
    }

    /// The connection deadline of a WebSocket: drop it after a close that was never
    /// answered or a silence past the idle timeout, close it 1008 "Token expired" when
    /// its token ran out, else ping it. Returns the next deadline, or `None` once the
    /// connection is gone or closing (closing sets its own deadline).
    pub(super) fn ws_deadline(&mut self, key: usize, now: Instant) -> Option<Instant> {
        let ping_interval = self.ping_interval();
        let idle_timeout = self.idle_timeout();
        let conn = self.conns.get_mut(key)?;
        let peer = conn.peer;
        let (socket, ws) = ws_of(Some(conn))?;

        if ws.closing.is_some() {
            let code = ws.closing;
            self.remove(key, code, "close handshake timed out");
            return None;
        }

        if ws.token_expires.is_some_and(|expires| now >= expires) {
            self.ws_close(key, CloseCode::Policy, "Token expired");
            return None;
        }

        let silent = now.duration_since(ws.last_seen);
        if silent >= idle_timeout {
            event!(
                Level::Info,
                "websocket_idle_timeout",
                peer = peer,
                tenant_id = ws.subscription.tenant_id,
                store_code = ws.subscription.store_code
            );
            let frame = CloseFrame {
                code: CloseCode::Away,
                reason: "Idle timeout".into(),
            };
            let mut wire = Wire {
                socket,
                frames: &mut ws.frames,
            };
            let _ = ws.ctx.close(&mut wire, Some(frame));
            self.remove(key, Some(1001), "Idle timeout");
            return None;
        }

        ws.ctx_pending = true;
        let mut wire = Wire {
            socket,
            frames: &mut ws.frames,
        };
        let _ = ws.ctx.write(&mut wire, Message::Ping(Bytes::new()));
        self.mark_dirty(key);
        let next = now + ping_interval.min(idle_timeout - silent);
        let (_, ws) = ws_of(self.conns.get_mut(key))?;
        Some(ws.token_expires.map_or(next, |expires| expires.min(next)))
    }
}
