//! `GET status` and `GET status/history`: the operator's view (DESIGN section 6), each site's
//! state and numbers, from three sources read once per request:
//! - the state store: `backlog` (the pending counters, negatives clamped to 0 as the
//!   original's backlog), `completions24h` (the OpsDone buckets of 24 h), `failures24h` (the
//!   failed set, the definition `metrics/crr/<site>` and Prometheus share, see
//!   `api::monitoring`) and `throughput900s` (the original's 900 s formula, as numbers);
//! - [`Control`](crate::control::Control): whether the site is paused;
//! - the [`Observer`](crate::observe::Observer): `state`, `oldestPendingSeconds`, `lag`
//!   (p50/p99 over 5 minutes, seconds), `throughput` (the last 60 s), `failuresByReason` (the
//!   FAILED outcomes of the last 24 h by reason, counted by this process) and `lastError`.
//!
//! `etaSeconds` is the backlog divided by the 60 s rate (the 900 s rate when nothing completed
//! in the last minute): `0` with nothing pending, `null` when nothing completes.
//!
//! `status/history?hours=N` (1 to 24, default 6) serves the page's charts, oldest first, one
//! point per 5-minute metrics bucket (the last one is the current, partial bucket):
//! `queued`, `completed`, `failed` (the Ops, OpsDone, OpsFail buckets), `completedBytes`,
//! `backlog` (at each bucket's end, rebuilt backwards from the current pending counter with
//! the queued, completed and failed counts; retries and skipped versions are not in those
//! counts, so older points are approximate) and `lagMean`/`lagMax` (seconds, from the
//! observer, so only since this process started; `null` where no lag was measured).
//!
//! [`render_table`] prints `GET status`'s JSON as `backbeat status` shows it.

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::metrics::throughput;
use super::state::AppState;
use crate::clock::iso8601_ms;
use crate::observe::{SiteState, SiteView};
use crate::store::{Metric, METRICS_BUCKET_MS};

/// `site`'s state now, from its pause flag, its pending ops counter and the observer.
pub fn site_state(state: &AppState, site: &str, pending_ops: i64) -> SiteState {
    let paused = state.control.current(site).paused;
    state.observer.state(site, paused, pending_ops)
}

/// Rounds to milliseconds' precision, so figures print short.
fn round3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

fn rate(s: &str) -> f64 {
    s.parse::<f64>().unwrap_or(0.0)
}

fn eta(backlog_ops: i64, per_second: f64, per_second_900: f64) -> Value {
    if backlog_ops <= 0 {
        return json!(0);
    }
    let rate = if per_second > 0.0 {
        per_second
    } else {
        per_second_900
    };
    if rate > 0.0 {
        json!((backlog_ops as f64 / rate).ceil() as u64)
    } else {
        Value::Null
    }
}

/// `GET status`.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn status(state: &AppState) -> Result<Value, ApiError> {
    let store = &state.store;
    let mut sites = Vec::with_capacity(state.sites.len());
    for site in &state.sites {
        let (ops, bytes) = store.pending(site).await?;
        let done = store.metric_buckets(site, Metric::OpsDone).await?;
        let done_bytes = store.metric_buckets(site, Metric::BytesDone).await?;
        let failures = store.failed_count(site).await?;
        let now = store.now_ms();
        let site_state = site_state(state, site, ops);
        let view: SiteView = state.observer.view(site).unwrap_or_default();
        let tput900 = (
            rate(&throughput(&done, now)),
            rate(&throughput(&done_bytes, now)),
        );
        let backlog_ops = ops.max(0);
        let oldest = view
            .oldest_pending_ms
            .map(|t| round3(now.saturating_sub(t) as f64 / 1000.0));
        let by_reason: Map<String, Value> = view
            .failures_by_reason_24h
            .iter()
            .map(|(r, n)| (r.as_str().to_string(), json!(n)))
            .collect();
        let last_error = match &view.last_error {
            Some(e) => json!({"at": iso8601_ms(e.at_ms), "message": e.message}),
            None => Value::Null,
        };
        sites.push(json!({
            "name": site,
            "state": site_state.as_str(),
            "backlog": {"ops": backlog_ops, "bytes": bytes.max(0)},
            "oldestPendingSeconds": oldest,
            "lag": {"p50": view.lag_p50_s.map(round3), "p99": view.lag_p99_s.map(round3)},
            "throughput": {
                "opsPerSecond": round3(view.ops_per_second),
                "bytesPerSecond": round3(view.bytes_per_second),
            },
            "throughput900s": {"opsPerSecond": tput900.0, "bytesPerSecond": tput900.1},
            "completions24h": done.iter().sum::<u64>(),
            "failures24h": failures,
            "failuresByReason": by_reason,
            "etaSeconds": eta(backlog_ops, view.ops_per_second, tput900.0),
            "lastError": last_error,
        }));
    }
    let sources: Vec<Value> = state
        .observer
        .sources()
        .into_iter()
        .map(|s| {
            json!({
                "bucket": s.bucket,
                "lastFullScan": s.last_full_scan_ms.map(iso8601_ms),
                "watching": s.watching,
            })
        })
        .collect();
    Ok(json!({"sites": sites, "sources": sources}))
}

