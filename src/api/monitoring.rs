//! `GET monitoring/metrics`: Prometheus text exposition (format 0.0.4), written by hand.
//!
//! Labels: the original's `s3_replication_*` families keep its `location` label; every
//! `backbeat_*` family labels the destination `site` (and the log's `group`, `topic`,
//! `partition`).
//!
//! **One definition of a failure count.** "Failures in the last 24 h" is the failed set: the
//! versions whose replication to the site is FAILED now, having failed within the last 24
//! hourly buckets (a version that failed twice counts once; a version retried leaves it). It is
//! the original's REST definition (`metrics/crr/<site>/failures`, the set's size), and the
//! same number here (`s3_replication_failed_objects_24h`, `s3_replication_failed_objects`) and
//! in `GET status` (`failures24h`). Every FAILED outcome, repeats included, is counted by the
//! counter `backbeat_replication_failures_total{site,reason}` instead. The failed set keeps
//! no sizes, so `s3_replication_failed_bytes_24h` is the bytes of the FAILED outcomes of the
//! last 24 h (the BytesFail buckets) and the REST `failures.size` stays 0 as the original's.
//!
//! Families:
//! - replication, from the state store, per `location`: `s3_replication_pending_objects` /
//!   `_bytes` (the pending counters, raw), `s3_replication_failed_objects` and
//!   `s3_replication_failed_objects_24h` (the failed set, above),
//!   `s3_replication_{queued,completed}_{objects,bytes}_24h` and
//!   `s3_replication_failed_bytes_24h` (5-minute buckets summed over 24 h),
//!   `s3_replication_throughput_{objects,bytes}_per_second` (900 s window, the JSON metrics'
//!   formula). These are gauges over windows, kept durable by the store;
//! - counters that only go up (this process's, reset at restart), per `site`, from the
//!   [`Observer`](crate::observe::Observer) the pipeline feeds:
//!   `backbeat_replication_queued_total`, `_queued_bytes_total`, `_completed_total`,
//!   `_completed_bytes_total`, `_failures_total{reason}` (every reason listed, 0 included),
//!   `_failed_bytes_total`, `_backfill_total` (completions not counted in lag),
//!   `_skipped_total{reason}` (versions not copied: superseded, gone...), and from the
//!   processors' own counters `backbeat_replication_retries_total` (attempts retried after a
//!   transient error), `backbeat_replication_attempt_failures_total` (every failed attempt,
//!   counted when it fails) and `backbeat_replication_replays_total` (entries queued again whole);
//! - the operator's view, per `site`: `backbeat_replication_lag_seconds` (histogram, source
//!   write to COMPLETED, since the process started), `backbeat_replication_oldest_pending_seconds`
//!   (0 when nothing is pending), `backbeat_site_state{state}` (1 for the current state, 0
//!   for the others), and the thresholds the states are judged against,
//!   `backbeat_replication_lag_target_seconds` and `backbeat_replication_stall_after_seconds`;
//! - the log: `backbeat_log_undecodable_total{topic}` (records skipped as undecodable, in
//!   process memory), `backbeat_log_end_offset{topic,partition}`,
//!   `backbeat_log_committed_offset{group,topic,partition}`,
//!   `backbeat_log_lag{group,topic,partition}` for each site's replication group and the
//!   status group;
//! - outages (issue 14, in process memory): `backbeat_store_retries_total`,
//!   `backbeat_store_unavailable`, `backbeat_log_retries_total`, `backbeat_log_unavailable`,
//!   `backbeat_log_offset_out_of_range_total{topic}`;
//! - garbage collection: `backbeat_gc_deleted_total`, `backbeat_gc_bytes_freed_total`,
//!   `backbeat_gc_orphans_total` (in process memory);
//! - the engine: `backbeat_up` (the log and the store accept writes), `backbeat_data_dir_bytes`
//!   (the size of the embedded database's directory, when sled is used);
//! - the process, from `/proc/self`: `process_resident_memory_bytes`,
//!   `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//!   `process_cpu_seconds_total`, `process_start_time_seconds`.
//!
//! Cost (issue 17): the replication families come from the store's maintained totals (the
//! numbers the REST metrics read); the process families and the data directory's size, which
//! take a dozen system calls and a directory walk, are read at most once per
//! [`SLOW_GAUGES_TTL`] and reused meanwhile (a scrape every 10 s or more never notices).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::error::ApiError;
use super::metrics::throughput;
use super::response::text_response;
use super::state::AppState;
use super::status::site_state;
use crate::error::FailureReason;
use crate::log::{
    replication_group, PartitionLag, STATUS_GROUP, TOPIC_REPLICATION, TOPIC_REPLICATION_STATUS,
};
use crate::metrics::{
    gc_counters, offset_out_of_range, outage_counters, site_counters, undecodable, SiteCounters,
};
use crate::observe::{SiteState, SiteView, LAG_BUCKETS_S};
use crate::store::Metric;
use crate::transitions::DropReason;

