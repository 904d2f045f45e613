//! The command line through the real binary: `--help`, `--version`, `token`, and the
//! exit code and message of a configuration that must not start.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{HttpClient, TestServer, connect_ws};

/// Runs the binary to completion with `args` and `env`, every override variable of
/// the parent cleared first.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stockalert"));
    command.args(args).stdin(Stdio::null());
    for var in [
        "ALERT_COOLDOWN_SECONDS",
        "STOCKALERT_LISTEN",
        "STOCKALERT_JWT_SECRET",
        "STOCKALERT_LOG_LEVEL",
        "STOCKALERT_DATA_DIR",
    ] {
        command.env_remove(var);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run stockalert")
}

/// Starts the server on a config made of `text` (plus a temporary data directory and
/// port 0) and returns its exit code and stderr; it must fail before serving.
fn refused_config(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stockalert.toml");
    let data = dir.path().join("data");
    let full = format!("{text}\n[storage]\ndata_dir = \"{}\"\n", data.display());
    std::fs::write(&path, full).expect("write config");
    let out = run(&["--config", path.to_str().unwrap()], env);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The token `stockalert token` prints for the server's own configuration file.
fn cli_token(server: &TestServer, extra: &[&str]) -> String {
    let config = server.dir.path().join("stockalert.toml");
    let mut args = vec!["token", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(&args, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8 token");
    let token = token.trim().to_owned();
    assert_eq!(token.matches('.').count(), 2, "not a JWT: {token}");
    token
}

#[test]
fn help_and_version_print_and_exit_zero() {
    let help = run(&["--help"], &[]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("stockalert token --tenant"), "{text}");
    assert!(text.contains("--config"), "{text}");

    let version = run(&["--version"], &[]);
    assert!(version.status.success());
    let text = String::from_utf8_lossy(&version.stdout);
    assert_eq!(
        text.trim(),
        format!("stockalert {}", env!("CARGO_PKG_VERSION"))
    );

    let bad = run(&["--frobnicate"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("frobnicate"));
}

/// A refused configuration: file text, environment, and the key the error must name.
type RefusedCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn config_errors_exit_2_naming_the_key() {
    let cases: [RefusedCase<'_>; 5] = [
        ("[server]\nlisen = \"127.0.0.1:0\"", &[], "server.lisen"),
        ("[nosuchsection]\nx = 1", &[], "nosuchsection"),
        (
            "[websocket]\nping_interval_seconds = \"often\"",
            &[],
            "websocket.ping_interval_seconds",
        ),
        (
            "[websocket]\nping_interval_seconds = 10\nidle_timeout_seconds = 5",
            &[],
            "websocket.idle_timeout_seconds",
        ),
        (
            "",
            &[("ALERT_COOLDOWN_SECONDS", "soon")],
            "ALERT_COOLDOWN_SECONDS",
        ),
    ];
    for (text, env, key) in cases {
        let (code, stderr) = refused_config(text, env);
        assert_eq!(code, Some(2), "{key}: {stderr}");
        let line = stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "config_invalid")
            .unwrap_or_else(|| panic!("no config_invalid line: {stderr}"));
        assert_eq!(line["level"], "error");
        let message = line["message"].as_str().unwrap_or_default();
        assert!(message.contains(key), "{message:?} does not name {key}");
        assert!(!stderr.contains("server_started"), "{stderr}");
    }
}

#[test]
fn cli_tokens_are_accepted_over_http_and_websocket() {
    let server = TestServer::start();
    let token = cli_token(
        &server,
        &["--tenant", "t1", "--store", "s1", "--ttl", "600"],
    );

    let path = "/api/v1/tenants/t1/stores/s1/stock/A/update";
    let body = r#"{"quantityChange": 3, "updateType": "purchase"}"#;
    let reply = server.http("PUT", path, Some(&token), Some(body));
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Limited to s1: another store of the tenant is refused.
    let other = "/api/v1/tenants/t1/stores/s2/stock/A";
    assert_eq!(server.http("GET", other, Some(&token), None).status, 403);

    let mut ws = connect_ws(&server.ws_url("t1", "s1", &token));
    assert_eq!(ws.next_json()["status"], "connected");

    // Without --store the token covers every store of the tenant.
    let wide = cli_token(&server, &["--tenant", "t1", "--sub", "pos-7"]);
    assert_eq!(server.http("GET", other, Some(&wide), None).status, 404);
}

#[test]
fn a_generated_secret_is_private_and_never_logged() {
    use std::os::unix::fs::PermissionsExt;

    let server = TestServer::start_with("[auth]\njwt_secret = \"\"", &[]);
    let logged = server.wait_log(|v| v["event"] == "jwt_secret_file");
    let file = logged["path"].as_str().expect("path field").to_owned();
    assert!(Path::new(&file).starts_with(server.dir.path()), "{file}");

    let metadata = std::fs::metadata(&file).expect("secret file");
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read(&file).expect("read secret");
    assert!(secret.len() >= 32, "secret of {} bytes", secret.len());
    let secret_text = String::from_utf8_lossy(&secret).trim().to_owned();
    assert!(
        !server.log_text().contains(&secret_text),
        "the secret reached the log"
    );

    // The token command reads the same file, so the server accepts its tokens, and a
    // token signed with the test secret no longer works.
    let token = cli_token(&server, &["--tenant", "t1"]);
    let mut client = HttpClient::connect(server.addr);
    client.send(
        "GET",
        "/api/v1/tenants/t1/stores/s1/stock",
        Some(&token),
        None,
        &[],
    );
    assert_eq!(client.read().status, 200);
    let stale = server.token("t1", &[]);
    client.send(
        "GET",
        "/api/v1/tenants/t1/stores/s1/stock",
        Some(&stale),
        None,
        &[],
    );
    assert_eq!(client.read().status, 401);
}