/// The backlog at the end of each bucket, newest first, rebuilt backwards from `now_ops`.
fn backlog_series(now_ops: i64, queued: &[u64], completed: &[u64], failed: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(queued.len());
    let mut b = now_ops.max(0);
    for i in 0..queued.len() {
        out.push(b as u64);
        let get = |v: &[u64]| i64::try_from(v.get(i).copied().unwrap_or(0)).unwrap_or(i64::MAX);
        b = b
            .saturating_sub(get(queued))
            .saturating_add(get(completed))
            .saturating_add(get(failed))
            .max(0);
    }
    out
}

/// `GET status/history?hours=N`.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn history(state: &AppState, hours: u32) -> Result<Value, ApiError> {
    let store = &state.store;
    let n = (hours as usize * 3_600_000 / METRICS_BUCKET_MS as usize).max(1);
    let now = store.now_ms();
    let first = crate::store::metrics_bucket(now)
        .saturating_sub((n as u64 - 1).saturating_mul(METRICS_BUCKET_MS));
    let mut sites = Vec::with_capacity(state.sites.len());
    for site in &state.sites {
        // Newest first from the store; cut to `n` and turned oldest first below.
        let get = |v: Vec<u64>| {
            let mut v: Vec<u64> = v.into_iter().chain(std::iter::repeat(0)).take(n).collect();
            v.reverse();
            v
        };
        let queued = store.metric_buckets(site, Metric::Ops).await?;
        let completed = store.metric_buckets(site, Metric::OpsDone).await?;
        let failed = store.metric_buckets(site, Metric::OpsFail).await?;
        let bytes = store.metric_buckets(site, Metric::BytesDone).await?;
        let (ops, _) = store.pending(site).await?;
        let backlog = get(backlog_series(ops, &queued, &completed, &failed));
        let lags = state.observer.lag_history(site, n);
        let lag = |f: fn(&crate::observe::LagPoint) -> f64| -> Vec<Value> {
            lags.iter()
                .map(|p| p.as_ref().map_or(Value::Null, |p| json!(round3(f(p)))))
                .collect()
        };
        sites.push(json!({
            "name": site,
            "queued": get(queued),
            "completed": get(completed),
            "failed": get(failed),
            "completedBytes": get(bytes),
            "backlog": backlog,
            "lagMean": lag(|p| p.mean_s),
            "lagMax": lag(|p| p.max_s),
        }));
    }
    Ok(json!({
        "bucketSeconds": METRICS_BUCKET_MS / 1000,
        "hours": hours,
        "start": iso8601_ms(first),
        "startMs": first,
        "sites": sites,
    }))
}

