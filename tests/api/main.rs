//! The REST API over real HTTP against a running engine (reference section 1, DESIGN 6).
//!
//! One test binary (`cargo test --test api`), one module a topic: [`routes`] (the request
//! pipeline: matching, access, healthcheck, body checks, the OpenAPI document), [`limits`]
//! (allow-list on accept, body limits, deadlines and budget, the bearer token), [`metrics`]
//! (JSON metrics and Prometheus), [`failed`] (failed CRR listings), [`retry`] (retrying failed
//! versions), [`pause`] (pause, resume, schedules), [`object`] (the version view and S3
//! notifications) and [`status`] (the operator's view, its history, the site states and the
//! status page's files). This file holds the store seeding and log reading that several topics share.

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod failed;
mod limits;
mod metrics;
mod object;
mod pause;
mod retry;
mod routes;
mod status;

use backbeat::error::FailureReason;
use backbeat::log::{replication_group, TOPIC_REPLICATION};
use backbeat::model::VersionRef;
use backbeat::store::StoreOp;
use backbeat::transitions::{FailedInfo, KeyChange, QueuedVersion, SiteOutcome};
use common::api::TestApi;

/// When the seeded versions were written (the listings' `LastModified`).
const WRITTEN_MS: u64 = 1_522_448_554_384; // 2018-03-30T22:22:34.384Z

/// The record change queueing `v` (7 bytes) for `sites`.
fn queued(v: &VersionRef, sites: &[&str]) -> StoreOp {
    queued_sized(v, sites, 7)
}

/// The record change queueing `v` (`size` bytes) for `sites`.
fn queued_sized(v: &VersionRef, sites: &[&str], size: u64) -> StoreOp {
    StoreOp::key(
        v,
        KeyChange::Queued {
            version: QueuedVersion {
                version_id: v.version_id.clone(),
                etag: "e7".into(),
                size,
                written_ms: WRITTEN_MS,
                deleted: false,
                backfill: false,
            },
            sites: sites.iter().map(|s| s.to_string()).collect(),
        },
    )
}

/// The record change completing `v` at `site`.
fn completed(v: &VersionRef, site: &str) -> StoreOp {
    StoreOp::key(
        v,
        KeyChange::Outcome {
            version_id: v.version_id.clone(),
            site: site.to_string(),
            outcome: SiteOutcome::Completed {
                data_store_version_id: Some("r1".into()),
            },
        },
    )
}

/// What the failed set keeps of a seeded failure at `at_ms`.
fn failed_info(at_ms: u64) -> FailedInfo {
    FailedInfo {
        size: 7,
        written_ms: WRITTEN_MS,
        reason: FailureReason::Unreachable,
        attempts: 3,
        last_error: String::new(),
        last_attempt_ms: at_ms,
    }
}

/// The record change failing `v` at `site` at time `at_ms`.
fn failed_at(v: &VersionRef, site: &str, at_ms: u64) -> StoreOp {
    StoreOp::key(
        v,
        KeyChange::Outcome {
            version_id: v.version_id.clone(),
            site: site.to_string(),
            outcome: SiteOutcome::Failed(FailedInfo {
                last_error: format!("site {site} refused the connection"),
                ..failed_info(at_ms)
            }),
        },
    )
}

/// Stores each `(site, version, score)` as a failed version: its key's record (queued to
/// every site of `sites`) and FAILED at `site` at time `score`.
async fn seed_failed(api: &TestApi, entries: &[(String, VersionRef, u64)], sites: &[&str]) {
    for chunk in entries.chunks(500) {
        let mut ops = Vec::with_capacity(chunk.len() * 2);
        for (site, v, score) in chunk {
            ops.push(queued(v, sites));
            ops.push(failed_at(v, site, *score));
        }
        api.store.apply(ops).await.unwrap();
    }
}

/// How many entries the replication topic holds (the end offsets seen by site1's group).
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
