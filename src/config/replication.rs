//! `[replication]`: copies in flight, the multipart threshold, the retry policy
//! (`[replication.retry]`) and the rules of buckets without their own replication
//! configuration (`[[replication.rules]]`).

use serde::Deserialize;

use super::defaults;
use super::fields::deserialize;

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
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            concurrency: defaults::concurrency(),
            mpu_threshold_mb: defaults::mpu_threshold_mb(),
            retry: RetryConfig::default(),
            rules: Vec::new(),
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
    check_retry(&r.retry, e);
    for (i, rule) in r.rules.iter().enumerate() {
        if rule.bucket.is_empty() {
            e.push(format!("replication.rules[{i}].bucket: must not be empty"));
        }
        if rule.sites.is_empty() {
            e.push(format!(
                "replication.rules[{i}].sites: at least one site is required"
            ));
        }
    }
    Some(r)
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
        for (j, s) in rule.sites.iter().enumerate() {
            if !sites.contains(s) {
                e.push(format!(
                    "replication.rules[{i}].sites[{j}]: unknown site {s:?}"
                ));
            }
        }
    }
}
