//! Failures against real peers: site A on moto (S3), site B on Azurite (Azure Blob), the real
//! binary with a file source.
//!
//! - A's moto is killed after a third of 100 objects: B completes all 100, A's missing
//!   entries end FAILED (listed, counted exactly), a new moto on the same port + a retry
//!   through the API completes them;
//! - an Azure site with a wrong key: FAILED at once, without waiting for the retry budget;
//! - a flaky proxy answering 503 SlowDown a few times in front of moto: COMPLETED, retries
//!   visible in the log and in Prometheus, nothing FAILED.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backbeat::s3::{S3Client, S3Options};
use common::peers::{free_port, start_azurite, start_moto_on, AZURITE_ACCOUNT, AZURITE_KEY};
use common::{azure, flaky, moto};
use failures_support::*;
use hyper::Method;
use pipeline_support::*;
use serde_json::{json, Value};

fn s3_client(url: &str) -> S3Client {
    S3Client::new(url, "us-east-1", "AKIDTEST", "secret", S3Options::default()).unwrap()
}

async fn create_container(endpoint: &str, name: &str) {
    let url = format!("{endpoint}/{name}?restype=container");
    let (status, _, body) = azure::call(AZURITE_ACCOUNT, AZURITE_KEY, Method::PUT, &url, b"")
        .await
        .unwrap();
    assert!(status == 201 || status == 409, "{status} {body:?}");
}

fn s3_site(name: &str, endpoint: &str) -> String {
    format!(
        "[[sites]]\nname = \"{name}\"\ntype = \"aws_s3\"\nendpoint = \"{endpoint}\"\nbucket = \"replica\"\nregion = \"us-east-1\"\naccess_key = \"AKIDTEST\"\nsecret_key = \"secret\"\npath_style = true\n"
    )
}

fn azure_site(name: &str, endpoint: &str, key: &str) -> String {
    format!(
        "[[sites]]\nname = \"{name}\"\ntype = \"azure\"\nendpoint = \"{endpoint}\"\naccount = \"{AZURITE_ACCOUNT}\"\ncontainer = \"replica\"\nkey = \"{key}\"\n"
    )
}

fn engine_config(data: &Path, src: &Path, sites: &str, names: &[&str], retry: &str) -> String {
    config_with_retry(data, src, sites, &rule("bkt", "", names, true), "", retry)
}

fn key(i: usize) -> String {
    format!("obj-{i:04}")
}

