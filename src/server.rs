//! The poll loop: one thread, one `mio::Poll`, a slab of connections.
//!
//! Each pass of the loop waits for readiness or the next deadline, handles every ready
//! connection, fires due timers, then ends the pass: the writes taken in it are committed
//! in one transaction, their held responses are released (or turned into 503s if the
//! commit failed), the alerts they raised are fanned out, and every WebSocket with queued
//! frames is flushed. Nothing blocks except the commit itself.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::Level;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;

mod guard;
mod ws;

use crate::api::{self, Route};
use crate::auth::AuthError;
use crate::conn::{Conn, HeldResponse, HttpConn, PendingUpgrade, Phase};
use crate::event;
use crate::http::{self, HeadLimits, Method, RequestHead, Response};
use crate::limits::{ClientLimits, LimitSettings};
use crate::metrics::{self, ProcessStats};
use crate::service::{Deadline, Service};
use crate::store::Timestamp;

/// Poll token of the listening socket.
const LISTENER: Token = Token(usize::MAX - 1);

/// Poll token of the signal pipe.
const SIGNALS: Token = Token(usize::MAX - 2);

/// Poll token of the separate metrics listener, when `metrics.listen` is set.
const METRICS_LISTENER: Token = Token(usize::MAX - 3);

/// Most responses a connection may have held for the pass commit before the loop stops
/// reading its pipelined requests until the pass ends.
const MAX_HELD_PER_CONN: usize = 64;

/// Unwritten output past which a connection's further requests wait (backpressure on a
/// client that pipelines but does not read).
const MAX_UNWRITTEN: usize = 256 * 1024;

/// tungstenite's read buffer per WebSocket. It is allocated for every connection and
/// zero-filled on the first read, so it is most of an idle connection's memory; clients
/// send only small frames (pings, pongs, a token renewal), and a larger frame still
/// fits because the buffer grows to the frame's length as it is read.
const WS_READ_BUFFER: usize = 128;

/// How long a closing WebSocket may take to answer our close frame before it is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long shutdown waits for responses in flight and close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A storage upkeep step this long stalls every client for as long, so it is logged.
const SLOW_UPKEEP: Duration = Duration::from_millis(20);

/// How often storage upkeep runs. A checkpoint copies what the WAL gathered since the
/// last one and the loop serves nobody meanwhile, so it runs often to stay short:
/// measured at 2,000 updates/s with durability full, one checkpoint a second stalled the
/// loop for up to 0.9 s; every 100 ms bounds it to what 100 ms of writes left.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(100);

/// Every how many upkeep ticks the purges and the per-client sweep run (once a second).
const PURGE_EVERY_TICKS: u32 = 10;

/// Connections per store key: the slab keys of its subscribed WebSockets.
type Subscribers = HashMap<(String, String), Vec<usize>>;

