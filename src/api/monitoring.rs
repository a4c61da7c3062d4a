//! `GET monitoring/metrics`: Prometheus text exposition (format 0.0.4), written by hand.
//!
//! Families (labels `location` or `site` = site, and the log's `group`, `topic`, `partition`):
//! - replication, from the state store, per site:
//!   `s3_replication_pending_objects`/`_bytes` (the pending counters, raw),
//!   `s3_replication_failed_objects` (failed set over 24 h),
//!   `s3_replication_{queued,completed,failed}_{objects,bytes}_24h` (5-minute buckets summed
//!   over 24 h) and `s3_replication_throughput_{objects,bytes}_per_second` (900 s window, the
//!   JSON metrics' formula). These are gauges: the store keeps 24 h windows, not monotonic
//!   totals, so the original's per-process `_total` counters (`s3_replication_data_bytes_total`
//!   ...) belong to the processors that do the work, not to this view;
//! - the replication processors, in process memory (reset at restart), per `site`:
//!   `backbeat_replication_retries_total` (attempts retried after a transient error) and
//!   `backbeat_replication_replays_total` (entries queued again whole) and
//!   `backbeat_replication_skipped_total` (versions gone or changed at the source);
//! - the log: `backbeat_log_undecodable_total{topic}` (records skipped as undecodable, in
//!   process memory), `backbeat_log_end_offset{topic,partition}`,
//!   `backbeat_log_committed_offset{group,topic,partition}`,
//!   `backbeat_log_lag{group,topic,partition}` for each site's replication group and the
//!   status group;
//! - the process, from `/proc/self`: `process_resident_memory_bytes`,
//!   `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//!   `process_cpu_seconds_total`, `process_start_time_seconds`.

use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::error::ApiError;
use super::metrics::throughput;
use super::response::text_response;
use super::state::AppState;
use crate::log::{
    replication_group, PartitionLag, STATUS_GROUP, TOPIC_REPLICATION, TOPIC_REPLICATION_STATUS,
};
use crate::metrics::{site_counters, undecodable, SiteCounters};
use crate::store::Metric;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", esc(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

struct SiteNumbers {
    site: String,
    pending: (i64, i64),
    failed: u64,
    sums: [u64; 6],
    tput: (String, String),
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
        let pending = store.pending(site).await?;
        let failed = store.failed_count(site).await?;
        let mut sums = [0u64; 6];
        let mut tput = (String::new(), String::new());
        for (i, m) in Metric::ALL.iter().enumerate() {
            let b = store.metric_buckets(site, *m).await?;
            sums[i] = b.iter().sum();
            match m {
                Metric::OpsDone => tput.0 = throughput(&b, now),
                Metric::BytesDone => tput.1 = throughput(&b, now),
                _ => {}
            }
        }
        sites.push(SiteNumbers {
            site: site.clone(),
            pending,
            failed,
            sums,
            tput,
        });
    }
    let mut out = String::with_capacity(4096);
    let mut f = Family { out: &mut out };
    let gauge = |f: &mut Family, name: &str, help: &str, get: &dyn Fn(&SiteNumbers) -> String| {
        f.head(name, "gauge", help);
        for s in &sites {
            f.sample(name, &[("location", &s.site)], get(s));
        }
    };
    gauge(
        &mut f,
        "s3_replication_pending_objects",
        "Replication operations pending (queued, not yet completed or failed).",
        &|s| s.pending.0.to_string(),
    );
    gauge(
        &mut f,
        "s3_replication_pending_bytes",
        "Bytes of pending replication operations.",
        &|s| s.pending.1.to_string(),
    );
    gauge(
        &mut f,
        "s3_replication_failed_objects",
        "Versions in the failed set (last 24 hours).",
        &|s| s.failed.to_string(),
    );
    let windows = [
        ("queued", 0usize, 1usize),
        ("completed", 2, 3),
        ("failed", 4, 5),
    ];
    for (what, ops, bytes) in windows {
        gauge(
            &mut f,
            &format!("s3_replication_{what}_objects_24h"),
            &format!("Replication operations {what} in the last 24 hours."),
            &|s| s.sums[ops].to_string(),
        );
        gauge(
            &mut f,
            &format!("s3_replication_{what}_bytes_24h"),
            &format!("Bytes of replication operations {what} in the last 24 hours."),
            &|s| s.sums[bytes].to_string(),
        );
    }
    gauge(
        &mut f,
        "s3_replication_throughput_objects_per_second",
        "Completed replication operations per second over the last 900 seconds.",
        &|s| s.tput.0.clone(),
    );
    gauge(
        &mut f,
        "s3_replication_throughput_bytes_per_second",
        "Replicated bytes per second over the last 900 seconds.",
        &|s| s.tput.1.clone(),
    );

    // Retries and replays of this process (reset at restart).
    for (name, help, get) in [
        (
            "backbeat_replication_retries_total",
            "Copy attempts retried after a transient error, since the process started.",
            (|c: &SiteCounters| c.retries) as fn(&SiteCounters) -> u64,
        ),
        (
            "backbeat_replication_replays_total",
            "Entries queued again whole once their retries were spent, since the process started.",
            |c: &SiteCounters| c.replays,
        ),
        (
            "backbeat_replication_skipped_total",
            "Versions not copied because they were gone or changed at the source, since the process started.",
            |c: &SiteCounters| c.skipped,
        ),
    ] {
        f.head(name, "counter", help);
        for s in &sites {
            f.sample(name, &[("site", &s.site)], get(&site_counters(&s.site)));
        }
    }

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
    f.head(
        "backbeat_log_end_offset",
        "gauge",
        "Next offset to be written, per topic partition.",
    );
    let mut seen = std::collections::HashSet::new();
    for (_, topic, parts) in &lags {
        for p in parts {
            if seen.insert((*topic, p.partition)) {
                f.sample(
                    "backbeat_log_end_offset",
                    &[("topic", topic), ("partition", &p.partition.to_string())],
                    p.end,
                );
            }
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
                        ("partition", &p.partition.to_string()),
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
    f.head(
        "backbeat_up",
        "gauge",
        "1 when the log and the state store accept writes.",
    );
    let up = u8::from(state.log.check().is_ok() && state.store.check().is_ok());
    f.sample("backbeat_up", &[], up);

    process_metrics(&mut f);
    Ok(text_response(StatusCode::OK, CONTENT_TYPE, out))
}

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

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
