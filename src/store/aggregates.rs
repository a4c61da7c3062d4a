//! The sled store's maintained aggregates (issue 17): per site, the pending counters, the
//! failed set's hourly counts and a version that changes with the set's content, and the
//! 5-minute metric buckets, kept in memory beside the `state` tree. They are read from the tree
//! once when the store opens, then moved by the deltas of each committed transaction, so the
//! metric routes (REST and Prometheus alike, hence the same numbers) read a few sums instead
//! of ranges of the tree on every request.
//!
//! Deltas, not values, are applied: two transactions that commit in one order may report in the
//! other, and additions commute. A site's totals are computed once per change (or per 5-minute
//! bucket or failed-set hour, when the windows slide) and cached; entries that left the
//! windows are dropped as they are read, so memory stays at 288 buckets per metric and 24
//! hours per site.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{
    failed_window_start, metrics_bucket, Metric, SiteTotals, StoreError, METRICS_BUCKETS,
    METRICS_BUCKET_MS,
};

/// Failed-set versions are drawn from one process-wide sequence, so a version names one
/// content of one store's set, whatever the store (a cache keyed by it never confuses two).
static NEXT_FAILED_VERSION: AtomicU64 = AtomicU64::new(1);

fn next_failed_version() -> u64 {
    NEXT_FAILED_VERSION.fetch_add(1, Ordering::Relaxed)
}

/// One change a transaction made to what the aggregates hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delta {
    /// The pending counters of a site moved.
    Pending { site: String, ops: i64, bytes: i64 },
    /// The entry count of a failed-set hour moved.
    Hour { site: String, hour: u64, delta: i64 },
    /// A 5-minute metric bucket grew (or shrank).
    Metric {
        site: String,
        metric: Metric,
        bucket: u64,
        delta: i64,
    },
    /// The content of a site's failed set changed (an entry added, moved or removed).
    Failed { site: String },
}

#[derive(Debug)]
struct SiteAgg {
    pending: (i64, i64),
    hours: BTreeMap<u64, u64>,
    metrics: [BTreeMap<u64, u64>; 6],
    failed_version: u64,
    /// The totals at `(metrics bucket, failed window start)`, until the next change.
    cached: Option<(u64, u64, SiteTotals)>,
}

impl Default for SiteAgg {
    fn default() -> Self {
        SiteAgg {
            pending: (0, 0),
            hours: BTreeMap::new(),
            metrics: Default::default(),
            failed_version: next_failed_version(),
            cached: None,
        }
    }
}

fn add_signed(v: &mut u64, delta: i64) {
    *v = if delta >= 0 {
        v.saturating_add(delta as u64)
    } else {
        v.saturating_sub(delta.unsigned_abs())
    };
}

/// Adds `delta` to the count under `key`, dropping it at 0 (as the tree does).
fn add_count(map: &mut BTreeMap<u64, u64>, key: u64, delta: i64) {
    let v = map.entry(key).or_insert(0);
    add_signed(v, delta);
    if *v == 0 {
        map.remove(&key);
    }
}

/// The aggregates of every site of one store.
#[derive(Debug, Default)]
pub struct Aggregates {
    sites: Mutex<HashMap<String, SiteAgg>>,
}

impl Aggregates {
    /// Reads the pending counters (`P`), failed-set hours (`H`) and metric buckets (`M`) of
    /// every site from the `state` tree.
    ///
    /// # Errors
    /// A storage error of the tree.
    pub(crate) fn load(tree: &sled::Tree) -> Result<Aggregates, StoreError> {
        let mut sites: HashMap<String, SiteAgg> = HashMap::new();
        let site_of = |k: &[u8], tail: usize| -> Option<String> {
            let end = k.len().checked_sub(tail)?;
            let name = k.get(1..end)?;
            (k.get(end) == Some(&0)).then(|| String::from_utf8_lossy(name).into_owned())
        };
        let be = |v: &[u8]| v.try_into().map(u64::from_be_bytes).unwrap_or(0);
        for item in tree.scan_prefix(b"P") {
            let (k, v) = item?;
            let Some(site) = site_of(&k, 2) else { continue };
            let value = be(&v) as i64;
            let agg = sites.entry(site).or_default();
            match k.last() {
                Some(b'o') => agg.pending.0 = value,
                Some(b'b') => agg.pending.1 = value,
                _ => {}
            }
        }
        for item in tree.scan_prefix(b"H") {
            let (k, v) = item?;
            let Some(site) = site_of(&k, 9) else { continue };
            let hour = be(&k[k.len() - 8..]);
            sites.entry(site).or_default().hours.insert(hour, be(&v));
        }
        for item in tree.scan_prefix(b"M") {
            let (k, v) = item?;
            let Some(site) = site_of(&k, 10) else {
                continue;
            };
            let code = k[k.len() - 9];
            let Some(metric) = Metric::ALL.iter().find(|m| m.code() == code) else {
                continue;
            };
            let bucket = be(&k[k.len() - 8..]);
            sites.entry(site).or_default().metrics[metric.index()].insert(bucket, be(&v));
        }
        Ok(Aggregates {
            sites: Mutex::new(sites),
        })
    }

