//! The operator's view (DESIGN sections 5 and 6): `GET status` from the store, the pause
//! control and the observer; the same failure count in REST, Prometheus and `status`; the
//! site states in Prometheus and the healthcheck; `status/history`; the status page's files
//! under the allow-list and without the token.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use backbeat::clock::{iso8601_ms, Clock};
use backbeat::error::FailureReason;
use backbeat::model::VersionRef;
use backbeat::observe::Observer;
use backbeat::store::{Metric, StoreOp, METRICS_BUCKET_MS};
use serde_json::{json, Value};

use crate::common::api::{request, request_from, request_with, TestApi, T0};

fn observer(api: &TestApi) -> Arc<Observer> {
    api.engine.as_ref().unwrap().observer.clone()
}

fn metric(site: &str, m: Metric, value: u64, at_ms: u64) -> StoreOp {
    StoreOp::AddMetric {
        site: site.into(),
        metric: m,
        value,
        at_ms,
    }
}

/// The value of the Prometheus sample written exactly `name{labels}`.
async fn sample(api: &TestApi, series: &str) -> f64 {
    let text = api.call("GET", "monitoring/metrics", None).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series}:\n{text}"))
        .parse()
        .unwrap()
}

fn close(got: &Value, want: f64) -> bool {
    got.as_f64()
        .is_some_and(|g| (g - want).abs() <= want.abs() * 0.0625)
}

fn site<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no site {name}: {status}"))
}

#[tokio::test]
async fn status_tells_each_site_from_the_store_the_pause_control_and_the_observer() {
    let api = TestApi::start(&["site1", "site2"], T0 + 60_000).await;
    let now = api.clock.now_ms();
    let mut ops = vec![
        StoreOp::AddPending {
            site: "site1".into(),
            ops: 3,
            bytes: 3000,
        },
        metric("site1", Metric::OpsDone, 5, now),
        metric("site1", Metric::BytesDone, 500, now),
    ];
    for i in 0..2 {
        ops.push(StoreOp::AddFailed {
            site: "site1".into(),
            version: VersionRef::new("b", format!("k{i}"), "v"),
            info: crate::failed_info(now - i),
            score_ms: now - i,
        });
    }
    api.store.apply(ops).await.unwrap();
    let obs = observer(&api);
    obs.completed("site1", 100, Some(Duration::from_secs(2)));
    obs.completed("site1", 100, Some(Duration::from_secs(4)));
    obs.completed("site1", 100, None);
    obs.set_oldest_pending("site1", Some(now - 90_000));
    obs.failed("site1", FailureReason::Timeout, 10);
    obs.failed("site1", FailureReason::Timeout, 10);
    obs.skipped("site1", "superseded");
    for _ in 0..3 {
        obs.attempt_failed(
            "site2",
            FailureReason::Unreachable,
            "connection refused by http://user:pw@h:9/x?X-Amz-Signature=1\nretrying",
        );
    }
    obs.scan_done("photos");
    obs.set_watching("photos", true);

    let st = api.get_json("status").await;
    let native = request(api.addr, "GET", "/_/status", None).await;
    assert_eq!(native.status, 200);
    assert_eq!(native.json(), st, "both prefixes answer the same");
    let keys: Vec<&String> = site(&st, "site1").as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "name",
            "state",
            "backlog",
            "oldestPendingSeconds",
            "lag",
            "throughput",
            "throughput900s",
            "completions24h",
            "failures24h",
            "failuresByReason",
            "etaSeconds",
            "lastError"
        ]
    );
    let s1 = site(&st, "site1");
    assert_eq!(s1["state"], "behind", "{s1}");
    assert_eq!(s1["backlog"], json!({"ops": 3, "bytes": 3000}));
    assert_eq!(s1["oldestPendingSeconds"], json!(90.0));
    assert!(close(&s1["lag"]["p50"], 2.0), "{s1}");
    assert!(close(&s1["lag"]["p99"], 4.0), "{s1}");
    assert_eq!(
        s1["throughput"],
        json!({"opsPerSecond": 0.05, "bytesPerSecond": 5.0})
    );
    assert_eq!(
        s1["throughput900s"],
        json!({"opsPerSecond": 0.01, "bytesPerSecond": 0.56})
    );
    assert_eq!(s1["completions24h"], 5);
    assert_eq!(s1["failures24h"], 2);
    assert_eq!(s1["failuresByReason"], json!({"Timeout": 2}));
    assert_eq!(s1["etaSeconds"], 60, "3 pending at 0.05/s");
    assert_eq!(s1["lastError"], Value::Null);
    let s2 = site(&st, "site2");
    assert_eq!(s2["state"], "failing", "{s2}");
    assert_eq!(s2["backlog"], json!({"ops": 0, "bytes": 0}));
    assert_eq!(s2["etaSeconds"], 0);
    assert_eq!(s2["lag"], json!({"p50": null, "p99": null}));
    assert_eq!(
        s2["lastError"],
        json!({"at": iso8601_ms(now), "message": "connection refused by http://***@h:9/x?*** retrying"})
    );
    assert_eq!(
        st["sources"],
        json!([{"bucket": "photos", "lastFullScan": iso8601_ms(now), "watching": true}])
    );

    // One definition of failures: the REST metrics, Prometheus and status agree.
    let rest = api.get_json("metrics/crr/site1/failures").await;
    assert_eq!(rest["failures"]["results"]["count"], s1["failures24h"]);
    for series in [
        "s3_replication_failed_objects_24h{location=\"site1\"}",
        "s3_replication_failed_objects{location=\"site1\"}",
    ] {
        assert_eq!(sample(&api, series).await, 2.0, "{series}");
    }
    let rest = api.get_json("metrics/crr/site1/completions").await;
    assert_eq!(
        rest["completions"]["results"]["count"],
        s1["completions24h"]
    );

    // The observer's families, labelled `site`.
    for (series, want) in [
        ("backbeat_site_state{site=\"site1\",state=\"behind\"}", 1.0),
        ("backbeat_site_state{site=\"site1\",state=\"ok\"}", 0.0),
        ("backbeat_site_state{site=\"site2\",state=\"failing\"}", 1.0),
        (
            "backbeat_replication_failures_total{site=\"site1\",reason=\"Timeout\"}",
            2.0,
        ),
        (
            "backbeat_replication_failures_total{site=\"site1\",reason=\"AccessDenied\"}",
            0.0,
        ),
        (
            "backbeat_replication_failed_bytes_total{site=\"site1\"}",
            20.0,
        ),
        (
            "backbeat_replication_skipped_total{site=\"site1\",reason=\"superseded\"}",
            1.0,
        ),
        ("backbeat_replication_completed_total{site=\"site1\"}", 3.0),
        (
            "backbeat_replication_completed_bytes_total{site=\"site1\"}",
            300.0,
        ),
        ("backbeat_replication_backfill_total{site=\"site1\"}", 1.0),
        (
            "backbeat_replication_lag_seconds_count{site=\"site1\"}",
            2.0,
        ),
        ("backbeat_replication_lag_seconds_sum{site=\"site1\"}", 6.0),
        (
            "backbeat_replication_lag_seconds_bucket{site=\"site1\",le=\"2.5\"}",
            1.0,
        ),
        (
            "backbeat_replication_lag_seconds_bucket{site=\"site1\",le=\"+Inf\"}",
            2.0,
        ),
        (
            "backbeat_replication_oldest_pending_seconds{site=\"site1\"}",
            90.0,
        ),
        (
            "backbeat_replication_oldest_pending_seconds{site=\"site2\"}",
            0.0,
        ),
        ("backbeat_replication_lag_target_seconds", 60.0),
        ("backbeat_replication_stall_after_seconds", 120.0),
    ] {
        assert_eq!(sample(&api, series).await, want, "{series}");
    }
    assert!(sample(&api, "backbeat_data_dir_bytes").await > 0.0);

    // Paused wins over everything, from the pause control.
    assert_eq!(api.call("POST", "crr/pause/site2", None).await.status, 200);
    let st = api.get_json("status").await;
    assert_eq!(site(&st, "site2")["state"], "paused");
    let h = api.get_json("healthcheck").await;
    assert_eq!(h["sites"]["site1"], json!({"state": "behind"}));
    assert_eq!(h["sites"]["site2"], json!({"state": "paused"}));
    api.stop().await;
}

