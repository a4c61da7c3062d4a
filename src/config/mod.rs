//! Configuration: one TOML file (DESIGN section 7), parsed, then validated as a whole.
//!
//! `Config::load` reads and parses; `Config::validate` gathers every problem into one
//! [`ConfigError::Invalid`] naming each field (`sites[1].bucket: ...`). `backbeat check-config`
//! runs both; `serve` refuses to start (exit code 2) on any problem.
//!
//! Secrets (`access_key`, `secret_key`, `key`, `token`) may be inline or read from the
//! environment variable named by the `*_env` twin. They are never logged: the `Debug` output
//! of this tree redacts them.

pub mod defaults;

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::durability::Durability;

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

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
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
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind.
    #[serde(default = "defaults::host")]
    pub host: String,
    /// Port to bind (0 picks a free one).
    #[serde(default = "defaults::port")]
    pub port: u16,
    /// Client networks allowed to call the API (CIDR or single address).
    #[serde(default = "defaults::allow_from")]
    pub allow_from: Vec<String>,
    /// Bearer token required on every API request, inline.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Environment variable holding the bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: defaults::host(),
            port: defaults::port(),
            allow_from: defaults::allow_from(),
            token: None,
            token_env: None,
        }
    }
}

/// Which log implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    /// The embedded sled log.
    #[default]
    Sled,
    /// Kafka (Cargo feature `kafka`).
    Kafka,
}

/// Which state store implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded sled store.
    #[default]
    Sled,
    /// MongoDB (Cargo feature `mongodb`).
    Mongodb,
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Log implementation.
    #[serde(default)]
    pub log: LogKind,
    /// State store implementation.
    #[serde(default)]
    pub store: StoreKind,
    /// Directory of the embedded database.
    #[serde(default = "defaults::data_path")]
    pub path: PathBuf,
    /// When a write is acknowledged: `every`, `group` or `interval`.
    #[serde(default)]
    pub durability: Durability,
    /// Background flush period in `interval` mode (also its loss window).
    #[serde(default = "defaults::flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Partitions of each topic (fixed once a topic exists).
    #[serde(default = "defaults::partitions")]
    pub partitions: u32,
    /// How often consumed records are deleted and expired state swept.
    #[serde(default = "defaults::retention_interval_s")]
    pub retention_interval_s: u64,
    /// `[storage.kafka]`.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// `[storage.mongodb]`.
    #[serde(default)]
    pub mongodb: Option<MongoConfig>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            log: LogKind::Sled,
            store: StoreKind::Sled,
            path: defaults::data_path(),
            durability: Durability::Group,
            flush_interval_ms: defaults::flush_interval_ms(),
            partitions: defaults::partitions(),
            retention_interval_s: defaults::retention_interval_s(),
            kafka: None,
            mongodb: None,
        }
    }
}

/// `[storage.kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port]`.
    pub brokers: String,
    /// Prefix of every topic name (and of every consumer group name, so two deployments
    /// sharing a cluster with different prefixes never join each other's groups).
    #[serde(default)]
    pub topic_prefix: String,
    /// Replication factor of the topics the engine creates; -1 = the broker's default
    /// (`default.replication.factor`).
    #[serde(default = "defaults::kafka_replication_factor")]
    pub replication_factor: i32,
    /// Consumer `session.timeout.ms`: a member silent this long leaves the group.
    #[serde(default = "defaults::kafka_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Consumer `heartbeat.interval.ms` (well below the session timeout).
    #[serde(default = "defaults::kafka_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Consumer `max.poll.interval.ms`: longest gap between two polls before the member is
    /// considered stuck and its partitions reassigned.
    #[serde(default = "defaults::kafka_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// Producer `request.timeout.ms` (the original's 5 s) and the bound of admin and metadata
    /// requests.
    #[serde(default = "defaults::kafka_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

/// `[storage.mongodb]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// Connection string.
    pub uri: Secret,
    /// Database name.
    #[serde(default = "defaults::mongo_database")]
    pub database: String,
}

/// Kind of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// An S3-compatible server.
    S3,
    /// A local directory.
    File,
    /// Zenko's MongoDB metadata (Cargo feature `mongodb`).
    Mongodb,
}

