//! Live replication lag (issue 13, DESIGN section 5) through the release binary: files written
//! into a running engine's inbox at a steady rate, on default settings (the watch live, rescans
//! as the safety net), and the time from each file's close to its replica being visible at a
//! file site and at an S3 site (s3s-fs), as p50 / p99 / max. The engine's own lag histogram
//! (`metrics/crr/<site>/lag`, source write time to COMPLETED) is printed beside it.
//!
//! `cargo bench --bench lag`. `BENCH_LAG_RATES` (files per second, default `50,500`),
//! `BENCH_LAG_SECONDS` per rate (default 20). The S3 site needs s3s-fs 0.14.1:
//! `BACKBEAT_BENCH_S3S` names it, else `/work/.peers-bench/bin/s3s-fs` or
//! `$BACKBEAT_PEERS_DIR/cargo/bin/s3s-fs` (`cargo install s3s-fs@0.14.1 --locked --features
//! binary --root <dir>`); without it only the file site is measured. Replicas are looked for
//! every 2 ms, which bounds the resolution.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/engine.rs"]
mod engine;
use engine::{free_port, get, start_s3s, Proc};

const DEFAULT_S3S: &str = "/work/.peers-bench/bin/s3s-fs";
const POLL: Duration = Duration::from_millis(2);

fn s3s_bin() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("BACKBEAT_BENCH_S3S") {
        candidates.push(p.into());
    }
    candidates.push(DEFAULT_S3S.into());
    if let Some(p) = std::env::var_os("BACKBEAT_PEERS_DIR") {
        candidates.push(PathBuf::from(p).join("cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One run at `rate` files/s for `secs`: per site, the lag of each file in ms.
fn run(rate: u64, secs: u64, s3s: Option<&Path>) {
    let tmp = tempfile::tempdir().unwrap();
    let inbox = tmp.path().join("inbox");
    let site = tmp.path().join("site");
    std::fs::create_dir_all(&inbox).unwrap();
    let shm = Path::new("/dev/shm");
    let s3_root = if shm.is_dir() {
        shm.join(format!("backbeat-lag-{}-{rate}", std::process::id()))
    } else {
        tmp.path().join("s3s")
    };
    let s3 = s3s.map(|bin| start_s3s(bin, &s3_root));
    let port = free_port();
    let mut cfg = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = {port}\n[storage]\npath = \"{}\"\n[source]\ntype = \"file\"\npath = \"{}\"\n[[sites]]\nname = \"local\"\ntype = \"file\"\npath = \"{}\"\n",
        tmp.path().join("data").display(),
        inbox.display(),
        site.display()
    );
    let mut sites = vec!["local"];
    if let Some((_, p)) = &s3 {
        cfg.push_str(&format!(
            "[[sites]]\nname = \"s3\"\ntype = \"aws_s3\"\nendpoint = \"http://127.0.0.1:{p}\"\nbucket = \"replica\"\naccess_key = \"AK\"\nsecret_key = \"SK\"\npath_style = true\n"
        ));
        sites.push("s3");
    }
    let names: Vec<String> = sites.iter().map(|s| format!("\"{s}\"")).collect();
    cfg.push_str(&format!(
        "[[replication.rules]]\nbucket = \"inbox\"\nsites = [{}]\n",
        names.join(", ")
    ));
    let cfg_path = tmp.path().join("backbeat.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let _engine = Proc(
        Command::new(env!("CARGO_BIN_EXE_backbeat"))
            .args(["serve", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while get(port, "healthcheck").map(|(s, _)| s) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "engine did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Where each site's replica of `key` appears.
    let roots: Vec<PathBuf> = sites
        .iter()
        .map(|s| match *s {
            "local" => site.join("inbox"),
            _ => s3_root.join("replica").join("inbox"),
        })
        .collect();
    let n = (rate * secs) as usize;
    // (written at, seen at per site)
    let written: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let done = Arc::new(AtomicBool::new(false));
    let key = |i: usize| format!("d{:02}/f{i:06}", i % 20);
    let poller = {
        let (written, done, roots) = (written.clone(), done.clone(), roots.clone());
        std::thread::spawn(move || {
            let mut seen: Vec<Vec<Option<Instant>>> = vec![vec![None; n]; roots.len()];
            let mut next = vec![0usize; roots.len()];
            let deadline_after_writes = Duration::from_secs(60);
            let mut writes_done: Option<Instant> = None;
            loop {
                let w: Vec<Option<Instant>> = written.lock().unwrap().clone();
                for (s, root) in roots.iter().enumerate() {
                    // Files still missing, from the oldest not seen.
                    while next[s] < n && seen[s][next[s]].is_some() {
                        next[s] += 1;
                    }
                    for i in next[s]..n {
                        if w[i].is_none() {
                            break;
                        }
                        if seen[s][i].is_none() && root.join(key(i)).exists() {
                            seen[s][i] = Some(Instant::now());
                        }
                    }
                }
                let all = seen.iter().all(|v| v.iter().all(Option::is_some));
                if done.load(Ordering::SeqCst) {
                    let t = *writes_done.get_or_insert_with(Instant::now);
                    if all || t.elapsed() > deadline_after_writes {
                        return (w, seen);
                    }
                }
                std::thread::sleep(POLL);
            }
        })
    };
    let t0 = Instant::now();
    let body = vec![b'x'; 4096];
    for i in 0..n {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let p = inbox.join(key(i));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&body).unwrap();
        drop(f);
        written.lock().unwrap()[i] = Some(Instant::now());
    }
    done.store(true, Ordering::SeqCst);
    let (w, seen) = poller.join().unwrap();
    for (s, name) in sites.iter().enumerate() {
        let mut lags: Vec<f64> = (0..n)
            .filter_map(|i| Some(seen[s][i]?.duration_since(w[i]?).as_secs_f64() * 1000.0))
            .collect();
        lags.sort_by(|a, b| a.total_cmp(b));
        let missing = n - lags.len();
        let engine = get(port, &format!("metrics/crr/{name}/lag"))
            .map(|(_, b)| b)
            .unwrap_or_default();
        println!(
            "lag: {rate} files/s for {secs} s ({n} files), site {name}: write -> replica visible p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}; engine's lag metric: {}",
            percentile(&lags, 0.5),
            percentile(&lags, 0.99),
            lags.last().copied().unwrap_or(f64::NAN),
            if missing > 0 {
                format!(", {missing} not seen within 60 s")
            } else {
                String::new()
            },
            engine.trim()
        );
    }
    drop(s3);
    let _ = std::fs::remove_dir_all(&s3_root);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run only on bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rates: Vec<u64> = std::env::var("BENCH_LAG_RATES")
        .unwrap_or_else(|_| "50,500".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let secs = std::env::var("BENCH_LAG_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let s3s = s3s_bin();
    if s3s.is_none() {
        println!("lag: no s3s-fs found (see the module doc): the file site only");
    }
    for rate in rates {
        run(rate, secs, s3s.as_deref());
    }
}