#[tokio::test]
async fn the_healthcheck_tells_stalled_and_failing_sites_and_stays_200() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let pending = StoreOp::AddPending {
        site: "site1".into(),
        ops: 1,
        bytes: 10,
    };
    api.store.apply(vec![pending]).await.unwrap();
    // Work starts waiting when the engine first sees it...
    let h = api.get_json("healthcheck").await;
    assert_eq!(h["sites"]["site1"], json!({"state": "ok"}));
    // ... and nothing completes for stall_after (120 s).
    api.clock.advance(120_000);
    let r = api.call("GET", "healthcheck", None).await;
    assert_eq!(r.status, 200, "a stalled site leaves the engine healthy");
    let h = r.json();
    assert_eq!(
        h["sites"]["site1"],
        json!({"state": "stalled", "lastError": null})
    );
    assert_eq!(h["sites"]["site2"], json!({"state": "ok"}));
    assert_eq!(
        h["internalConnections"]["zookeeper"]["status"], "ok",
        "the state store"
    );
    assert_eq!(h["internalConnections"]["kafkaProducer"]["status"], "ok");
    let obs = observer(&api);
    for _ in 0..3 {
        obs.attempt_failed("site1", FailureReason::AccessDenied, "403 Forbidden");
    }
    let h = api.get_json("healthcheck").await;
    assert_eq!(
        h["sites"]["site1"],
        json!({"state": "failing", "lastError": {"at": iso8601_ms(T0 + 120_000), "message": "403 Forbidden"}})
    );
    // A completion ends both.
    obs.completed("site1", 10, Some(Duration::from_secs(1)));
    let h = api.get_json("healthcheck").await;
    assert_eq!(h["sites"]["site1"], json!({"state": "ok"}));
    api.stop().await;
}

