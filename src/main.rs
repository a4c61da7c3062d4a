//! The `backbeat` command: `serve`, `check-config`, `status`, `--version`.
//!
//! Exit codes: 0 clean stop, 1 runtime failure (for `status`: the API could not be reached or
//! refused the request), 2 invalid configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backbeat::app::Engine;
use backbeat::config::Config;
use backbeat::telemetry::{self, LogFormat};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long `backbeat status` waits for the API.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "backbeat",
    version,
    about = "Asynchronous object replication engine"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the engine (embedded default when no --config is given).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Parses and validates a configuration file, reporting every problem.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Shows the running engine's status: each site's state, backlog, lag, throughput,
    /// failures and last error, and each source bucket's scans (asks the API, `GET status`,
    /// at the configuration's `[server]` address with its token).
    Status {
        /// Configuration file (TOML); without one, the default address 127.0.0.1:8900.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print exactly the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load-test helper: seeds the state store of a stopped engine with failed versions
    /// (each with replication info) and completed-metrics counters for every configured site.
    #[command(hide = true)]
    SeedFailed {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Failed versions per site.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
    },
    /// Test helper: appends and commits in a loop, printing each acknowledgement.
    #[command(hide = true)]
    LogTorture {
        /// Data directory.
        #[arg(long)]
        path: PathBuf,
        /// First record number to write.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// Durability mode.
        #[arg(long, default_value = "group")]
        durability: String,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    let cfg = match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    };
    cfg.map_err(|e| {
        eprintln!("backbeat: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(Some(&config)) {
            Ok(_) => {
                println!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { config } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(cli.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("backbeat: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(serve(cfg))
        }
        Command::Status { config, json } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("backbeat: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(status(&cfg, json))
        }
        Command::SeedFailed { config, count } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return ExitCode::from(1),
            };
            match rt.block_on(backbeat::testkit::seed_failed(&cfg, count)) {
                Ok(n) => {
                    println!("seeded {n} failed versions");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("backbeat: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::LogTorture {
            path,
            first,
            durability,
        } => {
            telemetry::init(cli.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return ExitCode::from(1),
            };
            match rt.block_on(backbeat::testkit::log_torture(&path, first, &durability)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("backbeat: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn serve(cfg: Config) -> ExitCode {
    let engine = match Engine::start_default_clock(cfg).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %backbeat::error::chain(&e), "Backbeat failed to start.");
            return ExitCode::from(1);
        }
    };
    let token = engine.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Stop requested; draining (send the signal again to stop at once).");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("Second stop signal; exiting now.");
        std::process::exit(1);
    });
    match engine.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Backbeat stopped after a failure.");
            ExitCode::from(1)
        }
    }
}

/// The API's base URL from `[server]`: a wildcard bind address is asked on loopback.
fn api_base(cfg: &Config) -> String {
    let host = match cfg.server.host.as_str() {
        "0.0.0.0" => "127.0.0.1".to_string(),
        "::" | "[::]" => "[::1]".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    };
    format!("http://{host}:{}", cfg.server.port)
}

/// `backbeat status`: asks the running engine and prints its answer.
async fn status(cfg: &Config, json: bool) -> ExitCode {
    let url = format!("{}/_/backbeat/api/status", api_base(cfg));
    let body = match get_status(cfg, &url).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("backbeat: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        println!("{}", String::from_utf8_lossy(&body));
        return ExitCode::SUCCESS;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            print!("{}", backbeat::api::status::render_table(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backbeat: the API at {url} answered something else than JSON: {e}");
            ExitCode::from(1)
        }
    }
}

/// `GET url` with the configured bearer token; the body of a 200.
async fn get_status(cfg: &Config, url: &str) -> Result<Bytes, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = hyper::Request::get(url);
    if let Some(token) = cfg.api_token() {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| format!("bad API address {url}: {e}"))?;
    let unreachable = |e: &dyn std::fmt::Display| {
        format!("cannot reach the engine's API at {url} (is `backbeat serve` running?): {e}")
    };
    let resp = match tokio::time::timeout(STATUS_TIMEOUT, client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(unreachable(&backbeat::error::chain(&e))),
        Err(_) => return Err(unreachable(&"no answer within 10 s")),
    };
    let code = resp.status();
    let body = match tokio::time::timeout(STATUS_TIMEOUT, resp.into_body().collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return Err(unreachable(&e)),
        Err(_) => return Err(unreachable(&"no answer within 10 s")),
    };
    if !code.is_success() {
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["description"].as_str().map(str::to_string))
            .unwrap_or_default();
        let hint = match code.as_u16() {
            401 => " (set [server] token or token_env as the engine has it)",
            403 => " (this address is outside the engine's [server] allow_from)",
            _ => "",
        };
        return Err(format!("the API at {url} answered {code}: {detail}{hint}"));
    }
    Ok(body)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
