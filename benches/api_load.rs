//! API load (issues 4 and 17): `wrk` (2 threads, 64 connections, 10 s) against the healthcheck
//! (the anchor), the CRR metrics of every site, the first page of a site's failed listing and
//! the Prometheus exposition, while the store holds 10,000 failed entries (2 sites, each with
//! its `Reason` and `LastError`) spread over 24 hours, a day of metric buckets for both sites,
//! and the observer has lag histograms to export. The engine runs in this process on a 2-worker
//! runtime, so it shares the machine's two cores with wrk. Prints requests/s, the latency
//! percentiles wrk reports and each route's ratio to the healthcheck measured in the same run.
//!
//! `cargo bench --bench api_load` (needs `wrk` on the PATH: `apt-get install wrk`; without it
//! the bench says so and does nothing). `BACKBEAT_BENCH_WRK_SECS` changes the duration,
//! `BACKBEAT_BENCH_ROUTES` picks routes (see `main`). The
//! store is seeded through `benches/support/seed.rs`, bench code: the release binary has no
//! seeding command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/seed.rs"]
mod seed;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use backbeat::app::Engine;
use backbeat::clock::SystemClock;
use backbeat::config::Config;

const FAILED_PER_SITE: u64 = 5_000;
const SITES: [&str; 2] = ["site1", "site2"];
/// Lag observations per site, so the histograms have every bucket filled.
const LAG_SAMPLES: u64 = 2_000;

/// Requests/s and the latency percentiles from wrk's `--latency` output.
fn summary(out: &str) -> (f64, String) {
    let pick = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let non2xx = pick("Non-2xx");
    let rps = pick("Requests/sec:");
    (
        rps.parse().unwrap_or(0.0),
        format!(
            "{rps:>10} req/s  p50 {:>8}  p99 {:>8}  errors(non-2xx) {}",
            pick("50%"),
            pick("99%"),
            if non2xx == "?" { "0".into() } else { non2xx }
        ),
    )
}

/// One plain HTTP/1.1 GET; the body.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap()
}

/// Checks that the routes answer what the bench claims to measure: a full page of failed
/// entries with the operator's fields, and the same failure counts in REST and Prometheus.
fn check_routes(addr: SocketAddr) {
    let page: serde_json::Value =
        serde_json::from_str(&get(addr, "/_/backbeat/api/crr/failed?sitename=site1")).unwrap();
    let versions = page["Versions"].as_array().unwrap();
    assert_eq!(versions.len(), 100, "a full first page");
    assert!(versions
        .iter()
        .all(|v| v["Reason"].is_string() && v["LastError"].is_string()));
    let rest: serde_json::Value =
        serde_json::from_str(&get(addr, "/_/backbeat/api/metrics/crr/site1")).unwrap();
    let prom = get(addr, "/_/backbeat/api/monitoring/metrics");
    let line = format!(
        "s3_replication_failed_objects_24h{{location=\"site1\"}} {}",
        rest["failures"]["results"]["count"]
    );
    assert!(
        prom.lines().any(|l| l == line),
        "REST and Prometheus disagree"
    );
    assert!(prom.contains("backbeat_replication_lag_seconds_bucket{site=\"site1\",le=\"+Inf\"}"));
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run only on bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("api_load: `wrk` is not installed (apt-get install wrk); nothing measured.");
        return;
    }
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
        let n = seed::seed_load(engine.store.as_ref(), &sites, FAILED_PER_SITE)
            .await
            .expect("seed");
        // Lags from 0.2 s to 2,000 s, so every histogram bucket has samples.
        for s in &sites {
            for i in 0..LAG_SAMPLES {
                let lag = std::time::Duration::from_millis(200 + i * i / 2);
                engine.observer.completed(s, 4096, Some(lag));
            }
        }
        println!(
            "store: {n} failed entries over 24 h, 288 metric buckets x {} sites, {LAG_SAMPLES} lags per site",
            sites.len()
        );
        engine
    });
    check_routes(engine.api_addr);
    let base = format!("http://{}/_/backbeat/api", engine.api_addr);
    println!("wrk -t2 -c64 -d{secs}s, engine on a 2-worker runtime in this process");
    let mut anchor = None;
    // `BACKBEAT_BENCH_ROUTES=failed,monitoring` measures only the routes containing one of
    // the words (the healthcheck anchor always runs first), e.g. to profile one of them.
    let only: Vec<String> = std::env::var("BACKBEAT_BENCH_ROUTES")
        .map(|r| r.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    for route in [
        "healthcheck",
        "metrics/crr/all",
        "crr/failed?sitename=site1",
        "monitoring/metrics",
    ]
    .into_iter()
    .filter(|r| {
        *r == "healthcheck" || only.is_empty() || only.iter().any(|w| r.contains(w.as_str()))
    }) {
        let out = Command::new("wrk")
            .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency"])
            .arg(format!("{base}/{route}"))
            .output()
            .expect("wrk runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let (rps, line) = summary(&text);
        let anchor_rps = *anchor.get_or_insert(rps);
        let ratio = if anchor_rps > 0.0 {
            rps / anchor_rps
        } else {
            0.0
        };
        println!("{route:<28} {line}  ratio to healthcheck {ratio:.2}");
    }
    rt.block_on(engine.stop());
}
