//! Whole-entry replays (reference 3.7) and the in-process retry counters.
//!
//! When the retries of one copy are spent on a transient error, the processor does not hold
//! the entry: it appends a *replay entry* to `backbeat-replication` and finishes the original
//! one. The replay entry is the entry narrowed to the site (`storageClass` = the site, one
//! backend, PENDING), with `replayCount` set, so only that site's processor takes it (the
//! others skip it as not theirs) and it waits in the log, not in a concurrency slot, behind
//! the site's other work. Counting as the original: the first failure sets the count to
//! `replay - 1`, each later failure decrements it, and a failure at count 0 is FAILED. With
//! `replay = 0` the first failure is FAILED.
//!
//! The replay entry is appended before the original's offset is committed: a crash in
//! between replays the original again, which at worst appends a second replay entry; the
//! status processor's guard (site still PENDING) keeps the outcome counted once.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::entry::{ObjectMd, QueueEntry};
use crate::log::Record;
use crate::model::{ReplicationStatus, SiteState, VersionRef};

/// The `replayCount` a replay entry of an entry carrying `current` gets, or `None` when the
/// replays are spent (the entry is FAILED). `total` is `[replication.retry] replay`.
pub fn next_replay(current: Option<u32>, total: u32) -> Option<u32> {
    let left = current.map_or(total, |n| n.min(total));
    left.checked_sub(1)
}

/// The replay entry of `version` for `site`, with `replay_count`.
pub fn replay_record(
    version: &VersionRef,
    md: &ObjectMd,
    kind: &str,
    site: &str,
    replay_count: u32,
) -> Record {
    let mut md = md.clone();
    let dsv = md
        .replication_info
        .backends
        .iter()
        .find(|b| b.site == site)
        .map(|b| b.data_store_version_id.clone())
        .unwrap_or_default();
    md.replication_info.backends = vec![SiteState {
        site: site.to_string(),
        status: ReplicationStatus::Pending,
        data_store_version_id: dsv,
    }];
    md.replication_info.storage_class = site.to_string();
    md.replication_info.status = ReplicationStatus::Pending.as_str().to_string();
    let mut e = QueueEntry::new(version, &md);
    e.kind = kind.to_string();
    e.site = Some(site.to_string());
    e.replay_count = Some(replay_count);
    Record::new(e.log_key(), e.encode())
}

/// Per-site counters kept in process memory (reset at restart), for Prometheus.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SiteCounters {
    /// Attempts retried after a transient error (within one entry's retry loop).
    pub retries: u64,
    /// Entries re-queued whole for a replay.
    pub replays: u64,
    /// Versions not copied because they were gone or changed at the source.
    pub skipped: u64,
}

fn counters() -> &'static Mutex<BTreeMap<String, SiteCounters>> {
    static C: OnceLock<Mutex<BTreeMap<String, SiteCounters>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Counts one retried attempt at `site`.
pub fn count_retry(site: &str) {
    counters()
        .lock()
        .entry(site.to_string())
        .or_default()
        .retries += 1;
}

/// Counts one replay entry queued for `site`.
pub fn count_replay(site: &str) {
    counters()
        .lock()
        .entry(site.to_string())
        .or_default()
        .replays += 1;
}

/// Counts one version skipped at `site` (gone or changed at the source).
pub fn count_skip(site: &str) {
    counters()
        .lock()
        .entry(site.to_string())
        .or_default()
        .skipped += 1;
}

/// The counters of `site`.
pub fn site_counters(site: &str) -> SiteCounters {
    counters().lock().get(site).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_counts_down_then_fails() {
        assert_eq!(next_replay(None, 0), None);
        assert_eq!(next_replay(None, 2), Some(1));
        assert_eq!(next_replay(Some(1), 2), Some(0));
        assert_eq!(next_replay(Some(0), 2), None);
        // The configuration shrank since the entry was queued.
        assert_eq!(next_replay(Some(7), 2), Some(1));
    }

    #[test]
    fn replay_entries_are_narrowed_to_the_site() {
        let v = VersionRef::new("b", "k", "v1");
        let mut md = ObjectMd {
            version_id: Some("v1".into()),
            ..ObjectMd::default()
        };
        md.replication_info.storage_class = "a,b".into();
        md.replication_info.backends = vec![
            SiteState {
                site: "a".into(),
                status: ReplicationStatus::Pending,
                data_store_version_id: String::new(),
            },
            SiteState {
                site: "b".into(),
                status: ReplicationStatus::Completed,
                data_store_version_id: "x".into(),
            },
        ];
        let r = replay_record(&v, &md, "put", "a", 3);
        let e = QueueEntry::decode(&r.value).expect("decodes");
        assert_eq!(e.replay_count, Some(3));
        let md = e.metadata().expect("metadata");
        assert_eq!(md.sites(), vec!["a".to_string()]);
        assert_eq!(md.replication_info.backends.len(), 1);
        assert_eq!(e.version().expect("version"), v);
    }

    #[test]
    fn counters_are_per_site() {
        count_retry("replay-test-a");
        count_retry("replay-test-a");
        count_replay("replay-test-a");
        count_skip("replay-test-a");
        assert_eq!(
            site_counters("replay-test-a"),
            SiteCounters {
                retries: 2,
                replays: 1,
                skipped: 1,
            }
        );
        assert_eq!(site_counters("replay-test-b"), SiteCounters::default());
    }
}
