//! Failures against real peers: site A on moto (S3), site B on Azurite (Azure Blob), the real
//! binary with a file source. Replicas are checked at the peers themselves (keys and bytes).
//!
//! - A's moto is killed after a third of 100 objects: B completes all 100, A's missing
//!   entries end FAILED (listed, counted exactly), a new moto on the same port + a retry
//!   through the API completes them;
//! - an Azure site with a wrong key: FAILED at once, without waiting for the retry budget;
//! - a flaky proxy answering 503 SlowDown a few times in front of moto: COMPLETED, retries
//!   visible in the log and in Prometheus, nothing FAILED;
//! - A paused: B gets everything, A nothing, across a restart; a resume drains A; a resume
//!   scheduled a few seconds ahead fires after a restart;
//! - `kill -9` of the engine, three times, while A's entries are retried and replayed (A's
//!   moto dead): nothing lost, every version FAILED once, and a retry once moto is back
//!   completes them all.
//!
//! `failures_file.rs` has file-site variants of these scenarios, where a site's failures are
//! deterministic.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backbeat::s3::{S3Client, S3Options};
use backbeat::source::file::version_id_of;
use common::peers::{free_port, start_azurite, start_moto_on, AZURITE_ACCOUNT, AZURITE_KEY};
use common::{azure, flaky, moto};
use failures_support::*;
use pipeline_support::*;
use serde_json::{json, Value};

fn s3_client(url: &str) -> S3Client {
    S3Client::new(url, "us-east-1", "AKIDTEST", "secret", S3Options::default()).unwrap()
}

async fn create_container(endpoint: &str, name: &str) {
    azure::create_container(AZURITE_ACCOUNT, AZURITE_KEY, endpoint, name)
        .await
        .unwrap();
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

/// Quick retries and two replays: a dead site's entries end FAILED within seconds.
const FAST_RETRY: &str =
    "max_retries = 3\ntimeout_s = 2\nbackoff_min_ms = 50\nbackoff_max_ms = 200\nreplay = 2\n";

/// A temporary directory with the source `bkt` and `logs` created in it, and the path of the
/// engine's `data`.
fn engine_dirs() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, data, logs) = (
        tmp.path().join("bkt"),
        tmp.path().join("data"),
        tmp.path().join("logs"),
    );
    for p in [&src, &logs] {
        std::fs::create_dir_all(p).unwrap();
    }
    (tmp, src, data, logs)
}

fn key(i: usize) -> String {
    format!("obj-{i:04}")
}

/// Where key `i`'s replica lives at a site: under the source bucket (DESIGN 3, "Where a
/// replica lives").
fn site_key(i: usize) -> String {
    format!("bkt/{}", key(i))
}

/// The site keys of `range`.
fn keys(range: Range<usize>) -> HashSet<String> {
    range.map(site_key).collect()
}

fn body(i: usize) -> Vec<u8> {
    bytes_for(i as u64 + 3, 2048 + i)
}

fn put_objects(src: &Path, range: Range<usize>) {
    for i in range {
        put_file(src, &key(i), &body(i));
    }
}

/// The replicas as the peers hold them: site A's bucket `replica` at moto, site B's container
/// `replica` at Azurite.
struct Replicas {
    a: S3Client,
    /// `<Azurite account endpoint>/replica`.
    b: String,
}

impl Replicas {
    /// Keys listed in A's bucket.
    async fn at_a(&self) -> HashSet<String> {
        let listed = moto::list_keys(&self.a, "replica", "").await.unwrap();
        listed.into_iter().collect()
    }

    /// Blob names listed in B's container.
    async fn at_b(&self) -> HashSet<String> {
        let listed = azure::list_blobs(AZURITE_ACCOUNT, AZURITE_KEY, &self.b)
            .await
            .unwrap();
        listed.into_iter().collect()
    }

    /// Asserts A's bucket holds exactly the keys of `range`, each with its object's bytes.
    async fn assert_a_holds(&self, range: Range<usize>) {
        assert_eq!(self.at_a().await, keys(range.clone()), "keys at A");
        for i in range {
            let got = moto::get_bytes(&self.a, "replica", &site_key(i))
                .await
                .unwrap();
            assert!(got == body(i), "{}: bytes at A differ", key(i));
        }
    }