/// Length of the last exposition, to size the next one.
static LAST_SIZE: AtomicUsize = AtomicUsize::new(0);

/// How long the process families and the data directory's size are reused.
pub const SLOW_GAUGES_TTL: Duration = Duration::from_secs(1);

/// The process families as last rendered, and when.
static PROCESS_TEXT: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// The data directories' sizes as last measured, and when (one per engine in the process).
static DATA_DIR_SIZES: Mutex<Vec<(PathBuf, Instant, Option<u64>)>> = Mutex::new(Vec::new());

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Appends a label value, escaped (`\\`, `"` and newlines), without allocating.
fn push_escaped(out: &mut String, v: &str) {
    // A byte scan: a pattern of chars costs more than the copy it saves on a short value.
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample's value, appended to the text: integers print as integers (through `itoa`, not
/// the formatting machinery: a scrape writes a few hundred of them).
trait SampleValue {
    fn put(&self, out: &mut String);
}

macro_rules! integer_sample_values {
    ($($t:ty),*) => {$(
        impl SampleValue for $t {
            fn put(&self, out: &mut String) {
                out.push_str(itoa::Buffer::new().format(*self));
            }
        }
    )*};
}

integer_sample_values!(u8, u64, i64, usize);

impl SampleValue for f64 {
    fn put(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

/// A sample's value taken from a site's numbers.
enum Num<'a> {
    I(i64),
    U(u64),
    S(&'a str),
}

impl SampleValue for Num<'_> {
    fn put(&self, out: &mut String) {
        match self {
            Num::I(v) => v.put(out),
            Num::U(v) => v.put(out),
            Num::S(v) => out.push_str(v),
        }
    }
}

/// The `le` labels of the lag histogram's buckets, written once.
static LE_LABELS: LazyLock<Vec<String>> =
    LazyLock::new(|| LAG_BUCKETS_S.iter().map(f64::to_string).collect());

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        for part in [
            "# HELP ",
            name,
            " ",
            help,
            "\n# TYPE ",
            name,
            " ",
            kind,
            "\n",
        ] {
            self.out.push_str(part);
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.sample_of(name, "", labels, value);
    }

    /// A sample of `name` + `suffix` (`_bucket`, `_sum`...), written without allocating.
    fn sample_of(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        value: impl SampleValue,
    ) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                push_escaped(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.put(self.out);
        self.out.push('\n');
    }
}

struct SiteNumbers {
    site: String,
    pending: (i64, i64),
    failed: u64,
    sums: [u64; 6],
    tput: (String, String),
    state: SiteState,
    view: SiteView,
}

/// Builds the exposition.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn prometheus(state: &AppState) -> Result<Response<Full<Bytes>>, ApiError> {
    let store = &state.store;
    let now = store.now_ms();
    let mut sites = Vec::new();
    for site in &state.sites {
        // The store's maintained totals, as the REST metrics read them (same numbers).
        let t = store.site_totals(site).await?;
        let pending = t.pending;
        let failed = t.failed;
        let sums = t.sums;
        let tput = (
            throughput(&t.recent[Metric::OpsDone.index()], now),
            throughput(&t.recent[Metric::BytesDone.index()], now),
        );
        let view = state.observer.view(site).unwrap_or_default();
        sites.push(SiteNumbers {
            site: site.clone(),
            state: site_state(state, site, pending.0),
            pending,
            failed,
            sums,
            tput,
            view,
        });
    }
    // Sized as the last exposition was, so the text is not copied while it grows.
    let mut out = String::with_capacity(LAST_SIZE.load(Ordering::Relaxed).max(4096) + 512);
    let mut f = Family { out: &mut out };
    let gauge = |f: &mut Family, name: &str, help: &str, get: &dyn Fn(&SiteNumbers) -> Num| {
        f.head(name, "gauge", help);
        for s in &sites {
            f.sample(name, &[("location", &s.site)], get(s));
        }
    };
    gauge(
        &mut f,
        "s3_replication_pending_objects",
        "Replication operations pending (queued, not yet completed or failed).",
        &|s| Num::I(s.pending.0),
    );
    gauge(
        &mut f,
        "s3_replication_pending_bytes",
        "Bytes of pending replication operations.",
        &|s| Num::I(s.pending.1),
    );
    gauge(
        &mut f,
        "s3_replication_failed_objects",
        "Versions in the failed set (failed in the last 24 hours, not retried since).",
        &|s| Num::U(s.failed),
    );
    let windows = [("queued", 0usize, 1usize), ("completed", 2, 3)];
    for (what, ops, bytes) in windows {
        gauge(
            &mut f,
            &format!("s3_replication_{what}_objects_24h"),
            &format!("Replication operations {what} in the last 24 hours."),
            &|s| Num::U(s.sums[ops]),
        );
        gauge(
            &mut f,
            &format!("s3_replication_{what}_bytes_24h"),
            &format!("Bytes of replication operations {what} in the last 24 hours."),
            &|s| Num::U(s.sums[bytes]),
        );
    }
    // The failed set, as the REST failures count (see the module doc).
    gauge(
        &mut f,
        "s3_replication_failed_objects_24h",
        "Versions failed in the last 24 hours and not retried since (the failed set, as the REST failures count).",
        &|s| Num::U(s.failed),
    );
    gauge(
        &mut f,
        "s3_replication_failed_bytes_24h",
        "Bytes of the replication operations that failed in the last 24 hours (every failure).",
        &|s| Num::U(s.sums[5]),
    );
    gauge(
        &mut f,
        "s3_replication_throughput_objects_per_second",
        "Completed replication operations per second over the last 900 seconds.",
        &|s| Num::S(&s.tput.0),
    );
    gauge(
        &mut f,
        "s3_replication_throughput_bytes_per_second",
        "Replicated bytes per second over the last 900 seconds.",
        &|s| Num::S(&s.tput.1),
    );

    // Retries and replays of this process (reset at restart).
    for (name, help, get) in [
        (
            "backbeat_replication_retries_total",
            "Copy attempts retried after a transient error, since the process started.",
            (|c: &SiteCounters| c.retries) as fn(&SiteCounters) -> u64,
        ),
        (
            "backbeat_replication_attempt_failures_total",
            "Copy attempts that failed (the first of an outage included), since the process started.",
            |c: &SiteCounters| c.attempt_failures,
        ),
        (
            "backbeat_replication_replays_total",
            "Entries queued again whole once their retries were spent, since the process started.",
            |c: &SiteCounters| c.replays,
        ),
    ] {
        f.head(name, "counter", help);
        for s in &sites {
            f.sample(name, &[("site", &s.site)], get(&site_counters(&s.site)));
        }
    }
    observed(&mut f, &sites, state);

    // The log.
    let mut lags: Vec<(String, &str, Vec<PartitionLag>)> = Vec::new();
    for site in &state.sites {
        let group = replication_group(site);
        if let Ok(l) = state.log.lag(TOPIC_REPLICATION, &group).await {
            lags.push((group, TOPIC_REPLICATION, l));
        }
    }
    if let Ok(l) = state.log.lag(TOPIC_REPLICATION_STATUS, STATUS_GROUP).await {
        lags.push((STATUS_GROUP.to_string(), TOPIC_REPLICATION_STATUS, l));
    }
    let most = lags
        .iter()
        .flat_map(|(_, _, parts)| parts.iter().map(|p| p.partition as usize + 1))
        .max()
        .unwrap_or(0);
    let partition_names: Vec<String> = (0..most).map(|p| p.to_string()).collect();
    let partition = |p: u32| partition_names.get(p as usize).map_or("", String::as_str);
    f.head(
        "backbeat_log_end_offset",
        "gauge",
        "Next offset to be written, per topic partition.",
    );
    // Every group of a topic reads the same partitions: their ends are written once.
    let mut topics_done: Vec<&str> = Vec::new();
    for (_, topic, parts) in &lags {
        if topics_done.contains(topic) {
            continue;
        }
        topics_done.push(topic);
        for p in parts {
            f.sample(
                "backbeat_log_end_offset",
                &[("topic", topic), ("partition", partition(p.partition))],
                p.end,
            );
        }
    }
    for (name, help, get) in [
        (
            "backbeat_log_committed_offset",
            "Committed offset (next to read) of a consumer group.",
            (|p: &PartitionLag| p.committed) as fn(&PartitionLag) -> u64,
        ),
        (
            "backbeat_log_lag",
            "Records not yet consumed by a consumer group.",
            |p: &PartitionLag| p.lag,
        ),
    ] {
        f.head(name, "gauge", help);
        for (group, topic, parts) in &lags {
            for p in parts {
                f.sample(
                    name,
                    &[
                        ("group", group),
                        ("topic", topic),
                        ("partition", partition(p.partition)),
                    ],
                    get(p),
                );
            }
        }
    }
    f.head(
        "backbeat_log_undecodable_total",
        "counter",
        "Log records skipped because they do not decode as an entry, since the process started.",
    );
    let undecodable = undecodable();
    for topic in [TOPIC_REPLICATION, TOPIC_REPLICATION_STATUS] {
        let n = undecodable.get(topic).copied().unwrap_or(0);
        f.sample("backbeat_log_undecodable_total", &[("topic", topic)], n);
    }
    let gc = gc_counters();
    f.head(
        "backbeat_gc_deleted_total",
        "counter",
        "Replicated files deleted from a transient source, since the process started.",
    );
    f.sample("backbeat_gc_deleted_total", &[], gc.deleted);
    f.head(
        "backbeat_gc_bytes_freed_total",
        "counter",
        "Bytes of the files deleted from a transient source, since the process started.",
    );
    f.sample("backbeat_gc_bytes_freed_total", &[], gc.bytes_freed);
    f.head(
        "backbeat_gc_orphans_total",
        "counter",
        "Multipart uploads and temporary files no copy owned, cleaned up at sites, since the process started.",
    );
    f.sample("backbeat_gc_orphans_total", &[], gc.orphans);
    let outages = outage_counters();
    for (name, kind, help, v) in [
        (
            "backbeat_store_retries_total",
            "counter",
            "State store calls retried after a transient error (store unreachable), since the process started.",
            outages.store_retries,
        ),
        (
            "backbeat_store_unavailable",
            "gauge",
            "1 while the state store is unreachable and the pipeline waits for it.",
            u64::from(outages.store_unavailable),
        ),
        (
            "backbeat_log_retries_total",
            "counter",
            "Log operations (connection, consumer, producer) retried after a transient error, since the process started.",
            outages.log_retries,
        ),
        (
            "backbeat_log_unavailable",
            "gauge",
            "1 while the log is unreachable and the pipeline waits for it.",
            u64::from(outages.log_unavailable),
        ),
    ] {
        f.head(name, kind, help);
        f.sample(name, &[], v);
    }
    f.head(
        "backbeat_log_offset_out_of_range_total",
        "counter",
        "Consumer positions found below their partition's earliest record (records removed by retention before they were read; healed by a rescan), since the process started.",
    );
    let out_of_range = offset_out_of_range();
    for topic in [TOPIC_REPLICATION, TOPIC_REPLICATION_STATUS] {
        let n = out_of_range.get(topic).copied().unwrap_or(0);
        f.sample(
            "backbeat_log_offset_out_of_range_total",
            &[("topic", topic)],
            n,
        );
    }
    f.head(
        "backbeat_up",
        "gauge",
        "1 when the log and the state store accept writes.",
    );
    let up = u8::from(state.log.check().is_ok() && state.store.check().is_ok());
    f.sample("backbeat_up", &[], up);
    if let Some(bytes) = data_dir_bytes_cached(state).await {
        f.head(
            "backbeat_data_dir_bytes",
            "gauge",
            "Bytes of the files of the embedded database's directory.",
        );
        f.sample("backbeat_data_dir_bytes", &[], bytes);
    }

    process_metrics_cached(f.out);
    LAST_SIZE.store(out.len(), Ordering::Relaxed);
    Ok(text_response(StatusCode::OK, CONTENT_TYPE, out))
}

