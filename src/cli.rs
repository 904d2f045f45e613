//! Command line: parsing arguments and running `stockalert token`.
//!
//! Parsing is pure (arguments in, `Command` out) so it is unit-tested without
//! a process. `main` prints `USAGE`/the version or calls `run_token` and
//! prints its token, and turns errors into an exit code.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::{self, AuthSetupError, Claims};
use crate::config::{Algorithm, Config, ConfigError};

/// Default `--ttl` of `stockalert token`: one day, in seconds.
pub const DEFAULT_TTL_SECONDS: u64 = 86_400;

/// Longest `--ttl` accepted: ten years, in seconds. A token that outlives
/// its purpose is a liability; ten years covers any real use.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 86_400;

/// Default `sub` claim of tokens made by `stockalert token`.
pub const DEFAULT_SUB: &str = "stockalert-cli";

/// Help text printed by `--help`.
pub const USAGE: &str = "\
stockalert: stock level server pushing reorder and minimum-stock alerts

USAGE:
    stockalert [serve] [--config PATH]
    stockalert token --tenant TENANT [--store STORE]... [--sub NAME]
                     [--ttl SECONDS] [--config PATH]
    stockalert --help | --version

COMMANDS:
    serve    Run the server (the default when no command is given).
    token    Print an HS256 token signed with the configured secret. The
             secret file under storage.data_dir is created if missing.

OPTIONS:
    -c, --config PATH    Configuration file (default: built-in defaults).
                         Environment overrides apply as for the server.
    --tenant TENANT      Tenant the token acts for (required for token).
    --store STORE        Limit the token to this store; repeat for several.
                         Without --store the token covers every store.
    --sub NAME           Subject recorded in the token (default:
                         stockalert-cli).
    --ttl SECONDS        Token lifetime in seconds (default: 86400).
    -h, --help           Print this help.
    -V, --version        Print the version.
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server with this configuration file (`None`: defaults).
    Serve {
        /// `--config`, when given.
        config: Option<PathBuf>,
    },
    /// Print a signed token.
    Token {
        /// `--config`, when given.
        config: Option<PathBuf>,
        /// `--tenant`; non-empty.
        tenant: String,
        /// `--store` values in order given, each non-empty; empty: all stores.
        stores: Vec<String>,
        /// `--sub`; `None` means `DEFAULT_SUB`.
        sub: Option<String>,
        /// `--ttl`; from 1 to `MAX_TTL_SECONDS`.
        ttl_seconds: u64,
    },
    /// Print `USAGE`.
    Help,
    /// Print the version.
    Version,
}

/// Why the command line was refused, or `stockalert token` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CliError {
    /// An option this program does not have (or not for this command).
    UnknownOption(String),
    /// A positional argument that fits nowhere.
    UnexpectedArgument(String),
    /// An option that needs a value came last.
    MissingValue(String),
    /// An option's value is unusable.
    InvalidValue {
        /// The option, as typed (e.g. `--ttl`).
        option: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// An option given twice where only one makes sense.
    Repeated(String),
    /// `token` was asked for without `--tenant`.
    MissingTenant,
    /// An option given to a command that does not take it.
    NotForCommand {
        /// The option, as typed.
        option: String,
        /// The command that was being parsed.
        command: &'static str,
    },
    /// The configuration could not be loaded.
    Config(ConfigError),
    /// The secret could not be resolved or the token signed.
    Auth(AuthSetupError),
    /// The configured algorithm uses keys this program does not hold.
    CannotSign(Algorithm),
    /// The system clock is before 1970 or the expiry overflows.
    Clock,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::UnknownOption(opt) => write!(f, "unknown option {opt}"),
            CliError::UnexpectedArgument(arg) => write!(f, "unexpected argument {arg:?}"),
            CliError::MissingValue(opt) => write!(f, "option {opt} needs a value"),
            CliError::InvalidValue { option, reason } => {
                write!(f, "invalid value for {option}: {reason}")
            }
            CliError::Repeated(opt) => write!(f, "option {opt} given more than once"),
            CliError::MissingTenant => f.write_str("the token command needs --tenant"),
            CliError::NotForCommand { option, command } => {
                write!(f, "option {option} is not valid for the {command} command")
            }
            CliError::Config(e) => write!(f, "configuration: {e}"),
            CliError::Auth(e) => write!(f, "token: {e}"),
            CliError::CannotSign(alg) => write!(
                f,
                "the token command signs HS256 only; with {alg} tokens come from the holder \
                 of the private key"
            ),
            CliError::Clock => f.write_str("system clock is out of range for a token expiry"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Config(e) => Some(e),
            CliError::Auth(e) => Some(e),
            _ => None,
        }
    }
}

