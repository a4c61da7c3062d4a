//! The status processor is idempotent: replaying entries gives the same state and counters;
//! COMPLETED is final; an outcome about a version the key has moved past changes nothing
//! (newest wins); a status entry for a key the populator never recorded (crash between its
//! log append and its store update) records it from the entry, with exact counters.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backbeat::clock::SystemClock;
use backbeat::durability::{Durability, SledDb};
use backbeat::entry::{Entry, EntryFormat};
use backbeat::error::FailureReason;
use backbeat::log::{Delivery, Position};
use backbeat::model::{KeyState, ReplicationStatus};
use backbeat::observe::{Observer, Thresholds};
use backbeat::pipeline::runner::{Handler, Outcome};
use backbeat::pipeline::StatusProcessor;
use backbeat::store::{Metric, SledStore, StateStore, StoreOp};
use backbeat::transitions::{DropReason, FailedInfo, KeyChange, QueuedVersion, SiteOutcome};
use tokio_util::task::TaskTracker;

fn version(id: &str, size: u64) -> QueuedVersion {
    QueuedVersion {
        version_id: id.into(),
        etag: format!("etag-{id}"),
        size,
        written_ms: 1_700_000_000_000,
        deleted: false,
        backfill: false,
    }
}

fn queued_entry(key: &str, v: &QueuedVersion, sites: &[&str]) -> Entry {
    Entry::queued("b", key, v, sites.iter().map(|s| s.to_string()).collect())
}

fn delivery(e: &Entry, offset: u64) -> Delivery {
    Delivery {
        position: Position {
            partition: 0,
            offset,
        },
        record: e.record(EntryFormat::Binary),
    }
}

fn completed() -> SiteOutcome {
    SiteOutcome::Completed {
        data_store_version_id: Some("dsv-1".into()),
    }
}

fn failed() -> SiteOutcome {
    SiteOutcome::Failed(FailedInfo {
        size: 100,
        written_ms: 1_700_000_000_000,
        reason: FailureReason::ServerError,
        attempts: 5,
        last_error: "HTTP 500".into(),
        last_attempt_ms: backbeat::clock::Clock::now_ms(&SystemClock),
    })
}

async fn sum(store: &SledStore, site: &str, m: Metric) -> u64 {
    store.metric_buckets(site, m).await.unwrap().iter().sum()
}

/// A sled store in a temporary directory (kept alive by the returned guard).
fn sled_store() -> (tempfile::TempDir, Arc<SledStore>) {
    let tmp = tempfile::tempdir().unwrap();
    let db = SledDb::open(tmp.path(), Durability::Group, Duration::from_millis(50)).unwrap();
    (
        tmp,
        Arc::new(SledStore::open(db, Arc::new(SystemClock)).unwrap()),
    )
}

fn processor(store: Arc<dyn StateStore>, tracker: &TaskTracker) -> Arc<StatusProcessor> {
    let sites: Vec<String> = ["a", "c"].iter().map(|s| s.to_string()).collect();
    let observer = Observer::new(&sites, &[], Thresholds::default(), Arc::new(SystemClock));
    Arc::new(StatusProcessor::new(store, observer, tracker))
}

async fn run(p: &Arc<StatusProcessor>, d: &Delivery) {
    let job = p.prepare(d).expect("a status job");
    assert!(matches!(
        p.clone().handle(job).await.unwrap(),
        Outcome::Done(None)
    ));
}

async fn record(store: &SledStore, key: &str) -> KeyState {
    store.key_state("b", key).await.unwrap().unwrap()
}

#[tokio::test]
async fn replayed_status_entries_change_nothing_and_completed_is_final() {
    let (_tmp, store) = sled_store();
    let tracker = TaskTracker::new();
    let p = processor(store.clone(), &tracker);

    // A known key, two sites.
    let v1 = version("v1", 100);
    let e = queued_entry("k: é/1", &v1, &["a", "c"]);
    store
        .apply(vec![StoreOp::Key {
            bucket: "b".into(),
            key: "k: é/1".into(),
            change: KeyChange::Queued {
                version: v1.clone(),
                sites: vec!["a".into(), "c".into()],
            },
        }])
        .await
        .unwrap();
    let done_a = delivery(&e.outcome("a", completed()), 0);
    let fail_a = delivery(&e.outcome("a", failed()), 1);
    let fail_c = delivery(&e.outcome("c", failed()), 2);
    for d in [&done_a, &done_a, &fail_a, &fail_c, &fail_c, &done_a] {
        run(&p, d).await;
    }
    let got = record(&store, "k: é/1").await;
    assert_eq!(got.site("a").unwrap().status, ReplicationStatus::Completed);
    assert_eq!(got.site("a").unwrap().data_store_version_id, "dsv-1");
    assert_eq!(got.site("c").unwrap().status, ReplicationStatus::Failed);
    assert_eq!(got.status(), Some(ReplicationStatus::Failed));
    assert_eq!(store.pending("a").await.unwrap(), (0, 0));
    assert_eq!(store.pending("c").await.unwrap(), (0, 0));
    assert_eq!(sum(&store, "a", Metric::OpsDone).await, 1);
    assert_eq!(sum(&store, "a", Metric::BytesDone).await, 100);
    assert_eq!(sum(&store, "a", Metric::OpsFail).await, 0);
    assert_eq!(sum(&store, "c", Metric::OpsFail).await, 1);
    assert_eq!(store.failed_count("c").await.unwrap(), 1);
    assert_eq!(store.failed_count("a").await.unwrap(), 0);
    let listed = store.failed_entry("c", &e.version).await.unwrap().unwrap();
    assert_eq!(listed.info.reason, FailureReason::ServerError);
    assert_eq!(listed.info.attempts, 5);

    // An unknown key (the populator crashed after its append): recorded, then completed.
    let v9 = version("v9", 7);
    let lost = queued_entry("lost", &v9, &["a", "c"]);
    let d = delivery(&lost.outcome("a", completed()), 3);
    run(&p, &d).await;
    run(&p, &d).await;
    let got = record(&store, "lost").await;
    assert_eq!(got.version_id, "v9");
    assert_eq!(got.site("a").unwrap().status, ReplicationStatus::Completed);
    assert_eq!(got.site("c").unwrap().status, ReplicationStatus::Pending);
    assert_eq!(got.status(), Some(ReplicationStatus::Processing));
    assert_eq!(store.pending("a").await.unwrap(), (0, 0));
    assert_eq!(store.pending("c").await.unwrap(), (1, 7));
    assert_eq!(sum(&store, "a", Metric::Ops).await, 2);
    assert_eq!(sum(&store, "a", Metric::OpsDone).await, 2);
    assert_eq!(sum(&store, "c", Metric::Ops).await, 2);
    drop(p);
    tracker.close();
    tracker.wait().await;
}

