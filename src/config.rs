//! Server configuration: TOML schema, defaults, env overrides, checks.
//!
//! The shipped `stockalert.toml` documents every key; `Config::default()` is
//! exactly what that file parses to (a unit test holds the two together).
//! Loading goes file, then environment overrides, then `validate`, so a value
//! from the environment is checked like one from the file.
//!
//! Errors name the offending key as `section.key` and the file it came from.
//! They never repeat the value of `auth.jwt_secret` or `metrics.bearer_token`,
//! and never quote a source line, because a line may hold a secret.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Environment variable overriding `alerts.cooldown_seconds`.
pub const ENV_COOLDOWN_SECONDS: &str = "ALERT_COOLDOWN_SECONDS";

/// Environment variable overriding `server.listen`.
pub const ENV_LISTEN: &str = "STOCKALERT_LISTEN";

/// Environment variable overriding `auth.jwt_secret`.
pub const ENV_JWT_SECRET: &str = "STOCKALERT_JWT_SECRET";

/// Environment variable overriding `log.level`.
pub const ENV_LOG_LEVEL: &str = "STOCKALERT_LOG_LEVEL";

/// Environment variable overriding `storage.data_dir`.
pub const ENV_DATA_DIR: &str = "STOCKALERT_DATA_DIR";

/// Shortest HS256 secret accepted, in bytes. RFC 7518 section 3.2 asks for a
/// key at least as long as the hash output (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest duration any `_seconds` key may hold (ten years). The server adds
/// these to `Instant`s, and `Instant + Duration` panics on overflow; no real
/// timeout needs more.
pub const MAX_DURATION_SECONDS: u64 = 10 * 365 * 86_400;

/// Longest alert log retention, in days (ten years, as above).
pub const MAX_RETENTION_DAYS: u32 = 10 * 365;

/// Keys whose values are secrets: errors about them never echo the value.
const SECRET_KEYS: [&str; 2] = ["auth.jwt_secret", "metrics.bearer_token"];

/// Origin reported for errors found by `validate` outside any file.
const NO_ORIGIN: &str = "configuration";

/// The whole server configuration, one field per TOML section.
///
/// A value that passed `validate` satisfies every rule documented on the
/// fields below; the server may rely on them without checking again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listener and connection limits.
    pub server: ServerConfig,
    /// `[http]`: request size and time limits.
    pub http: HttpConfig,
    /// `[websocket]`: keep-alive and size limits of alert sockets.
    pub websocket: WebSocketConfig,
    /// `[alerts]`: alert repetition and history.
    pub alerts: AlertsConfig,
    /// `[auth]`: how tokens are checked and how failures are throttled.
    pub auth: AuthConfig,
    /// `[storage]`: where and how durably stock is kept.
    pub storage: StorageConfig,
    /// `[metrics]`: the `/metrics` endpoint.
    pub metrics: MetricsConfig,
    /// `[log]`: log verbosity.
    pub log: LogConfig,
}

/// `[server]`: the listening socket and connection admission limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP and WebSocket listener.
    pub listen: SocketAddr,
    /// Open connections of every kind; at least 1.
    pub max_connections: usize,
    /// Open connections from one IP; at least 1, at most `max_connections`.
    pub max_connections_per_ip: usize,
    /// Token-bucket refill rate for new connections per IP, per second; at
    /// least 1.
    pub new_connections_per_ip_per_second: u32,
    /// Token-bucket size for new connections per IP; at least 1.
    pub new_connections_burst: u32,
    /// Kernel accept queue length passed to `listen(2)`; at least 1.
    pub listen_backlog: i32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8006)),
            max_connections: 10_000,
            max_connections_per_ip: 1000,
            new_connections_per_ip_per_second: 100,
            new_connections_burst: 200,
            listen_backlog: 1024,
        }
    }
}

/// `[http]`: limits on one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request line plus headers, in bytes; at least 1.
    pub max_head_bytes: usize,
    /// Most header lines per request; at least 1.
    pub max_headers: usize,
    /// Largest body of a single update, in bytes; at least 1.
    pub max_body_bytes: usize,
    /// Largest body of a batch update, in bytes; at least `max_body_bytes`.
    pub max_batch_body_bytes: usize,
    /// Seconds allowed to receive a full head, and again a full body; from 1
    /// to `MAX_DURATION_SECONDS`.
    pub request_timeout_seconds: u64,
    /// Seconds an idle keep-alive connection is kept; from 1 to
    /// `MAX_DURATION_SECONDS`.
    pub keep_alive_seconds: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_head_bytes: 16_384,
            max_headers: 64,
            max_body_bytes: 65_536,
            max_batch_body_bytes: 1_048_576,
            request_timeout_seconds: 10,
            keep_alive_seconds: 60,
        }
    }
}

impl HttpConfig {
    /// Time allowed to receive a request head, and again its body.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    /// Time an idle keep-alive connection is kept open.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_seconds)
    }
}

