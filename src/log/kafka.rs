//! [`KafkaLog`]: the [`Log`] on Kafka (Cargo feature `kafka`), through `rdkafka` and its
//! bundled librdkafka.
//!
//! The mapping is one to one:
//!
//! ```text
//! our topic T            -> Kafka topic  <topic_prefix>T
//! our partition / offset -> Kafka partition / offset
//! our consumer group G   -> Kafka group  <topic_prefix>G   (committed offset = next to read)
//! Record.key / value     -> message key / value            (no headers)
//! Record.timestamp_ms    -> message timestamp (CreateTime)
//! ```
//!
//! Producer: `acks=all`, `enable.idempotence=true` (no duplicates or reordering on retries),
//! `request.timeout.ms` from the configuration (the original's 5 s), `message.max.bytes` as the
//! original's `kafka.maxRequestSize` (5000020). Each record goes to the partition
//! [`partition_for`] picks (murmur2 of the key, Kafka's Java default partitioner), passed
//! explicitly, so a key lands on the same partition as in the sled log and as the original's
//! producers put it; `partitioner=murmur2_random` is set as well for any record sent without an
//! explicit partition. `append` returns once every record is acknowledged by all in-sync
//! replicas.
//!
//! Consumers: `enable.auto.commit=false` and `enable.auto.offset.store=false`; a group starts
//! at its committed offsets, and at the **earliest** offset on a partition where it has none
//! (`auto.offset.reset=earliest`). [`Consumer::commit`] is a synchronous commit of exactly the
//! given offsets (next to read), never backwards. Several consumers of one group, in one or
//! several processes, share the topic's partitions (Kafka's group protocol): on a rebalance,
//! librdkafka drops what it had fetched for revoked partitions and starts newly assigned ones
//! at their committed offset; our consumer drops pending seeks of revoked partitions and
//! commits only partitions currently assigned to it (a revoked partition's offsets belong to
//! its new owner; its uncommitted records are delivered again there: at-least-once).
//! A commit refused because the group is rebalancing is logged and skipped for the same reason.
//!
//! Liveness while the pipeline takes no records (a paused site's read-ahead is full): librdkafka
//! drops a member that has not polled for `max.poll.interval.ms`, so [`Consumer::keep_alive`]
//! pauses the partitions assigned now (librdkafka drops what it prefetched for them and will
//! fetch again from the position after the last record handed to us), then receives a few
//! times without waiting: each counts as a poll and serves one queued event (rebalances, and
//! librdkafka's logs, which reach us through the same queue). A record that still comes (from
//! a partition assigned since the pause) is held and returned first by the next `poll`; held
//! records of a partition revoked meanwhile are dropped (its new owner reads them from the
//! committed offset). The next `poll` resumes every partition of the topic first (a pause
//! outlives a revocation in librdkafka, so a partition revoked while paused and assigned again
//! must be resumed too).
//!
//! Differences from the sled log, by design of Kafka:
//! - [`Log::retain`] is a no-op returning 0: the broker's retention policy (`retention.ms`,
//!   `retention.bytes`) deletes records. Configure it above the longest expected site outage.
//! - [`Log::delete_group`] deletes the whole Kafka group (all its topics; each of our groups
//!   consumes one topic), and fails while the group has live members.
//! - [`Log::lag`] takes the end of each partition by reading from the high watermark minus one
//!   to the end (exact even where a broker's watermark lags); a group without a commit counts
//!   from the low watermark (what it would read first).
//! - Two consumers of one group in one process are allowed (the sled log refuses them): they
//!   share the partitions.
//!
//! Wire format: values are the original's JSON entries ([`crate::entry`]) and keys are what
//! the pipeline gives (`encodeURIComponent("bucket/key")`, reference 2.0.1), so the topics
//! interoperate with the original's producers and consumers. Fields of the original's entries
//! we cannot fill, and that its consumers treat as optional:
//! - `overheadFields` (`commitTimestamp`, `opTimestamp`, `versionId` of the raft record): we
//!   read no raft log, so there is no raft record to describe;
//! - the versioned `key` (`<objectKey>\u0000<internalVersionId>`): sources give us external
//!   version ids only, so `key` is the plain key and the version is `value.versionId` (the form
//!   of the original's retry entries);
//! - `workflowId`, `workflowVersion`, `nodeId`, `uniqueId` (Orbit workflow engine), and
//!   `accountId`: left out, as the original does when it does not know them;
//! - ObjectMD members with no equivalent in our sources (`owner-id`, `location`, ACLs): left
//!   out of `value`.
//!
//! Records carry no headers, and are not compressed (the original uses zstd, which this
//! bundled librdkafka is built without; consumers read any codec).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{
    check_topic, partition_for, validate_name, Consumer, Delivery, Log, LogError, PartitionLag,
    Position, Record, TopicInfo,
};
use crate::config::KafkaConfig;