/// The server: listener, connections, and the service state.
pub struct Server {
    /// The readiness poll.
    poll: Poll,
    /// Where new connections come from; `None` once shutdown began.
    listener: Option<TcpListener>,
    /// SIGINT and SIGTERM, delivered as readiness.
    signals: Signals,
    /// Every open connection; its slab key is its poll token.
    conns: Slab<Conn>,
    /// Subscribed WebSockets per (tenant, store).
    subscribers: Subscribers,
    /// Store, timers, metrics and the pass.
    service: Service,
    /// Serial number for the next connection.
    next_serial: u64,
    /// Connections with buffered input to process without waiting for readiness.
    revisit: Vec<usize>,
    /// Connections holding responses for the current pass.
    holding: Vec<usize>,
    /// Accepting failed for lack of resources (file descriptors); retried every pass.
    accept_stalled: bool,
    /// The housekeeping deadline fired; the upkeep runs at the end of the pass.
    housekeeping_due: bool,
    /// Upkeep ticks so far, to run the purges on every [`PURGE_EVERY_TICKS`]th.
    upkeep_ticks: u32,
    /// Upgraded connections waiting for the pass commit before they join their store.
    upgrades_after_commit: Vec<usize>,
    /// WebSockets with queued frames to flush at the end of the pass.
    dirty: Vec<usize>,
    /// Shutdown began; the loop ends when no connection is left or at this instant.
    shutdown_by: Option<Instant>,
    /// The address the listener is bound to.
    local_addr: SocketAddr,
    /// The separate `/metrics` listener (`metrics.listen`, when metrics are
    /// enabled) and its bound address; `None` without one or once shutdown began.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    /// Per-client connection counts, rates and auth failures (see `guard`).
    limits: ClientLimits,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// Binding or configuring the listening socket failed.
    Listen { addr: SocketAddr, source: io::Error },
    /// The poll or signal registration failed.
    Poll(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            StartError::Poll(source) => write!(f, "cannot set up the event loop: {source}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Binds a listening socket with the configured backlog (mio's own listener uses a small
/// fixed one, too short for a reconnect storm of every dashboard in a store).
fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};

    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

impl Server {
    /// Binds the listener and registers it and the signals with a new poll.
    pub fn bind(service: Service) -> Result<Server, StartError> {
        let addr = service.config.server.listen;
        let settings = LimitSettings::from_config(&service.config);
        let backlog = service.config.server.listen_backlog;
        let mut listener =
            bind(addr, backlog).map_err(|source| StartError::Listen { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr, source })?;

        let poll = Poll::new().map_err(StartError::Poll)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(StartError::Poll)?;
        let metrics = &service.config.metrics;
        let metrics_listener = match metrics.listen.filter(|_| metrics.enabled) {
            Some(addr) => {
                let mut listener =
                    bind(addr, backlog).map_err(|source| StartError::Listen { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| StartError::Listen { addr, source })?;
                poll.registry()
                    .register(&mut listener, METRICS_LISTENER, Interest::READABLE)
                    .map_err(StartError::Poll)?;
                Some((listener, bound))
            }
            None => None,
        };
        let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(StartError::Poll)?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(StartError::Poll)?;

        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            conns: Slab::new(),
            subscribers: HashMap::new(),
            service,
            next_serial: 0,
            revisit: Vec::new(),
            holding: Vec::new(),
            upgrades_after_commit: Vec::new(),
            housekeeping_due: false,
            upkeep_ticks: 0,
            accept_stalled: false,
            dirty: Vec::new(),
            shutdown_by: None,
            local_addr,
            metrics_listener,
            limits: ClientLimits::new(settings),
        })
    }

    /// The bound address (the real port when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address of the separate metrics listener, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// Runs the loop until a shutdown signal has been handled. Returns an error only if
    /// the poll itself fails.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        let start = Instant::now();
        self.service
            .timers
            .insert(start + HOUSEKEEPING_EVERY, Deadline::Housekeeping);

        loop {
            let now = Instant::now();
            if let Some(deadline) = self.shutdown_by {
                if self.conns.is_empty() || now >= deadline {
                    return Ok(());
                }
            }

            // Wait for readiness or the next deadline; buffered input means no wait.
            let timeout = if self.revisit.is_empty() {
                self.service.timers.next_timeout(now)
            } else {
                Some(Duration::ZERO)
            };
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(false),
                    METRICS_LISTENER => self.accept(true),
                    SIGNALS => self.on_signal(),
                    Token(key) => self.ready(key, event.is_readable(), event.is_writable()),
                }
            }

            if self.accept_stalled {
                self.accept(false);
            }

            // Connections that still had input when they had to stop.
            for key in std::mem::take(&mut self.revisit) {
                self.process(key);
            }

            self.service.timers.expire(Instant::now(), &mut fired);
            for deadline in fired.drain(..) {
                self.on_deadline(deadline);
            }

