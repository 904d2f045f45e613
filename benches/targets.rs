//! `cargo bench --bench targets`: every target of issue 7, each next to the floor.
//!
//! Starts the release `stockalert` (fresh temporary data directory per run) and the
//! `stockalert-floor` relay on 127.0.0.1 ephemeral ports, drives both with
//! `stockalert-load`, and prints one Markdown table of targets (met or missed, the
//! measured figure, the floor measured moments before) plus every run's own table.
//! JSON lines of every run go to `target/bench-results.jsonl`.
//!
//! Where `taskset` exists and there are two cores or more, servers run on core 0 and the
//! generator on core 1. Children start under `ulimit -n 20000` (the 10,000-connection run
//! needs that many descriptors on both sides). `STOCKALERT_BENCH_ONLY=name,…` runs only
//! the named groups: fsync, latency, fanout, throughput, rate, idle, footprint.
//!
//! Shortcut owned here: this is a benchmark driver, so a failure to start a process or
//! a run that errors panics with the reason rather than being typed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The HS256 secret of every server started here.
const SECRET: &str = "bench-secret-0123456789abcdef-0123456789";

/// Descriptor limit asked of the children's shell.
const NOFILE: u32 = 20_000;

/// Items seeded for the start-up measure.
const SEED_ITEMS: usize = 100_000;

/// How a child process is pinned, if at all.
#[derive(Clone, Copy)]
struct Pinning {
    /// `taskset` exists and at least two cores do.
    available: bool,
}

impl Pinning {
    fn detect() -> Pinning {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Pinning {
            available: taskset && cores >= 2,
        }
    }

    /// A command running `program args` under the raised descriptor limit, on `core`.
    fn command(self, core: u32, program: &Path) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -n {NOFILE} 2>/dev/null || ulimit -n hard; exec \"$@\""
            ))
            .arg("sh");
        if self.available {
            command.arg("taskset").arg("-c").arg(core.to_string());
        }
        command.arg(program);
        command
    }
}

/// A process this driver started; killed on drop.
struct Process {
    /// The child (its pid is the program's, `sh` and `taskset` exec into it).
    child: Child,
    /// Where it listens.
    addr: SocketAddr,
    /// Time from spawn to the first answered request.
    startup: Duration,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of the targets table.
struct Row {
    /// What is measured.
    measure: String,
    /// The target, as the issue states it.
    target: String,
    /// The measured figure with its unit.
    measured: String,
    /// The floor's figure, or the reference, with its unit.
    floor: String,
    /// measured / floor where that means something.
    ratio: Option<f64>,
    /// Whether the target is met.
    met: bool,
}

/// The state of the whole run.
struct Bench {
    /// Pinning of children.
    pin: Pinning,
    /// Where temporary data directories go (the disk the fsync figure is about).
    scratch: PathBuf,
    /// The targets table, in order.
    rows: Vec<Row>,
    /// Every run's JSON, in order.
    runs: Vec<Value>,
    /// Groups to run; empty runs all.
    only: Vec<String>,
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let pin = Pinning::detect();
    let only = std::env::var("STOCKALERT_BENCH_ONLY")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut bench = Bench {
        pin,
        scratch: std::env::temp_dir(),
        rows: Vec::new(),
        runs: Vec::new(),
        only,
    };
    eprintln!(
        "stockalert bench: pinning {}",
        if pin.available {
            "server core 0, generator core 1"
        } else {
            "off"
        }
    );

    let fsync = bench.group("fsync").then(|| fsync_cost(&bench.scratch));
    if let Some((p50, p99)) = fsync {
        bench
            .runs
            .push(json!({"label": "fsync", "p50_us": p50, "p99_us": p99}));
    }
    if bench.group("latency") {
        bench.latency(fsync);
    }
    if bench.group("fanout") {
        bench.fanout();
    }
    if bench.group("idle") {
        bench.idle();
    }
    if bench.group("throughput") {
        bench.throughput();
    }
    if bench.group("rate") {
        bench.rate();
    }
    if bench.group("footprint") {
        bench.footprint();
    }
    bench.finish();
}

impl Bench {
    fn group(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == name)
    }

