//! schemathesis against the OpenAPI document and a running engine: no 5xx, and every response
//! matches the document (status, content type, headers, schema).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use backbeat::error::FailureReason;
use backbeat::model::VersionRef;
use backbeat::store::{Metric, StoreOp};
use backbeat::transitions::{FailedInfo, KeyChange, QueuedVersion, SiteOutcome};
use common::api::{TestApi, T0};
use common::peers::schemathesis_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let st = tokio::task::spawn_blocking(schemathesis_bin).await.unwrap();
    let api = TestApi::start(&["site1", "site2"], T0 + 60_000).await;
    // Some data, so listings and metrics answer non-empty shapes.
    let v = VersionRef::new("bkt", "k", "v1");
    let ops = vec![
        StoreOp::key(
            &v,
            KeyChange::Queued {
                version: QueuedVersion {
                    version_id: "v1".into(),
                    etag: "e".into(),
                    size: 5,
                    written_ms: T0 - 60_000,
                    deleted: false,
                    backfill: false,
                },
                sites: vec!["site1".into(), "site2".into()],
            },
        ),
        StoreOp::key(
            &v,
            KeyChange::Outcome {
                version_id: "v1".into(),
                site: "site1".into(),
                outcome: SiteOutcome::Failed(FailedInfo {
                    size: 5,
                    written_ms: T0 - 60_000,
                    reason: FailureReason::Timeout,
                    attempts: 5,
                    last_error: "timed out".into(),
                    last_attempt_ms: T0,
                }),
            },
        ),
        StoreOp::AddMetric {
            site: "site1".into(),
            metric: Metric::OpsDone,
            value: 3,
            at_ms: T0,
        },
    ];
    api.store.apply(ops).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let doc = work.path().join("openapi.json");
    std::fs::write(&doc, backbeat::api::routes::OPENAPI).unwrap();
    let url = format!("http://{}/_/backbeat/api", api.addr);
    let mut cmd = tokio::process::Command::new(&st);
    cmd.arg("run")
        .arg(&doc)
        .args(["--url", &url])
        .args(["--max-examples", "15", "--seed", "20261126", "--workers", "2"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        ])
        .args(["--request-timeout", "10"])
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(170), cmd.output())
        .await
        .expect("schemathesis finishes within the budget")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    api.stop().await;
}
