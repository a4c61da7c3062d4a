//! Bandwidth limits per site (issue 16 item 6, DESIGN sections 6 and 7), against the real
//! binary with a directory source and directory sites:
//! - a 12 MiB copy to a site limited to 2 MiB/s takes at least 5 s, while the same copy to an
//!   unlimited site does not wait for it, and a small version queued behind the large one
//!   reaches the limited site before the large one is done (large copies do not starve small
//!   ones);
//! - a limit set through `POST crr/bandwidth/<site>` applies to the next copies, is read back by
//!   `GET crr/bandwidth`, survives a restart (stored, it wins over the configuration) and goes
//!   with `DELETE`, after which the configured limit applies again;
//! - small files (read and written in one call on the way from a directory to a file site)
//!   pass through the limit too: 384 KiB in 24 files to a site limited to 64 KiB/s take at
//!   least 4 s, and arrive whole;
//! - a `bandwidth` that does not parse is a configuration problem naming the site.
//!
//! How fast a limited copy goes is a bench's business: these only check lower bounds, which a
//! loaded machine cannot break.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backbeat::bandwidth::Bandwidth;
use backbeat::config::{Config, ConfigError};
use common::api::request;
use failures_support::{api_of, get_json};
use pipeline_support::*;
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

/// A `[[sites]]` block of a file site with a `bandwidth` line.
fn limited_site(name: &str, path: &Path, bandwidth: &str) -> String {
    file_site(name, path) + &format!("bandwidth = \"{bandwidth}\"\n")
}

/// Where the file site at `root` keeps the replica of `key` of the source bucket `inbox`.
fn replica(root: &Path, key: &str) -> PathBuf {
    root.join("inbox").join(key)
}

/// Waits (at most `limit`) until `path` exists; returns when it was seen.
fn wait_file(path: &Path, limit: Duration) -> Instant {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Instant::now()
}

struct Setup {
    dir: tempfile::TempDir,
    src: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("inbox");
        std::fs::create_dir_all(&src).unwrap();
        Setup { dir, src }
    }

    fn site_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Writes the configuration with `sites` (all in one rule) and `mpu_threshold_mb`.
    fn config(&self, sites: &str, names: &[&str], mpu_threshold_mb: u32) -> PathBuf {
        let text = config(
            &self.dir.path().join("data"),
            &self.src,
            sites,
            &rule("inbox", "", names, true),
            "",
        )
        .replace(
            "mpu_threshold_mb = 20",
            &format!("mpu_threshold_mb = {mpu_threshold_mb}"),
        );
        write_config(self.dir.path(), &text)
    }
}

#[test]
fn a_limited_copy_takes_its_time_while_small_ones_and_other_sites_keep_flowing() {
    let s = Setup::new();
    let (slow, fast) = (s.site_dir("slow"), s.site_dir("fast"));
    let sites = limited_site("slow", &slow, "2MiB/s") + &file_site("fast", &fast);
    // 12 MiB is above 10 MB: the limited copy goes by multipart (each part's body is limited
    // as a single PUT's is; the small one goes as a single PUT).
    let cfg = s.config(&sites, &["slow", "fast"], 10);
    let engine = EngineProc::start(&cfg, s.dir.path());

    let large = bytes_for(1, 12 * MIB);
    let started = Instant::now();
    put_file(&s.src, "large.bin", &large);
    // The unlimited site does not wait for the limited one.
    wait_file(&replica(&fast, "large.bin"), Duration::from_secs(30));
    let fast_done = started.elapsed();

    // A small version queued behind the large copy reaches the limited site while the large
    // copy still runs (it would wait about 6 s behind it in a plain queue).
    std::thread::sleep(Duration::from_millis(300));
    let queued = Instant::now();
    put_file(&s.src, "small.txt", b"small");
    let small_at = wait_file(&replica(&slow, "small.txt"), Duration::from_secs(30));
    let small_took = small_at - queued;
    assert!(
        !replica(&slow, "large.bin").exists(),
        "the large copy ended before the small one arrived ({small_took:?}); the limit did not hold"
    );
    assert!(
        small_took < Duration::from_secs(4),
        "the small version took {small_took:?} behind the large copy"
    );

    let large_at = wait_file(&replica(&slow, "large.bin"), Duration::from_secs(60));
    let took = large_at - started;
    assert!(
        took >= Duration::from_secs(5),
        "12 MiB at 2 MiB/s took only {took:?}"
    );
    assert!(
        fast_done < took,
        "unlimited {fast_done:?}, limited {took:?}"
    );
    assert_eq!(std::fs::read(replica(&slow, "large.bin")).unwrap(), large);
    assert_eq!(
        std::fs::read(replica(&slow, "small.txt")).unwrap(),
        b"small"
    );
    assert!(engine.stop().success());
}

