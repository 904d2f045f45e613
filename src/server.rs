//! The poll loop: one thread, one `mio::Poll`, a slab of connections.
//!
//! Each pass of the loop waits for readiness or the next deadline, handles every ready
//! connection, fires due timers, then ends the pass: the writes taken in it are committed
//! in one transaction, the alerts they raised are fanned out, every WebSocket with queued
//! frames is flushed, and their held responses are released (or turned into 503s if the
//! commit failed). Nothing blocks except the commit and the storage upkeep after it.
//!
//! This module is the loop itself: accepting, readiness, deadlines, the pass, shutdown.
//! What a connection speaks lives beside it: `requests` (HTTP), `ws` (WebSocket), and
//! `guard` (per-client limits and refusals).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::Level;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;

mod guard;
mod requests;
mod ws;

use crate::conn::{Conn, HttpConn, Phase, StoreKey};
use crate::event;
use crate::limits::{ClientLimits, LimitSettings};
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
type Subscribers = HashMap<Rc<StoreKey>, Vec<usize>>;

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
                let mut count = 0;
                if ws.subscribed {
                    let store_key: &StoreKey = &ws.subscription;
                    if let Some(members) = self.subscribers.get_mut(store_key) {
                        members.retain(|&k| k != key);
                        count = members.len();
                        if members.is_empty() {
                            self.subscribers.remove(store_key);
                        }
                    }
                    self.service.metrics.websocket_open -= 1;
                    self.service.metrics.disconnect(code);
                    event!(
                        Level::Info,
                        "websocket_disconnected",
                        tenant_id = ws.subscription.tenant_id,
                        store_code = ws.subscription.store_code,
                        peer = conn.peer,
                        close_code = code,
                        reason = reason,
                        connection_count = count
                    );
                }
            }
        }
    }

    /// A connection's deadline: request timeout, keep-alive, ping/idle or close wait.
    fn on_deadline(&mut self, deadline: Deadline) {
        match deadline {
            Deadline::Connection { key, serial } => self.on_conn_deadline(key, serial),
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
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.serial != serial {
            return;
        }
        conn.timer = None;

        let next = match &conn.phase {
            Phase::Http(_) => self.http_deadline(key, now),
            Phase::WebSocket(_) => self.ws_deadline(key, now),
        };
        let Some(next) = next else {
            return;
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
