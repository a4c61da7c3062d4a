//! Failures never lose work (issue 5), against the real binary with file sites: a site that
//! dies (its directory disappears: every write is a transient error) and comes back, a site
//! with a permanent error, pause/resume across restarts, a scheduled resume across a restart,
//! and `kill -9` while entries are retried and replayed.
//!
//! These variants use file sites because a file site's failures can be made deterministic: a
//! site whose root directory is renamed away answers ENOENT (transient) on every write, one
//! whose root is replaced by a regular file answers ENOTDIR (permanent), and a dead site can
//! come back at any instant without a server to restart. `failures_s3.rs` has the real-peer
//! variants (an S3 site on moto, an Azure site on Azurite).

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backbeat::source::file::version_id_of;
use common::api::request;
use failures_support::*;
use pipeline_support::*;
use serde_json::{json, Value};

/// A configuration with the given retry block.
fn failure_config(data: &Path, src: &Path, sites: &[(&str, &Path)], retry: &str) -> String {
    let blocks: String = sites.iter().map(|(n, p)| file_site(n, p)).collect();
    let names: Vec<&str> = sites.iter().map(|(n, _)| *n).collect();
    let bucket = src.file_name().unwrap().to_str().unwrap();
    config_with_retry(
        data,
        src,
        &blocks,
        &rule(bucket, "", &names, true),
        "",
        retry,
    )
}

const FAST_RETRY: &str =
    "max_retries = 3\ntimeout_s = 2\nbackoff_min_ms = 50\nbackoff_max_ms = 200\nreplay = 2\n";

fn key(i: usize) -> String {
    format!("obj-{i:04}")
}

fn body(i: usize) -> Vec<u8> {
    bytes_for(i as u64 + 11, 4096 + i)
}

/// Where the replica of key `i` lives at the site directory `dir`: under the source bucket
/// (DESIGN 3, "Where a replica lives").
fn replica_path(dir: &Path, i: usize) -> PathBuf {
    dir.join("bkt").join(key(i))
}

/// Replicas of keys `range` present and equal at the site directory `dir`.
fn replicas(dir: &Path, range: std::ops::Range<usize>) -> usize {
    range
        .filter(|&i| {
            std::fs::read(replica_path(dir, i))
                .map(|d| d == body(i))
                .unwrap_or(false)
        })
        .count()
}

fn put_objects(src: &Path, range: std::ops::Range<usize>) {
    for i in range {
        put_file(src, &key(i), &body(i));
    }
}

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    data: PathBuf,
    a: PathBuf,
    b: PathBuf,
    logs: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let d = Dirs {
        src: root.join("bkt"),
        data: root.join("data"),
        a: root.join("site-a"),
        b: root.join("site-b"),
        logs: root.join("logs"),
        root,
        _tmp: tmp,
    };
    for p in [&d.src, &d.a, &d.b, &d.logs] {
        std::fs::create_dir_all(p).unwrap();
    }
    d
}

/// The configuration of sites A and B in `d` with the retry block `retry`, written to disk.
fn ab_config(d: &Dirs, retry: &str) -> PathBuf {
    let cfg = failure_config(&d.data, &d.src, &[("A", &d.a), ("B", &d.b)], retry);
    write_config(&d.root, &cfg)
}

