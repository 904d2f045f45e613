//! stockalert-load: drives any server that speaks the stockalert API and measures it.
//!
//! One thread, one `mio` loop: every WebSocket subscriber and every keep-alive POS
//! connection is a non-blocking socket on the same poll, and a frame's arrival time is
//! taken right after the `read` that brought it in. Each update is `quantityChange: -1`
//! on an item whose reorder point (10^9) it stays under, so with the server's cooldown at
//! 0 every update raises exactly one alert per subscriber of its store.
//!
//! An alert is matched to its update by the store's `seq` (relative to the greeting's
//! `last_seq`) when the server sends one, and otherwise by arrival order per subscriber;
//! each store's updates go through one POS connection, one at a time, so that order is
//! the order the server saw them. `seq` also counts duplicated and out-of-order alerts.
//!
//! Scenarios: `latency` (one update in flight: send, wait for the ack and every alert,
//! repeat), `throughput` (every POS connection sends its next update as soon as the last
//! is acknowledged), `rate` (updates scheduled at a fixed rate; latency counts from the
//! scheduled time, so a stall is not hidden by the generator waiting for it), and `idle`
//! (RSS per idle WebSocket, handshakes/s, and the time for all to reconnect at once).
//!
//! Output: one JSON line (prefix `{`) and a Markdown table on stdout. Never prints the
//! token.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};
use slab::Slab;

/// The `Sec-WebSocket-Key` every subscriber sends (any 16 bytes in base64 will do).
const WS_KEY: &str = "c3RvY2thbGVydC1sb2FkIQ==";

/// The reorder point set on every item: far above any quantity the run reaches.
const REORDER_POINT: u64 = 1_000_000_000;

/// Longest time without any progress before the run gives up.
const PATIENCE: Duration = Duration::from_secs(10);

/// How long to wait for the alerts of the last updates after the sending stops.
const DRAIN: Duration = Duration::from_secs(3);

/// Pause after every subscriber is greeted, so state-of-the-store alerts sent on joining
/// are read (and ignored) before measuring starts.
const SETTLE: Duration = Duration::from_millis(200);

/// Share of a timed run's start not measured (connections warm up, caches fill).
const WARMUP_SHARE: f64 = 0.1;

/// Command-line help.
const USAGE: &str = "\
usage: stockalert-load --addr HOST:PORT (--token JWT | --secret HS256SECRET) [options]

  --scenario S      latency | throughput | rate | idle            (latency)
  --tenant T        tenant id of every store and of the token     (bench)
  --stores K        stores, named store0000, store0001, ...       (1)
  --subscribers N   WebSocket subscribers, spread over the stores (1)
  --pos C           keep-alive POS connections (latency uses 1)   (1)
  --updates M       measured updates of the latency scenario      (2000)
  --warmup W        unmeasured updates first (latency)            (200)
  --duration SECS   length of a throughput or rate run            (3)
  --rate R          updates per second of the rate scenario       (2000)
  --window W        handshakes in flight while connecting         (500)
  --server-pid PID  read this process's VmRSS (idle scenario)
  --label TEXT      name of the run in the output                 (scenario)
  --no-setup        do not set reorder points first
";

/// Why a run failed.
#[derive(Debug)]
enum LoadError {
    /// The command line is wrong; the text says how.
    Usage(String),
    /// A socket, poll or `/proc` read failed.
    Io(io::Error),
    /// The HS256 token could not be signed.
    Token(String),
    /// The server answered a setup request with this status.
    Setup { store: String, status: u16 },
    /// A WebSocket upgrade did not get a valid 101 and greeting.
    Handshake { store: String, detail: String },
    /// The server closed a connection the run still needed.
    Closed { what: &'static str },
    /// Nothing happened for `PATIENCE` while waiting for `what`.
    Stalled { what: &'static str },
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Usage(what) => write!(f, "bad command line: {what}"),
            LoadError::Io(error) => write!(f, "i/o failure: {error}"),
            LoadError::Token(error) => write!(f, "cannot sign the token: {error}"),
            LoadError::Setup { store, status } => {
                write!(
                    f,
                    "setting the reorder point of {store} got status {status}"
                )
            }
            LoadError::Handshake { store, detail } => {
                write!(f, "websocket upgrade for {store} failed: {detail}")
            }
            LoadError::Closed { what } => write!(f, "the server closed a {what} connection"),
            LoadError::Stalled { what } => {
                write!(f, "no progress for {}s while {what}", PATIENCE.as_secs())
            }
        }
    }
}

impl From<io::Error> for LoadError {
    fn from(error: io::Error) -> Self {
        LoadError::Io(error)
    }
}

impl From<lexopt::Error> for LoadError {
    fn from(error: lexopt::Error) -> Self {
        LoadError::Usage(error.to_string())
    }
}

/// What a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// One update in flight at a time.
    Latency,
    /// Every POS connection closed-loop, as fast as acknowledged.
    Throughput,
    /// Updates at a fixed rate over all stores.
    Rate,
    /// Idle subscribers: memory, handshake rate, reconnect storm.
    Idle,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Throughput => "throughput",
            Scenario::Rate => "rate",
            Scenario::Idle => "idle",
        }
    }
}

