//! Counters, gauges and histograms kept by the loop, rendered in the Prometheus text
//! exposition format.
//!
//! The loop is single-threaded, so every figure is a plain integer updated in place: no
//! atomics, no locks. Labels come only from fixed sets (route templates, alert types,
//! close-code classes), never from a raw path or identifier, so series stay bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::alert::AlertKind;

/// Upper bounds of the latency buckets, in seconds: 50 µs to 2.5 s.
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// A cumulative histogram over [`BUCKETS`].
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations at or under each bound (not cumulative; summed when rendered).
    counts: [u64; BUCKETS.len()],
    /// Observations over the last bound.
    overflow: u64,
    /// Sum of all observations, seconds.
    sum: f64,
    /// Number of observations.
    count: u64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        match BUCKETS.iter().position(|&bound| seconds <= bound) {
            Some(index) => self.counts[index] += 1,
            None => self.overflow += 1,
        }
        self.sum += seconds;
        self.count += 1;
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// How a WebSocket connection attempt ended at the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttemptResult {
    /// Authenticated and subscribed.
    Accepted,
    /// Closed 1008 for a missing, invalid or foreign token.
    AuthFailed,
    /// Refused at the door by a connection limit (`server.max_connections`, counted at
    /// accept time, so before anyone knows whether the connection would have been a
    /// WebSocket). Further limits (per-IP, origin) should count here as they land.
    Rejected,
}

impl AttemptResult {
    fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Accepted => "accepted",
            AttemptResult::AuthFailed => "auth_failed",
            AttemptResult::Rejected => "rejected",
        }
    }
}

/// Every figure the server exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket connections currently subscribed to a store.
    pub websocket_open: u64,
    /// WebSocket connection attempts by result.
    pub attempts: BTreeMap<AttemptResult, u64>,
    /// WebSocket disconnects of subscribed connections, indexed like
    /// [`DISCONNECT_CLASSES`].
    pub disconnects: [u64; DISCONNECT_CLASSES.len()],
    /// Alerts sent (raised, logged and fanned out) by type.
    pub alerts_sent: [u64; 2],
    /// Alert frames queued to connections (one alert to N clients counts N).
    pub alert_frames: u64,
    /// Alerts dropped by a running cooldown, by type.
    pub alerts_suppressed: [u64; 2],
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumers: u64,
    /// HTTP requests by route template and status.
    pub http_requests: BTreeMap<(&'static str, u16), u64>,
    /// HTTP request durations by route template, from head read to response queued.
    pub http_duration: BTreeMap<&'static str, Histogram>,
    /// Time from an update fully read to its alert written to the last connection.
    pub alert_latency: Histogram,
    /// Duration of each WAL checkpoint (storage upkeep, once a second when idle).
    pub checkpoint_duration: Histogram,
    /// Duration of each pass transaction's commit.
    pub commit_duration: Histogram,
    /// Pass transactions rolled back after a failed write or a failed commit.
    pub rollbacks: u64,
}

/// The `code` label values of the disconnect counter: the close codes the server
/// sends or commonly receives, "other" for any further code the peer sent, and
/// "abnormal" for a connection lost without a close frame. A fixed set keeps the
/// series bounded whatever code a client chooses, and lets every class be exported
/// at 0 from the start so rate() over it never sees a missing series.
pub const DISCONNECT_CLASSES: [&str; 10] = [
    "1000", "1001", "1002", "1005", "1007", "1008", "1009", "1013", "other", "abnormal",
];

fn kind_index(kind: AlertKind) -> usize {
    match kind {
        AlertKind::ReorderPoint => 0,
        AlertKind::MinimumStock => 1,
    }
}

impl Metrics {
    /// Counts one WebSocket attempt.
    pub fn attempt(&mut self, result: AttemptResult) {
        *self.attempts.entry(result).or_default() += 1;
    }

    /// Counts one disconnect; `code` None means the peer vanished without a close frame.
    pub fn disconnect(&mut self, code: Option<u16>) {
        let text = code.map(|code| code.to_string());
        let label = match text.as_deref() {
            None => "abnormal",
            Some(code) if DISCONNECT_CLASSES.contains(&code) => code,
            Some(_) => "other",
        };
        let index = DISCONNECT_CLASSES.iter().position(|&class| class == label);
        if let Some(count) = index.and_then(|index| self.disconnects.get_mut(index)) {
            *count += 1;
        }
    }

    /// Counts one alert sent to `frames` connections.
    pub fn alert_sent(&mut self, kind: AlertKind, frames: u64) {
        self.alerts_sent[kind_index(kind)] += 1;
        self.alert_frames += frames;
    }

    /// Counts one alert dropped by its cooldown.
    pub fn alert_suppressed(&mut self, kind: AlertKind) {
        self.alerts_suppressed[kind_index(kind)] += 1;
    }

    /// Counts one HTTP response and its duration.
    pub fn http_request(&mut self, route: &'static str, status: u16, elapsed: Duration) {
        *self.http_requests.entry((route, status)).or_default() += 1;
        self.http_duration
            .entry(route)
            .or_default()
            .observe(elapsed);
    }

