//! The `backbeat` command: `serve`, `check-config`, `--version`.
//!
//! Exit codes: 0 clean stop, 1 runtime failure, 2 invalid configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use backbeat::app::Engine;
use backbeat::config::Config;
use backbeat::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};

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
