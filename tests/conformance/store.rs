//! The `StateStore` contract. Each check takes an opener (a function that opens the store
//! under test on a given clock, again after the previous handle was dropped) and a prefix that
//! keeps its bucket and site names apart from other checks sharing the same backend.
//!
//! State changes go through `apply` with `StoreOp::Key` changes, whose effects are
//! `backbeat::transitions::apply`'s: these checks are about the store running them (one
//! transaction, effects written, replays reported), listing what they wrote and expiring it.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use backbeat::clock::{Clock, ManualClock};
use backbeat::error::FailureReason;
use backbeat::model::{KeyState, ReplicationStatus, VersionRef};
use backbeat::store::DELETED_KEY_TTL_MS;
use backbeat::store::{
    failed_bucket, failed_window_start, metrics_bucket, Metric, ObjectMetric, PauseState,
    StateStore, StoreError, StoreOp, FAILED_BUCKET_MS, FAILED_PAGE, METRICS_BUCKETS,
    METRICS_BUCKET_MS,
};
use backbeat::transitions::{DropReason, FailedInfo, KeyChange, QueuedVersion, SiteOutcome};

/// Opens the store under test on `clock`.
pub type Opener = Box<
    dyn Fn(Arc<ManualClock>) -> Pin<Box<dyn Future<Output = Arc<dyn StateStore>> + Send>>
        + Send
        + Sync,
>;

/// A fixed "now": 2026-11-26 10:40:30.250 UTC, 40 minutes into its hour.
pub const NOW: u64 = 1_795_689_630_250;

/// A version of a key as the populator queues it.
fn version(id: &str, size: u64) -> QueuedVersion {
    QueuedVersion {
        version_id: id.to_string(),
        etag: format!("etag-{id}"),
        size,
        written_ms: NOW - 60_000,
        deleted: false,
        backfill: false,
    }
}

fn deletion(id: &str) -> QueuedVersion {
    QueuedVersion {
        deleted: true,
        ..version(id, 0)
    }
}

fn names(sites: &[&str]) -> Vec<String> {
    sites.iter().map(|s| s.to_string()).collect()
}

fn key_op(bucket: &str, key: &str, change: KeyChange) -> StoreOp {
    StoreOp::Key {
        bucket: bucket.to_string(),
        key: key.to_string(),
        change,
    }
}

fn queued(bucket: &str, key: &str, v: QueuedVersion, sites: &[&str]) -> StoreOp {
    key_op(
        bucket,
        key,
        KeyChange::Queued {
            version: v,
            sites: names(sites),
        },
    )
}

fn requeued(bucket: &str, key: &str, v: QueuedVersion, sites: &[&str]) -> StoreOp {
    key_op(
        bucket,
        key,
        KeyChange::Requeued {
            version: v,
            sites: names(sites),
        },
    )
}

fn outcome(bucket: &str, key: &str, vid: &str, site: &str, outcome: SiteOutcome) -> StoreOp {
    key_op(
        bucket,
        key,
        KeyChange::Outcome {
            version_id: vid.to_string(),
            site: site.to_string(),
            outcome,
        },
    )
}

fn completed(bucket: &str, key: &str, vid: &str, site: &str) -> StoreOp {
    outcome(
        bucket,
        key,
        vid,
        site,
        SiteOutcome::Completed {
            data_store_version_id: Some(format!("replica-of-{vid}")),
        },
    )
}

fn failed(bucket: &str, key: &str, vid: &str, site: &str, info: FailedInfo) -> StoreOp {
    outcome(bucket, key, vid, site, SiteOutcome::Failed(info))
}

fn retry(bucket: &str, key: &str, vid: &str, site: &str) -> StoreOp {
    key_op(
        bucket,
        key,
        KeyChange::Retry {
            version_id: vid.to_string(),
            site: site.to_string(),
        },
    )
}

fn retry_undone(bucket: &str, key: &str, vid: &str, site: &str) -> StoreOp {
    key_op(
        bucket,
        key,
        KeyChange::RetryUndone {
            version_id: vid.to_string(),
            site: site.to_string(),
        },
    )
}

fn unlisted(bucket: &str, key: &str, vid: &str, site: &str) -> StoreOp {
    key_op(
        bucket,
        key,
        KeyChange::Unlisted {
            version_id: vid.to_string(),
            site: site.to_string(),
        },
    )
}

fn site_removed(bucket: &str, key: &str, site: &str) -> StoreOp {
    key_op(
        bucket,
        key,
        KeyChange::SiteRemoved {
            site: site.to_string(),
        },
    )
}

/// What a failure knew, listed at `at`.
fn info(at: u64) -> FailedInfo {
    FailedInfo {
        size: 100,
        written_ms: NOW - 60_000,
        reason: FailureReason::Unreachable,
        attempts: 5,
        last_error: "connect: connection refused (10.0.0.1:443) — « réessayé »".into(),
        last_attempt_ms: at,
    }
}

/// Applies `ops`; returns for each whether it changed anything.
async fn apply(store: &dyn StateStore, ops: Vec<StoreOp>) -> Vec<bool> {
    store.apply(ops).await.expect("apply")
}

/// Applies one op; returns whether it changed anything.
async fn apply1(store: &dyn StateStore, op: StoreOp) -> bool {
    let r = apply(store, vec![op]).await;
    assert_eq!(r.len(), 1, "one result per op");
    r[0]
}

async fn state(store: &dyn StateStore, bucket: &str, key: &str) -> KeyState {
    store
        .key_state(bucket, key)
        .await
        .expect("key state")
        .unwrap_or_else(|| panic!("no record of {bucket}/{key}"))
}

fn status_of(state: &KeyState, site: &str) -> Option<ReplicationStatus> {
    state.site(site).map(|s| s.status)
}

async fn current_bucket(store: &dyn StateStore, site: &str, metric: Metric) -> u64 {
    store.metric_buckets(site, metric).await.expect("metrics")[0]
}

/// Follows `NextMarker` to the end; returns every entry, checking page sizes and duplicates.
pub async fn list_all(store: &dyn StateStore, site: &str) -> Vec<(VersionRef, u64)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut marker = None;
    let mut pages = 0;
    loop {
        let page = store
            .failed_page(site, marker, FAILED_PAGE)
            .await
            .expect("page");
        pages += 1;
        assert!(
            page.entries.len() <= FAILED_PAGE,
            "page of {} entries",
            page.entries.len()
        );
        for e in &page.entries {
            assert!(
                seen.insert(e.version.clone()),
                "duplicate {:?} on page {pages}",
                e.version
            );
            if let Some((_, last)) = out.last() {
                assert!(e.score_ms <= *last, "newest first");
            }
            assert_eq!(e.site, site);
            out.push((e.version.clone(), e.score_ms));
        }
        match page.next_marker {
            Some(m) => {
                assert_eq!(page.entries.len(), FAILED_PAGE, "a truncated page is full");
                marker = Some(m);
            }
            None => break,
        }
        assert!(pages < 100_000, "paging does not end");
    }
    out
}