/// The parsed command line; every count is at least 1.
#[derive(Debug)]
struct Options {
    /// The server's address.
    addr: SocketAddr,
    /// The bearer token for the API and the WebSockets.
    token: String,
    /// Tenant of every store.
    tenant: String,
    /// Which run.
    scenario: Scenario,
    /// How many stores the load spreads over.
    stores: usize,
    /// Subscribers in all; subscriber `i` watches store `i % stores`.
    subscribers: usize,
    /// POS connections; store `s` is updated only through connection `s % pos`.
    pos: usize,
    /// Measured updates (latency scenario).
    updates: u64,
    /// Unmeasured updates before them (latency scenario).
    warmup: u64,
    /// Length of a timed run.
    duration: Duration,
    /// Updates per second (rate scenario).
    rate: f64,
    /// Most handshakes in flight while connecting.
    window: usize,
    /// Whose RSS to read.
    server_pid: Option<u32>,
    /// Run name in the output.
    label: String,
    /// Whether to set every store's reorder point first.
    setup: bool,
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("stockalert-load: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(report) => {
            println!("{}", report.json(&options));
            print!("{}", report.markdown(&options));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("stockalert-load: {}: {error}", options.label);
            ExitCode::from(1)
        }
    }
}

/// Reads the command line.
fn parse_options() -> Result<Options, LoadError> {
    use lexopt::prelude::*;

    let mut addr = None;
    let mut token = None;
    let mut secret = None;
    let mut options = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 8006)),
        token: String::new(),
        tenant: "bench".into(),
        scenario: Scenario::Latency,
        stores: 1,
        subscribers: 1,
        pos: 1,
        updates: 2000,
        warmup: 200,
        duration: Duration::from_secs(3),
        rate: 2000.0,
        window: 500,
        server_pid: None,
        label: String::new(),
        setup: true,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("addr") => addr = Some(parser.value()?.parse::<SocketAddr>()?),
            Long("token") => token = Some(parser.value()?.string()?),
            Long("secret") => secret = Some(parser.value()?.string()?),
            Long("tenant") => options.tenant = parser.value()?.string()?,
            Long("scenario") => {
                options.scenario = match parser.value()?.string()?.as_str() {
                    "latency" => Scenario::Latency,
                    "throughput" => Scenario::Throughput,
                    "rate" => Scenario::Rate,
                    "idle" => Scenario::Idle,
                    other => return Err(LoadError::Usage(format!("no scenario {other}"))),
                }
            }
            Long("stores") => options.stores = parser.value()?.parse()?,
            Long("subscribers") => options.subscribers = parser.value()?.parse()?,
            Long("pos") => options.pos = parser.value()?.parse()?,
            Long("updates") => options.updates = parser.value()?.parse()?,
            Long("warmup") => options.warmup = parser.value()?.parse()?,
            Long("duration") => {
                options.duration = Duration::from_secs_f64(parser.value()?.parse()?);
            }
            Long("rate") => options.rate = parser.value()?.parse()?,
            Long("window") => options.window = parser.value()?.parse()?,
            Long("server-pid") => options.server_pid = Some(parser.value()?.parse()?),
            Long("label") => options.label = parser.value()?.string()?,
            Long("no-setup") => options.setup = false,
            Long("help") => return Err(LoadError::Usage("help requested".into())),
            _ => return Err(arg.unexpected().into()),
        }
    }

    options.addr = addr.ok_or_else(|| LoadError::Usage("--addr is required".into()))?;
    options.token = match (token, secret) {
        (Some(token), None) => token,
        (None, Some(secret)) => sign(&options.tenant, &secret)?,
        _ => {
            return Err(LoadError::Usage(
                "give exactly one of --token, --secret".into(),
            ));
        }
    };
    if options.stores == 0 || options.subscribers == 0 || options.pos == 0 || options.window == 0 {
        return Err(LoadError::Usage("counts must be at least 1".into()));
    }
    if !(options.rate.is_finite() && options.rate > 0.0) {
        return Err(LoadError::Usage("--rate must be positive".into()));
    }
    if options.scenario == Scenario::Latency {
        options.pos = 1;
    }
    if options.label.is_empty() {
        options.label = options.scenario.name().into();
    }
    Ok(options)
}

