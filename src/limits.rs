//! Per-client admission limits: open connections, a new-connection token bucket and
//! authentication-failure windows, keyed by client address.
//!
//! Everything here is pure bookkeeping: each method takes the current `Instant`, so the
//! server passes its loop clock and the tests pass synthetic ones. Nothing here logs;
//! `sweep` hands back one [`Report`] per client and window for the server to log, so a
//! flood of refusals or bad tokens costs one log line per window, not one per attempt.
//!
//! State is bounded: a client with no open connection is forgotten once its bucket has
//! refilled and its windows have ended (`sweep`), and the table never holds more than
//! `max_tracked` idle clients (`make_room`).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::config::Config;

/// How long refusals at the door are tallied before one summary line per client.
pub const REFUSAL_REPORT_WINDOW: Duration = Duration::from_secs(10);

/// Clients with no open connection the table keeps before it drops rate state to make
/// room. Large enough for a store network, small enough (a few MiB) for an edge box.
pub const MAX_IDLE_CLIENTS: usize = 65_536;

/// The numbers the limits are enforced with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSettings {
    /// Open connections one client may hold; at least 1.
    pub max_open: usize,
    /// Token-bucket refill, new connections per second; at least 1.
    pub rate_per_second: u32,
    /// Token-bucket size, new connections at once; at least 1.
    pub burst: u32,
    /// Auth failures in one window after which requests get 429; at least 1.
    pub failure_limit: u32,
    /// Length of an auth-failure window; non-zero.
    pub failure_window: Duration,
    /// Length of a refusal tally window; non-zero.
    pub refusal_window: Duration,
    /// Idle clients kept before rate state is dropped to make room.
    pub max_idle: usize,
}

impl LimitSettings {
    /// The settings the configuration asks for.
    pub fn from_config(config: &Config) -> LimitSettings {
        LimitSettings {
            max_open: config.server.max_connections_per_ip,
            rate_per_second: config.server.new_connections_per_ip_per_second,
            burst: config.server.new_connections_burst,
            failure_limit: config.auth.failure_limit,
            failure_window: config.auth.failure_window(),
            refusal_window: REFUSAL_REPORT_WINDOW,
            max_idle: MAX_IDLE_CLIENTS,
        }
    }
}

/// Why a new connection was refused at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds its total connection limit (503).
    ServerFull { limit: usize },
    /// The client already holds its per-client connection limit (503).
    TooManyOpen { limit: usize },
    /// The client's new-connection bucket is empty (429); a token is back after
    /// `retry_after`.
    TooFast { retry_after: Duration },
}

impl Refusal {
    /// The HTTP status a refused connection is told.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::ServerFull { .. } | Refusal::TooManyOpen { .. } => 503,
            Refusal::TooFast { .. } => 429,
        }
    }

    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        match self {
            Refusal::TooFast { retry_after } => ceil_seconds(*retry_after),
            _ => 1,
        }
    }

    /// The short name used in logs and summaries.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ServerFull { .. } => "max_connections",
            Refusal::TooManyOpen { .. } => "max_connections_per_ip",
            Refusal::TooFast { .. } => "new_connections_per_ip_per_second",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ServerFull { limit } => {
                write!(
                    f,
                    "server is at its limit of {limit} connections; retry shortly"
                )
            }
            Refusal::TooManyOpen { limit } => {
                write!(f, "this address already holds {limit} connections")
            }
            Refusal::TooFast { .. } => {
                f.write_str("this address opens connections too fast; retry later")
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// A window's worth of trouble from one client, for one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Connections refused at the door during one refusal window, by reason.
    Refused {
        /// The client key (an IPv4 address or an IPv6 /64 prefix).
        client: IpAddr,
        /// Refusals because the server was full.
        server_full: u32,
        /// Refusals over the per-client connection cap.
        too_many_open: u32,
        /// Refusals by the new-connection rate limit.
        too_fast: u32,
    },
    /// Authentication failures during one failure window.
    AuthFailures {
        /// The client key.
        client: IpAddr,
        /// Failed authentications in the window.
        failures: u32,
        /// Requests answered 429 because the limit had been reached.
        blocked: u32,
    },
}