/// The key of the `i`th failure of the paging checks (with `:` and `/` in it).
fn fkey(i: usize) -> String {
    format!("key:{i}/with:colons")
}

/// Makes `(key index, score)` failures at `site`: each key queued, then FAILED with its last
/// attempt at the score.
async fn add_failures(store: &dyn StateStore, bucket: &str, site: &str, items: &[(usize, u64)]) {
    for chunk in items.chunks(250) {
        let mut ops = Vec::with_capacity(chunk.len() * 2);
        for (i, score) in chunk {
            let vid = format!("v{i}");
            ops.push(queued(bucket, &fkey(*i), version(&vid, 100), &[site]));
            ops.push(failed(bucket, &fkey(*i), &vid, site, info(*score)));
        }
        let changed = apply(store, ops).await;
        assert!(changed.iter().all(|c| *c), "every failure applies");
    }
}

fn fref(bucket: &str, i: usize) -> VersionRef {
    VersionRef::new(bucket, fkey(i), format!("v{i}"))
}

/// Queued, then each outcome: the record, the pending counters, the window metrics and the
/// failed set move together, a replay changes nothing, and `apply` says so per op.
pub async fn key_changes_and_effects(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let (s1, s2) = (format!("{prefix}s1"), format!("{prefix}s2"));
    let bk = format!("{prefix}bk");
    let key = "a/b c:d";
    let v1 = version("v1", 100);

    let q = queued(&bk, key, v1.clone(), &[&s1, &s2]);
    assert_eq!(
        apply(&*store, vec![q.clone(), q.clone()]).await,
        vec![true, false],
        "a change replayed in the same batch sees the first"
    );
    assert!(
        !apply1(&*store, q).await,
        "a replayed Queued changes nothing"
    );
    let st = state(&*store, &bk, key).await;
    assert_eq!(
        (st.version_id.as_str(), st.etag.as_str(), st.size),
        ("v1", "etag-v1", 100)
    );
    assert_eq!((st.written_ms, st.queued_ms), (NOW - 60_000, NOW));
    assert!(!st.deleted && !st.backfill);
    assert_eq!(status_of(&st, &s1), Some(ReplicationStatus::Pending));
    assert_eq!(status_of(&st, &s2), Some(ReplicationStatus::Pending));
    assert_eq!(st.status(), Some(ReplicationStatus::Pending));
    for s in [&s1, &s2] {
        assert_eq!(store.pending(s).await.expect("pending"), (1, 100));
        assert_eq!(current_bucket(&*store, s, Metric::Ops).await, 1);
        assert_eq!(current_bucket(&*store, s, Metric::Bytes).await, 100);
    }

    // COMPLETED at s1.
    let done = completed(&bk, key, "v1", &s1);
    assert!(apply1(&*store, done.clone()).await);
    assert!(!apply1(&*store, done).await, "a replayed outcome");
    assert_eq!(store.pending(&s1).await.expect("pending"), (0, 0));
    assert_eq!(current_bucket(&*store, &s1, Metric::OpsDone).await, 1);
    assert_eq!(current_bucket(&*store, &s1, Metric::BytesDone).await, 100);
    let st = state(&*store, &bk, key).await;
    let site1 = st.site(&s1).expect("s1");
    assert_eq!(site1.status, ReplicationStatus::Completed);
    assert_eq!(site1.data_store_version_id, "replica-of-v1");
    assert_eq!(st.status(), Some(ReplicationStatus::Processing));

    // FAILED at s2: listed at its last attempt, with what was known.
    let fail = failed(&bk, key, "v1", &s2, info(NOW - 5_000));
    assert!(apply1(&*store, fail.clone()).await);
    assert!(!apply1(&*store, fail).await, "a replayed failure");
    assert_eq!(store.pending(&s2).await.expect("pending"), (0, 0));
    assert_eq!(current_bucket(&*store, &s2, Metric::OpsFail).await, 1);
    assert_eq!(current_bucket(&*store, &s2, Metric::BytesFail).await, 100);
    let vref = VersionRef::new(&bk, key, "v1");
    let e = store
        .failed_entry(&s2, &vref)
        .await
        .expect("entry")
        .expect("listed");
    assert_eq!((e.site.as_str(), e.score_ms), (s2.as_str(), NOW - 5_000));
    assert_eq!((&e.version, &e.info), (&vref, &info(NOW - 5_000)));
    assert_eq!(store.failed_count(&s2).await.expect("count"), 1);
    assert_eq!(store.failed_count(&s1).await.expect("count"), 0);
    let st = state(&*store, &bk, key).await;
    assert_eq!(status_of(&st, &s2), Some(ReplicationStatus::Failed));
    assert_eq!(st.status(), Some(ReplicationStatus::Failed));

    // Outcomes that do not apply: a site no longer PENDING, another version, an unknown key.
    assert_eq!(
        apply(
            &*store,
            vec![
                completed(&bk, key, "v1", &s2),
                completed(&bk, key, "v0", &s1),
                completed(&bk, "unknown", "v1", &s1),
            ]
        )
        .await,
        vec![false, false, false]
    );
    assert_eq!(state(&*store, &bk, key).await, st, "nothing changed");
    assert!(store
        .key_state(&bk, "unknown")
        .await
        .expect("read")
        .is_none());

    // Dropped: the site leaves the record, its pending count goes.
    let k2 = "dropped";
    assert!(apply1(&*store, queued(&bk, k2, version("w1", 7), &[&s1])).await);
    assert_eq!(store.pending(&s1).await.expect("pending"), (1, 7));
    let drop = outcome(
        &bk,
        k2,
        "w1",
        &s1,
        SiteOutcome::Dropped(DropReason::Superseded),
    );
    assert!(apply1(&*store, drop.clone()).await);
    assert!(!apply1(&*store, drop).await);
    assert_eq!(store.pending(&s1).await.expect("pending"), (0, 0));
    let st2 = state(&*store, &bk, k2).await;
    assert!(st2.sites.is_empty() && st2.status().is_none());
    assert_eq!(current_bucket(&*store, &s1, Metric::OpsDone).await, 1);
}