    /// Asserts B's container holds exactly the keys of `range`, each with its object's bytes.
    async fn assert_b_holds(&self, range: Range<usize>) {
        assert_eq!(self.at_b().await, keys(range.clone()), "keys at B");
        for i in range {
            let got = azure::get_blob(AZURITE_ACCOUNT, AZURITE_KEY, &self.b, &site_key(i))
                .await
                .unwrap();
            assert!(
                got.as_deref() == Some(&body(i)[..]),
                "{}: bytes at B differ",
                key(i)
            );
        }
    }
}

/// The retry request of `POST crr/failed` for the listed `failed` entries of site A.
fn retry_body(failed: &[Value]) -> Value {
    failed
        .iter()
        .map(|v| json!({"Bucket": v["Bucket"], "Key": v["Key"], "VersionId": v["VersionId"], "StorageClass": "A"}))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_site_dies_b_on_azure_completes_failed_entries_retried_after_restart() {
    let mut s = setup(FAST_RETRY).await;
    let e = EngineProc::start(&s.cfg_path, &s.logs);
    let api = api_of(&e);

    // A third with both sites alive.
    let t0 = Instant::now();
    put_objects(&s.src, 0..34);
    wait_for("34 at A and B", Duration::from_secs(120), || async {
        metric(api, "A", "completions").await == 34 && metric(api, "B", "completions").await == 34
    })
    .await;
    let alive = t0.elapsed();
    s.moto.kill();

    // The rest with A dead.
    let t1 = Instant::now();
    put_objects(&s.src, 34..100);
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
    s.moto = start_moto_on(s.moto_port);
    moto::create_bucket(&s.peers.a, "replica", true)
        .await
        .unwrap();
    let answer = post(api, "/_/crr/failed", &retry_body(&failed)).await;
    assert_eq!(answer.as_array().map(Vec::len), Some(66), "{answer}");
    wait_for(
        "A complete after the retry",
        Duration::from_secs(120),
        || async { metric(api, "A", "completions").await == 100 },
    )
    .await;
    // The new moto holds exactly the retried versions; B all of them.
    s.peers.assert_a_holds(34..100).await;
    s.peers.assert_b_holds(0..100).await;
    assert!(failed_list(api, "A").await.is_empty());
    assert_eq!(metric(api, "A", "failures").await, 0);
    assert_eq!(metric(api, "A", "backlog").await, 0);
    assert_eq!(metric(api, "A", "pending").await, 0);
    assert_eq!(metric(api, "B", "completions").await, 100);
    assert!(e.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_site_with_a_wrong_key_fails_at_once() {
    let (tmp, src, data, logs) = engine_dirs();
    let b = tmp.path().join("site-b");
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
    let (tmp, src, data, logs) = engine_dirs();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sites_first_transient_error_is_logged_and_counted_when_it_happens() {
    let (tmp, src, data, logs) = engine_dirs();
    let moto_peer = start_moto_on(free_port());
    let c = s3_client(&moto_peer.url());
    moto::create_bucket(&c, "replica", true).await.unwrap();
    // The first PUT answered 503; its retry only after a long backoff.
    let puts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p = puts.clone();
    let proxy = flaky::start_with(
        moto_peer.addr,
        std::sync::Arc::new(move |_, parts| {
            (parts.method == hyper::Method::PUT && p.fetch_add(1, Ordering::SeqCst) == 0).then(
                || {
                    (
                        hyper::StatusCode::SERVICE_UNAVAILABLE,
                        "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>".to_string(),
                    )
                },
            )
        }),
    )
    .await;
    let retry = "max_retries = 5\ntimeout_s = 30\nbackoff_min_ms = 30000\nbackoff_max_ms = 60000\n";
    let cfg = engine_config(&data, &src, &s3_site("A", &proxy.url()), &["A"], retry);
    let e = EngineProc::start(&write_config(tmp.path(), &cfg), &logs);
    let api = api_of(&e);
    put_objects(&src, 0..1);
    // Told and counted at once, long before the first retry.
    wait_for(
        "the first failure counted",
        Duration::from_secs(15),
        || async { prom(api, "backbeat_replication_attempt_failures_total", "A").await == 1 },
    )
    .await;
    e.wait_log(
        "Copy to the site failed; copies retry with backoff.",
        Duration::from_secs(5),
    );
    assert_eq!(
        prom(api, "backbeat_replication_retries_total", "A").await,
        0
    );
    let log = strip_ansi(&e.log());
    let line = log
        .lines()
        .find(|l| l.contains("Copy to the site failed"))
        .unwrap();
    assert!(
        line.contains("WARN") && line.contains("Throttled"),
        "{line}"
    );
    assert!(e.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_a_site_fails_is_listed_with_its_typed_reason() {
    let (tmp, src, data, logs) = engine_dirs();
    let moto_peer = start_moto_on(free_port());
    let c = s3_client(&moto_peer.url());
    moto::create_bucket(&c, "replica", true).await.unwrap();
    let answer = |status: u16, code: &'static str| -> flaky::Rule {
        std::sync::Arc::new(move |_, _| {
            Some((
                hyper::StatusCode::from_u16(status).unwrap(),
                format!("<Error><Code>{code}</Code><Message>{code}</Message></Error>"),
            ))
        })
    };
    let five = flaky::start_with(moto_peer.addr, answer(500, "InternalError")).await;
    let denied = flaky::start_with(moto_peer.addr, answer(403, "AccessDenied")).await;
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for s in silent.incoming().take(64) {
            open.push(s);
        }
    });
    let refused_url = format!("http://127.0.0.1:{}", free_port());
    let sites = [
        s3_site("refused", &refused_url),
        s3_site("silent", &silent_url),
        s3_site("five", &five.url()),
        s3_site("denied", &denied.url()),
        s3_site("missing", &moto_peer.url()).replace("bucket = \"replica\"", "bucket = \"absent\""),
    ]
    .concat();
    let names = ["refused", "silent", "five", "denied", "missing"];
    let retry =
        "max_retries = 1\ntimeout_s = 2\nbackoff_min_ms = 50\nbackoff_max_ms = 100\nreplay = 0\n";
    let cfg = engine_config(&data, &src, &sites, &names, retry);
    let e = EngineProc::start(&write_config(tmp.path(), &cfg), &logs);
    let api = api_of(&e);
    put_objects(&src, 0..1);
    let started = std::time::Instant::now();
    let want = [
        ("refused", "Unreachable"),
        ("silent", "Timeout"),
        ("five", "ServerError"),
        ("denied", "AccessDenied"),
        ("missing", "NoSuchBucket"),
    ];
    for (site, reason) in want {
        wait_for(
            &format!("{site} FAILED"),
            Duration::from_secs(120),
            || async { !failed_list(api, site).await.is_empty() },
        )
        .await;
        let listed = failed_list(api, site).await;
        assert_eq!(listed[0]["Reason"], reason, "{site}: {}", listed[0]);
        assert!(listed[0]["LastError"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    eprintln!("every reason listed after {:?}", started.elapsed());
    assert!(e.stop().success());
    eprintln!("stopped after {:?}", started.elapsed());
    drop(held);
}

/// Site A on moto and site B on Azurite (both up, empty), and the engine's configuration.
struct Setup {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    logs: PathBuf,
    cfg_path: PathBuf,
    moto: common::peers::Peer,
    moto_port: u16,
    _azurite: common::peers::Peer,
    peers: Replicas,
}

async fn setup(retry: &str) -> Setup {
    let (tmp, src, data, logs) = engine_dirs();
    let moto_port = free_port();
    let moto_peer = start_moto_on(moto_port);
    let c = s3_client(&moto_peer.url());
    moto::create_bucket(&c, "replica", true).await.unwrap();
    let azurite = start_azurite();
    let az_endpoint = format!("{}/{AZURITE_ACCOUNT}", azurite.url());
    create_container(&az_endpoint, "replica").await;
    let sites = s3_site("A", &moto_peer.url()) + &azure_site("B", &az_endpoint, AZURITE_KEY);
    let cfg = engine_config(&data, &src, &sites, &["A", "B"], retry);
    let cfg_path = write_config(tmp.path(), &cfg);
    Setup {
        src,
        logs,
        cfg_path,
        moto: moto_peer,
        moto_port,
        _azurite: azurite,
        peers: Replicas {
            a: c,
            b: format!("{az_endpoint}/replica"),
        },
        _tmp: tmp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_survives_restart_resume_drains_and_scheduled_resume_fires_after_restart() {
    let t0 = Instant::now();
    let s = setup(FAST_RETRY).await;
    let peers = &s.peers;
    let e = EngineProc::start(&s.cfg_path, &s.logs);
    let api = api_of(&e);
    post(api, "/_/crr/pause/A", &json!({})).await;
    put_objects(&s.src, 0..50);
    wait_for("B has the 50", Duration::from_secs(60), || async {
        peers.at_b().await == keys(0..50)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        peers.at_a().await.is_empty(),
        "a paused site takes no entry"
    );
    let status = get_json(api, "/_/crr/status").await;
    assert_eq!(status["A"], json!("disabled"), "{status}");
    assert_eq!(status["B"], json!("enabled"), "{status}");
    assert_eq!(metric(api, "A", "pending").await, 50);

    // Restart while paused: still paused.
    assert!(e.stop().success());
    let e = EngineProc::start(&s.cfg_path, &s.logs);
    let api = api_of(&e);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        peers.at_a().await.is_empty(),
        "still paused after a restart"
    );
    assert_eq!(get_json(api, "/_/crr/status").await["A"], json!("disabled"));

    // Resume drains the queue.
    post(api, "/_/crr/resume/A", &json!({})).await;
    wait_for("A drained", Duration::from_secs(60), || async {
        peers.at_a().await == keys(0..50)
    })
    .await;
    peers.assert_a_holds(0..50).await;

    // Pause again, queue 10 more, schedule a resume 3.6 s ahead, restart before it fires.
    post(api, "/_/crr/pause/A", &json!({})).await;
    put_objects(&s.src, 50..60);
    wait_for("B has the 10", Duration::from_secs(60), || async {
        peers.at_b().await == keys(0..60)
    })
    .await;
    post(api, "/_/crr/resume/A/schedule", &json!({"hours": 0.001})).await;
    let scheduled = Instant::now();
    assert!(e.stop().success());
    assert_eq!(peers.at_a().await, keys(0..50));
    let e = EngineProc::start(&s.cfg_path, &s.logs);
    let api = api_of(&e);
    // The restart took less than the 3.6 s: the resume fires in the new process.
    let restarted = scheduled.elapsed();
    assert!(
        restarted < Duration::from_millis(3600),
        "restarted only after {restarted:?}"
    );
    wait_for(
        "the scheduled resume fired after the restart",
        Duration::from_secs(60),
        || async { peers.at_a().await == keys(0..60) },
    )
    .await;
    // Not at the restart: when it was due.
    let fired = scheduled.elapsed();
    assert!(fired >= Duration::from_secs(3), "resumed after {fired:?}");
    assert_eq!(get_json(api, "/_/crr/status").await["A"], json!("enabled"));
    wait_for("A's counters settle", Duration::from_secs(30), || async {
        metric(api, "A", "pending").await == 0 && metric(api, "A", "completions").await == 60
    })
    .await;
    peers.assert_a_holds(0..60).await;
    peers.assert_b_holds(0..60).await;
    assert_eq!(metric(api, "B", "completions").await, 60);
    assert!(failed_list(api, "A").await.is_empty());
    assert!(e.stop().success());
    eprintln!(
        "pause/resume across restarts: {:?} (restart {restarted:?}, resume seen {fired:?} after scheduling it)",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_retrying_and_replaying_loses_nothing_and_counts_once() {
    let t0 = Instant::now();
    let retry =
        "max_retries = 3\ntimeout_s = 2\nbackoff_min_ms = 100\nbackoff_max_ms = 300\nreplay = 3\n";
    let mut s = setup(retry).await;
    let replaying = "queued again for a replay";
    let e = EngineProc::start(&s.cfg_path, &s.logs);
    // A dies once the engine runs, and stays dead through every kill and restart below.
    s.moto.kill();
    put_objects(&s.src, 0..30);
    e.wait_log(replaying, Duration::from_secs(60));
    e.kill9();
    // Restarted, killed as soon as it queues a replay of its own.
    let e = EngineProc::start(&s.cfg_path, &s.logs);
    e.wait_log(replaying, Duration::from_secs(60));
    e.kill9();
    // Restarted, killed once some versions are FAILED while others are still in flight.
    let e = EngineProc::start(&s.cfg_path, &s.logs);
    let api = api_of(&e);
    let at_kill = std::cell::Cell::new((0, 0));
    wait_for(
        "some FAILED, others pending",
        Duration::from_secs(60),
        || async {
            let now = (
                failed_list(api, "A").await.len(),
                metric(api, "A", "pending").await,
            );
            at_kill.set(now);
            now.0 > 0 && now.1 > 0
        },
    )
    .await;
    let at_kill = at_kill.get();
    e.kill9();
    // Restarted for good, A still dead: every version settles at A.
    let e = EngineProc::start(&s.cfg_path, &s.logs);
    let api = api_of(&e);
    wait_settled(api, "A", 30).await;
    let failed = failed_list(api, "A").await;
    let listed: HashSet<(String, String)> = failed
        .iter()
        .map(|v| {
            let key = v["Key"].as_str().unwrap().to_string();
            (key, v["VersionId"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        listed.len(),
        failed.len(),
        "a version listed twice: {failed:?}"
    );
    assert_eq!(metric(api, "A", "failures").await, failed.len() as i64);
    // A was dead before the first put: nothing can have completed there, so every version is
    // FAILED, each exactly once.
    assert_eq!(metric(api, "A", "completions").await, 0);
    let versions: Vec<(String, String)> = (0..30)
        .map(|i| {
            let m = std::fs::metadata(s.src.join(key(i))).unwrap();
            (key(i), version_id_of(&m))
        })
        .collect();
    assert_eq!(listed, versions.iter().cloned().collect::<HashSet<_>>());
    for (k, vid) in &versions {
        let view = get_json(api, &format!("/_/crr/object/bkt/{k}?versionId={vid}")).await;
        assert_eq!(view["sites"]["A"]["status"], json!("FAILED"), "{k}: {view}");
        assert_eq!(
            view["sites"]["B"]["status"],
            json!("COMPLETED"),
            "{k}: {view}"
        );
    }
    wait_for("B complete", Duration::from_secs(60), || async {
        s.peers.at_b().await == keys(0..30)
    })
    .await;
    s.peers.assert_b_holds(0..30).await;
    assert_eq!(metric(api, "B", "completions").await, 30);
    assert_eq!(metric(api, "B", "failures").await, 0);
    eprintln!(
        "after three kill -9: {} FAILED at A ({} FAILED and {} pending at the last kill); \
         over the four runs {} replays queued, {} \"Replication failed.\" lines",
        failed.len(),
        at_kill.0,
        at_kill.1,
        engine_log_count(&s.logs, replaying),
        engine_log_count(&s.logs, "Replication failed."),
    );

    // A comes back empty on the same port; the listed versions are retried through the API.
    let moto_peer = start_moto_on(s.moto_port);
    moto::create_bucket(&s.peers.a, "replica", true)
        .await
        .unwrap();
    let answer = post(api, "/_/crr/failed", &retry_body(&failed)).await;
    assert_eq!(answer.as_array().map(Vec::len), Some(30), "{answer}");
    wait_for("A's counters settle", Duration::from_secs(60), || async {
        failed_list(api, "A").await.is_empty()
            && metric(api, "A", "pending").await == 0
            && metric(api, "A", "completions").await == 30
    })
    .await;
    s.peers.assert_a_holds(0..30).await;
    assert_eq!(metric(api, "A", "failures").await, 0);
    for (k, vid) in &versions {
        let view = get_json(api, &format!("/_/crr/object/bkt/{k}?versionId={vid}")).await;
        assert_eq!(
            view["sites"]["A"]["status"],
            json!("COMPLETED"),
            "{k}: {view}"
        );
    }
    assert!(e.stop().success());
    drop(moto_peer);
    eprintln!("kill -9 while retrying and replaying: {:?}", t0.elapsed());
}
