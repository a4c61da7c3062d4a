//! Metrics routes (reference 1.6): backlog, completions, failures, throughput and pending per
//! site or for `all` (and ours, `lag`), and object progress and throughput, read from the state store's
//! counters (the site routes from its maintained totals, [`crate::store::SiteTotals`], the
//! numbers Prometheus exports too). Descriptions are the original's, verbatim. `failures` counts the failed set (the
//! original's definition, shared with Prometheus and `GET status`: see `api::monitoring`).
//!
//! Throughput over the 900 s window, from the four newest 5-minute buckets `r0` (current,
//! partial) to `r3`, with `d` the seconds elapsed in the current bucket:
//! `(r0 + r1 + r2 + (300 - d) / 300 * r3) / 900`, as a string with two decimals. The original's
//! "uptime" shortening is disabled upstream, so full windows are always used (reference 8).

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::routes::{MetricKind, Service};
use super::state::AppState;
use crate::model::VersionRef;
use crate::store::{Metric, ObjectMetric, METRICS_BUCKET_MS};

/// `backlog` description.
pub const DESC_BACKLOG: &str = "Number of incomplete replication operations (count) and number of incomplete bytes transferred (size)";
/// `completions` description (crr).
pub const DESC_COMPLETIONS: &str = "Number of completed replication operations (count) and number of bytes transferred (size) in the last 86400 seconds";
/// `completions` description (ingestion).
pub const DESC_COMPLETIONS_INGESTION: &str =
    "Number of completed ingestion operations (count) in the last 86400 seconds";
/// `failures` description.
pub const DESC_FAILURES: &str =
    "Number of failed replication operations (count) and bytes (size) in the last 86400 seconds";
/// `throughput` description (crr).
pub const DESC_THROUGHPUT: &str = "Current throughput for replication operations in ops/sec (count) and bytes/sec (size) in the last 900 seconds";
/// `throughput` description (ingestion).
pub const DESC_THROUGHPUT_INGESTION: &str =
    "Current throughput for ingestion operations in ops/sec (count) in the last 900 seconds";
/// `pending` description (crr).
pub const DESC_PENDING: &str = "Number of pending replication operations (count) and bytes (size)";
/// `pending` description (ingestion).
pub const DESC_PENDING_INGESTION: &str = "Number of pending ingestion operations (count)";
/// `lag` description (ours).
pub const DESC_LAG: &str = "Replication lag in seconds, from the version's write at the source to COMPLETED at the site, over the last 5 minutes (p50, p99; null when nothing completed), and the age in seconds of the oldest pending version (oldestPendingSeconds; null when nothing is pending); for all, the slowest site's";
/// Object progress description.
pub const DESC_OBJECT_PROGRESS: &str = "Number of bytes to be replicated (pending), number of bytes transferred to the destination (completed), and percentage of the object that has completed replication (progress)";
/// Object throughput description.
pub const DESC_OBJECT_THROUGHPUT: &str =
    "Current throughput for object replication in bytes/sec (throughput)";

/// JavaScript's `Number.prototype.toFixed(2)` for a non-negative finite number.
pub fn to_fixed2(x: f64) -> String {
    if !x.is_finite() || x <= 0.0 {
        return "0.00".to_string();
    }
    let cents = (x * 100.0).round();
    format!("{:.2}", cents / 100.0)
}

/// The throughput of buckets `r` (newest first) at `now_ms`, per second over 900 s.
pub fn throughput(r: &[u64], now_ms: u64) -> String {
    let get = |i: usize| r.get(i).copied().unwrap_or(0) as f64;
    let d = (now_ms % METRICS_BUCKET_MS) as f64 / 1000.0;
    let total = get(0) + get(1) + get(2) + ((300.0 - d) / 300.0) * get(3);
    to_fixed2(total / 900.0)
}

fn add_into(acc: &mut [u64; 4], b: &[u64; 4]) {
    for (a, x) in acc.iter_mut().zip(b) {
        *a = a.saturating_add(*x);
    }
}

fn entry(desc: &str, results: Value) -> Value {
    json!({"description": desc, "results": results})
}

