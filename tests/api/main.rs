//! The REST API over real HTTP against a running engine (reference section 1, DESIGN 6).
//!
//! One test binary (`cargo test --test api`), one module a topic: [`routes`] (the request
//! pipeline: matching, access, healthcheck, body checks, the OpenAPI document), [`metrics`]
//! (JSON metrics and Prometheus), [`failed`] (failed CRR listings), [`retry`] (retrying failed
//! versions), [`pause`] (pause, resume, schedules), [`object`] (the version view and S3
//! notifications) and [`status`] (the operator's view, its history, the site states and the
//! status page's files). This file holds the store seeding and log reading that several topics share.

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod failed;
mod metrics;
mod object;
mod pause;
mod retry;
mod routes;
mod status;

use backbeat::log::{replication_group, TOPIC_REPLICATION};
use backbeat::model::{ReplicationInfo, ReplicationStatus, VersionRef};
use backbeat::store::StoreOp;
use common::api::TestApi;

/// A version's info with `failed_site` FAILED and the other sites PENDING, at the fixed size and
/// date the listings are checked against.
fn failed_info(sites: &[&str], failed_site: &str, size: u64) -> ReplicationInfo {
    let names: Vec<String> = sites.iter().map(|s| s.to_string()).collect();
    let mut info = ReplicationInfo::pending(&names);
    info.size = size;
    info.last_modified = "2018-03-30T22:22:34.384Z".into();
    info.set_site_status(failed_site, ReplicationStatus::Failed, None);
    info
}

/// Stores each `(site, version, score)` as a failed version: its info and its failed-set member.
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