/// `[websocket]`: keep-alive, size limits and origin policy of alert sockets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Seconds between server pings on a quiet socket; at least 1 and less
    /// than `idle_timeout_seconds`.
    pub ping_interval_seconds: u64,
    /// Seconds without a client frame before the socket is closed; greater
    /// than `ping_interval_seconds`, at most `MAX_DURATION_SECONDS`.
    pub idle_timeout_seconds: u64,
    /// Bytes queued for one client before it is dropped; at least 1.
    pub max_outbound_queue_bytes: usize,
    /// Largest message accepted from a client, in bytes; at least 1.
    pub max_message_bytes: usize,
    /// Exact `Origin` values allowed; empty allows any. Entries are non-empty,
    /// hold no whitespace and do not end in `/` (browsers never send one).
    pub allowed_origins: Vec<String>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_seconds: 30,
            idle_timeout_seconds: 75,
            max_outbound_queue_bytes: 1_048_576,
            max_message_bytes: 4096,
            allowed_origins: Vec::new(),
        }
    }
}

impl WebSocketConfig {
    /// Time between pings on a quiet socket.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_seconds)
    }

    /// Time without a client frame before the socket is closed.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }

    /// Whether a WebSocket handshake carrying `origin` (None when the header
    /// is absent) may proceed. An empty allow-list admits everything; a
    /// non-empty one admits only exact matches, so a missing header fails.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }

        origin.is_some_and(|o| self.allowed_origins.iter().any(|allowed| allowed == o))
    }
}

/// `[alerts]`: repetition and retention of alerts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Seconds before the same alert may fire again; 0 turns the cooldown
    /// off; at most `MAX_DURATION_SECONDS`.
    pub cooldown_seconds: u64,
    /// Days fired alerts stay in the log; from 1 to `MAX_RETENTION_DAYS`.
    pub log_retention_days: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            cooldown_seconds: 60,
            log_retention_days: 7,
        }
    }
}

impl AlertsConfig {
    /// Minimum time between two firings of the same alert; zero means off.
    pub fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cooldown_seconds)
    }

    /// How long fired alerts stay in the log.
    pub fn log_retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.log_retention_days) * 86_400)
    }
}

/// `[auth]`: the token algorithm, its key material, and failure throttling.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The one signature algorithm tokens must carry.
    pub algorithm: Algorithm,
    /// HS256 shared secret (`""` in TOML is `None`: use the generated file).
    /// When set, at least `MIN_SECRET_BYTES` long; must be `None` unless the
    /// algorithm is HS256.
    #[serde(deserialize_with = "empty_as_none")]
    pub jwt_secret: Option<Secret>,
    /// PEM public key for RS256/ES256 (`""` in TOML is `None`). Required for
    /// those algorithms, must be `None` for HS256.
    #[serde(deserialize_with = "empty_as_none")]
    pub public_key_file: Option<PathBuf>,
    /// Auth failures per IP per window before requests get 429; at least 1.
    pub failure_limit: u32,
    /// Length of the failure-counting window, in seconds; from 1 to
    /// `MAX_DURATION_SECONDS`.
    pub failure_window_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: Algorithm::Hs256,
            jwt_secret: None,
            public_key_file: None,
            failure_limit: 20,
            failure_window_seconds: 60,
        }
    }
}

impl AuthConfig {
    /// Length of the window auth failures are counted over.
    pub fn failure_window(&self) -> Duration {
        Duration::from_secs(self.failure_window_seconds)
    }
}

/// `[storage]`: location and durability of the SQLite database.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory for the database and the generated secret; not empty.
    pub data_dir: PathBuf,
    /// How hard commits are pushed to disk.
    pub durability: Durability,
    /// Seconds an idempotency key is remembered; from 1 to
    /// `MAX_DURATION_SECONDS`.
    pub idempotency_key_ttl_seconds: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("data"),
            durability: Durability::Full,
            idempotency_key_ttl_seconds: 86_400,
        }
    }
}

impl StorageConfig {
    /// How long an idempotency key is remembered.
    pub fn idempotency_key_ttl(&self) -> Duration {
        Duration::from_secs(self.idempotency_key_ttl_seconds)
    }
}

/// `[metrics]`: the `/metrics` endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether `/metrics` is served at all.
    pub enabled: bool,
    /// Bearer token `/metrics` requires (`""` in TOML is `None`: no token).
    /// When set, only visible ASCII, as it is compared to a header value.
    #[serde(deserialize_with = "empty_as_none")]
    pub bearer_token: Option<Secret>,
    /// Separate metrics listener (`""` in TOML is `None`: use the main
    /// listener). When set, differs from `server.listen`.
    #[serde(deserialize_with = "empty_as_none")]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bearer_token: None,
            listen: None,
        }
    }
}

/// `[log]`: log verbosity.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Least severe level logged; never `Off` when parsed from text.
    #[serde(deserialize_with = "level_from_str")]
    pub level: LevelFilter,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LevelFilter::Info,
        }
    }
}

/// How hard SQLite pushes commits to disk (`storage.durability`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every commit is synced: an acknowledged update survives power loss.
    #[default]
    Full,
    /// Fewer syncs: faster, but power loss may drop the latest commits.
    Normal,
}

/// The token signature algorithm the server accepts (`auth.algorithm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Algorithm {
    /// HMAC-SHA256 with a shared secret.
    #[default]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256, checked with a public key.
    Rs256,
    /// ECDSA P-256 with SHA-256, checked with a public key.
    Es256,
}

