//! The REST API over real HTTP against a running engine (reference section 1, DESIGN 6).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use backbeat::api::routes::ROUTES;
use backbeat::clock::iso8601_ms;
use backbeat::log::{replication_group, TOPIC_REPLICATION};
use backbeat::model::{ReplicationInfo, ReplicationStatus, VersionRef};
use backbeat::store::{Guard, Metric, ObjectMetric, StoreOp, METRICS_BUCKET_MS};
use common::api::{request, request_from, TestApi, T0};
use serde_json::{json, Value};

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

fn failed_info(sites: &[&str], failed_site: &str, size: u64) -> ReplicationInfo {
    let names: Vec<String> = sites.iter().map(|s| s.to_string()).collect();
    let mut info = ReplicationInfo::pending(&names);
    info.size = size;
    info.last_modified = "2018-03-30T22:22:34.384Z".into();
    info.set_site_status(failed_site, ReplicationStatus::Failed, None);
    info
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
                ops.push(StoreOp::AddFailed {
                    site: site.into(),
                    version: VersionRef::new("fixture", format!("k-{h}-{i}"), "v"),
                    score_ms: now - h * 3_600_000 - i,
                });
            }
        }
    }
    assert!(api.store.apply(vec![], ops).await.unwrap());
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
    assert!(api.store.apply(vec![], ops).await.unwrap());
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
    assert!(api.store.apply(vec![], ops).await.unwrap());
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
    assert!(api
        .store
        .apply(
            vec![],
            vec![
                om(ObjectMetric::Bytes, 100),
                om(ObjectMetric::BytesDone, 50)
            ]
        )
        .await
        .unwrap());
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