#[test]
fn small_files_copied_in_one_call_are_limited_too() {
    let s = Setup::new();
    let (slow, fast) = (s.site_dir("slow"), s.site_dir("fast"));
    let sites = limited_site("slow", &slow, "64KiB/s") + &file_site("fast", &fast);
    let cfg = s.config(&sites, &["slow", "fast"], 10);
    let engine = EngineProc::start(&cfg, s.dir.path());
    let files: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| (format!("small-{i:02}.bin"), bytes_for(i, 16 * 1024)))
        .collect();
    let started = Instant::now();
    for (key, body) in &files {
        put_file(&s.src, key, body);
    }
    for (key, _) in &files {
        wait_file(&replica(&fast, key), Duration::from_secs(30));
    }
    for (key, _) in &files {
        wait_file(&replica(&slow, key), Duration::from_secs(60));
    }
    let took = started.elapsed();
    // 384 KiB at 64 KiB/s is 6 s; the bucket lets a tenth of a second (and one piece) pass
    // at once.
    assert!(
        took >= Duration::from_secs(4),
        "384 KiB at 64 KiB/s took only {took:?}"
    );
    for (key, body) in &files {
        assert_eq!(&std::fs::read(replica(&slow, key)).unwrap(), body);
        assert_eq!(&std::fs::read(replica(&fast, key)).unwrap(), body);
    }
    assert!(engine.stop().success());
}

async fn post_limit(api: SocketAddr, route: &str, limit: &str) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({ "limit": limit })).unwrap();
    let r = request(
        api,
        "POST",
        &format!("/_/backbeat/api/{route}"),
        Some(&body),
    )
    .await;
    (r.status, r.json())
}