/// Options gathered while parsing, before the command is known to be whole.
#[derive(Default)]
struct Gathered {
    /// Which command: `false` serve, `true` token.
    token: bool,
    /// `--config`.
    config: Option<PathBuf>,
    /// `--tenant`.
    tenant: Option<String>,
    /// `--store`, repeated.
    stores: Vec<String>,
    /// `--sub`.
    sub: Option<String>,
    /// `--ttl`.
    ttl_seconds: Option<u64>,
    /// The first token-only option seen, for a serve-command error.
    token_option: Option<String>,
}

/// Parses the arguments after `argv[0]`.
///
/// `--help` or `--version` anywhere wins over everything else, so a user
/// who asks for help gets it even with other mistakes on the line. The
/// command word (`serve` or `token`) must come before any positional
/// argument; options may come before or after it.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, CliError> {
    use lexopt::Arg;

    let mut parser = lexopt::Parser::from_args(args);
    let mut got = Gathered::default();
    let mut command_seen = false;
    let mut first_error: Option<CliError> = None;

    // Keep parsing after an error, in case --help or --version follows.
    while let Some(arg) = next_arg(&mut parser, &mut first_error) {
        let result = match arg {
            Arg::Short('h') | Arg::Long("help") => return Ok(Command::Help),
            Arg::Short('V') | Arg::Long("version") => return Ok(Command::Version),
            Arg::Short('c') | Arg::Long("config") => string_value(&mut parser, "--config")
                .and_then(|v| set_once(&mut got.config, PathBuf::from(v), "--config")),
            Arg::Long(name @ ("tenant" | "store" | "sub" | "ttl")) => {
                let option = format!("--{name}");
                got.token_option.get_or_insert_with(|| option.clone());
                token_option(&mut parser, &mut got, &option)
            }
            Arg::Short(c) => Err(CliError::UnknownOption(format!("-{c}"))),
            Arg::Long(name) => Err(CliError::UnknownOption(format!("--{name}"))),
            Arg::Value(value) => {
                let value = value.to_string_lossy().into_owned();
                match value.as_str() {
                    "serve" if !command_seen => {
                        command_seen = true;
                        Ok(())
                    }
                    "token" if !command_seen => {
                        command_seen = true;
                        got.token = true;
                        Ok(())
                    }
                    _ => Err(CliError::UnexpectedArgument(value)),
                }
            }
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }

    if let Some(e) = first_error {
        return Err(e);
    }
    finish(got)
}

/// The next argument, recording a lexopt error (e.g. `--config=` on a flag)
/// and ending the loop on it, since lexopt cannot continue past some.
fn next_arg<'p>(
    parser: &'p mut lexopt::Parser,
    first_error: &mut Option<CliError>,
) -> Option<lexopt::Arg<'p>> {
    match parser.next() {
        Ok(arg) => arg,
        Err(e) => {
            first_error.get_or_insert(from_lexopt(e));
            None
        }
    }
}

/// Parses the value of one of the token-only options into `got`.
fn token_option(
    parser: &mut lexopt::Parser,
    got: &mut Gathered,
    option: &str,
) -> Result<(), CliError> {
    let value = string_value(parser, option)?;
    if value.is_empty() {
        return Err(CliError::InvalidValue {
            option: option.to_owned(),
            reason: "must not be empty".to_owned(),
        });
    }

    match option {
        "--tenant" => set_once(&mut got.tenant, value, option),
        "--sub" => set_once(&mut got.sub, value, option),
        "--store" => {
            if !got.stores.contains(&value) {
                got.stores.push(value);
            }
            Ok(())
        }
        _ => {
            let ttl = parse_ttl(&value).map_err(|reason| CliError::InvalidValue {
                option: option.to_owned(),
                reason,
            })?;
            set_once(&mut got.ttl_seconds, ttl, option)
        }
    }
}

