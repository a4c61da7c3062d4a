//! The pipeline end to end on the Kafka log (a Tansu broker): the real binary, a file source,
//! two file sites; every version, including new versions of some keys, ends COMPLETED at every
//! site with the newest bytes there and exact counters. The same workload then runs on the
//! sled log in the same test, and the throughput of both is printed (`--nocapture`).

#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod kafka_support;
mod pipeline_support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::peers::start_tansu;
use kafka_support::*;
use pipeline_support::*;

/// New objects of the measured workload.
const OBJECTS: usize = 1000;
/// Every `NEW_VERSION_EVERY`-th object gets a second version.
const NEW_VERSION_EVERY: usize = 5;
const SITES: [&str; 2] = ["site-a", "site-b"];
const LIMIT: Duration = Duration::from_secs(90);

struct Measured {
    versions: usize,
    /// From the first write to the last version COMPLETED everywhere.
    elapsed: Duration,
}

/// Runs the workload on one engine (Kafka log at `brokers`, else sled) and checks the result.
async fn run_workload(tmp: &Path, brokers: Option<&str>) -> Measured {
    let FileEngine {
        src,
        staging,
        data,
        paths,
        engine,
        api,
    } = start_file_engine(tmp, &SITES, brokers, "pipe-");

    let fail = |e: String| panic!("{e}; engine log:\n{}", tail(&engine.log(), 200));
    // Warm-up: one object through the whole pipeline (on Kafka, every consumer group has
    // joined once it is COMPLETED everywhere), so the measure below is the steady state.
    let mut versions = vec![(
        "warm-up".to_string(),
        put_atomic(&staging, &src, "warm-up", b"warm"),
    )];
    wait_completions(api, &SITES, 1, LIMIT)
        .await
        .unwrap_or_else(fail);

    let start = Instant::now();
    let mut newest = std::collections::BTreeMap::new();
    for i in 0..OBJECTS {
        let key = tricky_key(i);
        let body = bytes_for(i as u64, 1024 + (i * 997) % 16_384);
        versions.push((key.clone(), put_atomic(&staging, &src, &key, &body)));
        newest.insert(key, body);
    }
    let n = versions.len() as u64;
    wait_completions(api, &SITES, n, LIMIT)
        .await
        .unwrap_or_else(fail);
    // Second versions, once the first ones are replicated (a file source serves only a file's
    // current version: one replaced before its copy is skipped, as the original skips a
    // version gone from the source).
    for i in (0..OBJECTS).step_by(NEW_VERSION_EVERY) {
        let key = tricky_key(i);
        let body = bytes_for(i as u64 + 1_000_000, 2048 + i);
        versions.push((key.clone(), put_atomic(&staging, &src, &key, &body)));
        newest.insert(key, body);
    }
    let n = versions.len() as u64;
    wait_completions(api, &SITES, n, LIMIT)
        .await
        .unwrap_or_else(fail);
    let elapsed = start.elapsed();

    assert_completed(api, "photos", &versions, &SITES).await;
    assert_newest_bytes("photos", &SITES, &paths, &newest);
    let status = engine.stop();
    assert!(status.success(), "exit status {status:?}");

    // Each version counted once per site, however often an entry was delivered.
    assert_counted_once(&data, &SITES, versions.len() as u64).await;
    Measured {
        versions: versions.len() - 1,
        elapsed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_to_two_sites_through_kafka_then_the_same_through_sled() {
    let tansu = start_tansu();
    let brokers = tansu.addr.to_string();
    let kafka_dir = tempfile::tempdir().unwrap();
    let kafka = run_workload(kafka_dir.path(), Some(&brokers)).await;
    let sled_dir = tempfile::tempdir().unwrap();
    let sled = run_workload(sled_dir.path(), None).await;
    let rate = |m: &Measured| m.versions as f64 / m.elapsed.as_secs_f64();
    eprintln!(
        "throughput, {} versions to {} file sites, from the first write to the last COMPLETED \
         (discovery by a scan every second):\n  \
         kafka log: {:.2} s, {:.0} objects/s\n  sled log:  {:.2} s, {:.0} objects/s\n  \
         kafka/sled: {:.2}",
        kafka.versions,
        SITES.len(),
        kafka.elapsed.as_secs_f64(),
        rate(&kafka),
        sled.elapsed.as_secs_f64(),
        rate(&sled),
        rate(&kafka) / rate(&sled)
    );
}