    fn row(&mut self, measure: &str, target: &str, measured: String, floor: String) -> &mut Row {
        self.rows.push(Row {
            measure: measure.into(),
            target: target.into(),
            measured,
            floor,
            ratio: None,
            met: false,
        });
        let last = self.rows.len() - 1;
        &mut self.rows[last]
    }

    /// One latency row: `value` against `limit`, with the floor figure and ratio.
    fn latency_row(&mut self, measure: &str, target: &str, value: f64, floor: f64, limit: f64) {
        let row = self.row(
            measure,
            target,
            format!("{value:.1} µs"),
            format!("{floor:.1} µs"),
        );
        row.ratio = Some(value / floor);
        row.met = value <= limit;
    }

    /// Runs the generator against `server` and keeps its JSON.
    fn load(&mut self, server: &Process, label: &str, args: &[&str]) -> Value {
        let value = run_load(self.pin, server, label, args);
        self.runs.push(value.clone());
        value
    }

    /// Update → alert with one subscriber, durability normal and full.
    fn latency(&mut self, fsync: Option<(f64, f64)>) {
        let args = [
            "--scenario",
            "latency",
            "--updates",
            "3000",
            "--warmup",
            "300",
        ];
        for durability in ["normal", "full"] {
            let floor = self.load(&floor(self.pin), "floor 1 sub", &args);
            let (server, _dir) = server(self.pin, &self.scratch, durability);
            let label = format!("server 1 sub, {durability}");
            let run = self.load(&server, &label, &args);
            let f = |v: &Value, q: &str| v["first_us"][q].as_f64().unwrap_or(f64::NAN);
            if durability == "normal" {
                let (p50, fp50) = (f(&run, "p50"), f(&floor, "p50"));
                let (p99, fp99) = (f(&run, "p99"), f(&floor, "p99"));
                let name = "update → alert, 1 sub, p50, normal";
                self.latency_row(name, "≤ 2× floor", p50, fp50, 2.0 * fp50);
                let name = "update → alert, 1 sub, p99, normal";
                self.latency_row(name, "≤ 3× floor", p99, fp99, 3.0 * fp99);
            } else {
                let (sync50, sync99) = fsync.unwrap_or((f64::NAN, f64::NAN));
                for (q, sync) in [("p50", sync50), ("p99", sync99)] {
                    let (value, floor) = (f(&run, q), f(&floor, q));
                    let name = format!("update → alert, 1 sub, {q}, full");
                    let target = format!("≤ floor + fsync {q} ({sync:.0} µs) + 20 µs");
                    self.latency_row(&name, &target, value, floor, floor + sync + 20.0);
                }
            }
        }
    }

    /// Update → alert to the last of 1,000 subscribers of one store.
    fn fanout(&mut self) {
        let args = [
            "--scenario",
            "latency",
            "--subscribers",
            "1000",
            "--updates",
            "300",
            "--warmup",
            "50",
        ];
        let floor = self.load(&floor(self.pin), "floor 1000 subs", &args);
        let (server, _dir) = server(self.pin, &self.scratch, "normal");
        let run = self.load(&server, "server 1000 subs, normal", &args);
        let value = run["last_us"]["p50"].as_f64().unwrap_or(f64::NAN);
        let floor = floor["last_us"]["p50"].as_f64().unwrap_or(f64::NAN);
        let name = "update → last of 1,000 subs, p50";
        self.latency_row(name, "≤ 1.2× floor", value, floor, 1.2 * floor);
    }