/// Every route with misspelt segments, wrong methods, missing versionId, unknown sites and
/// trailing segments gets the reference's status.
#[tokio::test]
async fn route_matrix() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "/_/healthcheck", 200),
        ("GET", "/_/backbeat/api/healthcheck", 200),
        ("POST", "/_/healthcheck", 405),
        ("DELETE", "/_/healthcheck", 405),
        ("PUT", "/_/healthcheck", 405),
        ("PATCH", "/_/metrics/crr/all", 405),
        ("GET", "/_/healthcheck/", 404),
        ("GET", "/_/healthchek", 404),
        ("GET", "/healthcheck", 404),
        ("GET", "/_/backbeat/healthcheck", 404),
        ("GET", "/_/monitoring/metrics", 200),
        ("POST", "/_/monitoring/metrics", 405),
        ("GET", "/_/monitoring/metric", 404),
        ("GET", "/_/metrics/crr/all", 200),
        ("GET", "/_/metrics/crr/site1/all", 200),
        ("GET", "/_/metrics/crr/site3", 404),
        ("GET", "/_/metrics/crr/site3/backlog", 404),
        ("GET", "/_/metrics/crr/Site1/backlog", 404),
        ("GET", "/_/metrics/cr/all/backlog", 404),
        ("GET", "/_/metrics/crr/all/backlogg", 404),
        ("GET", "/_/metrics/crr/all/backlog/extra", 404),
        ("GET", "/_/metrics/crr//backlog", 404),
        ("POST", "/_/metrics/crr/all", 404),
        ("GET", "/_/metrics/lifecycle/all", 404),
        ("GET", "/_/metrics/crr/site1/progress/b/k?versionId=v", 200),
        ("GET", "/_/metrics/crr/site1/progress/b/k", 404),
        ("GET", "/_/metrics/crr/site1/progress/b/k?versionId=", 404),
        ("GET", "/_/metrics/crr/site1/progress/b?versionId=v", 404),
        ("GET", "/_/metrics/crr/all/progress/b/k?versionId=v", 404),
        ("GET", "/_/metrics/crr/site3/progress/b/k?versionId=v", 404),
        (
            "GET",
            "/_/metrics/crr/site1/throughput/b/k/deeper?versionId=v",
            200,
        ),
        ("GET", "/_/metrics/crr/site1/progres/b/k?versionId=v", 404),
        ("GET", "/_/crr/failed", 200),
        ("GET", "/_/crr/failed?sitename=site1", 200),
        ("GET", "/_/crr/failed?sitename=", 400),
        ("GET", "/_/crr/failed?sitename=site1&marker=", 400),
        ("GET", "/_/crr/failed?sitename=site1&marker=abc", 400),
        ("GET", "/_/crr/failed?sitename=site1&marker=12abc", 200),
        ("GET", "/_/crr/failed/mybucket", 200),
        ("GET", "/_/crr/failed/b/k", 200),
        ("GET", "/_/crr/failed/b/k?versionId=", 200),
        ("GET", "/_/crr/failed/b/k?versionId=v", 200),
        ("GET", "/_/crr/faild", 404),
        ("DELETE", "/_/crr/failed", 404),
        ("POST", "/_/crr/failed/b", 404),
        ("GET", "/_/crr/status", 200),
        ("GET", "/_/crr/status/site1", 200),
        ("GET", "/_/crr/status/all", 200),
        ("GET", "/_/crr/status/site3", 404),
        ("GET", "/_/crr/status/site1/extra", 404),
        ("POST", "/_/crr/status", 404),
        ("GET", "/_/crr/pause", 404),
        ("POST", "/_/crr/pause/site3", 404),
        ("POST", "/_/crr/pause/site1/schedule", 404),
        ("POST", "/_/crr/resume/site1/schedul", 404),
        ("POST", "/_/crr/resume/site3/schedule", 404),
        ("GET", "/_/crr/resume", 200),
        ("GET", "/_/crr/resume/site1/schedule", 200),
        ("GET", "/_/crr/resume/site1/schedule/x", 404),
        ("DELETE", "/_/crr/resume/site3", 404),
        ("POST", "/_/ingestion/pause", 404),
        ("GET", "/_/ingestion/status", 404),
        ("POST", "/_/lifecycle/pause/all", 404),
        ("GET", "/_/lifecycle/resume", 404),
        ("GET", "/_/crr/object/b/k", 404),
        ("GET", "/_/crr/object/b/k?versionId=", 404),
        ("HEAD", "/_/crr/object/b/k", 404),
        ("GET", "/_/crr/object/b?versionId=v", 404),
        ("GET", "/_/crr/object/b/k?versionId=unknown", 404),
        ("POST", "/_/crr/object/b/k?versionId=v", 404),
        ("GET", "/_/notifications/s3", 404),
        ("GET", "/_/notifications/s", 404),
        ("GET", "/_/openapi.json", 200),
        ("HEAD", "/_/healthcheck", 405),
        // HEAD is refused at the method step (reference 1.2 step 2) except on our object view.
        ("HEAD", "/_/metrics/crr/all", 405),
        ("HEAD", "/_/crr/status", 405),
        ("HEAD", "/_/nowhere", 405),
        ("HEAD", "/elsewhere", 405),
        ("OPTIONS", "/_/crr/object/b/k?versionId=v", 405),
        ("OPTIONS", "*", 405),
        ("DELETE", "/_/crr/resume", 200),
        ("DELETE", "/_/crr/resume/all/schedule", 200),
        ("POST", "/_/crr/resume/all/schedule", 200),
        ("GET", "/_/crr/resume/all", 200),
        ("POST", "/_/backbeat/api/crr/pause/all", 200),
        ("POST", "/_/crr/resume", 200),
        ("GET", "/_/backbeat/api", 404),
        ("GET", "/_/", 404),
        ("GET", "/", 404),
        ("GET", "/_/configuration/workflows", 404),
        ("GET", "/_/metrics/crr/%ZZ", 404),
        // A trailing `/` is an absent segment (reference 1.3: `parts[n] || default`), but not
        // on the fixed routes, which the original compares as whole strings.
        ("GET", "/_/metrics/crr/all/", 200),
        ("GET", "/_/metrics/crr/site1/backlog/", 200),
        ("GET", "/_/backbeat/api/metrics/ingestion/all/", 200),
        ("GET", "/_/crr/status/", 200),
        ("GET", "/_/crr/status/site1/", 200),
        ("GET", "/_/crr/failed/", 200),
        ("GET", "/_/crr/failed/mybucket/", 200),
        ("GET", "/_/crr/resume/all/schedule/", 200),
        ("GET", "/_/crr/status/site3/", 404),
        ("GET", "/_/metrics/crr/all//", 404),
        ("GET", "/_/monitoring/metrics/", 404),
        ("GET", "/_/openapi.json/", 404),
    ];
    let h = request(api.addr, "POST", "/_/healthcheck", None).await;
    assert_eq!(h.header("allow"), Some("GET"));
    let t = request(api.addr, "TRACE", "/_/crr/object/b/k", None).await;
    assert_eq!(t.header("allow"), Some("GET, HEAD"));
    for (method, path, status) in cases {
        let r = request(api.addr, method, path, None).await;
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        if *method != "HEAD" {
            assert!(r.header("content-type").is_some(), "{method} {path}");
        }
        if r.status == 405 {
            assert!(r.header("allow").is_some(), "{method} {path}");
        }
        if r.status >= 400 && *method != "HEAD" {
            let body = r.json();
            assert_eq!(body["code"], json!(status), "{method} {path}");
            assert!(body["description"].is_string());
            let name = match status {
                400 => vec!["InvalidQueryParameter", "MalformedPOSTRequest"],
                404 => vec!["RouteNotFound", "NoSuchKey"],
                405 => vec!["MethodNotAllowed"],
                _ => vec![],
            };
            assert!(
                name.iter().any(|n| body[*n] == json!(true)),
                "{method} {path}: {body}"
            );
        }
    }
    api.stop().await;
}

/// The original's healthcheck shape (reference 1.5): `topics` holds the CRR topic only, keyed
/// by its name; `internalConnections` in the original's key order. Our own details follow.
#[tokio::test]
async fn healthcheck_has_the_original_shape_with_the_crr_topic_only() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    for prefix in ["/_/", "/_/backbeat/api/"] {
        let r = request(api.addr, "GET", &format!("{prefix}healthcheck"), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        let v = r.json();
        let topics: Vec<&String> = v["topics"].as_object().unwrap().keys().collect();
        assert_eq!(topics, [TOPIC_REPLICATION], "{v}");
        let t = &v["topics"][TOPIC_REPLICATION];
        assert_eq!(t["name"], TOPIC_REPLICATION);
        let parts = t["partitions"].as_array().unwrap();
        assert!(!parts.is_empty());
        for (i, p) in parts.iter().enumerate() {
            let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["id", "leader", "replicas", "isrs"]);
            assert_eq!(p["id"], i as u64);
            assert!(!p["isrs"].as_array().unwrap().is_empty());
        }
        let ic = v["internalConnections"].as_object().unwrap();
        let keys: Vec<&String> = ic.keys().collect();
        assert_eq!(keys, ["isrHealth", "zookeeper", "kafkaProducer"]);
        assert_eq!(ic["isrHealth"], "ok");
        assert_eq!(
            ic["zookeeper"],
            json!({"status": "ok", "details": {"name": "SYNC_CONNECTED", "code": 3}})
        );
        assert_eq!(ic["kafkaProducer"], json!({"status": "ok"}));
        // Every topic of the log is still reported, under our own `log` key.
        let logged: Vec<&str> = v["log"]["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(logged.contains(&TOPIC_REPLICATION), "{v}");
        assert!(logged.contains(&"backbeat-replication-status"), "{v}");
    }
    api.stop().await;
}

