//! The durable log: topics, partitions, consumer groups and committed offsets (Kafka's model).
//!
//! The pipeline talks to the [`Log`] trait only. [`SledLog`] is the embedded implementation;
//! `KafkaLog` (module `kafka`) sits behind the `kafka` feature. The engine wraps either in a
//! [`RetryingLog`]: connected once the topics exist, and retrying what fails while the
//! brokers are out of reach ([`LogError::Unavailable`]).
//!
//! Semantics every implementation keeps:
//! - A record goes to the partition chosen by a hash of its key (murmur2, as Kafka's default
//!   partitioner), so records with one key stay in order.
//! - `append` returns only when its records are durable (per the durability mode), with the
//!   position given to each record, in input order.
//! - A consumer group's committed offset is the *next* offset it will read (Kafka's convention);
//!   a group with no commit starts at the earliest retained record.
//! - Retention deletes records below every group's committed offset, never above.

pub mod codec;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod retrying;
pub mod sled;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

#[cfg(feature = "kafka")]
pub use self::kafka::KafkaLog;
pub use self::retrying::RetryingLog;
pub use self::sled::SledLog;

/// How entries are written to a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFormat {
    /// The original's JSON (Kafka).
    Json,
    /// Compact bincode (the embedded log).
    Binary,
}
/// The topic the populator feeds and each site's processor consumes.
pub const TOPIC_REPLICATION: &str = "backbeat-replication";
/// The topic processors report per-site outcomes on; the status processor consumes it.
pub const TOPIC_REPLICATION_STATUS: &str = "backbeat-replication-status";

/// One record of a topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Partitioning key (`bucket/key` for replication entries).
    pub key: Vec<u8>,
    /// Payload.
    pub value: Vec<u8>,
    /// Milliseconds since the epoch when the record was produced.
    pub timestamp_ms: u64,
}

impl Record {
    /// A record stamped with the current time.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Record {
        use crate::clock::Clock;
        Record {
            key: key.into(),
            value: value.into(),
            timestamp_ms: crate::clock::SystemClock.now_ms(),
        }
    }
}

/// Where a record sits in a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Position {
    /// Partition number.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

/// A record handed to a consumer, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Where the record sits.
    pub position: Position,
    /// The record.
    pub record: Record,
}

/// A topic's layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
}

/// Records of a partition removed (by the broker's retention) before a consumer group read
/// them: the group's next offset `from` was below the partition's earliest record `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetLoss {
    /// Our topic name.
    pub topic: String,
    /// Our group name.
    pub group: String,
    /// Partition number.
    pub partition: u32,
    /// First lost offset.
    pub from: u64,
    /// One past the last lost offset (the earliest record left).
    pub to: u64,
}

/// Consumer lag of one group on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// Partition number.
    pub partition: u32,
    /// The group's committed offset (next to read).
    pub committed: u64,
    /// The partition's end offset (next to be written).
    pub end: u64,
    /// `end - committed`.
    pub lag: u64,
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The topic was never created.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// A partition number outside the topic.
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Partition asked for.
        partition: u32,
    },
    /// A stored record failed its checksum or could not be decoded. It is never returned as
    /// data; the consumer stays before it until an operator skips it with a commit.
    #[error("corrupt record at {topic}/{partition}@{offset}: {reason}")]
    Corrupt {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
        /// What failed.
        reason: String,
    },
    /// The on-disk format is newer or older than this binary understands.
    #[error("log format version {found} is not supported (expected {expected})")]
    UnsupportedFormat {
        /// Version found on disk.
        found: u32,
        /// Version this binary writes.
        expected: u32,
    },
    /// Another consumer of the same group is open in this process.
    #[error("consumer group {group} already has an open consumer on {topic}")]
    GroupBusy {
        /// Group name.
        group: String,
        /// Topic name.
        topic: String,
    },
    /// Invalid argument (empty topic name, zero partitions, commit beyond the end).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The storage engine failed; the log refuses further writes.
    #[error("log storage failure")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The log cannot be reached for now (Kafka: no broker answers, a request timed out, a
    /// partition has no leader during an election); the same call may succeed later.
    /// [`RetryingLog`] retries these.
    #[error("log unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LogError {
    /// Whether the error is transient: the log is unreachable for now, not broken.
    pub fn is_transient(&self) -> bool {
        matches!(self, LogError::Unavailable(_))
    }
}