            self.end_pass();
        }
    }

    /// Accepts every pending connection of the main listener, or of the metrics
    /// listener when `metrics_port` is set, refusing those over the connection limit.
    fn accept(&mut self, metrics_port: bool) {
        loop {
            let listener = if metrics_port {
                self.metrics_listener.as_ref().map(|(listener, _)| listener)
            } else {
                self.listener.as_ref()
            };
            let Some(listener) = listener else {
                return;
            };
            let (mut socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // EMFILE and friends: the connection stays in the backlog. The
                    // listener is edge-triggered and will not signal it again, so the
                    // loop retries every pass until accepting works (logged once).
                    if !self.accept_stalled {
                        event!(
                            Level::Error,
                            "accept_failed",
                            error = error.to_string(),
                            message = "retrying each pass; raise `ulimit -n` above \
                                       server.max_connections"
                        );
                    }
                    self.accept_stalled = true;
                    return;
                }
            };
            if std::mem::take(&mut self.accept_stalled) {
                event!(Level::Info, "accept_resumed");
            }

            if let Err(refusal) = self.admit(peer, Instant::now()) {
                self.refuse(socket, peer, refusal);
                continue;
            }

            let _ = socket.set_nodelay(true);
            let first_deadline = self.http_timeout().min(self.keep_alive());
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(error) = self.poll.registry().register(
                &mut socket,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                event!(
                    Level::Error,
                    "register_failed",
                    peer = peer,
                    error = error.to_string()
                );
                self.release_client(peer);
                continue;
            }

            let serial = self.next_serial;
            self.next_serial += 1;
            let now = Instant::now();
            let first = now + first_deadline;
            let timer = self
                .service
                .timers
                .insert(first, Deadline::Connection { key, serial });
            let http = HttpConn {
                request_started: Some(now),
                readable: true,
                ..HttpConn::default()
            };
            entry.insert(Conn {
                socket,
                peer,
                serial,
                timer: Some(timer),
                phase: Phase::Http(Box::new(http)),
                metrics_port,
            });
            event!(
                Level::Debug,
                "connection_accepted",
                peer = peer,
                connections = self.conns.len()
            );
        }
    }

    fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.service.config.http.request_timeout_seconds)
    }

    fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.service.config.http.keep_alive_seconds)
    }

    /// Handles readiness of connection `key`.
    fn ready(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match &mut conn.phase {
            Phase::Http(http) => {
                if readable {
                    http.readable = true;
                }
                if writable && http.unwritten() > 0 {
                    if let Err(error) = http.flush(&mut conn.socket) {
                        self.drop_http(key, &error.to_string());
                        return;
                    }
                }
                self.process(key);
            }
            Phase::WebSocket(_) => {
                if writable {
                    self.ws_flush(key);
                }
                if readable {
                    self.ws_read(key);
                }
            }
        }
    }

    /// Drives an HTTP connection: reads, parses and serves requests until it runs out of
    /// input or must wait (held responses, unwritten output, a pending upgrade).
    fn process(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Phase::Http(http) = &mut conn.phase else {
                return;
            };

            // Finish what is queued first: a pending upgrade or close waits for it.
            if http.unwritten() > 0 {
                match http.flush(&mut conn.socket) {
                    Ok(true) => {}
                    Ok(false) if http.unwritten() > MAX_UNWRITTEN => return,
                    Ok(false) if http.upgrade.is_some() || http.close_after_write => return,
                    Ok(false) => {}
                    Err(error) => {
                        let reason = error.to_string();
                        self.drop_http(key, &reason);
                        return;
                    }
                }
            }
            if http.unwritten() == 0 && http.held.is_empty() {
                if http.upgrade.is_some() {
                    // A joining client must see only committed state: wait for the
                    // pass's commit if it has writes (end_pass starts it then).
                    if self.service.store.has_pending() {
                        self.upgrades_after_commit.push(key);
                    } else {
                        self.start_websocket(key);
                    }
                    return;
                }
                if http.close_after_write {
                    self.drop_http(key, "closed after response");
                    return;
                }
            }
            if http.upgrade.is_some() || http.close_after_write {
                return;
            }
            if http.held.len() >= MAX_HELD_PER_CONN {
                return; // released at the end of the pass, then revisited
            }

            match self.next_request(key) {
                Step::Served => continue,
                Step::NeedInput => {}
                Step::Stop => return,
            }

            // Read more, or stop until the socket is readable again.
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Phase::Http(http) = &mut conn.phase else {
                return;
            };
            if !http.readable {
                if http.eof {
                    self.on_http_eof(key);
                }
                return;
            }
            let cap = self.service.config.http.max_head_bytes
                + self.service.config.http.max_batch_body_bytes
                + 1;
            let was_empty = http.inbuf.is_empty();
            match http.fill(&mut conn.socket, cap) {
                Ok(0) if http.eof => {
                    self.on_http_eof(key);
                    return;
                }
                Ok(0) => return,
                Ok(_) => {
                    if was_empty && http.request_started.is_none() {
                        http.request_started = Some(Instant::now());
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    self.drop_http(key, &reason);
                    return;
                }
            }
        }
    }

    /// The peer closed its side: drop the connection once nothing is owed to it.
    fn on_http_eof(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::Http(http) = &mut conn.phase else {
            return;
        };
        if http.held.is_empty() && http.unwritten() == 0 {
            self.drop_http(key, "peer closed");
        } else {
            http.close_after_write = true;
        }
    }

    /// Parses and serves the next request of `key` if it is complete in the buffer.
    fn next_request(&mut self, key: usize) -> Step {
        let limits = HeadLimits {
            max_head_bytes: self.service.config.http.max_head_bytes,
            max_headers: self.service.config.http.max_headers,
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return Step::Stop;
        };
        let peer = conn.peer;
        let Phase::Http(http) = &mut conn.phase else {
            return Step::Stop;
        };

        // The head: parsed once, kept while the body arrives.
        if http.head.is_none() {
            match http::parse_head(&http.inbuf, limits) {
                Ok(None) => return Step::NeedInput,
                Ok(Some(head)) => http.head = Some(head),
                Err(error) => {
                    let status = error.status();
                    let message = error.to_string();
                    self.reply_and_close(key, api::failure(status, &message, "request"), peer);
                    return Step::Stop;
                }
            }
        }
        let Some(head) = http.head.as_ref() else {
            return Step::Stop;
        };

        // Route before the body arrives, so the right size limit applies and a hopeless
        // request is answered without reading its body.
        let route = match api::route(head.method, &head.path) {
            Ok(route) => route,
            Err(error) => {
                let response = error.response();
                return self.answer_without_body(key, response, "unrouted");
            }
        };
        let limit = match &route {
            Route::Stock {
                call: api::StockCall::Batch,
                ..
            } => self.service.config.http.max_batch_body_bytes,
            _ => self.service.config.http.max_body_bytes,
        };
        let body_len = head.content_length.unwrap_or(0);
        if body_len > limit {
            let message = format!("request body larger than {limit} bytes");
            let response = api::failure(413, &message, route.template());
            self.reply_and_close(key, response, peer);
            return Step::Stop;
        }

        let Some(conn) = self.conns.get_mut(key) else {
            return Step::Stop;
        };
        let Phase::Http(http) = &mut conn.phase else {
            return Step::Stop;
        };
        let Some(head) = http.head.as_ref() else {
            return Step::Stop;
        };
        let total = head.head_len + body_len;
        if http.inbuf.len() < total {
            if head.expect_continue && !http.continue_sent {
                http.continue_sent = true;
                http.outbuf.extend_from_slice(http::CONTINUE);
                // Send it now: the client waits for it before sending the body, so
                // no later read would come to flush it.
                if let Err(error) = http.flush(&mut conn.socket) {
                    let reason = error.to_string();
                    self.drop_http(key, &reason);
                    return Step::Stop;
                }
            }
            return Step::NeedInput;
        }

        // The whole request is here: take it off the buffer and serve it.
        let Some(head) = http.head.take() else {
            return Step::Stop;
        };
        let body: Vec<u8> = http.inbuf[head.head_len..total].to_vec();
        http.inbuf.drain(..total);
        http.continue_sent = false;
        http.request_started = if http.inbuf.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        self.serve(key, head, route, &body);
        Step::Served
    }

    /// Answers a request whose body (if any) will not be read. With a body still to
    /// come the connection must close, since its framing would otherwise be lost.
    fn answer_without_body(
        &mut self,
        key: usize,
        response: Response,
        route: &'static str,
    ) -> Step {
        let Some(conn) = self.conns.get_mut(key) else {
            return Step::Stop;
        };
        let peer = conn.peer;
        let Phase::Http(http) = &mut conn.phase else {
            return Step::Stop;
        };
        let Some(head) = http.head.as_ref() else {
            return Step::Stop;
        };
        let body_len = head.content_length.unwrap_or(0);
        // The length is the client's word and may be near usize::MAX: a wrapped sum
        // would drain only part of the body and parse the rest as the next request.
        let total = head.head_len.saturating_add(body_len);
        if http.inbuf.len() >= total && !head.expect_continue {
            let Some(head) = http.head.take() else {
                return Step::Stop;
            };
            http.inbuf.drain(..total);
            self.respond(key, &head, response, route, Instant::now(), false);
            return Step::Served;
        }
        if body_len == 0 {
            let Some(head) = http.head.take() else {
                return Step::Stop;
            };
            http.inbuf.drain(..head.head_len.min(http.inbuf.len()));
            self.respond(key, &head, response, route, Instant::now(), false);
            return Step::Served;
        }
        self.reply_and_close(key, response, peer);
        Step::Stop
    }

    /// Queues `response` with `Connection: close` and closes once it is written.
    ///
    /// Behind responses held for the pass commit it is held too, so it cannot overtake
    /// them: a POS must never read an error as the answer to its committed update.
    fn reply_and_close(&mut self, key: usize, response: Response, peer: SocketAddr) {
        let epoch = self.service.pass.epoch;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::Http(http) = &mut conn.phase else {
            return;
        };
        http.head = None;
        http.inbuf.clear();
        http.close_after_write = true;
        if !http.held.is_empty() {
            http.held.push_back(HeldResponse {
                epoch,
                response,
                keep_alive: false,
                head_only: false,
                route: "invalid",
                started: Instant::now(),
            });
            return;
        }

        log_http_error(response.status, "invalid", &response, peer);
        self.service
            .metrics
            .http_request("invalid", response.status, Duration::ZERO);
        response.write_to(&mut http.outbuf, false, false);
        let _ = http.flush(&mut conn.socket);
        if http.unwritten() == 0 && http.held.is_empty() {
            self.drop_http(key, "closed after error");
        }
    }

    /// Serves one complete request.
    fn serve(&mut self, key: usize, head: RequestHead, route: Route, body: &[u8]) {
        let started = Instant::now();
        let template = route.template();

        // A separate metrics listener serves /metrics alone, and only it does.
        let metrics_port = self.conns.get(key).is_some_and(|conn| conn.metrics_port);
        let separate = self.metrics_listener.is_some();
        if !metrics::served_on(route == Route::Metrics, metrics_port, separate) {
            let response = api::failure(404, "no such endpoint", template);
            self.respond(key, &head, response, template, started, false);
            return;
        }

        // A client that used up its auth failures gets 429 on every guarded route.
        if route != Route::Health {
            let Some(peer) = self.conns.get(key).map(|c| c.peer) else {
                return;
            };
            if let Some(response) = self.auth_block(peer, template) {
                self.respond(key, &head, response, template, started, false);
                return;
            }
        }

        match route {
            Route::Asset(asset) => {
                let response = asset.response();
                self.respond(key, &head, response, template, started, false);
            }
            Route::Health => {
                let response = self.health();
                self.respond(key, &head, response, template, started, false);
            }
            Route::Metrics => {
                let response = self.metrics_response(&head);
                if response.status == 401 {
                    self.note_auth_failure_of(key);
                }
                self.respond(key, &head, response, template, started, false);
            }
            Route::WebSocket { tenant, store } => self.upgrade(key, head, tenant, store),
            Route::Stock {
                tenant,
                store,
                call,
            } => {
                let token = head.bearer_token();
                let verdict = self.service.verifier.authorize(token, &tenant, &store);
                if let Err(error) = verdict {
                    let status = match error {
                        AuthError::TenantMismatch | AuthError::StoreDenied => 403,
                        _ => 401,
                    };
                    let response = api::failure(status, &error.to_string(), template);
                    self.note_auth_failure_of(key);
                    self.respond(key, &head, response, template, started, false);
                    return;
                }

                let result = crate::idempotency::serve_stock(
                    &mut self.service,
                    &tenant,
                    &store,
                    &call,
                    &head,
                    body,
                    started,
                );
                match result {
                    Ok(response) => {
                        let hold = self.service.store.has_pending();
                        self.respond(key, &head, response, template, started, hold);
                    }
                    Err(error) => {
                        // The store refused a write: void the whole pass so memory and
                        // disk agree, and tell this client to retry.
                        self.storage_failed("storage_write_failed", &error.to_string());
                        self.service.rollback_pass();
                        let response = storage_unavailable(&error.to_string(), template);
                        self.respond(key, &head, response, template, started, false);
                    }
                }
            }
        }
    }

    /// Queues a response, or holds it for the pass commit when `hold` is set or earlier
    /// responses of the connection are already held (order is kept).
    fn respond(
        &mut self,
        key: usize,
        head: &RequestHead,
        response: Response,
        route: &'static str,
        started: Instant,
        hold: bool,
    ) {
        let epoch = self.service.pass.epoch;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let peer = conn.peer;
        let Phase::Http(http) = &mut conn.phase else {
            return;
        };
        let keep_alive = head.keep_alive;
        let head_only = head.method == Method::Head;

        if hold || !http.held.is_empty() {
            if http.held.is_empty() {
                self.holding.push(key);
            }
            http.held.push_back(HeldResponse {
                epoch,
                response,
                keep_alive,
                head_only,
                route,
                started,
            });
            return;
        }

        log_http_error(response.status, route, &response, peer);
        self.service
            .metrics
            .http_request(route, response.status, started.elapsed());
        response.write_to(&mut http.outbuf, keep_alive, head_only);
        http.last_activity = Some(Instant::now());
        if !keep_alive {
            http.close_after_write = true;
        }
    }

    /// `GET /health`: 200 while the store takes writes, 503 when it does not.
    fn health(&mut self) -> Response {
        let writable = if self.service.store.has_pending() {
            self.service.writable
        } else {
            self.service.store.writable_probe()
        };
        let status = if writable { 200 } else { 503 };
        let body = serde_json::json!({
            "status": if writable { "ok" } else { "storage_unwritable" },
            "websocket_connections": self.service.metrics.websocket_open,
            "connections": self.conns.len(),
            "uptime_seconds": self.service.started.0.elapsed().as_secs(),
            "storage_writable": writable,
            "items": self.service.store.item_count(),
        });
        Response::json(status, body.to_string()).with_header("Cache-Control", "no-store")
    }

    /// `GET /metrics` in the Prometheus text format, if enabled and authorized.
    fn metrics_response(&self, head: &RequestHead) -> Response {
        let metrics = &self.service.config.metrics;
        if !metrics.enabled {
            return api::failure(404, "metrics are disabled", "metrics");
        }
        let expected = metrics.bearer_token.as_ref().map(|secret| secret.expose());
        if expected.is_some() && head.bearer_token() != expected {
            return api::failure(401, "metrics need their bearer token", "metrics");
        }
        let started = self
            .service
            .started
            .1
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let text = self.service.metrics.render(
            self.service.store.item_count(),
            &ProcessStats::read(started),
        );
        Response {
            status: 200,
            headers: vec![("Cache-Control", "no-store".into())],
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: text.into_bytes(),
        }
    }

    /// Answers a WebSocket upgrade request: 101 (then, for a refused token, a 1008 close
    /// once the handshake is out), or an HTTP error for a malformed upgrade.
    fn upgrade(&mut self, key: usize, head: RequestHead, tenant: String, store: String) {
        let started = Instant::now();

        if let Some(version) = head.header("sec-websocket-version") {
            if version.trim() != "13" {
                let response =
                    api::failure(426, "only WebSocket version 13 is supported", "websocket")
                        .with_header("Sec-WebSocket-Version", "13");
                self.respond(key, &head, response, "websocket", started, false);
                return;
            }
        }

        // A 101 must not overtake responses still held for the pass commit.
        let behind_held = match self.conns.get(key).map(|c| &c.phase) {
            Some(Phase::Http(http)) => !http.held.is_empty(),
            _ => false,
        };
        if behind_held {
            let message = "a WebSocket upgrade must not be pipelined behind other requests";
            let response = api::failure(400, message, "websocket");
            self.respond(key, &head, response, "websocket", started, false);
            return;
        }

        if let Some(response) = self.origin_refusal(&head) {
            self.respond(key, &head, response, "websocket", started, false);
            return;
        }

        let handshake = match build_handshake(&head) {
            Ok(response) => response,
            Err(message) => {
                let response = api::failure(400, &message, "websocket");
                self.respond(key, &head, response, "websocket", started, false);
                return;
            }
        };

        let token = head.query_param("token");
        let auth = self
            .service
            .verifier
            .authorize(token.as_deref(), &tenant, &store);
        let since = head
            .query_param("since")
            .and_then(|s| s.parse::<u64>().ok());

        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::Http(http) = &mut conn.phase else {
            return;
        };
        http.outbuf.extend_from_slice(&handshake);
        http.upgrade = Some(PendingUpgrade {
            tenant,
            store,
            auth,
            since,
        });
        self.service
            .metrics
            .http_request("websocket", 101, started.elapsed());
    }

    /// Removes connection `key` entirely: poll registration, timers, subscription, slot.
    fn remove(&mut self, key: usize, code: Option<u16>, reason: &str) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.socket);
        self.release_client(conn.peer);
        if let Some(timer) = conn.timer.take() {
            self.service.timers.cancel(timer);
        }

        match conn.phase {
            Phase::Http(_) => {
                event!(
                    Level::Debug,
                    "connection_closed",
                    peer = conn.peer,
                    reason = reason
                );
            }
            Phase::WebSocket(ws) => {
                if let Some(timer) = ws.token_timer {
                    self.service.timers.cancel(timer);
                }
                let mut count = 0;
                if ws.subscribed {
                    let store_key = (ws.tenant.clone(), ws.store.clone());
                    if let Some(members) = self.subscribers.get_mut(&store_key) {
                        members.retain(|&k| k != key);
                        count = members.len();
                        if members.is_empty() {
                            self.subscribers.remove(&store_key);
                        }
                    }
                    self.service.metrics.websocket_open -= 1;
                    self.service.metrics.disconnect(code);
                    event!(
                        Level::Info,
                        "websocket_disconnected",
                        tenant_id = ws.tenant,
                        store_code = ws.store,
                        peer = conn.peer,
                        close_code = code,
                        reason = reason,
                        connection_count = count
                    );
                }
            }
        }
    }

    fn drop_http(&mut self, key: usize, reason: &str) {
        self.remove(key, None, reason);
    }

    /// A connection's deadline: request timeout, keep-alive, ping/idle or close wait.
    fn on_deadline(&mut self, deadline: Deadline) {
        match deadline {
            Deadline::Connection { key, serial } => self.on_conn_deadline(key, serial),
            Deadline::TokenExpiry { key, serial } => {
                let live = self.conns.get(key).is_some_and(|c| c.serial == serial);
                if live {
                    if let Some(Phase::WebSocket(ws)) =
                        self.conns.get_mut(key).map(|c| &mut c.phase)
                    {
                        ws.token_timer = None;
                    }
                    self.ws_close(key, CloseCode::Policy, "Token expired");
                }
            }
            Deadline::Cooldown(cooldown) => {
                self.service.cooldowns.expire(&cooldown, Instant::now());
            }
            Deadline::Housekeeping => {
                // Storage upkeep needs no pass open: end_pass runs it after the commit.
                self.housekeeping_due = true;
                let next = Instant::now() + HOUSEKEEPING_EVERY;
                self.service.timers.insert(next, Deadline::Housekeeping);
            }
        }
    }

    fn on_conn_deadline(&mut self, key: usize, serial: u64) {
        let now = Instant::now();
        let request_timeout = self.http_timeout();
        let keep_alive = self.keep_alive();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.serial != serial {
            return;
        }
        conn.timer = None;
        let peer = conn.peer;

        let next = match &mut conn.phase {
            Phase::Http(http) => {
                if let Some(started) = http.request_started.filter(|_| {
                    // A new connection owes its first request within the request
                    // timeout too, so a silent client cannot hold a slot for long.
                    let first = http.last_activity.is_none();
                    first || !http.inbuf.is_empty() || http.head.is_some()
                }) {
                    let due = started + request_timeout;
                    if now >= due {
                        event!(Level::Info, "http_request_timeout", peer = peer);
                        let response =
                            api::failure(408, "request not received in time", "request");
                        self.reply_and_close(key, response, peer);
                        return;
                    }
                    due
                } else if http.held.is_empty() && http.unwritten() == 0 {
                    let due = http.last_activity.unwrap_or(now) + keep_alive;
                    if now >= due {
                        self.drop_http(key, "keep-alive timeout");
                        return;
                    }
                    due.min(now + request_timeout)
                } else {
                    // Output still owed to a slow reader: give it the request timeout.
                    let due = http.last_activity.unwrap_or(now) + request_timeout.max(keep_alive);
                    if now >= due {
                        self.drop_http(key, "write timeout");
                        return;
                    }
                    due
                }
            }
            Phase::WebSocket(_) => match self.ws_deadline(key, now) {
                Some(next) => next,
                None => return,
            },
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.timer = Some(
            self.service
                .timers
                .insert(next, Deadline::Connection { key, serial }),
        );
    }

    /// Storage upkeep with no pass open: a passive WAL checkpoint and, when `purge` is
    /// set, bounded purges of expired idempotency keys and old alert-log entries.
    fn housekeeping(&mut self, purge: bool) {
        if self.service.store.has_pending() {
            return;
        }
        let started = Instant::now();
        match self.service.store.checkpoint() {
            Ok(stats) => {
                let took = started.elapsed();
                self.service.metrics.checkpoint_duration.observe(took);
                if took >= SLOW_UPKEEP {
                    event!(
                        Level::Warn,
                        "checkpoint_slow",
                        millis = took.as_secs_f64() * 1000.0,
                        wal_pages = stats.wal_pages,
                        checkpointed_pages = stats.checkpointed_pages
                    );
                }
            }
            Err(error) => {
                event!(Level::Warn, "checkpoint_failed", error = error.to_string());
            }
        }
        if !purge {
            return;
        }
        let now = Timestamp::now();
        let key_ttl = self.service.config.storage.idempotency_key_ttl_seconds as i64 * 1000;
        let retention = self.service.config.alerts.log_retention_days as i64 * 86_400_000;
        if let Err(error) = self
            .service
            .store
            .purge_idempotency(Timestamp(now.0 - key_ttl), 1000)
        {
            event!(
                Level::Warn,
                "purge_failed",
                what = "idempotency_keys",
                error = error.to_string()
            );
        }
        if let Err(error) = self
            .service
            .store
            .purge_alerts(Timestamp(now.0 - retention), 1000)
        {
            event!(
                Level::Warn,
                "purge_failed",
                what = "alert_log",
                error = error.to_string()
            );
        }
        // Purges run in their own pass transaction.
        if let Err(error) = self.service.commit_pass() {
            event!(
                Level::Warn,
                "purge_failed",
                what = "commit",
                error = error.to_string()
            );
        }
    }

    /// Ends the pass: commit, release held responses, fan out alerts, flush WebSockets.
    ///
    /// Clients that upgraded during the pass join their store after the commit and the
    /// fan-out, so they see committed state and no alert twice. Storage upkeep runs last,
    /// with no pass open.
    fn end_pass(&mut self) {
        let was_writable = self.service.writable;
        let committed = match self.service.commit_pass() {
            Ok(()) => {
                self.storage_recovered(was_writable);
                true
            }
            Err(error) => {
                self.storage_failed("storage_commit_failed", &error.to_string());
                false
            }
        };
        let epoch = self.service.pass.epoch;

        // Alerts first: a POS that sees its 200 knows the alert is already on the wire.
        let alerts = if committed {
            std::mem::take(&mut self.service.pass.alerts)
        } else {
            Vec::new()
        };
        for alert in &alerts {
            self.fan_out(alert);
        }
        for key in std::mem::take(&mut self.upgrades_after_commit) {
            self.start_websocket(key);
        }
        for key in std::mem::take(&mut self.dirty) {
            self.ws_flush(key);
        }
        for alert in &alerts {
            self.service
                .metrics
                .alert_latency
                .observe(alert.received.elapsed());
        }

        for key in std::mem::take(&mut self.holding) {
            self.release_held(key, committed, epoch);
            self.revisit.push(key);
        }

        if std::mem::take(&mut self.housekeeping_due) {
            self.upkeep_ticks = self.upkeep_ticks.wrapping_add(1);
            let purge = self.upkeep_ticks % PURGE_EVERY_TICKS == 0;
            if purge {
                self.sweep_limits();
            }
            self.housekeeping(purge);
        }
    }

    /// Logs a storage failure once, at error, when the store turns unwritable; while it
    /// stays so, later failures (POS terminals retry every second) log at debug only.
    fn storage_failed(&mut self, event_name: &'static str, error: &str) {
        let level = if self.service.writable {
            Level::Error
        } else {
            Level::Debug
        };
        event!(
            level,
            "storage_unwritable",
            cause = event_name,
            error = error
        );
    }

    /// Logs the return of a store that was unwritable, once.
    fn storage_recovered(&mut self, was_writable: bool) {
        if !was_writable && self.service.writable {
            event!(Level::Info, "storage_writable_again");
        }
    }

    /// Writes the held responses of `key`: as produced if the pass committed and none
    /// was voided by a rollback, as 503s otherwise.
    fn release_held(&mut self, key: usize, committed: bool, epoch: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let peer = conn.peer;
        let Phase::Http(http) = &mut conn.phase else {
            return;
        };
        while let Some(held) = http.held.pop_front() {
            let response = if committed && held.epoch == epoch {
                held.response
            } else {
                storage_unavailable("the update could not be stored; retry", held.route)
            };
            log_http_error(response.status, held.route, &response, peer);
            self.service
                .metrics
                .http_request(held.route, response.status, held.started.elapsed());
            response.write_to(&mut http.outbuf, held.keep_alive, held.head_only);
            if !held.keep_alive {
                http.close_after_write = true;
            }
        }
        http.last_activity = Some(Instant::now());
        if let Err(error) = http.flush(&mut conn.socket) {
            let reason = error.to_string();
            self.drop_http(key, &reason);
        }
    }

    /// SIGINT/SIGTERM: stop accepting, close every WebSocket with 1001, let HTTP
    /// responses in flight finish, then end the loop.
    fn on_signal(&mut self) {
        let mut signaled = false;
        for signal in self.signals.pending() {
            signaled |= signal == SIGINT || signal == SIGTERM;
        }
        if !signaled || self.shutdown_by.is_some() {
            return;
        }
        event!(
            Level::Info,
            "server_stopping",
            connections = self.conns.len()
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        if let Some((mut listener, _)) = self.metrics_listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.shutdown_by = Some(Instant::now() + SHUTDOWN_GRACE);

        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            match &mut conn.phase {
                Phase::WebSocket(_) => self.ws_close(key, CloseCode::Away, "Server shutting down"),
                Phase::Http(http) => {
                    // Responses owed are finished; a request not yet fully received
                    // is not in flight and is dropped with the connection.
                    let idle = http.held.is_empty() && http.unwritten() == 0;
                    if idle {
                        self.drop_http(key, "server shutting down");
                    } else {
                        http.close_after_write = true;
                    }
                }
            }
        }
    }
}