#[tokio::test]
async fn client_outside_the_allow_list_is_denied() {
    let api = TestApi::start_with(&["site1"], T0, "allow_from = [\"127.0.0.1/32\"]").await;
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let r = request_from(other, api.addr, "GET", "/_/healthcheck").await;
    assert_eq!(r.status, 403);
    let body = r.json();
    assert_eq!(body["AccessDenied"], true);
    assert_eq!(body["code"], 403);
    assert_eq!(body["description"], "invalid origin ip request");
    // Before the method and route checks.
    let r = request_from(other, api.addr, "PUT", "/_/nowhere").await;
    assert_eq!(r.status, 403);
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(
        request_from(local, api.addr, "GET", "/_/healthcheck")
            .await
            .status,
        200
    );
    api.stop().await;
}

#[tokio::test]
async fn bearer_token_is_checked_after_the_allow_list() {
    let api = TestApi::start_with(&["site1"], T0, "token = \"s3cret\"").await;
    assert_eq!(api.call("GET", "healthcheck", None).await.status, 401);
    api.stop().await;
}

async fn seed_failed(api: &TestApi, entries: &[(String, VersionRef, u64)], sites: &[&str]) {
    for chunk in entries.chunks(500) {
        let mut ops = Vec::with_capacity(chunk.len() * 2);
        for (site, v, score) in chunk {
            ops.push(StoreOp::PutReplication {
                version: v.clone(),
                info: failed_info(sites, site, 7),
            });
            ops.push(StoreOp::AddFailed {
                site: site.clone(),
                version: v.clone(),
                score_ms: *score,
            });
        }
        assert!(api.store.apply(vec![], ops).await.unwrap());
    }
}

/// Follows `NextMarker` to the end; checks page size, duplicates and the last page's shape.
async fn list_all(api: &TestApi, site: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut marker: Option<u64> = None;
    loop {
        let route = match marker {
            Some(m) => format!("crr/failed?sitename={site}&marker={m}"),
            None => format!("crr/failed?sitename={site}"),
        };
        let page = api.get_json(&route).await;
        let versions = page["Versions"].as_array().unwrap();
        assert!(versions.len() <= 100);
        for v in versions {
            assert_eq!(v["StorageClass"], site);
            assert_eq!(v["Size"], 7);
            assert_eq!(v["LastModified"], "2018-03-30T22:22:34.384Z");
            seen.push(format!("{}/{}/{}", v["Bucket"], v["Key"], v["VersionId"]));
        }
        if page["IsTruncated"] == json!(true) {
            let next = page["NextMarker"].as_u64().expect("numeric NextMarker");
            assert!(marker.is_none_or(|m| next < m));
            marker = Some(next);
        } else {
            assert!(page.get("NextMarker").is_none(), "{page}");
            break;
        }
    }
    seen
}

#[tokio::test]
async fn failed_listing_pages_10000_entries_in_one_hour() {
    let now = T0 + 30 * 60_000;
    let api = TestApi::start(&["site1", "site2"], now).await;
    let entries: Vec<(String, VersionRef, u64)> = (0..10_000u64)
        .map(|i| {
            (
                "site1".to_string(),
                VersionRef::new("b", format!("key:{i}/x"), format!("v{i}")),
                T0 + i * 100,
            )
        })
        .collect();
    seed_failed(&api, &entries, &["site1", "site2"]).await;
    let seen = list_all(&api, "site1").await;
    assert_eq!(seen.len(), 10_000);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 10_000);
    assert!(list_all(&api, "site2").await.is_empty());
    // An unknown marker is an empty, untruncated page.
    let p = api
        .get_json("crr/failed?sitename=site1&marker=9999999999")
        .await;
    assert_eq!(p, json!({"IsTruncated": false, "Versions": []}));
    api.stop().await;
}

#[tokio::test]
async fn failed_listing_pages_24_hours_of_750() {
    let now = T0 + 10 * 60_000;
    let api = TestApi::start(&["site1"], now).await;
    let mut entries = Vec::new();
    for h in 0..24u64 {
        for i in 0..750u64 {
            // Same score within an hour on purpose: the store makes scores unique.
            let score = T0 - h * 3_600_000 + (i / 3);
            entries.push((
                "site1".to_string(),
                VersionRef::new("b", format!("h{h}-{i}"), "null"),
                score,
            ));
        }
    }
    seed_failed(&api, &entries, &["site1"]).await;
    let seen = list_all(&api, "site1").await;
    assert_eq!(seen.len(), 24 * 750);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 24 * 750);
    let failures = api.get_json("metrics/crr/site1/failures").await;
    assert_eq!(failures["failures"]["results"]["count"], 24 * 750);
    api.stop().await;
}

