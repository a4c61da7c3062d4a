//! `[storage]`: the log (sled or Kafka) and the state store (sled or MongoDB), and the settings
//! of the embedded database they may share.

use std::path::PathBuf;

use serde::Deserialize;

use super::defaults;
use super::fields::{deserialize, Fields};
use super::secret::Secret;
use crate::durability::Durability;

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
    /// The embedded database's page cache (MiB). sled's memory follows the size of the
    /// database more than this, but a small cache keeps a small machine's RSS down.
    #[serde(default = "defaults::cache_mb")]
    pub cache_mb: u64,
    /// `[storage.kafka]`.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// `[storage.mongodb]` (read field by field, not by serde: its `uri` may come from the
    /// environment).
    #[serde(skip)]
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
            cache_mb: defaults::cache_mb(),
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
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// Connection string (it may hold credentials): `uri`, or the environment variable
    /// `uri_env` names, resolved when read.
    pub uri: Secret,
    /// Database name.
    pub database: String,
}

/// Reads and checks `[storage]`, `[storage.kafka]` and `[storage.mongodb]`.
pub(super) fn read(mut value: toml::Value, e: &mut Vec<String>) -> Option<StorageConfig> {
    // `[storage.mongodb]` is read field by field (its `uri` is a secret with an `_env` twin).
    let mongodb = value.as_table_mut().and_then(|t| t.remove("mongodb"));
    let given_mongodb = mongodb.is_some();
    let mut st: StorageConfig = deserialize("storage", value, e)?;
    st.mongodb = mongodb.and_then(|m| read_mongodb(m, e));
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
    if st.cache_mb == 0 || st.cache_mb > 1 << 20 {
        e.push(format!(
            "storage.cache_mb: {} must be between 1 and 1048576",
            st.cache_mb
        ));
    }
    if st.log == LogKind::Kafka {
        if !cfg!(feature = "kafka") {
            e.push("storage.log: \"kafka\" needs a build with the kafka feature".into());
        }
        match &st.kafka {
            None => e.push("storage.kafka: required when storage.log = \"kafka\"".into()),
            Some(k) => check_kafka(k, e),
        }
    }
    if st.store == StoreKind::Mongodb {
        if !cfg!(feature = "mongodb") {
            e.push("storage.store: \"mongodb\" needs a build with the mongodb feature".into());
        }
        if !given_mongodb {
            e.push("storage.mongodb: required when storage.store = \"mongodb\"".into());
        }
    }
    Some(st)
}

fn check_kafka(k: &KafkaConfig, e: &mut Vec<String>) {
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
    if k.heartbeat_interval_ms == 0 || k.heartbeat_interval_ms >= k.session_timeout_ms {
        e.push(format!(
            "storage.kafka.heartbeat_interval_ms: {} must be at least 1 and below session_timeout_ms",
            k.heartbeat_interval_ms
        ));
    }
    if k.max_poll_interval_ms < k.session_timeout_ms || k.max_poll_interval_ms > 86_400_000 {
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

/// Reads and checks `[storage.mongodb]`: `uri` or `uri_env`, `database`.
fn read_mongodb(value: toml::Value, e: &mut Vec<String>) -> Option<MongoConfig> {
    let mut f = Fields::new("storage.mongodb".into(), value, e)?;
    let uri = f.secret("uri", true);
    let database: String = f.or("database", defaults::mongo_database);
    if uri
        .as_ref()
        .is_some_and(|u| !u.0.starts_with("mongodb://") && !u.0.starts_with("mongodb+srv://"))
    {
        // The value itself is not repeated: it may hold credentials.
        f.problem("uri", "must start with mongodb:// or mongodb+srv://");
    }
    if database.is_empty() {
        f.problem("database", "must not be empty");
    }
    f.finish();
    Some(MongoConfig {
        uri: uri?,
        database,
    })
}
