//! The loop's side of the limits: refusals at the door, auth-failure blocking, the
//! origin allow-list, and a live WebSocket's token expiry and renewal.
//!
//! The bookkeeping itself is in `limits` and `renewal`; this file turns their verdicts
//! into responses, close frames, metrics and (once per window) log lines.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use log::Level;
use mio::net::TcpStream;
use tungstenite::protocol::frame::coding::CloseCode;

use super::Server;
use crate::api;
use crate::conn::Phase;
use crate::event;
use crate::http::{RequestHead, Response};
use crate::limits::{Refusal, Report};
use crate::metrics::AttemptResult;
use crate::renewal::{self, RenewalError};

impl Server {
    /// Decides whether a connection from `peer` may be accepted now: the total limit
    /// first, then the client's own cap and rate. `Ok` counts it open for the client
    /// until [`Server::remove`] releases it.
    pub(super) fn admit(&mut self, peer: SocketAddr, now: Instant) -> Result<(), Refusal> {
        let limit = self.service.config.server.max_connections;
        if self.conns.len() >= limit {
            let refusal = Refusal::ServerFull { limit };
            self.limits.note_refusal(peer.ip(), refusal, now);
            return Err(refusal);
        }
        self.limits.admit(peer.ip(), now)
    }

    /// Best effort 503 or 429 (both with `Retry-After`) to a refused connection, then
    /// close it. Per attempt only a debug line: the client's refusals are summed in one
    /// warning per window by [`Server::sweep_limits`].
    pub(super) fn refuse(&mut self, mut socket: TcpStream, peer: SocketAddr, refusal: Refusal) {
        let mut out = Vec::new();
        let retry_after = refusal.retry_after_seconds().to_string();
        api::failure(refusal.status(), &refusal.to_string(), "connect")
            .with_header("Retry-After", retry_after)
            .write_to(&mut out, false, false);
        let _ = socket.write(&out);
        self.service.metrics.attempt(AttemptResult::Rejected);
        event!(
            Level::Debug,
            "connection_refused",
            peer = peer,
            reason = refusal.reason()
        );
    }

    /// The peer closed or was dropped: its slot is free for its client again.
    pub(super) fn release_client(&mut self, peer: SocketAddr) {
        self.limits.release(peer.ip());
    }

    /// Counts a failed authentication (HTTP 401/403 or WebSocket 1008) from `peer`,
    /// with one warning when it reaches the limit and the block begins.
    pub(super) fn auth_failed(&mut self, peer: SocketAddr) {
        let now = Instant::now();
        if self.limits.note_auth_failure(peer.ip(), now) {
            let auth = &self.service.config.auth;
            event!(
                Level::Warn,
                "auth_failures_blocked",
                client = crate::limits::client_key(peer.ip()),
                failures = auth.failure_limit,
                window_seconds = auth.failure_window_seconds
            );
        }
    }

    /// [`Server::auth_failed`] for the peer of connection `key`.
    pub(super) fn note_auth_failure_of(&mut self, key: usize) {
        if let Some(peer) = self.conns.get(key).map(|c| c.peer) {
            self.auth_failed(peer);
        }
    }

    /// The 429 for a request from a client that has used up its auth failures for the
    /// window, or `None` when it may go on. A refused upgrade counts as a rejected
    /// WebSocket attempt.
    pub(super) fn auth_block(&mut self, peer: SocketAddr, route: &str) -> Option<Response> {
        let left = self.limits.auth_blocked(peer.ip(), Instant::now())?;
        if route == "websocket" {
            self.service.metrics.attempt(AttemptResult::Rejected);
        }

        let response = api::failure(
            429,
            "too many failed authentications from this address; retry later",
            route,
        )
        .with_header("Retry-After", crate::limits::ceil_seconds(left).to_string());
        Some(response)
    }