/// Writes `key` (`len` bytes) and returns how long it took to reach the site at `root`.
fn copy_time(src: &Path, root: &Path, key: &str, len: usize) -> Duration {
    let data = bytes_for(len as u64, len);
    let start = Instant::now();
    put_file(src, key, &data);
    let at = wait_file(&replica(root, key), Duration::from_secs(60));
    assert_eq!(std::fs::read(replica(root, key)).unwrap(), data);
    at - start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_set_through_the_api_applies_survives_a_restart_and_can_be_removed() {
    let s = Setup::new();
    let (a, b) = (s.site_dir("site-a"), s.site_dir("site-b"));
    let sites = limited_site("site-a", &a, "off") + &limited_site("site-b", &b, "512KiB/s");
    let cfg = s.config(&sites, &["site-a", "site-b"], 20);
    let engine = EngineProc::start(&cfg, s.dir.path());
    let api = api_of(&engine);

    let off = json!({"limit": "off", "current": "off", "bytesPerSecond": null,
        "origin": "configuration"});
    let configured_b = json!({"limit": "512KiB/s", "current": "512KiB/s",
        "bytesPerSecond": 524_288, "origin": "configuration"});
    assert_eq!(
        get_json(api, "/_/backbeat/api/crr/bandwidth").await,
        json!({"site-a": off, "site-b": configured_b})
    );

    // Refused: a limit that does not parse, a body without one, an unknown site.
    let (status, err) = post_limit(api, "crr/bandwidth/site-a", "10MB/s").await;
    assert_eq!(status, 400);
    assert_eq!(err["MalformedPOSTRequest"], true);
    assert!(
        err["description"].as_str().unwrap().contains("ambiguous"),
        "{err}"
    );
    let r = request(api, "POST", "/_/crr/bandwidth/site-a", Some(b"{}")).await;
    assert_eq!(r.status, 400);
    assert_eq!(post_limit(api, "crr/bandwidth/nope", "1MiB/s").await.0, 404);

    // A timetable whose one entry always applies; then a plain rate, read back.
    let (status, set) = post_limit(api, "crr/bandwidth/site-a", "00:00,3M").await;
    assert_eq!(status, 200);
    assert_eq!(
        set,
        json!({"site-a": {"limit": "00:00,3MiB/s", "current": "3MiB/s",
            "bytesPerSecond": 3 * MIB, "origin": "api"}})
    );
    let (status, _) = post_limit(api, "crr/bandwidth/site-a", "2MiB/s").await;
    assert_eq!(status, 200);
    let limited = json!({"limit": "2MiB/s", "current": "2MiB/s", "bytesPerSecond": 2 * MIB,
        "origin": "api"});
    assert_eq!(
        get_json(api, "/_/crr/bandwidth/site-a").await,
        json!({"site-a": limited})
    );

    // It applies to the next copy: 6 MiB at 2 MiB/s.
    let took = copy_time(&s.src, &a, "one.bin", 6 * MIB);
    assert!(took >= Duration::from_millis(2_500), "6 MiB took {took:?}");

    // Stored: it survives a restart and wins over the configured "off".
    assert!(engine.stop().success());
    let engine = EngineProc::start(&cfg, s.dir.path());
    let api = api_of(&engine);
    assert_eq!(
        get_json(api, "/_/crr/bandwidth/all").await,
        json!({"site-a": limited, "site-b": configured_b})
    );
    let took = copy_time(&s.src, &a, "two.bin", 6 * MIB);
    assert!(
        took >= Duration::from_millis(2_500),
        "6 MiB took {took:?} after the restart"
    );

    // Removed: the configuration applies again, for every site at once with `all`.
    let (status, _) = post_limit(api, "crr/bandwidth", "1MiB/s").await;
    assert_eq!(status, 200);
    assert_eq!(
        get_json(api, "/_/crr/bandwidth/site-b").await["site-b"]["origin"],
        "api"
    );
    let r = request(api, "DELETE", "/_/backbeat/api/crr/bandwidth/all", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"site-a": off, "site-b": configured_b}));
    copy_time(&s.src, &a, "three.bin", MIB);
    assert!(engine.stop().success());
    let engine = EngineProc::start(&cfg, s.dir.path());
    assert_eq!(
        get_json(api_of(&engine), "/_/crr/bandwidth").await,
        json!({"site-a": off, "site-b": configured_b})
    );
    assert!(engine.stop().success());
}

#[test]
fn a_bandwidth_that_does_not_parse_is_a_problem_naming_the_site() {
    let site = |bw: &str| {
        format!("[[sites]]\nname = \"edge-1\"\ntype = \"file\"\npath = \"/tmp/r\"\nbandwidth = \"{bw}\"\n")
    };
    for (bad, why) in [
        ("10MB/s", "ambiguous"),
        ("10", "no unit"),
        ("25:00,1M", "time of day"),
        ("08:00,1M 08:00,off", "same time"),
        ("0KiB/s", "below 1KiB/s"),
    ] {
        let Err(ConfigError::Invalid(p)) = Config::parse(&site(bad)) else {
            panic!("{bad:?} accepted");
        };
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("site \"edge-1\".bandwidth: ") && p[0].contains(why),
            "{p:?}"
        );
    }
    let cfg = Config::parse(&site("Mon-08:00,10MiB/s 19:00,off")).unwrap();
    assert_eq!(
        cfg.sites[0].bandwidth.to_string(),
        "Mon-08:00,10MiB/s 19:00,off"
    );
    let cfg = Config::parse(&site("50M").replace("bandwidth = \"50M\"\n", "")).unwrap();
    assert_eq!(cfg.sites[0].bandwidth, Bandwidth::Off);
}