impl From<crate::durability::DbError> for LogError {
    fn from(e: crate::durability::DbError) -> Self {
        LogError::Storage(Box::new(e))
    }
}

impl From<::sled::Error> for LogError {
    fn from(e: ::sled::Error) -> Self {
        LogError::Storage(Box::new(e))
    }
}

/// Opens the log `[storage] log` names (sled in `db`, or Kafka) and creates the replication
/// topics with `[storage] partitions` (an existing topic keeps its partition count, with a
/// warning).
///
/// # Errors
/// [`LogError::Invalid`] when the configured log is not part of this build or lacks its
/// section; any error of opening it or creating the topics.
pub async fn open(
    storage: &crate::config::StorageConfig,
    db: Option<&crate::durability::SledDb>,
) -> Result<std::sync::Arc<dyn Log>, LogError> {
    let log = open_client(storage, db)?;
    create_topics(log.as_ref(), storage).await?;
    Ok(log)
}

/// Opens the log `[storage] log` names without talking to it yet (Kafka's clients connect
/// lazily): the part of [`open`] that fails only on a configuration error.
///
/// # Errors
/// As [`open`], but never for an unreachable broker.
pub fn open_client(
    storage: &crate::config::StorageConfig,
    db: Option<&crate::durability::SledDb>,
) -> Result<std::sync::Arc<dyn Log>, LogError> {
    use crate::config::LogKind;
    let log: std::sync::Arc<dyn Log> = match (storage.log, db) {
        (LogKind::Sled, Some(db)) => std::sync::Arc::new(SledLog::open(db.clone())?),
        #[cfg(feature = "kafka")]
        (LogKind::Kafka, _) => match &storage.kafka {
            Some(k) => std::sync::Arc::new(KafkaLog::open(k)?),
            None => {
                return Err(LogError::Invalid(
                    "the kafka log needs a [storage.kafka] section".into(),
                ))
            }
        },
        (LogKind::Sled, None) => {
            return Err(LogError::Invalid("the sled log needs its database".into()))
        }
        #[cfg(not(feature = "kafka"))]
        (LogKind::Kafka, _) => {
            return Err(LogError::Invalid(
                "the kafka log is not available in this build (feature kafka)".into(),
            ))
        }
    };
    Ok(log)
}

/// Creates the replication topics with `[storage] partitions` (an existing topic keeps its
/// partition count, with a warning): the first exchange with a Kafka cluster, so the part of
/// [`open`] that fails with [`LogError::Unavailable`] while the brokers are unreachable.
///
/// # Errors
/// Any error of creating the topics.
pub async fn create_topics(
    log: &dyn Log,
    storage: &crate::config::StorageConfig,
) -> Result<(), LogError> {
    for topic in [TOPIC_REPLICATION, TOPIC_REPLICATION_STATUS] {
        let n = log.create_topic(topic, storage.partitions).await?;
        if n != storage.partitions {
            tracing::warn!(
                topic,
                existing = n,
                configured = storage.partitions,
                "Topic keeps its existing partition count."
            );
        }
    }
    Ok(())
}