/// A token bucket: `tokens` of `burst` are left as of `updated`; it refills at the
/// configured rate. Invariant: `0 <= tokens <= burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    /// Tokens left at `updated`; fractional while refilling.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            updated: now,
        }
    }

    /// Refills up to `now`. A `now` earlier than the last update refills nothing.
    fn refill(&mut self, now: Instant, rate: u32, burst: u32) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.updated = self.updated.max(now);
    }

    /// Takes one token, or says how long until one is back.
    pub fn take(&mut self, now: Instant, rate: u32, burst: u32) -> Result<(), Duration> {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_secs_f64(missing / f64::from(rate.max(1))))
    }

    /// Whether the bucket is full at `now` (so forgetting it changes nothing).
    pub fn is_full_at(&self, now: Instant, rate: u32, burst: u32) -> bool {
        let mut probe = *self;
        probe.refill(now, rate, burst);
        probe.tokens >= f64::from(burst)
    }
}

/// A fixed window that counts events from its first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Window {
    /// When the window opened (its first event); `None` while nothing is counted.
    started: Option<Instant>,
    /// Events of the primary kind in the window.
    count: u32,
    /// Secondary events (refusal reasons or requests blocked), summed in reports.
    extra: [u32; 2],
}

impl Window {
    /// Whether the window has run its length at `now`.
    fn ended(&self, now: Instant, length: Duration) -> bool {
        self.started
            .is_some_and(|started| now.saturating_duration_since(started) >= length)
    }

    /// Opens the window at `now` if none is open.
    fn open(&mut self, now: Instant) {
        if self.started.is_none() {
            self.started = Some(now);
        }
    }

    /// Whether anything was counted.
    fn is_empty(&self) -> bool {
        self.started.is_none()
    }
}

/// What is known about one client.
#[derive(Debug, Clone)]
struct Client {
    /// Connections it holds open now.
    open: usize,
    /// Its new-connection bucket.
    bucket: TokenBucket,
    /// Auth failures; `count` failures, `extra[0]` requests blocked.
    failures: Window,
    /// Refusals; `count` too fast, `extra[0]` over the cap, `extra[1]` server full.
    refused: Window,
}

/// The per-client table.
#[derive(Debug)]
pub struct ClientLimits {
    /// The numbers enforced.
    settings: LimitSettings,
    /// Every client with an open connection or a live bucket or window.
    clients: HashMap<IpAddr, Client>,
}

/// The key a peer address is counted under: IPv4 as is (IPv4-mapped IPv6 too), and
/// IPv6 by its /64 prefix, since one host commonly owns a whole /64 and could otherwise
/// rotate addresses to dodge every per-address limit.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Rounds up to whole seconds, at least 1 (for `Retry-After`).
pub(crate) fn ceil_seconds(duration: Duration) -> u64 {
    let whole = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    whole.max(1)
}

impl ClientLimits {
    /// An empty table enforcing `settings`.
    pub fn new(settings: LimitSettings) -> ClientLimits {
        ClientLimits {
            settings,
            clients: HashMap::new(),
        }
    }