/// An HS256 token for every store of `tenant`, valid a day.
fn sign(tenant: &str, secret: &str) -> Result<String, LoadError> {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;
    let claims = json!({"tenant_id": tenant, "sub": "stockalert-load", "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .map_err(|e| LoadError::Token(e.to_string()))?;
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| LoadError::Token(e.to_string()))
}

/// Store `index`'s code.
fn store_code(index: usize) -> String {
    format!("store{index:04}")
}

/// Runs the chosen scenario.
fn run(options: &Options) -> Result<Report, LoadError> {
    if options.setup && options.scenario != Scenario::Idle {
        setup(options)?;
    }
    let mut load = Load::new(options)?;
    match options.scenario {
        Scenario::Latency => load.latency()?,
        Scenario::Throughput => load.timed(false)?,
        Scenario::Rate => load.timed(true)?,
        Scenario::Idle => load.idle()?,
    }
    load.report.lost = load.lost();
    Ok(load.report)
}

/// Sets every store's item reorder point over one blocking keep-alive connection.
fn setup(options: &Options) -> Result<(), LoadError> {
    let mut stream = std::net::TcpStream::connect(options.addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let body = format!(r#"{{"reorderPoint": {REORDER_POINT}, "reorderQuantity": 1}}"#);
    let mut buf = Vec::new();
    for store in 0..options.stores {
        let code = store_code(store);
        let path = format!(
            "/api/v1/tenants/{}/stores/{code}/stock/ITEM0/reorder",
            options.tenant
        );
        stream.write_all(&request("PUT", &path, &options.token, &body))?;
        let status = loop {
            if let Some((length, status)) = parse_response(&buf) {
                buf.drain(..length);
                break status;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk)? {
                0 => return Err(LoadError::Closed { what: "setup" }),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        };
        if status != 200 {
            return Err(LoadError::Setup {
                store: code,
                status,
            });
        }
    }
    Ok(())
}

/// The bytes of one HTTP/1.1 request with a JSON body.
fn request(method: &str, path: &str, token: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: stockalert\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The first whole response in `buf`: its length and status. `None` while incomplete or
/// not a response (a broken response then shows up as a stall).
fn parse_response(buf: &[u8]) -> Option<(usize, u16)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = buf.get(..head_end)?;
    let status = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())?;
    let body = header(head, b"content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + body).then_some((head_end + body, status))
}

/// The trimmed value of header `name` (lowercase) in `head`.
fn header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let (field, rest) = line.split_at(colon);
        field
            .eq_ignore_ascii_case(name)
            .then(|| rest.get(1..).unwrap_or_default().trim_ascii())
    })
}

/// Where `needle` first starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer right after `key` in `text` (a cheap look into JSON without
/// parsing it, so reading a frame costs little next to what is measured).
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let start = find(text, key)? + key.len();
    let digits = text.get(start..)?;
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(digits.get(..end)?).ok()?.parse().ok()
}

/// One server-to-client WebSocket frame found in a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    /// The opcode (1 text, 8 close, 9 ping, …).
    opcode: u8,
    /// Where the payload starts in the buffer.
    start: usize,
    /// Where the frame (and its payload) ends.
    end: usize,
}

/// The first whole frame in `buf`, `None` while incomplete. Server frames are unmasked
/// (RFC 6455 5.1); a masked one is skipped over all the same.
fn parse_frame(buf: &[u8]) -> Option<Frame> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let masked = second & 0x80 != 0;
    let (length, mut start): (u64, usize) = match second & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    if masked {
        start += 4;
    }
    let end = start.checked_add(usize::try_from(length).ok()?)?;
    (buf.len() >= end).then_some(Frame {
        opcode: first & 0x0F,
        start,
        end,
    })
}

/// A masked client frame (the mask key is zero, which RFC 6455 allows).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    // Control frames carry at most 125 bytes; only those are ever sent.
    let length = payload.len().min(125);
    frame.push(0x80 | length as u8);
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload.get(..length).unwrap_or_default());
    frame
}

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Opening subscribers; alerts read now are not counted.
    Connecting,
    /// Updates are being sent and alerts matched.
    Measuring,
}

/// A WebSocket subscriber's state.
#[derive(Debug)]
struct Subscriber {
    /// Index of the store it watches.
    store: usize,
    /// The 101 head has been read.
    upgraded: bool,
    /// The greeting has been read.
    greeted: bool,
    /// The greeting's `last_seq`: the alert sequence number before the run's first.
    base_seq: Option<u64>,
    /// Highest `seq` read so far (starts at `base_seq`).
    max_seq: u64,
    /// Sequence numbers skipped over and not yet seen: a later arrival among them is out
    /// of order, and those never seen are lost.
    gaps: u64,
    /// Alerts read while measuring (matching by order when there is no `seq`).
    received: u64,
}

/// An update sent or waiting to be.
#[derive(Clone, Copy, Debug)]
struct Sent {
    /// The store it updates.
    store: usize,
    /// When it was due: sent time, or its slot in the schedule of the rate scenario.
    intended: Instant,
    /// Whether its latencies go into the figures (false during warm-up).
    recorded: bool,
}

/// A POS connection's state: at most one request in flight.
#[derive(Debug, Default)]
struct Pos {
    /// The stores this connection updates, round robin.
    stores: Vec<usize>,
    /// Next entry of `stores` to update.
    next: usize,
    /// The request waiting for its response.
    inflight: Option<Sent>,
    /// Updates due but not yet sent (rate scenario).
    queue: VecDeque<Sent>,
}

/// What a connection is for.
#[derive(Debug)]
enum Role {
    Subscriber(Subscriber),
    Pos(Pos),
}

/// One connection of the generator.
struct Conn {
    /// Non-blocking socket registered under the slab key.
    socket: TcpStream,
    /// Bytes read, not yet consumed.
    inbuf: Vec<u8>,
    /// Bytes to write once the socket takes them.
    outbuf: Vec<u8>,
    /// Its job.
    role: Role,
}

/// One update's delivery so far.
#[derive(Debug)]
struct Delivery {
    /// When it was due (see [`Sent::intended`]).
    intended: Instant,
    /// Whether its latencies are recorded.
    recorded: bool,
    /// Subscribers that have read its alert.
    seen: usize,
    /// Its response has been read.
    acked: bool,
}