/// The families fed by the observer (see the module doc).
fn observed(f: &mut Family, sites: &[SiteNumbers], state: &AppState) {
    for (name, help, get) in [
        (
            "backbeat_replication_queued_total",
            "Versions queued for the site, since the process started.",
            (|s: &SiteNumbers| s.view.totals.queued) as fn(&SiteNumbers) -> u64,
        ),
        (
            "backbeat_replication_queued_bytes_total",
            "Bytes of the versions queued for the site, since the process started.",
            |s: &SiteNumbers| s.view.totals.queued_bytes,
        ),
        (
            "backbeat_replication_completed_total",
            "Versions COMPLETED at the site (backfill included), since the process started.",
            |s: &SiteNumbers| s.view.totals.completed,
        ),
        (
            "backbeat_replication_completed_bytes_total",
            "Bytes of the versions COMPLETED at the site, since the process started.",
            |s: &SiteNumbers| s.view.totals.completed_bytes,
        ),
        (
            "backbeat_replication_failed_bytes_total",
            "Bytes of the versions FAILED at the site, since the process started.",
            |s: &SiteNumbers| s.view.totals.failed_bytes,
        ),
        (
            "backbeat_replication_backfill_total",
            "Versions COMPLETED as backfill (first seen long after their write; not in the lag), since the process started.",
            |s: &SiteNumbers| s.view.totals.backfill,
        ),
    ] {
        f.head(name, "counter", help);
        for s in sites {
            f.sample(name, &[("site", &s.site)], get(s));
        }
    }

    let name = "backbeat_replication_failures_total";
    f.head(
        name,
        "counter",
        "Versions FAILED at the site, by reason, since the process started.",
    );
    for s in sites {
        for r in FailureReason::ALL {
            let n = s.view.totals.failures.get(r.index()).copied().unwrap_or(0);
            f.sample(name, &[("site", &s.site), ("reason", r.as_str())], n);
        }
    }

    let name = "backbeat_replication_skipped_total";
    f.head(
        name,
        "counter",
        "Versions not copied to the site, by reason (superseded: not the key's current version at the source any more; replica: itself a replica), since the process started.",
    );
    for s in sites {
        for reason in [DropReason::Superseded, DropReason::Replica] {
            let r = reason.as_str();
            let n = s
                .view
                .totals
                .skipped
                .iter()
                .find(|(name, _)| name == r)
                .map_or(0, |(_, n)| *n);
            f.sample(name, &[("site", &s.site), ("reason", r)], n);
        }
    }

    let name = "backbeat_replication_lag_seconds";
    f.head(
        name,
        "histogram",
        "Seconds from a version's source write to COMPLETED at the site (backfill excluded), since the process started.",
    );
    for s in sites {
        let h = &s.view.lag_histogram;
        for (bound, n) in LE_LABELS.iter().zip(h.cumulative) {
            f.sample_of(name, "_bucket", &[("site", &s.site), ("le", bound)], n);
        }
        f.sample_of(
            name,
            "_bucket",
            &[("site", &s.site), ("le", "+Inf")],
            h.count,
        );
        f.sample_of(name, "_sum", &[("site", &s.site)], h.sum_s);
        f.sample_of(name, "_count", &[("site", &s.site)], h.count);
    }

    let now = state.observer.now_ms();
    let name = "backbeat_replication_oldest_pending_seconds";
    f.head(
        name,
        "gauge",
        "Age of the site's oldest pending version (since its source write); 0 when none.",
    );
    for s in sites {
        let age = s
            .view
            .oldest_pending_ms
            .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
        f.sample(name, &[("site", &s.site)], age);
    }

    let name = "backbeat_site_state";
    f.head(
        name,
        "gauge",
        "The site's state: 1 for the current one (ok, behind, paused, failing, stalled), 0 for the others.",
    );
    for s in sites {
        for st in SiteState::ALL {
            f.sample(
                name,
                &[("site", &s.site), ("state", st.as_str())],
                u8::from(st == s.state),
            );
        }
    }

    let th = state.observer.thresholds();
    for (name, help, value) in [
        (
            "backbeat_replication_lag_target_seconds",
            "A site whose oldest pending version is older than this is behind ([replication] lag_target_s).",
            th.lag_target.as_secs_f64(),
        ),
        (
            "backbeat_replication_stall_after_seconds",
            "A site with work waiting and no completion for this long is stalled ([replication] stall_after_s).",
            th.stall_after.as_secs_f64(),
        ),
    ] {
        f.head(name, "gauge", help);
        f.sample(name, &[], value);
    }
}