/// Builds the command from everything parsed.
fn finish(got: Gathered) -> Result<Command, CliError> {
    if !got.token {
        if let Some(option) = got.token_option {
            return Err(CliError::NotForCommand {
                option,
                command: "serve",
            });
        }
        return Ok(Command::Serve { config: got.config });
    }

    Ok(Command::Token {
        config: got.config,
        tenant: got.tenant.ok_or(CliError::MissingTenant)?,
        stores: got.stores,
        sub: got.sub,
        ttl_seconds: got.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS),
    })
}

/// The value of `option` as UTF-8 text.
fn string_value(parser: &mut lexopt::Parser, option: &str) -> Result<String, CliError> {
    let value = parser
        .value()
        .map_err(|_| CliError::MissingValue(option.to_owned()))?;
    value.into_string().map_err(|_| CliError::InvalidValue {
        option: option.to_owned(),
        reason: "is not valid UTF-8".to_owned(),
    })
}

/// Stores `value` in `slot`, refusing a second occurrence of `option`.
fn set_once<T>(slot: &mut Option<T>, value: T, option: &str) -> Result<(), CliError> {
    if slot.is_some() {
        return Err(CliError::Repeated(option.to_owned()));
    }
    *slot = Some(value);
    Ok(())
}

/// Parses a `--ttl` value: whole seconds from 1 to `MAX_TTL_SECONDS`.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let ttl: u64 = text
        .parse()
        .map_err(|_| "expected a whole number of seconds".to_owned())?;
    if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
        return Err(format!("must be from 1 to {MAX_TTL_SECONDS} seconds"));
    }
    Ok(ttl)
}

/// Maps lexopt's errors onto ours, keeping the option name.
fn from_lexopt(error: lexopt::Error) -> CliError {
    match error {
        lexopt::Error::MissingValue { option } => {
            CliError::MissingValue(option.unwrap_or_else(|| "?".to_owned()))
        }
        lexopt::Error::UnexpectedOption(option) => CliError::UnknownOption(option),
        lexopt::Error::UnexpectedArgument(arg) => {
            CliError::UnexpectedArgument(arg.to_string_lossy().into_owned())
        }
        lexopt::Error::UnexpectedValue { option, .. } => CliError::InvalidValue {
            option,
            reason: "takes no value".to_owned(),
        },
        other => CliError::InvalidValue {
            option: "?".to_owned(),
            reason: other.to_string(),
        },
    }
}

/// The claims `stockalert token` signs: `tenant`, expiry `now_unix +
/// ttl_seconds`, `sub` (default `DEFAULT_SUB`), and `store_code` for one
/// store or `store_codes` for several (none: every store).
pub fn token_claims(
    tenant: &str,
    stores: &[String],
    sub: Option<&str>,
    ttl_seconds: u64,
    now_unix: u64,
) -> Result<Claims, CliError> {
    let exp = now_unix.checked_add(ttl_seconds).ok_or(CliError::Clock)?;
    let (store_code, store_codes) = match stores {
        [] => (None, None),
        [one] => (Some(one.clone()), None),
        many => (None, Some(many.to_vec())),
    };

    Ok(Claims {
        tenant_id: tenant.to_owned(),
        exp,
        sub: Some(sub.unwrap_or(DEFAULT_SUB).to_owned()),
        store_code,
        store_codes,
    })
}