/// Per-store matching state: deliveries of updates `base..base + pending.len()`.
#[derive(Debug, Default)]
struct StoreTrack {
    /// How many subscribers watch the store.
    subscribers: usize,
    /// Number of the first update in `pending`; those before were fully delivered.
    base: u64,
    /// Updates sent and not yet acknowledged and seen by every subscriber.
    pending: VecDeque<Delivery>,
}

impl StoreTrack {
    /// Whether every update sent was acknowledged and delivered to every subscriber.
    fn settled(&self) -> bool {
        self.pending.is_empty()
    }

    /// Drops fully delivered updates from the front.
    fn retire(&mut self) {
        while self
            .pending
            .front()
            .is_some_and(|d| d.acked && d.seen >= self.subscribers)
        {
            self.pending.pop_front();
            self.base += 1;
        }
    }
}

/// What the run measured. Latencies are nanoseconds, one entry per recorded event.
#[derive(Debug, Default)]
struct Report {
    /// Request written → response read.
    ack: Vec<u64>,
    /// Update due → its alert read by the first subscriber of the store.
    first: Vec<u64>,
    /// Update due → its alert read by the last subscriber of the store.
    last: Vec<u64>,
    /// Responses read inside the measuring window.
    acks: u64,
    /// Responses with a status other than 200.
    errors: u64,
    /// Alert frames read inside the measuring window.
    alert_frames: u64,
    /// Length of the measuring window.
    window: Duration,
    /// Alerts expected and never read.
    lost: u64,
    /// Alerts read twice (same `seq`).
    duplicated: u64,
    /// Alerts read after a later one of the same store.
    out_of_order: u64,
    /// Alerts that match no update sent.
    unexpected: u64,
    /// Server VmRSS before and after the idle subscribers connected, KiB.
    rss_kib: Option<(u64, u64)>,
    /// Subscribers greeted per second while connecting.
    handshakes_per_s: Option<f64>,
    /// Time from dropping every subscriber to all of them greeted again.
    reconnect: Option<Duration>,
}

/// The generator: one poll over every connection.
struct Load<'a> {
    /// The command line.
    options: &'a Options,
    /// The poll every socket is registered with.
    poll: Poll,
    /// Reused event buffer.
    events: Events,
    /// Subscribers and POS connections; the key is the mio token.
    conns: Slab<Conn>,
    /// Per-store matching state, indexed by store.
    stores: Vec<StoreTrack>,
    /// Slab keys of the POS connections.
    pos: Vec<usize>,
    /// The update request of each store, ready to write.
    updates: Vec<Vec<u8>>,
    /// The upgrade request of each store, ready to write.
    upgrades: Vec<Vec<u8>>,
    /// Subscribers greeted so far.
    greeted: usize,
    /// Counting or not.
    phase: Phase,
    /// Responses and frames outside `[from, until)` are not counted in the rates.
    from: Instant,
    /// End of the measuring window.
    until: Instant,
    /// The figures.
    report: Report,
}