/// An operator's retry (two steps, or undone), a requeue and a site removed from the
/// configuration.
pub async fn retry_requeue_and_site_removal(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let (s1, s2) = (format!("{prefix}s1"), format!("{prefix}s2"));
    let bk = format!("{prefix}bk");
    let key = "k";
    let vref = VersionRef::new(&bk, key, "v1");
    apply(
        &*store,
        vec![
            queued(&bk, key, version("v1", 100), &[&s1, &s2]),
            failed(&bk, key, "v1", &s1, info(NOW - 1_000)),
            completed(&bk, key, "v1", &s2),
        ],
    )
    .await;
    let listed = |store: Arc<dyn StateStore>, site: String, vref: VersionRef| async move {
        store
            .failed_entry(&site, &vref)
            .await
            .expect("entry")
            .is_some()
    };

    // Step 1: back to PENDING, still listed until its entry is queued.
    let r = retry(&bk, key, "v1", &s1);
    assert_eq!(apply(&*store, vec![r.clone(), r]).await, vec![true, false]);
    assert_eq!(store.pending(&s1).await.expect("pending"), (1, 100));
    assert!(listed(store.clone(), s1.clone(), vref.clone()).await);
    let st = state(&*store, &bk, key).await;
    assert_eq!(status_of(&st, &s1), Some(ReplicationStatus::Pending));
    assert_eq!(st.status(), Some(ReplicationStatus::Processing));

    // Undone: FAILED again, still listed.
    let u = retry_undone(&bk, key, "v1", &s1);
    assert_eq!(apply(&*store, vec![u.clone(), u]).await, vec![true, false]);
    assert_eq!(store.pending(&s1).await.expect("pending"), (0, 0));
    assert!(listed(store.clone(), s1.clone(), vref.clone()).await);
    assert_eq!(
        status_of(&state(&*store, &bk, key).await, &s1),
        Some(ReplicationStatus::Failed)
    );

    // While FAILED, unlisting changes nothing: every FAILED site stays listed.
    assert!(!apply1(&*store, unlisted(&bk, key, "v1", &s1)).await);
    assert!(listed(store.clone(), s1.clone(), vref.clone()).await);

    // Step 1 then step 2: PENDING and no longer listed; it then completes.
    assert_eq!(
        apply(
            &*store,
            vec![retry(&bk, key, "v1", &s1), unlisted(&bk, key, "v1", &s1)]
        )
        .await,
        vec![true, true]
    );
    assert!(!listed(store.clone(), s1.clone(), vref.clone()).await);
    assert_eq!(store.failed_count(&s1).await.expect("count"), 0);
    assert_eq!(store.pending(&s1).await.expect("pending"), (1, 100));
    assert!(apply1(&*store, completed(&bk, key, "v1", &s1)).await);
    assert_eq!(store.pending(&s1).await.expect("pending"), (0, 0));
    assert_eq!(
        state(&*store, &bk, key).await.status(),
        Some(ReplicationStatus::Completed)
    );

    // A requeue copies again whatever the status: COMPLETED s2 back to PENDING, counted and
    // queued again; a FAILED site leaves the failed set.
    let ops_before = current_bucket(&*store, &s2, Metric::Ops).await;
    assert!(apply1(&*store, requeued(&bk, key, version("v1", 100), &[&s2])).await);
    assert_eq!(store.pending(&s2).await.expect("pending"), (1, 100));
    assert_eq!(
        current_bucket(&*store, &s2, Metric::Ops).await,
        ops_before + 1
    );
    let s2_state = state(&*store, &bk, key).await;
    let s2_site = s2_state.site(&s2).expect("s2");
    assert_eq!(s2_site.status, ReplicationStatus::Pending);
    assert_eq!(s2_site.data_store_version_id, "");
    assert!(apply1(&*store, failed(&bk, key, "v1", &s2, info(NOW))).await);
    assert!(listed(store.clone(), s2.clone(), vref.clone()).await);
    assert!(apply1(&*store, requeued(&bk, key, version("v1", 100), &[&s2])).await);
    assert!(!listed(store.clone(), s2.clone(), vref.clone()).await);
    assert_eq!(store.pending(&s2).await.expect("pending"), (1, 100));
    // A site already PENDING is not counted twice.
    assert!(!apply1(&*store, queued(&bk, key, version("v1", 100), &[&s1, &s2])).await);
    assert_eq!(store.pending(&s2).await.expect("pending"), (1, 100));

    // Site removed: a PENDING site leaves the pending counters, a FAILED one the failed set.
    let k2 = "removed";
    apply(
        &*store,
        vec![
            queued(&bk, k2, version("w1", 10), &[&s1, &s2]),
            failed(&bk, k2, "w1", &s1, info(NOW)),
        ],
    )
    .await;
    let w1 = VersionRef::new(&bk, k2, "w1");
    assert!(listed(store.clone(), s1.clone(), w1.clone()).await);
    assert_eq!(store.pending(&s2).await.expect("pending"), (2, 110));
    let gone = vec![
        site_removed(&bk, k2, &s1),
        site_removed(&bk, k2, &s2),
        site_removed(&bk, k2, &s2),
    ];
    assert_eq!(apply(&*store, gone).await, vec![true, true, false]);
    assert!(!listed(store.clone(), s1.clone(), w1).await);
    assert_eq!(store.pending(&s2).await.expect("pending"), (1, 100));
    assert!(state(&*store, &bk, k2).await.sites.is_empty());
    assert!(!apply1(&*store, site_removed(&bk, "unknown", &s1)).await);
}