    /// Renders every metric; `items` and `process` are read by the caller at scrape time.
    pub fn render(&self, items: usize, process: &ProcessStats) -> String {
        let mut out = String::with_capacity(8192);

        help(
            &mut out,
            "stockalert_websocket_connections",
            "gauge",
            "Open WebSocket connections.",
        );
        let _ = writeln!(
            out,
            "stockalert_websocket_connections {}",
            self.websocket_open
        );

        let name = "stockalert_websocket_connection_attempts_total";
        help(
            &mut out,
            name,
            "counter",
            "WebSocket connection attempts by result.",
        );
        for result in [
            AttemptResult::Accepted,
            AttemptResult::AuthFailed,
            AttemptResult::Rejected,
        ] {
            let count = self.attempts.get(&result).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}{{result=\"{}\"}} {count}", result.as_str());
        }

        let name = "stockalert_websocket_disconnects_total";
        help(
            &mut out,
            name,
            "counter",
            "WebSocket disconnects by close code.",
        );
        for (class, count) in DISCONNECT_CLASSES.iter().zip(self.disconnects) {
            let _ = writeln!(out, "{name}{{code=\"{class}\"}} {count}");
        }

        let name = "stockalert_alerts_sent_total";
        help(
            &mut out,
            name,
            "counter",
            "Stock alerts raised and sent, by alert type.",
        );
        for kind in AlertKind::ALL {
            let count = self.alerts_sent[kind_index(kind)];
            let _ = writeln!(out, "{name}{{alert_type=\"{}\"}} {count}", kind.as_str());
        }

        let name = "stockalert_alert_frames_delivered_total";
        help(
            &mut out,
            name,
            "counter",
            "Alert frames queued to WebSocket connections.",
        );
        let _ = writeln!(out, "{name} {}", self.alert_frames);

        let name = "stockalert_alerts_suppressed_total";
        help(
            &mut out,
            name,
            "counter",
            "Alerts dropped by a running cooldown, by type.",
        );
        for kind in AlertKind::ALL {
            let count = self.alerts_suppressed[kind_index(kind)];
            let _ = writeln!(out, "{name}{{alert_type=\"{}\"}} {count}", kind.as_str());
        }

        let name = "stockalert_slow_consumer_disconnects_total";
        help(
            &mut out,
            name,
            "counter",
            "Connections closed for an overflowing outbound queue.",
        );
        let _ = writeln!(out, "{name} {}", self.slow_consumers);

        let name = "stockalert_http_requests_total";
        help(
            &mut out,
            name,
            "counter",
            "HTTP requests by route template and status.",
        );
        for ((route, status), count) in &self.http_requests {
            let _ = writeln!(
                out,
                "{name}{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }

        let name = "stockalert_http_request_duration_seconds";
        help(
            &mut out,
            name,
            "histogram",
            "HTTP request handling time by route template.",
        );
        for (route, histogram) in &self.http_duration {
            histogram.render(&mut out, name, &format!("route=\"{route}\""));
        }

        let name = "stockalert_alert_latency_seconds";
        help(
            &mut out,
            name,
            "histogram",
            "From an update read to its alert written to all.",
        );
        self.alert_latency.render(&mut out, name, "");

        let name = "stockalert_db_commit_duration_seconds";
        help(
            &mut out,
            name,
            "histogram",
            "Duration of each group-commit transaction.",
        );
        self.commit_duration.render(&mut out, name, "");

        let name = "stockalert_db_checkpoint_duration_seconds";
        help(
            &mut out,
            name,
            "histogram",
            "Duration of each WAL checkpoint; the loop serves nobody meanwhile.",
        );
        self.checkpoint_duration.render(&mut out, name, "");

        let name = "stockalert_db_rollbacks_total";
        help(
            &mut out,
            name,
            "counter",
            "Pass transactions rolled back after a failed write or commit.",
        );
        let _ = writeln!(out, "{name} {}", self.rollbacks);

        help(
            &mut out,
            "stockalert_items",
            "gauge",
            "Items held in the stock book.",
        );
        let _ = writeln!(out, "stockalert_items {items}");

        process.render(&mut out);
        out
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Whether a request for `route_is_metrics` (true: `/metrics`, false: any other
/// route) is served on the listener it arrived on. With a separate metrics listener
/// configured, that listener serves `/metrics` and nothing else, and the main
/// listener serves everything but `/metrics`, so the figures are reachable only
/// from the monitoring network. Without one, the main listener serves all.
pub fn served_on(route_is_metrics: bool, metrics_port: bool, separate_listener: bool) -> bool {
    if !separate_listener {
        return !metrics_port;
    }
    route_is_metrics == metrics_port
}

/// The standard process metrics, read from `/proc/self` at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    /// Resident set size in bytes.
    pub resident_memory_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Process start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads the current figures; fields that cannot be read stay 0 (non-Linux systems).
    pub fn read(start_time_seconds: f64) -> ProcessStats {
        // VmRSS is in kB whatever the page size, unlike the page count in statm.
        let resident_memory_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|text| resident_kib(&text))
            .map_or(0, |kib| kib * 1024);
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
        ProcessStats {
            resident_memory_bytes,
            open_fds,
            start_time_seconds,
        }
    }

    fn render(&self, out: &mut String) {
        help(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(
            out,
            "process_resident_memory_bytes {}",
            self.resident_memory_bytes
        );
        help(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        let _ = writeln!(out, "process_open_fds {}", self.open_fds);
        help(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time since the Unix epoch.",
        );
        let _ = writeln!(
            out,
            "process_start_time_seconds {}",
            self.start_time_seconds
        );
    }
}

/// The `VmRSS:` figure of a `/proc/<pid>/status` text, in KiB.
fn resident_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value = fields.next()?.parse::<u64>().ok()?;
    (fields.next() == Some("kB")).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inf_counts_all() {
        let mut histogram = Histogram::default();
        histogram.observe(Duration::from_micros(40));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(10));

        let mut out = String::new();
        histogram.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.00005\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
    }

    #[test]
    fn render_names_every_series_with_bounded_labels() {
        let mut metrics = Metrics::default();
        metrics.attempt(AttemptResult::AuthFailed);
        metrics.alert_sent(AlertKind::MinimumStock, 3);
        metrics.http_request("stock_update", 200, Duration::from_millis(1));

        let text = metrics.render(5, &ProcessStats::default());
        assert!(
            text.contains(
                "stockalert_websocket_connection_attempts_total{result=\"auth_failed\"} 1"
            )
        );
        assert!(text.contains("stockalert_alerts_sent_total{alert_type=\"minimum_stock\"} 1"));
        assert!(text.contains("stockalert_alert_frames_delivered_total 3"));
        assert!(
            text.contains(
                "stockalert_http_requests_total{route=\"stock_update\",status=\"200\"} 1"
            )
        );
        assert!(text.contains("stockalert_items 5"));
    }

    #[test]
    fn disconnects_fall_into_fixed_classes_all_exported_from_zero() {
        let mut metrics = Metrics::default();
        let before = metrics.render(0, &ProcessStats::default());
        for class in DISCONNECT_CLASSES {
            let line = format!("stockalert_websocket_disconnects_total{{code=\"{class}\"}} 0\n");
            assert!(before.contains(&line), "{line}");
        }

        metrics.disconnect(Some(1000));
        metrics.disconnect(Some(1013));
        metrics.disconnect(Some(4321));
        metrics.disconnect(Some(3000));
        metrics.disconnect(None);

        let text = metrics.render(0, &ProcessStats::default());
        let name = "stockalert_websocket_disconnects_total";
        assert!(text.contains(&format!("{name}{{code=\"1000\"}} 1\n")));
        assert!(text.contains(&format!("{name}{{code=\"1013\"}} 1\n")));
        assert!(text.contains(&format!("{name}{{code=\"other\"}} 2\n")));
        assert!(text.contains(&format!("{name}{{code=\"abnormal\"}} 1\n")));
        assert!(text.contains(&format!("{name}{{code=\"1001\"}} 0\n")));
        assert!(!text.contains("4321"));
    }

    #[test]
    fn a_separate_listener_takes_metrics_off_the_main_one() {
        // No separate listener: the main one serves everything.
        assert!(served_on(true, false, false));
        assert!(served_on(false, false, false));

        // A separate listener: /metrics only there, the rest only on the main one.
        assert!(served_on(true, true, true));
        assert!(!served_on(false, true, true));
        assert!(!served_on(true, false, true));
        assert!(served_on(false, false, true));
    }

    #[test]
    fn resident_memory_is_read_from_vmrss_in_kib() {
        let status = "Name:\tstockalert\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\n";
        assert_eq!(resident_kib(status), Some(1234));
        assert_eq!(resident_kib("VmRSS:\t12 pages\n"), None);
        assert_eq!(resident_kib("Name:\tx\n"), None);
    }

    #[test]
    fn every_sample_line_belongs_to_a_declared_family() {
        let mut metrics = Metrics::default();
        metrics.http_request("health", 200, Duration::from_millis(2));
        metrics.alert_latency.observe(Duration::from_millis(1));
        let process = ProcessStats {
            resident_memory_bytes: 1,
            open_fds: 2,
            start_time_seconds: 3.5,
        };
        let text = metrics.render(0, &process);

        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap_or_default().to_owned();
                declared.push((name, parts.next().unwrap_or_default().to_owned()));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let series = line.split(['{', ' ']).next().unwrap_or_default();
            let family = declared.iter().find(|(name, kind)| {
                series == name
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| series == format!("{name}{suffix}")))
            });
            assert!(family.is_some(), "undeclared series in: {line}");
            let (_, kind) = family.unwrap();
            if kind == "counter" {
                assert!(series.ends_with("_total"), "{series}");
            }
        }
        assert!(text.contains("process_start_time_seconds 3.5\n"));
    }
}