    /// Clients tracked now (open or idle).
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Connections `ip` holds open, as counted here.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.clients.get(&client_key(ip)).map_or(0, |c| c.open)
    }

    /// Admits a new connection from `ip` or says why not. On `Ok` the connection is
    /// counted open until [`ClientLimits::release`]; a refusal is tallied for the
    /// client's next report. The cap is checked before the bucket, so a client at its
    /// cap does not also burn tokens.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let key = client_key(ip);
        if !self.clients.contains_key(&key) {
            self.make_room(now);
        }
        let settings = self.settings;
        let client = self.clients.entry(key).or_insert_with(|| Client {
            open: 0,
            bucket: TokenBucket::full(settings.burst, now),
            failures: Window::default(),
            refused: Window::default(),
        });

        let verdict = if client.open >= settings.max_open {
            Err(Refusal::TooManyOpen {
                limit: settings.max_open,
            })
        } else {
            client
                .bucket
                .take(now, settings.rate_per_second, settings.burst)
                .map_err(|retry_after| Refusal::TooFast { retry_after })
        };

        match verdict {
            Ok(()) => client.open += 1,
            Err(refusal) => tally_refusal(client, refusal, now),
        }
        verdict
    }

    /// Tallies a refusal decided elsewhere (the server's total limit) for `ip`.
    pub fn note_refusal(&mut self, ip: IpAddr, refusal: Refusal, now: Instant) {
        let key = client_key(ip);
        if !self.clients.contains_key(&key) {
            self.make_room(now);
        }
        let burst = self.settings.burst;
        let client = self.clients.entry(key).or_insert_with(|| Client {
            open: 0,
            bucket: TokenBucket::full(burst, now),
            failures: Window::default(),
            refused: Window::default(),
        });
        tally_refusal(client, refusal, now);
    }

    /// A connection admitted for `ip` has closed. Releasing more than was admitted
    /// is ignored.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(client) = self.clients.get_mut(&client_key(ip)) {
            client.open = client.open.saturating_sub(1);
        }
    }

    /// Counts one failed authentication from `ip`. Returns true exactly when this
    /// failure reaches the limit, so the caller can log the start of the block once.
    pub fn note_auth_failure(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = client_key(ip);
        if !self.clients.contains_key(&key) {
            self.make_room(now);
        }
        let settings = self.settings;
        let client = self.clients.entry(key).or_insert_with(|| Client {
            open: 0,
            bucket: TokenBucket::full(settings.burst, now),
            failures: Window::default(),
            refused: Window::default(),
        });
        if client.failures.ended(now, settings.failure_window) {
            // A stale window the sweep has not reached yet: its count is lost from the
            // report, but never carried into the new window.
            client.failures = Window::default();
        }
        client.failures.open(now);
        client.failures.count = client.failures.count.saturating_add(1);
        client.failures.count == settings.failure_limit
    }

    /// If `ip` has reached the failure limit in its current window, counts one more
    /// blocked request and returns how long until the window ends; else `None`.
    pub fn auth_blocked(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let settings = self.settings;
        let client = self.clients.get_mut(&client_key(ip))?;
        let started = client.failures.started?;
        let elapsed = now.saturating_duration_since(started);
        if elapsed >= settings.failure_window || client.failures.count < settings.failure_limit {
            return None;
        }
        client.failures.extra[0] = client.failures.extra[0].saturating_add(1);
        Some(settings.failure_window - elapsed)
    }

    /// Ends every window that has run its length, pushing one report per client and
    /// window with something in it, and forgets clients with nothing left to track.
    pub fn sweep(&mut self, now: Instant, reports: &mut Vec<Report>) {
        let settings = self.settings;
        self.clients.retain(|&client, state| {
            if state.refused.ended(now, settings.refusal_window) {
                reports.push(Report::Refused {
                    client,
                    too_fast: state.refused.count,
                    too_many_open: state.refused.extra[0],
                    server_full: state.refused.extra[1],
                });
                state.refused = Window::default();
            }
            if state.failures.ended(now, settings.failure_window) {
                reports.push(Report::AuthFailures {
                    client,
                    failures: state.failures.count,
                    blocked: state.failures.extra[0],
                });
                state.failures = Window::default();
            }
            state.open > 0
                || !state.refused.is_empty()
                || !state.failures.is_empty()
                || !state
                    .bucket
                    .is_full_at(now, settings.rate_per_second, settings.burst)
        });
    }

    /// Keeps the table within `max_idle` idle clients before a new one is added. First
    /// idle clients without an open window go (their buckets only), then, under a flood
    /// from more addresses than that, every idle client: rate state is lost for them, but
    /// their open connections still count, and so does the server's total limit.
    fn make_room(&mut self, now: Instant) {
        let settings = self.settings;
        let idle =
            |clients: &HashMap<IpAddr, Client>| clients.values().filter(|c| c.open == 0).count();
        if self.clients.len() < settings.max_idle || idle(&self.clients) < settings.max_idle {
            return;
        }
        self.clients.retain(|_, c| {
            c.open > 0
                || (!c.failures.is_empty() && !c.failures.ended(now, settings.failure_window))
        });
        if idle(&self.clients) >= settings.max_idle {
            self.clients.retain(|_, c| c.open > 0);
        }
    }
}