/// A newer version takes the record over; what was known of the older one goes with it.
pub async fn newer_versions_take_over(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let (s1, s2, s3) = (
        format!("{prefix}s1"),
        format!("{prefix}s2"),
        format!("{prefix}s3"),
    );
    let bk = format!("{prefix}bk");
    let key = "k";
    apply(
        &*store,
        vec![
            queued(&bk, key, version("v1", 100), &[&s1, &s2]),
            failed(&bk, key, "v1", &s1, info(NOW)),
        ],
    )
    .await;
    clock.advance(1_000);
    // v2 for s1 only: s1's failure of v1 is unlisted, s2's pending v1 is no longer counted.
    assert!(apply1(&*store, queued(&bk, key, version("v2", 50), &[&s1])).await);
    let st = state(&*store, &bk, key).await;
    assert_eq!((st.version_id.as_str(), st.size), ("v2", 50));
    assert_eq!(st.queued_ms, NOW + 1_000);
    assert_eq!(st.sites.len(), 1);
    assert_eq!(status_of(&st, &s1), Some(ReplicationStatus::Pending));
    assert_eq!(store.pending(&s1).await.expect("pending"), (1, 50));
    assert_eq!(store.pending(&s2).await.expect("pending"), (0, 0));
    assert_eq!(store.failed_count(&s1).await.expect("count"), 0);
    // A late outcome about v1 changes nothing.
    assert!(!apply1(&*store, completed(&bk, key, "v1", &s1)).await);
    assert_eq!(store.pending(&s1).await.expect("pending"), (1, 50));
    // A newer version while the older is still PENDING: counted once, bytes follow the size.
    assert!(apply1(&*store, queued(&bk, key, version("v3", 70), &[&s1])).await);
    assert_eq!(store.pending(&s1).await.expect("pending"), (1, 70));
    // A site added to the rule is backfilled once.
    let wider = queued(&bk, key, version("v3", 70), &[&s1, &s3]);
    assert_eq!(
        apply(&*store, vec![wider.clone(), wider]).await,
        vec![true, false]
    );
    assert_eq!(store.pending(&s3).await.expect("pending"), (1, 70));
    // Two `null` versions are told apart by their ETag.
    let null = |etag: &str| QueuedVersion {
        etag: etag.to_string(),
        ..version("null", 5)
    };
    assert!(apply1(&*store, queued(&bk, "n", null("e1"), &[&s2])).await);
    assert!(!apply1(&*store, queued(&bk, "n", null("e1"), &[&s2])).await);
    assert!(apply1(&*store, queued(&bk, "n", null("e2"), &[&s2])).await);
    assert_eq!(store.pending(&s2).await.expect("pending"), (1, 5));
    assert_eq!(state(&*store, &bk, "n").await.etag, "e2");
    // The deletion of a key never replicated records nothing.
    assert!(!apply1(&*store, queued(&bk, "never", deletion("d1"), &[&s1])).await);
    assert!(store.key_state(&bk, "never").await.expect("read").is_none());
    // The deletion of a replicated key is a version like another.
    assert!(apply1(&*store, queued(&bk, key, deletion("d1"), &[&s1])).await);
    let st = state(&*store, &bk, key).await;
    assert!(st.deleted && st.version_id == "d1");
    assert_eq!(store.pending(&s1).await.expect("pending"), (1, 0));
    assert_eq!(store.pending(&s3).await.expect("pending"), (0, 0));
}

/// A deterministic pseudo-random generator, the same sequence on every store.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Checks the invariant of `backbeat::transitions` on what the store holds: a site's pending
/// counters are the number and bytes of keys PENDING there, every FAILED (key, site) is
/// listed, and nothing else is listed but a version being retried.
async fn check_balance(store: &dyn StateStore, bucket: &str, sites: &[String]) {
    let records = store
        .key_states(bucket, "", None, 10_000)
        .await
        .expect("records");
    for site in sites {
        let (mut ops, mut bytes) = (0, 0);
        let mut failed = BTreeSet::new();
        for (key, k) in &records {
            match status_of(k, site) {
                Some(ReplicationStatus::Pending) => {
                    ops += 1;
                    bytes += k.size as i64;
                }
                Some(ReplicationStatus::Failed) => {
                    failed.insert(VersionRef::new(bucket, key.clone(), k.version_id.clone()));
                }
                _ => {}
            }
        }
        assert_eq!(
            store.pending(site).await.expect("pending"),
            (ops, bytes),
            "pending counters of {site}"
        );
        let listed: BTreeSet<VersionRef> = list_all(store, site)
            .await
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert!(
            failed.is_subset(&listed),
            "{site}: FAILED but not listed: {:?}",
            failed.difference(&listed).collect::<Vec<_>>()
        );
        for v in listed.difference(&failed) {
            let retrying = records.iter().any(|(key, k)| {
                *key == v.key
                    && k.version_id == v.version_id
                    && status_of(k, site) == Some(ReplicationStatus::Pending)
            });
            assert!(retrying, "{site}: stale failed entry {v}");
        }
        assert_eq!(
            store.failed_count(site).await.expect("count"),
            listed.len() as u64
        );
    }
}

/// Any sequence of changes, some replayed (in the same batch), keeps the counters balanced.
pub async fn pending_counters_balance(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let bk = format!("{prefix}bk");
    let sites: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|s| format!("{prefix}{s}"))
        .collect();
    let site_names = |mask: u64| -> Vec<&str> {
        sites
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, s)| s.as_str())
            .collect()
    };
    let ver = |n: u64| QueuedVersion {
        deleted: n == 2,
        ..version(&format!("v{n}"), 10 + n * 7)
    };
    let mut rng = Lcg(7);
    for step in 0..400u64 {
        let key = format!("k{}/x", rng.below(3));
        let n = rng.below(3);
        let site = sites[rng.below(3) as usize].clone();
        let replay = rng.below(2) == 0;
        let single = match rng.below(6) {
            0 => Some(queued(&bk, &key, ver(n), &site_names(rng.below(8)))),
            1 => {
                // A requeue copies again by design: never replayed.
                let op = requeued(&bk, &key, ver(n), &site_names(rng.below(8)));
                apply1(&*store, op).await;
                None
            }
            2 | 3 => {
                let vid = format!("v{n}");
                let o = match rng.below(4) {
                    0 => SiteOutcome::Completed {
                        data_store_version_id: Some("r".into()),
                    },
                    1 => SiteOutcome::Failed(info(NOW - step)),
                    2 => SiteOutcome::Dropped(DropReason::Superseded),
                    _ => SiteOutcome::Dropped(DropReason::Replica),
                };
                Some(outcome(&bk, &key, &vid, &site, o))
            }
            4 => {
                let vid = format!("v{n}");
                if apply1(&*store, retry(&bk, &key, &vid, &site)).await {
                    let next = if rng.below(2) == 0 {
                        unlisted(&bk, &key, &vid, &site)
                    } else {
                        retry_undone(&bk, &key, &vid, &site)
                    };
                    Some(next)
                } else {
                    None
                }
            }
            _ => Some(site_removed(&bk, &key, &site)),
        };
        if let Some(op) = single {
            let is_unlisted = matches!(
                &op,
                StoreOp::Key {
                    change: KeyChange::Unlisted { .. },
                    ..
                }
            );
            if replay {
                let r = apply(&*store, vec![op.clone(), op]).await;
                assert!(
                    !(r[0] && r[1]) || is_unlisted,
                    "step {step}: a replayed change must change nothing"
                );
            } else {
                apply1(&*store, op).await;
            }
        }
        if step % 100 == 99 {
            check_balance(&*store, &bk, &sites).await;
        }
    }
    check_balance(&*store, &bk, &sites).await;
}