/// The site-level metrics of `service` for `site` (`all` = every site).
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn site_metrics(
    state: &AppState,
    service: Service,
    kind: MetricKind,
    site: &str,
) -> Result<Value, ApiError> {
    let mut out = Map::new();
    if service == Service::Ingestion {
        // No ingestion sites exist here: the original with an empty site list answers zeros.
        let want = |k: MetricKind| kind == MetricKind::All || kind == k;
        if want(MetricKind::Completions) {
            out.insert(
                "completions".into(),
                entry(DESC_COMPLETIONS_INGESTION, json!({"count": 0})),
            );
        }
        if want(MetricKind::Throughput) {
            out.insert(
                "throughput".into(),
                entry(DESC_THROUGHPUT_INGESTION, json!({"count": "0.00"})),
            );
        }
        if want(MetricKind::Pending) {
            out.insert(
                "pending".into(),
                entry(DESC_PENDING_INGESTION, json!({"count": 0})),
            );
        }
        return Ok(Value::Object(out));
    }
    let sites: Vec<String> = if site == "all" {
        state.sites.clone()
    } else {
        vec![site.to_string()]
    };
    let store = &state.store;
    let want = |k: MetricKind| kind == MetricKind::All || kind == k;
    let (mut backlog, mut pending) = ((0i64, 0i64), (0i64, 0i64));
    let (mut ops_done, mut bytes_done) = ([0u64; 4], [0u64; 4]);
    let (mut count_done, mut size_done) = (0u64, 0u64);
    let mut failures = 0u64;
    for s in &sites {
        // The store's maintained totals: a few sums, not 288 buckets per metric (issue 17).
        let t = store.site_totals(s).await?;
        let (ops, bytes) = t.pending;
        pending = (
            pending.0.saturating_add(ops),
            pending.1.saturating_add(bytes),
        );
        backlog = (
            backlog.0.saturating_add(ops.max(0)),
            backlog.1.saturating_add(bytes.max(0)),
        );
        add_into(&mut ops_done, &t.recent[Metric::OpsDone.index()]);
        add_into(&mut bytes_done, &t.recent[Metric::BytesDone.index()]);
        count_done = count_done.saturating_add(t.sums[Metric::OpsDone.index()]);
        size_done = size_done.saturating_add(t.sums[Metric::BytesDone.index()]);
        failures = failures.saturating_add(t.failed);
    }
    let now = store.now_ms();
    if want(MetricKind::Backlog) {
        out.insert(
            "backlog".into(),
            entry(DESC_BACKLOG, json!({"count": backlog.0, "size": backlog.1})),
        );
    }
    if want(MetricKind::Completions) {
        out.insert(
            "completions".into(),
            entry(
                DESC_COMPLETIONS,
                json!({"count": count_done, "size": size_done}),
            ),
        );
    }
    if want(MetricKind::Failures) {
        out.insert(
            "failures".into(),
            entry(DESC_FAILURES, json!({"count": failures, "size": 0})),
        );
    }
    if want(MetricKind::Throughput) {
        out.insert(
            "throughput".into(),
            entry(
                DESC_THROUGHPUT,
                json!({"count": throughput(&ops_done, now), "size": throughput(&bytes_done, now)}),
            ),
        );
    }
    if want(MetricKind::Pending) {
        out.insert(
            "pending".into(),
            entry(DESC_PENDING, json!({"count": pending.0, "size": pending.1})),
        );
    }
    if want(MetricKind::Lag) {
        // The observer's figures (since this process started), the slowest site's for `all`.
        let (mut p50, mut p99, mut oldest): (Option<f64>, Option<f64>, Option<u64>) =
            (None, None, None);
        let worst = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        for s in &sites {
            let view = state.observer.view(s).unwrap_or_default();
            p50 = worst(p50, view.lag_p50_s);
            p99 = worst(p99, view.lag_p99_s);
            oldest = match (oldest, view.oldest_pending_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
        let oldest_s = oldest.map(|t| round3(now.saturating_sub(t) as f64 / 1000.0));
        out.insert(
            "lag".into(),
            entry(
                DESC_LAG,
                json!({"p50": p50.map(round3), "p99": p99.map(round3), "oldestPendingSeconds": oldest_s}),
            ),
        );
    }
    Ok(Value::Object(out))
}

/// Object progress (`progress = true`) or throughput of `version` at `site`.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn object_metrics(
    state: &AppState,
    site: &str,
    version: &VersionRef,
    progress: bool,
) -> Result<Value, ApiError> {
    let store = &state.store;
    let done = store
        .object_metric_buckets(site, version, ObjectMetric::BytesDone)
        .await?;
    if !progress {
        return Ok(json!({
            "description": DESC_OBJECT_THROUGHPUT,
            "throughput": throughput(&done, store.now_ms()),
        }));
    }
    let total: u64 = store
        .object_metric_buckets(site, version, ObjectMetric::Bytes)
        .await?
        .iter()
        .sum();
    let done: u64 = done.iter().sum();
    let pct = if total == 0 {
        0
    } else {
        ((done as f64 / total as f64) * 100.0).round() as i64
    };
    Ok(json!({
        "description": DESC_OBJECT_PROGRESS,
        "pending": (total.min(i64::MAX as u64) as i64).saturating_sub(done.min(i64::MAX as u64) as i64),
        "completed": done,
        "progress": format!("{pct}%"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_matches_the_reference_fixture() {
        assert_eq!(throughput(&[450], 0), "0.50");
        assert_eq!(throughput(&[1027], 0), "1.14");
        assert_eq!(throughput(&[750], 0), "0.83");
        assert_eq!(throughput(&[2901], 0), "3.22");
        // Half of the oldest bucket counts when half of the current one has elapsed.
        assert_eq!(throughput(&[0, 0, 0, 900], 150_000), "0.50");
        assert_eq!(to_fixed2(0.125), "0.13");
        assert_eq!(to_fixed2(0.0), "0.00");
    }
}
