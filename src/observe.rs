//! The operator's view, in memory: what the pipeline reports about each site and source while
//! it runs, read by `GET status`, the status page, the healthcheck and Prometheus (DESIGN
//! sections 5 and 6). The durable numbers (pending counters, 24 h metric buckets, the failed
//! set, pause state) stay in the state store; this module keeps only what the store does not:
//! attempts, reasons, lag, short-window throughput, scan times. It forgets everything at a
//! restart (Prometheus reads its `_total` counters as counters that may reset).
//!
//! # Feeding API
//!
//! One [`Observer`] per engine, shared as `Arc<Observer>` (`Engine::observer`,
//! `AppState::observer`). Every call takes the site (or bucket) name and is cheap: one map
//! lookup (the map is fixed at construction, so it needs no lock) and one per-site mutex held
//! for a constant number of steps. Names the observer was not built with are ignored.
//!
//! ```text
//! call                                     who                   feeds
//! queued(site, bytes)                      populator             backbeat_replication_queued[_bytes]_total
//! attempt_failed(site, reason, message)    replication processor `failing` (3 in a row), lastError
//! attempt_succeeded(site)                  replication processor ends a failing streak
//! completed(site, bytes, Some(lag))        status processor      lag histogram, p50/p99 (5 min), 60 s
//!                                                                throughput, completed totals
//! completed(site, bytes, None)             status processor      the same, but backfill_total, not lag
//! failed(site, reason, bytes)              status processor      failures_total{reason}, failuresByReason
//! skipped(site, reason)                    replication processor skipped_total{reason}
//! set_oldest_pending(site, Some(ms)|None)  whoever tracks it     oldestPendingSeconds, `behind`
//! scan_done(bucket), set_watching(b, on)   scanner, watcher      sources[].lastFullScan / watching
//! ```
//!
//! # Site state
//!
//! [`site_state`] is a pure function of a site's counters at read time, the first that
//! applies: `paused` (from `Control`); `failing` (the last [`FAILING_AFTER`] attempts failed
//! with no success since; a completion counts as a success); `stalled` (work waiting, that is
//! pending ops > 0 or an oldest pending, and no completion for `stall_after` counted from the
//! later of the last completion and the moment work started waiting); `behind` (the oldest
//! pending version is older than `lag_target`); `ok`. "Work started waiting" is the first
//! moment the observer saw work for an idle site: a `queued`, an attempt, an oldest pending,
//! or a backlog sample with pending ops ([`Observer::note_backlog`], called by [`run_sampler`]
//! every [`SAMPLE_EVERY`] and by every reader). A pause stops that count: a resumed site has
//! `stall_after` again before it is `stalled`.
//!
//! # Bounded memory
//!
//! Per site, whatever the traffic: a ring of 5 one-minute log-bucketed lag histograms
//! ([`LOG_BUCKETS`] counters each, 8 sub-buckets per power of two: a quantile is within 6.25 %
//! of the true lag), 60 one-second throughput slots, 288 five-minute lag summaries (24 h, for
//! the page's chart), 24 hourly failure-reason counters, the fixed Prometheus buckets, at most
//! [`MAX_SKIP_REASONS`] skip reasons and one error message cut to [`MAX_MESSAGE`] characters:
//! about 20 KiB. Sites are fixed at construction; sources are the configured ones plus at most
//! [`MAX_SOURCES`] met later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::{Config, SourceBackend};
use crate::control::Control;
use crate::error::FailureReason;
use crate::store::StateStore;

/// Attempts failed in a row (no success since) that make a site `failing`.
pub const FAILING_AFTER: u32 = 3;
/// Default `[replication] lag_target_s` (DESIGN section 7).
pub const DEFAULT_LAG_TARGET: Duration = Duration::from_secs(60);
/// Default `[replication] stall_after_s` (DESIGN section 7).
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(120);
/// Upper bounds (seconds) of the Prometheus lag histogram's buckets (`+Inf` added).
pub const LAG_BUCKETS_S: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21_600.0,
    86_400.0,
];
/// Minutes of completions behind the lag quantiles.
pub const WINDOW_MINUTES: usize = 5;
/// Seconds of completions behind the short-window throughput.
pub const THROUGHPUT_SECONDS: usize = 60;
/// Length of a lag-history slot (the store's metrics bucket, so both line up).
pub const HISTORY_SLOT_MS: u64 = crate::store::METRICS_BUCKET_MS;
/// Lag-history slots kept (24 h).
pub const HISTORY_SLOTS: usize = crate::store::METRICS_BUCKETS;
/// Hours of failures behind `failuresByReason`.
pub const REASON_HOURS: usize = 24;
/// Longest `lastError` message kept, in characters.
pub const MAX_MESSAGE: usize = 300;
/// Distinct skip reasons counted per site; others are counted as `other`.
pub const MAX_SKIP_REASONS: usize = 16;
/// Source buckets tracked beyond the configured ones.
pub const MAX_SOURCES: usize = 1024;
/// How often [`run_sampler`] reads the pending counters.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Sub-bucket bits of the log-bucketed histogram (8 linear sub-buckets per power of two).
const SUB_BITS: u32 = 3;
/// Powers of two covered (lags up to 2^48 ms).
const OCTAVES: usize = 48;
/// Counters of one log-bucketed histogram (index 0 holds lags under 1 ms).
pub const LOG_BUCKETS: usize = 1 + (OCTAVES << SUB_BITS);

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// A site's state (DESIGN section 5), the first that applies in this order: paused, failing,
/// stalled, behind, ok.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteState {
    /// Replicating, and not behind.
    Ok,
    /// The oldest pending version is older than the lag target.
    Behind,
    /// Paused by an operator.
    Paused,
    /// The last attempts failed with no success since.
    Failing,
    /// Work waits but nothing completed for `stall_after`.
    Stalled,
}

impl SiteState {
    /// Every state, in the order metrics list them.
    pub const ALL: [SiteState; 5] = [
        SiteState::Ok,
        SiteState::Behind,
        SiteState::Paused,
        SiteState::Failing,
        SiteState::Stalled,
    ];

    /// The state's name (`ok`, `behind`, `paused`, `failing`, `stalled`).
    pub fn as_str(self) -> &'static str {
        match self {
            SiteState::Ok => "ok",
            SiteState::Behind => "behind",
            SiteState::Paused => "paused",
            SiteState::Failing => "failing",
            SiteState::Stalled => "stalled",
        }
    }
}