/// 10,000 failures in one hour page out exactly, 100 at a time, newest first.
pub async fn failed_paging_one_hour(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let site = format!("{prefix}site1");
    let bk = format!("{prefix}bk");
    let hour = failed_bucket(NOW);
    // Scores inside the current hour, some equal on purpose (the store keeps them unique).
    let items: Vec<(usize, u64)> = (0..10_000)
        .map(|i| (i, hour + (i as u64 % 5000) * 400))
        .collect();
    add_failures(&*store, &bk, &site, &items).await;
    assert_eq!(store.failed_count(&site).await.expect("count"), 10_000);
    let all = list_all(&*store, &site).await;
    assert_eq!(all.len(), 10_000);
    let scores: HashSet<u64> = all.iter().map(|(_, s)| *s).collect();
    assert_eq!(scores.len(), 10_000, "scores are unique per site");
    let expected: HashSet<VersionRef> = items.iter().map(|(i, _)| fref(&bk, *i)).collect();
    let got: HashSet<VersionRef> = all.into_iter().map(|(v, _)| v).collect();
    assert_eq!(got, expected);
}

/// 24 hours of 750 failures each page out exactly; the 25th hour back is not listed.
pub async fn failed_paging_24_hours(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let site = format!("{prefix}site24");
    let bk = format!("{prefix}bk");
    let hour = failed_bucket(NOW);
    let mut items = Vec::new();
    for h in 0..24u64 {
        for j in 0..750u64 {
            let i = (h * 750 + j) as usize;
            items.push((i, hour - h * FAILED_BUCKET_MS + j * 1000));
        }
    }
    add_failures(&*store, &bk, &site, &items).await;
    // An entry of 24 hours ago is outside the window.
    add_failures(
        &*store,
        &bk,
        &site,
        &[(999_999, hour - 24 * FAILED_BUCKET_MS + 5)],
    )
    .await;
    assert_eq!(store.failed_count(&site).await.expect("count"), 18_000);
    let all = list_all(&*store, &site).await;
    assert_eq!(all.len(), 18_000);
    assert!(!all.iter().any(|(v, _)| v.version_id == "v999999"));
    assert!(store
        .failed_entry(&site, &fref(&bk, 999_999))
        .await
        .expect("entry")
        .is_none());
    // A marker outside the window gives an empty, untruncated page.
    let page = store
        .failed_page(&site, Some(9_999_999_999), FAILED_PAGE)
        .await
        .expect("page");
    assert!(page.entries.is_empty() && page.next_marker.is_none());
    // After 24 hours everything has expired, and the sweep deletes it.
    clock.advance(24 * FAILED_BUCKET_MS);
    assert_eq!(store.failed_count(&site).await.expect("count"), 0);
    assert!(store
        .failed_page(&site, None, FAILED_PAGE)
        .await
        .expect("page")
        .entries
        .is_empty());
    assert!(store
        .failed_entry(&site, &fref(&bk, 0))
        .await
        .expect("entry")
        .is_none());
    assert!(store.expire().await.expect("expire") >= 18_000);
    assert_eq!(store.failed_count(&site).await.expect("count"), 0);
}

/// One entry per (site, version), listed at its last attempt with what was known; markers,
/// unique scores and the window.
pub async fn failed_set_membership(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let a = format!("{prefix}a");
    let b = format!("{prefix}b");
    let bk = format!("{prefix}bk");
    let v = |key: &str| VersionRef::new(&bk, key, "v1");
    let entry = |store: Arc<dyn StateStore>, site: String, v: VersionRef| async move {
        store.failed_entry(&site, &v).await.expect("entry")
    };
    apply(
        &*store,
        vec![
            queued(&bk, "k1", version("v1", 100), &[&a, &b]),
            failed(&bk, "k1", "v1", &a, info(NOW - 10_000)),
            failed(&bk, "k1", "v1", &b, info(NOW - 5_000)),
        ],
    )
    .await;
    assert_eq!(store.failed_count(&a).await.expect("count"), 1);
    assert_eq!(store.failed_count(&b).await.expect("count"), 1);
    let e = entry(store.clone(), a.clone(), v("k1"))
        .await
        .expect("listed");
    assert_eq!((e.score_ms, &e.info), (NOW - 10_000, &info(NOW - 10_000)));

    // Failing again after a retry moves the entry (one per pair), with the new details.
    let again = FailedInfo {
        reason: FailureReason::ChecksumMismatch,
        attempts: 9,
        last_error: "md5 mismatch: 0123abcd != ffff0000".into(),
        ..info(NOW - 1_000)
    };
    apply(
        &*store,
        vec![
            retry(&bk, "k1", "v1", &a),
            failed(&bk, "k1", "v1", &a, again.clone()),
        ],
    )
    .await;
    assert_eq!(store.failed_count(&a).await.expect("count"), 1);
    let e = entry(store.clone(), a.clone(), v("k1"))
        .await
        .expect("listed");
    assert_eq!((e.score_ms, &e.info), (NOW - 1_000, &again));
    assert_eq!(
        entry(store.clone(), b.clone(), v("k1"))
            .await
            .expect("b is independent")
            .score_ms,
        NOW - 5_000
    );

    // The same last attempt: the score is bumped, so markers page without duplicates. No
    // last attempt known: listed at the store's time.
    apply(
        &*store,
        vec![
            queued(&bk, "k2", version("v1", 1), &[&a]),
            failed(&bk, "k2", "v1", &a, info(NOW - 1_000)),
            queued(&bk, "k3", version("v1", 1), &[&a]),
            failed(&bk, "k3", "v1", &a, info(0)),
        ],
    )
    .await;
    let all = list_all(&*store, &a).await;
    assert_eq!(
        all,
        vec![(v("k3"), NOW), (v("k2"), NOW - 999), (v("k1"), NOW - 1_000)]
    );
    // Page by page: the marker is the score of the next page's first entry; 0 is the newest.
    let p1 = store.failed_page(&a, Some(0), 1).await.expect("page");
    assert_eq!(p1.entries.len(), 1);
    assert_eq!(
        (&p1.entries[0].version, p1.next_marker),
        (&v("k3"), Some(NOW - 999))
    );
    let p2 = store
        .failed_page(&a, p1.next_marker, 1)
        .await
        .expect("page");
    assert_eq!(
        (&p2.entries[0].version, p2.next_marker),
        (&v("k2"), Some(NOW - 1_000))
    );
    let p3 = store
        .failed_page(&a, p2.next_marker, 1)
        .await
        .expect("page");
    assert_eq!((&p3.entries[0].version, p3.next_marker), (&v("k1"), None));
    let p = store
        .failed_page(&a, Some(NOW - 999), 10)
        .await
        .expect("page");
    assert_eq!(p.entries.len(), 2, "a marker lists its own score and below");

    // The window: the current hour and the 23 before it.
    let start = failed_window_start(NOW);
    apply(
        &*store,
        vec![
            queued(&bk, "old", version("v1", 1), &[&a]),
            failed(&bk, "old", "v1", &a, info(start - 1)),
            queued(&bk, "oldest-kept", version("v1", 1), &[&a]),
            failed(&bk, "oldest-kept", "v1", &a, info(start)),
        ],
    )
    .await;
    assert!(entry(store.clone(), a.clone(), v("old")).await.is_none());
    assert!(entry(store.clone(), a.clone(), v("oldest-kept"))
        .await
        .is_some());
    assert_eq!(store.failed_count(&a).await.expect("count"), 4);
    assert_eq!(list_all(&*store, &a).await.len(), 4);

    // Unlisted once retried: gone from a, still in b.
    apply(
        &*store,
        vec![retry(&bk, "k1", "v1", &a), unlisted(&bk, "k1", "v1", &a)],
    )
    .await;
    assert!(entry(store.clone(), a.clone(), v("k1")).await.is_none());
    assert_eq!(store.failed_count(&a).await.expect("count"), 3);
    assert_eq!(store.failed_count(&b).await.expect("count"), 1);
}