/// Runs `stockalert token`: loads the configuration as `serve` would (file
/// at `config` or defaults, then overrides from `env`), resolves the HS256
/// secret (creating `<data_dir>/jwt_secret` if needed, exactly as the
/// server would), and returns the signed token for the caller to print on
/// stdout. Tokens made this way are accepted by a server using the same
/// configuration and data directory.
///
/// Fails with `CannotSign` when the configured algorithm is RS256/ES256:
/// the server holds only the public key.
pub fn run_token(
    config: Option<&Path>,
    tenant: &str,
    stores: &[String],
    sub: Option<&str>,
    ttl_seconds: u64,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, CliError> {
    let config = Config::load(config, env).map_err(CliError::Config)?;
    if config.auth.algorithm != Algorithm::Hs256 {
        return Err(CliError::CannotSign(config.auth.algorithm));
    }

    let (secret, _path) =
        auth::resolve_secret(&config.auth, &config.storage.data_dir).map_err(CliError::Auth)?;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CliError::Clock)?;
    let claims = token_claims(tenant, stores, sub, ttl_seconds, now.as_secs())?;
    auth::sign_hs256(&secret, &claims).map_err(CliError::Auth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Verifier;

    /// Parses a command line given as words.
    fn p(words: &[&str]) -> Result<Command, CliError> {
        parse(words.iter().map(OsString::from))
    }

    /// Parses expecting failure; returns the error's Display.
    fn err(words: &[&str]) -> String {
        match p(words) {
            Ok(cmd) => panic!("{words:?} parsed as {cmd:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn no_arguments_serves_with_defaults() {
        assert_eq!(p(&[]).unwrap(), Command::Serve { config: None });
        assert_eq!(p(&["serve"]).unwrap(), Command::Serve { config: None });
    }

    #[test]
    fn config_option_in_all_spellings() {
        let want = Command::Serve {
            config: Some(PathBuf::from("/etc/s.toml")),
        };
        for words in [
            &["--config", "/etc/s.toml"][..],
            &["--config=/etc/s.toml"],
            &["-c", "/etc/s.toml"],
            &["serve", "--config", "/etc/s.toml"],
        ] {
            assert_eq!(p(words).unwrap(), want, "{words:?}");
        }
    }

    #[test]
    fn help_and_version() {
        assert_eq!(p(&["--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["-h"]).unwrap(), Command::Help);
        assert_eq!(p(&["token", "--bogus", "--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["--version"]).unwrap(), Command::Version);
        assert_eq!(p(&["-V"]).unwrap(), Command::Version);
    }

    #[test]
    fn token_with_defaults() {
        assert_eq!(
            p(&["token", "--tenant", "acme"]).unwrap(),
            Command::Token {
                config: None,
                tenant: "acme".to_owned(),
                stores: Vec::new(),
                sub: None,
                ttl_seconds: DEFAULT_TTL_SECONDS,
            }
        );
    }

    #[test]
    fn token_with_every_option() {
        let cmd = p(&[
            "--config",
            "s.toml",
            "token",
            "--tenant=acme",
            "--store",
            "s1",
            "--store",
            "s2",
            "--store",
            "s1",
            "--sub",
            "ops",
            "--ttl",
            "600",
        ])
        .unwrap();
        assert_eq!(
            cmd,
            Command::Token {
                config: Some(PathBuf::from("s.toml")),
                tenant: "acme".to_owned(),
                stores: vec!["s1".to_owned(), "s2".to_owned()],
                sub: Some("ops".to_owned()),
                ttl_seconds: 600,
            }
        );
    }

    #[test]
    fn bad_inputs_name_the_offending_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus"], "unknown option --bogus"),
            (&["-x"], "unknown option -x"),
            (&["token", "--tenant"], "option --tenant needs a value"),
            (&["--config"], "option --config needs a value"),
            (&["token"], "the token command needs --tenant"),
            (
                &["token", "--tenant", ""],
                "invalid value for --tenant: must not be empty",
            ),
            (
                &["token", "--tenant", "a", "--store="],
                "invalid value for --store:",
            ),
            (
                &["token", "--tenant", "a", "--ttl", "soon"],
                "invalid value for --ttl:",
            ),
            (
                &["token", "--tenant", "a", "--ttl", "0"],
                "invalid value for --ttl:",
            ),
            (
                &["token", "--tenant", "a", "--ttl", "-5"],
                "invalid value for --ttl:",
            ),
            (
                &["token", "--tenant", "a", "--tenant", "b"],
                "option --tenant given more than once",
            ),
            (
                &["-c", "a", "--config", "b"],
                "option --config given more than once",
            ),
            (
                &["--tenant", "a"],
                "option --tenant is not valid for the serve command",
            ),
            (
                &["serve", "--ttl", "5"],
                "option --ttl is not valid for the serve command",
            ),
            (&["token", "token"], "unexpected argument \"token\""),
            (&["frobnicate"], "unexpected argument \"frobnicate\""),
        ];
        for (words, want) in cases {
            let msg = err(words);
            assert!(
                msg.starts_with(want),
                "{words:?}: got {msg:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn huge_ttl_is_refused() {
        let msg = err(&["token", "--tenant", "a", "--ttl", "99999999999999999999"]);
        assert!(msg.starts_with("invalid value for --ttl:"), "{msg}");
        let msg = err(&[
            "token",
            "--tenant",
            "a",
            "--ttl",
            &(MAX_TTL_SECONDS + 1).to_string(),
        ]);
        assert!(
            msg.starts_with("invalid value for --ttl: must be from 1"),
            "{msg}"
        );
    }

    #[test]
    fn claims_for_zero_one_and_many_stores() {
        let none = token_claims("acme", &[], None, 60, 1000).unwrap();
        assert_eq!(none.exp, 1060);
        assert_eq!(none.sub.as_deref(), Some(DEFAULT_SUB));
        assert_eq!((none.store_code, none.store_codes), (None, None));

        let one = token_claims("acme", &["s1".to_owned()], Some("ops"), 60, 1000).unwrap();
        assert_eq!(one.store_code.as_deref(), Some("s1"));
        assert_eq!(one.store_codes, None);
        assert_eq!(one.sub.as_deref(), Some("ops"));

        let stores = ["s1".to_owned(), "s2".to_owned()];
        let many = token_claims("acme", &stores, None, 60, 1000).unwrap();
        assert_eq!(many.store_code, None);
        assert_eq!(many.store_codes.as_deref(), Some(&stores[..]));

        assert!(matches!(
            token_claims("a", &[], None, u64::MAX, 1),
            Err(CliError::Clock)
        ));
    }

    #[test]
    fn run_token_signs_with_the_secret_the_server_would_use() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let data_dir_text = data_dir.to_string_lossy().into_owned();
        let env = |name: &str| (name == "STOCKALERT_DATA_DIR").then(|| data_dir_text.clone());

        let stores = ["s1".to_owned()];
        let token = run_token(None, "acme", &stores, None, 3600, env).unwrap();

        // The server side: same config and data dir, hence the same secret.
        let config = Config::load(None, env).unwrap();
        let (secret, path) = auth::resolve_secret(&config.auth, &config.storage.data_dir).unwrap();
        assert_eq!(path, Some(data_dir.join("jwt_secret")));
        let claims = Verifier::hs256(&secret)
            .authorize(Some(&token), "acme", "s1")
            .unwrap();
        assert_eq!(claims.sub.as_deref(), Some(DEFAULT_SUB));
        assert_eq!(claims.store_code.as_deref(), Some("s1"));
    }

    #[test]
    fn run_token_refuses_public_key_algorithms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "[auth]\nalgorithm = \"ES256\"\npublic_key_file = \"k.pem\"\n",
        )
        .unwrap();
        let result = run_token(Some(&path), "acme", &[], None, 60, |_| None);
        assert!(
            matches!(result, Err(CliError::CannotSign(Algorithm::Es256))),
            "{result:?}"
        );
    }

    #[test]
    fn run_token_reports_config_errors() {
        let result = run_token(None, "acme", &[], None, 60, |name| {
            (name == "STOCKALERT_LOG_LEVEL").then(|| "chatty".to_owned())
        });
        let msg = result.unwrap_err().to_string();
        assert!(msg.contains("STOCKALERT_LOG_LEVEL"), "{msg}");
    }
}
