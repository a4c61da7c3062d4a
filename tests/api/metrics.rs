//! Metrics routes against the reference fixture (reference 1.6): site metrics, throughput
//! windows, backlog and pending, ingestion zeros, object progress, and the Prometheus text.

use backbeat::model::VersionRef;
use backbeat::store::{Metric, ObjectMetric, StoreOp, METRICS_BUCKET_MS};
use serde_json::json;

use crate::common::api::{request, TestApi, T0};

const D_BACKLOG: &str = "Number of incomplete replication operations (count) and number of incomplete bytes transferred (size)";
const D_COMPLETIONS: &str = "Number of completed replication operations (count) and number of bytes transferred (size) in the last 86400 seconds";
const D_FAILURES: &str =
    "Number of failed replication operations (count) and bytes (size) in the last 86400 seconds";
const D_THROUGHPUT: &str = "Current throughput for replication operations in ops/sec (count) and bytes/sec (size) in the last 900 seconds";
const D_PENDING: &str = "Number of pending replication operations (count) and bytes (size)";

fn metric(site: &str, m: Metric, value: u64, at_ms: u64) -> StoreOp {
    StoreOp::AddMetric {
        site: site.into(),
        metric: m,
        value,
        at_ms,
    }
}

/// The reference fixture: site1 opsdone 450 / bytesdone 1027, site2 300 / 1874, pending
/// 2 ops / 1024 B each, 24x10 + 2 failures for site1, 24x10 for site2.
async fn seed_reference_fixture(api: &TestApi) {
    let now = api.clock.now();
    let mut ops = vec![
        metric("site1", Metric::OpsDone, 450, now),
        metric("site1", Metric::BytesDone, 1027, now),
        metric("site2", Metric::OpsDone, 300, now),
        metric("site2", Metric::BytesDone, 1874, now),
    ];
    for site in ["site1", "site2"] {
        ops.push(StoreOp::AddPending {
            site: site.into(),
            ops: 2,
            bytes: 1024,
        });
    }
    for (site, extra) in [("site1", 2u64), ("site2", 0)] {
        for h in 0..24u64 {
            let n = if h == 0 { 10 + extra } else { 10 };
            for i in 0..n {
                let v = VersionRef::new("fixture", format!("k-{h}-{i}"), "v");
                ops.push(StoreOp::AddFailed {
                    site: site.into(),
                    version: v,
                    info: crate::failed_info(now - h * 3_600_000 - i),
                    score_ms: now - h * 3_600_000 - i,
                });
            }
        }
    }
    api.store.apply(ops).await.unwrap();
}

trait Now {
    fn now(&self) -> u64;
}

impl Now for backbeat::clock::ManualClock {
    fn now(&self) -> u64 {
        backbeat::clock::Clock::now_ms(self)
    }
}