/// Adds one refusal to the client's tally window.
fn tally_refusal(client: &mut Client, refusal: Refusal, now: Instant) {
    let window = &mut client.refused;
    window.open(now);
    match refusal {
        Refusal::TooFast { .. } => window.count = window.count.saturating_add(1),
        Refusal::TooManyOpen { .. } => window.extra[0] = window.extra[0].saturating_add(1),
        Refusal::ServerFull { .. } => window.extra[1] = window.extra[1].saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn settings() -> LimitSettings {
        LimitSettings {
            max_open: 2,
            rate_per_second: 1,
            burst: 3,
            failure_limit: 2,
            failure_window: Duration::from_secs(5),
            refusal_window: Duration::from_secs(10),
            max_idle: 4,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn bucket_allows_a_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(3, t0);
        for _ in 0..3 {
            assert_eq!(bucket.take(t0, 2, 3), Ok(()));
        }
        let wait = bucket.take(t0, 2, 3).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(bucket.take(t0 + Duration::from_millis(499), 2, 3).is_err());
        assert_eq!(bucket.take(t0 + Duration::from_millis(1000), 2, 3), Ok(()));
        assert!(!bucket.is_full_at(t0 + Duration::from_secs(1), 2, 3));
        assert!(bucket.is_full_at(t0 + Duration::from_secs(3), 2, 3));
    }

    #[test]
    fn bucket_ignores_a_clock_that_goes_backwards() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::full(1, t0);
        assert_eq!(bucket.take(t0, 1, 1), Ok(()));
        assert!(bucket.take(t0 - Duration::from_secs(5), 1, 1).is_err());
        assert_eq!(bucket.take(t0 + Duration::from_secs(1), 1, 1), Ok(()));
    }

    #[test]
    fn cap_is_checked_before_the_bucket_and_release_frees_a_slot() {
        let t0 = Instant::now();
        let mut limits = ClientLimits::new(settings());
        assert_eq!(limits.admit(ip(1), t0), Ok(()));
        assert_eq!(limits.admit(ip(1), t0), Ok(()));
        assert_eq!(
            limits.admit(ip(1), t0),
            Err(Refusal::TooManyOpen { limit: 2 })
        );
        assert_eq!(limits.open(ip(1)), 2);

        // Another client is not affected.
        assert_eq!(limits.admit(ip(2), t0), Ok(()));

        limits.release(ip(1));
        assert_eq!(limits.admit(ip(1), t0), Ok(()));
        limits.release(ip(1));
        limits.release(ip(1));
        // Burst of 3 spent on ip(1): the fourth new connection is too fast.
        let refusal = limits.admit(ip(1), t0).unwrap_err();
        assert_eq!(refusal.status(), 429);
        assert_eq!(refusal.retry_after_seconds(), 1);
        assert_eq!(limits.admit(ip(1), t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn refusals_are_reported_once_per_window_with_counts() {
        let t0 = Instant::now();
        let mut limits = ClientLimits::new(settings());
        limits.admit(ip(1), t0).unwrap();
        limits.admit(ip(1), t0).unwrap();
        for _ in 0..5 {
            assert!(limits.admit(ip(1), t0).is_err());
        }
        limits.note_refusal(ip(1), Refusal::ServerFull { limit: 9 }, t0);

        let mut reports = Vec::new();
        limits.sweep(t0 + Duration::from_secs(9), &mut reports);
        assert!(reports.is_empty(), "{reports:?}");

        limits.sweep(t0 + Duration::from_secs(10), &mut reports);
        assert_eq!(
            reports,
            vec![Report::Refused {
                client: ip(1),
                server_full: 1,
                too_many_open: 5,
                too_fast: 0,
            }]
        );

        reports.clear();
        limits.sweep(t0 + Duration::from_secs(30), &mut reports);
        assert!(reports.is_empty(), "one report per window: {reports:?}");
    }

    #[test]
    fn auth_failures_block_for_the_rest_of_the_window() {
        let t0 = Instant::now();
        let mut limits = ClientLimits::new(settings());
        assert_eq!(limits.auth_blocked(ip(1), t0), None);
        assert!(!limits.note_auth_failure(ip(1), t0));
        assert_eq!(limits.auth_blocked(ip(1), t0), None);
        assert!(limits.note_auth_failure(ip(1), t0 + Duration::from_secs(1)));
        assert!(!limits.note_auth_failure(ip(1), t0 + Duration::from_secs(1)));

        let left = limits.auth_blocked(ip(1), t0 + Duration::from_secs(2));
        assert_eq!(left, Some(Duration::from_secs(3)));
        assert_eq!(limits.auth_blocked(ip(2), t0), None);
        assert_eq!(
            limits.auth_blocked(ip(1), t0 + Duration::from_secs(5)),
            None
        );

        let mut reports = Vec::new();
        limits.sweep(t0 + Duration::from_secs(5), &mut reports);
        assert_eq!(
            reports,
            vec![Report::AuthFailures {
                client: ip(1),
                failures: 3,
                blocked: 1,
            }]
        );

        // A fresh window starts from zero.
        assert!(!limits.note_auth_failure(ip(1), t0 + Duration::from_secs(6)));
        assert_eq!(
            limits.auth_blocked(ip(1), t0 + Duration::from_secs(6)),
            None
        );
    }

    #[test]
    fn a_stale_failure_window_is_not_carried_over() {
        let t0 = Instant::now();
        let mut limits = ClientLimits::new(settings());
        limits.note_auth_failure(ip(1), t0);
        assert!(!limits.note_auth_failure(ip(1), t0 + Duration::from_secs(6)));
        assert_eq!(
            limits.auth_blocked(ip(1), t0 + Duration::from_secs(6)),
            None
        );
    }

    #[test]
    fn sweep_forgets_idle_clients_once_their_bucket_is_full() {
        let t0 = Instant::now();
        let mut limits = ClientLimits::new(settings());
        limits.admit(ip(1), t0).unwrap();
        limits.release(ip(1));
        limits.admit(ip(2), t0).unwrap();

        let mut reports = Vec::new();
        limits.sweep(t0, &mut reports);
        assert_eq!(limits.len(), 2);
        limits.sweep(t0 + Duration::from_secs(1), &mut reports);
        assert_eq!(limits.len(), 1, "ip(1) is idle with a full bucket");
        assert_eq!(limits.open(ip(2)), 1);
        assert!(reports.is_empty());
    }

    #[test]
    fn the_table_stays_bounded_under_many_addresses() {
        let t0 = Instant::now();
        let mut limits = ClientLimits::new(settings());
        limits.admit(ip(0), t0).unwrap();
        for last in 1..=200u8 {
            limits.admit(ip(last), t0).unwrap();
            limits.release(ip(last));
            assert!(limits.len() <= settings().max_idle + 1, "{}", limits.len());
        }
        assert_eq!(
            limits.open(ip(0)),
            1,
            "open connections are never forgotten"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), ip(1));
    }

    #[test]
    fn refusal_messages_and_statuses() {
        let full = Refusal::ServerFull { limit: 10 };
        assert_eq!(full.status(), 503);
        assert_eq!(full.reason(), "max_connections");
        assert!(full.to_string().contains("10 connections"));
        let fast = Refusal::TooFast {
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(fast.retry_after_seconds(), 2);
        assert_eq!(fast.status(), 429);
    }
}