/// The original's page order (reference 1.7 steps 3-4): hourly sets newest first, each set's
/// members oldest first; a page holds the 100 newest entries at or below the marker, and
/// `NextMarker` is the score of the entry just below the page, which starts the next page.
#[tokio::test]
async fn failed_listing_orders_hours_newest_first_and_members_oldest_first() {
    let now = T0 + 30 * 60_000;
    let api = TestApi::start(&["site1"], now).await;
    let hour = 3_600_000;
    let mut entries = Vec::new();
    // 102 failures in the current hour, 2 in the hour before.
    for i in 1..=102u64 {
        entries.push((
            "site1".to_string(),
            VersionRef::new("b", format!("now-{i}"), "v"),
            T0 + i,
        ));
    }
    for i in 1..=2u64 {
        let v = VersionRef::new("b", format!("before-{i}"), "v");
        entries.push(("site1".to_string(), v, T0 - hour + i));
    }
    seed_failed(&api, &entries, &["site1"]).await;
    let keys = |page: &Value| -> Vec<String> {
        page["Versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Key"].as_str().unwrap().to_string())
            .collect()
    };
    let first = api.get_json("crr/failed?sitename=site1").await;
    assert_eq!(first["IsTruncated"], true);
    assert_eq!(first["NextMarker"], T0 + 2);
    let want: Vec<String> = (3..=102).map(|i| format!("now-{i}")).collect();
    assert_eq!(keys(&first), want);
    let second = api
        .get_json(&format!("crr/failed?sitename=site1&marker={}", T0 + 2))
        .await;
    assert_eq!(second["IsTruncated"], false);
    assert!(second.get("NextMarker").is_none());
    assert_eq!(keys(&second), ["now-1", "now-2", "before-1", "before-2"]);
    api.stop().await;
}

#[tokio::test]
async fn failed_listing_skips_versions_without_info() {
    let api = TestApi::start(&["site1"], T0).await;
    let v1 = VersionRef::new("b", "with-info", "1");
    let v2 = VersionRef::new("b", "no-info", "2");
    seed_failed(&api, &[("site1".into(), v1.clone(), T0 - 5)], &["site1"]).await;
    let ops = vec![StoreOp::AddFailed {
        site: "site1".into(),
        version: v2,
        score_ms: T0 - 1,
    }];
    assert!(api.store.apply(vec![], ops).await.unwrap());
    let page = api.get_json("crr/failed?sitename=site1").await;
    assert_eq!(
        page,
        json!({"IsTruncated": false, "Versions": [{"Bucket": "b", "Key": "with-info", "VersionId": "1",
            "StorageClass": "site1", "Size": 7, "LastModified": "2018-03-30T22:22:34.384Z"}]})
    );
    api.stop().await;
}

#[tokio::test]
async fn failed_of_one_version_spans_sites() {
    let api = TestApi::start(&["site1", "site2", "site3"], T0).await;
    let v = VersionRef::new("bkt", "a/b:c", "v9");
    let mut info = failed_info(&["site1", "site2", "site3"], "site1", 7);
    info.set_site_status("site3", ReplicationStatus::Failed, None);
    let ops = vec![
        StoreOp::PutReplication {
            version: v.clone(),
            info,
        },
        StoreOp::AddFailed {
            site: "site1".into(),
            version: v.clone(),
            score_ms: T0 - 10,
        },
        StoreOp::AddFailed {
            site: "site3".into(),
            version: v.clone(),
            score_ms: T0 - 20,
        },
    ];
    assert!(api.store.apply(vec![], ops).await.unwrap());
    let r = api.get_json("crr/failed/bkt/a/b:c?versionId=v9").await;
    assert_eq!(r["IsTruncated"], false);
    let sites: Vec<&str> = r["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["StorageClass"].as_str().unwrap())
        .collect();
    assert_eq!(sites, vec!["site1", "site3"]);
    assert_eq!(r["Versions"][0]["Key"], "a/b:c");
    // The key may come percent-encoded, `/` and `:` included, on either prefix.
    assert_eq!(
        api.get_json("crr/failed/bkt/a%2Fb%3Ac?versionId=v9").await,
        r
    );
    let native = request(
        api.addr,
        "GET",
        "/_/crr/failed/bkt/a/b%3Ac?versionId=v9",
        None,
    )
    .await;
    assert_eq!(native.json(), r);
    let none = api.get_json("crr/failed/bkt/a/b:c?versionId=other").await;
    assert_eq!(none, json!({"IsTruncated": false, "Versions": []}));
    api.stop().await;
}

async fn site_status(api: &TestApi, v: &VersionRef, site: &str) -> ReplicationStatus {
    api.store
        .replication(v)
        .await
        .unwrap()
        .unwrap()
        .site(site)
        .unwrap()
        .status
}

async fn log_end(api: &TestApi) -> u64 {
    let engine = api.engine.as_ref().unwrap();
    engine
        .log
        .lag(TOPIC_REPLICATION, &replication_group("site1"))
        .await
        .unwrap()
        .iter()
        .map(|l| l.end)
        .sum()
}

#[tokio::test]
async fn retry_requeues_a_failed_version_once() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let v = VersionRef::new("bkt", "my key", "v1");
    seed_failed(
        &api,
        &[("site1".into(), v.clone(), T0 - 1000)],
        &["site1", "site2"],
    )
    .await;
    let body = br#"[{"Bucket":"bkt","Key":"my key","VersionId":"v1","StorageClass":"site1"},
                    {"Bucket":"bkt","Key":"my key","VersionId":"v1","StorageClass":"site1"}]"#;
    let r = api.call("POST", "crr/failed", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!([{"Bucket": "bkt", "Key": "my key", "VersionId": "v1", "StorageClass": "site1",
                "Size": 7, "LastModified": "2018-03-30T22:22:34.384Z", "ReplicationStatus": "PENDING"}])
    );
    assert_eq!(
        site_status(&api, &v, "site1").await,
        ReplicationStatus::Pending
    );
    assert_eq!(api.store.pending("site1").await.unwrap(), (1, 7));
    assert_eq!(api.store.failed_count("site1").await.unwrap(), 0);
    assert_eq!(log_end(&api).await, 1);
    // The retry entry is the original's retry entry for the site.
    let engine = api.engine.as_ref().unwrap();
    let mut consumer = engine
        .log
        .consumer(TOPIC_REPLICATION, "test-reader")
        .await
        .unwrap();
    let got = consumer
        .poll(10, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let entry = backbeat::entry::QueueEntry::decode(&got[0].record.value).unwrap();
    assert_eq!(entry.site.as_deref(), Some("site1"));
    assert_eq!(entry.version().unwrap(), v);
    assert_eq!(entry.metadata().unwrap().sites(), vec!["site1".to_string()]);
    // Not in the failed set any more: nothing to do.
    let again = api.call("POST", "crr/failed", Some(body)).await;
    assert_eq!(again.json(), json!([]));
    assert_eq!(api.store.pending("site1").await.unwrap(), (1, 7));
    assert_eq!(log_end(&api).await, 1);
    api.stop().await;
}