/// The two durations the site states are judged against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// `[replication] lag_target_s`: a site whose oldest pending version is older is `behind`.
    pub lag_target: Duration,
    /// `[replication] stall_after_s`: a site with work and no completion this long is `stalled`.
    pub stall_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            lag_target: DEFAULT_LAG_TARGET,
            stall_after: DEFAULT_STALL_AFTER,
        }
    }
}

/// What a site's state is computed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateInputs {
    /// Paused by an operator (`Control`).
    pub paused: bool,
    /// Attempts failed in a row since the last success.
    pub consecutive_failures: u32,
    /// The store's pending ops counter (raw, may be negative).
    pub pending_ops: i64,
    /// Source write time (ms) of the oldest pending version, when known.
    pub oldest_pending_ms: Option<u64>,
    /// When the last version completed at the site (ms).
    pub last_completion_ms: Option<u64>,
    /// When work started waiting at an idle site (ms).
    pub waiting_since_ms: Option<u64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A site's state at `now_ms` (see the module doc for the rule).
pub fn site_state(i: &StateInputs, t: &Thresholds, now_ms: u64) -> SiteState {
    if i.paused {
        return SiteState::Paused;
    }
    if i.consecutive_failures >= FAILING_AFTER {
        return SiteState::Failing;
    }
    let waiting = i.pending_ops > 0 || i.oldest_pending_ms.is_some();
    // `None < Some`, so this is the later of the two that are known.
    let since = i.last_completion_ms.max(i.waiting_since_ms);
    if let (true, Some(since)) = (waiting, since) {
        if now_ms.saturating_sub(since) >= millis(t.stall_after) {
            return SiteState::Stalled;
        }
    }
    if let Some(oldest) = i.oldest_pending_ms {
        if now_ms.saturating_sub(oldest) > millis(t.lag_target) {
            return SiteState::Behind;
        }
    }
    SiteState::Ok
}

/// The bucket of a lag of `ms` in a log-bucketed histogram.
fn log_index(ms: u64) -> usize {
    if ms == 0 {
        return 0;
    }
    let e = 63 - ms.leading_zeros();
    let frac = if e >= SUB_BITS {
        (ms >> (e - SUB_BITS)) & 7
    } else {
        (ms << (SUB_BITS - e)) & 7
    };
    (1 + ((e as usize) << SUB_BITS) + frac as usize).min(LOG_BUCKETS - 1)
}

/// The value (ms) a bucket stands for: its middle, or its one integer below 8 ms.
fn log_value(idx: usize) -> f64 {
    if idx == 0 {
        return 0.0;
    }
    let i = idx - 1;
    let e = (i >> SUB_BITS) as i32;
    let frac = (i & 7) as f64;
    let base = 2f64.powi(e);
    let lower = base * (1.0 + frac / 8.0);
    if e < SUB_BITS as i32 {
        lower
    } else {
        lower + base / 16.0
    }
}

/// One minute of lags, log-bucketed.
#[derive(Debug, Clone)]
struct MinuteSlot {
    minute: u64,
    n: u64,
    counts: Box<[u32]>,
}

/// The last [`WINDOW_MINUTES`] minutes of lags, one histogram a minute.
#[derive(Debug, Clone)]
struct LagWindow {
    slots: Vec<MinuteSlot>,
}

impl LagWindow {
    fn new() -> LagWindow {
        let slot = MinuteSlot {
            minute: u64::MAX,
            n: 0,
            counts: vec![0u32; LOG_BUCKETS].into_boxed_slice(),
        };
        LagWindow {
            slots: vec![slot; WINDOW_MINUTES],
        }
    }

    fn add(&mut self, now_ms: u64, lag_ms: u64) {
        let minute = now_ms / MINUTE_MS;
        let Some(slot) = self
            .slots
            .get_mut((minute % WINDOW_MINUTES as u64) as usize)
        else {
            return;
        };
        if slot.minute != minute {
            // Once a minute per slot: a fixed-size reset.
            slot.counts.fill(0);
            slot.n = 0;
            slot.minute = minute;
        }
        if let Some(c) = slot.counts.get_mut(log_index(lag_ms)) {
            *c = c.saturating_add(1);
        }
        slot.n += 1;
    }

    /// The `qs` quantiles (seconds) of the lags of the last [`WINDOW_MINUTES`] minutes.
    fn quantiles<const N: usize>(&self, now_ms: u64, qs: [f64; N]) -> [Option<f64>; N] {
        let now_min = now_ms / MINUTE_MS;
        let live: Vec<&MinuteSlot> = self
            .slots
            .iter()
            .filter(|s| s.minute <= now_min && now_min - s.minute < WINDOW_MINUTES as u64)
            .collect();
        let n: u64 = live.iter().map(|s| s.n).sum();
        let mut out = [None; N];
        if n == 0 {
            return out;
        }
        let mut merged = vec![0u64; LOG_BUCKETS];
        for s in &live {
            for (m, c) in merged.iter_mut().zip(s.counts.iter()) {
                *m += u64::from(*c);
            }
        }
        for (o, q) in out.iter_mut().zip(qs) {
            let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
            let mut seen = 0u64;
            for (idx, c) in merged.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    *o = Some(log_value(idx) / 1000.0);
                    break;
                }
            }
        }
        out
    }
}

/// Completions per second over the last [`THROUGHPUT_SECONDS`] seconds.
#[derive(Debug, Clone, Copy, Default)]
struct SecondSlot {
    second: u64,
    ops: u64,
    bytes: u64,
}

/// Five minutes of lag, summarized (for the page's lag chart).
#[derive(Debug, Clone, Copy, Default)]
struct HistorySlot {
    slot: u64,
    count: u64,
    sum_ms: u64,
    max_ms: u64,
}

/// One hour of failures, by reason.
#[derive(Debug, Clone, Copy, Default)]
struct ReasonSlot {
    hour: u64,
    counts: [u64; FailureReason::ALL.len()],
}