impl Algorithm {
    /// The name used in TOML and in a token's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret string (HS256 key, bearer token) whose `Debug` output hides it,
/// so logging a `Config` with `{:?}` cannot leak it. Never empty once parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`; the caller is responsible for it being non-empty.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret text. Callers must not log or print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

/// Why a configuration could not be loaded. Display says where (file path,
/// "built-in defaults" or an environment variable), which key, and why.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the OS reported.
        source: io::Error,
    },
    /// The text is not valid TOML.
    Syntax {
        /// Where the text came from (usually a file path).
        origin: String,
        /// 1-based line of the problem, 0 when unknown.
        line: usize,
        /// 1-based column of the problem, 0 when unknown.
        column: usize,
        /// The parser's description, without any source text.
        message: String,
    },
    /// A section or key that the schema does not have (often a typo).
    UnknownKey {
        /// Where the text came from.
        origin: String,
        /// The dotted key, e.g. `server.lisen`.
        key: String,
    },
    /// A known key holds a value of the wrong type or outside its rules.
    Invalid {
        /// Where the text came from.
        origin: String,
        /// The dotted key, e.g. `websocket.idle_timeout_seconds`.
        key: String,
        /// What is wrong, never containing a secret value.
        reason: String,
    },
    /// An override variable holds an unusable value.
    Env {
        /// The variable's name.
        var: &'static str,
        /// What is wrong, never containing the value itself.
        reason: String,
    },
}

impl ConfigError {
    /// Builds an `Invalid` error; `origin` is filled in by the caller.
    fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: NO_ORIGIN.to_owned(),
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    /// Replaces the origin of errors that carry one.
    fn with_origin(mut self, new_origin: &str) -> ConfigError {
        match &mut self {
            ConfigError::Syntax { origin, .. }
            | ConfigError::UnknownKey { origin, .. }
            | ConfigError::Invalid { origin, .. } => *origin = new_origin.to_owned(),
            ConfigError::Read { .. } | ConfigError::Env { .. } => {}
        }
        self
    }