#[tokio::test]
async fn retry_skips_unknown_locked_and_completed_versions() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let unknown = br#"[{"Bucket":"b","Key":"nope","VersionId":"1","StorageClass":"site1"}]"#;
    assert_eq!(
        api.call("POST", "crr/failed", Some(unknown)).await.json(),
        json!([])
    );
    let forced = br#"[{"Bucket":"b","Key":"nope","VersionId":"1","StorageClass":"site1","ForceRetry":true}]"#;
    assert_eq!(
        api.call("POST", "crr/failed", Some(forced)).await.json(),
        json!([])
    );

    // A locked version is skipped until its lock expires.
    let v = VersionRef::new("b", "locked", "1");
    seed_failed(
        &api,
        &[("site1".into(), v.clone(), T0 - 1)],
        &["site1", "site2"],
    )
    .await;
    let mut name = String::from("crr-retry\u{0}site1\u{0}");
    for b in v.encode() {
        name.push_str(&format!("{b:02x}"));
    }
    assert!(api.store.try_lock(&name, 1_000).await.unwrap());
    let body = br#"[{"Bucket":"b","Key":"locked","VersionId":"1","StorageClass":"site1"}]"#;
    assert_eq!(
        api.call("POST", "crr/failed", Some(body)).await.json(),
        json!([])
    );
    api.clock.advance(1_001);
    let r = api.call("POST", "crr/failed", Some(body)).await.json();
    assert_eq!(r[0]["ReplicationStatus"], "PENDING");

    // ForceRetry of a COMPLETED site is refused (COMPLETED is final; counters stay exact).
    let done = VersionRef::new("b", "done", "1");
    let mut info = failed_info(&["site1", "site2"], "site2", 3);
    info.set_site_status("site1", ReplicationStatus::Completed, Some("r1"));
    let ops = vec![StoreOp::PutReplication {
        version: done.clone(),
        info,
    }];
    assert!(api.store.apply(vec![], ops).await.unwrap());
    let body = br#"[{"Bucket":"b","Key":"done","VersionId":"1","StorageClass":"site1","ForceRetry":true}]"#;
    assert_eq!(
        api.call("POST", "crr/failed", Some(body)).await.json(),
        json!([])
    );
    api.stop().await;
}

#[tokio::test]
async fn force_retry_requeues_expired_failures_and_stuck_pending_versions() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    // FAILED but gone from the 24 h failed set: only ForceRetry re-queues it.
    let v = VersionRef::new("b", "old", "1");
    let ops = vec![StoreOp::PutReplication {
        version: v.clone(),
        info: failed_info(&["site1", "site2"], "site1", 11),
    }];
    assert!(api.store.apply(vec![], ops).await.unwrap());
    let plain = br#"[{"Bucket":"b","Key":"old","VersionId":"1","StorageClass":"site1"}]"#;
    assert_eq!(
        api.call("POST", "crr/failed", Some(plain)).await.json(),
        json!([])
    );
    let forced =
        br#"[{"Bucket":"b","Key":"old","VersionId":"1","StorageClass":"site1","ForceRetry":true}]"#;
    let r = api.call("POST", "crr/failed", Some(forced)).await.json();
    assert_eq!(r[0]["ReplicationStatus"], "PENDING");
    assert_eq!(
        site_status(&api, &v, "site1").await,
        ReplicationStatus::Pending
    );
    assert_eq!(api.store.pending("site1").await.unwrap(), (1, 11));
    // Now PENDING: a forced retry re-queues without counting it twice.
    let r = api.call("POST", "crr/failed", Some(forced)).await.json();
    assert_eq!(r[0]["ReplicationStatus"], "PENDING");
    assert_eq!(api.store.pending("site1").await.unwrap(), (1, 11));
    assert_eq!(log_end(&api).await, 2);
    api.stop().await;
}