    /// Applies the deltas of one committed transaction.
    pub(crate) fn apply(&self, deltas: Vec<Delta>) {
        if deltas.is_empty() {
            return;
        }
        let mut sites = self.sites.lock();
        for d in deltas {
            match d {
                Delta::Pending { site, ops, bytes } => {
                    let a = sites.entry(site).or_default();
                    a.pending = (
                        a.pending.0.saturating_add(ops),
                        a.pending.1.saturating_add(bytes),
                    );
                    a.cached = None;
                }
                Delta::Hour { site, hour, delta } => {
                    let a = sites.entry(site).or_default();
                    add_count(&mut a.hours, hour, delta);
                    a.cached = None;
                }
                Delta::Metric {
                    site,
                    metric,
                    bucket,
                    delta,
                } => {
                    let a = sites.entry(site).or_default();
                    add_count(&mut a.metrics[metric.index()], bucket, delta);
                    a.cached = None;
                }
                Delta::Failed { site } => {
                    let a = sites.entry(site).or_default();
                    a.failed_version = next_failed_version();
                    a.cached = None;
                }
            }
        }
    }

    /// `site`'s totals at `now_ms` (see [`SiteTotals`]).
    pub(crate) fn totals(&self, site: &str, now_ms: u64) -> SiteTotals {
        let current = metrics_bucket(now_ms);
        let window = failed_window_start(now_ms);
        let mut sites = self.sites.lock();
        // A site never written to has nothing to count; it is not remembered either (any name
        // can be asked for), so its failed set has no version until its first change.
        let Some(a) = sites.get_mut(site) else {
            return SiteTotals::default();
        };
        if let Some((b, w, t)) = &a.cached {
            if *b == current && *w == window {
                return t.clone();
            }
        }
        let oldest = current.saturating_sub((METRICS_BUCKETS as u64 - 1) * METRICS_BUCKET_MS);
        // What left the windows will never count again.
        a.hours = a.hours.split_off(&window);
        let mut t = SiteTotals {
            pending: a.pending,
            failed: a.hours.values().fold(0u64, |s, v| s.saturating_add(*v)),
            failed_version: Some(a.failed_version),
            ..SiteTotals::default()
        };
        for (i, m) in a.metrics.iter_mut().enumerate() {
            *m = m.split_off(&oldest);
            t.sums[i] = m
                .range(..=current)
                .fold(0u64, |s, (_, v)| s.saturating_add(*v));
            for (j, slot) in t.recent[i].iter_mut().enumerate() {
                *slot = current
                    .checked_sub(j as u64 * METRICS_BUCKET_MS)
                    .and_then(|b| m.get(&b).copied())
                    .unwrap_or(0);
            }
        }
        a.cached = Some((current, window, t.clone()));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FAILED_BUCKET_MS;

    const NOW: u64 = 1_700_000_000_000;

    fn metric(site: &str, metric: Metric, at: u64, delta: i64) -> Delta {
        Delta::Metric {
            site: site.into(),
            metric,
            bucket: metrics_bucket(at),
            delta,
        }
    }

    #[test]
    fn deltas_sum_within_the_windows_and_commute() {
        let a = Aggregates::default();
        let b = Aggregates::default();
        let deltas = vec![
            Delta::Pending {
                site: "s".into(),
                ops: 3,
                bytes: 30,
            },
            Delta::Pending {
                site: "s".into(),
                ops: -1,
                bytes: -10,
            },
            metric("s", Metric::OpsDone, NOW, 5),
            metric("s", Metric::OpsDone, NOW - 3 * METRICS_BUCKET_MS, 7),
            // Older than 24 h: never counted.
            metric("s", Metric::OpsDone, NOW - 288 * METRICS_BUCKET_MS, 100),
            Delta::Hour {
                site: "s".into(),
                hour: NOW - NOW % FAILED_BUCKET_MS,
                delta: 2,
            },
            // Outside the failed window.
            Delta::Hour {
                site: "s".into(),
                hour: NOW - NOW % FAILED_BUCKET_MS - 24 * FAILED_BUCKET_MS,
                delta: 9,
            },
        ];
        for d in &deltas {
            a.apply(vec![d.clone()]);
        }
        for d in deltas.iter().rev() {
            b.apply(vec![d.clone()]);
        }
        let (ta, tb) = (a.totals("s", NOW), b.totals("s", NOW));
        assert_eq!(ta.pending, (2, 20));
        assert_eq!(ta.failed, 2);
        assert_eq!(ta.sums[Metric::OpsDone.index()], 12);
        assert_eq!(ta.recent[Metric::OpsDone.index()], [5, 0, 0, 7]);
        assert_eq!(
            (ta.pending, ta.failed, ta.sums, ta.recent),
            (tb.pending, tb.failed, tb.sums, tb.recent)
        );
    }

    #[test]
    fn a_change_of_the_failed_set_gives_a_new_version_and_fresh_totals() {
        let a = Aggregates::default();
        assert_eq!(a.totals("s", NOW).failed_version, None, "never written");
        a.apply(vec![Delta::Failed { site: "s".into() }]);
        let v1 = a.totals("s", NOW).failed_version;
        assert!(v1.is_some());
        assert_eq!(a.totals("s", NOW).failed_version, v1, "cached");
        a.apply(vec![Delta::Failed { site: "s".into() }]);
        let v2 = a.totals("s", NOW).failed_version;
        assert_ne!(v1, v2);
        // Another store never reuses a version.
        let other = Aggregates::default();
        other.apply(vec![Delta::Failed { site: "s".into() }]);
        assert_ne!(other.totals("s", NOW).failed_version, v2);
        // The windows slide with the clock: a bucket 5 minutes older drops out of `recent`.
        a.apply(vec![metric("s", Metric::Ops, NOW, 1)]);
        assert_eq!(a.totals("s", NOW).recent[Metric::Ops.index()][0], 1);
        let later = NOW + 4 * METRICS_BUCKET_MS;
        assert_eq!(a.totals("s", later).recent[Metric::Ops.index()], [0; 4]);
        assert_eq!(a.totals("s", later).sums[Metric::Ops.index()], 1);
    }
}