impl<'a> Load<'a> {
    fn new(options: &'a Options) -> Result<Load<'a>, LoadError> {
        let body = r#"{"quantityChange": -1, "updateType": "sale"}"#;
        let updates = (0..options.stores)
            .map(|s| {
                let path = format!(
                    "/api/v1/tenants/{}/stores/{}/stock/ITEM0/update",
                    options.tenant,
                    store_code(s)
                );
                request("PUT", &path, &options.token, body)
            })
            .collect();
        let upgrades = (0..options.stores)
            .map(|s| {
                format!(
                    "GET /api/v1/ws/{}/{}?token={} HTTP/1.1\r\nHost: stockalert\r\n\
                     Upgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    options.tenant,
                    store_code(s),
                    options.token
                )
                .into_bytes()
            })
            .collect();
        let now = Instant::now();
        Ok(Load {
            options,
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Slab::new(),
            stores: (0..options.stores).map(|_| StoreTrack::default()).collect(),
            pos: Vec::new(),
            updates,
            upgrades,
            greeted: 0,
            phase: Phase::Connecting,
            from: now,
            until: now,
            report: Report::default(),
        })
    }

    /// The latency scenario: one update at a time, each waited for completely.
    fn latency(&mut self) -> Result<(), LoadError> {
        self.connect_all(self.options.window)?;
        self.open_pos()?;
        self.settle()?;
        self.phase = Phase::Measuring;

        let total = self.options.warmup + self.options.updates;
        self.until = Instant::now() + Duration::from_secs(86_400);
        for i in 0..total {
            let store = usize::try_from(i).unwrap_or(0) % self.options.stores;
            if i == self.options.warmup {
                self.from = Instant::now();
            }
            let pos = self.pos.first().copied().unwrap_or(0);
            let now = Instant::now();
            self.send(
                pos,
                Sent {
                    store,
                    intended: now,
                    recorded: i >= self.options.warmup,
                },
            )?;
            let mut last_progress = Instant::now();
            while !self.stores.get(store).is_none_or(StoreTrack::settled) {
                if self.turn(Some(PATIENCE))? {
                    last_progress = Instant::now();
                } else if last_progress.elapsed() >= PATIENCE {
                    return Err(LoadError::Stalled {
                        what: "waiting for an alert",
                    });
                }
            }
        }
        self.until = Instant::now();
        self.report.window = self.until - self.from;
        Ok(())
    }

    /// The throughput (`paced == false`) or rate scenario.
    fn timed(&mut self, paced: bool) -> Result<(), LoadError> {
        self.connect_all(self.options.window)?;
        self.open_pos()?;
        self.settle()?;
        self.phase = Phase::Measuring;

        let start = Instant::now();
        self.from = start + self.options.duration.mul_f64(WARMUP_SHARE);
        self.until = start + self.options.duration;
        self.report.window = self.until - self.from;
        let interval = Duration::from_secs_f64(1.0 / self.options.rate);

        if !paced {
            for index in 0..self.pos.len() {
                self.send_next(index)?;
            }
        }
        let mut scheduled = 0u64;
        loop {
            let now = Instant::now();
            if now >= self.until {
                break;
            }
            let mut timeout = self.until - now;
            if paced {
                // Queue every update whose slot has come.
                loop {
                    let due = start + interval.mul_f64(scheduled as f64);
                    if due > now {
                        timeout = timeout.min(due - now);
                        break;
                    }
                    let store = usize::try_from(scheduled).unwrap_or(0) % self.options.stores;
                    let pos = store % self.pos.len();
                    let sent = Sent {
                        store,
                        intended: due,
                        recorded: due >= self.from,
                    };
                    self.enqueue(pos, sent)?;
                    scheduled += 1;
                }
            }
            self.turn(Some(timeout))?;
        }

        // Stop sending; let the last alerts arrive.
        let drain_until = Instant::now() + DRAIN;
        while Instant::now() < drain_until && !self.stores.iter().all(StoreTrack::settled) {
            self.turn(Some(Duration::from_millis(50)))?;
        }
        Ok(())
    }

    /// The idle scenario: RSS per idle subscriber, handshakes/s, reconnect storm.
    fn idle(&mut self) -> Result<(), LoadError> {
        let before = self.options.server_pid.map(rss_kib).transpose()?;
        let start = Instant::now();
        self.connect_all(self.options.window)?;
        let elapsed = start.elapsed().as_secs_f64();
        self.report.handshakes_per_s = Some(self.options.subscribers as f64 / elapsed);
        self.settle()?;
        let after = self.options.server_pid.map(rss_kib).transpose()?;
        if let (Some(before), Some(after)) = (before, after) {
            self.report.rss_kib = Some((before, after));
        }

        // Every client drops at once (reset, as after a network cut) and comes back.
        let start = Instant::now();
        for (_, mut conn) in std::mem::take(&mut self.conns) {
            let _ = socket2::SockRef::from(&conn.socket).set_linger(Some(Duration::ZERO));
            let _ = self.poll.registry().deregister(&mut conn.socket);
        }
        self.greeted = 0;
        self.stores.iter_mut().for_each(|s| s.subscribers = 0);
        self.connect_all(self.options.subscribers)?;
        self.report.reconnect = Some(start.elapsed());
        Ok(())
    }

    /// Opens every subscriber, at most `window` handshakes in flight, and waits until all
    /// are greeted.
    fn connect_all(&mut self, window: usize) -> Result<(), LoadError> {
        let mut opened = 0;
        let mut last_progress = Instant::now();
        while self.greeted < self.options.subscribers {
            while opened < self.options.subscribers && opened - self.greeted < window {
                self.open_subscriber(opened % self.options.stores)?;
                opened += 1;
            }
            if self.turn(Some(PATIENCE))? {
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= PATIENCE {
                return Err(LoadError::Stalled {
                    what: "connecting subscribers",
                });
            }
        }
        Ok(())
    }

    /// Reads (and ignores) whatever comes during `SETTLE`.
    fn settle(&mut self) -> Result<(), LoadError> {
        let until = Instant::now() + SETTLE;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            self.turn(Some(left))?;
        }
        Ok(())
    }

    /// Registers a new connection with its first bytes queued.
    fn register(&mut self, role: Role, first: Vec<u8>) -> Result<usize, LoadError> {
        let mut socket = TcpStream::connect(self.options.addr)?;
        socket.set_nodelay(true)?;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Conn {
            socket,
            inbuf: Vec::new(),
            outbuf: first,
            role,
        });
        Ok(key)
    }

    fn open_subscriber(&mut self, store: usize) -> Result<(), LoadError> {
        let upgrade = self.upgrades.get(store).cloned().unwrap_or_default();
        let role = Role::Subscriber(Subscriber {
            store,
            upgraded: false,
            greeted: false,
            base_seq: None,
            max_seq: 0,
            gaps: 0,
            received: 0,
        });
        self.register(role, upgrade)?;
        if let Some(track) = self.stores.get_mut(store) {
            track.subscribers += 1;
        }
        Ok(())
    }

    /// Opens the POS connections and deals the stores out to them.
    fn open_pos(&mut self) -> Result<(), LoadError> {
        for index in 0..self.options.pos {
            let stores = (0..self.options.stores)
                .filter(|s| s % self.options.pos == index)
                .collect::<Vec<_>>();
            // More connections than stores: the extra ones share a store.
            let stores = if stores.is_empty() {
                vec![index % self.options.stores]
            } else {
                stores
            };
            let key = self.register(
                Role::Pos(Pos {
                    stores,
                    ..Pos::default()
                }),
                Vec::new(),
            )?;
            self.pos.push(key);
        }
        Ok(())
    }