    /// The dotted key or variable the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Env { var, .. } => Some(var),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ConfigError::Syntax {
                origin,
                line,
                column,
                message,
            } => {
                write!(
                    f,
                    "{origin}: invalid TOML at line {line}, column {column}: {message}"
                )
            }
            ConfigError::UnknownKey { origin, key } => write!(f, "{origin}: unknown key {key}"),
            ConfigError::Invalid {
                origin,
                key,
                reason,
            } => {
                write!(f, "{origin}: invalid value for {key}: {reason}")
            }
            ConfigError::Env { var, reason } => {
                write!(f, "invalid value in environment variable {var}: {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Config {
    /// Parses and validates TOML text. `origin` names the text's source (a
    /// path) in error messages. Missing keys keep their defaults; unknown
    /// keys, wrongly typed values and values breaking a rule are errors
    /// naming the key. No environment overrides are applied.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config = Config::parse_toml(text, origin)?;
        config.validate().map_err(|e| e.with_origin(origin))?;
        Ok(config)
    }

    /// Loads the configuration the server runs with: the file at `path` (or
    /// `Config::default()` when `None`), then the environment overrides read
    /// through `env` (see the `ENV_*` constants), then `validate`.
    ///
    /// `env` is a lookup such as `|name| std::env::var(name).ok()`; tests pass
    /// a map instead. A set but unusable variable is an error naming it.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (mut config, origin) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let origin = path.display().to_string();
                (Config::parse_toml(&text, &origin)?, origin)
            }
            None => (Config::default(), "built-in defaults".to_owned()),
        };

        // A rule broken only after overrides is still reported against the
        // source, but says the environment was involved.
        let origin = if config.apply_env(env)? {
            format!("{origin} with environment overrides")
        } else {
            origin
        };

        config.validate().map_err(|e| e.with_origin(&origin))?;
        Ok(config)
    }

    /// Applies the `ENV_*` overrides found through `env`. Returns whether any
    /// variable was set. Values are not cross-checked here; call `validate`.
    pub fn apply_env(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<bool, ConfigError> {
        let mut applied = false;

        if let Some(value) = env_value(&env, ENV_COOLDOWN_SECONDS)? {
            self.alerts.cooldown_seconds = value.trim().parse().map_err(|_| ConfigError::Env {
                var: ENV_COOLDOWN_SECONDS,
                reason: "expected a whole number of seconds".to_owned(),
            })?;
            applied = true;
        }

        if let Some(value) = env_value(&env, ENV_LISTEN)? {
            self.server.listen = value.trim().parse().map_err(|_| ConfigError::Env {
                var: ENV_LISTEN,
                reason: "expected an address and port such as 0.0.0.0:8006".to_owned(),
            })?;
            applied = true;
        }

        if let Some(value) = env_value(&env, ENV_JWT_SECRET)? {
            self.auth.jwt_secret = Some(Secret::new(value));
            applied = true;
        }

        if let Some(value) = env_value(&env, ENV_LOG_LEVEL)? {
            self.log.level = parse_level(value.trim()).map_err(|reason| ConfigError::Env {
                var: ENV_LOG_LEVEL,
                reason,
            })?;
            applied = true;
        }

        if let Some(value) = env_value(&env, ENV_DATA_DIR)? {
            self.storage.data_dir = PathBuf::from(value);
            applied = true;
        }

        Ok(applied)
    }

    /// Checks every rule documented on the fields. The first broken rule is
    /// returned as `ConfigError::Invalid` naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // [server]
        let server = &self.server;
        at_least_one("server.max_connections", server.max_connections)?;
        at_least_one(
            "server.max_connections_per_ip",
            server.max_connections_per_ip,
        )?;
        if server.max_connections_per_ip > server.max_connections {
            return Err(ConfigError::invalid(
                "server.max_connections_per_ip",
                "must not exceed max_connections",
            ));
        }
        at_least_one(
            "server.new_connections_per_ip_per_second",
            server.new_connections_per_ip_per_second as usize,
        )?;
        at_least_one(
            "server.new_connections_burst",
            server.new_connections_burst as usize,
        )?;
        if server.listen_backlog < 1 {
            return Err(ConfigError::invalid(
                "server.listen_backlog",
                "must be at least 1",
            ));
        }

        // [http]
        let http = &self.http;
        at_least_one("http.max_head_bytes", http.max_head_bytes)?;
        at_least_one("http.max_headers", http.max_headers)?;
        at_least_one("http.max_body_bytes", http.max_body_bytes)?;
        if http.max_batch_body_bytes < http.max_body_bytes {
            return Err(ConfigError::invalid(
                "http.max_batch_body_bytes",
                "must be at least max_body_bytes",
            ));
        }
        seconds(
            "http.request_timeout_seconds",
            http.request_timeout_seconds,
            1,
        )?;
        seconds("http.keep_alive_seconds", http.keep_alive_seconds, 1)?;

        // [websocket]
        let ws = &self.websocket;
        seconds(
            "websocket.ping_interval_seconds",
            ws.ping_interval_seconds,
            1,
        )?;
        seconds("websocket.idle_timeout_seconds", ws.idle_timeout_seconds, 1)?;
        if ws.idle_timeout_seconds <= ws.ping_interval_seconds {
            return Err(ConfigError::invalid(
                "websocket.idle_timeout_seconds",
                "must be greater than ping_interval_seconds",
            ));
        }
        at_least_one(
            "websocket.max_outbound_queue_bytes",
            ws.max_outbound_queue_bytes,
        )?;
        at_least_one("websocket.max_message_bytes", ws.max_message_bytes)?;
        for origin in &ws.allowed_origins {
            check_origin(origin)?;
        }

        // [alerts]
        seconds("alerts.cooldown_seconds", self.alerts.cooldown_seconds, 0)?;
        let days = self.alerts.log_retention_days;
        if !(1..=MAX_RETENTION_DAYS).contains(&days) {
            return Err(ConfigError::invalid(
                "alerts.log_retention_days",
                format!("must be from 1 to {MAX_RETENTION_DAYS}"),
            ));
        }

        // [auth]
        self.check_auth()?;

        // [storage]
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "storage.data_dir",
                "must not be empty",
            ));
        }
        let ttl = self.storage.idempotency_key_ttl_seconds;
        seconds("storage.idempotency_key_ttl_seconds", ttl, 1)?;

        // [metrics]
        if let Some(token) = &self.metrics.bearer_token {
            if token.expose().is_empty() || !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::invalid(
                    "metrics.bearer_token",
                    "must be visible ASCII without spaces",
                ));
            }
        }
        // Two port-0 listeners each get their own free port, so only a fixed port
        // can clash.
        if self.metrics.listen == Some(server.listen) && server.listen.port() != 0 {
            return Err(ConfigError::invalid(
                "metrics.listen",
                "must differ from server.listen",
            ));
        }

        // [log]
        if self.log.level == LevelFilter::Off {
            return Err(ConfigError::invalid("log.level", LEVEL_CHOICES));
        }

        Ok(())
    }

    /// The `[auth]` rules: key material matches the algorithm.
    fn check_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        match auth.algorithm {
            Algorithm::Hs256 => {
                if auth.public_key_file.is_some() {
                    return Err(ConfigError::invalid(
                        "auth.public_key_file",
                        "only used with RS256 or ES256; leave it empty for HS256",
                    ));
                }
                if let Some(secret) = &auth.jwt_secret {
                    if secret.expose().len() < MIN_SECRET_BYTES {
                        return Err(ConfigError::invalid(
                            "auth.jwt_secret",
                            format!("must be at least {MIN_SECRET_BYTES} bytes"),
                        ));
                    }
                }
            }
            Algorithm::Rs256 | Algorithm::Es256 => {
                if auth.public_key_file.is_none() {
                    return Err(ConfigError::invalid(
                        "auth.public_key_file",
                        format!("required when algorithm is {}", auth.algorithm),
                    ));
                }
                if auth.jwt_secret.is_some() {
                    return Err(ConfigError::invalid(
                        "auth.jwt_secret",
                        format!(
                            "only used with HS256; leave it empty for {}",
                            auth.algorithm
                        ),
                    ));
                }
            }
        }

        at_least_one("auth.failure_limit", auth.failure_limit as usize)?;
        seconds(
            "auth.failure_window_seconds",
            auth.failure_window_seconds,
            1,
        )
    }

    /// Parses TOML text into a `Config` without validating rules.
    ///
    /// Each key is first decoded on its own, so an error can name the exact
    /// `section.key`; serde's own errors do not say which key they are about.
    fn parse_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_sections(text, origin).map_err(|e| e.with_origin(origin))
    }

    /// `parse_toml` before the origin is stamped on section errors.
    fn parse_sections(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| syntax_error(text, origin, &e))?;

        let mut config = Config::default();
        for (name, value) in table {
            match name.as_str() {
                "server" => config.server = section(&name, value)?,
                "http" => config.http = section(&name, value)?,
                "websocket" => config.websocket = section(&name, value)?,
                "alerts" => config.alerts = section(&name, value)?,
                "auth" => config.auth = section(&name, value)?,
                "storage" => config.storage = section(&name, value)?,
                "metrics" => config.metrics = section(&name, value)?,
                "log" => config.log = section(&name, value)?,
                _ => {
                    return Err(ConfigError::UnknownKey {
                        origin: origin.to_owned(),
                        key: name,
                    });
                }
            }
        }

        Ok(config)
    }
}