#[tokio::test]
async fn an_interrupted_retry_is_requeued_by_the_next_one() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    // The state a crash between the retry's first step and its append leaves: PENDING,
    // counted, still in the failed set, nothing queued.
    let v = VersionRef::new("b", "interrupted", "1");
    let mut info = failed_info(&["site1", "site2"], "site1", 9);
    info.set_site_status("site1", ReplicationStatus::Pending, None);
    let stale = VersionRef::new("b", "stale", "1");
    let mut done = failed_info(&["site1", "site2"], "site1", 9);
    done.set_site_status("site1", ReplicationStatus::Completed, Some("r"));
    let ops = vec![
        StoreOp::PutReplication {
            version: v.clone(),
            info,
        },
        StoreOp::AddFailed {
            site: "site1".into(),
            version: v.clone(),
            score_ms: T0 - 1,
        },
        StoreOp::AddPending {
            site: "site1".into(),
            ops: 1,
            bytes: 9,
        },
        StoreOp::PutReplication {
            version: stale.clone(),
            info: done,
        },
        StoreOp::AddFailed {
            site: "site1".into(),
            version: stale.clone(),
            score_ms: T0 - 2,
        },
    ];
    assert!(api.store.apply(vec![], ops).await.unwrap());
    let body = br#"[{"Bucket":"b","Key":"interrupted","VersionId":"1","StorageClass":"site1"},
                    {"Bucket":"b","Key":"stale","VersionId":"1","StorageClass":"site1"}]"#;
    let r = api.call("POST", "crr/failed", Some(body)).await.json();
    assert_eq!(r.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r[0]["Key"], "interrupted");
    assert_eq!(log_end(&api).await, 1);
    assert_eq!(api.store.pending("site1").await.unwrap(), (1, 9));
    // Both entries left the failed set: one re-queued, the stale COMPLETED one dropped.
    assert_eq!(api.store.failed_count("site1").await.unwrap(), 0);
    assert_eq!(
        site_status(&api, &stale, "site1").await,
        ReplicationStatus::Completed
    );
    api.stop().await;
}

#[tokio::test]
async fn retry_of_50_sites_answers_50() {
    let sites: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
    let names: Vec<&str> = sites.iter().map(String::as_str).collect();
    let api = TestApi::start(&names, T0).await;
    let v = VersionRef::new("b", "k", "v");
    let mut info = ReplicationInfo::pending(&sites);
    for s in &sites {
        info.set_site_status(s, ReplicationStatus::Failed, None);
    }
    let mut ops = vec![StoreOp::PutReplication {
        version: v.clone(),
        info,
    }];
    for s in &sites {
        ops.push(StoreOp::AddFailed {
            site: s.clone(),
            version: v.clone(),
            score_ms: T0,
        });
    }
    assert!(api.store.apply(vec![], ops).await.unwrap());
    let body: Vec<Value> = sites
        .iter()
        .map(|s| json!({"Bucket": "b", "Key": "k", "VersionId": "v", "StorageClass": s}))
        .collect();
    let body = serde_json::to_vec(&body).unwrap();
    let r = api.call("POST", "crr/failed", Some(&body)).await.json();
    let got: Vec<&str> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["StorageClass"].as_str().unwrap())
        .collect();
    assert_eq!(got, names);
    let info = api.store.replication(&v).await.unwrap().unwrap();
    assert_eq!(info.status, Some(ReplicationStatus::Pending));
    api.stop().await;
}

