//! The `stockalert` command: serve, or print a token for a POS terminal or a dashboard.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use log::Level;

use stockalert::auth::{self, Verifier};
use stockalert::cli::{self, Command};
use stockalert::config::{Algorithm, Config};
use stockalert::event;
use stockalert::server::Server;
use stockalert::service::Service;
use stockalert::store::Store;

/// Exit code for a bad command line or configuration.
const EXIT_USAGE: u8 = 2;

/// Exit code for a failure while starting or serving.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("stockalert: {error}\n\n{}", cli::USAGE);
            return ExitCode::from(EXIT_USAGE);
        }
    };

    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("stockalert {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Token {
            config,
            tenant,
            stores,
            sub,
            ttl_seconds,
        } => {
            let env = |name: &str| std::env::var(name).ok();
            match cli::run_token(
                config.as_deref(),
                &tenant,
                &stores,
                sub.as_deref(),
                ttl_seconds,
                env,
            ) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("stockalert: {error}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
        Command::Serve { config } => serve(config.as_deref()),
    }
}

/// Loads the configuration, opens the store and runs the loop until a signal stops it.
fn serve(path: Option<&Path>) -> ExitCode {
    let config = match Config::load(path, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => {
            stockalert::logging::init(log::LevelFilter::Info);
            event!(Level::Error, "config_invalid", message = error.to_string());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    stockalert::logging::init(config.log.level);

    match start(config) {
        Ok(()) => {
            event!(Level::Info, "server_stopped");
            ExitCode::SUCCESS
        }
        Err(message) => {
            event!(Level::Error, "server_failed", message = message);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Everything after the configuration: key material, store, listener, loop.
fn start(config: Config) -> Result<(), String> {
    let data_dir = config.storage.data_dir.clone();

    let verifier = if config.auth.algorithm == Algorithm::Hs256 {
        let (secret, file) =
            auth::resolve_secret(&config.auth, &data_dir).map_err(|e| e.to_string())?;
        if let Some(file) = file {
            event!(
                Level::Info,
                "jwt_secret_file",
                path = file.display().to_string()
            );
        }
        Verifier::from_config(&config.auth, Some(&secret)).map_err(|e| e.to_string())?
    } else {
        Verifier::from_config(&config.auth, None).map_err(|e| e.to_string())?
    };

    let opening = Instant::now();
    let store = Store::open(&data_dir, config.storage.durability).map_err(|e| e.to_string())?;
    event!(
        Level::Info,
        "store_opened",
        path = data_dir.display().to_string(),
        items = store.item_count(),
        load_ms = opening.elapsed().as_secs_f64() * 1000.0
    );

    let durability = format!("{:?}", config.storage.durability).to_lowercase();
    let cooldown = config.alerts.cooldown_seconds;
    let service = Service::new(config, store, verifier, Instant::now());
    let mut server = Server::bind(service).map_err(|e| e.to_string())?;
    event!(
        Level::Info,
        "server_started",
        listen = server.local_addr(),
        metrics_listen = server.metrics_addr(),
        version = env!("CARGO_PKG_VERSION"),
        durability = durability,
        alert_cooldown_seconds = cooldown
    );

    server.run().map_err(|e| format!("event loop failed: {e}"))
}
