//! The `backbeat` command: `serve`, `check-config`, `status`, `verify`, `--version`.
//!
//! Exit codes: 0 clean stop, 1 runtime failure (for `status`: the API could not be reached or
//! refused the request), 2 invalid configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use backbeat::app::Engine;
use backbeat::client::ApiClient;
use backbeat::config::Config;
use backbeat::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};

/// jemalloc gives memory back after a burst (a drain, a retention pass) where glibc's per-thread
/// arenas keep it: the idle RSS of the cost model (issue 12, DESIGN section 10).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Lets jemalloc purge freed memory from background threads, so an idle engine gives back
/// what a burst used instead of waiting for its next allocation.
fn allocator_purges_in_background() {
    #[cfg(all(target_os = "linux", not(target_env = "musl")))]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::debug!(error = %e, "jemalloc background purging unavailable");
    }
}

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
    /// Compares each site with its source, key by key, reading both sides directly (the
    /// engine may or may not be running). Prints one line per difference,
    /// `<kind> <site> <bucket>/<key> <detail>` (kinds: missing, extra, stale, corrupt), then a
    /// summary. Reading the replicas' scal-* metadata costs one HEAD per replica on S3 sites
    /// (Azure and file listings carry it); --deep also reads and hashes both sides of every
    /// replica. Exit 0 equal, 1 differences found, 2 invalid configuration or usage, 3 a side
    /// could not be read (or, with --repair, the engine's API could not be reached).
    Verify {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Only this site (repeatable).
        #[arg(long = "site", value_name = "NAME")]
        sites: Vec<String>,
        /// Only this source bucket (repeatable).
        #[arg(long = "bucket", value_name = "NAME")]
        buckets: Vec<String>,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// One JSON object per line (each difference, then {"summary": ...}).
        #[arg(long)]
        json: bool,
        /// Ask the running engine to queue missing, stale and corrupt versions again
        /// (POST crr/requeue) and delete extra replicas that are still the ones seen.
        #[arg(long)]
        repair: bool,
        /// Also read and hash both sides of every replica (reads every byte).
        #[arg(long)]
        deep: bool,
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
        /// Stop once this many records were acknowledged (default: never).
        #[arg(long)]
        records: Option<u64>,
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
            allocator_purges_in_background();
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
        Command::Verify {
            config,
            sites,
            buckets,
            prefix,
            json,
            repair,
            deep,
        } => {
            let cfg = match load(Some(&config)) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = backbeat::verify::Options {
                sites,
                buckets,
                prefix,
                json,
                repair,
                deep,
            };
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
            rt.block_on(verify(&cfg, &opts))
        }
        Command::LogTorture {
            path,
            first,
            durability,
            records,
        } => {
            telemetry::init(cli.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return ExitCode::from(1),
            };
            match rt.block_on(backbeat::testkit::log_torture(
                &path,
                first,
                &durability,
                records,
            )) {
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
    // Before the engine starts: a stop asked as soon as it answers is a drain, not a kill.
    let mut signals = StopSignals::listen();
    let engine = match Engine::start_default_clock(cfg).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %backbeat::error::chain(&e), "Backbeat failed to start.");
            return ExitCode::from(1);
        }
    };
    let token = engine.shutdown_token();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("Stop requested; draining (send the signal again to stop at once).");
        token.cancel();
        signals.next().await;
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

/// `backbeat verify`: compares and prints; the exit code says what it found.
async fn verify(cfg: &Config, opts: &backbeat::verify::Options) -> ExitCode {
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    match backbeat::verify::Verifier::new(cfg, opts, &mut out, &mut err) {
        Ok(v) => ExitCode::from(v.run().await.exit_code()),
        Err(e) => {
            eprintln!("backbeat verify: {e}");
            ExitCode::from(2)
        }
    }
}

/// `backbeat status`: asks the running engine and prints its answer.
async fn status(cfg: &Config, json: bool) -> ExitCode {
    let client = ApiClient::new(cfg);
    let body = match client.get("status").await {
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
            eprintln!(
                "backbeat: the API at {} answered something else than JSON: {e}",
                client.url("status")
            );
            ExitCode::from(1)
        }
    }
}

/// SIGTERM and SIGINT, listened to from the moment this is made: a signal that comes before
/// anything waits on it is kept for [`StopSignals::next`] instead of killing the process at
/// once (a service manager may stop the engine right after it starts answering).
struct StopSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn listen() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                streams: signal(SignalKind::terminate())
                    .and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// The next stop signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = self.streams.as_mut() {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