/// The original parses `marker` and `sitename` on every `crr/failed` route, the retry POST
/// included (reference 1.2 step 5): a bad one is a 400 InvalidQueryParameter before the body
/// is looked at, and nothing is queued.
#[tokio::test]
async fn retry_with_a_bad_query_is_400_before_its_body() {
    let api = TestApi::start(&["site1"], T0).await;
    let v = VersionRef::new("bkt", "k", "v1");
    seed_failed(&api, &[("site1".into(), v, T0 - 1)], &["site1"]).await;
    let good = br#"[{"Bucket":"bkt","Key":"k","VersionId":"v1","StorageClass":"site1"}]"#;
    let before = log_end(&api).await;
    for (query, description) in [
        ("marker=abc", "marker must be a number"),
        ("marker=", "marker must be a number"),
        ("sitename=", "must be a non-empty string"),
    ] {
        for body in [&good[..], b"not json"] {
            let r = api
                .call("POST", &format!("crr/failed?{query}"), Some(body))
                .await;
            assert_eq!(r.status, 400, "{query}");
            let e = r.json();
            assert_eq!(e["InvalidQueryParameter"], true, "{query}: {e}");
            assert_eq!(e["description"], description);
        }
    }
    assert_eq!(log_end(&api).await, before, "nothing queued");
    // A valid query does not stand in the way.
    let r = api
        .call("POST", "crr/failed?marker=5&sitename=site1", Some(good))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    api.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_400_and_never_queue_anything() {
    let api = TestApi::start(&["site1"], T0).await;
    let junk = vec![b'x'; 1024 * 1024];
    let bodies: Vec<&[u8]> = vec![
        b"",
        b"not json",
        b"\"a\"",
        b"{}",
        b"[]",
        b"[\"a\"]",
        b"[1]",
        b"[{\"Key\":\"k\",\"StorageClass\":\"site1\"}]",
        b"[{\"Bucket\":\"b\",\"StorageClass\":\"site1\"}]",
        b"[{\"Bucket\":\"b\",\"Key\":\"k\"}]",
        b"[{\"Bucket\":\"\",\"Key\":\"k\",\"StorageClass\":\"site1\"}]",
        b"[{\"Bucket\":\"b\",\"Key\":\"\",\"StorageClass\":\"site1\"}]",
        b"[{\"Bucket\":\"b\",\"Key\":\"k\",\"StorageClass\":\"\"}]",
        b"[{\"Bucket\":\"b\",\"Key\":\"k\",\"StorageClass\":1}]",
        b"\xff\xfe\x00",
        &junk,
    ];
    for body in &bodies {
        let r = api.call("POST", "crr/failed", Some(body)).await;
        assert_eq!(
            r.status,
            400,
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
        let e = r.json();
        assert_eq!(e["MalformedPOSTRequest"], true);
        assert!(e["description"]
            .as_str()
            .unwrap()
            .starts_with("The body of your POST request is not well-formed"));
    }
    for body in [
        &b"x"[..],
        b"[]",
        b"{\"hours\":-1}",
        b"{\"hours\":\"2\"}",
        b"\xff",
        &junk,
    ] {
        let r = api
            .call("POST", "crr/resume/site1/schedule", Some(body))
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["MalformedPOSTRequest"], true);
    }
    for body in [
        &b"x"[..],
        b"[]",
        b"{}",
        b"{\"Records\":[{}]}",
        b"\xff",
        &junk,
    ] {
        let r = api.call("POST", "notifications/s3", Some(body)).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["MalformedPOSTRequest"], true);
    }
    assert!(api.intake.got.lock().is_empty());
    assert_eq!(log_end(&api).await, 0);
    // Still serving.
    assert_eq!(api.call("GET", "healthcheck", None).await.status, 200);
    api.stop().await;
}

#[tokio::test]
async fn pause_resume_and_status_per_site_and_all() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let control = api.engine.as_ref().unwrap().control.clone();
    let mut rx = control.subscribe("site1");
    assert!(!rx.borrow().paused);
    let r = api.call("POST", "crr/pause/site1", None).await;
    assert_eq!((r.status, r.json()), (200, json!({})));
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().paused);
    assert_eq!(
        api.get_json("crr/status").await,
        json!({"site1": "disabled", "site2": "enabled"})
    );
    assert_eq!(
        api.get_json("crr/status/site1").await,
        json!({"site1": "disabled"})
    );
    assert_eq!(api.call("POST", "crr/pause", None).await.status, 200);
    assert_eq!(
        api.get_json("crr/status/all").await,
        json!({"site1": "disabled", "site2": "disabled"})
    );
    assert_eq!(api.call("POST", "crr/resume/site2", None).await.status, 200);
    assert_eq!(
        api.get_json("crr/status").await,
        json!({"site1": "disabled", "site2": "enabled"})
    );
    assert_eq!(api.call("POST", "crr/resume/all", None).await.status, 200);
    assert_eq!(
        api.get_json("crr/status").await,
        json!({"site1": "enabled", "site2": "enabled"})
    );
    assert!(!rx.borrow_and_update().paused);
    // The state survives a restart.
    assert_eq!(api.call("POST", "crr/pause/site2", None).await.status, 200);
    let api = api.restart().await;
    assert_eq!(
        api.get_json("crr/status").await,
        json!({"site1": "enabled", "site2": "disabled"})
    );
    let control = api.engine.as_ref().unwrap().control.clone();
    assert!(control.subscribe("site2").borrow().paused);
    api.stop().await;
}