/// `[source]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Kind of source.
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// S3 endpoint URL.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 region.
    #[serde(default = "defaults::region")]
    pub region: String,
    /// S3 access key, inline.
    #[serde(default)]
    pub access_key: Option<Secret>,
    /// Environment variable holding the S3 access key.
    #[serde(default)]
    pub access_key_env: Option<String>,
    /// S3 secret key, inline.
    #[serde(default)]
    pub secret_key: Option<Secret>,
    /// Environment variable holding the S3 secret key.
    #[serde(default)]
    pub secret_key_env: Option<String>,
    /// Buckets to replicate from.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// Seconds between versions listings (0 turns scanning off).
    #[serde(default = "defaults::scan_interval_s")]
    pub scan_interval_s: u64,
    /// Use path-style addressing against the S3 endpoint.
    #[serde(default = "defaults::path_style")]
    pub path_style: bool,
    /// Directory watched by a `file` source (the bucket name is its last segment).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// Kind of destination site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SiteKind {
    /// Any S3-compatible endpoint.
    #[serde(rename = "aws_s3")]
    AwsS3,
    /// Azure Blob Storage.
    #[serde(rename = "azure")]
    Azure,
    /// A local directory.
    #[serde(rename = "file")]
    File,
}

impl SiteKind {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            SiteKind::AwsS3 => "aws_s3",
            SiteKind::Azure => "azure",
            SiteKind::File => "file",
        }
    }
}

/// `[[sites]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Site name, as used in rules, the API and `StorageClass`.
    pub name: String,
    /// Kind of site.
    #[serde(rename = "type")]
    pub kind: SiteKind,
    /// Endpoint URL (`aws_s3`, `azure`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (`aws_s3`).
    #[serde(default = "defaults::region")]
    pub region: String,
    /// Target bucket (`aws_s3`).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Access key (`aws_s3`), inline.
    #[serde(default)]
    pub access_key: Option<Secret>,
    /// Environment variable holding the access key.
    #[serde(default)]
    pub access_key_env: Option<String>,
    /// Secret key (`aws_s3`), inline.
    #[serde(default)]
    pub secret_key: Option<Secret>,
    /// Environment variable holding the secret key.
    #[serde(default)]
    pub secret_key_env: Option<String>,
    /// Path-style addressing (`aws_s3`).
    #[serde(default = "defaults::path_style")]
    pub path_style: bool,
    /// Storage account (`azure`).
    #[serde(default)]
    pub account: Option<String>,
    /// Account key, base64 (`azure`), inline.
    #[serde(default)]
    pub key: Option<Secret>,
    /// Environment variable holding the account key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// Target container (`azure`).
    #[serde(default)]
    pub container: Option<String>,
    /// Target directory (`file`).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

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

/// `[engine]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Pipeline stages this process runs, by name (`populator`, `replication`, `status`).
    /// Several processes sharing a Kafka log split the work between them; see
    /// [`EngineConfig::runs`].
    #[serde(default = "defaults::stages")]
    pub stages: Vec<String>,
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
        self.stages.iter().any(|s| s == stage.as_str())
    }
}

fn section<T: DeserializeOwned>(
    name: &str,
    value: toml::Value,
    errors: &mut Vec<String>,
) -> Option<T> {
    match value.try_into::<T>() {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e.message().trim().replace('\n', " ");
            errors.push(format!("{name}: {msg}"));
            None
        }
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Resolves a secret given inline or through an environment variable; records a problem
/// naming `field` when neither is usable.
fn resolve_secret(
    field: &str,
    inline: &Option<Secret>,
    env: &Option<String>,
    required: bool,
    errors: &mut Vec<String>,
) -> Option<String> {
    match (inline, env) {
        (Some(_), Some(_)) => {
            errors.push(format!(
                "{field}: give either {field} or {field}_env, not both"
            ));
            None
        }
        (Some(s), None) => {
            if s.0.is_empty() {
                errors.push(format!("{field}: must not be empty"));
            }
            Some(s.0.clone())
        }
        (None, Some(var)) => {
            if !is_env_name(var) {
                errors.push(format!(
                    "{field}_env: {var:?} is not a valid environment variable name"
                ));
                return None;
            }
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => {
                    errors.push(format!(
                        "{field}_env: environment variable {var} is not set"
                    ));
                    None
                }
            }
        }
        (None, None) => {
            if required {
                errors.push(format!("{field}: missing (give {field} or {field}_env)"));
            }
            None
        }
    }
}

