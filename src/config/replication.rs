//! `[replication]`: copies in flight, the multipart threshold, the retry policy
//! (`[replication.retry]`) and the rules of buckets without their own replication
//! configuration (`[[replication.rules]]`).
//!
//! Problems name a rule by its bucket and prefix (`rule "photos/docs/".sites: unknown site
//! "x"`), or by its position (`replication.rules[0]`) when it has no bucket.

use serde::Deserialize;

use super::defaults;
use super::fields::{deserialize, is_s3_bucket_name, not_an_s3_bucket_name};
use super::sites::site_at;
use super::source::{SourceBackend, SourceConfig};

/// `[replication]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Copies in flight per site.
    #[serde(default = "defaults::concurrency")]
    pub concurrency: usize,
    /// Objects of at least this many MB (10^6 bytes) go by multipart.
    #[serde(default = "defaults::mpu_threshold_mb")]
    pub mpu_threshold_mb: u64,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Rules for buckets without their own replication configuration.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Seconds: a version first seen later than this after its write is backfill (not lag),
    /// and a site whose oldest pending version is older is `behind`.
    #[serde(default = "defaults::lag_target_s")]
    pub lag_target_s: u64,
    /// Seconds: a site with work waiting and no completion for this long is `stalled`.
    #[serde(default = "defaults::stall_after_s")]
    pub stall_after_s: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            concurrency: defaults::concurrency(),
            mpu_threshold_mb: defaults::mpu_threshold_mb(),
            retry: RetryConfig::default(),
            rules: Vec::new(),
            lag_target_s: defaults::lag_target_s(),
            stall_after_s: defaults::stall_after_s(),
        }
    }
}

/// `[replication.retry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per entry before a replay.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// Seconds after which an entry stops retrying (once it retried at least once).
    #[serde(default = "defaults::timeout_s")]
    pub timeout_s: u64,
    /// First backoff.
    #[serde(default = "defaults::backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// Largest backoff.
    #[serde(default = "defaults::backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Backoff growth factor.
    #[serde(default = "defaults::backoff_factor")]
    pub factor: f64,
    /// Random fraction added or removed from each backoff.
    #[serde(default = "defaults::jitter")]
    pub jitter: f64,
    /// Whole-entry re-attempts before FAILED.
    #[serde(default = "defaults::replay")]
    pub replay: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: defaults::max_retries(),
            timeout_s: defaults::timeout_s(),
            backoff_min_ms: defaults::backoff_min_ms(),
            backoff_max_ms: defaults::backoff_max_ms(),
            factor: defaults::backoff_factor(),
            jitter: defaults::jitter(),
            replay: defaults::replay(),
        }
    }
}

/// `[[replication.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Source bucket.
    pub bucket: String,
    /// Key prefix the rule applies to.
    #[serde(default)]
    pub prefix: String,
    /// Destination sites.
    pub sites: Vec<String>,
    /// Whether the rule is enabled.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
}

/// Largest `lag_target_s` and `stall_after_s`: a week.
const MAX_THRESHOLD_S: u64 = 7 * 24 * 3600;

/// Reads and checks `[replication]` (its rules' sites are checked by [`check_rule_sites`], once
/// every site is known).
pub(super) fn read(value: toml::Value, e: &mut Vec<String>) -> Option<ReplicationConfig> {
    let r: ReplicationConfig = deserialize("replication", value, e)?;
    if r.concurrency == 0 || r.concurrency > 1000 {
        e.push(format!(
            "replication.concurrency: {} must be between 1 and 1000",
            r.concurrency
        ));
    }
    if r.mpu_threshold_mb < 5 || r.mpu_threshold_mb > 5_000_000 {
        e.push(format!(
            "replication.mpu_threshold_mb: {} must be between 5 and 5000000",
            r.mpu_threshold_mb
        ));
    }
    for (name, v) in [
        ("lag_target_s", r.lag_target_s),
        ("stall_after_s", r.stall_after_s),
    ] {
        // 0 would make every site with anything waiting `behind` or `stalled` at once.
        if v == 0 || v > MAX_THRESHOLD_S {
            e.push(format!(
                "replication.{name}: {v} must be between 1 and {MAX_THRESHOLD_S} (a week)"
            ));
        }
    }
    check_retry(&r.retry, e);
    for (i, rule) in r.rules.iter().enumerate() {
        if rule.bucket.is_empty() {
            e.push(format!("{}.bucket: must not be empty", rule_at(i, rule)));
        }
        if rule.sites.is_empty() {
            e.push(format!(
                "{}.sites: at least one site is required",
                rule_at(i, rule)
            ));
        }
    }
    Some(r)
}

