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
use backbeat::model::{ReplicationInfo, ReplicationStatus, VersionRef};
use backbeat::store::{Metric, StoreOp, METRICS_BUCKET_MS};

const FAILED: u64 = 10_000;
const SITES: [&str; 2] = ["site1", "site2"];
const HOUR_MS: u64 = 3_600_000;

/// 10,000 failed versions (site1 and site2 alternately) over the last 24 hours, with their
/// replication info, and one metric sample of each kind per 5-minute bucket for each site.
async fn seed(engine: &Engine) {
    let store = &engine.store;
    let now = store.now_ms();
    let names: Vec<String> = SITES.iter().map(|s| s.to_string()).collect();
    let mut ops = Vec::new();
    for i in 0..FAILED {
        let site = SITES[(i % 2) as usize];
        let version = VersionRef::new("bench", format!("dir-{}/key-{i}", i % 97), format!("v{i}"));
        let mut info = ReplicationInfo::pending(&names);
        info.size = 1024 + i;
        info.last_modified = "2026-11-26T00:00:00.000Z".into();
        info.set_site_status(site, ReplicationStatus::Failed, None);
        ops.push(StoreOp::PutReplication {
            version: version.clone(),
            info,
        });
        ops.push(StoreOp::AddFailed {
            site: site.into(),
            version,
            // Spread evenly over 24 hours, newest first.
            score_ms: now - (i * 24 * HOUR_MS / FAILED),
        });
        if ops.len() >= 1000 {
            assert!(store.apply(vec![], std::mem::take(&mut ops)).await.unwrap());
        }
    }
    for site in SITES {
        let mut at = now;
        for b in 0..(24 * HOUR_MS / METRICS_BUCKET_MS) {
            for (m, v) in [
                (Metric::Ops, 40 + b),
                (Metric::Bytes, 40_960 + b),
                (Metric::OpsDone, 35 + b),
                (Metric::BytesDone, 35_840 + b),
                (Metric::OpsFail, 1),
                (Metric::BytesFail, 1024),
            ] {
                ops.push(StoreOp::AddMetric {
                    site: site.into(),
                    metric: m,
                    value: v,
                    at_ms: at,
                });
            }
            at -= METRICS_BUCKET_MS;
        }
        ops.push(StoreOp::AddPending {
            site: site.into(),
            ops: 12,
            bytes: 12_288,
        });
        assert!(store.apply(vec![], std::mem::take(&mut ops)).await.unwrap());
    }
}

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
        seed(&engine).await;
        engine
    });
    let base = format!("http://{}/_/backbeat/api", engine.api_addr);
    println!(
        "wrk -t2 -c64 -d{secs}s, store: {FAILED} failed entries over 24 h, 288 metric buckets x 2 sites"
    );
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