/// Keys with `/`, `%`, spaces, `:`, control characters and non-ASCII text, in byte order.
const KEYS: [&str; 28] = [
    "a",
    "a/",
    "a/b",
    "a/b/c",
    "a//b",
    "a%2Fb",
    "a%",
    "a b",
    "a.b",
    "a0",
    "a\u{7f}",
    "A",
    "..",
    "key:with:colons",
    "z",
    "~",
    "é",
    "é/x",
    "ê",
    "日本/語",
    "\u{FF61}",
    "😀",
    "😀/x",
    "p\u{10FFFF}",
    "p\u{10FFFF}x",
    "q",
    "\u{1}",
    "tab\there",
];

/// `key_state` and `key_states`: one record per key, listed in key byte order by prefix,
/// after a key, up to a limit; other buckets (even one whose name starts alike) apart.
pub async fn key_listings(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let site = format!("{prefix}s");
    let bk = format!("{prefix}bk");
    let others = [format!("{prefix}b"), format!("{prefix}bk2")];
    let mut ops: Vec<StoreOp> = KEYS
        .iter()
        .enumerate()
        .map(|(i, k)| queued(&bk, k, version(&format!("v{i}"), i as u64), &[&site]))
        .collect();
    for o in &others {
        ops.push(queued(o, "a", version("other", 1), &[&site]));
        ops.push(queued(o, "a/b", version("other", 1), &[&site]));
    }
    apply(&*store, ops).await;
    let mut sorted: Vec<&str> = KEYS.to_vec();
    sorted.sort();
    let all = store.key_states(&bk, "", None, 1_000).await.expect("list");
    let got: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(got, sorted, "key byte order, this bucket only");
    for (k, st) in &all {
        let i = KEYS.iter().position(|x| x == k).expect("known key");
        assert_eq!(st.version_id, format!("v{i}"));
        assert_eq!(&state(&*store, &bk, k).await, st);
    }
    assert!(store.key_state(&bk, "a/b/").await.expect("read").is_none());
    assert_eq!(
        state(&*store, &others[0], "a").await.version_id,
        "other",
        "the other bucket's record of the same key"
    );

    // Pages of 3 after the last key seen give the same list.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .key_states(&bk, "", after.as_deref(), 3)
            .await
            .expect("page");
        assert!(page.len() <= 3);
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        paged.extend(page.into_iter().map(|(k, _)| k));
    }
    assert_eq!(paged, sorted);

    // Prefixes, including one ending with the last code point.
    for p in [
        "a",
        "a/",
        "a/b",
        "é",
        "😀",
        "p\u{10FFFF}",
        "%",
        "a%",
        "日本/",
        "nothing",
    ] {
        let want: Vec<&str> = sorted
            .iter()
            .copied()
            .filter(|k| k.starts_with(p))
            .collect();
        let got = store.key_states(&bk, p, None, 1_000).await.expect("list");
        let got: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(got, want, "prefix {p:?}");
    }
    // `after` within the prefix, before it (starts at the prefix), after it (nothing).
    let got = store
        .key_states(&bk, "a/", Some("a/b"), 1_000)
        .await
        .expect("list");
    let got: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(got, vec!["a/b/c"]);
    let got = store
        .key_states(&bk, "a/", Some("A"), 1_000)
        .await
        .expect("list");
    assert_eq!(got.len(), 4);
    assert!(store
        .key_states(&bk, "a/", Some("b"), 1_000)
        .await
        .expect("list")
        .is_empty());
    assert!(store
        .key_states(&bk, "", None, 0)
        .await
        .expect("list")
        .is_empty());
    assert!(store
        .key_states(&format!("{prefix}none"), "", None, 10)
        .await
        .expect("list")
        .is_empty());
}

/// `key_children`: the records directly in a directory and the names of its subdirectories,
/// in key order, paged by `after` and `limit`.
pub async fn key_children_listing(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let site = format!("{prefix}s");
    let bk = format!("{prefix}bk");
    let keys = [
        "top",
        "d/a",
        "d/b",
        "d/sub.txt",
        "d/sub/x",
        "d/sub/y/z",
        "d/sub0",
        "d/t",
        "d/u/v",
        "d/é/x",
        "dz",
        "e/f",
    ];
    let mut ops: Vec<StoreOp> = keys
        .iter()
        .map(|k| queued(&bk, k, version("v1", 1), &[&site]))
        .collect();
    ops.push(queued(
        &format!("{prefix}bk2"),
        "d/other",
        version("v1", 1),
        &[&site],
    ));
    apply(&*store, ops).await;
    let children = |dir: &'static str, after: Option<&'static str>, limit: usize| {
        let store = store.clone();
        let bk = bk.clone();
        async move {
            let (keys, subdirs) = store
                .key_children(&bk, dir, after, limit)
                .await
                .expect("children");
            let keys: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
            (keys, subdirs)
        }
    };
    let s = |v: &[&str]| -> Vec<String> { v.iter().map(|x| x.to_string()).collect() };
    assert_eq!(
        children("d/", None, 100).await,
        (
            s(&["d/a", "d/b", "d/sub.txt", "d/sub0", "d/t"]),
            s(&["d/sub/", "d/u/", "d/é/"])
        )
    );
    assert_eq!(
        children("", None, 100).await,
        (s(&["dz", "top"]), s(&["d/", "e/"]))
    );
    assert_eq!(
        children("d/sub/", None, 100).await,
        (s(&["d/sub/x"]), s(&["d/sub/y/"]))
    );
    assert_eq!(children("nothing/", None, 100).await, (vec![], vec![]));
    // Paged two keys at a time: the subdirectories met on the way come with each page.
    assert_eq!(children("d/", None, 2).await, (s(&["d/a", "d/b"]), vec![]));
    assert_eq!(
        children("d/", Some("d/b"), 2).await,
        (s(&["d/sub.txt", "d/sub0"]), s(&["d/sub/"]))
    );
    assert_eq!(
        children("d/", Some("d/sub0"), 2).await,
        (s(&["d/t"]), s(&["d/u/", "d/é/"]))
    );
    assert_eq!(
        children("d/", Some("d/t"), 2).await,
        (vec![], s(&["d/u/", "d/é/"]))
    );
    assert_eq!(children("d/", None, 0).await, (vec![], vec![]));
}