#[tokio::test]
async fn crr_metrics_match_the_reference_fixture() {
    let api = TestApi::start(&["site1", "site2"], T0 + 60_000).await;
    seed_reference_fixture(&api).await;
    let all = api.call("GET", "metrics/crr/all", None).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.header("content-type"), Some("application/json"));
    assert_eq!(
        all.header("content-length"),
        Some(all.body.len().to_string().as_str())
    );
    let expected = json!({
        "backlog": {"description": D_BACKLOG, "results": {"count": 4, "size": 2048}},
        "completions": {"description": D_COMPLETIONS, "results": {"count": 750, "size": 2901}},
        "failures": {"description": D_FAILURES, "results": {"count": 482, "size": 0}},
        "throughput": {"description": D_THROUGHPUT, "results": {"count": "0.83", "size": "3.22"}},
        "pending": {"description": D_PENDING, "results": {"count": 4, "size": 2048}},
        // Ours, after the original's five (issue 13): nothing completed or pending in this
        // process's observer.
        "lag": {"description": backbeat::api::metrics::DESC_LAG, "results": {"p50": null, "p99": null, "oldestPendingSeconds": null}},
    });
    assert_eq!(all.json(), expected);
    // Keys in the original's order.
    let text = all.text();
    let pos: Vec<usize> = [
        "backlog",
        "completions",
        "failures",
        "throughput",
        "pending",
    ]
    .iter()
    .map(|k| text.find(&format!("\"{k}\"")).unwrap())
    .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
    // Both prefixes, type `all` explicit or omitted.
    for route in [
        "/_/metrics/crr/all",
        "/_/metrics/crr/all/all",
        "/_/backbeat/api/metrics/crr/all/all",
    ] {
        let r = request(api.addr, "GET", route, None).await;
        assert_eq!(r.json(), expected, "{route}");
    }
    let site1 = json!({
        "backlog": {"description": D_BACKLOG, "results": {"count": 2, "size": 1024}},
        "completions": {"description": D_COMPLETIONS, "results": {"count": 450, "size": 1027}},
        "failures": {"description": D_FAILURES, "results": {"count": 242, "size": 0}},
        "throughput": {"description": D_THROUGHPUT, "results": {"count": "0.50", "size": "1.14"}},
        "pending": {"description": D_PENDING, "results": {"count": 2, "size": 1024}},
        "lag": {"description": backbeat::api::metrics::DESC_LAG, "results": {"p50": null, "p99": null, "oldestPendingSeconds": null}},
    });
    assert_eq!(api.get_json("metrics/crr/site1").await, site1);
    for t in [
        "backlog",
        "completions",
        "failures",
        "throughput",
        "pending",
    ] {
        let one = api.get_json(&format!("metrics/crr/site1/{t}")).await;
        assert_eq!(one, json!({t: site1[t].clone()}), "{t}");
    }
    let s2 = api.get_json("metrics/crr/site2/failures").await;
    assert_eq!(s2["failures"]["results"], json!({"count": 240, "size": 0}));
    api.stop().await;
}

#[tokio::test]
async fn throughput_weights_the_oldest_bucket_by_the_time_left() {
    // 100 s into the current 5-minute bucket: 2/3 of the oldest of the four buckets counts.
    let now = T0 + 100_000;
    let api = TestApi::start(&["site1", "site2"], now).await;
    let ops = vec![
        metric("site1", Metric::OpsDone, 90, now),
        metric("site1", Metric::OpsDone, 900, now - 3 * METRICS_BUCKET_MS),
        metric(
            "site1",
            Metric::BytesDone,
            9_000,
            now - 3 * METRICS_BUCKET_MS,
        ),
        // Older than the 900 s window: counts for completions only.
        metric("site1", Metric::OpsDone, 5_000, now - 4 * METRICS_BUCKET_MS),
        // Older than 24 h: counts for nothing.
        metric("site1", Metric::OpsDone, 7, now - 288 * METRICS_BUCKET_MS),
    ];
    api.store.apply(ops).await.unwrap();
    let t = api.get_json("metrics/crr/site1/throughput").await;
    // (90 + 200/300 * 900) / 900 = 0.7666 -> "0.77"; 2/3 * 9000 / 900 = 6.666 -> "6.67".
    assert_eq!(
        t["throughput"]["results"],
        json!({"count": "0.77", "size": "6.67"})
    );
    let c = api.get_json("metrics/crr/all/completions").await;
    assert_eq!(
        c["completions"]["results"],
        json!({"count": 5_990, "size": 9_000})
    );
    api.stop().await;
}

#[tokio::test]
async fn backlog_is_clamped_and_pending_is_raw() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let ops = vec![
        StoreOp::AddPending {
            site: "site1".into(),
            ops: -3,
            bytes: -10,
        },
        StoreOp::AddPending {
            site: "site2".into(),
            ops: 5,
            bytes: 50,
        },
    ];
    api.store.apply(ops).await.unwrap();
    let s1 = api.get_json("metrics/crr/site1").await;
    assert_eq!(s1["backlog"]["results"], json!({"count": 0, "size": 0}));
    assert_eq!(s1["pending"]["results"], json!({"count": -3, "size": -10}));
    let all = api.get_json("metrics/crr/all").await;
    assert_eq!(all["backlog"]["results"], json!({"count": 5, "size": 50}));
    assert_eq!(all["pending"]["results"], json!({"count": 2, "size": 40}));
    api.stop().await;
}

