//! The status processor is idempotent: replaying entries gives the same state and counters;
//! COMPLETED is final; a status entry for a version the populator never recorded (crash
//! between its log append and its store update) recreates it with exact counters.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backbeat::clock::SystemClock;
use backbeat::durability::{Durability, SledDb};
use backbeat::entry::{ObjectMd, QueueEntry, SkipReason};
use backbeat::log::{Delivery, Position, Record};
use backbeat::model::{ReplicationInfo, ReplicationStatus, VersionRef};
use backbeat::pipeline::runner::{Handler, Outcome};
use backbeat::pipeline::transitions::queued as queued_ops;
use backbeat::pipeline::StatusProcessor;
use backbeat::store::{
    FailedEntry, FailedPage, Guard, Metric, ObjectMetric, PauseState, SledStore, StateStore,
    StoreError, StoreOp,
};
use tokio_util::task::TaskTracker;

fn info(sites: &[&str], size: u64) -> ReplicationInfo {
    let sites: Vec<String> = sites.iter().map(|s| s.to_string()).collect();
    let mut i = ReplicationInfo::pending(&sites);
    i.size = size;
    i.content = vec!["DATA".into(), "METADATA".into()];
    i
}

fn status_delivery(
    v: &VersionRef,
    info: &ReplicationInfo,
    site: &str,
    st: ReplicationStatus,
    offset: u64,
) -> Delivery {
    let mut md = ObjectMd::from_info(v, info);
    for b in &mut md.replication_info.backends {
        if b.site == site {
            b.status = st;
            b.data_store_version_id = "dsv-1".into();
        }
    }
    let mut e = QueueEntry::queued(v, &md);
    e.site = Some(site.into());
    Delivery {
        position: Position {
            partition: 0,
            offset,
        },
        record: Record::new(e.log_key(), e.encode()),
    }
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

async fn run(p: &StatusProcessor, d: &Delivery) {
    let job = p.prepare(d).expect("a status job");
    assert!(matches!(p.handle(job).await.unwrap(), Outcome::Done(None)));
}

#[tokio::test]
async fn replayed_status_entries_change_nothing_and_completed_is_final() {
    let (_tmp, store) = sled_store();
    let tracker = TaskTracker::new();
    let p = StatusProcessor::new(store.clone(), 20_000_000, &tracker);

    // Known version, two sites.
    let v = VersionRef::new("b", "k: é/1", "v1");
    let i = info(&["a", "c"], 100);
    let (g, o) = queued_ops(&v, i.clone(), store.now_ms());
    assert!(store.apply(g, o).await.unwrap());
    let done_a = status_delivery(&v, &i, "a", ReplicationStatus::Completed, 0);
    let fail_a = status_delivery(&v, &i, "a", ReplicationStatus::Failed, 1);
    let fail_c = status_delivery(&v, &i, "c", ReplicationStatus::Failed, 2);
    for d in [&done_a, &done_a, &fail_a, &fail_c, &fail_c, &done_a] {
        run(&p, d).await;
    }
    let got = store.replication(&v).await.unwrap().unwrap();
    assert_eq!(got.site("a").unwrap().status, ReplicationStatus::Completed);
    assert_eq!(got.site("a").unwrap().data_store_version_id, "dsv-1");
    assert_eq!(got.site("c").unwrap().status, ReplicationStatus::Failed);
    assert_eq!(got.status, Some(ReplicationStatus::Failed));
    assert_eq!(store.pending("a").await.unwrap(), (0, 0));
    assert_eq!(store.pending("c").await.unwrap(), (0, 0));
    assert_eq!(sum(&store, "a", Metric::OpsDone).await, 1);
    assert_eq!(sum(&store, "a", Metric::BytesDone).await, 100);
    assert_eq!(sum(&store, "a", Metric::OpsFail).await, 0);
    assert_eq!(sum(&store, "c", Metric::OpsFail).await, 1);
    assert_eq!(store.failed_count("c").await.unwrap(), 1);
    assert_eq!(store.failed_count("a").await.unwrap(), 0);

    // Unknown version (populator crashed after its append): recreated, then completed.
    let w = VersionRef::new("b", "lost", "v9");
    let j = info(&["a", "c"], 7);
    let d = status_delivery(&w, &j, "a", ReplicationStatus::Completed, 3);
    run(&p, &d).await;
    run(&p, &d).await;
    let got = store.replication(&w).await.unwrap().unwrap();
    assert_eq!(got.site("a").unwrap().status, ReplicationStatus::Completed);
    assert_eq!(got.site("c").unwrap().status, ReplicationStatus::Pending);
    assert_eq!(got.status, Some(ReplicationStatus::Processing));
    assert_eq!(store.pending("a").await.unwrap(), (0, 0));
    assert_eq!(store.pending("c").await.unwrap(), (1, 7));
    assert_eq!(sum(&store, "a", Metric::Ops).await, 2);
    assert_eq!(sum(&store, "a", Metric::OpsDone).await, 2);
    assert_eq!(sum(&store, "c", Metric::Ops).await, 2);
    drop(p);
    tracker.close();
    tracker.wait().await;
}

/// A version gone or changed at the source before its copy: the `skipped` status entry takes
/// the site off the version and off the pending counters, once however often it is replayed;
/// a COMPLETED site is never dropped.
#[tokio::test]
async fn a_skipped_version_leaves_nothing_pending_and_replays_change_nothing() {
    let (_tmp, store) = sled_store();
    let tracker = TaskTracker::new();
    let p = StatusProcessor::new(store.clone(), 20_000_000, &tracker);
    let v = VersionRef::new("b", "changed", "v1");
    let i = info(&["a", "c"], 40);
    let (g, o) = queued_ops(&v, i.clone(), store.now_ms());
    assert!(store.apply(g, o).await.unwrap());
    let skipped = |site: &str, offset| {
        let mut d = status_delivery(&v, &i, site, ReplicationStatus::Pending, offset);
        let mut e: QueueEntry = serde_json::from_slice(&d.record.value).unwrap();
        e.skipped = Some(SkipReason::Changed);
        d.record = Record::new(e.log_key(), e.encode());
        d
    };
    let done_a = status_delivery(&v, &i, "a", ReplicationStatus::Completed, 0);
    for d in [
        &done_a,
        &skipped("c", 1),
        &skipped("c", 2),
        &skipped("a", 3),
    ] {
        run(&p, d).await;
    }
    let got = store.replication(&v).await.unwrap().unwrap();
    assert_eq!(got.site("a").unwrap().status, ReplicationStatus::Completed);
    assert!(got.site("c").is_none(), "{got:?}");
    assert_eq!(got.status, Some(ReplicationStatus::Completed));
    assert_eq!(store.pending("a").await.unwrap(), (0, 0));
    assert_eq!(store.pending("c").await.unwrap(), (0, 0));
    assert_eq!(sum(&store, "c", Metric::OpsFail).await, 0);
    assert_eq!(sum(&store, "c", Metric::OpsDone).await, 0);
    assert_eq!(store.failed_count("c").await.unwrap(), 0);
    drop(p);
    tracker.close();
    tracker.wait().await;
}

/// A store in which the populator's update of one version lands at the worst moment: after
/// the status processor's guarded update failed for want of the version's info, before it
/// reads the info back (the populator appends to the log first, then records the version, so
/// a fast site and status processor can overtake it).
struct PopulatorLandsLate {
    inner: Arc<SledStore>,
    late: parking_lot::Mutex<Option<(Vec<Guard>, Vec<StoreOp>)>>,
}

#[async_trait::async_trait]
impl StateStore for PopulatorLandsLate {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
    async fn apply(&self, guards: Vec<Guard>, ops: Vec<StoreOp>) -> Result<bool, StoreError> {
        self.inner.apply(guards, ops).await
    }
    async fn replication(&self, v: &VersionRef) -> Result<Option<ReplicationInfo>, StoreError> {
        let late = self.late.lock().take();
        if let Some((g, o)) = late {
            assert!(
                self.inner.apply(g, o).await?,
                "the populator's update applies"
            );
        }
        self.inner.replication(v).await
    }
    async fn failed_page(
        &self,
        site: &str,
        marker: Option<u64>,
        limit: usize,
    ) -> Result<FailedPage, StoreError> {
        self.inner.failed_page(site, marker, limit).await
    }
    async fn failed_entry(
        &self,
        site: &str,
        v: &VersionRef,
    ) -> Result<Option<FailedEntry>, StoreError> {
        self.inner.failed_entry(site, v).await
    }
    async fn failed_count(&self, site: &str) -> Result<u64, StoreError> {
        self.inner.failed_count(site).await
    }
    async fn metric_buckets(&self, site: &str, m: Metric) -> Result<Vec<u64>, StoreError> {
        self.inner.metric_buckets(site, m).await
    }
    async fn object_metric_buckets(
        &self,
        site: &str,
        v: &VersionRef,
        m: ObjectMetric,
    ) -> Result<Vec<u64>, StoreError> {
        self.inner.object_metric_buckets(site, v, m).await
    }
    async fn pending(&self, site: &str) -> Result<(i64, i64), StoreError> {
        self.inner.pending(site).await
    }
    async fn pause_state(&self, svc: &str, site: &str) -> Result<Option<PauseState>, StoreError> {
        self.inner.pause_state(svc, site).await
    }
    async fn set_pause_state(
        &self,
        svc: &str,
        site: &str,
        state: PauseState,
    ) -> Result<(), StoreError> {
        self.inner.set_pause_state(svc, site, state).await
    }
    async fn cursor(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.cursor(name).await
    }
    async fn try_lock(&self, name: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        self.inner.try_lock(name, ttl_ms).await
    }
    async fn unlock(&self, name: &str) -> Result<(), StoreError> {
        self.inner.unlock(name).await
    }
    async fn expire(&self) -> Result<u64, StoreError> {
        self.inner.expire().await
    }
    fn check(&self) -> Result<(), StoreError> {
        self.inner.check()
    }
}

#[tokio::test]
async fn an_outcome_that_overtakes_the_populators_update_is_still_applied() {
    let (_tmp, sled) = sled_store();
    let v = VersionRef::new("b", "fast", "v1");
    let i = info(&["a", "c"], 10);
    let store = Arc::new(PopulatorLandsLate {
        inner: sled.clone(),
        late: parking_lot::Mutex::new(Some(queued_ops(&v, i.clone(), sled.now_ms()))),
    });
    let tracker = TaskTracker::new();
    let p = StatusProcessor::new(store.clone(), 20_000_000, &tracker);
    run(
        &p,
        &status_delivery(&v, &i, "a", ReplicationStatus::Completed, 0),
    )
    .await;
    let got = sled.replication(&v).await.unwrap().unwrap();
    assert_eq!(got.site("a").unwrap().status, ReplicationStatus::Completed);
    assert_eq!(got.site("c").unwrap().status, ReplicationStatus::Pending);
    assert_eq!(sled.pending("a").await.unwrap(), (0, 0));
    assert_eq!(sum(&sled, "a", Metric::Ops).await, 1);
    assert_eq!(sum(&sled, "a", Metric::OpsDone).await, 1);
    drop(p);
    tracker.close();
    tracker.wait().await;
}