    /// Sends the next update of POS connection `index` (throughput scenario).
    fn send_next(&mut self, index: usize) -> Result<(), LoadError> {
        let Some(&key) = self.pos.get(index) else {
            return Ok(());
        };
        let Some(Role::Pos(pos)) = self.conns.get_mut(key).map(|c| &mut c.role) else {
            return Ok(());
        };
        let store = pos.stores.get(pos.next % pos.stores.len().max(1)).copied();
        pos.next += 1;
        let now = Instant::now();
        match store {
            Some(store) => self.send(
                key,
                Sent {
                    store,
                    intended: now,
                    recorded: now >= self.from,
                },
            ),
            None => Ok(()),
        }
    }

    /// Queues `sent` on POS connection `index`, sending it now if the connection is idle.
    fn enqueue(&mut self, index: usize, sent: Sent) -> Result<(), LoadError> {
        let Some(&key) = self.pos.get(index) else {
            return Ok(());
        };
        let Some(Role::Pos(pos)) = self.conns.get_mut(key).map(|c| &mut c.role) else {
            return Ok(());
        };
        if pos.inflight.is_some() {
            pos.queue.push_back(sent);
            return Ok(());
        }
        self.send(key, sent)
    }

    /// Writes the update `sent` on connection `key` and starts tracking it.
    fn send(&mut self, key: usize, sent: Sent) -> Result<(), LoadError> {
        let Some(conn) = self.conns.get_mut(key) else {
            return Err(LoadError::Closed { what: "pos" });
        };
        let Role::Pos(pos) = &mut conn.role else {
            return Ok(());
        };
        pos.inflight = Some(sent);
        if let Some(bytes) = self.updates.get(sent.store) {
            conn.outbuf.extend_from_slice(bytes);
        }
        if let Some(track) = self.stores.get_mut(sent.store) {
            track.pending.push_back(Delivery {
                intended: sent.intended,
                recorded: sent.recorded,
                seen: 0,
                acked: false,
            });
        }
        flush(conn).map_err(|_| LoadError::Closed { what: "pos" })
    }