/// The original's `kafka.maxRequestSize`.
const MAX_MESSAGE_BYTES: &str = "5000020";

/// How long `create_topic` waits for a new topic to show in the metadata.
const TOPIC_VISIBLE_WAIT: Duration = Duration::from_secs(15);

/// Zero-wait receives of one `keep_alive`. Each serves one event of the consumer's queue
/// (librdkafka's logs and rebalance events come through it) or takes one record.
const KEEP_ALIVE_RECVS: usize = 16;

/// How often a member that cannot take records calls `keep_alive`: a quarter of
/// `max.poll.interval.ms`, so a slow site whose read-ahead is full for a long copy does not
/// make librdkafka drop and fetch again its prefetched records every second (each
/// `keep_alive` pauses the partitions, which discards them), with a floor of 500 ms.
fn keep_alive_every(max_poll_interval_ms: u64) -> Duration {
    Duration::from_millis((max_poll_interval_ms / 4).max(500))
}

fn storage(e: impl std::error::Error + Send + Sync + 'static) -> LogError {
    LogError::Storage(Box::new(e))
}

fn join_error(e: tokio::task::JoinError) -> LogError {
    LogError::Storage(Box::new(e))
}

/// Rebalance events of one consumer: `(assigned, partitions)`, oldest first.
type Events = Arc<Mutex<Vec<(bool, Vec<u32>)>>>;

/// Health of the producer, fed by librdkafka's error callback and by deliveries.
#[derive(Default)]
struct Health {
    /// Set when every broker is down; cleared by the next successful delivery or metadata call.
    brokers_down: AtomicBool,
}

/// Routes librdkafka's logs and errors to `tracing`, and records producer health.
#[derive(Clone, Default)]
struct Ctx {
    health: Arc<Health>,
    /// Rebalance events of a consumer, drained by its `poll`.
    events: Events,
    topic: Arc<str>,
    /// The consumer's group (Kafka name), for logs.
    group: Arc<str>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(facility = fac, message = log_message, "librdkafka error.")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(facility = fac, message = log_message, "librdkafka warning.")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility = fac, message = log_message, "librdkafka notice.")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(facility = fac, message = log_message, "librdkafka debug.")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.brokers_down.store(true, Ordering::Release);
        }
        tracing::warn!(error = %error, reason, "Kafka client error.");
    }
}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (assigned, tpl) = match rebalance {
            Rebalance::Assign(tpl) => (true, tpl),
            Rebalance::Revoke(tpl) => (false, tpl),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "Kafka rebalance failed.");
                return;
            }
        };
        let parts: Vec<u32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect();
        tracing::info!(topic = %self.topic, group = %self.group, assigned, partitions = ?parts,
            "Kafka partitions rebalanced.");
        self.events.lock().push((assigned, parts));
    }
}

/// The Kafka log. Cheap to clone.
#[derive(Clone)]
pub struct KafkaLog {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: FutureProducer<Ctx>,
    admin: AdminClient<DefaultClientContext>,
    health: Arc<Health>,
    /// Partition counts of the topics seen so far, by our (unprefixed) name.
    partitions: RwLock<HashMap<String, u32>>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.inner.config.brokers)
            .field("topic_prefix", &self.inner.config.topic_prefix)
            .finish()
    }
}