/// How problems name rule `i`: by its bucket and prefix (`rule "photos"`, `rule
/// "photos/docs/"`), by its position when it has no bucket.
fn rule_at(i: usize, rule: &RuleConfig) -> String {
    if rule.bucket.is_empty() {
        format!("replication.rules[{i}]")
    } else if rule.prefix.is_empty() {
        format!("rule {:?}", rule.bucket)
    } else {
        format!("rule {:?}", format!("{}/{}", rule.bucket, rule.prefix))
    }
}

fn check_retry(rt: &RetryConfig, e: &mut Vec<String>) {
    if rt.backoff_min_ms == 0 {
        e.push("replication.retry.backoff_min_ms: must be at least 1".into());
    }
    if rt.backoff_max_ms < rt.backoff_min_ms {
        e.push(format!(
            "replication.retry.backoff_max_ms: {} is below backoff_min_ms {}",
            rt.backoff_max_ms, rt.backoff_min_ms
        ));
    }
    if !(rt.factor.is_finite() && rt.factor >= 1.0) {
        e.push(format!(
            "replication.retry.factor: {} must be at least 1",
            rt.factor
        ));
    }
    if !(rt.jitter.is_finite() && (0.0..1.0).contains(&rt.jitter)) {
        e.push(format!(
            "replication.retry.jitter: {} must be in [0, 1)",
            rt.jitter
        ));
    }
    if rt.timeout_s == 0 {
        e.push("replication.retry.timeout_s: must be at least 1".into());
    }
    if rt.replay > 100 {
        e.push(format!(
            "replication.retry.replay: {} must be at most 100",
            rt.replay
        ));
    }
}

/// Checks that every site a rule names is one of `sites` (the names of every `[[sites]]`
/// entry, usable or not).
pub(super) fn check_rule_sites(rules: &[RuleConfig], sites: &[String], e: &mut Vec<String>) {
    for (i, rule) in rules.iter().enumerate() {
        for s in rule.sites.iter().filter(|s| !sites.contains(s)) {
            e.push(format!("{}.sites: unknown site {s:?}", rule_at(i, rule)));
        }
    }
}

/// Checks that a site keeping keys as they are (`bucket_match = true`) is fed by the rules of
/// one source bucket at most: two buckets would write the same keys there (DESIGN section 3).
pub(super) fn check_namespaces(
    rules: &[RuleConfig],
    sites: &[super::SiteConfig],
    e: &mut Vec<String>,
) {
    for site in sites.iter().filter(|s| s.bucket_match) {
        let mut buckets: Vec<&str> = rules
            .iter()
            .filter(|r| r.sites.contains(&site.name))
            .map(|r| r.bucket.as_str())
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        if buckets.len() > 1 {
            e.push(format!(
                "{}.bucket_match: the site keeps keys as they are, but rules of {} source \
                 buckets ({}) replicate to it, whose keys would overwrite each other; set \
                 bucket_match = false (keys become <bucket>/<key>) or send one bucket only",
                site_at(&site.name),
                buckets.len(),
                buckets.join(", ")
            ));
        }
    }
}

/// Checks every rule's bucket: a valid S3 bucket name (unless it is a directory source's
/// bucket, named by its directory), and one the source provides (a directory source's bucket
/// is its directory's name). Without a source the rules are not used, and only their names are
/// checked.
pub(super) fn check_rule_buckets(
    rules: &[RuleConfig],
    source: Option<&SourceConfig>,
    e: &mut Vec<String>,
) {
    let provided = source.map(SourceConfig::buckets);
    let from_directory = matches!(source.map(|s| &s.backend), Some(SourceBackend::File(_)));
    for (i, rule) in rules
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.bucket.is_empty())
    {
        if !from_directory && !is_s3_bucket_name(&rule.bucket) {
            e.push(format!(
                "{}.bucket: {}",
                rule_at(i, rule),
                not_an_s3_bucket_name(&rule.bucket)
            ));
            continue;
        }
        if let Some(buckets) = provided.as_ref().filter(|b| !b.contains(&rule.bucket)) {
            e.push(format!(
                "{}.bucket: the source provides no bucket {:?} (it provides {})",
                rule_at(i, rule),
                rule.bucket,
                buckets.join(", ")
            ));
        }
    }
}
