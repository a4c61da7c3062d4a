//! The `StateStore` contract. Each check takes an opener (a function that opens the store
//! under test on a given clock, again after the previous handle was dropped) and a prefix that
//! keeps its site names apart from other checks sharing the same backend.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use backbeat::clock::ManualClock;
use backbeat::model::{ReplicationInfo, ReplicationStatus, VersionRef};
use backbeat::store::{
    failed_bucket, metrics_bucket, Guard, Metric, ObjectMetric, PauseState, StateStore, StoreOp,
    FAILED_BUCKET_MS, FAILED_PAGE, METRICS_BUCKETS, METRICS_BUCKET_MS,
};

/// Opens the store under test on `clock`.
pub type Opener = Box<
    dyn Fn(Arc<ManualClock>) -> Pin<Box<dyn Future<Output = Arc<dyn StateStore>> + Send>>
        + Send
        + Sync,
>;

/// A fixed "now": 2026-11-26 10:40:30.250 UTC, 40 minutes into its hour.
pub const NOW: u64 = 1_795_689_630_250;

fn v(i: usize) -> VersionRef {
    VersionRef::new("bucket", format!("key:{i}/with:colons"), format!("v{i}"))
}

async fn add_failed(store: &dyn StateStore, site: &str, items: &[(VersionRef, u64)]) {
    for chunk in items.chunks(500) {
        let ops = chunk
            .iter()
            .map(|(version, score)| StoreOp::AddFailed {
                site: site.to_string(),
                version: version.clone(),
                score_ms: *score,
            })
            .collect();
        assert!(store.apply(vec![], ops).await.expect("apply"));
    }
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

/// 10,000 failures in one hour page out exactly, 100 at a time, newest first.
pub async fn failed_paging_one_hour(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let site = format!("{prefix}site1");
    let hour = failed_bucket(NOW);
    // Scores inside the current hour, some equal on purpose (the store keeps them unique).
    let items: Vec<(VersionRef, u64)> = (0..10_000)
        .map(|i| (v(i), hour + (i as u64 % 5000) * 400))
        .collect();
    add_failed(&*store, &site, &items).await;
    assert_eq!(store.failed_count(&site).await.expect("count"), 10_000);
    let all = list_all(&*store, &site).await;
    assert_eq!(all.len(), 10_000);
    let expected: HashSet<VersionRef> = items.into_iter().map(|(v, _)| v).collect();
    let got: HashSet<VersionRef> = all.into_iter().map(|(v, _)| v).collect();
    assert_eq!(got, expected);
}

/// 24 hours of 750 failures each page out exactly; the 25th hour back is not listed.
pub async fn failed_paging_24_hours(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let site = format!("{prefix}site24");
    let hour = failed_bucket(NOW);
    let mut items = Vec::new();
    for h in 0..24u64 {
        for j in 0..750u64 {
            let i = (h * 750 + j) as usize;
            items.push((v(i), hour - h * FAILED_BUCKET_MS + j * 1000));
        }
    }
    add_failed(&*store, &site, &items).await;
    // An entry of 24 hours ago is outside the window.
    add_failed(
        &*store,
        &site,
        &[(v(999_999), hour - 24 * FAILED_BUCKET_MS + 5)],
    )
    .await;
    assert_eq!(store.failed_count(&site).await.expect("count"), 18_000);
    let all = list_all(&*store, &site).await;
    assert_eq!(all.len(), 18_000);
    assert!(!all.iter().any(|(v, _)| v.version_id == "v999999"));
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
        .failed_entry(&site, &v(0))
        .await
        .expect("entry")
        .is_none());
    assert!(store.expire().await.expect("expire") >= 18_000);
}

