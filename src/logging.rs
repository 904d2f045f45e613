//! Structured logs: one JSON object per line on stderr, through `log` and `simplelog`.
//!
//! Every line is `{"timestamp":…,"level":…,"event":…, fields…}`. Lines are built by the
//! [`event!`](crate::event) macro; simplelog only writes them out, so its own prefixes
//! (time, level, target) are switched off and other crates' records are filtered away,
//! keeping stderr parseable line by line.
//!
//! Callers must never pass a token, a query string or a secret as a field: the macro
//! cannot tell them apart from other strings, so the rule is kept at each call site.

use std::fmt::Write as _;
use std::io::LineWriter;
use std::time::SystemTime;

use log::{Level, LevelFilter};
use serde::Serialize;

/// One log line under construction; `finish` closes the JSON object.
pub struct LogLine {
    /// The JSON text so far, always an open object with at least the three fixed keys.
    text: String,
}

impl LogLine {
    /// Starts a line with the current UTC time, the level and the event name.
    pub fn new(level: Level, event: &str) -> LogLine {
        let now = humantime::format_rfc3339_millis(SystemTime::now());
        let mut text = String::with_capacity(160);
        let _ = write!(text, "{{\"timestamp\":\"{now}\",\"level\":\"");
        text.push_str(level_name(level));
        text.push_str("\",\"event\":");
        push_json(&mut text, event);
        LogLine { text }
    }

    /// Appends `"key":value`; a value that cannot be serialized is written as `null`.
    pub fn field<T: Serialize + ?Sized>(mut self, key: &str, value: &T) -> LogLine {
        self.text.push(',');
        push_json(&mut self.text, key);
        self.text.push(':');
        push_json(&mut self.text, value);
        self
    }

    /// Closes the object and returns the line (without the trailing newline).
    pub fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

/// Writes `value` as JSON onto `text`, or `null` if serde refuses it (a map with
/// non-string keys, say), so one odd field never loses the whole line.
fn push_json<T: Serialize + ?Sized>(text: &mut String, value: &T) {
    match serde_json::to_string(value) {
        Ok(json) => text.push_str(&json),
        Err(_) => text.push_str("null"),
    }
}

/// Lower-case level names, the form log shippers expect.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// Logs one structured event: `event!(Level::Info, "server_started", listen = addr)`.
///
/// Fields are `name = value` pairs of anything `Serialize`; the line is only built when
/// the level is enabled, so a disabled debug event costs one comparison.
#[macro_export]
macro_rules! event {
    ($level:expr, $event:literal $(, $key:ident = $value:expr)* $(,)?) => {{
        let level: ::log::Level = $level;
        if ::log::log_enabled!(level) {
            let line = $crate::logging::LogLine::new(level, $event)
                $(.field(stringify!($key), &$value))*
                .finish();
            ::log::log!(level, "{}", line);
        }
    }};
}

/// Installs the JSON logger on stderr at `level`. Calling it twice is harmless (the
/// second call is ignored), which lets tests and the binary share it.
pub fn init(level: LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_level(LevelFilter::Off)
        .set_max_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .add_filter_allow_str("stockalert")
        .build();

    // LineWriter: one write(2) per line instead of one per fragment simplelog emits.
    let sink = LineWriter::new(std::io::stderr());
    let _ = simplelog::WriteLogger::init(level, config, sink);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_one_json_object_with_fixed_keys_first() {
        let line = LogLine::new(Level::Warn, "websocket_auth_failed")
            .field("peer", "127.0.0.1:5000")
            .field("connection_count", &3u32)
            .finish();

        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["level"], "warn");
        assert_eq!(value["event"], "websocket_auth_failed");
        assert_eq!(value["peer"], "127.0.0.1:5000");
        assert_eq!(value["connection_count"], 3);
        assert!(line.starts_with("{\"timestamp\":\""));
        assert!(value["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn strings_with_quotes_and_newlines_stay_on_one_line() {
        let line = LogLine::new(Level::Info, "http_error")
            .field("message", "bad \"json\"\nnext")
            .finish();

        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["message"], "bad \"json\"\nnext");
    }
}
