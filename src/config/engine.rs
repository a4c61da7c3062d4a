//! `[engine]` and `[shutdown]`: which pipeline stages this process runs, whether that split
//! fits the log and store it shares, and how long in-flight work gets when it stops.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

use super::defaults;
use super::fields::{deserialize, Fields};
use super::storage::{LogKind, StorageConfig, StoreKind};

/// A pipeline stage an engine process can run (`[engine] stages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The populator and the scanner: source changes and webhooks into the replication topic.
    Populator,
    /// One replication processor per site: copies and per-site outcomes.
    Replication,
    /// The status processor: outcomes into the state store.
    Status,
}

impl Stage {
    /// Every stage, in data-flow order.
    pub const ALL: [Stage; 3] = [Stage::Populator, Stage::Replication, Stage::Status];

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Populator => "populator",
            Stage::Replication => "replication",
            Stage::Status => "status",
        }
    }

    /// The stage of a configuration name.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage equals its configuration name (`stages == ["populator", "status"]`).
impl PartialEq<&str> for Stage {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

/// `[engine]`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Pipeline stages this process runs, each once, in the order written (`populator`,
    /// `replication`, `status`). Several processes sharing a Kafka log split the work between
    /// them; see [`EngineConfig::runs`].
    pub stages: Vec<Stage>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            stages: defaults::stages(),
        }
    }
}

impl EngineConfig {
    /// Whether this process runs `stage`.
    pub fn runs(&self, stage: Stage) -> bool {
        self.stages.contains(&stage)
    }

    /// The stages, comma-separated (for logs).
    pub fn stage_names(&self) -> String {
        let names: Vec<&str> = self.stages.iter().map(|s| s.as_str()).collect();
        names.join(",")
    }
}

/// Reads `[engine]`: each entry of `stages` a known stage, listed once, at least one.
pub(super) fn read_engine(value: toml::Value, e: &mut Vec<String>) -> Option<EngineConfig> {
    let mut f = Fields::new("engine".into(), value, e)?;
    let names: Option<Vec<String>> = f.optional("stages");
    f.finish();
    let Some(names) = names else {
        return Some(EngineConfig::default());
    };
    if names.is_empty() {
        e.push("engine.stages: at least one stage is required".into());
        return None;
    }
    let mut stages = Vec::with_capacity(names.len());
    let mut seen = HashSet::new();
    for (i, name) in names.iter().enumerate() {
        match Stage::from_name(name) {
            None => e.push(format!(
                "engine.stages[{i}]: unknown stage {name:?} (expected populator, replication or status)"
            )),
            Some(_) if !seen.insert(name.as_str()) => {
                e.push(format!("engine.stages[{i}]: {name:?} is listed twice"));
            }
            Some(stage) => stages.push(stage),
        }
    }
    (stages.len() == names.len()).then_some(EngineConfig { stages })
}

/// Checks that the stages this process runs fit the log and store it uses.
pub(super) fn check_split(engine: &EngineConfig, storage: &StorageConfig, e: &mut Vec<String>) {
    let runs = |s: Stage| engine.runs(s);
    let all = Stage::ALL.into_iter().all(runs);
    if storage.log == LogKind::Sled && !all {
        e.push(
            "engine.stages: a sled log belongs to one process, which must run every stage \
             (split the stages between processes with storage.log = \"kafka\")"
                .into(),
        );
    } else if storage.store == StoreKind::Sled && runs(Stage::Populator) != runs(Stage::Status) {
        e.push(
            "engine.stages: with a sled store, populator and status run in the same process \
             (the status processor completes what the populator recorded in this store)"
                .into(),
        );
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds given to in-flight work after SIGTERM.
    #[serde(default = "defaults::grace_period_s")]
    pub grace_period_s: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period_s: defaults::grace_period_s(),
        }
    }
}

/// Reads and checks `[shutdown]`.
pub(super) fn read_shutdown(value: toml::Value, e: &mut Vec<String>) -> Option<ShutdownConfig> {
    let s: ShutdownConfig = deserialize("shutdown", value, e)?;
    if s.grace_period_s > 3600 {
        e.push(format!(
            "shutdown.grace_period_s: {} must be at most 3600",
            s.grace_period_s
        ));
    }
    Some(s)
}