impl KafkaLog {
    /// Connects to the brokers of `config` (the clients connect lazily; a broker that is down
    /// shows in [`Log::check`] and as errors of the calls).
    ///
    /// # Errors
    /// `LogError::Invalid` for a configuration librdkafka refuses.
    pub fn open(config: &KafkaConfig) -> Result<KafkaLog, LogError> {
        let health = Arc::new(Health::default());
        let ctx = Ctx {
            health: health.clone(),
            ..Ctx::default()
        };
        let producer: FutureProducer<Ctx> = base_config(config)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("message.max.bytes", MAX_MESSAGE_BYTES)
            .set("request.timeout.ms", config.request_timeout_ms.to_string())
            .set("linger.ms", "2")
            .create_with_context(ctx)
            .map_err(|e| LogError::Invalid(format!("kafka producer: {e}")))?;
        let admin: AdminClient<DefaultClientContext> = base_config(config)
            .create()
            .map_err(|e| LogError::Invalid(format!("kafka admin client: {e}")))?;
        Ok(KafkaLog {
            inner: Arc::new(Inner {
                config: config.clone(),
                producer,
                admin,
                health,
                partitions: RwLock::new(HashMap::new()),
            }),
        })
    }

    fn full_name(&self, topic: &str) -> String {
        format!("{}{}", self.inner.config.topic_prefix, topic)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.request_timeout_ms)
    }

    /// Partition counts of every topic on the cluster, by Kafka name (a metadata request for
    /// all topics: never auto-creates one).
    async fn metadata(&self) -> Result<HashMap<String, u32>, LogError> {
        let producer = self.inner.producer.clone();
        let timeout = self.timeout();
        let health = self.inner.health.clone();
        tokio::task::spawn_blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(None, timeout)
                .map_err(storage)?;
            health.brokers_down.store(false, Ordering::Release);
            Ok(md
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| (t.name().to_string(), t.partitions().len() as u32))
                .collect())
        })
        .await
        .map_err(join_error)?
    }

    /// The partition count of `topic`, from the cache or the cluster.
    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        if let Some(n) = self.inner.partitions.read().get(topic) {
            return Ok(*n);
        }
        let md = self.metadata().await?;
        match md.get(&self.full_name(topic)) {
            Some(&n) => {
                self.inner.partitions.write().insert(topic.to_string(), n);
                Ok(n)
            }
            None => Err(LogError::UnknownTopic(topic.to_string())),
        }
    }

    /// A group member that does not join (for offset fetches of `group`).
    fn offsets_client(&self, group: &str) -> Result<BaseConsumer, LogError> {
        base_config(&self.inner.config)
            .set(
                "group.id",
                format!("{}{}", self.inner.config.topic_prefix, group),
            )
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| LogError::Invalid(format!("kafka consumer: {e}")))
    }

    /// Committed offsets of `group` on `n` partitions of `topic` (`None` where there is none).
    async fn group_offsets(
        &self,
        topic: &str,
        group: &str,
        n: u32,
    ) -> Result<Vec<Option<u64>>, LogError> {
        let client = self.offsets_client(group)?;
        let full = self.full_name(topic);
        let timeout = self.timeout();
        tokio::task::spawn_blocking(move || committed_of(&client, &full, n, timeout))
            .await
            .map_err(join_error)?
    }

    /// The end (next offset to be written) of every partition, checked by reading: from the
    /// high watermark minus one, read to the partition's end and take the last offset + 1.
    /// One fetch per partition; it makes `lag` exact on brokers whose ListOffsets answer lags
    /// behind the log (Tansu answers the last batch's base offset + 1).
    async fn verified_ends(&self, topic: &str, marks: &[(u64, u64)]) -> Result<Vec<u64>, LogError> {
        // librdkafka wants a group id even for a manual assignment; this one never joins a
        // group nor commits.
        let reader: BaseConsumer = base_config(&self.inner.config)
            .set(
                "group.id",
                format!("{}backbeat-end-probe", self.inner.config.topic_prefix),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(|e| LogError::Invalid(format!("kafka consumer: {e}")))?;
        let full = self.full_name(topic);
        let timeout = self.timeout();
        let marks = marks.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut ends: Vec<u64> = marks.iter().map(|(_, hi)| *hi).collect();
            let mut tpl = TopicPartitionList::new();
            let mut waiting = BTreeSet::new();
            for (p, (lo, hi)) in marks.iter().enumerate() {
                if hi > lo {
                    let start = i64::try_from(hi - 1).unwrap_or(i64::MAX);
                    tpl.add_partition_offset(&full, p as i32, Offset::Offset(start))
                        .map_err(storage)?;
                    waiting.insert(p as i32);
                }
            }
            if waiting.is_empty() {
                return Ok(ends);
            }
            reader.assign(&tpl).map_err(storage)?;
            let deadline = Instant::now() + timeout;
            while !waiting.is_empty() && Instant::now() < deadline {
                match reader.poll(Duration::from_millis(100)) {
                    None => {}
                    Some(Ok(m)) => {
                        if let (Ok(p), Ok(o)) =
                            (usize::try_from(m.partition()), u64::try_from(m.offset()))
                        {
                            if let Some(end) = ends.get_mut(p) {
                                *end = (*end).max(o + 1);
                            }
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        waiting.remove(&p);
                    }
                    Some(Err(e)) => return Err(storage(e)),
                }
            }
            Ok(ends)
        })
        .await
        .map_err(join_error)?
    }

    /// Low and high watermarks of every partition.
    async fn watermarks(&self, topic: &str, n: u32) -> Result<Vec<(u64, u64)>, LogError> {
        let producer = self.inner.producer.clone();
        let full = self.full_name(topic);
        let timeout = self.timeout();
        tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|p| {
                    let (lo, hi) = producer
                        .client()
                        .fetch_watermarks(&full, p as i32, timeout)
                        .map_err(storage)?;
                    Ok((lo.max(0) as u64, hi.max(0) as u64))
                })
                .collect()
        })
        .await
        .map_err(join_error)?
    }
}

fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", "backbeat")
        .set(
            "socket.timeout.ms",
            config.request_timeout_ms.max(10).to_string(),
        )
        .set_log_level(RDKafkaLogLevel::Warning);
    c
}

/// Committed offsets of the consumer's group on `n` partitions of `topic`.
fn committed_of<C: ConsumerContext, K: rdkafka::consumer::Consumer<C>>(
    client: &K,
    topic: &str,
    n: u32,
    timeout: Duration,
) -> Result<Vec<Option<u64>>, LogError> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition(topic, p as i32);
    }
    let got = client.committed_offsets(tpl, timeout).map_err(storage)?;
    let mut out = vec![None; n as usize];
    for e in got.elements_for_topic(topic) {
        if let (Ok(p), Offset::Offset(o)) = (usize::try_from(e.partition()), e.offset()) {
            if let (Some(slot), Ok(o)) = (out.get_mut(p), u64::try_from(o)) {
                *slot = Some(o);
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Log for KafkaLog {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<u32, LogError> {
        check_topic(topic, partitions)?;
        let full = self.full_name(topic);
        if let Some(&n) = self.metadata().await?.get(&full) {
            self.inner.partitions.write().insert(topic.to_string(), n);
            return Ok(n);
        }
        let new = NewTopic::new(
            &full,
            partitions as i32,
            TopicReplication::Fixed(self.inner.config.replication_factor),
        );
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout()));
        let results = self
            .inner
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(storage)?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(topic = %full, partitions, "Kafka topic created."),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Storage(
                        format!("cannot create kafka topic {name}: {code}").into(),
                    ))
                }
            }
        }
        // The topic shows in the metadata once its partitions have leaders.
        let deadline = Instant::now() + TOPIC_VISIBLE_WAIT;
        loop {
            if let Some(&n) = self.metadata().await?.get(&full) {
                self.inner.partitions.write().insert(topic.to_string(), n);
                return Ok(n);
            }
            if Instant::now() >= deadline {
                return Err(LogError::Storage(
                    format!("kafka topic {full} was created but does not show in the metadata")
                        .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, LogError> {
        let prefix = &self.inner.config.topic_prefix;
        let mut out: Vec<TopicInfo> = self
            .metadata()
            .await?
            .into_iter()
            .filter(|(name, _)| !name.starts_with("__"))
            .filter_map(|(name, partitions)| {
                name.strip_prefix(prefix.as_str()).map(|n| TopicInfo {
                    name: n.to_string(),
                    partitions,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>, LogError> {
        let n = self.partition_count(topic).await?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let full = self.full_name(topic);
        let mut pending = Vec::with_capacity(records.len());
        for r in &records {
            let partition = partition_for(&r.key, n);
            let mut fr = FutureRecord::to(&full)
                .key(r.key.as_slice())
                .payload(r.value.as_slice())
                .partition(partition as i32);
            if let Ok(ts) = i64::try_from(r.timestamp_ms) {
                fr = fr.timestamp(ts);
            }
            // Enqueue in order (idempotence keeps that order on the wire); wait while the
            // local queue is full.
            loop {
                match self.inner.producer.send_result(fr) {
                    Ok(fut) => {
                        pending.push(fut);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        fr = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(storage(e)),
                }
            }
        }
        let mut positions = Vec::with_capacity(pending.len());
        for fut in pending {
            let delivery = fut.await.map_err(|_| {
                LogError::Storage("kafka producer dropped a delivery report".into())
            })?;
            match delivery {
                Ok(d) => positions.push(Position {
                    partition: u32::try_from(d.partition).unwrap_or(0),
                    offset: u64::try_from(d.offset).unwrap_or(0),
                }),
                Err((e, _)) => return Err(storage(e)),
            }
        }
        self.inner
            .health
            .brokers_down
            .store(false, Ordering::Release);
        Ok(positions)
    }

    async fn consumer(&self, topic: &str, group: &str) -> Result<Box<dyn Consumer>, LogError> {
        validate_name("group", group)?;
        let n = self.partition_count(topic).await?;
        let cfg = &self.inner.config;
        let full = self.full_name(topic);
        let group_id = format!("{}{}", cfg.topic_prefix, group);
        let ctx = Ctx {
            health: Arc::new(Health::default()),
            events: Arc::new(Mutex::new(Vec::new())),
            topic: Arc::from(full.as_str()),
            group: Arc::from(group_id.as_str()),
        };
        let consumer: StreamConsumer<Ctx> = base_config(cfg)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false")
            .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                cfg.heartbeat_interval_ms.to_string(),
            )
            .set("max.poll.interval.ms", cfg.max_poll_interval_ms.to_string())
            .create_with_context(ctx.clone())
            .map_err(|e| LogError::Invalid(format!("kafka consumer: {e}")))?;
        consumer.subscribe(&[&full]).map_err(storage)?;
        let consumer = Arc::new(consumer);
        let watermarks = self.watermarks(topic, n).await?;
        let timeout = self.timeout();
        let c2 = consumer.clone();
        let f2 = full.clone();
        let stored = tokio::task::spawn_blocking(move || committed_of(&*c2, &f2, n, timeout))
            .await
            .map_err(join_error)??;
        let committed = stored
            .iter()
            .zip(&watermarks)
            .map(|(c, (lo, _))| c.unwrap_or(*lo))
            .collect();
        Ok(Box::new(KafkaConsumer {
            consumer,
            events: ctx.events,
            topic: full,
            partitions: n,
            committed,
            seeks: HashMap::new(),
            timeout,
            held: VecDeque::new(),
            paused: false,
            keep_alive_every: keep_alive_every(cfg.max_poll_interval_ms),
        }))
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<Vec<PartitionLag>, LogError> {
        validate_name("group", group)?;
        let n = self.partition_count(topic).await?;
        let marks = self.watermarks(topic, n).await?;
        let ends = self.verified_ends(topic, &marks).await?;
        let stored = self.group_offsets(topic, group, n).await?;
        Ok(marks
            .into_iter()
            .zip(ends)
            .zip(stored)
            .enumerate()
            .map(|(p, (((lo, _), end), c))| {
                let committed = c.unwrap_or(lo).max(lo).min(end);
                PartitionLag {
                    partition: p as u32,
                    committed,
                    end,
                    lag: end - committed,
                }
            })
            .collect())
    }

    async fn groups(&self, topic: &str) -> Result<Vec<String>, LogError> {
        let n = self.partition_count(topic).await?;
        let producer = self.inner.producer.clone();
        let timeout = self.timeout();
        let prefix = self.inner.config.topic_prefix.clone();
        let names: Vec<String> = tokio::task::spawn_blocking(move || {
            let list = producer
                .client()
                .fetch_group_list(None, timeout)
                .map_err(storage)?;
            Ok::<_, LogError>(
                list.groups()
                    .iter()
                    .filter_map(|g| g.name().strip_prefix(prefix.as_str()).map(str::to_string))
                    .collect(),
            )
        })
        .await
        .map_err(join_error)??;
        let mut out = Vec::new();
        for g in names {
            if validate_name("group", &g).is_err() {
                continue;
            }
            if self
                .group_offsets(topic, &g, n)
                .await?
                .iter()
                .any(Option::is_some)
            {
                out.push(g);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), LogError> {
        validate_name("group", group)?;
        self.partition_count(topic).await?;
        let full = format!("{}{}", self.inner.config.topic_prefix, group);
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout()));
        let results = self
            .inner
            .admin
            .delete_groups(&[&full], &opts)
            .await
            .map_err(storage)?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
                Err((_, RDKafkaErrorCode::NonEmptyGroup)) => {
                    return Err(LogError::GroupBusy {
                        group: group.to_string(),
                        topic: topic.to_string(),
                    })
                }
                Err((name, code)) => {
                    return Err(LogError::Storage(
                        format!("cannot delete kafka group {name}: {code}").into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// A no-op: the broker's retention policy deletes records.
    async fn retain(&self, topic: &str) -> Result<u64, LogError> {
        self.partition_count(topic).await?;
        Ok(0)
    }

    fn check(&self) -> Result<(), LogError> {
        if let Some((code, reason)) = self.inner.producer.client().fatal_error() {
            return Err(LogError::Storage(
                format!("kafka producer failed: {code}: {reason}").into(),
            ));
        }
        if self.inner.health.brokers_down.load(Ordering::Acquire) {
            return Err(LogError::Storage("every kafka broker is down".into()));
        }
        Ok(())
    }
}

/// A member of a Kafka consumer group.
struct KafkaConsumer {
    consumer: Arc<StreamConsumer<Ctx>>,
    events: Events,
    /// Kafka topic name (prefixed).
    topic: String,
    partitions: u32,
    /// Last known committed offset (next to read) per partition.
    committed: Vec<u64>,
    /// Seeks waiting for their partition to be assigned to this member.
    seeks: HashMap<u32, u64>,
    timeout: Duration,
    /// Records read by `keep_alive`, in order; `poll` returns them first.
    held: VecDeque<Delivery>,
    /// Whether `keep_alive` paused partitions since the last `poll`.
    paused: bool,
    /// See [`keep_alive_every`].
    keep_alive_every: Duration,
}

impl KafkaConsumer {
    /// Partitions of our topic assigned to this member now.
    fn assigned(&self) -> Result<BTreeSet<u32>, LogError> {
        let tpl = self.consumer.assignment().map_err(storage)?;
        Ok(tpl
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect())
    }

    /// Applies rebalance events: forget seeks and held records of revoked partitions, refresh
    /// the committed offsets of assigned ones. Returns whether partitions were assigned.
    async fn handle_rebalances(&mut self) -> Result<bool, LogError> {
        let events: Vec<(bool, Vec<u32>)> = std::mem::take(&mut *self.events.lock());
        let mut refresh = false;
        for (assigned, parts) in events {
            if assigned {
                refresh = true;
            } else {
                for p in parts {
                    self.seeks.remove(&p);
                    self.held.retain(|d| d.position.partition != p);
                }
            }
        }
        if refresh {
            let c = self.consumer.clone();
            let topic = self.topic.clone();
            let n = self.partitions;
            let timeout = self.timeout;
            let stored = tokio::task::spawn_blocking(move || committed_of(&*c, &topic, n, timeout))
                .await
                .map_err(join_error)??;
            for (slot, c) in self.committed.iter_mut().zip(stored) {
                if let Some(c) = c {
                    *slot = c;
                }
            }
        }
        Ok(refresh)
    }

    /// Pauses fetching on the partitions assigned now.
    async fn pause_assigned(&mut self) -> Result<(), LogError> {
        let mut tpl = TopicPartitionList::new();
        for p in self.assigned()? {
            tpl.add_partition(&self.topic, p as i32);
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.paused = true;
        let c = self.consumer.clone();
        // Synchronous in librdkafka: waits until each partition has dropped its prefetched
        // records.
        tokio::task::spawn_blocking(move || c.pause(&tpl))
            .await
            .map_err(join_error)?
            .map_err(storage)
    }

    /// Resumes what `keep_alive` paused: every partition of the topic, assigned or not.
    async fn resume_paused(&mut self) -> Result<(), LogError> {
        if !self.paused {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p as i32);
        }
        let c = self.consumer.clone();
        // Partitions unknown to librdkafka or not paused are skipped.
        tokio::task::spawn_blocking(move || c.resume(&tpl))
            .await
            .map_err(join_error)?
            .map_err(storage)?;
        self.paused = false;
        Ok(())
    }

    fn apply_seeks(&mut self) -> Result<(), LogError> {
        if self.seeks.is_empty() {
            return Ok(());
        }
        let assigned = self.assigned()?;
        let ready: Vec<(u32, u64)> = self
            .seeks
            .iter()
            .filter(|(p, _)| assigned.contains(p))
            .map(|(p, o)| (*p, *o))
            .collect();
        for (p, o) in ready {
            let offset = i64::try_from(o)
                .map_err(|_| LogError::Invalid(format!("offset {o} out of range")))?;
            // Timeout 0: librdkafka seeks asynchronously and drops what it had prefetched.
            self.consumer
                .seek(
                    &self.topic,
                    p as i32,
                    Offset::Offset(offset),
                    Duration::ZERO,
                )
                .map_err(storage)?;
            self.seeks.remove(&p);
        }
        Ok(())
    }
}

fn to_delivery(m: &rdkafka::message::BorrowedMessage<'_>) -> Delivery {
    Delivery {
        position: Position {
            partition: u32::try_from(m.partition()).unwrap_or(0),
            offset: u64::try_from(m.offset()).unwrap_or(0),
        },
        record: Record {
            key: m.key().map(<[u8]>::to_vec).unwrap_or_default(),
            value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            timestamp_ms: m
                .timestamp()
                .to_millis()
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(0),
        },
    }
}

fn is_rebalance_error(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::AssignmentLost
                | RDKafkaErrorCode::State
        )
    )
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, LogError> {
        self.handle_rebalances().await?;
        self.resume_paused().await?;
        self.apply_seeks()?;
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        // Held records come before anything fetched after the resume.
        let held = max.min(self.held.len());
        out.extend(self.held.drain(..held));
        if out.is_empty() {
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => {}
                Ok(Ok(m)) => out.push(to_delivery(&m)),
                // librdkafka recovers from everything but a fatal error (broker restarts,
                // leader moves): report it and let the caller poll again.
                Ok(Err(e @ KafkaError::MessageConsumptionFatal(_))) => return Err(storage(e)),
                Ok(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "Kafka consumer error; polling again.");
                }
            }
        }
        if !out.is_empty() {
            // Whatever else is already fetched, without waiting.
            while out.len() < max {
                match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                    Ok(Ok(m)) => out.push(to_delivery(&m)),
                    Ok(Err(e)) => {
                        tracing::warn!(topic = %self.topic, error = %e, "Kafka consumer error after a delivery.");
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        self.handle_rebalances().await?;
        Ok(out)
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        let assigned = self.assigned()?;
        let mut tpl = TopicPartitionList::new();
        let mut updates = Vec::new();
        for pos in positions {
            if pos.partition >= self.partitions {
                return Err(LogError::UnknownPartition {
                    topic: self.topic.clone(),
                    partition: pos.partition,
                });
            }
            if !assigned.contains(&pos.partition) {
                tracing::debug!(topic = %self.topic, partition = pos.partition,
                    "Commit of a partition no longer assigned to this member skipped.");
                continue;
            }
            let current = self
                .committed
                .get(pos.partition as usize)
                .copied()
                .unwrap_or(0);
            if pos.offset <= current {
                continue;
            }
            let offset = i64::try_from(pos.offset)
                .map_err(|_| LogError::Invalid(format!("offset {} out of range", pos.offset)))?;
            tpl.add_partition_offset(&self.topic, pos.partition as i32, Offset::Offset(offset))
                .map_err(storage)?;
            updates.push(*pos);
        }
        if updates.is_empty() {
            return Ok(());
        }
        let c = self.consumer.clone();
        let result = tokio::task::spawn_blocking(move || c.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(join_error)?;
        match result {
            Ok(()) => {}
            Err(e) if is_rebalance_error(&e) => {
                tracing::warn!(topic = %self.topic, error = %e,
                    "Kafka commit refused during a rebalance; the records will be delivered again.");
                return Ok(());
            }
            Err(e) => return Err(storage(e)),
        }
        for pos in updates {
            if let Some(slot) = self.committed.get_mut(pos.partition as usize) {
                *slot = (*slot).max(pos.offset);
            }
        }
        Ok(())
    }

    fn seek(&mut self, position: Position) -> Result<(), LogError> {
        if position.partition >= self.partitions {
            return Err(LogError::UnknownPartition {
                topic: self.topic.clone(),
                partition: position.partition,
            });
        }
        self.seeks.insert(position.partition, position.offset);
        // Held records are from before the new position.
        self.held
            .retain(|d| d.position.partition != position.partition);
        Ok(())
    }

    fn committed(&self) -> Vec<u64> {
        self.committed.clone()
    }

    fn keep_alive_every(&self) -> Option<Duration> {
        Some(self.keep_alive_every)
    }

    async fn keep_alive(&mut self) -> Result<(), LogError> {
        self.handle_rebalances().await?;
        self.pause_assigned().await?;
        // Each receive counts as a poll for max.poll.interval.ms.
        for _ in 0..KEEP_ALIVE_RECVS {
            let got = tokio::time::timeout(Duration::ZERO, self.consumer.recv())
                .await
                .map(|r| r.map(|m| to_delivery(&m)));
            // A receive serves one rebalance event or returns one record: apply the events
            // first, so a record taken after a revocation and a new assignment is kept.
            let assigned = self.handle_rebalances().await?;
            match got {
                // Nothing ready, or one event served.
                Err(_) => {
                    if assigned {
                        // A partition assigned now starts unpaused.
                        self.pause_assigned().await?;
                    }
                }
                // From a partition assigned since the pause: kept for the next poll.
                Ok(Ok(d)) => {
                    self.held.push_back(d);
                    self.pause_assigned().await?;
                }
                Ok(Err(e @ KafkaError::MessageConsumptionFatal(_))) => return Err(storage(e)),
                Ok(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "Kafka consumer error while paused.");
                    break;
                }
            }
        }
        Ok(())
    }
}