#[tokio::test]
async fn history_serves_five_minute_points_oldest_first() {
    let api = TestApi::start(&["site1", "site2"], T0 + 60_000).await;
    let now = api.clock.now_ms();
    let ops = vec![
        metric("site1", Metric::Ops, 4, now),
        metric("site1", Metric::OpsDone, 3, now),
        metric("site1", Metric::BytesDone, 300, now),
        metric("site1", Metric::OpsFail, 1, now - 10 * 60_000),
        StoreOp::AddPending {
            site: "site1".into(),
            ops: 2,
            bytes: 20,
        },
    ];
    api.store.apply(ops).await.unwrap();
    observer(&api).completed("site1", 100, Some(Duration::from_secs(5)));
    let h = api.get_json("status/history?hours=1").await;
    assert_eq!(h["bucketSeconds"], 300);
    assert_eq!(h["hours"], 1);
    assert_eq!(h["startMs"], T0 - 11 * METRICS_BUCKET_MS);
    assert_eq!(h["start"], iso8601_ms(T0 - 11 * METRICS_BUCKET_MS));
    let s1 = &h["sites"][0];
    assert_eq!(s1["name"], "site1");
    let tail = |k: &str| -> Vec<Value> {
        let v = s1[k].as_array().unwrap();
        assert_eq!(v.len(), 12, "{k}");
        v[8..].to_vec()
    };
    assert_eq!(tail("queued"), [json!(0), json!(0), json!(0), json!(4)]);
    assert_eq!(tail("completed"), [json!(0), json!(0), json!(0), json!(3)]);
    assert_eq!(
        tail("completedBytes"),
        [json!(0), json!(0), json!(0), json!(300)]
    );
    assert_eq!(tail("failed"), [json!(0), json!(1), json!(0), json!(0)]);
    // Rebuilt backwards from the 2 pending now: before the current bucket 2 - 4 + 3 = 1, and
    // before the failure 1 + 1 = 2.
    assert_eq!(tail("backlog"), [json!(2), json!(1), json!(1), json!(2)]);
    assert_eq!(
        tail("lagMean"),
        [Value::Null, Value::Null, Value::Null, json!(5.0)]
    );
    assert_eq!(
        tail("lagMax"),
        [Value::Null, Value::Null, Value::Null, json!(5.0)]
    );
    let s2 = &h["sites"][1];
    assert!(s2["queued"].as_array().unwrap().iter().all(|v| v == 0));

    let default = api.get_json("status/history").await;
    assert_eq!(default["hours"], 6);
    assert_eq!(default["sites"][0]["queued"].as_array().unwrap().len(), 72);
    assert_eq!(
        api.get_json("status/history?hours=24").await["sites"][0]["backlog"]
            .as_array()
            .unwrap()
            .len(),
        288
    );
    for bad in ["0", "25", "x", "", "-1", "1.5"] {
        let r = api
            .call("GET", &format!("status/history?hours={bad}"), None)
            .await;
        assert_eq!(r.status, 400, "hours={bad}");
        assert_eq!(r.json()["InvalidQueryParameter"], true);
    }
    api.stop().await;
}

#[tokio::test]
async fn the_status_page_is_served_under_the_allow_list_without_the_token() {
    let api = TestApi::start_with(
        &["site1"],
        T0,
        "token = \"s3cret\"\nallow_from = [\"127.0.0.1/32\"]",
    )
    .await;
    for (path, ct) in [
        ("/_/backbeat/ui/", "text/html; charset=utf-8"),
        ("/_/backbeat/ui/app.js", "text/javascript; charset=utf-8"),
        ("/_/backbeat/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let r = request(api.addr, "GET", path, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ct));
        assert!(r
            .header("content-security-policy")
            .is_some_and(|c| c.contains("default-src 'none'")));
        let head = request(api.addr, "HEAD", path, None).await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
    }
    let page = request(api.addr, "GET", "/_/backbeat/ui/", None)
        .await
        .text();
    assert!(page.contains("<canvas id=\"chart-backlog\""));
    let moved = request(api.addr, "GET", "/_/backbeat/ui", None).await;
    assert_eq!(moved.status, 301);
    assert_eq!(moved.header("location"), Some("/_/backbeat/ui/"));
    let r = request(api.addr, "GET", "/_/backbeat/ui/secrets.json", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["RouteNotFound"], true);
    let r = request(api.addr, "POST", "/_/backbeat/ui/", Some(b"{}")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // The data the page shows needs the token...
    let r = request(api.addr, "GET", "/_/backbeat/api/status", None).await;
    assert_eq!(r.status, 401);
    let auth = [("Authorization", "Bearer s3cret")];
    let r = request_with(api.addr, "GET", "/_/backbeat/api/status", &auth, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // ... and the page itself is behind the allow-list.
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let r = request_from(other, api.addr, "GET", "/_/backbeat/ui/").await;
    assert_eq!(r.status, 403);
    api.stop().await;
}