/// Directory summaries: put, overwrite, read (all 64 bits), delete a prefix and what is
/// under it.
pub async fn dir_summaries(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let bk = format!("{prefix}bk");
    let other = format!("{prefix}bk2");
    let put = |bucket: &str, dir: &str, summary: u64| StoreOp::PutDirSummary {
        bucket: bucket.to_string(),
        dir: dir.to_string(),
        summary,
    };
    let delete = |bucket: &str, prefix: &str| StoreOp::DeleteDirSummaries {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    };
    let dirs = [
        ("", 1),
        ("a/", u64::MAX),
        ("a/b/", 1 << 63),
        ("ab/", 4),
        ("b/", 5),
        ("é/", 6),
    ];
    let ops: Vec<StoreOp> = dirs.iter().map(|(d, s)| put(&bk, d, *s)).collect();
    assert_eq!(apply(&*store, ops).await, vec![true; dirs.len()]);
    assert!(apply1(&*store, put(&other, "a/", 9)).await);
    for (d, s) in dirs {
        assert_eq!(
            store.dir_summary(&bk, d).await.expect("read"),
            Some(s),
            "{d:?}"
        );
    }
    assert_eq!(store.dir_summary(&bk, "c/").await.expect("read"), None);
    assert!(apply1(&*store, put(&bk, "b/", 7)).await);
    assert_eq!(store.dir_summary(&bk, "b/").await.expect("read"), Some(7));

    assert!(apply1(&*store, delete(&bk, "a/")).await);
    let left = |store: Arc<dyn StateStore>, bk: String| async move {
        let mut out = Vec::new();
        for d in ["", "a/", "a/b/", "ab/", "b/", "é/"] {
            if store.dir_summary(&bk, d).await.expect("read").is_some() {
                out.push(d);
            }
        }
        out
    };
    assert_eq!(
        left(store.clone(), bk.clone()).await,
        vec!["", "ab/", "b/", "é/"]
    );
    assert_eq!(
        store.dir_summary(&other, "a/").await.expect("read"),
        Some(9)
    );
    assert!(apply1(&*store, delete(&bk, "")).await);
    assert!(left(store.clone(), bk.clone()).await.is_empty());
    assert_eq!(
        store.dir_summary(&other, "a/").await.expect("read"),
        Some(9),
        "another bucket's summaries stay"
    );
}

/// The first source bucket to claim a `bucket_match` site owns it, across reopens.
pub async fn namespace_claims(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let (s1, s2, s3) = (
        format!("{prefix}s1"),
        format!("{prefix}s2"),
        format!("{prefix}s3"),
    );
    let claim = |site: &str, bucket: &str| StoreOp::ClaimNamespace {
        site: site.to_string(),
        bucket: bucket.to_string(),
    };
    {
        let store = open(clock.clone()).await;
        assert_eq!(store.claim_namespace(&s1, "b1").await.expect("claim"), "b1");
        assert_eq!(store.claim_namespace(&s1, "b2").await.expect("claim"), "b1");
        assert_eq!(store.claim_namespace(&s1, "b1").await.expect("claim"), "b1");
        assert_eq!(store.claim_namespace(&s2, "b2").await.expect("claim"), "b2");
        assert_eq!(
            apply(
                &*store,
                vec![claim(&s3, "b3"), claim(&s3, "b4"), claim(&s1, "b3")]
            )
            .await,
            vec![true, false, false]
        );
    }
    let store = open(clock.clone()).await;
    assert_eq!(store.claim_namespace(&s1, "b9").await.expect("claim"), "b1");
    assert_eq!(store.claim_namespace(&s3, "b9").await.expect("claim"), "b3");
}

/// Metrics land in 5-minute buckets, newest first, kept 24 hours; pending counters never
/// expire.
pub async fn metrics_buckets(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let site = format!("{prefix}m");
    let bk = format!("{prefix}bk");
    let metric = |metric: Metric, value: u64, at_ms: u64| StoreOp::AddMetric {
        site: site.clone(),
        metric,
        value,
        at_ms,
    };
    let ops = vec![
        metric(Metric::OpsDone, 3, NOW),
        metric(Metric::OpsDone, 4, NOW - METRICS_BUCKET_MS),
        metric(Metric::OpsDone, 5, NOW - 287 * METRICS_BUCKET_MS),
        metric(Metric::OpsDone, 6, NOW - 288 * METRICS_BUCKET_MS),
        metric(Metric::BytesDone, 100, NOW),
        metric(Metric::BytesDone, 0, NOW),
        StoreOp::AddObjectMetric {
            site: site.clone(),
            version: VersionRef::new(&bk, "k", "v1"),
            metric: ObjectMetric::BytesDone,
            value: 50,
            at_ms: NOW,
        },
        queued(&bk, "k", version("v1", 64), &[&site]),
    ];
    let n = ops.len();
    assert_eq!(apply(&*store, ops).await, vec![true; n]);
    let b = store
        .metric_buckets(&site, Metric::OpsDone)
        .await
        .expect("buckets");
    assert_eq!(b.len(), METRICS_BUCKETS);
    assert_eq!((b[0], b[1], b[287]), (3, 4, 5));
    assert_eq!(
        b.iter().sum::<u64>(),
        12,
        "the 289th bucket back is out of the window"
    );
    assert_eq!(current_bucket(&*store, &site, Metric::BytesDone).await, 100);
    assert_eq!(current_bucket(&*store, &site, Metric::Ops).await, 1);
    assert_eq!(current_bucket(&*store, &site, Metric::Bytes).await, 64);
    let ob = store
        .object_metric_buckets(
            &site,
            &VersionRef::new(&bk, "k", "v1"),
            ObjectMetric::BytesDone,
        )
        .await
        .expect("object");
    assert_eq!(
        (ob.len(), ob[0], ob.iter().sum::<u64>()),
        (METRICS_BUCKETS, 50, 50)
    );
    assert_eq!(store.pending(&site).await.expect("pending"), (1, 64));
    // Moving into the next bucket shifts the window.
    clock.set(metrics_bucket(NOW) + METRICS_BUCKET_MS);
    let b = store
        .metric_buckets(&site, Metric::OpsDone)
        .await
        .expect("buckets");
    assert_eq!((b[0], b[1], b[2]), (0, 3, 4));
    assert_eq!(b.iter().sum::<u64>(), 7);
    clock.advance(24 * 3600 * 1000);
    assert_eq!(
        store
            .metric_buckets(&site, Metric::OpsDone)
            .await
            .expect("buckets")
            .iter()
            .sum::<u64>(),
        0
    );
    assert!(store.expire().await.expect("expire") > 0);
    assert_eq!(
        store.pending(&site).await.expect("pending"),
        (1, 64),
        "pending counters never expire"
    );
    // Nothing left to expire, and a bucket written again counts from zero.
    clock.set(NOW);
    assert_eq!(current_bucket(&*store, &site, Metric::OpsDone).await, 0);
    assert_eq!(
        store
            .object_metric_buckets(
                &site,
                &VersionRef::new(&bk, "k", "v1"),
                ObjectMetric::BytesDone
            )
            .await
            .expect("object")[0],
        0
    );
}

