//! Process-wide counters: what this process did since it started (Prometheus `_total`
//! counters), kept in memory and reset at restart. The durable, windowed numbers (pending,
//! completions and failures over 24 h) live in the state store; these are the ones only the
//! process doing the work can count: retried attempts, replays, versions not copied, log
//! records that did not decode, what garbage collection freed.
//!
//! Writers are the pipeline stages; the API's Prometheus exposition reads them.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use parking_lot::Mutex;

/// Per-site counters of the replication processors.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SiteCounters {
    /// Attempts retried after a transient error (within one entry's retry loop).
    pub retries: u64,
    /// Entries re-queued whole for a replay.
    pub replays: u64,
    /// Copy attempts that failed, each (the first of an outage included).
    pub attempt_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sites: BTreeMap<String, SiteCounters>,
    /// Records that did not decode, by topic.
    undecodable: BTreeMap<String, u64>,
    /// What garbage collection did.
    gc: GcCounters,
    /// Outages of the state store and the log.
    outages: OutageCounters,
    /// Consumer positions found below a partition's earliest record, by topic.
    offset_out_of_range: BTreeMap<String, u64>,
}

/// Outages of the state store and the log (issue 14): each call retried after a transient
/// error, and whether the dependency is unreachable right now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutageCounters {
    /// State store calls retried after a transient error.
    pub store_retries: u64,
    /// Whether the state store is unreachable now (a call is waiting to retry).
    pub store_unavailable: bool,
    /// Log calls (connection at start, consumer or producer) retried after a transient error.
    pub log_retries: u64,
    /// Whether the log is unreachable now.
    pub log_unavailable: bool,
}

/// What garbage collection did (DESIGN section 9).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcCounters {
    /// Replicated files deleted from a transient source.
    pub deleted: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Multipart uploads (and temporary files) no copy owned, aborted or removed at sites.
    pub orphans: u64,
}

fn counters() -> &'static Mutex<Counters> {
    static C: OnceLock<Mutex<Counters>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(Counters::default()))
}

fn site_mut(site: &str, change: impl FnOnce(&mut SiteCounters)) {
    let mut c = counters().lock();
    match c.sites.get_mut(site) {
        Some(s) => change(s),
        None => change(c.sites.entry(site.to_string()).or_default()),
    }
}

/// Counts one retried attempt at `site`.
pub fn count_retry(site: &str) {
    site_mut(site, |c| c.retries += 1);
}

/// Counts one failed copy attempt at `site`.
pub fn count_attempt_failure(site: &str) {
    site_mut(site, |c| c.attempt_failures += 1);
}

/// Counts one replay entry queued for `site`.
pub fn count_replay(site: &str) {
    site_mut(site, |c| c.replays += 1);
}

/// The counters of `site`.
pub fn site_counters(site: &str) -> SiteCounters {
    counters()
        .lock()
        .sites
        .get(site)
        .copied()
        .unwrap_or_default()
}

/// Counts one record of `topic` that did not decode.
pub fn count_undecodable(topic: &str) {
    let mut c = counters().lock();
    match c.undecodable.get_mut(topic) {
        Some(n) => *n += 1,
        None => {
            c.undecodable.insert(topic.to_string(), 1);
        }
    }
}

/// Counts a file of `bytes` deleted from a transient source.
pub fn count_gc_deleted(bytes: u64) {
    let mut c = counters().lock();
    c.gc.deleted += 1;
    c.gc.bytes_freed += bytes;
}

/// Counts orphans (uploads, temporary files) cleaned up at a site.
pub fn count_gc_orphans(n: u64) {
    counters().lock().gc.orphans += n;
}

/// What garbage collection did so far.
pub fn gc_counters() -> GcCounters {
    counters().lock().gc
}

/// Counts one state store call retried after a transient error.
pub fn count_store_retry() {
    counters().lock().outages.store_retries += 1;
}

/// Records whether the state store is unreachable now.
pub fn set_store_unavailable(down: bool) {
    counters().lock().outages.store_unavailable = down;
}

/// Counts one log call retried after a transient error.
pub fn count_log_retry() {
    counters().lock().outages.log_retries += 1;
}

/// Records whether the log is unreachable now.
pub fn set_log_unavailable(down: bool) {
    counters().lock().outages.log_unavailable = down;
}

/// Outage counters so far.
pub fn outage_counters() -> OutageCounters {
    counters().lock().outages
}

/// Counts one consumer position of `topic` found below its partition's earliest record
/// (records lost to retention before the group read them).
pub fn count_offset_out_of_range(topic: &str) {
    let mut c = counters().lock();
    match c.offset_out_of_range.get_mut(topic) {
        Some(n) => *n += 1,
        None => {
            c.offset_out_of_range.insert(topic.to_string(), 1);
        }
    }
}

/// Positions found out of range so far, by topic.
pub fn offset_out_of_range() -> BTreeMap<String, u64> {
    counters().lock().offset_out_of_range.clone()
}

/// Undecodable records so far, by topic.
pub fn undecodable() -> BTreeMap<String, u64> {
    counters().lock().undecodable.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_per_site() {
        count_retry("metrics-test-a");
        count_retry("metrics-test-a");
        count_replay("metrics-test-a");
        count_attempt_failure("metrics-test-a");
        assert_eq!(
            site_counters("metrics-test-a"),
            SiteCounters {
                retries: 2,
                replays: 1,
                attempt_failures: 1,
            }
        );
        assert_eq!(site_counters("metrics-test-b"), SiteCounters::default());
    }

    #[test]
    fn undecodable_records_are_counted_by_topic() {
        count_undecodable("metrics-test-topic");
        count_undecodable("metrics-test-topic");
        assert_eq!(undecodable().get("metrics-test-topic"), Some(&2));
    }
}
