//! Replication state transitions: the pure functions that turn an event about a version into
//! one guarded store update `(guards, ops)` (STYLE section K). Nothing here does I/O; the
//! stages and the API apply what these return with [`StateStore::apply`], so each event is one
//! atomic, replay-safe change and the counters stay exact under at-least-once delivery.
//!
//! Events and their updates (`pending` = the site's pending ops/bytes counters):
//!
//! ```text
//! event                        guard                        ops
//! queued (populator)           version absent               info (every site PENDING),
//!                                                           per site: pending +1/+size, queued metrics
//! outcome COMPLETED (status)   site PENDING                 site COMPLETED (+replica version id),
//!                                                           pending -1/-size, done metrics,
//!                                                           object progress of small objects
//! outcome FAILED (status)      site PENDING                 site FAILED, pending -1/-size,
//!                                                           fail metrics, failed set +
//! outcome skipped (status)     site PENDING                 site dropped, pending -1/-size
//! retry (API), step 1          site FAILED                  site PENDING, pending +1/+size
//! retry, undo of step 1        site PENDING                 site FAILED, pending -1/-size
//! retry, step 2                site PENDING or COMPLETED    failed set -
//! stale failed entry (API)     site COMPLETED               failed set -
//! ```
//!
//! A site moves PENDING -> COMPLETED | FAILED | dropped, and FAILED -> PENDING by a retry;
//! COMPLETED is final. Every update that moves a site out of PENDING is guarded by "site is
//! PENDING" and every update that moves one into PENDING by "site is not PENDING" (absent or
//! FAILED), so `pending` always equals the number of (version, site) pairs that are PENDING,
//! whatever order and however often the events are replayed (tested below).

use crate::entry::ObjectMd;
use crate::model::{ReplicationInfo, ReplicationStatus, VersionRef};
use crate::store::{Guard, Metric, ObjectMetric, StoreOp};

/// One guarded store update.
pub type Update = (Vec<Guard>, Vec<StoreOp>);

/// What a replication processor reported for one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteOutcome {
    /// The replica is written; its version id at the site when the site has one.
    Completed {
        /// The replica's version id at the site.
        data_store_version_id: Option<String>,
    },
    /// Retries and replays are spent, or the error is permanent.
    Failed,
    /// Gone or changed at the source: the site will never get this version.
    Skipped,
}

fn size_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

fn site_guard(version: &VersionRef, site: &str, any_of: Vec<ReplicationStatus>) -> Guard {
    Guard::SiteStatus {
        version: version.clone(),
        site: site.to_string(),
        any_of,
    }
}

fn pending(site: &str, sign: i64, size: u64) -> StoreOp {
    StoreOp::AddPending {
        site: site.to_string(),
        ops: sign,
        bytes: sign * size_i64(size),
    }
}

/// A newly queued version: its replication info and, per site, pending +1/+size and the
/// queued metrics. Guarded by "no info yet", so a version is counted once however often it
/// is discovered.
pub fn queued(version: &VersionRef, info: ReplicationInfo, now: u64) -> Update {
    let size = info.size;
    let mut ops = Vec::with_capacity(1 + info.backends.len() * 3);
    for b in &info.backends {
        ops.push(pending(&b.site, 1, size));
        for (metric, value) in [(Metric::Ops, 1), (Metric::Bytes, size)] {
            ops.push(StoreOp::AddMetric {
                site: b.site.clone(),
                metric,
                value,
                at_ms: now,
            });
        }
    }
    ops.insert(
        0,
        StoreOp::PutReplication {
            version: version.clone(),
            info,
        },
    );
    (vec![Guard::Absent(version.clone())], ops)
}

/// [`queued`] for a version known only from an entry's metadata `md` (the populator appended
/// it but crashed before its store update): every site of the entry's `storageClass` PENDING,
/// as the populator would have recorded it.
pub fn recreated(version: &VersionRef, md: &ObjectMd, now: u64) -> Update {
    let mut info = md.to_info();
    let sites = crate::entry::sites_of(&info.storage_class);
    let fresh = ReplicationInfo::pending(&sites);
    info.backends = fresh.backends;
    info.status = fresh.status;
    queued(version, info, now)
}

