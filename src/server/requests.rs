//! The HTTP side of the loop: reading, parsing and serving requests on a connection,
//! holding responses for the pass commit, answering errors, and the WebSocket upgrade
//! request up to its 101 (the WebSocket itself is `ws`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::Level;

use super::{MAX_HELD_PER_CONN, MAX_UNWRITTEN, Server};
use crate::api::{self, Route};
use crate::auth::AuthError;
use crate::conn::{HeldResponse, PendingUpgrade, Phase};
use crate::event;
use crate::http::{self, HeadLimits, Method, RequestHead, Response};
use crate::metrics::{self, ProcessStats};

impl Server {
    pub(super) fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.service.config.http.request_timeout_seconds)
    }

    pub(super) fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.service.config.http.keep_alive_seconds)
    }

    /// Drives an HTTP connection: reads, parses and serves requests until it runs out of
    /// input or must wait (held responses, unwritten output, a pending upgrade).
    pub(super) fn process(&mut self, key: usize) {
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
    pub(super) fn on_http_eof(&mut self, key: usize) {
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
    pub(super) fn next_request(&mut self, key: usize) -> Step {
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
    pub(super) fn answer_without_body(
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
    pub(super) fn reply_and_close(&mut self, key: usize, response: Response, peer: SocketAddr) {
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
    pub(super) fn serve(&mut self, key: usize, head: RequestHead, route: Route, body: &[u8]) {
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
    pub(super) fn respond(
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
    pub(super) fn health(&mut self) -> Response {
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
    pub(super) fn metrics_response(&self, head: &RequestHead) -> Response {
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
    pub(super) fn upgrade(
        &mut self,
        key: usize,
        head: RequestHead,
        tenant: String,
        store: String,
    ) {
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

    pub(super) fn drop_http(&mut self, key: usize, reason: &str) {
        self.remove(key, None, reason);
    }

    /// Writes the held responses of `key`: as produced if the pass committed and none
    /// was voided by a rollback, as 503s otherwise.
    pub(super) fn release_held(&mut self, key: usize, committed: bool, epoch: u64) {
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

    /// The connection deadline of an HTTP connection: 408 for a request not received
    /// within the request timeout (counted from accept for the first one), a quiet close
    /// after the keep-alive time, a close for a reader that stopped taking its
    /// responses. Returns the next deadline, or `None` once the connection is gone.
    pub(super) fn http_deadline(&mut self, key: usize, now: Instant) -> Option<Instant> {
        let request_timeout = self.http_timeout();
        let keep_alive = self.keep_alive();
        let conn = self.conns.get_mut(key)?;
        let peer = conn.peer;
        let Phase::Http(http) = &mut conn.phase else {
            return None;
        };

        let first = http.last_activity.is_none();
        let waiting = first || !http.inbuf.is_empty() || http.head.is_some();
        if let Some(started) = http.request_started.filter(|_| waiting) {
            let due = started + request_timeout;
            if now >= due {
                event!(Level::Info, "http_request_timeout", peer = peer);
                let response = api::failure(408, "request not received in time", "request");
                self.reply_and_close(key, response, peer);
                return None;
            }
            return Some(due);
        }

        if http.held.is_empty() && http.unwritten() == 0 {
            let due = http.last_activity.unwrap_or(now) + keep_alive;
            if now >= due {
                self.drop_http(key, "keep-alive timeout");
                return None;
            }
            return Some(due.min(now + request_timeout));
        }

        // Output still owed to a reader that stopped taking it: as long as the longer
        // of the two timeouts, then drop it.
        let due = http.last_activity.unwrap_or(now) + request_timeout.max(keep_alive);
        if now >= due {
            self.drop_http(key, "write timeout");
            return None;
        }
        Some(due)
    }
}

/// The outcome of trying to serve the next request of a connection.
pub(super) enum Step {
    /// A request was served; try the next one.
    Served,
    /// The next request is incomplete; read more.
    NeedInput,
    /// The connection must not be read further now.
    Stop,
}

/// The 101 response for a valid upgrade request, via tungstenite's handshake checks.
pub(super) fn build_handshake(head: &RequestHead) -> Result<Vec<u8>, String> {
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
pub(super) fn storage_unavailable(detail: &str, operation: &str) -> Response {
    let message = format!("storage unavailable: {detail}");
    api::failure(503, &message, operation).with_header("Retry-After", "1")
}

/// Logs an error response once: client errors at info, server errors at warn. The path
/// and query are never logged (a query may carry a token); the route template is.
pub(super) fn log_http_error(
    status: u16,
    route: &'static str,
    response: &Response,
    peer: SocketAddr,
) {
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