    /// RSS per idle WebSocket at 10,000, handshakes/s, reconnect storm.
    fn idle(&mut self) {
        let args = [
            "--scenario",
            "idle",
            "--subscribers",
            "10000",
            "--stores",
            "100",
        ];
        let floor_process = floor(self.pin);
        let pid = floor_process.child.id().to_string();
        let mut with_pid = args.to_vec();
        with_pid.extend(["--server-pid", &pid]);
        let floor = self.load(&floor_process, "floor 10000 idle", &with_pid);
        drop(floor_process);

        let (server, _dir) = server(self.pin, &self.scratch, "normal");
        let pid = server.child.id().to_string();
        let mut with_pid = args.to_vec();
        with_pid.extend(["--server-pid", &pid]);
        let run = self.load(&server, "server 10000 idle", &with_pid);

        let per = run["rss_per_conn_bytes"].as_f64().unwrap_or(f64::NAN);
        let floor_per = floor["rss_per_conn_bytes"].as_f64().unwrap_or(f64::NAN);
        let row = self.row(
            "server RSS per idle WebSocket at 10,000",
            "≤ 1 KiB",
            format!("{per:.0} B"),
            format!("{floor_per:.0} B"),
        );
        row.ratio = Some(per / floor_per);
        row.met = per <= 1024.0;
        for (key, name, unit) in [
            (
                "handshakes_per_s",
                "connections accepted (greeted) per second",
                "/s",
            ),
            (
                "reconnect_all_ms",
                "10,000 clients reconnecting at once, all served",
                " ms",
            ),
        ] {
            let value = run[key].as_f64().unwrap_or(f64::NAN);
            let floor = floor[key].as_f64().unwrap_or(f64::NAN);
            let row = self.row(name, "reported", format!("{value:.0}{unit}"), {
                format!("{floor:.0}{unit}")
            });
            row.ratio = Some(value / floor);
            row.met = true;
        }
    }

    /// Acknowledged updates/s, 32 POS connections, 10 subscribers per store.
    fn throughput(&mut self) {
        let args = [
            "--scenario",
            "throughput",
            "--stores",
            "32",
            "--subscribers",
            "320",
            "--pos",
            "32",
            "--duration",
            "4",
        ];
        for (durability, share) in [("normal", 0.8), ("full", 0.5)] {
            let floor = self.load(&floor(self.pin), "floor 32 POS", &args);
            let (server, _dir) = server(self.pin, &self.scratch, durability);
            let label = format!("server 32 POS, {durability}");
            let run = self.load(&server, &label, &args);
            let value = run["updates_per_s"].as_f64().unwrap_or(f64::NAN);
            let floor = floor["updates_per_s"].as_f64().unwrap_or(f64::NAN);
            let name = format!("acknowledged updates/s, 32 POS × 10 subs/store, {durability}");
            let row = self.row(
                &name,
                &format!("≥ {share}× floor"),
                format!("{value:.0}/s"),
                format!("{floor:.0}/s"),
            );
            row.ratio = Some(value / floor);
            row.met = value >= share * floor;
        }
    }

    /// 2,000 updates/s over 100 stores × 10 subscribers, durability full.
    fn rate(&mut self) {
        let args = [
            "--scenario",
            "rate",
            "--rate",
            "2000",
            "--stores",
            "100",
            "--subscribers",
            "1000",
            "--pos",
            "32",
            "--duration",
            "6",
        ];
        let floor = self.load(&floor(self.pin), "floor 2000/s", &args);
        let (server, _dir) = server(self.pin, &self.scratch, "full");
        let run = self.load(&server, "server 2000/s, full", &args);
        for (q, name) in [
            (
                "p99.9",
                "p99.9 update → last alert, 2,000/s, 100 × 10, full",
            ),
            (
                "max",
                "max update → last alert, same run (checkpoint stalls)",
            ),
        ] {
            let value = run["last_us"][q].as_f64().unwrap_or(f64::NAN);
            let floor = floor["last_us"][q].as_f64().unwrap_or(f64::NAN);
            let target = if q == "max" { "reported" } else { "≤ 5 ms" };
            let row = self.row(
                name,
                target,
                format!("{value:.0} µs"),
                format!("{floor:.0} µs"),
            );
            row.ratio = Some(value / floor);
            row.met = q == "max" || value <= 5000.0;
        }
    }