/// A site's outcome for a version of `size` bytes. Objects below `mpu_threshold` get their
/// object-level progress here (larger ones had it recorded part by part by the processor).
pub fn outcome(
    version: &VersionRef,
    site: &str,
    outcome: &SiteOutcome,
    size: u64,
    mpu_threshold: u64,
    now: u64,
) -> Update {
    let guard = site_guard(version, site, vec![ReplicationStatus::Pending]);
    let metric = |metric, value| StoreOp::AddMetric {
        site: site.to_string(),
        metric,
        value,
        at_ms: now,
    };
    let set = |status, data_store_version_id| StoreOp::SetSiteStatus {
        version: version.clone(),
        site: site.to_string(),
        status,
        data_store_version_id,
    };
    let ops = match outcome {
        SiteOutcome::Skipped => vec![
            StoreOp::RemoveSite {
                version: version.clone(),
                site: site.to_string(),
            },
            pending(site, -1, size),
        ],
        SiteOutcome::Completed {
            data_store_version_id,
        } => {
            let mut ops = vec![
                set(ReplicationStatus::Completed, data_store_version_id.clone()),
                pending(site, -1, size),
                metric(Metric::OpsDone, 1),
                metric(Metric::BytesDone, size),
            ];
            if size < mpu_threshold {
                for m in [ObjectMetric::Bytes, ObjectMetric::BytesDone] {
                    ops.push(StoreOp::AddObjectMetric {
                        site: site.to_string(),
                        version: version.clone(),
                        metric: m,
                        value: size,
                        at_ms: now,
                    });
                }
            }
            ops
        }
        SiteOutcome::Failed => vec![
            set(ReplicationStatus::Failed, None),
            pending(site, -1, size),
            metric(Metric::OpsFail, 1),
            metric(Metric::BytesFail, size),
            StoreOp::AddFailed {
                site: site.to_string(),
                version: version.clone(),
                score_ms: now,
            },
        ],
    };
    (vec![guard], ops)
}

/// Step 1 of an operator's retry of a FAILED site: PENDING and counted again, still listed
/// in the failed set until its entry is queued (see `api::failed`).
pub fn retry_requested(version: &VersionRef, site: &str, size: u64) -> Update {
    (
        vec![site_guard(version, site, vec![ReplicationStatus::Failed])],
        vec![
            StoreOp::SetSiteStatus {
                version: version.clone(),
                site: site.to_string(),
                status: ReplicationStatus::Pending,
                data_store_version_id: None,
            },
            pending(site, 1, size),
        ],
    )
}

/// Undoes [`retry_requested`] when the retry entry could not be queued.
pub fn retry_undone(version: &VersionRef, site: &str, size: u64) -> Update {
    (
        vec![site_guard(version, site, vec![ReplicationStatus::Pending])],
        vec![
            StoreOp::SetSiteStatus {
                version: version.clone(),
                site: site.to_string(),
                status: ReplicationStatus::Failed,
                data_store_version_id: None,
            },
            pending(site, -1, size),
        ],
    )
}

/// Step 2 of a retry, once its entry is queued: out of the failed set, unless the site failed
/// again meanwhile.
pub fn retry_queued(version: &VersionRef, site: &str) -> Update {
    (
        vec![site_guard(
            version,
            site,
            vec![ReplicationStatus::Pending, ReplicationStatus::Completed],
        )],
        vec![unlisted(version, site)],
    )
}

/// A failed-set entry of a site that is COMPLETED since: dropped.
pub fn stale_failed(version: &VersionRef, site: &str) -> Update {
    (
        vec![site_guard(
            version,
            site,
            vec![ReplicationStatus::Completed],
        )],
        vec![unlisted(version, site)],
    )
}

/// A failed-set entry whose version has no replication info: dropped (the original removes a
/// member whose metadata cannot be fetched).
pub fn orphan_failed(version: &VersionRef, site: &str) -> Update {
    (Vec::new(), vec![unlisted(version, site)])
}

