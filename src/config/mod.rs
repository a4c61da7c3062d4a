//! Configuration: one TOML file (DESIGN section 7) read into typed sections, every problem
//! gathered into one [`ConfigError::Invalid`] naming its field (`site "aws-1".bucket: ...`;
//! sites and rules are named by name, not by position).
//! `backbeat check-config` reads a file; `serve` refuses to start (exit code 2) on any problem.
//! A [`Config`] that [`Config::parse`] returns is valid: what uses it checks nothing again.
//!
//! One file per section, each with its types and its reader (which checks it):
//! `server.rs`, `storage.rs`, `source.rs`, `sites.rs` (with `s3_client.rs`, the S3 fields the
//! `s3` source and `aws_s3` sites share), `replication.rs`, `engine.rs` (`[engine]` and
//! `[shutdown]`), `gc.rs` (`[gc]`). `fields.rs` reads values so that problems name their field; `secret.rs` owns
//! secrets; `defaults.rs` every default. The checks that span sections (rules name known sites;
//! the stages fit the log and store) run once every section is read.
//!
//! Secrets (`access_key`, `secret_key`, `key`, `token`, the MongoDB `uri`) may be inline or read from the
//! environment variable named by the `*_env` twin. They are never logged: the `Debug` output
//! of this tree redacts them.

pub mod defaults;
mod engine;
mod fields;
mod gc;
mod replication;
mod s3_client;
mod secret;
mod server;
mod sites;
mod source;
mod storage;

use std::path::{Path, PathBuf};

pub use self::engine::{EngineConfig, ShutdownConfig, Stage};
pub use self::fields::is_s3_bucket_name;
pub use self::gc::GcConfig;
pub use self::replication::{ReplicationConfig, RetryConfig, RuleConfig};
pub use self::s3_client::S3ClientConfig;
pub use self::secret::Secret;
pub use self::server::{parse_net, ServerConfig};
pub use self::sites::{
    valid_site_name, AwsS3SiteConfig, AzureSiteConfig, FileSiteConfig, SiteBackend, SiteConfig,
    SiteKind,
};
pub use self::source::{FileSourceConfig, S3SourceConfig, SourceBackend, SourceConfig};
pub use self::storage::{KafkaConfig, LogKind, MongoConfig, StorageConfig, StoreKind};

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// One or more problems, each naming its field.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// The whole configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The REST API server.
    pub server: ServerConfig,
    /// The log and the state store.
    pub storage: StorageConfig,
    /// Where versions come from; none = the engine only serves its API.
    pub source: Option<SourceConfig>,
    /// Destination sites.
    pub sites: Vec<SiteConfig>,
    /// Replication processing.
    pub replication: ReplicationConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// What this engine process runs.
    pub engine: EngineConfig,
    /// Garbage collection.
    pub gc: GcConfig,
}

impl Config {
    /// Reads and parses `path`, checking every section.
    ///
    /// # Errors
    /// `ConfigError::Read` when unreadable; `ConfigError::Invalid` listing every problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses TOML text, checking every section (an absent section takes its defaults).
    ///
    /// # Errors
    /// `ConfigError::Invalid` listing every problem, each naming its field.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        // The parser's message shows the line and a caret under the spot: kept on its lines,
        // indented under the problem so the list stays readable.
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::Invalid(vec![format!(
                "syntax: {}",
                e.to_string().trim_end().replace('\n', "\n    ")
            )])
        })?;
        let mut e = Vec::new();
        let mut cfg = Config::default();
        // The names of every [[sites]] entry, usable or not, for the rules.
        let mut site_names = Vec::new();
        // A section that cannot be read keeps its defaults, so the checks spanning sections
        // report only their own problems.
        for (key, value) in table {
            match key.as_str() {
                "server" => cfg.server = server::read(value, &mut e).unwrap_or_default(),
                "storage" => cfg.storage = storage::read(value, &mut e).unwrap_or_default(),
                "source" => cfg.source = source::read(value, &mut e),
                "sites" => (cfg.sites, site_names) = sites::read(value, &mut e),
                "replication" => {
                    cfg.replication = replication::read(value, &mut e).unwrap_or_default()
                }
                "shutdown" => {
                    cfg.shutdown = engine::read_shutdown(value, &mut e).unwrap_or_default()
                }
                "engine" => cfg.engine = engine::read_engine(value, &mut e).unwrap_or_default(),
                "gc" => cfg.gc = gc::read(value, &mut e).unwrap_or_default(),
                other => e.push(format!("{other}: unknown section")),
            }
        }
        replication::check_rule_sites(&cfg.replication.rules, &site_names, &mut e);
        replication::check_namespaces(&cfg.replication.rules, &cfg.sites, &mut e);
        replication::check_rule_buckets(&cfg.replication.rules, cfg.source.as_ref(), &mut e);
        engine::check_split(&cfg.engine, &cfg.storage, &mut e);
        if e.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(e))
        }
    }

    /// The bearer token required by the API, if configured.
    pub fn api_token(&self) -> Option<String> {
        self.server.token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durability::Durability;

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.server.port, 8900);
        assert_eq!(c.storage.durability, Durability::Group);
        assert!(c.source.is_none());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = Config::parse(
            "[[sites]]\nname='a'\ntype='aws_s3'\nendpoint='http://x'\nbucket='bkt'\naccess_key='AKSECRET'\nsecret_key='SKSECRET'\n\
             [storage.mongodb]\nuri='mongodb://user:MONGOSECRET@h'\n",
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("AKSECRET") && !dbg.contains("SKSECRET"));
        assert!(!dbg.contains("MONGOSECRET"));
    }
}