/// Decodes one `[name]` section, reporting the first bad key as `name.key`.
/// The origin is filled in by `parse_toml` through `with_origin`.
fn section<T: DeserializeOwned>(name: &str, value: toml::Value) -> Result<T, ConfigError> {
    let toml::Value::Table(table) = value else {
        return Err(ConfigError::invalid(name, "must be a table ([section])"));
    };

    // Decode each key alone (the struct's serde defaults fill the rest), so
    // a failure belongs to that key.
    for (key, item) in &table {
        let mut single = toml::Table::new();
        single.insert(key.clone(), item.clone());
        let Err(e) = toml::Value::Table(single).try_into::<T>() else {
            continue;
        };
        let full_key = format!("{name}.{key}");
        if e.message().starts_with("unknown field") {
            return Err(ConfigError::UnknownKey {
                origin: NO_ORIGIN.to_owned(),
                key: full_key,
            });
        }
        let reason = if SECRET_KEYS.contains(&full_key.as_str()) {
            "must be a string".to_owned()
        } else {
            e.message().to_owned()
        };
        return Err(ConfigError::Invalid {
            origin: NO_ORIGIN.to_owned(),
            key: full_key,
            reason,
        });
    }

    // Every key decoded alone; decoding them together cannot fail.
    toml::Value::Table(table)
        .try_into::<T>()
        .map_err(|e| ConfigError::invalid(name, e.message()))
}

/// Turns a TOML syntax error into `ConfigError::Syntax`, keeping position and
/// message but not the quoted source line, which may hold a secret.
fn syntax_error(text: &str, origin: &str, error: &toml::de::Error) -> ConfigError {
    let (line, column) = match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
            (line, column)
        }
        None => (0, 0),
    };

    ConfigError::Syntax {
        origin: origin.to_owned(),
        line,
        column,
        message: error.message().trim_end().to_owned(),
    }
}

/// Reads one override variable: `None` when unset, an error when set but
/// blank (usually an unexpanded shell variable, better caught than ignored).
fn env_value(
    env: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<String>, ConfigError> {
    match env(var) {
        None => Ok(None),
        Some(value) if value.trim().is_empty() => Err(ConfigError::Env {
            var,
            reason: "must not be empty".to_owned(),
        }),
        Some(value) => Ok(Some(value)),
    }
}

/// Fails unless `value >= 1`.
fn at_least_one(key: &str, value: usize) -> Result<(), ConfigError> {
    if value < 1 {
        return Err(ConfigError::invalid(key, "must be at least 1"));
    }
    Ok(())
}

/// Fails unless `min <= value <= MAX_DURATION_SECONDS`.
fn seconds(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min || value > MAX_DURATION_SECONDS {
        return Err(ConfigError::invalid(
            key,
            format!("must be from {min} to {MAX_DURATION_SECONDS} seconds"),
        ));
    }
    Ok(())
}

/// Checks one `websocket.allowed_origins` entry.
fn check_origin(origin: &str) -> Result<(), ConfigError> {
    const KEY: &str = "websocket.allowed_origins";
    if origin.is_empty() {
        return Err(ConfigError::invalid(KEY, "entries must not be empty"));
    }
    if origin.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid(KEY, "entries must not contain spaces"));
    }
    if origin.ends_with('/') {
        return Err(ConfigError::invalid(
            KEY,
            "entries must not end with '/' (an Origin header never does)",
        ));
    }
    Ok(())
}

/// The accepted `log.level` words, as an error reason.
const LEVEL_CHOICES: &str = "expected one of error, warn, info, debug, trace";

/// Parses a log level word (any case); `off` is refused, since a server
/// that cannot report its own failures is never what an operator wants.
fn parse_level(text: &str) -> Result<LevelFilter, String> {
    text.parse::<log::Level>()
        .map(|level| level.to_level_filter())
        .map_err(|_| LEVEL_CHOICES.to_owned())
}

/// serde helper: a log level from its word.
fn level_from_str<'de, D: Deserializer<'de>>(deserializer: D) -> Result<LevelFilter, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_level(&text).map_err(serde::de::Error::custom)
}

