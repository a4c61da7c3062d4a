//! API load (issue 4): `wrk` (2 threads, 64 connections, 10 s) against the healthcheck, the
//! CRR metrics of every site, the first page of a site's failed listing and the Prometheus
//! exposition, while the store holds 10,000 failed entries spread over 24 hours and a day of
//! metric buckets for two sites. Prints requests/s and the latency percentiles wrk reports.
//!
//! `cargo bench --bench api_load` (needs `wrk` on the PATH, e.g. Debian's `wrk` package; without
//! it the bench says so and does nothing). `BACKBEAT_BENCH_WRK_SECS` changes the duration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use backbeat::app::Engine;
use backbeat::clock::SystemClock;
use backbeat::config::Config;
use backbeat::testkit::seed_load;

const FAILED_PER_SITE: u64 = 5_000;
const SITES: [&str; 2] = ["site1", "site2"];

/// Requests/s and the latency percentiles from wrk's `--latency` output.
fn summary(out: &str) -> String {
    let pick = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let non2xx = pick("Non-2xx");
    format!(
        "{:>10} req/s  p50 {:>8}  p99 {:>8}  errors(non-2xx) {}",
        pick("Requests/sec:"),
        pick("50%"),
        pick("99%"),
        if non2xx == "?" { "0".into() } else { non2xx }
    )
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("api_load: `wrk` is not installed; nothing measured.");
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument is not used here.
    let secs = std::env::var("BACKBEAT_BENCH_WRK_SECS").unwrap_or_else(|_| "10".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut toml = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\n[storage]\npath = {:?}\n",
        dir.path().join("data").display().to_string()
    );
    for s in SITES {
        toml.push_str(&format!(
            "[[sites]]\nname = \"{s}\"\ntype = \"file\"\npath = {:?}\n",
            dir.path().join(s).display().to_string()
        ));
    }
    let config = Config::parse(&toml).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = rt.block_on(async {
        let engine = Engine::start(config, std::sync::Arc::new(SystemClock))
            .await
            .expect("engine");
        let sites: Vec<String> = SITES.iter().map(|s| s.to_string()).collect();
        let n = seed_load(engine.store.as_ref(), &sites, FAILED_PER_SITE)
            .await
            .expect("seed");
        println!(
            "store: {n} failed entries over 24 h, 288 metric buckets x {} sites",
            sites.len()
        );
        engine
    });
    let base = format!("http://{}/_/backbeat/api", engine.api_addr);
    println!("wrk -t2 -c64 -d{secs}s");
    for route in [
        "healthcheck",
        "metrics/crr/all",
        "crr/failed?sitename=site1",
        "monitoring/metrics",
    ] {
        let out = Command::new("wrk")
            .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency"])
            .arg(format!("{base}/{route}"))
            .output()
            .expect("wrk runs");
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{route:<28} {}", summary(&text));
    }
    rt.block_on(engine.stop());
}