/// The Prometheus histogram of lags since the process started.
#[derive(Debug, Clone, PartialEq)]
pub struct LagHistogram {
    /// Lags at or under each bound of [`LAG_BUCKETS_S`] (cumulative, as Prometheus reads them).
    pub cumulative: [u64; LAG_BUCKETS_S.len()],
    /// Sum of every lag, in seconds.
    pub sum_s: f64,
    /// Number of lags (the `+Inf` bucket).
    pub count: u64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            cumulative: [0; LAG_BUCKETS_S.len()],
            sum_s: 0.0,
            count: 0,
        }
    }
}

impl LagHistogram {
    fn add(&mut self, lag_s: f64) {
        for (c, bound) in self.cumulative.iter_mut().zip(LAG_BUCKETS_S) {
            if lag_s <= bound {
                *c += 1;
            }
        }
        self.sum_s += lag_s;
        self.count += 1;
    }
}

/// What a site did since the process started (Prometheus `_total` counters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Versions queued for the site.
    pub queued: u64,
    /// Bytes of the versions queued.
    pub queued_bytes: u64,
    /// Versions COMPLETED (backfill included).
    pub completed: u64,
    /// Bytes of the versions COMPLETED.
    pub completed_bytes: u64,
    /// Versions COMPLETED as backfill (not in the lag figures).
    pub backfill: u64,
    /// Versions FAILED, by reason (indexed as [`FailureReason::ALL`]).
    pub failures: [u64; FailureReason::ALL.len()],
    /// Bytes of the versions FAILED.
    pub failed_bytes: u64,
    /// Versions not copied, by reason (`superseded`, `gone`, ...).
    pub skipped: Vec<(String, u64)>,
}

/// The last failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Why: the reason.
    pub reason: FailureReason,
    /// The error, one line, credentials removed (see [`one_line`]).
    pub message: String,
}

/// Mean and largest lag of one 5-minute slot, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagPoint {
    /// Mean lag.
    pub mean_s: f64,
    /// Largest lag.
    pub max_s: f64,
}

/// A copy of one site's observations, taken under its lock (`Default`: nothing observed).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SiteView {
    /// Attempts failed in a row since the last success.
    pub consecutive_failures: u32,
    /// The last failed attempt, if any.
    pub last_error: Option<LastError>,
    /// When the last version completed (ms).
    pub last_completion_ms: Option<u64>,
    /// When work started waiting at an idle site (ms).
    pub waiting_since_ms: Option<u64>,
    /// Source write time of the oldest pending version (ms), as last set.
    pub oldest_pending_ms: Option<u64>,
    /// Median lag of the last 5 minutes (seconds).
    pub lag_p50_s: Option<f64>,
    /// 99th percentile lag of the last 5 minutes (seconds).
    pub lag_p99_s: Option<f64>,
    /// Versions completed per second over the last 60 s.
    pub ops_per_second: f64,
    /// Bytes completed per second over the last 60 s.
    pub bytes_per_second: f64,
    /// Failures of the last 24 h by reason (non-zero ones, in [`FailureReason::ALL`] order).
    pub failures_by_reason_24h: Vec<(FailureReason, u64)>,
    /// Counters since the process started.
    pub totals: Totals,
    /// The lag histogram since the process started.
    pub lag_histogram: LagHistogram,
}

/// One source bucket as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceView {
    /// The bucket.
    pub bucket: String,
    /// When its last full scan ended (ms).
    pub last_full_scan_ms: Option<u64>,
    /// Whether changes are watched live (inotify, events).
    pub watching: bool,
}

/// Everything observed about one site.
#[derive(Debug)]
struct SiteObs {
    consecutive_failures: u32,
    last_error: Option<LastError>,
    last_completion_ms: Option<u64>,
    waiting_since_ms: Option<u64>,
    oldest_pending_ms: Option<u64>,
    window: LagWindow,
    seconds: [SecondSlot; THROUGHPUT_SECONDS],
    history: Box<[HistorySlot]>,
    reasons: [ReasonSlot; REASON_HOURS],
    lag_histogram: LagHistogram,
    totals: Totals,
}

impl SiteObs {
    fn new() -> SiteObs {
        SiteObs {
            consecutive_failures: 0,
            last_error: None,
            last_completion_ms: None,
            waiting_since_ms: None,
            oldest_pending_ms: None,
            window: LagWindow::new(),
            seconds: [SecondSlot {
                second: u64::MAX,
                ..SecondSlot::default()
            }; THROUGHPUT_SECONDS],
            history: vec![
                HistorySlot {
                    slot: u64::MAX,
                    ..HistorySlot::default()
                };
                HISTORY_SLOTS
            ]
            .into_boxed_slice(),
            reasons: [ReasonSlot {
                hour: u64::MAX,
                ..ReasonSlot::default()
            }; REASON_HOURS],
            lag_histogram: LagHistogram::default(),
            totals: Totals::default(),
        }
    }

    fn work_seen(&mut self, now_ms: u64) {
        self.waiting_since_ms.get_or_insert(now_ms);
    }

    fn add_throughput(&mut self, now_ms: u64, bytes: u64) {
        let second = now_ms / 1000;
        let i = (second % THROUGHPUT_SECONDS as u64) as usize;
        if let Some(s) = self.seconds.get_mut(i) {
            if s.second != second {
                *s = SecondSlot {
                    second,
                    ops: 0,
                    bytes: 0,
                };
            }
            s.ops += 1;
            s.bytes = s.bytes.saturating_add(bytes);
        }
    }

    fn add_history(&mut self, now_ms: u64, lag_ms: u64) {
        let slot = now_ms / HISTORY_SLOT_MS;
        let i = (slot % HISTORY_SLOTS as u64) as usize;
        if let Some(h) = self.history.get_mut(i) {
            if h.slot != slot {
                *h = HistorySlot {
                    slot,
                    ..HistorySlot::default()
                };
            }
            h.count += 1;
            h.sum_ms = h.sum_ms.saturating_add(lag_ms);
            h.max_ms = h.max_ms.max(lag_ms);
        }
    }

    fn add_reason(&mut self, now_ms: u64, reason: FailureReason) {
        let hour = now_ms / HOUR_MS;
        let i = (hour % REASON_HOURS as u64) as usize;
        if let Some(r) = self.reasons.get_mut(i) {
            if r.hour != hour {
                *r = ReasonSlot {
                    hour,
                    ..ReasonSlot::default()
                };
            }
            if let Some(c) = r.counts.get_mut(reason.index()) {
                *c += 1;
            }
        }
    }