async fn wait_for(api: &TestApi, route: &str, want: Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = api.get_json(route).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{route}: {got} != {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn scheduled_resume_fires_also_after_a_restart() {
    let now = T0 + 123;
    let api = TestApi::start(&["site1", "site2"], now).await;
    assert_eq!(api.call("POST", "crr/pause", None).await.status, 200);
    // Default 6 h with an empty body, {} or hours 0; fractional hours accepted.
    for (site, body, hours) in [
        ("site1", &b""[..], 6.0),
        ("site1", b"{}", 6.0),
        ("site1", b"{\"hours\":0}", 6.0),
        ("site2", b"{\"hours\":1.5}", 1.5),
    ] {
        let r = api
            .call("POST", &format!("crr/resume/{site}/schedule"), Some(body))
            .await;
        assert_eq!((r.status, r.json()), (200, json!({})));
        let at = iso8601_ms(now + (hours * 3_600_000.0) as u64);
        assert_eq!(
            api.get_json(&format!("crr/resume/{site}")).await,
            json!({ site: at })
        );
    }
    assert_eq!(
        api.get_json("crr/resume").await,
        json!({"site1": iso8601_ms(now + 6 * 3_600_000), "site2": iso8601_ms(now + 5_400_000)})
    );
    // Cancel site1's schedule; site1 stays paused.
    assert_eq!(
        api.call("DELETE", "crr/resume/site1/schedule", None)
            .await
            .status,
        200
    );
    assert_eq!(
        api.get_json("crr/resume/site1/schedule").await,
        json!({"site1": "none"})
    );
    // Restart, then let site2's time come: it resumes, site1 does not.
    let api = api.restart().await;
    api.clock.advance(5_400_000);
    wait_for(
        &api,
        "crr/status",
        json!({"site1": "disabled", "site2": "enabled"}),
    )
    .await;
    assert_eq!(
        api.get_json("crr/resume").await,
        json!({"site1": "none", "site2": "none"})
    );
    // A manual resume cancels a schedule; a past-due schedule fires at start.
    assert_eq!(
        api.call("POST", "crr/resume/site1/schedule", Some(b"{\"hours\":1}"))
            .await
            .status,
        200
    );
    assert_eq!(api.call("POST", "crr/resume/site1", None).await.status, 200);
    assert_eq!(
        api.get_json("crr/resume/site1").await,
        json!({"site1": "none"})
    );
    assert_eq!(api.call("POST", "crr/pause/site1", None).await.status, 200);
    assert_eq!(
        api.call(
            "POST",
            "crr/resume/site1/schedule",
            Some(b"{\"hours\":0.5}")
        )
        .await
        .status,
        200
    );
    let mut api = api;
    if let Some(e) = api.engine.take() {
        e.stop().await;
    }
    api.clock.advance(3_600_000);
    let api = api.restart().await;
    wait_for(&api, "crr/status/site1", json!({"site1": "enabled"})).await;
    api.stop().await;
}

#[tokio::test]
async fn object_view_as_json_and_headers() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let v = VersionRef::new("bkt", "dir/é k", "v1");
    let mut info = ReplicationInfo::pending(&["site1".to_string(), "site2".to_string()]);
    info.set_site_status("site1", ReplicationStatus::Completed, Some("remote-1"));
    let ops = vec![StoreOp::PutReplication {
        version: v.clone(),
        info,
    }];
    assert!(api
        .store
        .apply(vec![Guard::Absent(v.clone())], ops)
        .await
        .unwrap());
    let path = "crr/object/bkt/dir/%C3%A9%20k?versionId=v1";
    let r = api.call("GET", path, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"bucket": "bkt", "key": "dir/é k", "versionId": "v1", "status": "PROCESSING",
               "sites": {"site1": {"status": "COMPLETED", "versionId": "remote-1"},
                         "site2": {"status": "PENDING"}}})
    );
    let h = api.call("HEAD", path, None).await;
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(h.header("x-amz-replication-status"), Some("PROCESSING"));
    assert_eq!(
        h.header("x-amz-meta-site1-replication-status"),
        Some("COMPLETED")
    );
    assert_eq!(h.header("x-amz-meta-site1-version-id"), Some("remote-1"));
    assert_eq!(
        h.header("x-amz-meta-site2-replication-status"),
        Some("PENDING")
    );
    assert_eq!(h.header("x-amz-meta-site2-version-id"), None);
    let missing = api
        .call("GET", "crr/object/bkt/dir/x?versionId=v1", None)
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["NoSuchKey"], true);
    assert_eq!(
        api.call("HEAD", "crr/object/bkt/dir/x?versionId=v1", None)
            .await
            .status,
        404
    );
    api.stop().await;
}

#[tokio::test]
async fn s3_notifications_reach_the_intake() {
    let api = TestApi::start(&["site1"], T0).await;
    let body = br#"{"Records":[
        {"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"photos"},
         "object":{"key":"my+dir/a%2Bb.jpg","versionId":"v1","size":42,"eTag":"abc"}}},
        {"eventName":"ObjectCreated:Copy","s3":{"bucket":{"name":"photos"},"object":{"key":"plain"}}}]}"#;
    let r = api.call("POST", "notifications/s3", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"received": 2, "queued": 2}));
    {
        let got = api.intake.got.lock();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].key, "my dir/a+b.jpg");
        assert_eq!(got[0].version_id.as_deref(), Some("v1"));
        assert_eq!(got[0].size, Some(42));
        assert_eq!(got[1].version_id, None);
    }
    let test_event = br#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"photos"}"#;
    let r = api.call("POST", "notifications/s3", Some(test_event)).await;
    assert_eq!(r.status, 200);
    assert_eq!(api.intake.got.lock().len(), 2);
    api.stop().await;
}

#[tokio::test]
async fn s3_notifications_without_a_source_are_503() {
    let api = TestApi::start_without_intake(&["site1"], T0).await;
    let body = br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#;
    let r = api.call("POST", "notifications/s3", Some(body)).await;
    assert_eq!(r.status, 503);
    let e = r.json();
    assert_eq!(e["ServiceUnavailable"], true);
    assert_eq!(e["description"], "no source configured");
    // Body validation still comes first.
    assert_eq!(
        api.call("POST", "notifications/s3", Some(b"x"))
            .await
            .status,
        400
    );
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

#[tokio::test]
async fn openapi_document_lists_exactly_the_router_table() {
    let doc: Value = serde_json::from_str(backbeat::api::routes::OPENAPI).unwrap();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(
        routed.len(),
        ROUTES.len(),
        "duplicate rows in the route table"
    );
    assert_eq!(documented, routed);
    // And the server serves the document.
    let api = TestApi::start(&["site1"], T0).await;
    assert_eq!(api.get_json("openapi.json").await, doc);
    api.stop().await;
}