    /// One poll round; returns whether any event came.
    fn turn(&mut self, timeout: Option<Duration>) -> Result<bool, LoadError> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| (e.token().0, e.is_readable(), e.is_writable()))
            .collect();
        let any = !ready.is_empty();
        for (key, readable, writable) in ready {
            if writable {
                if let Some(conn) = self.conns.get_mut(key) {
                    flush(conn).map_err(|_| LoadError::Closed { what: "client" })?;
                }
            }
            if readable {
                self.readable(key)?;
            }
        }
        Ok(any)
    }

    /// Reads everything connection `key` has, then handles each whole message.
    fn readable(&mut self, key: usize) -> Result<(), LoadError> {
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(());
        };
        let mut chunk = [0u8; 65536];
        let mut now = Instant::now();
        let mut eof = false;
        loop {
            match conn.socket.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    now = Instant::now();
                    conn.inbuf
                        .extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }

        let is_pos = matches!(conn.role, Role::Pos(_));
        if is_pos {
            self.responses(key, now)?;
        } else {
            self.frames(key, now)?;
        }
        if eof {
            let what = if is_pos { "pos" } else { "subscriber" };
            return Err(LoadError::Closed { what });
        }
        Ok(())
    }

    /// Handles every whole response on POS connection `key`.
    fn responses(&mut self, key: usize, now: Instant) -> Result<(), LoadError> {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return Ok(());
            };
            let Some((length, status)) = parse_response(&conn.inbuf) else {
                return Ok(());
            };
            conn.inbuf.drain(..length);
            let Role::Pos(pos) = &mut conn.role else {
                return Ok(());
            };
            let Some(sent) = pos.inflight.take() else {
                continue;
            };
            let next = pos.queue.pop_front();

            if status != 200 {
                self.report.errors += 1;
            }
            if now >= self.from && now < self.until {
                self.report.acks += 1;
            }
            if sent.recorded {
                self.report.ack.push(nanos(now - sent.intended));
            }
            if let Some(track) = self.stores.get_mut(sent.store) {
                if let Some(delivery) = track.pending.iter_mut().find(|d| !d.acked) {
                    delivery.acked = true;
                }
                track.retire();
            }

            if let Some(next) = next {
                self.send(key, next)?;
            } else if self.options.scenario == Scenario::Throughput && now < self.until {
                if let Some(index) = self.pos.iter().position(|&k| k == key) {
                    self.send_next(index)?;
                }
            }
        }
    }

    /// Handles the upgrade response and every whole frame on subscriber `key`.
    fn frames(&mut self, key: usize, now: Instant) -> Result<(), LoadError> {
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(());
        };
        let Role::Subscriber(sub) = &mut conn.role else {
            return Ok(());
        };

        if !sub.upgraded {
            let Some(end) = find(&conn.inbuf, b"\r\n\r\n") else {
                return Ok(());
            };
            let head = conn.inbuf.get(..end + 4).unwrap_or_default();
            let expected = tungstenite::handshake::derive_accept_key(WS_KEY.as_bytes());
            let accept = header(head, b"sec-websocket-accept");
            if !head.starts_with(b"HTTP/1.1 101") || accept != Some(expected.as_bytes()) {
                let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
                return Err(LoadError::Handshake {
                    store: store_code(sub.store),
                    detail: String::from_utf8_lossy(line).into_owned(),
                });
            }
            sub.upgraded = true;
            conn.inbuf.drain(..end + 4);
        }

        let mut offset = 0;
        while let Some(frame) = conn.inbuf.get(offset..).and_then(parse_frame) {
            let payload = conn
                .inbuf
                .get(offset + frame.start..offset + frame.end)
                .unwrap_or_default();
            offset += frame.end;
            match frame.opcode {
                0x1 | 0x0 => {}
                0x8 => return Err(LoadError::Closed { what: "subscriber" }),
                0x9 => {
                    let pong = client_frame(0xA, payload);
                    conn.outbuf.extend_from_slice(&pong);
                    continue;
                }
                _ => continue,
            }

            if !sub.greeted {
                if find(payload, br#""type":"connection""#).is_none() {
                    return Err(LoadError::Handshake {
                        store: store_code(sub.store),
                        detail: "first message is not the connection greeting".into(),
                    });
                }
                sub.greeted = true;
                sub.base_seq = number_after(payload, br#""last_seq":"#);
                sub.max_seq = sub.base_seq.unwrap_or(0);
                self.greeted += 1;
                continue;
            }
            if self.phase != Phase::Measuring || find(payload, b"stock_alert").is_none() {
                continue;
            }
            if now >= self.from && now < self.until {
                self.report.alert_frames += 1;
            }
            let seq = number_after(payload, br#""seq":"#);
            let index = match (sub.base_seq, seq) {
                (Some(base), Some(seq)) => {
                    if seq <= sub.max_seq {
                        if sub.gaps > 0 {
                            sub.gaps -= 1;
                            self.report.out_of_order += 1;
                        } else {
                            self.report.duplicated += 1;
                            continue;
                        }
                    } else {
                        sub.gaps += seq - sub.max_seq - 1;
                        sub.max_seq = seq;
                    }
                    seq.saturating_sub(base + 1)
                }
                _ => {
                    sub.received += 1;
                    sub.received - 1
                }
            };
            match self.stores.get_mut(sub.store) {
                Some(track) => record(track, index, now, &mut self.report),
                None => self.report.unexpected += 1,
            }
        }
        conn.inbuf.drain(..offset);
        flush(conn).map_err(|_| LoadError::Closed { what: "subscriber" })
    }

    /// Alerts expected and not read by the end: every pending update not yet seen by
    /// every subscriber of its store.
    fn lost(&self) -> u64 {
        self.stores
            .iter()
            .flat_map(|t| {
                t.pending
                    .iter()
                    .map(|d| t.subscribers.saturating_sub(d.seen) as u64)
            })
            .sum()
    }
}

/// Counts update `index`'s alert read at `now` by one more subscriber of `track`.
fn record(track: &mut StoreTrack, index: u64, now: Instant, report: &mut Report) {
    let slot = index
        .checked_sub(track.base)
        .and_then(|i| usize::try_from(i).ok());
    let Some(delivery) = slot.and_then(|i| track.pending.get_mut(i)) else {
        report.unexpected += 1;
        return;
    };
    delivery.seen += 1;
    let latency = nanos(now.saturating_duration_since(delivery.intended));
    if delivery.recorded && delivery.seen == 1 {
        report.first.push(latency);
    }
    if delivery.recorded && delivery.seen == track.subscribers {
        report.last.push(latency);
    }
    track.retire();
}