    /// See [`Observer::note_backlog`].
    fn note_backlog(&mut self, pending_ops: i64, paused: bool, now_ms: u64) {
        if paused {
            self.waiting_since_ms = None;
        } else if pending_ops > 0 || self.oldest_pending_ms.is_some() {
            self.work_seen(now_ms);
        } else {
            self.waiting_since_ms = None;
        }
    }

    fn view(&self, now_ms: u64) -> SiteView {
        let [p50, p99] = self.window.quantiles(now_ms, [0.5, 0.99]);
        let now_s = now_ms / 1000;
        let (ops, bytes) = self
            .seconds
            .iter()
            .filter(|s| s.second <= now_s && now_s - s.second < THROUGHPUT_SECONDS as u64)
            .fold((0u64, 0u64), |(o, b), s| {
                (o + s.ops, b.saturating_add(s.bytes))
            });
        let now_h = now_ms / HOUR_MS;
        let mut by_reason = [0u64; FailureReason::ALL.len()];
        for r in self
            .reasons
            .iter()
            .filter(|r| r.hour <= now_h && now_h - r.hour < REASON_HOURS as u64)
        {
            for (acc, c) in by_reason.iter_mut().zip(r.counts) {
                *acc += c;
            }
        }
        SiteView {
            consecutive_failures: self.consecutive_failures,
            last_error: self.last_error.clone(),
            last_completion_ms: self.last_completion_ms,
            waiting_since_ms: self.waiting_since_ms,
            oldest_pending_ms: self.oldest_pending_ms,
            lag_p50_s: p50,
            lag_p99_s: p99,
            ops_per_second: ops as f64 / THROUGHPUT_SECONDS as f64,
            bytes_per_second: bytes as f64 / THROUGHPUT_SECONDS as f64,
            failures_by_reason_24h: FailureReason::ALL
                .into_iter()
                .zip(by_reason)
                .filter(|(_, n)| *n > 0)
                .collect(),
            totals: self.totals.clone(),
            lag_histogram: self.lag_histogram.clone(),
        }
    }
}

/// The in-memory observations of every site and source of one engine (see the module doc).
pub struct Observer {
    clock: SharedClock,
    thresholds: Thresholds,
    order: Vec<String>,
    sites: HashMap<String, Mutex<SiteObs>>,
    sources: Mutex<Vec<SourceView>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("sites", &self.order)
            .field("thresholds", &self.thresholds)
            .finish()
    }
}

impl Observer {
    /// An observer of `sites` and the source buckets `sources`, judging states against
    /// `thresholds`, on `clock` (the engine's, so a manual clock drives it in tests).
    pub fn new(
        sites: &[String],
        sources: &[String],
        thresholds: Thresholds,
        clock: SharedClock,
    ) -> Arc<Observer> {
        let mut order = Vec::with_capacity(sites.len());
        let mut map = HashMap::with_capacity(sites.len());
        for s in sites {
            if !map.contains_key(s) {
                map.insert(s.clone(), Mutex::new(SiteObs::new()));
                order.push(s.clone());
            }
        }
        let mut src: Vec<SourceView> = Vec::new();
        for b in sources {
            if !src.iter().any(|s| &s.bucket == b) {
                src.push(SourceView {
                    bucket: b.clone(),
                    last_full_scan_ms: None,
                    watching: false,
                });
            }
        }
        Arc::new(Observer {
            clock,
            thresholds,
            order,
            sites: map,
            sources: Mutex::new(src),
        })
    }

    /// The sites observed, in configuration order.
    pub fn sites(&self) -> &[String] {
        &self.order
    }