fn unlisted(version: &VersionRef, site: &str) -> StoreOp {
    StoreOp::RemoveFailed {
        site: site.to_string(),
        version: version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::clock::SystemClock;
    use crate::durability::{Durability, SledDb};
    use crate::store::{SledStore, StateStore};

    const SITES: [&str; 2] = ["a", "b"];

    #[derive(Debug, Clone)]
    enum Event {
        Queued(usize),
        Recreated(usize),
        Outcome(usize, usize, u8),
        Retry(usize, usize),
        /// A retry whose entry could not be queued: step 1, then its undo.
        RetryNotQueued(usize, usize),
        RetryQueued(usize, usize),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0..3usize).prop_map(Event::Queued),
            (0..3usize).prop_map(Event::Recreated),
            (0..3usize, 0..2usize, 0..3u8).prop_map(|(v, s, o)| Event::Outcome(v, s, o)),
            (0..3usize, 0..2usize).prop_map(|(v, s)| Event::Retry(v, s)),
            (0..3usize, 0..2usize).prop_map(|(v, s)| Event::RetryNotQueued(v, s)),
            (0..3usize, 0..2usize).prop_map(|(v, s)| Event::RetryQueued(v, s)),
        ]
    }

    fn version(i: usize) -> VersionRef {
        VersionRef::new("b", format!("k{i}"), format!("v{i}"))
    }

    fn size(i: usize) -> u64 {
        10 + i as u64 * 7
    }

    /// The updates of `e`, each applied only if the one before it was (as the API does).
    fn updates(e: &Event, now: u64) -> Vec<Update> {
        match *e {
            Event::RetryNotQueued(v, s) => vec![
                retry_requested(&version(v), SITES[s], size(v)),
                retry_undone(&version(v), SITES[s], size(v)),
            ],
            _ => vec![update(e, now)],
        }
    }

    fn update(e: &Event, now: u64) -> Update {
        match *e {
            Event::Queued(v) => {
                let sites: Vec<String> = SITES.iter().map(|s| s.to_string()).collect();
                let mut info = ReplicationInfo::pending(&sites);
                info.size = size(v);
                queued(&version(v), info, now)
            }
            Event::Recreated(v) => {
                let sites: Vec<String> = SITES.iter().map(|s| s.to_string()).collect();
                let mut info = ReplicationInfo::pending(&sites);
                info.size = size(v);
                recreated(&version(v), &ObjectMd::from_info(&version(v), &info), now)
            }
            Event::Outcome(v, s, o) => {
                let o = match o {
                    0 => SiteOutcome::Completed {
                        data_store_version_id: Some("r".into()),
                    },
                    1 => SiteOutcome::Failed,
                    _ => SiteOutcome::Skipped,
                };
                outcome(&version(v), SITES[s], &o, size(v), 1000, now)
            }
            Event::Retry(v, s) => retry_requested(&version(v), SITES[s], size(v)),
            Event::RetryNotQueued(v, s) => retry_requested(&version(v), SITES[s], size(v)),
            Event::RetryQueued(v, s) => retry_queued(&version(v), SITES[s]),
        }
    }

    /// Applies `events` (each possibly twice, as a replay) and checks that each site's pending
    /// counters are exactly the PENDING (version, site) pairs, and that every FAILED pair is
    /// in the failed set.
    fn check(events: Vec<(Event, bool)>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tmp = tempfile::tempdir().unwrap();
            let db =
                SledDb::open(tmp.path(), Durability::Interval, Duration::from_secs(60)).unwrap();
            let store = SledStore::open(db, Arc::new(SystemClock)).unwrap();
            for (e, replayed) in &events {
                let now = store.now_ms();
                for (g, o) in updates(e, now) {
                    let applied = store.apply(g.clone(), o.clone()).await.unwrap();
                    if *replayed {
                        store.apply(g, o).await.unwrap();
                    }
                    if !applied {
                        break;
                    }
                }
            }
            for (si, site) in SITES.iter().enumerate() {
                let (mut ops, mut bytes) = (0i64, 0i64);
                for v in 0..3 {
                    let Some(info) = store.replication(&version(v)).await.unwrap() else {
                        continue;
                    };
                    match info.site(site).map(|s| s.status) {
                        Some(ReplicationStatus::Pending) => {
                            ops += 1;
                            bytes += size(v) as i64;
                        }
                        Some(ReplicationStatus::Failed) => {
                            let listed = store.failed_entry(site, &version(v)).await.unwrap();
                            assert!(listed.is_some(), "{site} {v} FAILED but not listed");
                        }
                        _ => {}
                    }
                }
                assert_eq!(
                    store.pending(site).await.unwrap(),
                    (ops, bytes),
                    "site {si} after {events:?}"
                );
            }
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn pending_counters_balance_for_any_sequence_of_events(
            events in proptest::collection::vec((event(), any::<bool>()), 1..40)
        ) {
            check(events);
        }
    }

    #[test]
    fn a_replayed_completion_counts_once_and_completed_is_final() {
        check(vec![
            (Event::Queued(0), true),
            (Event::Outcome(0, 0, 0), true),
            (Event::Outcome(0, 0, 1), true),
            (Event::Retry(0, 0), true),
            (Event::Outcome(0, 1, 1), true),
            (Event::Retry(0, 1), false),
            (Event::RetryNotQueued(0, 1), true),
            (Event::RetryQueued(0, 1), true),
            (Event::Outcome(0, 1, 2), true),
        ]);
    }
}
