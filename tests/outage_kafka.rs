//! An unreachable Kafka never stops the engine (issue 14), against the real binary and a
//! Tansu broker: `serve` starts with nothing listening on the broker's port; the API answers
//! at once, its healthcheck 500 with the log unhealthy, and the process is still running well
//! after the 12 s at which it used to give up ("Meta data fetch error: OperationTimedOut",
//! exit 1). Tansu then starts on that port: the topics are created, the pipeline starts and a
//! version is replicated. Tansu is then frozen (SIGSTOP) in the middle of a run: the engine
//! waits (no stage fails) and replicates what was written meanwhile once it is thawed.

#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod kafka_support;
mod pipeline_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::api::request;
use common::peers::{free_port, start_tansu_on, Frozen};
use kafka_support::*;
use pipeline_support::*;
use serde_json::Value;

const SITES: [&str; 1] = ["site-a"];

async fn health(api: SocketAddr) -> (u16, Value) {
    let r = request(api, "GET", "/_/healthcheck", None).await;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_at_start_is_retried_and_the_pipeline_starts_when_it_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let brokers = format!("127.0.0.1:{broker_port}");
    let FileEngine {
        src,
        staging,
        engine,
        api,
        ..
    } = start_file_engine(tmp.path(), &SITES, Some(&brokers), "outage-");
    let mut engine = engine;
    let fail = |e: String, log: String| panic!("{e}; engine log:\n{}", tail(&log, 120));

    // No broker: the API serves, the healthcheck says the log is down.
    let (status, body) = health(api).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        body["internalConnections"]["kafkaProducer"]["status"],
        "error"
    );
    assert_eq!(body["store"]["status"], "ok");
    put_atomic(&staging, &src, "early", b"written before the broker exists");

    // Well past the 12 s after which `serve` used to exit 1.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(
        engine.child.try_wait().unwrap().is_none(),
        "the engine exited without a broker:\n{}",
        tail(&engine.log(), 80)
    );
    let (status, _) = health(api).await;
    assert_eq!(status, 500);
    assert!(
        engine.count_log("Log not reachable yet") > 0,
        "{}",
        engine.log()
    );

    // The broker comes: topics, pipeline, replication.
    let tansu = start_tansu_on(broker_port);
    if let Err(e) = wait_completions(api, &SITES, 1, Duration::from_secs(120)).await {
        fail(e, engine.log());
    }
    engine.wait_log(
        "Log connected; starting the pipeline.",
        Duration::from_secs(5),
    );
    let mut healthy = false;
    for _ in 0..100 {
        if health(api).await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "healthcheck: {}", health(api).await.1);

    // A later outage: the broker freezes while versions arrive; nothing fails, and they are
    // replicated once it answers again.
    let frozen = Frozen::freeze(tansu.pid());
    for i in 0..3 {
        put_atomic(&staging, &src, &format!("during-{i}"), &bytes_for(i, 500));
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (status, body) = health(api).await;
    assert_eq!(status, 500, "healthcheck during the outage: {body}");
    assert!(
        engine.child.try_wait().unwrap().is_none(),
        "the engine exited during the outage:\n{}",
        tail(&engine.log(), 80)
    );
    assert_eq!(engine.count_log("Stage failed"), 0, "{}", engine.log());
    drop(frozen);
    if let Err(e) = wait_completions(api, &SITES, 4, Duration::from_secs(180)).await {
        fail(e, engine.log());
    }
    assert_eq!(engine.count_log("Stage failed"), 0, "{}", engine.log());
    let prom = request(api, "GET", "/_/monitoring/metrics", None)
        .await
        .text();
    let retries: u64 = prom
        .lines()
        .find_map(|l| l.strip_prefix("backbeat_log_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(retries > 0, "no log retry counted");
    assert!(engine.stop().success());
    // The site itself holds every version written before, during and after the outages.
    assert_verified(&tmp.path().join("backbeat.toml"));
}