/// A version superseded at the source before its copy: the `skipped` status entry takes the
/// site off the key and off the pending counters, once however often it is replayed; a
/// COMPLETED site is never dropped; an outcome about an older version changes nothing.
#[tokio::test]
async fn a_superseded_version_leaves_nothing_pending_and_older_outcomes_change_nothing() {
    let (_tmp, store) = sled_store();
    let tracker = TaskTracker::new();
    let p = processor(store.clone(), &tracker);
    let v1 = version("v1", 40);
    let e1 = queued_entry("changed", &v1, &["a", "c"]);
    store
        .apply(vec![StoreOp::Key {
            bucket: "b".into(),
            key: "changed".into(),
            change: KeyChange::Queued {
                version: v1,
                sites: vec!["a".into(), "c".into()],
            },
        }])
        .await
        .unwrap();
    let superseded = |site: &str, offset| {
        delivery(
            &e1.outcome(site, SiteOutcome::Dropped(DropReason::Superseded)),
            offset,
        )
    };
    for d in [
        &delivery(&e1.outcome("a", completed()), 0),
        &superseded("c", 1),
        &superseded("c", 2),
        &superseded("a", 3),
    ] {
        run(&p, d).await;
    }
    let got = record(&store, "changed").await;
    assert_eq!(got.site("a").unwrap().status, ReplicationStatus::Completed);
    assert!(got.site("c").is_none(), "{got:?}");
    assert_eq!(got.status(), Some(ReplicationStatus::Completed));
    assert_eq!(store.pending("a").await.unwrap(), (0, 0));
    assert_eq!(store.pending("c").await.unwrap(), (0, 0));
    assert_eq!(sum(&store, "c", Metric::OpsFail).await, 0);
    assert_eq!(sum(&store, "c", Metric::OpsDone).await, 0);
    assert_eq!(store.failed_count("c").await.unwrap(), 0);

    // A newer version takes the key over; a late outcome of the older one changes nothing.
    let v2 = version("v2", 50);
    store
        .apply(vec![StoreOp::Key {
            bucket: "b".into(),
            key: "changed".into(),
            change: KeyChange::Queued {
                version: v2,
                sites: vec!["a".into(), "c".into()],
            },
        }])
        .await
        .unwrap();
    run(&p, &delivery(&e1.outcome("c", failed()), 4)).await;
    let got = record(&store, "changed").await;
    assert_eq!(got.version_id, "v2");
    assert_eq!(got.site("c").unwrap().status, ReplicationStatus::Pending);
    assert_eq!(store.pending("c").await.unwrap(), (1, 50));
    assert_eq!(store.failed_count("c").await.unwrap(), 0);
    drop(p);
    tracker.close();
    tracker.wait().await;
}

/// The populator appends first, then records the version, so a fast site and status processor
/// can overtake it: the outcome records the version from its entry, and the populator's own
/// update then changes nothing.
#[tokio::test]
async fn an_outcome_that_overtakes_the_populators_update_is_still_applied() {
    let (_tmp, store) = sled_store();
    let v = version("v1", 10);
    let e = queued_entry("fast", &v, &["a", "c"]);
    let tracker = TaskTracker::new();
    let p = processor(store.clone(), &tracker);
    run(&p, &delivery(&e.outcome("a", completed()), 0)).await;
    let late = store
        .apply(vec![StoreOp::Key {
            bucket: "b".into(),
            key: "fast".into(),
            change: KeyChange::Queued {
                version: v,
                sites: vec!["a".into(), "c".into()],
            },
        }])
        .await
        .unwrap();
    assert_eq!(late, [false], "the populator's late update finds it done");
    let got = record(&store, "fast").await;
    assert_eq!(got.site("a").unwrap().status, ReplicationStatus::Completed);
    assert_eq!(got.site("c").unwrap().status, ReplicationStatus::Pending);
    assert_eq!(store.pending("a").await.unwrap(), (0, 0));
    assert_eq!(store.pending("c").await.unwrap(), (1, 10));
    assert_eq!(sum(&store, "a", Metric::Ops).await, 1);
    assert_eq!(sum(&store, "a", Metric::OpsDone).await, 1);
    drop(p);
    tracker.close();
    tracker.wait().await;
}
