//! A paused site on the Kafka log (a Tansu broker): the real binary, a file source, two file
//! sites. While site-a is paused its processor's read-ahead fills up and it stops polling;
//! its consumer must still stay in its group past `max.poll.interval.ms` (no "maximum poll
//! interval" from librdkafka, no rebalance), site-b replicates everything meanwhile, site-a
//! nothing; after the resume site-a gets every version, with the right bytes, counted once.

#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod failures_support;
mod kafka_support;
mod pipeline_support;

use std::collections::BTreeMap;
use std::time::Duration;

use backbeat::site::file::FileSite;

use common::api::request;
use common::peers::start_tansu;
use failures_support::strip_ansi;
use kafka_support::*;
use pipeline_support::*;

const SITES: [&str; 2] = ["site-a", "site-b"];
/// More than the paused site's read-ahead (`prefetch`: 4 x `concurrency` 10, at least 64), so
/// its runner stops polling.
const OBJECTS: usize = 100;
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_site_stays_in_its_kafka_group_with_a_full_read_ahead_then_catches_up() {
    let tansu = start_tansu();
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let brokers = tansu.addr.to_string();
    let FileEngine {
        src,
        staging,
        data,
        paths,
        engine,
        api,
    } = start_file_engine(tmp, &SITES, Some(&brokers), "pause-");
    let fail = |e: String| panic!("{e}; engine log:\n{}", tail(&engine.log(), 200));

    // Every consumer group has joined once one object is COMPLETED everywhere.
    let mut versions = vec![(
        "warm-up".to_string(),
        put_atomic(&staging, &src, "warm-up", b"warm"),
    )];
    let mut newest = BTreeMap::from([("warm-up".to_string(), b"warm".to_vec())]);
    wait_completions(api, &SITES, 1, LIMIT)
        .await
        .unwrap_or_else(fail);

    let r = request(api, "POST", "/_/crr/pause/site-a", None).await;
    assert_eq!(r.status, 200, "pause: {}", r.text());
    let log_at_pause = strip_ansi(&engine.log()).len();
    for i in 0..OBJECTS {
        let key = tricky_key(i);
        let body = bytes_for(i as u64, 1024 + (i * 997) % 8192);
        versions.push((key.clone(), put_atomic(&staging, &src, &key, &body)));
        newest.insert(key, body);
    }
    let n = versions.len() as u64;
    wait_completions(api, &["site-b"], n, LIMIT)
        .await
        .unwrap_or_else(fail);
    // Site-a's handlers wait in the pause gate, its read-ahead is full: well past the maximum
    // poll interval without a real poll.
    tokio::time::sleep(MAX_POLL_INTERVAL * 3).await;

    assert_eq!(
        completions(api, "site-a").await,
        1,
        "site-a replicated while paused"
    );
    let site_a = FileSite::new("site-a", &paths[0]).unwrap();
    for key in newest.keys().filter(|k| *k != "warm-up") {
        assert!(
            !site_a.path_of(&format!("photos/{key}")).exists(),
            "{key} at site-a while paused"
        );
    }
    let r = request(api, "POST", "/_/crr/resume/site-a", None).await;
    assert_eq!(r.status, 200, "resume: {}", r.text());
    wait_completions(api, &SITES, n, LIMIT)
        .await
        .unwrap_or_else(fail);
    assert_completed(api, "photos", &versions, &SITES).await;
    assert_newest_bytes("photos", &SITES, &paths, &newest);
    // Checked after the resume: librdkafka's logs and rebalance events reach us through the
    // consumer's queue, so those of a member that stopped polling show only when it polls
    // again.
    let log = strip_ansi(&engine.log());
    let since_pause = &log[log_at_pause..];
    assert!(
        !since_pause.contains("maximum poll interval"),
        "a consumer left its group while paused:\n{}",
        tail(since_pause, 100)
    );
    assert!(
        !since_pause.contains("Kafka partitions rebalanced."),
        "a group rebalanced while paused:\n{}",
        tail(since_pause, 100)
    );
    let status = engine.stop();
    assert!(status.success(), "exit status {status:?}");
    // Each version copied and counted once at each site, site-a included.
    assert_counted_once(&data, &SITES, n).await;
}
