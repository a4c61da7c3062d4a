//! The same version discovered by the webhook intake (twice, concurrently) and by the scanner
//! is queued and copied once. Library-level: the engine runs in this process and the test
//! calls its `Intake` (the populator) directly, as the webhook route does.

#![allow(clippy::unwrap_used)]

mod pipeline_support;

use std::time::Duration;

use backbeat::app::Engine;
use backbeat::config::Config;
use backbeat::intake::DiscoveredVersion;
use backbeat::log::{replication_group, TOPIC_REPLICATION};
use backbeat::site::file::FileSite;
use backbeat::source::file::version_id_of;
use backbeat::store::Metric;
use pipeline_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_seen_by_webhook_and_scan_is_queued_and_copied_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    let data = tmp.path().join("data");
    let site = tmp.path().join("site-a");
    let n = 50usize;
    let mut events = Vec::new();
    for i in 0..n {
        let key = tricky_key(i);
        put_file(&src, &key, &bytes_for(i as u64, 1000 + i));
        let vid = version_id_of(&std::fs::metadata(src.join(&key)).unwrap());
        events.push(DiscoveredVersion {
            event_name: "ObjectCreated:Put".into(),
            bucket: "photos".into(),
            key,
            version_id: Some(vid),
            size: None,
            etag: None,
            event_time_ms: None,
        });
    }
    // The initial scan runs at start, concurrently with the two webhook deliveries below.
    let cfg = config(
        &data,
        &src,
        &file_site("site-a", &site),
        &rule("photos", "", &["site-a"], true),
        "",
    )
    .replace("scan_interval_s = 1", "scan_interval_s = 0");
    let engine = Engine::start_default_clock(Config::parse(&cfg).unwrap())
        .await
        .unwrap();
    let intake = engine.intake.clone().unwrap();
    let (a, b) = tokio::join!(
        intake.discovered(events.clone()),
        intake.discovered(events.clone())
    );
    let queued_by_webhook = a.unwrap() + b.unwrap();
    assert!(queued_by_webhook <= n);

    let fs = FileSite::new("site-a", &site).unwrap();
    let all_there = || {
        events
            .iter()
            .all(|e| fs.sidecar_of(&format!("photos/{}", e.key)).exists())
    };
    let start = std::time::Instant::now();
    while !all_there() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "replicas missing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once more through the intake after everything is done: nothing new.
    assert_eq!(intake.discovered(events.clone()).await.unwrap(), 0);

    let lag = engine
        .log
        .lag(TOPIC_REPLICATION, &replication_group("site-a"))
        .await
        .unwrap();
    let entries: u64 = lag.iter().map(|p| p.end).sum();
    assert_eq!(entries, n as u64, "one replication entry per version");
    let ops: u64 = engine
        .store
        .metric_buckets("site-a", Metric::Ops)
        .await
        .unwrap()
        .iter()
        .sum();
    assert_eq!(ops, n as u64);
    let store = engine.store.clone();
    drop(intake);
    engine.stop().await;
    let done: u64 = store
        .metric_buckets("site-a", Metric::OpsDone)
        .await
        .unwrap()
        .iter()
        .sum();
    assert_eq!(done, n as u64, "each version copied once");
}