fn check_url(field: &str, url: &Option<String>, errors: &mut Vec<String>) {
    match url {
        None => errors.push(format!("{field}: missing")),
        Some(u) => {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.split("://")
                    .nth(1)
                    .map(|r| !r.is_empty())
                    .unwrap_or(false)
                && !u.contains(char::is_whitespace);
            if !ok {
                errors.push(format!("{field}: {u:?} is not an http:// or https:// URL"));
            }
        }
    }
}

/// Checks a site or bucket-like name used as an identifier.
pub fn valid_site_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name != "all"
}

/// Parses a CIDR (`127.0.0.1/8`) or a single address (`::1`).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Some(n);
    }
    s.parse::<IpAddr>().ok().map(ipnet::IpNet::from)
}

impl Config {
    /// Reads and parses `path`, then validates it.
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

    /// Parses and validates TOML text.
    ///
    /// # Errors
    /// `ConfigError::Invalid` listing every problem, each naming its field.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::Invalid(vec![format!(
                "syntax: {}",
                e.to_string().trim().replace('\n', " ")
            )])
        })?;
        let mut errors = Vec::new();
        let mut cfg = Config::default();
        for (key, value) in table {
            match key.as_str() {
                "server" => {
                    if let Some(v) = section("server", value, &mut errors) {
                        cfg.server = v;
                    }
                }
                "storage" => {
                    if let Some(v) = section("storage", value, &mut errors) {
                        cfg.storage = v;
                    }
                }
                "source" => cfg.source = section("source", value, &mut errors),
                "sites" => match value {
                    toml::Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            if let Some(s) = section(&format!("sites[{i}]"), item, &mut errors) {
                                cfg.sites.push(s);
                            }
                        }
                    }
                    _ => errors.push("sites: must be an array of tables ([[sites]])".into()),
                },
                "replication" => {
                    if let Some(v) = section("replication", value, &mut errors) {
                        cfg.replication = v;
                    }
                }
                "shutdown" => {
                    if let Some(v) = section("shutdown", value, &mut errors) {
                        cfg.shutdown = v;
                    }
                }
                "engine" => {
                    if let Some(v) = section("engine", value, &mut errors) {
                        cfg.engine = v;
                    }
                }
                other => errors.push(format!("{other}: unknown section")),
            }
        }
        cfg.collect_problems(&mut errors);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Checks a configuration built in code (tests, defaults).
    ///
    /// # Errors
    /// `ConfigError::Invalid` listing every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        self.collect_problems(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// The bearer token required by the API, if configured.
    pub fn api_token(&self) -> Option<String> {
        let mut ignored = Vec::new();
        resolve_secret(
            "server.token",
            &self.server.token,
            &self.server.token_env,
            false,
            &mut ignored,
        )
    }

    fn collect_problems(&self, e: &mut Vec<String>) {
        // [server]
        let s = &self.server;
        if s.host.trim().is_empty() {
            e.push("server.host: must not be empty".into());
        } else if s.host.parse::<IpAddr>().is_err()
            && !s
                .host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            e.push(format!(
                "server.host: {:?} is neither an IP address nor a host name",
                s.host
            ));
        }
        for (i, net) in s.allow_from.iter().enumerate() {
            if parse_net(net).is_none() {
                e.push(format!(
                    "server.allow_from[{i}]: {net:?} is not a CIDR or IP address"
                ));
            }
        }
        if s.token.is_some() || s.token_env.is_some() {
            resolve_secret("server.token", &s.token, &s.token_env, false, e);
        }

        // [storage]
        let st = &self.storage;
        if st.path.as_os_str().is_empty() {
            e.push("storage.path: must not be empty".into());
        }
        if st.partitions == 0 || st.partitions > 10_000 {
            e.push(format!(
                "storage.partitions: {} must be between 1 and 10000",
                st.partitions
            ));
        }
        if st.flush_interval_ms == 0 || st.flush_interval_ms > 60_000 {
            e.push(format!(
                "storage.flush_interval_ms: {} must be between 1 and 60000",
                st.flush_interval_ms
            ));
        }
        if st.retention_interval_s == 0 {
            e.push("storage.retention_interval_s: must be at least 1".into());
        }
        if st.log == LogKind::Kafka {
            if !cfg!(feature = "kafka") {
                e.push("storage.log: \"kafka\" needs a build with the kafka feature".into());
            }
            match &st.kafka {
                None => e.push("storage.kafka: required when storage.log = \"kafka\"".into()),
                Some(k) => {
                    if k.brokers.trim().is_empty() {
                        e.push("storage.kafka.brokers: must not be empty".into());
                    }
                    if k.replication_factor == 0 || k.replication_factor < -1 {
                        e.push(format!(
                            "storage.kafka.replication_factor: {} must be -1 (broker default) or at least 1",
                            k.replication_factor
                        ));
                    }
                    if !k
                        .topic_prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
                    {
                        e.push(format!(
                            "storage.kafka.topic_prefix: {:?} must be characters of [a-zA-Z0-9._-]",
                            k.topic_prefix
                        ));
                    }
                    if k.session_timeout_ms < 1000 || k.session_timeout_ms > 3_600_000 {
                        e.push(format!(
                            "storage.kafka.session_timeout_ms: {} must be between 1000 and 3600000",
                            k.session_timeout_ms
                        ));
                    }
                    if k.heartbeat_interval_ms == 0
                        || k.heartbeat_interval_ms >= k.session_timeout_ms
                    {
                        e.push(format!(
                            "storage.kafka.heartbeat_interval_ms: {} must be at least 1 and below session_timeout_ms",
                            k.heartbeat_interval_ms
                        ));
                    }
                    if k.max_poll_interval_ms < k.session_timeout_ms
                        || k.max_poll_interval_ms > 86_400_000
                    {
                        e.push(format!(
                            "storage.kafka.max_poll_interval_ms: {} must be between session_timeout_ms and 86400000",
                            k.max_poll_interval_ms
                        ));
                    }
                    if k.request_timeout_ms < 100 || k.request_timeout_ms > 900_000 {
                        e.push(format!(
                            "storage.kafka.request_timeout_ms: {} must be between 100 and 900000",
                            k.request_timeout_ms
                        ));
                    }
                }
            }
        }
        if st.store == StoreKind::Mongodb {
            if !cfg!(feature = "mongodb") {
                e.push("storage.store: \"mongodb\" needs a build with the mongodb feature".into());
            }
            match &st.mongodb {
                None => e.push("storage.mongodb: required when storage.store = \"mongodb\"".into()),
                Some(m) => {
                    if !m.uri.0.starts_with("mongodb://") && !m.uri.0.starts_with("mongodb+srv://")
                    {
                        e.push(
                            "storage.mongodb.uri: must start with mongodb:// or mongodb+srv://"
                                .into(),
                        );
                    }
                    if m.database.is_empty() {
                        e.push("storage.mongodb.database: must not be empty".into());
                    }
                }
            }
        }

        // [source]
        if let Some(src) = &self.source {
            match src.kind {
                SourceKind::S3 => {
                    check_url("source.endpoint", &src.endpoint, e);
                    resolve_secret(
                        "source.access_key",
                        &src.access_key,
                        &src.access_key_env,
                        true,
                        e,
                    );
                    resolve_secret(
                        "source.secret_key",
                        &src.secret_key,
                        &src.secret_key_env,
                        true,
                        e,
                    );
                    if src.buckets.is_empty() {
                        e.push("source.buckets: at least one bucket is required".into());
                    }
                    for (i, b) in src.buckets.iter().enumerate() {
                        if b.is_empty() || b.contains('/') {
                            e.push(format!("source.buckets[{i}]: {b:?} is not a bucket name"));
                        }
                    }
                }
                SourceKind::File => match &src.path {
                    None => e.push("source.path: required for a file source".into()),
                    Some(p) if p.file_name().is_none() => e.push(format!(
                        "source.path: {} has no last segment to name the bucket",
                        p.display()
                    )),
                    Some(_) => {}
                },
                SourceKind::Mongodb => {
                    if !cfg!(feature = "mongodb") {
                        e.push(
                            "source.type: \"mongodb\" needs a build with the mongodb feature"
                                .into(),
                        );
                    }
                }
            }
            if src.region.is_empty() {
                e.push("source.region: must not be empty".into());
            }
        }

        // [[sites]]
        let mut names = HashSet::new();
        for (i, site) in self.sites.iter().enumerate() {
            let f = |field: &str| format!("sites[{i}].{field}");
            if !valid_site_name(&site.name) {
                e.push(format!(
                    "{}: {:?} must be 1-64 characters of [A-Za-z0-9._-] and not \"all\"",
                    f("name"),
                    site.name
                ));
            } else if !names.insert(site.name.as_str()) {
                e.push(format!(
                    "{}: {:?} is used by another site",
                    f("name"),
                    site.name
                ));
            }
            match site.kind {
                SiteKind::AwsS3 => {
                    check_url(&f("endpoint"), &site.endpoint, e);
                    match &site.bucket {
                        None => e.push(format!("{}: missing", f("bucket"))),
                        Some(b) if b.is_empty() || b.contains('/') => {
                            e.push(format!("{}: {b:?} is not a bucket name", f("bucket")))
                        }
                        Some(_) => {}
                    }
                    resolve_secret(
                        &f("access_key"),
                        &site.access_key,
                        &site.access_key_env,
                        true,
                        e,
                    );
                    resolve_secret(
                        &f("secret_key"),
                        &site.secret_key,
                        &site.secret_key_env,
                        true,
                        e,
                    );
                }
                SiteKind::Azure => {
                    check_url(&f("endpoint"), &site.endpoint, e);
                    if site.account.as_deref().map(str::is_empty).unwrap_or(true) {
                        e.push(format!("{}: missing", f("account")));
                    }
                    if site.container.as_deref().map(str::is_empty).unwrap_or(true) {
                        e.push(format!("{}: missing", f("container")));
                    }
                    if let Some(k) = resolve_secret(&f("key"), &site.key, &site.key_env, true, e) {
                        if !is_base64(&k) {
                            e.push(format!("{}: the account key must be base64", f("key")));
                        }
                    }
                }
                SiteKind::File => {
                    if site
                        .path
                        .as_ref()
                        .map(|p| p.as_os_str().is_empty())
                        .unwrap_or(true)
                    {
                        e.push(format!("{}: missing", f("path")));
                    }
                }
            }
        }

        // [replication]
        let r = &self.replication;
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
        let rt = &r.retry;
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
        for (i, rule) in r.rules.iter().enumerate() {
            if rule.bucket.is_empty() {
                e.push(format!("replication.rules[{i}].bucket: must not be empty"));
            }
            if rule.sites.is_empty() {
                e.push(format!(
                    "replication.rules[{i}].sites: at least one site is required"
                ));
            }
            for (j, s) in rule.sites.iter().enumerate() {
                if !self.sites.iter().any(|site| &site.name == s) {
                    e.push(format!(
                        "replication.rules[{i}].sites[{j}]: unknown site {s:?}"
                    ));
                }
            }
        }

        // [shutdown]
        if self.shutdown.grace_period_s > 3600 {
            e.push(format!(
                "shutdown.grace_period_s: {} must be at most 3600",
                self.shutdown.grace_period_s
            ));
        }

        // [engine]
        self.engine_problems(e);
    }

    fn engine_problems(&self, e: &mut Vec<String>) {
        let stages = &self.engine.stages;
        if stages.is_empty() {
            e.push("engine.stages: at least one stage is required".into());
            return;
        }
        let before = e.len();
        let mut seen = HashSet::new();
        for (i, name) in stages.iter().enumerate() {
            if Stage::from_name(name).is_none() {
                e.push(format!(
                    "engine.stages[{i}]: unknown stage {name:?} (expected populator, replication or status)"
                ));
            } else if !seen.insert(name.as_str()) {
                e.push(format!("engine.stages[{i}]: {name:?} is listed twice"));
            }
        }
        if e.len() > before {
            return;
        }
        let runs = |s: Stage| self.engine.runs(s);
        let all = Stage::ALL.into_iter().all(runs);
        if self.storage.log == LogKind::Sled && !all {
            e.push(
                "engine.stages: a sled log belongs to one process, which must run every stage \
                 (split the stages between processes with storage.log = \"kafka\")"
                    .into(),
            );
        } else if self.storage.store == StoreKind::Sled
            && runs(Stage::Populator) != runs(Stage::Status)
        {
            e.push(
                "engine.stages: with a sled store, populator and status run in the same process \
                 (the status processor completes what the populator recorded in this store)"
                    .into(),
            );
        }
    }
}

fn is_base64(s: &str) -> bool {
    !s.is_empty()
        && s.len().is_multiple_of(4)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "[[sites]]\nname='a'\ntype='aws_s3'\nendpoint='http://x'\nbucket='b'\naccess_key='AKSECRET'\nsecret_key='SKSECRET'\n",
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("AKSECRET") && !dbg.contains("SKSECRET"));
    }
}