/// Time for site B to receive `range` once it is put, with or without site A dead.
async fn run_b_timing(a_dead: bool) -> (Duration, Dirs, EngineProc) {
    let d = dirs();
    let cfg_path = ab_config(&d, FAST_RETRY);
    let e = EngineProc::start(&cfg_path, &d.logs);
    put_objects(&d.src, 0..34);
    wait_until(
        "the first third at A and B",
        Duration::from_secs(60),
        || replicas(&d.a, 0..34) == 34 && replicas(&d.b, 0..34) == 34,
    );
    if a_dead {
        std::fs::rename(&d.a, d.root.join("site-a.dead")).unwrap();
    }
    let t0 = Instant::now();
    put_objects(&d.src, 34..100);
    wait_until("B complete", Duration::from_secs(60), || {
        replicas(&d.b, 0..100) == 100
    });
    (t0.elapsed(), d, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_site_ends_failed_then_retry_completes_and_other_site_is_not_slowed() {
    // Baseline: both sites alive.
    let (alive, _d0, e0) = run_b_timing(false).await;
    assert!(e0.stop().success());

    let (dead, d, e) = run_b_timing(true).await;
    let api = api_of(&e);
    eprintln!(
        "B's time for 66 objects: A alive {alive:?}, A dead {dead:?} (ratio {:.2})",
        dead.as_secs_f64() / alive.as_secs_f64()
    );

    // A's missing entries end FAILED, after their retries and replays.
    wait_for(
        "A's entries all FAILED",
        Duration::from_secs(120),
        || async { failed_list(api, "A").await.len() == 66 },
    )
    .await;
    let failed = failed_list(api, "A").await;
    let keys: HashSet<String> = failed
        .iter()
        .map(|v| v["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 66, "no duplicates in the failed set");
    assert_eq!(keys, (34..100).map(key).collect::<HashSet<_>>());
    assert_eq!(metric(api, "A", "failures").await, 66);
    assert_eq!(metric(api, "A", "backlog").await, 0);
    assert_eq!(metric(api, "A", "pending").await, 0);
    assert_eq!(metric(api, "A", "completions").await, 34);
    assert_eq!(metric(api, "B", "completions").await, 100);
    assert_eq!(metric(api, "B", "failures").await, 0);
    let retries = prom(api, "backbeat_replication_retries_total", "A").await;
    let replays = prom(api, "backbeat_replication_replays_total", "A").await;
    // Each entry: 1 + 2 replays rounds of 3 attempts.
    assert_eq!(replays, 66 * 2, "replays");
    assert_eq!(retries, 66 * 3 * 2, "retries");
    eprintln!(
        "requests to A while down: {} attempts ({} rounds, {retries} retries)",
        66 * 3 + retries,
        66 * 3
    );
    assert_eq!(
        prom(api, "backbeat_replication_retries_total", "B").await,
        0
    );
    let log = strip_ansi(&e.log());
    assert!(log.contains("Retrying a copy after a transient error."));
    assert!(log.contains("Replication failed."));

    // A comes back; the failed entries are retried through the API.
    std::fs::rename(d.root.join("site-a.dead"), &d.a).unwrap();
    let body: Vec<Value> = failed
        .iter()
        .map(|v| {
            json!({"Bucket": v["Bucket"], "Key": v["Key"], "VersionId": v["VersionId"],
                   "StorageClass": "A"})
        })
        .collect();
    let answer = post(api, "/_/crr/failed", &Value::Array(body)).await;
    assert_eq!(answer.as_array().map(Vec::len), Some(66), "{answer}");
    wait_until(
        "A complete after the retry",
        Duration::from_secs(60),
        || replicas(&d.a, 0..100) == 100,
    );
    wait_for("failed list empty", Duration::from_secs(30), || async {
        failed_list(api, "A").await.is_empty() && metric(api, "A", "completions").await == 100
    })
    .await;
    assert_eq!(metric(api, "A", "failures").await, 0);
    assert_eq!(metric(api, "A", "backlog").await, 0);
    assert_eq!(metric(api, "A", "pending").await, 0);
    // B was not touched by A's retry: still exactly 100 completions.
    assert_eq!(metric(api, "B", "completions").await, 100);
    assert!(e.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_error_fails_at_once_without_retries() {
    let d = dirs();
    // A long retry budget: a permanent error must not wait for it.
    let retry = "max_retries = 5\ntimeout_s = 900\nbackoff_min_ms = 60000\nbackoff_max_ms = 900000\nreplay = 5\n";
    let cfg_path = ab_config(&d, retry);
    let e = EngineProc::start(&cfg_path, &d.logs);
    let api = api_of(&e);
    // A's directory becomes a regular file: every write is refused (ENOTDIR).
    std::fs::remove_dir(&d.a).unwrap();
    std::fs::write(&d.a, b"not a directory").unwrap();
    let t0 = Instant::now();
    put_objects(&d.src, 0..10);
    wait_for("A's 10 FAILED", Duration::from_secs(30), || async {
        failed_list(api, "A").await.len() == 10
    })
    .await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}");
    wait_until("B complete", Duration::from_secs(30), || {
        replicas(&d.b, 0..10) == 10
    });
    assert_eq!(
        prom(api, "backbeat_replication_retries_total", "A").await,
        0
    );
    assert_eq!(
        prom(api, "backbeat_replication_replays_total", "A").await,
        0
    );
    assert_eq!(metric(api, "A", "failures").await, 10);
    assert_eq!(metric(api, "A", "pending").await, 0);
    eprintln!("permanent error: 10 FAILED in {took:?}");
    assert!(e.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_then_recovery_complete_without_failed() {
    let d = dirs();
    let retry =
        "max_retries = 4\ntimeout_s = 10\nbackoff_min_ms = 200\nbackoff_max_ms = 500\nreplay = 5\n";
    let cfg_path = ab_config(&d, retry);
    let e = EngineProc::start(&cfg_path, &d.logs);
    let api = api_of(&e);
    std::fs::rename(&d.a, d.root.join("site-a.down")).unwrap();
    put_objects(&d.src, 0..5);
    wait_for("a few retries at A", Duration::from_secs(30), || async {
        prom(api, "backbeat_replication_retries_total", "A").await >= 5
    })
    .await;
    std::fs::rename(d.root.join("site-a.down"), &d.a).unwrap();
    wait_until("A complete", Duration::from_secs(60), || {
        replicas(&d.a, 0..5) == 5
    });
    wait_for("completions at A", Duration::from_secs(30), || async {
        metric(api, "A", "completions").await == 5
    })
    .await;
    assert!(failed_list(api, "A").await.is_empty());
    assert_eq!(metric(api, "A", "failures").await, 0);
    assert_eq!(metric(api, "A", "pending").await, 0);
    let retries = prom(api, "backbeat_replication_retries_total", "A").await;
    assert!(retries >= 5);
    let log = strip_ansi(&e.log());
    assert!(log.contains("Retrying a copy after a transient error."));
    assert!(!log.contains("Replication failed."));
    eprintln!("transient then recovered: {retries} retries, no FAILED");
    assert!(e.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_survives_restart_resume_drains_and_scheduled_resume_fires_after_restart() {
    let d = dirs();
    let cfg_path = ab_config(&d, FAST_RETRY);
    let e = EngineProc::start(&cfg_path, &d.logs);
    let api = api_of(&e);
    post(api, "/_/crr/pause/A", &json!({})).await;
    put_objects(&d.src, 0..50);
    wait_until("B has the 50", Duration::from_secs(60), || {
        replicas(&d.b, 0..50) == 50
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replicas(&d.a, 0..50), 0, "a paused site takes no entry");
    let status = get_json(api, "/_/crr/status").await;
    assert_eq!(status["A"], json!("disabled"), "{status}");
    assert_eq!(status["B"], json!("enabled"), "{status}");
    assert_eq!(metric(api, "A", "pending").await, 50);

    // Restart while paused: still paused.
    assert!(e.stop().success());
    let e = EngineProc::start(&cfg_path, &d.logs);
    let api = api_of(&e);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&d.a, 0..50), 0, "still paused after a restart");
    assert_eq!(get_json(api, "/_/crr/status").await["A"], json!("disabled"));

    // Resume drains the queue.
    post(api, "/_/crr/resume/A", &json!({})).await;
    wait_until("A drained", Duration::from_secs(60), || {
        replicas(&d.a, 0..50) == 50
    });

    // Pause again, queue 10 more, schedule a resume 3.6 s ahead, restart before it fires.
    post(api, "/_/crr/pause/A", &json!({})).await;
    put_objects(&d.src, 50..60);
    wait_until("B has the 10", Duration::from_secs(60), || {
        replicas(&d.b, 50..60) == 10
    });
    post(api, "/_/crr/resume/A/schedule", &json!({"hours": 0.001})).await;
    assert!(e.stop().success());
    assert_eq!(replicas(&d.a, 50..60), 0);
    let e = EngineProc::start(&cfg_path, &d.logs);
    let api = api_of(&e);
    wait_until(
        "the scheduled resume fired after the restart",
        Duration::from_secs(60),
        || replicas(&d.a, 50..60) == 10,
    );
    assert_eq!(get_json(api, "/_/crr/status").await["A"], json!("enabled"));
    wait_for("A's counters settle", Duration::from_secs(30), || async {
        metric(api, "A", "pending").await == 0 && metric(api, "A", "completions").await == 60
    })
    .await;
    assert!(e.stop().success());
}

/// Pauses site A (stored, so it holds after a restart), then kills the engine with `kill -9`.
async fn pause_a_and_kill9(e: EngineProc) {
    post(api_of(&e), "/_/crr/pause/A", &json!({})).await;
    e.kill9();
}

/// Restarts the engine with A still paused, removes A's directory (the file site recreates it
/// at start), then resumes A: no copy can reach A between the start and its death, so the
/// versions left keep failing at A (they would all complete there in that window otherwise,
/// and none would ever be FAILED).
async fn restart_with_a_dead(cfg: &Path, d: &Dirs, dead: &Path) -> EngineProc {
    let e = EngineProc::start(cfg, &d.logs);
    kill_dir(&d.a, dead);
    post(api_of(&e), "/_/crr/resume/A", &json!({})).await;
    e
}

/// Removes the site directory `dir`, moving the replicas written into it meanwhile to `keep`.
fn kill_dir(dir: &Path, keep: &Path) {
    std::fs::create_dir_all(keep.join("bkt")).unwrap();
    for _ in 0..100 {
        if let Ok(entries) = std::fs::read_dir(dir.join("bkt")) {
            for f in entries.flatten() {
                let _ = std::fs::rename(f.path(), keep.join("bkt").join(f.file_name()));
            }
        }
        let _ = std::fs::remove_dir(dir.join("bkt"));
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
    }
    panic!("cannot remove {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_retrying_and_replaying_loses_nothing_and_counts_once() {
    let d = dirs();
    let retry =
        "max_retries = 3\ntimeout_s = 2\nbackoff_min_ms = 100\nbackoff_max_ms = 300\nreplay = 3\n";
    let cfg_path = ab_config(&d, retry);
    let dead = d.root.join("site-a.dead");
    // The file site creates its directory at start: A dies once the engine runs, and every
    // restart below happens with A's directory in place, then A dies again.
    let e = EngineProc::start(&cfg_path, &d.logs);
    std::fs::rename(&d.a, &dead).unwrap();
    put_objects(&d.src, 0..30);
    e.wait_log("queued again for a replay", Duration::from_secs(60));
    pause_a_and_kill9(e).await;
    // Restarted while A is dead, killed mid-replay; restarted, killed once some versions are
    // FAILED and others are still being replayed; restarted for good.
    let e = restart_with_a_dead(&cfg_path, &d, &dead).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pause_a_and_kill9(e).await;
    let e = restart_with_a_dead(&cfg_path, &d, &dead).await;
    let api = api_of(&e);
    wait_for("some FAILED", Duration::from_secs(60), || async {
        !failed_list(api, "A").await.is_empty()
    })
    .await;
    let partial = failed_list(api, "A").await.len();
    pause_a_and_kill9(e).await;
    let e = restart_with_a_dead(&cfg_path, &d, &dead).await;
    let api = api_of(&e);
    // Every version ends COMPLETED or FAILED at A, each once.
    wait_settled(api, "A", 30).await;
    let failed = failed_list(api, "A").await;
    let keys: HashSet<String> = failed
        .iter()
        .map(|v| v["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys.len(),
        failed.len(),
        "a version counted twice: {failed:?}"
    );
    let completed_here = replicas(&dead, 0..30);
    let completions = metric(api, "A", "completions").await;
    assert_eq!(completions + failed.len() as i64, 30);
    // A copy written just before a kill may have been reported FAILED after the restart
    // (at-least-once): a replica can exist for a FAILED version, never the reverse.
    assert!(
        completed_here as i64 >= completions,
        "{completed_here} < {completions}"
    );
    assert_eq!(metric(api, "A", "failures").await, failed.len() as i64);
    wait_until("B complete", Duration::from_secs(60), || {
        replicas(&d.b, 0..30) == 30
    });
    eprintln!(
        "after kill -9 cycles: {} FAILED ({partial} at the last kill), {completed_here} replicas at A",
        failed.len()
    );
    // A comes back; the retry completes the rest.
    std::fs::rename(&dead, &d.a).unwrap();
    if !failed.is_empty() {
        let body: Vec<Value> = failed
            .iter()
            .map(|v| json!({"Bucket": v["Bucket"], "Key": v["Key"], "VersionId": v["VersionId"], "StorageClass": "A"}))
            .collect();
        post(api, "/_/crr/failed", &Value::Array(body)).await;
    }
    wait_until("A complete", Duration::from_secs(60), || {
        replicas(&d.a, 0..30) == 30
    });
    wait_for("A's counters settle", Duration::from_secs(30), || async {
        failed_list(api, "A").await.is_empty()
            && metric(api, "A", "pending").await == 0
            && metric(api, "A", "completions").await == 30
    })
    .await;
    assert!(e.stop().success());
}

/// Versions overwritten at the source before their copy (queued while both sites are paused)
/// are not copied once the sites resume and leave nothing pending: the original leaves them
/// PENDING and counted as pending forever. Such a version is gone from the object view too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_changed_before_their_copy_leave_nothing_pending() {
    let d = dirs();
    let cfg_path = ab_config(&d, FAST_RETRY);
    let e = EngineProc::start(&cfg_path, &d.logs);
    let api = api_of(&e);
    post(api, "/_/crr/pause", &json!({})).await;
    let version_body =
        |i: usize, round: usize| bytes_for((i * 10 + round) as u64, 1000 + 10 * round + i);
    // Three versions of each of 5 keys, each round queued before the next overwrites it.
    let mut first_version = String::new();
    let mut newest_version = String::new();
    for round in 0..3 {
        for i in 0..5 {
            put_file(&d.src, &key(i), &version_body(i, round));
        }
        let v = version_id_of(&std::fs::metadata(d.src.join(key(0))).unwrap());
        if round == 0 {
            first_version = v.clone();
        }
        newest_version = v;
        let views: Vec<String> = (0..5)
            .map(|i| {
                let v = version_id_of(&std::fs::metadata(d.src.join(key(i))).unwrap());
                format!("/_/crr/object/bkt/{}?versionId={v}", key(i))
            })
            .collect();
        // The state is per key (newest wins): each key is pending once, for its newest
        // version.
        wait_for("the round queued", Duration::from_secs(30), || async {
            for view in &views {
                if request(api, "GET", view, None).await.status != 200 {
                    return false;
                }
            }
            metric(api, "A", "pending").await == 5 && metric(api, "B", "pending").await == 5
        })
        .await;
    }
    post(api, "/_/crr/resume", &json!({})).await;
    let newest = |dir: &Path| {
        (0..5)
            .filter(|&i| std::fs::read(replica_path(dir, i)).ok() == Some(version_body(i, 2)))
            .count()
    };
    wait_until(
        "A and B have the newest versions",
        Duration::from_secs(30),
        || newest(&d.a) == 5 && newest(&d.b) == 5,
    );
    wait_for("nothing pending", Duration::from_secs(30), || async {
        metric(api, "A", "pending").await == 0 && metric(api, "B", "pending").await == 0
    })
    .await;
    for site in ["A", "B"] {
        assert_eq!(metric(api, site, "completions").await, 5, "{site}");
        assert_eq!(metric(api, site, "backlog").await, 0, "{site}");
        assert_eq!(
            prom(api, "backbeat_replication_skipped_total", site).await,
            10,
            "{site}"
        );
        assert!(failed_list(api, site).await.is_empty());
    }
    let view = |v: &str| format!("/_/crr/object/bkt/{}?versionId={v}", key(0));
    let gone = request(api, "GET", &view(&first_version), None).await;
    assert_eq!(gone.status, 404, "{}", gone.text());
    let done = get_json(api, &view(&newest_version)).await;
    assert_eq!(done["status"], json!("COMPLETED"), "{done}");
    assert!(e.stop().success());
}
