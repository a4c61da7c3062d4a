//! `[gc]`: garbage collection (DESIGN section 9): how often the collector looks for what
//! replication left behind (replicated files of a transient source, multipart uploads and
//! temporary files no copy owns, the state of removed sites), and when an upload another
//! process started counts as abandoned.

use serde::Deserialize;

use super::defaults;
use super::fields::deserialize;

/// `[gc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Seconds between collection passes (one also runs at start).
    #[serde(default = "defaults::gc_interval_s")]
    pub interval_s: u64,
    /// An upload started by another engine process is abandoned once this old (this process's
    /// own uploads are known to it; with the embedded store no other process writes).
    #[serde(default = "defaults::upload_max_age_s")]
    pub upload_max_age_s: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_s: defaults::gc_interval_s(),
            upload_max_age_s: defaults::upload_max_age_s(),
        }
    }
}

/// Reads and checks `[gc]`.
pub(super) fn read(value: toml::Value, e: &mut Vec<String>) -> Option<GcConfig> {
    let gc: GcConfig = deserialize("gc", value, e)?;
    if gc.interval_s == 0 {
        e.push("gc.interval_s: must be at least 1".into());
    }
    if gc.upload_max_age_s < 60 {
        e.push(format!(
            "gc.upload_max_age_s: {} is shorter than a copy can take; at least 60",
            gc.upload_max_age_s
        ));
    }
    Some(gc)
}