/// One entry per (site, version): adding again moves it; removing deletes it; a member of
/// another site is independent.
pub async fn failed_set_membership(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let a = format!("{prefix}a");
    let b = format!("{prefix}b");
    add_failed(&*store, &a, &[(v(1), NOW - 10_000)]).await;
    add_failed(&*store, &a, &[(v(1), NOW - 5_000)]).await;
    add_failed(&*store, &b, &[(v(1), NOW - 5_000)]).await;
    assert_eq!(store.failed_count(&a).await.expect("count"), 1);
    let e = store
        .failed_entry(&a, &v(1))
        .await
        .expect("entry")
        .expect("present");
    assert_eq!(e.score_ms, NOW - 5_000);
    assert!(store
        .apply(
            vec![],
            vec![StoreOp::RemoveFailed {
                site: a.clone(),
                version: v(1)
            }]
        )
        .await
        .expect("remove"));
    assert!(store
        .failed_entry(&a, &v(1))
        .await
        .expect("entry")
        .is_none());
    assert_eq!(store.failed_count(&a).await.expect("count"), 0);
    assert_eq!(store.failed_count(&b).await.expect("count"), 1);
}

/// Guards make an update all-or-nothing; COMPLETED is final; the merge follows the design.
pub async fn guarded_updates(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let s1 = format!("{prefix}s1");
    let s2 = format!("{prefix}s2");
    let ver = VersionRef::new(format!("{prefix}bk"), "a/b c:d", "v1");
    let mut info = ReplicationInfo::pending(&[s1.clone(), s2.clone()]);
    info.size = 1234;
    let create = |info: ReplicationInfo| {
        vec![
            StoreOp::PutReplication {
                version: ver.clone(),
                info,
            },
            StoreOp::AddPending {
                site: s1.clone(),
                ops: 1,
                bytes: 1234,
            },
            StoreOp::AddPending {
                site: s2.clone(),
                ops: 1,
                bytes: 1234,
            },
        ]
    };
    assert!(store
        .apply(vec![Guard::Absent(ver.clone())], create(info.clone()))
        .await
        .expect("create"));
    assert!(!store
        .apply(vec![Guard::Absent(ver.clone())], create(info.clone()))
        .await
        .expect("again"));
    assert_eq!(
        store.pending(&s1).await.expect("pending"),
        (1, 1234),
        "a failed guard changes nothing"
    );
    let complete = |site: &str| {
        (
            vec![Guard::SiteStatus {
                version: ver.clone(),
                site: site.to_string(),
                any_of: vec![ReplicationStatus::Pending],
            }],
            vec![
                StoreOp::SetSiteStatus {
                    version: ver.clone(),
                    site: site.to_string(),
                    status: ReplicationStatus::Completed,
                    data_store_version_id: Some("dv1".into()),
                },
                StoreOp::AddPending {
                    site: site.to_string(),
                    ops: -1,
                    bytes: -1234,
                },
                StoreOp::AddMetric {
                    site: site.to_string(),
                    metric: Metric::OpsDone,
                    value: 1,
                    at_ms: NOW,
                },
            ],
        )
    };
    let (g, o) = complete(&s1);
    assert!(store.apply(g, o).await.expect("complete"));
    let (g, o) = complete(&s1);
    assert!(
        !store.apply(g, o).await.expect("replayed"),
        "a replayed outcome is not applied twice"
    );
    assert_eq!(store.pending(&s1).await.expect("pending"), (0, 0));
    assert_eq!(
        store
            .metric_buckets(&s1, Metric::OpsDone)
            .await
            .expect("buckets")[0],
        1
    );
    let got = store
        .replication(&ver)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(got.status, Some(ReplicationStatus::Processing));
    assert_eq!(
        got.site(&s1).map(|s| s.data_store_version_id.as_str()),
        Some("dv1")
    );
    // A late FAILED never overwrites COMPLETED, even unguarded.
    assert!(store
        .apply(
            vec![],
            vec![StoreOp::SetSiteStatus {
                version: ver.clone(),
                site: s1.clone(),
                status: ReplicationStatus::Failed,
                data_store_version_id: None,
            }]
        )
        .await
        .expect("late failed"));
    let got = store
        .replication(&ver)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(
        got.site(&s1).map(|s| s.status),
        Some(ReplicationStatus::Completed)
    );
    // s2 fails: global FAILED; a retry moves it back to PENDING -> PROCESSING.
    assert!(store
        .apply(
            vec![],
            vec![StoreOp::SetSiteStatus {
                version: ver.clone(),
                site: s2.clone(),
                status: ReplicationStatus::Failed,
                data_store_version_id: None,
            }]
        )
        .await
        .expect("fail"));
    assert_eq!(
        store
            .replication(&ver)
            .await
            .expect("read")
            .expect("present")
            .status,
        Some(ReplicationStatus::Failed)
    );
    assert!(store
        .apply(
            vec![Guard::SiteStatus {
                version: ver.clone(),
                site: s2.clone(),
                any_of: vec![ReplicationStatus::Failed]
            }],
            vec![StoreOp::SetSiteStatus {
                version: ver.clone(),
                site: s2.clone(),
                status: ReplicationStatus::Pending,
                data_store_version_id: None,
            }]
        )
        .await
        .expect("retry"));
    assert_eq!(
        store
            .replication(&ver)
            .await
            .expect("read")
            .expect("present")
            .status,
        Some(ReplicationStatus::Processing)
    );
    // Guards on unknown versions or sites fail.
    assert!(!store
        .apply(
            vec![Guard::Present(VersionRef::new("nope", "nope", "nope"))],
            vec![StoreOp::AddPending {
                site: s1.clone(),
                ops: 5,
                bytes: 5
            }]
        )
        .await
        .expect("absent"));
    assert_eq!(store.pending(&s1).await.expect("pending"), (0, 0));
}