/// A durable, partitioned, append-only log with consumer groups.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// The name of the implementation (`sled`, `kafka`).
    fn kind(&self) -> &'static str;

    /// How replication entries are written to this log: the original's JSON by default (so a
    /// Kafka topic stays readable by Zenko's tools), compact binary for the embedded log.
    fn entry_format(&self) -> EntryFormat {
        EntryFormat::Json
    }

    /// Whether calls may fail with [`LogError::Unavailable`] (a log reached over the network).
    /// [`RetryingLog`] passes the appends of a log that never does straight through, without
    /// keeping a copy of the records to send them again.
    fn may_be_unavailable(&self) -> bool {
        true
    }

    /// Creates `topic` with `partitions` partitions if it does not exist. An existing topic keeps
    /// its partition count, which is returned.
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<u32, LogError>;

    /// The topics and their partition counts.
    async fn topics(&self) -> Result<Vec<TopicInfo>, LogError>;

    /// Appends `records` to `topic`; returns each record's position, in input order. The records
    /// are durable when this returns.
    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>, LogError>;

    /// Opens a consumer of `topic` for `group`, positioned at the group's committed offsets.
    async fn consumer(&self, topic: &str, group: &str) -> Result<Box<dyn Consumer>, LogError>;

    /// Lag of `group` on each partition of `topic`.
    async fn lag(&self, topic: &str, group: &str) -> Result<Vec<PartitionLag>, LogError>;

    /// Consumer groups that have committed offsets on `topic`.
    async fn groups(&self, topic: &str) -> Result<Vec<String>, LogError>;

    /// Forgets `group`'s offsets on `topic`, so retention no longer waits for it.
    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), LogError>;

    /// Deletes the records of `topic` below every group's committed offset; returns how many
    /// were deleted. A topic no group has committed on keeps everything.
    async fn retain(&self, topic: &str) -> Result<u64, LogError>;

    /// Announcements of records lost to retention before a consumer of this log read them
    /// ([`OffsetLoss`]); `None` for a log that never loses unread records (the sled log's
    /// retention stops at every group's committed offset).
    fn offset_losses(&self) -> Option<tokio::sync::broadcast::Receiver<OffsetLoss>> {
        None
    }

    /// Fails when the log cannot accept writes.
    fn check(&self) -> Result<(), LogError>;
}

/// A member of a consumer group reading every partition of one topic.
#[async_trait]
pub trait Consumer: Send {
    /// Waits up to `wait` for records; returns at most `max`, possibly none.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, LogError>;

    /// Records that the group has processed everything before `next_offset` on each given
    /// partition. Durable on return. Offsets never move backwards through this call.
    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError>;

    /// Moves this consumer's read position (not the committed offset) on one partition.
    fn seek(&mut self, position: Position) -> Result<(), LogError>;

    /// The committed offset (next to read) of each partition, by partition number.
    fn committed(&self) -> Vec<u64>;

    /// Keeps this member in its group (Kafka drops one that does not poll for
    /// `max.poll.interval.ms`) while the caller cannot take records (its read-ahead is full),
    /// without losing any: what is read meanwhile is returned by the next `poll`. Call it when
    /// [`Consumer::keep_alive_every`] has passed without a poll. The default does nothing.
    async fn keep_alive(&mut self) -> Result<(), LogError> {
        Ok(())
    }

    /// How long the caller may go without polling before it must call
    /// [`Consumer::keep_alive`]; `None` (the default, the sled log) when it never must.
    fn keep_alive_every(&self) -> Option<Duration> {
        None
    }
}

/// Kafka's murmur2 hash of a key (the Java client's default partitioner).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions`, as Kafka's default partitioner picks it.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Checks a topic or group name: 1-249 characters of `[a-zA-Z0-9._-]`, what Kafka accepts, so a
/// name valid for one log is valid for every log.
pub(crate) fn validate_name(what: &str, name: &str) -> Result<(), LogError> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LogError::Invalid(format!(
            "{what} name {name:?} must be 1-249 characters of [a-zA-Z0-9._-]"
        )))
    }
}

/// Checks a topic to create: a valid name and 1-10000 partitions.
pub(crate) fn check_topic(topic: &str, partitions: u32) -> Result<(), LogError> {
    validate_name("topic", topic)?;
    if partitions == 0 || partitions > 10_000 {
        return Err(LogError::Invalid(format!(
            "partition count {partitions} must be between 1 and 10000"
        )));
    }
    Ok(())
}

/// The consumer group of a site's replication processor (the original's
/// `backbeat-replication-group-<site>`).
pub fn replication_group(site: &str) -> String {
    format!("backbeat-replication-group-{site}")
}

/// The consumer group of the status processor.
pub const STATUS_GROUP: &str = "backbeat-replication-group";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_vectors() {
        // Vectors from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }
}