/// serde helper: `""` becomes `None`, anything else is parsed with `FromStr`.
fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The shipped, documented configuration file.
    const SHIPPED: &str = include_str!("../stockalert.toml");

    /// An environment lookup over fixed pairs, leaving the process env alone.
    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// An environment with nothing set.
    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// Parses `text` expecting failure, returning the error's Display.
    fn parse_err(text: &str) -> String {
        match Config::from_toml_str(text, "test.toml") {
            Ok(config) => panic!("expected an error, parsed {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn shipped_file_parses_to_default() {
        let parsed = Config::from_toml_str(SHIPPED, "stockalert.toml").unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn shipped_file_spells_out_every_key() {
        let table: toml::Table = toml::from_str(SHIPPED).unwrap();
        let expected: &[(&str, &[&str])] = &[
            (
                "server",
                &[
                    "listen",
                    "max_connections",
                    "max_connections_per_ip",
                    "new_connections_per_ip_per_second",
                    "new_connections_burst",
                    "listen_backlog",
                ],
            ),
            (
                "http",
                &[
                    "max_head_bytes",
                    "max_headers",
                    "max_body_bytes",
                    "max_batch_body_bytes",
                    "request_timeout_seconds",
                    "keep_alive_seconds",
                ],
            ),
            (
                "websocket",
                &[
                    "ping_interval_seconds",
                    "idle_timeout_seconds",
                    "max_outbound_queue_bytes",
                    "max_message_bytes",
                    "allowed_origins",
                ],
            ),
            ("alerts", &["cooldown_seconds", "log_retention_days"]),
            (
                "auth",
                &[
                    "algorithm",
                    "jwt_secret",
                    "public_key_file",
                    "failure_limit",
                    "failure_window_seconds",
                ],
            ),
            (
                "storage",
                &["data_dir", "durability", "idempotency_key_ttl_seconds"],
            ),
            ("metrics", &["enabled", "bearer_token", "listen"]),
            ("log", &["level"]),
        ];

        assert_eq!(table.len(), expected.len());
        for (section, keys) in expected {
            let found = table[*section].as_table().unwrap();
            assert_eq!(found.len(), keys.len(), "key count in [{section}]");
            for key in *keys {
                assert!(
                    found.contains_key(*key),
                    "{section}.{key} missing from the file"
                );
            }
        }
    }

    #[test]
    fn empty_text_gives_defaults() {
        assert_eq!(Config::from_toml_str("", "x").unwrap(), Config::default());
    }

    #[test]
    fn partial_section_keeps_other_defaults() {
        let config = Config::from_toml_str(
            "[server]\nmax_connections = 50\nmax_connections_per_ip = 5\n",
            "x",
        )
        .unwrap();
        assert_eq!(config.server.max_connections, 50);
        assert_eq!(config.server.max_connections_per_ip, 5);
        assert_eq!(config.server.listen_backlog, 1024);
        assert_eq!(config.http, HttpConfig::default());
    }

    #[test]
    fn values_of_every_kind_parse() {
        let text = r#"
            [server]
            listen = "[::1]:9000"
            [websocket]
            allowed_origins = ["https://a.example", "http://b.example:8080"]
            [auth]
            algorithm = "ES256"
            public_key_file = "/etc/stockalert/es.pem"
            [storage]
            durability = "normal"
            data_dir = "/var/lib/stockalert"
            [metrics]
            enabled = false
            bearer_token = "m3tr1cs-token"
            listen = "127.0.0.1:9106"
            [log]
            level = "DEBUG"
        "#;
        let config = Config::from_toml_str(text, "x").unwrap();
        assert_eq!(config.server.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(config.websocket.allowed_origins.len(), 2);
        assert_eq!(config.auth.algorithm, Algorithm::Es256);
        assert_eq!(
            config.auth.public_key_file,
            Some(PathBuf::from("/etc/stockalert/es.pem"))
        );
        assert_eq!(config.storage.durability, Durability::Normal);
        assert_eq!(
            config.storage.data_dir,
            PathBuf::from("/var/lib/stockalert")
        );
        assert!(!config.metrics.enabled);
        assert_eq!(
            config.metrics.bearer_token,
            Some(Secret::new("m3tr1cs-token"))
        );
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9106".parse().unwrap())
        );
        assert_eq!(config.log.level, LevelFilter::Debug);
    }

    #[test]
    fn unknown_key_is_named_with_its_section_and_file() {
        let msg = parse_err("[server]\nlisten = \"0.0.0.0:1\"\nlisen = \"x\"\n");
        assert_eq!(msg, "test.toml: unknown key server.lisen");
    }

    #[test]
    fn unknown_section_is_named() {
        assert_eq!(
            parse_err("[serverr]\nlisten = 1\n"),
            "test.toml: unknown key serverr"
        );
    }

    #[test]
    fn section_that_is_not_a_table_is_rejected() {
        let msg = parse_err("server = 5\n");
        assert!(
            msg.starts_with("test.toml: invalid value for server:"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let msg = parse_err("[http]\nmax_headers = \"many\"\n");
        assert!(
            msg.starts_with("test.toml: invalid value for http.max_headers:"),
            "{msg}"
        );
    }

    #[test]
    fn negative_size_names_the_key() {
        let msg = parse_err("[http]\nmax_body_bytes = -1\n");
        assert!(
            msg.starts_with("test.toml: invalid value for http.max_body_bytes:"),
            "{msg}"
        );
    }

    #[test]
    fn bad_listen_address_names_the_key() {
        let msg = parse_err("[server]\nlisten = \"localhost\"\n");
        assert!(
            msg.starts_with("test.toml: invalid value for server.listen:"),
            "{msg}"
        );
        let msg = parse_err("[metrics]\nlisten = \"nope\"\n");
        assert!(
            msg.starts_with("test.toml: invalid value for metrics.listen:"),
            "{msg}"
        );
    }

    #[test]
    fn bad_enum_words_name_the_key() {
        let cases = [
            ("[storage]\ndurability = \"off\"\n", "storage.durability"),
            ("[auth]\nalgorithm = \"none\"\n", "auth.algorithm"),
            ("[auth]\nalgorithm = \"HS512\"\n", "auth.algorithm"),
            ("[log]\nlevel = \"verbose\"\n", "log.level"),
            ("[log]\nlevel = \"off\"\n", "log.level"),
        ];
        for (text, key) in cases {
            let msg = parse_err(text);
            assert!(
                msg.starts_with(&format!("test.toml: invalid value for {key}:")),
                "{msg}"
            );
        }
    }

    #[test]
    fn syntax_error_gives_position_without_source_text() {
        let msg = parse_err("[auth]\njwt_secret = s3cr3t-unquoted\n");
        assert!(
            msg.starts_with("test.toml: invalid TOML at line 2, column "),
            "{msg}"
        );
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn secret_of_wrong_type_is_not_echoed() {
        let msg = parse_err("[auth]\njwt_secret = 987654321\n");
        assert_eq!(
            msg,
            "test.toml: invalid value for auth.jwt_secret: must be a string"
        );
    }

    #[test]
    fn idle_timeout_must_exceed_ping_interval() {
        let msg =
            parse_err("[websocket]\nping_interval_seconds = 30\nidle_timeout_seconds = 30\n");
        assert_eq!(
            msg,
            "test.toml: invalid value for websocket.idle_timeout_seconds: \
             must be greater than ping_interval_seconds"
        );
    }

    #[test]
    fn zero_values_are_rejected_where_they_make_no_sense() {
        let cases = [
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[server]\nnew_connections_burst = 0\n",
                "server.new_connections_burst",
            ),
            ("[server]\nlisten_backlog = 0\n", "server.listen_backlog"),
            ("[http]\nmax_head_bytes = 0\n", "http.max_head_bytes"),
            (
                "[http]\nrequest_timeout_seconds = 0\n",
                "http.request_timeout_seconds",
            ),
            (
                "[websocket]\nping_interval_seconds = 0\n",
                "websocket.ping_interval_seconds",
            ),
            (
                "[websocket]\nmax_message_bytes = 0\n",
                "websocket.max_message_bytes",
            ),
            (
                "[alerts]\nlog_retention_days = 0\n",
                "alerts.log_retention_days",
            ),
            ("[auth]\nfailure_limit = 0\n", "auth.failure_limit"),
            ("[storage]\ndata_dir = \"\"\n", "storage.data_dir"),
        ];
        for (text, key) in cases {
            let msg = parse_err(text);
            assert!(
                msg.contains(&format!("invalid value for {key}:")),
                "{text}: {msg}"
            );
        }
    }

    #[test]
    fn cooldown_zero_means_off_and_is_allowed() {
        let config = Config::from_toml_str("[alerts]\ncooldown_seconds = 0\n", "x").unwrap();
        assert_eq!(config.alerts.cooldown(), Duration::ZERO);
    }

    #[test]
    fn huge_durations_are_rejected() {
        let msg = parse_err("[alerts]\ncooldown_seconds = 9999999999999\n");
        assert!(
            msg.contains("invalid value for alerts.cooldown_seconds:"),
            "{msg}"
        );
    }

    #[test]
    fn cross_field_limits_are_checked() {
        let msg = parse_err("[server]\nmax_connections = 10\nmax_connections_per_ip = 11\n");
        assert!(
            msg.contains("server.max_connections_per_ip: must not exceed"),
            "{msg}"
        );
        let msg = parse_err("[http]\nmax_body_bytes = 100\nmax_batch_body_bytes = 99\n");
        assert!(msg.contains("http.max_batch_body_bytes:"), "{msg}");
        let msg = parse_err("[metrics]\nlisten = \"0.0.0.0:8006\"\n");
        assert!(msg.contains("metrics.listen: must differ"), "{msg}");
        let both_ephemeral = "[server]\nlisten = \"127.0.0.1:0\"\n\
                              [metrics]\nlisten = \"127.0.0.1:0\"\n";
        assert!(Config::from_toml_str(both_ephemeral, "test.toml").is_ok());
    }

    #[test]
    fn public_key_file_required_for_rs256_and_es256() {
        for alg in ["RS256", "ES256"] {
            let msg = parse_err(&format!("[auth]\nalgorithm = \"{alg}\"\n"));
            assert_eq!(
                msg,
                format!(
                    "test.toml: invalid value for auth.public_key_file: \
                     required when algorithm is {alg}"
                )
            );
        }
    }

    #[test]
    fn key_material_must_match_the_algorithm() {
        let msg = parse_err("[auth]\npublic_key_file = \"k.pem\"\n");
        assert!(
            msg.contains("auth.public_key_file: only used with RS256"),
            "{msg}"
        );
        let msg = parse_err(&format!(
            "[auth]\nalgorithm = \"RS256\"\npublic_key_file = \"k.pem\"\njwt_secret = \"{}\"\n",
            "a".repeat(40)
        ));
        assert!(
            msg.contains("auth.jwt_secret: only used with HS256"),
            "{msg}"
        );
    }

    #[test]
    fn short_secret_is_rejected_without_echoing_it() {
        let msg = parse_err("[auth]\njwt_secret = \"tooshort\"\n");
        assert_eq!(
            msg,
            "test.toml: invalid value for auth.jwt_secret: must be at least 32 bytes"
        );
    }

    #[test]
    fn bad_origin_entries_are_rejected() {
        for origin in ["", "https://a.example/", "https://a example"] {
            let msg = parse_err(&format!("[websocket]\nallowed_origins = [\"{origin}\"]\n"));
            assert!(msg.contains("websocket.allowed_origins:"), "{msg}");
        }
    }

    #[test]
    fn origin_policy_matches_exactly() {
        let mut ws = WebSocketConfig::default();
        assert!(ws.origin_allowed(None));
        assert!(ws.origin_allowed(Some("https://anything")));

        ws.allowed_origins = vec!["https://shop.example".to_owned()];
        assert!(ws.origin_allowed(Some("https://shop.example")));
        assert!(!ws.origin_allowed(Some("https://shop.example.evil")));
        assert!(!ws.origin_allowed(None));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut config = Config::default();
        config.auth.jwt_secret = Some(Secret::new("do-not-print-this-secret-value-0123"));
        config.metrics.bearer_token = Some(Secret::new("do-not-print-token"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("do-not-print"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn duration_helpers_convert_seconds() {
        let config = Config::default();
        assert_eq!(config.http.request_timeout(), Duration::from_secs(10));
        assert_eq!(config.http.keep_alive(), Duration::from_secs(60));
        assert_eq!(config.websocket.ping_interval(), Duration::from_secs(30));
        assert_eq!(config.websocket.idle_timeout(), Duration::from_secs(75));
        assert_eq!(
            config.alerts.log_retention(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(config.auth.failure_window(), Duration::from_secs(60));
        assert_eq!(
            config.storage.idempotency_key_ttl(),
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn load_without_path_gives_defaults() {
        assert_eq!(Config::load(None, no_env).unwrap(), Config::default());
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(&path, "[alerts]\ncooldown_seconds = 5\n").unwrap();
        let config = Config::load(Some(&path), no_env).unwrap();
        assert_eq!(config.alerts.cooldown_seconds, 5);

        std::fs::write(&path, "[alerts]\ncooldown = 5\n").unwrap();
        let msg = Config::load(Some(&path), no_env).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!("{}: unknown key alerts.cooldown", path.display())
        );
    }

    #[test]
    fn load_of_missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let err = Config::load(Some(&path), no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn env_overrides_apply_after_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            "[alerts]\ncooldown_seconds = 5\n[log]\nlevel = \"warn\"\n",
        )
        .unwrap();
        let secret = "e".repeat(32);
        let env = env_of(&[
            ("ALERT_COOLDOWN_SECONDS", "0"),
            ("STOCKALERT_LISTEN", "127.0.0.1:7000"),
            ("STOCKALERT_JWT_SECRET", &secret),
            ("STOCKALERT_LOG_LEVEL", "trace"),
            ("STOCKALERT_DATA_DIR", "/srv/stock"),
        ]);

        let config = Config::load(Some(&path), env).unwrap();
        assert_eq!(config.alerts.cooldown_seconds, 0);
        assert_eq!(config.server.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.auth.jwt_secret, Some(Secret::new(secret)));
        assert_eq!(config.log.level, LevelFilter::Trace);
        assert_eq!(config.storage.data_dir, PathBuf::from("/srv/stock"));
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let cases = [
            ("ALERT_COOLDOWN_SECONDS", "soon"),
            ("ALERT_COOLDOWN_SECONDS", "-1"),
            ("STOCKALERT_LISTEN", "8006"),
            ("STOCKALERT_LOG_LEVEL", "loud"),
            ("STOCKALERT_DATA_DIR", ""),
            ("STOCKALERT_JWT_SECRET", "  "),
        ];
        for (var, value) in cases {
            let err = Config::load(None, env_of(&[(var, value)])).unwrap_err();
            assert_eq!(err.key(), Some(var));
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn env_value_breaking_a_rule_is_caught_by_validation() {
        let err =
            Config::load(None, env_of(&[("STOCKALERT_JWT_SECRET", "short-secret")])).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("auth.jwt_secret"));
        assert!(
            msg.starts_with("built-in defaults with environment overrides:"),
            "{msg}"
        );
        assert!(!msg.contains("short-secret"), "{msg}");
    }
}