/// Bytes in binary units (`1.5 MiB`).
fn human_bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{} B", v.round())
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// Seconds as `850 ms`, `12.5 s`, `3 min 20 s`, `2 h 5 min`, `3 d 4 h`; `-` for null.
fn human_seconds(v: &Value) -> String {
    let Some(s) = v.as_f64() else {
        return "-".to_string();
    };
    let whole = s.round() as u64;
    if s == 0.0 {
        "0 s".to_string()
    } else if s < 1.0 {
        format!("{} ms", (s * 1000.0).round())
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {} s", whole / 60, whole % 60)
    } else if s < 86_400.0 {
        format!("{} h {} min", whole / 3600, whole % 3600 / 60)
    } else {
        format!("{} d {} h", whole / 86_400, whole % 86_400 / 3600)
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |x| x.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(x, w)| format!("{x:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `GET status`'s JSON as a readable table (what `backbeat status` prints): one line a site,
/// its last error and failure reasons under it, then the sources.
pub fn render_table(status: &Value) -> String {
    let empty = Vec::new();
    let sites = status["sites"].as_array().unwrap_or(&empty);
    let mut rows = vec![[
        "SITE",
        "STATE",
        "BACKLOG",
        "OLDEST",
        "LAG P50/P99",
        "THROUGHPUT (60 s)",
        "DONE 24H",
        "FAILED 24H",
        "ETA",
    ]
    .map(String::from)
    .to_vec()];
    let mut notes = Vec::new();
    for s in sites {
        let name = s["name"].as_str().unwrap_or("?").to_string();
        let f = |v: &Value| v.as_f64().unwrap_or(0.0);
        rows.push(vec![
            name.clone(),
            s["state"].as_str().unwrap_or("?").to_string(),
            format!(
                "{} ({})",
                s["backlog"]["ops"],
                human_bytes(f(&s["backlog"]["bytes"]))
            ),
            human_seconds(&s["oldestPendingSeconds"]),
            format!(
                "{} / {}",
                human_seconds(&s["lag"]["p50"]),
                human_seconds(&s["lag"]["p99"])
            ),
            format!(
                "{:.2} op/s, {}/s",
                f(&s["throughput"]["opsPerSecond"]),
                human_bytes(f(&s["throughput"]["bytesPerSecond"]))
            ),
            s["completions24h"].to_string(),
            s["failures24h"].to_string(),
            human_seconds(&s["etaSeconds"]),
        ]);
        if let Some(reasons) = s["failuresByReason"].as_object().filter(|r| !r.is_empty()) {
            let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
            notes.push(format!("{name}: failures by reason: {}", list.join(", ")));
        }
        if let Some(e) = s["lastError"].as_object() {
            notes.push(format!(
                "{name}: last error at {}: {}",
                e.get("at").and_then(Value::as_str).unwrap_or("?"),
                e.get("message").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    let mut out = table(&rows);
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    let sources = status["sources"].as_array().unwrap_or(&empty);
    if !sources.is_empty() {
        let mut rows = vec![["SOURCE BUCKET", "LAST FULL SCAN", "WATCHED"]
            .map(String::from)
            .to_vec()];
        for b in sources {
            rows.push(vec![
                b["bucket"].as_str().unwrap_or("?").to_string(),
                b["lastFullScan"].as_str().unwrap_or("not yet").to_string(),
                if b["watching"] == json!(true) {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_is_rebuilt_backwards_and_never_negative() {
        // Newest first: the current bucket queued 5 and completed 2, the one before queued 10.
        let b = backlog_series(3, &[5, 10, 0], &[2, 0, 0], &[0, 0, 1]);
        assert_eq!(b, vec![3, 0, 0]);
        let b = backlog_series(20, &[5, 10, 0], &[2, 0, 0], &[0, 0, 1]);
        assert_eq!(b, vec![20, 17, 7]);
        assert_eq!(backlog_series(-4, &[0], &[0], &[0]), vec![0]);
    }

    #[test]
    fn the_table_shows_every_site_and_source() {
        let status = json!({
            "sites": [{
                "name": "aws-1", "state": "failing", "backlog": {"ops": 12, "bytes": 3_145_728},
                "oldestPendingSeconds": 95.5, "lag": {"p50": 0.25, "p99": 4000.0},
                "throughput": {"opsPerSecond": 1.5, "bytesPerSecond": 2048.0},
                "throughput900s": {"opsPerSecond": 1.0, "bytesPerSecond": 1.0},
                "completions24h": 40, "failures24h": 2,
                "failuresByReason": {"Timeout": 2}, "etaSeconds": null,
                "lastError": {"at": "2026-01-01T00:00:00.000Z", "message": "connect timed out"}
            }],
            "sources": [{"bucket": "photos", "lastFullScan": null, "watching": true}]
        });
        let t = render_table(&status);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SITE   STATE"), "{t}");
        assert!(
            lines[1].starts_with("aws-1  failing  12 (3.0 MiB)  1 min 36 s"),
            "{t}"
        );
        assert!(lines[1].contains("250 ms / 1 h 6 min"), "{t}");
        assert!(lines[1].contains("1.50 op/s, 2.0 KiB/s  40"), "{t}");
        assert!(lines[1].ends_with(" 2           -"), "{t}");
        assert!(t.contains("aws-1: failures by reason: Timeout 2"), "{t}");
        assert!(t.contains("aws-1: last error at 2026-01-01T00:00:00.000Z: connect timed out"));
        assert!(t.contains("photos         not yet         yes"), "{t}");
    }

    #[test]
    fn eta_needs_a_rate() {
        assert_eq!(eta(0, 0.0, 0.0), json!(0));
        assert_eq!(eta(10, 4.0, 1.0), json!(3));
        assert_eq!(eta(10, 0.0, 0.5), json!(20));
        assert_eq!(eta(10, 0.0, 0.0), Value::Null);
    }
}
