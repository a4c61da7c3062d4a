//! Integrity end to end (DESIGN section 3) against a real S3 peer: a site that stores other
//! bytes than were sent. A proxy in front of moto changes one byte of the first request bodies
//! carrying data (whole objects and parts), with or without their `Content-MD5`; the engine
//! must notice (the returned ETag is not the MD5 of what was sent; moto does not check
//! `Content-MD5`), retry with reason `ChecksumMismatch` — and not take the corrupted replica,
//! which carries the right `scal-*` metadata, for a finished copy on the retry — and end
//! COMPLETED only with the source's bytes;
//! a site that always corrupts leaves the version FAILED with that reason, never COMPLETED.
//! `backbeat verify --deep` is the oracle.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::path::Path;
use std::process::Command;
use std::sync::LazyLock;
use std::time::Duration;

use common::flaky::start_corrupting;
use common::peers::{start_moto, Peer};
use failures_support::{failed_list, get_json, metric, wait_for};
use pipeline_support::*;

static MOTO: LazyLock<Peer> = LazyLock::new(start_moto);

/// Objects: two small ones and one copied in parts (the threshold is 5 MiB).
const OBJECTS: [(&str, usize); 3] = [("a.txt", 1000), ("dir/b.bin", 70_000), ("big.bin", 6 << 20)];

fn engine_config(data: &Path, src: &Path, endpoint: &str, bucket: &str) -> String {
    let site = format!(
        "[[sites]]\nname = \"A\"\ntype = \"aws_s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\n\
         access_key = \"AKIDTEST\"\nsecret_key = \"secret\"\npath_style = true\n"
    );
    config_with_retry(
        data,
        src,
        &site,
        &rule("inbox", "", &["A"], true),
        "",
        "max_retries = 4\ntimeout_s = 60\nbackoff_min_ms = 50\nbackoff_max_ms = 200\nreplay = 0\n",
    )
    .replace("mpu_threshold_mb = 20", "mpu_threshold_mb = 5")
}

struct Run {
    _tmp: tempfile::TempDir,
    cfg: std::path::PathBuf,
    engine: EngineProc,
}

async fn run(
    bucket: &str,
    corrupt_first: usize,
    strip_md5: bool,
) -> (Run, common::flaky::Corrupting) {
    let moto = common::moto::client(&MOTO);
    common::moto::create_bucket(&moto, bucket, true)
        .await
        .unwrap();
    let upstream = MOTO.url().trim_start_matches("http://").parse().unwrap();
    let proxy = start_corrupting(upstream, corrupt_first, strip_md5).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("inbox");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for (i, (key, len)) in OBJECTS.iter().enumerate() {
        put_file(&src, key, &bytes_for(i as u64 + 40, *len));
    }
    let cfg = write_config(
        tmp.path(),
        &engine_config(&tmp.path().join("data"), &src, &proxy.url(), bucket),
    );
    let engine = EngineProc::start(&cfg, &logs);
    (
        Run {
            _tmp: tmp,
            cfg,
            engine,
        },
        proxy,
    )
}

fn verify_deep(cfg: &Path) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .args(["verify", "--deep", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

async fn completions(api: std::net::SocketAddr) -> i64 {
    metric(api, "A", "completions").await
}

async fn completes_after_corrupted_writes(bucket: &str, strip_md5: bool) {
    let (run, proxy) = run(bucket, 3, strip_md5).await;
    let api = api_addr(&run.engine);
    wait_for(
        "every object COMPLETED",
        Duration::from_secs(90),
        || async { completions(api).await == OBJECTS.len() as i64 },
    )
    .await;
    assert_eq!(
        proxy
            .counts
            .corrupted
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    assert!(failed_list(api, "A").await.is_empty());
    let log = run.engine.log();
    assert!(
        log.contains("Retrying a copy after a transient error."),
        "no retry in the log"
    );
    // What moto holds is byte for byte the source.
    let (code, out) = verify_deep(&run.cfg);
    assert_eq!(code, Some(0), "{out}");
    assert!(run.engine.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_changed_on_the_way_with_their_content_md5_are_retried() {
    // Content-MD5 kept: AWS would answer BadDigest (ChecksumMismatch too); moto does not check
    // it and stores the changed bytes, so the ETag comparison is what catches them here.
    completes_after_corrupted_writes("integrity-digest", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_stored_wrong_are_caught_by_the_etag_and_retried() {
    // Content-MD5 removed: moto stores the changed bytes and answers their ETag.
    completes_after_corrupted_writes("integrity-etag", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_always_corrupts_never_completes() {
    let (run, _proxy) = run("integrity-always", usize::MAX, true).await;
    let api = api_addr(&run.engine);
    wait_for("every object FAILED", Duration::from_secs(90), || async {
        failed_list(api, "A").await.len() == OBJECTS.len()
    })
    .await;
    assert_eq!(completions(api).await, 0);
    for v in failed_list(api, "A").await {
        assert_eq!(v["Reason"], "ChecksumMismatch", "{v}");
        let view = get_json(
            api,
            &format!(
                "/_/crr/object/inbox/{}?versionId={}",
                v["Key"].as_str().unwrap(),
                v["VersionId"].as_str().unwrap()
            ),
        )
        .await;
        assert_eq!(view["sites"]["A"]["status"], "FAILED", "{view}");
        assert_eq!(view["sites"]["A"]["reason"], "ChecksumMismatch", "{view}");
    }
    // The bytes at the site are not the source's, and verify says so.
    let (code, out) = verify_deep(&run.cfg);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("corrupt A inbox/a.txt"), "{out}");
    assert!(run.engine.stop().success());
}

/// The engine's API address, from its start line.
fn api_addr(e: &EngineProc) -> std::net::SocketAddr {
    failures_support::api_of(e)
}