/// Writes as much of the connection's outbound bytes as the socket takes.
fn flush(conn: &mut Conn) -> io::Result<()> {
    while !conn.outbuf.is_empty() {
        match conn.socket.write(&conn.outbuf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.outbuf.drain(..n);
            }
            // Still connecting: the writable event after the connect flushes it.
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::NotConnected => {
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A duration in whole nanoseconds, saturating.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64, LoadError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| LoadError::Io(io::Error::other("no VmRSS line")))
}

/// The quantiles reported for every latency.
const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

/// Quantile `q` of `sorted` (nearest rank), `None` when empty.
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// Quantiles and max of `samples`, in microseconds, as JSON.
fn summary(samples: &[u64]) -> Value {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let micros = |n: Option<u64>| n.map(|n| n as f64 / 1000.0);
    let mut out = serde_json::Map::new();
    for (name, q) in QUANTILES {
        out.insert(name.into(), json!(micros(quantile(&sorted, q))));
    }
    out.insert("max".into(), json!(micros(sorted.last().copied())));
    out.insert("n".into(), json!(sorted.len()));
    Value::Object(out)
}

impl Report {
    /// The run as one JSON object (latencies in µs).
    fn json(&self, options: &Options) -> Value {
        let seconds = self.window.as_secs_f64();
        let per_s = |n: u64| (seconds > 0.0).then(|| n as f64 / seconds);
        let rss_per_conn = self.rss_kib.map(|(before, after)| {
            (after.saturating_sub(before) * 1024) as f64 / options.subscribers as f64
        });
        json!({
            "label": options.label,
            "scenario": options.scenario.name(),
            "stores": options.stores,
            "subscribers": options.subscribers,
            "pos": options.pos,
            "ack_us": summary(&self.ack),
            "first_us": summary(&self.first),
            "last_us": summary(&self.last),
            "updates_per_s": per_s(self.acks),
            "alert_frames_per_s": per_s(self.alert_frames),
            "errors": self.errors,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "unexpected": self.unexpected,
            "rss_before_kib": self.rss_kib.map(|r| r.0),
            "rss_after_kib": self.rss_kib.map(|r| r.1),
            "rss_per_conn_bytes": rss_per_conn,
            "handshakes_per_s": self.handshakes_per_s,
            "reconnect_all_ms": self.reconnect.map(|d| d.as_secs_f64() * 1000.0),
        })
    }

    /// The run as a Markdown table.
    fn markdown(&self, options: &Options) -> String {
        let json = self.json(options);
        let mut out = format!(
            "\n### {} ({}: {} stores, {} subscribers, {} POS)\n\n",
            options.label,
            options.scenario.name(),
            options.stores,
            options.subscribers,
            options.pos
        );
        if options.scenario != Scenario::Idle {
            out.push_str("| latency (µs) | p50 | p90 | p99 | p99.9 | max | n |\n");
            out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
            for (name, key) in [
                ("HTTP ack", "ack_us"),
                ("alert, first subscriber", "first_us"),
                ("alert, last subscriber", "last_us"),
            ] {
                let cell = |q: &str| match json[key][q].as_f64() {
                    Some(v) => format!("{v:.1}"),
                    None => "-".into(),
                };
                out.push_str(&format!(
                    "| {name} | {} | {} | {} | {} | {} | {} |\n",
                    cell("p50"),
                    cell("p90"),
                    cell("p99"),
                    cell("p99.9"),
                    cell("max"),
                    json[key]["n"]
                ));
            }
            out.push('\n');
        }
        out.push_str("| figure | value |\n|---|---:|\n");
        for key in [
            "updates_per_s",
            "alert_frames_per_s",
            "errors",
            "lost",
            "duplicated",
            "out_of_order",
            "unexpected",
            "rss_before_kib",
            "rss_after_kib",
            "rss_per_conn_bytes",
            "handshakes_per_s",
            "reconnect_all_ms",
        ] {
            match &json[key] {
                Value::Null => {}
                Value::Number(n) => match n.as_u64() {
                    Some(n) => out.push_str(&format!("| {key} | {n} |\n")),
                    None => {
                        out.push_str(&format!("| {key} | {:.1} |\n", n.as_f64().unwrap_or(0.0)))
                    }
                },
                other => out.push_str(&format!("| {key} | {other} |\n")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_framing_waits_for_the_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab";
        assert_eq!(parse_response(raw), None);
        let raw = b"HTTP/1.1 503 Busy\r\ncontent-length: 2\r\n\r\n{}HTTP";
        assert_eq!(parse_response(raw), Some((raw.len() - 4, 503)));
    }

    #[test]
    fn frames_of_every_length_encoding_parse() {
        assert_eq!(
            parse_frame(b"\x81\x02hi!"),
            Some(Frame {
                opcode: 1,
                start: 2,
                end: 4
            })
        );
        let mut long = vec![0x81, 126, 1, 0];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(parse_frame(&long).map(|f| (f.start, f.end)), Some((4, 260)));
        assert_eq!(parse_frame(&long[..100]), None);
        assert_eq!(parse_frame(b"\x89"), None);
    }

    #[test]
    fn seq_is_read_without_confusing_last_seq() {
        let greeting = br#"{"type":"connection","last_seq":41}"#;
        assert_eq!(number_after(greeting, br#""seq":"#), None);
        assert_eq!(number_after(greeting, br#""last_seq":"#), Some(41));
        let alert = br#"{"type":"stock_alert","timestamp":"x","seq":42}"#;
        assert_eq!(number_after(alert, br#""seq":"#), Some(42));
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let sorted: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&sorted, 0.5), Some(500));
        assert_eq!(quantile(&sorted, 0.999), Some(999));
        assert_eq!(quantile(&[7], 0.999), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn delivery_completes_after_ack_and_every_subscriber() {
        let start = Instant::now();
        let mut track = StoreTrack {
            subscribers: 2,
            ..StoreTrack::default()
        };
        track.pending.push_back(Delivery {
            intended: start,
            recorded: true,
            seen: 0,
            acked: true,
        });
        let mut report = Report::default();
        record(
            &mut track,
            0,
            start + Duration::from_micros(10),
            &mut report,
        );
        assert!(!track.settled());
        record(
            &mut track,
            0,
            start + Duration::from_micros(25),
            &mut report,
        );
        assert!(track.settled());
        assert_eq!(
            (report.first.clone(), report.last.clone()),
            (vec![10_000], vec![25_000])
        );
        record(&mut track, 0, start, &mut report);
        assert_eq!(report.unexpected, 1);
    }

    #[test]
    fn pong_is_masked_and_echoes_the_payload() {
        assert_eq!(client_frame(0xA, b"ab"), b"\x8a\x82\0\0\0\0ab");
    }
}