    /// Idle RSS, stripped binary size, start-up with 100,000 items.
    fn footprint(&mut self) {
        let (server, _dir) = server(self.pin, &self.scratch, "normal");
        std::thread::sleep(Duration::from_millis(200));
        let rss = rss_kib(server.child.id());
        drop(server);
        let row = self.row(
            "idle server RSS",
            "≤ 8 MB",
            format!("{:.2} MB", (rss * 1024) as f64 / 1e6),
            "-".into(),
        );
        row.met = rss * 1024 <= 8_000_000;

        let stripped = stripped_size();
        let row = self.row(
            "stripped release binary",
            "≤ 6 MB",
            stripped.map_or("strip failed".into(), |b| {
                format!("{:.2} MB", b as f64 / 1e6)
            }),
            "-".into(),
        );
        row.met = stripped.is_some_and(|b| b <= 6_000_000);

        // Seed through the batch API, stop, and time a fresh start on the same data.
        let dir = tempfile::tempdir_in(&self.scratch).expect("temp dir");
        let server = launch(self.pin, dir.path(), "normal");
        seed(server.addr, SEED_ITEMS);
        drop(server);
        let mut best = Duration::MAX;
        for _ in 0..3 {
            best = best.min(launch(self.pin, dir.path(), "normal").startup);
        }
        let ms = best.as_secs_f64() * 1000.0;
        self.runs
            .push(json!({"label": "startup 100k items", "startup_ms": ms,
            "idle_rss_kib": rss, "stripped_bytes": stripped}));
        let row = self.row(
            "start-up with 100,000 items (spawn → first answer, best of 3)",
            "≤ 300 ms",
            format!("{ms:.0} ms"),
            "-".into(),
        );
        row.met = ms <= 300.0;
    }

    /// Prints the targets table and writes the JSON lines.
    fn finish(&self) {
        let mut out = String::from(
            "\n## Targets\n\n| measure | target | measured | floor | ratio | met |\n\
             |---|---|---:|---:|---:|---|\n",
        );
        for row in &self.rows {
            let ratio = row.ratio.map_or("-".into(), |r| format!("{r:.2}×"));
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                row.measure,
                row.target,
                row.measured,
                row.floor,
                ratio,
                if row.met { "met" } else { "**missed**" }
            ));
        }
        println!("{out}");

        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results.jsonl");
        let lines: String = self.runs.iter().map(|r| format!("{r}\n")).collect();
        if std::fs::write(&path, lines).is_ok() {
            eprintln!("stockalert bench: JSON lines in {}", path.display());
        }
    }
}

/// Median and p99 of 200 `fdatasync`s of a 4 KiB overwrite in `dir`, in µs.
fn fsync_cost(dir: &Path) -> (f64, f64) {
    let dir = tempfile::tempdir_in(dir).expect("temp dir");
    let mut file = std::fs::File::create(dir.path().join("probe")).expect("probe file");
    let block = [7u8; 4096];
    let mut samples = Vec::new();
    for i in 0..220 {
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(0)).expect("seek");
        file.write_all(&block).expect("write");
        let start = Instant::now();
        file.sync_data().expect("fdatasync");
        if i >= 20 {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).max(1) - 1];
    let (p50, p99) = (at(0.5), at(0.99));
    eprintln!("fsync of a 4 KiB overwrite: p50 {p50:.0} µs, p99 {p99:.0} µs");
    (p50, p99)
}

/// A fresh server with its own temporary data directory.
fn server(pin: Pinning, scratch: &Path, durability: &str) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(scratch).expect("temp dir");
    (launch(pin, dir.path(), durability), dir)
}