/// The outcome of trying to serve the next request of a connection.
enum Step {
    /// A request was served; try the next one.
    Served,
    /// The next request is incomplete; read more.
    NeedInput,
    /// The connection must not be read further now.
    Stop,
}

/// The 101 response for a valid upgrade request, via tungstenite's handshake checks.
fn build_handshake(head: &RequestHead) -> Result<Vec<u8>, String> {
    use tungstenite::handshake::server::{create_response, write_response};

    let mut builder = tungstenite::http::Request::builder()
        .method("GET")
        .uri(head.path.as_str())
        .version(tungstenite::http::Version::HTTP_11);
    for (name, value) in &head.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let request = builder
        .body(())
        .map_err(|e| format!("invalid upgrade request: {e}"))?;
    let response =
        create_response(&request).map_err(|e| format!("invalid WebSocket upgrade: {e}"))?;
    let mut out = Vec::with_capacity(160);
    write_response(&mut out, &response).map_err(|e| format!("invalid WebSocket upgrade: {e}"))?;
    Ok(out)
}

/// The 503 a client gets when its write could not be stored.
fn storage_unavailable(detail: &str, operation: &str) -> Response {
    let message = format!("storage unavailable: {detail}");
    api::failure(503, &message, operation).with_header("Retry-After", "1")
}

/// Logs an error response once: client errors at info, server errors at warn. The path
/// and query are never logged (a query may carry a token); the route template is.
fn log_http_error(status: u16, route: &'static str, response: &Response, peer: SocketAddr) {
    if status < 400 {
        return;
    }
    let message = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default();
    // A 503's cause (storage, the connection limit) is logged once where it happens.
    let level = match status {
        503 => Level::Debug,
        500.. => Level::Warn,
        _ => Level::Info,
    };
    event!(
        level,
        "http_error",
        status = status,
        route = route,
        peer = peer,
        message = message
    );
}