/// Metrics land in 5-minute buckets, newest first, kept 24 hours; pending counters may go
/// negative and never expire.
pub async fn metrics_buckets(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let store = open(clock.clone()).await;
    let site = format!("{prefix}m");
    let ops = vec![
        StoreOp::AddMetric {
            site: site.clone(),
            metric: Metric::OpsDone,
            value: 3,
            at_ms: NOW,
        },
        StoreOp::AddMetric {
            site: site.clone(),
            metric: Metric::OpsDone,
            value: 4,
            at_ms: NOW - METRICS_BUCKET_MS,
        },
        StoreOp::AddMetric {
            site: site.clone(),
            metric: Metric::OpsDone,
            value: 5,
            at_ms: NOW - 287 * METRICS_BUCKET_MS,
        },
        StoreOp::AddMetric {
            site: site.clone(),
            metric: Metric::OpsDone,
            value: 6,
            at_ms: NOW - 288 * METRICS_BUCKET_MS,
        },
        StoreOp::AddMetric {
            site: site.clone(),
            metric: Metric::BytesDone,
            value: 100,
            at_ms: NOW,
        },
        StoreOp::AddObjectMetric {
            site: site.clone(),
            version: v(1),
            metric: ObjectMetric::BytesDone,
            value: 50,
            at_ms: NOW,
        },
        StoreOp::AddPending {
            site: site.clone(),
            ops: -2,
            bytes: -10,
        },
    ];
    assert!(store.apply(vec![], ops).await.expect("apply"));
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
    assert_eq!(
        store
            .metric_buckets(&site, Metric::BytesDone)
            .await
            .expect("bytes")[0],
        100
    );
    let ob = store
        .object_metric_buckets(&site, &v(1), ObjectMetric::BytesDone)
        .await
        .expect("object");
    assert_eq!(ob[0], 50);
    assert_eq!(store.pending(&site).await.expect("pending"), (-2, -10));
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
    store.expire().await.expect("expire");
    assert_eq!(
        store.pending(&site).await.expect("pending"),
        (-2, -10),
        "pending counters never expire"
    );
}

/// Pause state, a scheduled resume and cursors survive a reopen; locks expire after their TTL.
pub async fn durable_state_and_locks(open: &Opener, prefix: &str) {
    let clock = ManualClock::new(NOW);
    let site = format!("{prefix}p");
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
        assert!(store
            .apply(
                vec![],
                vec![StoreOp::PutCursor {
                    name: cursor.clone(),
                    value: b"key-marker\0v".to_vec()
                }]
            )
            .await
            .expect("cursor"));
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
    }
    let store = open(clock.clone()).await;
    assert_eq!(
        store.pause_state("crr", &site).await.expect("read"),
        Some(PauseState {
            paused: true,
            scheduled_resume_ms: Some(NOW + 3_600_000)
        })
    );
    assert_eq!(
        store.cursor(&cursor).await.expect("cursor"),
        Some(b"key-marker\0v".to_vec())
    );
    assert!(store.check().is_ok());
}