/// Starts the release server on `dir` and waits for it to answer `/health`.
fn launch(pin: Pinning, dir: &Path, durability: &str) -> Process {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
max_connections = 12000
max_connections_per_ip = 12000
new_connections_per_ip_per_second = 1000000
new_connections_burst = 1000000
listen_backlog = 4096
[auth]
jwt_secret = "{SECRET}"
[storage]
data_dir = "{}"
durability = "{durability}"
[alerts]
cooldown_seconds = 0
[log]
level = "warn"
"#,
        dir.join("data").display()
    );
    let path = dir.join("stockalert.toml");
    std::fs::write(&path, config).expect("write config");

    let start = Instant::now();
    let child = pin
        .command(0, Path::new(env!("CARGO_BIN_EXE_stockalert")))
        .arg("--config")
        .arg(&path)
        .env_remove("ALERT_COOLDOWN_SECONDS")
        .env_remove("STOCKALERT_LISTEN")
        .env_remove("STOCKALERT_JWT_SECRET")
        .env_remove("STOCKALERT_LOG_LEVEL")
        .env_remove("STOCKALERT_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn stockalert");
    let mut process = Process {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        startup: Duration::ZERO,
    };
    while !healthy(process.addr) {
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!("stockalert exited at start with {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    process.startup = start.elapsed();
    process
}

/// Whether `GET /health` on `addr` answers 200.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Starts the floor relay.
fn floor(pin: Pinning) -> Process {
    let start = Instant::now();
    let mut child = pin
        .command(0, Path::new(env!("CARGO_BIN_EXE_stockalert-floor")))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn stockalert-floor");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("floor stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("floor address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .expect("floor prints its address");
    Process {
        child,
        addr,
        startup: start.elapsed(),
    }
}

/// Runs `stockalert-load` on core 1 against `target`; prints its table, returns its JSON.
fn run_load(pin: Pinning, target: &Process, label: &str, args: &[&str]) -> Value {
    let output = pin
        .command(1, Path::new(env!("CARGO_BIN_EXE_stockalert-load")))
        .arg("--addr")
        .arg(target.addr.to_string())
        .arg("--secret")
        .arg(SECRET)
        .arg("--label")
        .arg(label)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run stockalert-load");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stockalert-load failed: {label}");
    print!(
        "{}",
        text.lines()
            .filter(|l| !l.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!();
    text.lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("stockalert-load prints a JSON line")
}

/// Seeds `items` items over batch updates of 1,000 lines, 1,000 items per store.
fn seed(addr: SocketAddr, items: usize) {
    let claims = json!({"tenant_id": "bench", "sub": "seed", "exp": 4_000_000_000u64});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
    let mut stream = TcpStream::connect(addr).expect("connect for seeding");
    for batch in 0..items.div_ceil(1000) {
        let lines: Vec<Value> = (0..1000)
            .map(|i| {
                json!({"itemCode": format!("ITEM{i:04}"), "quantityChange": 100,
                "updateType": "purchase"})
            })
            .collect();
        let body = json!({ "updates": lines }).to_string();
        let request = format!(
            "POST /api/v1/tenants/bench/stores/seed{batch:03}/stock/updates HTTP/1.1\r\n\
             Host: b\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send batch");
        let status = read_response(&mut stream);
        assert_eq!(status, 200, "seeding batch {batch}");
    }
}

/// Reads one Content-Length framed response; returns its status.
fn read_response(stream: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            }
        }
        let n = stream.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Size of the server binary after `strip`, in bytes.
fn stripped_size() -> Option<u64> {
    let dir = tempfile::tempdir().ok()?;
    let copy = dir.path().join("stockalert");
    std::fs::copy(env!("CARGO_BIN_EXE_stockalert"), &copy).ok()?;
    let status = Command::new("strip").arg(&copy).status().ok()?;
    status
        .success()
        .then(|| std::fs::metadata(&copy).ok().map(|m| m.len()))?
}