    /// The 403 for an upgrade whose `Origin` the allow-list does not name, or `None`.
    pub(super) fn origin_refusal(&mut self, head: &RequestHead) -> Option<Response> {
        let websocket = &self.service.config.websocket;
        if websocket.origin_allowed(head.header("origin")) {
            return None;
        }
        self.service.metrics.attempt(AttemptResult::Rejected);
        Some(api::failure(
            403,
            "this origin may not open a WebSocket here",
            "websocket",
        ))
    }

    /// Ends finished tally windows and logs one line per client and window.
    pub(super) fn sweep_limits(&mut self) {
        let mut reports = Vec::new();
        self.limits.sweep(Instant::now(), &mut reports);
        for report in reports {
            match report {
                Report::Refused {
                    client,
                    server_full,
                    too_many_open,
                    too_fast,
                } => event!(
                    Level::Warn,
                    "connections_refused",
                    client = client,
                    max_connections = server_full,
                    max_connections_per_ip = too_many_open,
                    rate_limited = too_fast,
                    window_seconds = crate::limits::REFUSAL_REPORT_WINDOW.as_secs()
                ),
                Report::AuthFailures {
                    client,
                    failures,
                    blocked,
                } => event!(
                    Level::Warn,
                    "auth_failures",
                    client = client,
                    count = failures,
                    blocked = blocked,
                    window_seconds = self.service.config.auth.failure_window_seconds
                ),
            }
        }
    }

    /// Reads and throws away what a WebSocket whose frame reader failed still sends,
    /// and drops it at end of stream; its close frame is already queued. Closing at
    /// once instead would reset the connection over its unread input and could
    /// destroy that close frame before the client reads it.
    pub(super) fn ws_discard(&mut self, key: usize) {
        use std::io::Read as _;

        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let code = match &conn.phase {
            Phase::WebSocket(ws) => ws.closing,
            Phase::Http(_) => return,
        };
        let mut scratch = [0u8; 4096];
        loop {
            match conn.socket.read(&mut scratch) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.remove(key, code, "closed after a read error");
    }

    /// Records the expiry of a token with `exp` for WebSocket `key`, replacing any
    /// earlier one, and brings the connection's deadline forward to it if need be. A
    /// token already dead expires on the next pass.
    pub(super) fn schedule_token_expiry(&mut self, key: usize, exp: u64) {
        let left = renewal::time_left(exp, SystemTime::now());
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::WebSocket(ws) = &mut conn.phase else {
            return;
        };
        ws.token_expires = Instant::now().checked_add(left);
        self.restart_ping_clock(key);
    }

    /// Handles a renewal message on WebSocket `key`: a valid token for the same tenant
    /// and store replaces the old one (its expiry is rescheduled); anything else closes
    /// 1008 "Authentication failed" and counts as a failed authentication.
    pub(super) fn ws_renew(&mut self, key: usize, renewal: Result<String, RenewalError>) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let peer = conn.peer;
        let Phase::WebSocket(ws) = &conn.phase else {
            return;
        };
        if ws.closing.is_some() || !ws.subscribed {
            return;
        }
        let verdict = match renewal {
            Ok(token) => self.service.verifier.authorize(
                Some(&token),
                &ws.subscription.tenant_id,
                &ws.subscription.store_code,
            ),
            Err(_) => Err(crate::auth::AuthError::Invalid),
        };

        match verdict {
            Ok(claims) => {
                event!(
                    Level::Debug,
                    "websocket_token_renewed",
                    peer = peer,
                    tenant_id = ws.subscription.tenant_id,
                    store_code = ws.subscription.store_code
                );
                self.schedule_token_expiry(key, claims.exp);
            }
            Err(error) => {
                event!(
                    Level::Info,
                    "websocket_renewal_failed",
                    peer = peer,
                    tenant_id = ws.subscription.tenant_id,
                    store_code = ws.subscription.store_code,
                    reason = error.to_string()
                );
                self.auth_failed(peer);
                self.ws_close(key, CloseCode::Policy, "Authentication failed");
            }
        }
    }
}
