//! An outage of the state store never stops the engine (issue 14): against the real binary,
//! the store becomes unreachable in the middle of a run; the healthcheck answers 500 with the
//! store's status "error", the process stays up (no stage failure), and once the store is back
//! every version written meanwhile is replicated and `backbeat verify` finds no difference.
//!
//! The outage is injected: no MongoDB server can be installed on the development machines
//! (see tests/mongo_store.rs), so the embedded store is wrapped by `testkit::FaultyStore`,
//! which fails every call with `StoreError::Unavailable` (what the MongoDB store returns for a
//! network error, a server selection timeout or a missing primary) while a switch file exists.
//! Needs the `test-util` feature.

#![cfg(feature = "test-util")]
#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::time::Duration;

use backbeat::testkit::STORE_FAULTS_ENV;
use common::api::request;
use failures_support::{api_of, wait_for};
use pipeline_support::*;
use serde_json::Value;

fn replicated(site: &std::path::Path, n: u64) -> bool {
    (0..n).all(|i| {
        std::fs::read(site.join("inbox").join(format!("f{i}")))
            .is_ok_and(|b| b == bytes_for(i, 3000))
            || std::fs::read(site.join(format!("f{i}"))).is_ok_and(|b| b == bytes_for(i, 3000))
    })
}

async fn prom_value(api: std::net::SocketAddr, name: &str) -> Option<u64> {
    let r = request(api, "GET", "/_/monitoring/metrics", None).await;
    if r.status != 200 {
        return None;
    }
    r.text()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_waited_out_reported_unhealthy_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, local, logs) = (
        tmp.path().join("inbox"),
        tmp.path().join("local"),
        tmp.path().join("logs"),
    );
    for d in [&src, &local, &logs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let switch = tmp.path().join("store-down");
    let cfg = config(
        &tmp.path().join("data"),
        &src,
        &file_site("local", &local),
        &rule("inbox", "", &["local"], true),
        "",
    );
    let cfg = write_config(tmp.path(), &cfg);
    let engine = EngineProc::start_with_env(
        &cfg,
        &logs,
        "info",
        &[(STORE_FAULTS_ENV, switch.to_str().unwrap())],
    );
    let api = api_of(&engine);

    for i in 0..5 {
        put_file(&src, &format!("f{i}"), &bytes_for(i, 3000));
    }
    wait_for(
        "the first files replicated",
        Duration::from_secs(60),
        || async { replicated(&local, 5) },
    )
    .await;
    assert_eq!(
        request(api, "GET", "/_/healthcheck", None).await.status,
        200
    );

    // The store goes away; new files arrive meanwhile.
    std::fs::write(&switch, b"").unwrap();
    for i in 5..10 {
        put_file(&src, &format!("f{i}"), &bytes_for(i, 3000));
    }
    wait_for(
        "the healthcheck reporting the store",
        Duration::from_secs(30),
        || async {
            let r = request(api, "GET", "/_/healthcheck", None).await;
            r.status == 500 && {
                let v: Value = r.json();
                v["store"]["status"] == "error"
                    && v["internalConnections"]["zookeeper"]["status"] == "error"
            }
        },
    )
    .await;
    engine.wait_log("State store unavailable; retrying", Duration::from_secs(30));
    // Well past a scan interval and several backoffs: the stages wait, nothing fails.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut engine = engine;
    assert!(
        engine.child.try_wait().unwrap().is_none(),
        "the engine exited during the outage:\n{}",
        engine.log()
    );
    assert_eq!(engine.count_log("Stage failed"), 0, "{}", engine.log());
    assert!(!replicated(&local, 10), "replicated without a store?");
    let r = request(api, "GET", "/_/healthcheck", None).await;
    assert_eq!(r.status, 500);

    // The store is back: everything written meanwhile goes through.
    std::fs::remove_file(&switch).unwrap();
    wait_for("every file replicated", Duration::from_secs(90), || async {
        replicated(&local, 10)
    })
    .await;
    wait_for(
        "the healthcheck healthy again",
        Duration::from_secs(30),
        || async { request(api, "GET", "/_/healthcheck", None).await.status == 200 },
    )
    .await;
    assert!(
        prom_value(api, "backbeat_store_retries_total")
            .await
            .unwrap()
            > 0
    );
    assert_eq!(prom_value(api, "backbeat_store_unavailable").await, Some(0));
    engine.wait_log("State store available again.", Duration::from_secs(10));
    let log_path = engine.log_path.clone();
    let status = engine.stop();
    assert!(
        status.success(),
        "{status}:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );

    assert_verified(&cfg);
}