fn put_objects(src: &Path, range: std::ops::Range<usize>) {
    for i in range {
        put_file(src, &key(i), &bytes_for(i as u64 + 3, 2048 + i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_site_dies_b_on_azure_completes_failed_entries_retried_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, data, logs) = (
        tmp.path().join("bkt"),
        tmp.path().join("data"),
        tmp.path().join("logs"),
    );
    for p in [&src, &logs] {
        std::fs::create_dir_all(p).unwrap();
    }
    let port = free_port();
    let mut moto_peer = start_moto_on(port);
    let moto_url = moto_peer.url();
    let c = s3_client(&moto_url);
    moto::create_bucket(&c, "replica", true).await.unwrap();
    let azurite = start_azurite();
    let az_endpoint = format!("{}/{AZURITE_ACCOUNT}", azurite.url());
    create_container(&az_endpoint, "replica").await;

    let sites = s3_site("A", &moto_url) + &azure_site("B", &az_endpoint, AZURITE_KEY);
    let retry =
        "max_retries = 3\ntimeout_s = 2\nbackoff_min_ms = 50\nbackoff_max_ms = 200\nreplay = 2\n";
    let cfg = engine_config(&data, &src, &sites, &["A", "B"], retry);
    let e = EngineProc::start(&write_config(tmp.path(), &cfg), &logs);
    let api = api_of(&e);

    // A third with both sites alive.
    let t0 = Instant::now();
    put_objects(&src, 0..34);
    wait_for("34 at A and B", Duration::from_secs(120), || async {
        metric(api, "A", "completions").await == 34 && metric(api, "B", "completions").await == 34
    })
    .await;
    let alive = t0.elapsed();
    moto_peer.kill();
    drop(moto_peer);

    // The rest with A dead.
    let t1 = Instant::now();
    put_objects(&src, 34..100);
    wait_for("B complete", Duration::from_secs(120), || async {
        metric(api, "B", "completions").await == 100
    })
    .await;
    let dead = t1.elapsed();
    eprintln!(
        "B per object: A alive {:?} (34 objects, {alive:?}), A dead {:?} (66 objects, {dead:?}); ratio {:.2}",
        alive / 34,
        dead / 66,
        (dead.as_secs_f64() / 66.0) / (alive.as_secs_f64() / 34.0)
    );
    wait_for("A's 66 FAILED", Duration::from_secs(180), || async {
        failed_list(api, "A").await.len() == 66
    })
    .await;
    let failed = failed_list(api, "A").await;
    let keys: HashSet<String> = failed
        .iter()
        .map(|v| v["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, (34..100).map(key).collect::<HashSet<_>>());
    assert_eq!(metric(api, "A", "failures").await, 66);
    assert_eq!(metric(api, "A", "backlog").await, 0);
    assert_eq!(metric(api, "A", "pending").await, 0);
    assert_eq!(metric(api, "A", "completions").await, 34);
    assert_eq!(metric(api, "B", "failures").await, 0);
    let retries = prom(api, "backbeat_replication_retries_total", "A").await;
    let replays = prom(api, "backbeat_replication_replays_total", "A").await;
    eprintln!(
        "requests to A while down: {} ({} entry rounds incl. {replays} replays, {retries} retries)",
        66 + replays + retries,
        66 + replays
    );
    assert_eq!(replays, 66 * 2);

    // A comes back empty on the same port; retry the listed entries.
    let moto_peer = start_moto_on(port);
    moto::create_bucket(&c, "replica", true).await.unwrap();
    let body: Vec<Value> = failed
        .iter()
        .map(|v| json!({"Bucket": v["Bucket"], "Key": v["Key"], "VersionId": v["VersionId"], "StorageClass": "A"}))
        .collect();
    let answer = post(api, "/_/crr/failed", &Value::Array(body)).await;
    assert_eq!(answer.as_array().map(Vec::len), Some(66), "{answer}");
    wait_for(
        "A complete after the retry",
        Duration::from_secs(120),
        || async { metric(api, "A", "completions").await == 100 },
    )
    .await;
    let listed = moto::list_keys(&c, "replica", "").await.unwrap();
    assert_eq!(
        listed.into_iter().collect::<HashSet<_>>(),
        (34..100).map(key).collect::<HashSet<_>>()
    );
    assert!(failed_list(api, "A").await.is_empty());
    assert_eq!(metric(api, "A", "failures").await, 0);
    assert_eq!(metric(api, "A", "backlog").await, 0);
    assert_eq!(metric(api, "A", "pending").await, 0);
    assert_eq!(metric(api, "B", "completions").await, 100);
    assert!(e.stop().success());
    drop(moto_peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_site_with_a_wrong_key_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, data, logs, b) = (
        tmp.path().join("bkt"),
        tmp.path().join("data"),
        tmp.path().join("logs"),
        tmp.path().join("site-b"),
    );
    for p in [&src, &logs] {
        std::fs::create_dir_all(p).unwrap();
    }
    let azurite = start_azurite();
    let az_endpoint = format!("{}/{AZURITE_ACCOUNT}", azurite.url());
    create_container(&az_endpoint, "replica").await;
    // A valid base64 key that is not the account's.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let sites = azure_site("A", &az_endpoint, wrong) + &file_site("B", &b);
    let retry = "max_retries = 5\ntimeout_s = 900\nbackoff_min_ms = 60000\nbackoff_max_ms = 900000\nreplay = 5\n";
    let cfg = engine_config(&data, &src, &sites, &["A", "B"], retry);
    let e = EngineProc::start(&write_config(tmp.path(), &cfg), &logs);
    let api = api_of(&e);
    let t0 = Instant::now();
    put_objects(&src, 0..10);
    wait_for("A's 10 FAILED", Duration::from_secs(30), || async {
        failed_list(api, "A").await.len() == 10
    })
    .await;
    let took = t0.elapsed();
    eprintln!("wrong Azure key: 10 FAILED in {took:?}");
    assert!(took < Duration::from_secs(20));
    assert_eq!(
        prom(api, "backbeat_replication_retries_total", "A").await,
        0
    );
    assert_eq!(
        prom(api, "backbeat_replication_replays_total", "A").await,
        0
    );
    assert_eq!(metric(api, "A", "pending").await, 0);
    wait_for("B complete", Duration::from_secs(30), || async {
        metric(api, "B", "completions").await == 10
    })
    .await;
    assert!(e.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_site_completes_after_503s_with_retries_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, data, logs) = (
        tmp.path().join("bkt"),
        tmp.path().join("data"),
        tmp.path().join("logs"),
    );
    for p in [&src, &logs] {
        std::fs::create_dir_all(p).unwrap();
    }
    let moto_peer = start_moto_on(free_port());
    let c = s3_client(&moto_peer.url());
    moto::create_bucket(&c, "replica", true).await.unwrap();
    let proxy = flaky::start(moto_peer.addr, 4).await;
    let retry =
        "max_retries = 5\ntimeout_s = 30\nbackoff_min_ms = 100\nbackoff_max_ms = 300\nreplay = 2\n";
    let cfg = engine_config(&data, &src, &s3_site("A", &proxy.url()), &["A"], retry);
    let e = EngineProc::start(&write_config(tmp.path(), &cfg), &logs);
    let api = api_of(&e);
    put_objects(&src, 0..3);
    wait_for("3 COMPLETED at A", Duration::from_secs(60), || async {
        metric(api, "A", "completions").await == 3
    })
    .await;
    assert!(failed_list(api, "A").await.is_empty());
    assert_eq!(metric(api, "A", "pending").await, 0);
    let retries = prom(api, "backbeat_replication_retries_total", "A").await;
    let answered_503 = proxy.counts.failed.load(Ordering::SeqCst);
    let requests = proxy.counts.requests.load(Ordering::SeqCst);
    eprintln!("503 x{answered_503}, {requests} requests through the proxy, {retries} retries");
    assert_eq!(answered_503, 4);
    assert!(retries >= 1, "retries {retries}");
    let log = strip_ansi(&e.log());
    assert!(log.contains("Retrying a copy after a transient error."));
    assert!(!log.contains("Replication failed."));
    let listed = moto::list_keys(&c, "replica", "").await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(e.stop().success());
}