/// [`data_dir_bytes`], measured at most once per [`SLOW_GAUGES_TTL`].
async fn data_dir_bytes_cached(state: &AppState) -> Option<u64> {
    let path = &state.config.storage.path;
    let fresh = |at: &Instant| at.elapsed() < SLOW_GAUGES_TTL;
    if let Some((_, _, v)) = DATA_DIR_SIZES
        .lock()
        .iter()
        .find(|(p, at, _)| p == path && fresh(at))
    {
        return *v;
    }
    let v = data_dir_bytes(state).await;
    let mut sizes = DATA_DIR_SIZES.lock();
    sizes.retain(|(p, at, _)| p != path && fresh(at));
    sizes.push((path.clone(), Instant::now(), v));
    v
}

/// Files looked at when sizing the data directory (sled keeps a handful, plus blobs).
const DATA_DIR_MAX_FILES: usize = 100_000;

/// The size of the embedded database's directory, when the log or the store is sled.
async fn data_dir_bytes(state: &AppState) -> Option<u64> {
    use crate::config::{LogKind, StoreKind};
    let st = &state.config.storage;
    if st.log != LogKind::Sled && st.store != StoreKind::Sled {
        return None;
    }
    let root = st.path.clone();
    tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        let mut seen = 0usize;
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                seen += 1;
                if seen > DATA_DIR_MAX_FILES {
                    return total;
                }
                match e.metadata() {
                    Ok(m) if m.is_dir() => dirs.push(e.path()),
                    Ok(m) => total = total.saturating_add(m.len()),
                    Err(_) => {}
                }
            }
        }
        total
    })
    .await
    .ok()
}

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Appends the process families to `out`, rendered at most once per [`SLOW_GAUGES_TTL`].
fn process_metrics_cached(out: &mut String) {
    let mut cached = PROCESS_TEXT.lock();
    match &*cached {
        Some((at, text)) if at.elapsed() < SLOW_GAUGES_TTL => out.push_str(text),
        _ => {
            let mut text = String::with_capacity(1024);
            process_metrics(&mut Family { out: &mut text });
            out.push_str(&text);
            *cached = Some((Instant::now(), text));
        }
    }
}