/// Records, pause state, a scheduled resume and cursors survive a reopen; locks expire after
/// their TTL.
pub async fn durable_state_and_locks(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let site = format!("{prefix}p");
    let bk = format!("{prefix}bk");
    let cursor = format!("{prefix}cursor");
    {
        let store = open(clock.clone()).await;
        assert_eq!(store.pause_state("crr", &site).await.expect("read"), None);
        store
            .set_pause_state(
                "crr",
                &site,
                PauseState {
                    paused: true,
                    scheduled_resume_ms: Some(NOW + 3_600_000),
                },
            )
            .await
            .expect("pause");
        assert_eq!(store.cursor(&cursor).await.expect("cursor"), None);
        assert_eq!(
            apply(
                &*store,
                vec![
                    StoreOp::PutCursor {
                        name: cursor.clone(),
                        value: b"key-marker\0v".to_vec()
                    },
                    queued(&bk, "k", version("v1", 3), &[&site]),
                ]
            )
            .await,
            vec![true, true]
        );
        let lock = format!("{prefix}lock");
        assert!(store.try_lock(&lock, 60_000).await.expect("lock"));
        assert!(!store.try_lock(&lock, 60_000).await.expect("held"));
        clock.advance(60_001);
        assert!(store
            .try_lock(&lock, 60_000)
            .await
            .expect("expired lock is free"));
        store.unlock(&lock).await.expect("unlock");
        assert!(store
            .try_lock(&lock, 60_000)
            .await
            .expect("free after unlock"));
        assert!(!store.try_lock(&lock, 60_000).await.expect("held"));
    }
    let store = open(clock.clone()).await;
    assert_eq!(
        store.pause_state("crr", &site).await.expect("read"),
        Some(PauseState {
            paused: true,
            scheduled_resume_ms: Some(NOW + 3_600_000)
        })
    );
    assert_eq!(store.pause_state("other", &site).await.expect("read"), None);
    assert_eq!(
        store.cursor(&cursor).await.expect("cursor"),
        Some(b"key-marker\0v".to_vec())
    );
    assert_eq!(state(&*store, &bk, "k").await.version_id, "v1");
    assert_eq!(store.pending(&site).await.expect("pending"), (1, 3));
    // An expired lock is swept.
    clock.advance(60_001);
    assert!(store.expire().await.expect("expire") >= 1);
    assert!(store.check().is_ok());
}

/// The record of a key deleted at the source is kept `DELETED_KEY_TTL_MS` once the deletion is
/// replicated everywhere, then swept; a key not settled or written again keeps its record.
pub async fn deleted_keys_expire(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let (s1, s2) = (format!("{prefix}s1"), format!("{prefix}s2"));
    let bk = format!("{prefix}bk");
    let present = |store: Arc<dyn StateStore>, bk: String, key: &'static str| async move {
        store.key_state(&bk, key).await.expect("read").is_some()
    };
    for key in ["gone", "unsettled", "rewritten"] {
        apply(
            &*store,
            vec![
                queued(&bk, key, version("v1", 10), &[&s1, &s2]),
                completed(&bk, key, "v1", &s1),
                completed(&bk, key, "v1", &s2),
                queued(&bk, key, deletion("d1"), &[&s1, &s2]),
                completed(&bk, key, "d1", &s1),
            ],
        )
        .await;
    }
    // Replicated at s1 only: not settled, kept however long.
    clock.advance(DELETED_KEY_TTL_MS + 1);
    store.expire().await.expect("expire");
    for key in ["gone", "unsettled", "rewritten"] {
        assert!(present(store.clone(), bk.clone(), key).await, "{key}");
    }
    // Settled at T.
    let t = clock.now_ms();
    apply(
        &*store,
        vec![
            completed(&bk, "gone", "d1", &s2),
            completed(&bk, "rewritten", "d1", &s2),
        ],
    )
    .await;
    clock.advance(1_000);
    // Written again before its TTL: kept.
    assert!(apply1(&*store, queued(&bk, "rewritten", version("v2", 5), &[&s1])).await);
    clock.set(t + DELETED_KEY_TTL_MS - 1);
    store.expire().await.expect("expire");
    assert!(present(store.clone(), bk.clone(), "gone").await, "not yet");
    clock.set(t + DELETED_KEY_TTL_MS + 1);
    assert!(store.expire().await.expect("expire") >= 1);
    assert!(!present(store.clone(), bk.clone(), "gone").await, "swept");
    assert!(present(store.clone(), bk.clone(), "unsettled").await);
    assert!(present(store.clone(), bk.clone(), "rewritten").await);
    assert_eq!(state(&*store, &bk, "rewritten").await.version_id, "v2");
    assert_eq!(store.pending(&s2).await.expect("pending"), (1, 0));
}

/// Names with a NUL byte or empty are refused before anything is written.
pub async fn names_are_checked(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let site = format!("{prefix}s");
    let bk = format!("{prefix}bk");
    let bad = [
        vec![
            queued(&bk, "k", version("v1", 1), &[&site]),
            queued(&bk, "k2", version("v1", 1), &["bad\0site"]),
        ],
        vec![queued("", "k", version("v1", 1), &[&site])],
        vec![completed(&bk, "k", "v1", "")],
        vec![StoreOp::PutCursor {
            name: "a\0b".into(),
            value: vec![],
        }],
    ];
    for ops in bad {
        assert!(matches!(
            store.apply(ops).await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert!(store.key_state(&bk, "k").await.expect("read").is_none());
    assert_eq!(store.pending(&site).await.expect("pending"), (0, 0));
    assert!(matches!(
        store.key_states("", "", None, 10).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.failed_count("a\0b").await,
        Err(StoreError::Invalid(_))
    ));
}