#[tokio::test]
async fn ingestion_metrics_answer_zeros_for_all_only() {
    let api = TestApi::start(&["site1"], T0).await;
    let all = api.get_json("metrics/ingestion/all").await;
    assert_eq!(
        all,
        json!({
            "completions": {"description": "Number of completed ingestion operations (count) in the last 86400 seconds", "results": {"count": 0}},
            "throughput": {"description": "Current throughput for ingestion operations in ops/sec (count) in the last 900 seconds", "results": {"count": "0.00"}},
            "pending": {"description": "Number of pending ingestion operations (count)", "results": {"count": 0}},
        })
    );
    for (route, status) in [
        ("metrics/ingestion/all/pending", 200),
        ("metrics/ingestion/site1", 404),
        ("metrics/ingestion/all/backlog", 404),
        ("metrics/ingestion/all/failures", 404),
    ] {
        assert_eq!(api.call("GET", route, None).await.status, status, "{route}");
    }
    api.stop().await;
}

#[tokio::test]
async fn object_progress_and_throughput() {
    let now = T0 + 30_000;
    let api = TestApi::start(&["site1", "site2"], now).await;
    let v = VersionRef::new("bkt", "dir/my key", "v1");
    let om = |m, value| StoreOp::AddObjectMetric {
        site: "site1".into(),
        version: v.clone(),
        metric: m,
        value,
        at_ms: now,
    };
    api.store
        .apply(vec![
            om(ObjectMetric::Bytes, 100),
            om(ObjectMetric::BytesDone, 50),
        ])
        .await
        .unwrap();
    let p = api
        .get_json("metrics/crr/site1/progress/bkt/dir/my%20key?versionId=v1")
        .await;
    assert_eq!(
        p,
        json!({"description": "Number of bytes to be replicated (pending), number of bytes transferred to the destination (completed), and percentage of the object that has completed replication (progress)",
               "pending": 50, "completed": 50, "progress": "50%"})
    );
    let t = api
        .get_json("metrics/crr/site1/throughput/bkt/dir/my%20key?versionId=v1")
        .await;
    assert_eq!(
        t,
        json!({"description": "Current throughput for object replication in bytes/sec (throughput)", "throughput": "0.06"})
    );
    let none = api
        .get_json("metrics/crr/site2/progress/bkt/dir/my%20key?versionId=v1")
        .await;
    assert_eq!(none["progress"], "0%");
    assert_eq!(none["pending"], 0);
    api.stop().await;
}

#[tokio::test]
async fn prometheus_exposition() {
    let api = TestApi::start(&["site1", "site2"], T0 + 60_000).await;
    seed_reference_fixture(&api).await;
    let r = api.call("GET", "monitoring/metrics", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    for line in [
        "s3_replication_pending_objects{location=\"site1\"} 2",
        "s3_replication_pending_bytes{location=\"site2\"} 1024",
        "s3_replication_failed_objects{location=\"site1\"} 242",
        // The failed set, as the REST failures count (one definition).
        "s3_replication_failed_objects_24h{location=\"site1\"} 242",
        "s3_replication_failed_objects_24h{location=\"site2\"} 240",
        "s3_replication_completed_objects_24h{location=\"site2\"} 300",
        "s3_replication_throughput_bytes_per_second{location=\"site1\"} 1.14",
        "backbeat_log_lag{group=\"backbeat-replication-group-site1\",topic=\"backbeat-replication\",partition=\"0\"} 0",
        "backbeat_up 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    for family in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{l}");
    }
    api.stop().await;
}