    /// The thresholds the states are judged against.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// The observer's clock (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn with_site(&self, site: &str, change: impl FnOnce(&mut SiteObs, u64)) {
        match self.sites.get(site) {
            Some(obs) => {
                let now = self.clock.now_ms();
                change(&mut obs.lock(), now);
            }
            None => tracing::debug!(site, "Observation of an unknown site ignored."),
        }
    }

    /// A version of `bytes` was queued for `site`.
    pub fn queued(&self, site: &str, bytes: u64) {
        self.with_site(site, |o, now| {
            o.work_seen(now);
            o.totals.queued += 1;
            o.totals.queued_bytes = o.totals.queued_bytes.saturating_add(bytes);
        });
    }

    /// A copy attempt to `site` failed for `reason`; `message` is the error (cut to one line,
    /// credentials removed, before it is kept).
    /// Returns whether it begins a failing streak (the site's first failure since its last
    /// success), which the caller logs at once.
    pub fn attempt_failed(&self, site: &str, reason: FailureReason, message: &str) -> bool {
        let message = one_line(message);
        let mut first = false;
        self.with_site(site, |o, now| {
            o.work_seen(now);
            first = o.consecutive_failures == 0;
            o.consecutive_failures = o.consecutive_failures.saturating_add(1);
            o.last_error = Some(LastError {
                at_ms: now,
                reason,
                message,
            });
        });
        first
    }

    /// A copy attempt to `site` succeeded (ends a failing streak; `lastError` stays).
    pub fn attempt_succeeded(&self, site: &str) {
        self.with_site(site, |o, now| {
            o.work_seen(now);
            o.consecutive_failures = 0;
        });
    }

    /// A version of `bytes` became COMPLETED at `site`; `lag` is COMPLETED time minus the
    /// version's source write time, `None` for backfill (DESIGN section 5), which is counted
    /// apart and kept out of the lag figures. A completion is also a successful attempt.
    pub fn completed(&self, site: &str, bytes: u64, lag: Option<Duration>) {
        self.with_site(site, |o, now| {
            o.consecutive_failures = 0;
            o.last_completion_ms = Some(now);
            o.add_throughput(now, bytes);
            o.totals.completed += 1;
            o.totals.completed_bytes = o.totals.completed_bytes.saturating_add(bytes);
            match lag {
                None => o.totals.backfill += 1,
                Some(lag) => {
                    let ms = millis(lag);
                    o.window.add(now, ms);
                    o.add_history(now, ms);
                    o.lag_histogram.add(lag.as_secs_f64());
                }
            }
        });
    }

    /// A version of `bytes` became FAILED at `site` for `reason`.
    pub fn failed(&self, site: &str, reason: FailureReason, bytes: u64) {
        self.with_site(site, |o, now| {
            if let Some(c) = o.totals.failures.get_mut(reason.index()) {
                *c += 1;
            }
            o.totals.failed_bytes = o.totals.failed_bytes.saturating_add(bytes);
            o.add_reason(now, reason);
        });
    }

    /// A version was not copied to `site` for `reason` (`superseded`, `gone`, ...: a short,
    /// fixed word, it becomes a Prometheus label value).
    pub fn skipped(&self, site: &str, reason: &str) {
        self.with_site(site, |o, _| {
            let skipped = &mut o.totals.skipped;
            if let Some((_, n)) = skipped.iter_mut().find(|(r, _)| r == reason) {
                *n += 1;
            } else if skipped.len() < MAX_SKIP_REASONS - 1 {
                skipped.push((reason.to_string(), 1));
            } else if let Some((_, n)) = skipped.iter_mut().find(|(r, _)| r == "other") {
                *n += 1;
            } else {
                skipped.push(("other".to_string(), 1));
            }
        });
    }

    /// The source write time (ms since the epoch) of `site`'s oldest pending version, or
    /// `None` when nothing is pending (or it is not known).
    pub fn set_oldest_pending(&self, site: &str, oldest_ms: Option<u64>) {
        self.with_site(site, |o, now| {
            o.oldest_pending_ms = oldest_ms;
            if oldest_ms.is_some() {
                o.work_seen(now);
            }
        });
    }

    /// A full scan of the source bucket `bucket` ended.
    pub fn scan_done(&self, bucket: &str) {
        let now = self.clock.now_ms();
        self.with_source(bucket, |s| s.last_full_scan_ms = Some(now));
    }

    /// Whether changes of `bucket` are watched live (a directory watch, event notifications).
    pub fn set_watching(&self, bucket: &str, watching: bool) {
        self.with_source(bucket, |s| s.watching = watching);
    }

    fn with_source(&self, bucket: &str, change: impl FnOnce(&mut SourceView)) {
        let mut sources = self.sources.lock();
        if let Some(s) = sources.iter_mut().find(|s| s.bucket == bucket) {
            change(s);
            return;
        }
        if sources.len() >= MAX_SOURCES {
            return;
        }
        let mut s = SourceView {
            bucket: bucket.to_string(),
            last_full_scan_ms: None,
            watching: false,
        };
        change(&mut s);
        sources.push(s);
    }

    /// Tells the observer `site`'s pending ops counter and pause flag: work starts waiting when
    /// the counter turns positive at an idle site, and stops when it is back to 0 with no
    /// oldest pending. A paused site's work is not waiting on the site: its stall count
    /// starts again when it is resumed.
    pub fn note_backlog(&self, site: &str, pending_ops: i64, paused: bool) {
        self.with_site(site, |o, now| o.note_backlog(pending_ops, paused, now));
    }

    /// A copy of `site`'s observations now; `None` for a site it does not observe.
    pub fn view(&self, site: &str) -> Option<SiteView> {
        let obs = self.sites.get(site)?;
        let now = self.clock.now_ms();
        let view = obs.lock().view(now);
        Some(view)
    }

    /// `site`'s state now, given its pause flag and pending ops counter (which it also notes,
    /// see [`Observer::note_backlog`]); `ok` for a site it does not observe.
    pub fn state(&self, site: &str, paused: bool, pending_ops: i64) -> SiteState {
        let Some(obs) = self.sites.get(site) else {
            return SiteState::Ok;
        };
        let now = self.clock.now_ms();
        // Read from the observations themselves: a whole view (quantiles, totals) is not
        // needed for the five figures a state is judged on.
        let mut o = obs.lock();
        o.note_backlog(pending_ops, paused, now);
        let inputs = StateInputs {
            paused,
            consecutive_failures: o.consecutive_failures,
            pending_ops,
            oldest_pending_ms: o.oldest_pending_ms,
            last_completion_ms: o.last_completion_ms,
            waiting_since_ms: o.waiting_since_ms,
        };
        drop(o);
        site_state(&inputs, &self.thresholds, now)
    }

    /// Mean and largest lag of each of the `slots` newest 5-minute slots of `site`, oldest
    /// first (the last one is the current, partial slot); `None` for a slot without a lag.
    /// Slots line up with the store's metrics buckets.
    pub fn lag_history(&self, site: &str, slots: usize) -> Vec<Option<LagPoint>> {
        let slots = slots.min(HISTORY_SLOTS);
        let Some(obs) = self.sites.get(site) else {
            return vec![None; slots];
        };
        let current = self.clock.now_ms() / HISTORY_SLOT_MS;
        let obs = obs.lock();
        (0..slots as u64)
            .rev()
            .map(|back| {
                let slot = current.checked_sub(back)?;
                let h = obs.history.get((slot % HISTORY_SLOTS as u64) as usize)?;
                (h.slot == slot && h.count > 0).then(|| LagPoint {
                    mean_s: h.sum_ms as f64 / h.count as f64 / 1000.0,
                    max_s: h.max_ms as f64 / 1000.0,
                })
            })
            .collect()
    }

    /// The source buckets, configured ones first.
    pub fn sources(&self) -> Vec<SourceView> {
        self.sources.lock().clone()
    }
}

/// The source buckets a configuration names: `[source] buckets` for S3, the directory's last
/// segment (after resolving links, as the file source does) for a file source.
pub fn source_buckets(config: &Config) -> Vec<String> {
    let Some(src) = &config.source else {
        return Vec::new();
    };
    match &src.backend {
        SourceBackend::File(f) => std::fs::canonicalize(&f.path)
            .unwrap_or_else(|_| f.path.clone())
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .into_iter()
            .collect(),
        SourceBackend::S3(s3) => s3.buckets.clone(),
    }
}