fn process_metrics(f: &mut Family) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |field: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    if let Some(rss) = kb("VmRSS:") {
        f.head(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        f.sample("process_resident_memory_bytes", &[], rss * 1024);
    }
    if let Some(vm) = kb("VmSize:") {
        f.head(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
        );
        f.sample("process_virtual_memory_bytes", &[], vm * 1024);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        f.head(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        f.sample("process_open_fds", &[], dir.count());
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(max) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok())
    {
        f.head(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
        );
        f.sample("process_max_fds", &[], max);
    }
    // /proc/self/stat: fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields, starttime the 22nd (ticks since boot).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        f.head(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        f.sample("process_cpu_seconds_total", &[], (u + s) / USER_HZ);
    }
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("btime "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    });
    if let (Some(start), Some(btime)) = (field(22), btime) {
        f.head(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
        );
        f.sample("process_start_time_seconds", &[], btime + start / USER_HZ);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_text_format_asks() {
        let mut out = String::new();
        push_escaped(&mut out, "plain-site_1");
        assert_eq!(out, "plain-site_1");
        out.clear();
        push_escaped(&mut out, "a\\b\"c\nd é");
        assert_eq!(out, "a\\\\b\\\"c\\nd é");
    }

    #[test]
    fn a_family_writes_its_head_and_samples_line_by_line() {
        let mut out = String::new();
        let mut f = Family { out: &mut out };
        f.head("x_total", "counter", "Things.");
        f.sample(
            "x_total",
            &[("site", "s\"1"), ("reason", "r")],
            18_446_744_073_709_551_615u64,
        );
        f.sample("x_total", &[], -3i64);
        f.sample_of("x", "_sum", &[("le", "0.5")], 1.25f64);
        f.sample("x", &[], Num::S("0.125"));
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{site=\"s\\\"1\",reason=\"r\"} 18446744073709551615\n\
             x_total -3\n\
             x_sum{le=\"0.5\"} 1.25\n\
             x 0.125\n"
        );
    }
}