/// Notes every site's pending ops counter and pause flag every [`SAMPLE_EVERY`] until `token`
/// is cancelled, so a site whose work waits is judged `stalled` on time even when nobody reads
/// its status.
pub async fn run_sampler(
    observer: Arc<Observer>,
    store: Arc<dyn StateStore>,
    control: Arc<Control>,
    token: CancellationToken,
) {
    loop {
        for site in observer.sites() {
            let paused = control.current(site).paused;
            match store.pending(site).await {
                Ok((ops, _)) => observer.note_backlog(site, ops, paused),
                Err(e) => tracing::debug!(site, error = %e, "Cannot sample the backlog."),
            }
        }
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// Words whose value, after `=` or `:`, is a credential.
const SECRET_WORDS: [&str; 12] = [
    "signature",
    "credential",
    "token",
    "secret",
    "password",
    "passwd",
    "accesskey",
    "access_key",
    "apikey",
    "api_key",
    "sig",
    "sharedkey",
];

/// An error message as `lastError` keeps it: one line (control characters and runs of
/// whitespace become one space), at most [`MAX_MESSAGE`] characters, and no credentials: the
/// user and query of a URL, the value of `name=value` pairs whose name is a credential's
/// (`Signature`, `X-Amz-Credential`, `token`, ...) and the word after `Authorization:`,
/// `Bearer` or `SharedKey` are replaced by `***`.
pub fn one_line(message: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut redact_next = false;
    for word in message.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if redact_next {
            out.push("***".to_string());
            redact_next = false;
            continue;
        }
        let lower = word.to_ascii_lowercase();
        let bare = lower.trim_end_matches([':', ',']);
        if matches!(
            bare,
            "authorization" | "bearer" | "sharedkey" | "aws4-hmac-sha256"
        ) {
            redact_next = true;
            out.push(word.to_string());
            continue;
        }
        out.push(redact_word(word));
    }
    let line = out.join(" ");
    if line.chars().count() <= MAX_MESSAGE {
        return line;
    }
    let mut cut: String = line.chars().take(MAX_MESSAGE - 1).collect();
    cut.push('…');
    cut
}

fn redact_word(word: &str) -> String {
    if let Some(at) = word.find("://") {
        let (scheme, rest) = word.split_at(at + 3);
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rfind('@') {
            Some(i) => format!("***@{}", &authority[i + 1..]),
            None => authority.to_string(),
        };
        let tail = match tail.find('?') {
            Some(i) => format!("{}?***", &tail[..i]),
            None => tail.to_string(),
        };
        return format!("{scheme}{authority}{tail}");
    }
    // name=value pairs, possibly several joined by `&`, `,` or `;`.
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while !rest.is_empty() {
        let end = rest.find(['&', ',', ';']).map_or(rest.len(), |i| i + 1);
        let (part, next) = rest.split_at(end);
        match part.split_once('=') {
            Some((name, _)) if is_secret_name(name) => {
                out.push_str(name);
                out.push_str("=***");
                if let Some(sep) = part.chars().last().filter(|c| matches!(c, '&' | ',' | ';')) {
                    out.push(sep);
                }
            }
            _ => out.push_str(part),
        }
        rest = next;
    }
    out
}

fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let n = n.trim_start_matches(['"', '\'', '(', '[', '{']);
    let last = n.rsplit(['-', '.']).next().unwrap_or(n);
    SECRET_WORDS.iter().any(|w| last == *w || n.ends_with(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const T0: u64 = 1_700_000_000_000;

    fn observer(clock: &Arc<ManualClock>) -> Arc<Observer> {
        Observer::new(
            &["a".to_string(), "b".to_string()],
            &["photos".to_string()],
            Thresholds::default(),
            clock.clone(),
        )
    }

    fn inputs() -> StateInputs {
        StateInputs::default()
    }

    #[test]
    fn states_apply_in_the_design_order() {
        let t = Thresholds::default();
        let now = T0;
        assert_eq!(site_state(&inputs(), &t, now), SiteState::Ok);
        let everything = StateInputs {
            paused: true,
            consecutive_failures: 3,
            pending_ops: 5,
            oldest_pending_ms: Some(now - 3_600_000),
            last_completion_ms: Some(now - 3_600_000),
            waiting_since_ms: Some(now - 3_600_000),
        };
        assert_eq!(site_state(&everything, &t, now), SiteState::Paused);
        let i = StateInputs {
            paused: false,
            ..everything
        };
        assert_eq!(site_state(&i, &t, now), SiteState::Failing);
        let i = StateInputs {
            consecutive_failures: 2,
            ..i
        };
        assert_eq!(site_state(&i, &t, now), SiteState::Stalled);
        let i = StateInputs {
            last_completion_ms: Some(now - 1_000),
            ..i
        };
        assert_eq!(site_state(&i, &t, now), SiteState::Behind);
        let i = StateInputs {
            oldest_pending_ms: Some(now - 60_000),
            ..i
        };
        assert_eq!(site_state(&i, &t, now), SiteState::Ok, "60 s is not older");
    }

    #[test]
    fn stalled_counts_from_when_work_started_waiting_without_an_earlier_completion() {
        let t = Thresholds::default();
        let waiting = StateInputs {
            pending_ops: 1,
            waiting_since_ms: Some(T0),
            ..inputs()
        };
        assert_eq!(site_state(&waiting, &t, T0 + 119_999), SiteState::Ok);
        assert_eq!(site_state(&waiting, &t, T0 + 120_000), SiteState::Stalled);
        // A completion long ago does not make new work stalled at once.
        let old_completion = StateInputs {
            last_completion_ms: Some(T0 - 3_600_000),
            ..waiting
        };
        assert_eq!(site_state(&old_completion, &t, T0 + 1_000), SiteState::Ok);
        // A completion after work started waiting restarts the count.
        let recent = StateInputs {
            last_completion_ms: Some(T0 + 100_000),
            ..waiting
        };
        assert_eq!(site_state(&recent, &t, T0 + 200_000), SiteState::Ok);
        assert_eq!(site_state(&recent, &t, T0 + 220_000), SiteState::Stalled);
        // Nothing waiting: never stalled, whatever the time since the last completion.
        let idle = StateInputs {
            last_completion_ms: Some(T0),
            ..inputs()
        };
        assert_eq!(site_state(&idle, &t, T0 + 86_400_000), SiteState::Ok);
        // A negative pending counter (replays) is not work.
        let negative = StateInputs {
            pending_ops: -2,
            waiting_since_ms: Some(T0),
            ..inputs()
        };
        assert_eq!(site_state(&negative, &t, T0 + 86_400_000), SiteState::Ok);
    }

    #[test]
    fn thresholds_are_parameters() {
        let t = Thresholds {
            lag_target: Duration::from_secs(5),
            stall_after: Duration::from_secs(10),
        };
        let i = StateInputs {
            oldest_pending_ms: Some(T0),
            waiting_since_ms: Some(T0),
            ..inputs()
        };
        assert_eq!(site_state(&i, &t, T0 + 5_000), SiteState::Ok);
        assert_eq!(site_state(&i, &t, T0 + 5_001), SiteState::Behind);
        assert_eq!(site_state(&i, &t, T0 + 10_000), SiteState::Stalled);
    }

    #[test]
    fn a_site_fails_after_three_failed_attempts_in_a_row_until_a_success() {
        let clock = ManualClock::new(T0);
        let o = observer(&clock);
        let state = |o: &Observer| o.state("a", false, 1);
        o.attempt_failed("a", FailureReason::Timeout, "no answer");
        o.attempt_failed("a", FailureReason::Timeout, "no answer");
        assert_eq!(state(&o), SiteState::Ok);
        o.attempt_succeeded("a");
        o.attempt_failed("a", FailureReason::Unreachable, "refused");
        o.attempt_failed("a", FailureReason::Unreachable, "refused");
        assert_eq!(state(&o), SiteState::Ok);
        clock.advance(1_000);
        o.attempt_failed(
            "a",
            FailureReason::ServerError,
            "HTTP 503\nfrom https://user:pw@s3.example/b/k?X-Amz-Signature=abc",
        );
        assert_eq!(state(&o), SiteState::Failing);
        assert_eq!(o.state("a", true, 1), SiteState::Paused);
        assert_eq!(o.state("b", false, 0), SiteState::Ok);
        let err = o.view("a").unwrap().last_error.unwrap();
        assert_eq!(err.at_ms, T0 + 1_000);
        assert_eq!(err.reason, FailureReason::ServerError);
        assert_eq!(err.message, "HTTP 503 from https://***@s3.example/b/k?***");
        // A completion is a success too.
        o.completed("a", 10, Some(Duration::from_millis(500)));
        assert_eq!(state(&o), SiteState::Ok);
        assert!(o.view("a").unwrap().last_error.is_some(), "lastError stays");
    }

    #[test]
    fn a_site_with_waiting_work_and_no_completion_stalls() {
        let clock = ManualClock::new(T0);
        let o = observer(&clock);
        assert_eq!(o.state("a", false, 3), SiteState::Ok);
        clock.advance(119_000);
        assert_eq!(o.state("a", false, 3), SiteState::Ok);
        clock.advance(1_000);
        assert_eq!(o.state("a", false, 3), SiteState::Stalled);
        o.completed("a", 1, Some(Duration::from_secs(1)));
        assert_eq!(o.state("a", false, 2), SiteState::Ok);
        // Drained: the next work starts a new count.
        assert_eq!(o.state("a", false, 0), SiteState::Ok);
        clock.advance(600_000);
        o.queued("a", 5);
        clock.advance(60_000);
        assert_eq!(o.state("a", false, 1), SiteState::Ok);
        clock.advance(60_000);
        assert_eq!(o.state("a", false, 1), SiteState::Stalled);
        // Behind, not stalled, while completions flow.
        o.set_oldest_pending("a", Some(clock.now_ms() - 90_000));
        o.completed("a", 1, Some(Duration::from_secs(90)));
        assert_eq!(o.state("a", false, 1), SiteState::Behind);
        let v = o.view("a").unwrap();
        assert_eq!(v.oldest_pending_ms, Some(clock.now_ms() - 90_000));
    }

    #[test]
    fn a_resumed_site_has_stall_after_again_before_it_stalls() {
        let clock = ManualClock::new(T0);
        let o = observer(&clock);
        assert_eq!(o.state("a", false, 3), SiteState::Ok);
        assert_eq!(o.state("a", true, 3), SiteState::Paused);
        clock.advance(3_600_000);
        o.attempt_failed("a", FailureReason::Timeout, "slow");
        o.note_backlog("a", 3, true);
        assert_eq!(o.state("a", true, 3), SiteState::Paused);
        // Resumed: the count starts now.
        assert_eq!(o.state("a", false, 3), SiteState::Ok);
        clock.advance(119_000);
        assert_eq!(o.state("a", false, 3), SiteState::Ok);
        clock.advance(1_000);
        assert_eq!(o.state("a", false, 3), SiteState::Stalled);
    }

    #[test]
    fn lag_quantiles_cover_the_last_five_minutes_within_the_bucket_error() {
        let clock = ManualClock::new(T0);
        let o = observer(&clock);
        assert_eq!(o.view("a").unwrap().lag_p50_s, None);
        // 100 completions with lags 1..=100 s.
        for s in 1..=100u64 {
            o.completed("a", 1, Some(Duration::from_secs(s)));
        }
        let v = o.view("a").unwrap();
        let p50 = v.lag_p50_s.unwrap();
        let p99 = v.lag_p99_s.unwrap();
        assert!((p50 - 50.0).abs() / 50.0 < 0.0625, "{p50}");
        assert!((p99 - 99.0).abs() / 99.0 < 0.0625, "{p99}");
        // Backfill is counted apart.
        o.completed("a", 1, None);
        let v = o.view("a").unwrap();
        assert_eq!(v.totals.backfill, 1);
        assert_eq!(v.totals.completed, 101);
        assert_eq!(v.lag_histogram.count, 100);
        assert_eq!(v.lag_histogram.sum_s, 5050.0);
        let le = |bound: f64| {
            let i = LAG_BUCKETS_S.iter().position(|b| *b == bound).unwrap();
            v.lag_histogram.cumulative[i]
        };
        assert_eq!(le(0.1), 0);
        assert_eq!(le(10.0), 10);
        assert_eq!(le(60.0), 60);
        assert_eq!(le(120.0), 100);
        // Five minutes later the window is empty; the histogram keeps everything.
        clock.advance(5 * 60_000);
        let v = o.view("a").unwrap();
        assert_eq!(v.lag_p50_s, None);
        assert_eq!(v.lag_histogram.count, 100);
        // Sub-8 ms lags are exact, and 0 is 0.
        o.completed("a", 1, Some(Duration::from_millis(3)));
        assert_eq!(o.view("a").unwrap().lag_p99_s, Some(0.003));
        assert_eq!(log_value(log_index(0)), 0.0);
        for ms in [1u64, 7, 8, 1_000, 123_456_789, u64::MAX] {
            let v = log_value(log_index(ms));
            if ms < u64::MAX {
                assert!((v - ms as f64).abs() / ms as f64 <= 0.0625, "{ms}: {v}");
            }
        }
    }

    #[test]
    fn throughput_is_the_mean_of_the_last_sixty_seconds() {
        let clock = ManualClock::new(T0);
        let o = observer(&clock);
        for _ in 0..120 {
            o.completed("a", 1_000, Some(Duration::from_secs(1)));
            clock.advance(500);
        }
        let v = o.view("a").unwrap();
        assert!(
            (v.ops_per_second - 2.0).abs() < 0.05,
            "{}",
            v.ops_per_second
        );
        assert!((v.bytes_per_second - 2_000.0).abs() < 50.0);
        clock.advance(61_000);
        let v = o.view("a").unwrap();
        assert_eq!(v.ops_per_second, 0.0);
        assert_eq!(v.totals.completed_bytes, 120_000);
    }

    #[test]
    fn failures_by_reason_cover_the_last_24_hours() {
        let clock = ManualClock::new(T0);
        let o = observer(&clock);
        o.failed("a", FailureReason::Timeout, 10);
        o.failed("a", FailureReason::Timeout, 10);
        clock.advance(3_600_000);
        o.failed("a", FailureReason::AccessDenied, 5);
        let v = o.view("a").unwrap();
        assert_eq!(
            v.failures_by_reason_24h,
            vec![
                (FailureReason::Timeout, 2),
                (FailureReason::AccessDenied, 1)
            ]
        );
        assert_eq!(v.totals.failed_bytes, 25);
        clock.advance(23 * 3_600_000);
        let v = o.view("a").unwrap();
        assert_eq!(
            v.failures_by_reason_24h,
            vec![(FailureReason::AccessDenied, 1)]
        );
        assert_eq!(v.totals.failures[FailureReason::Timeout.index()], 2);
    }

    #[test]
    fn lag_history_lines_up_with_five_minute_slots() {
        let clock = ManualClock::new(T0 - T0 % HISTORY_SLOT_MS);
        let o = observer(&clock);
        o.completed("a", 1, Some(Duration::from_secs(2)));
        o.completed("a", 1, Some(Duration::from_secs(4)));
        clock.advance(2 * HISTORY_SLOT_MS);
        o.completed("a", 1, Some(Duration::from_secs(10)));
        let h = o.lag_history("a", 4);
        assert_eq!(h.len(), 4);
        assert_eq!(h[0], None);
        assert_eq!(
            h[1],
            Some(LagPoint {
                mean_s: 3.0,
                max_s: 4.0
            })
        );
        assert_eq!(h[2], None);
        assert_eq!(
            h[3],
            Some(LagPoint {
                mean_s: 10.0,
                max_s: 10.0
            })
        );
        // A slot a day old is gone.
        clock.advance(HISTORY_SLOTS as u64 * HISTORY_SLOT_MS);
        assert!(o
            .lag_history("a", HISTORY_SLOTS)
            .iter()
            .all(Option::is_none));
        assert_eq!(o.lag_history("nope", 3), vec![None; 3]);
    }

    #[test]
    fn skips_sources_and_unknown_names_stay_bounded() {
        let clock = ManualClock::new(T0);
        let o = observer(&clock);
        o.skipped("a", "superseded");
        o.skipped("a", "superseded");
        for i in 0..100 {
            o.skipped("a", &format!("r{i}"));
        }
        let skipped = o.view("a").unwrap().totals.skipped;
        assert_eq!(skipped.len(), MAX_SKIP_REASONS);
        assert_eq!(skipped[0], ("superseded".to_string(), 2));
        let other = skipped.iter().find(|(r, _)| r == "other").unwrap().1;
        assert_eq!(other, 100 - (MAX_SKIP_REASONS as u64 - 2));
        // Unknown sites are ignored.
        o.completed("zzz", 1, None);
        assert!(o.view("zzz").is_none());
        assert_eq!(o.state("zzz", false, 9), SiteState::Ok);
        // Sources: configured first, others added up to the cap.
        o.scan_done("photos");
        o.set_watching("photos", true);
        o.scan_done("other");
        for i in 0..(2 * MAX_SOURCES) {
            o.set_watching(&format!("b{i}"), true);
        }
        let s = o.sources();
        assert_eq!(s.len(), MAX_SOURCES);
        assert_eq!(
            s[0],
            SourceView {
                bucket: "photos".into(),
                last_full_scan_ms: Some(T0),
                watching: true
            }
        );
        assert_eq!(s[1].bucket, "other");
        assert!(!s[1].watching);
    }

    #[test]
    fn messages_keep_one_line_and_no_credentials() {
        assert_eq!(one_line("a\n\tb\r\n  c"), "a b c");
        assert_eq!(
            one_line("GET http://h:9000/b/k?versionId=1 failed"),
            "GET http://h:9000/b/k?*** failed"
        );
        assert_eq!(
            one_line("X-Amz-Credential=AKIA/2020,Signature=deadbeef other=1"),
            "X-Amz-Credential=***,Signature=*** other=1"
        );
        assert_eq!(
            one_line("Authorization: AWS4-HMAC-SHA256 Credential=x"),
            "Authorization: *** Credential=***"
        );
        assert_eq!(one_line("Bearer abc.def token=q"), "Bearer *** token=***");
        assert_eq!(
            one_line("SharedKey devstoreaccount1:c2ln denied"),
            "SharedKey *** denied"
        );
        assert_eq!(one_line("key=photos/a.jpg"), "key=photos/a.jpg");
        let long = "x".repeat(1_000);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE);
        assert!(cut.ends_with('…'));
        assert_eq!(
            one_line("é".repeat(400).as_str()).chars().count(),
            MAX_MESSAGE
        );
    }

    #[test]
    fn source_buckets_come_from_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        let cfg = Config::parse(&format!(
            "[source]\ntype = \"file\"\npath = {:?}\n",
            inbox.display().to_string()
        ))
        .unwrap();
        assert_eq!(source_buckets(&cfg), vec!["inbox".to_string()]);
        assert!(source_buckets(&Config::default()).is_empty());
    }
}
