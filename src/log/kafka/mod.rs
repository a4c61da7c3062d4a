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
//! Consumers (`enable.auto.commit=false`, commits of exactly the given offsets, rebalances,
//! keep-alive while the pipeline takes no records) are described in `consumer.rs`; the rdkafka
//! client context that routes librdkafka's logs and rebalance events is in `context.rs`.
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

mod consumer;
mod context;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use self::consumer::{keep_alive_every, report_loss, KafkaConsumer, LossSink};
use self::context::{Ctx, Health};
use super::{
    check_topic, partition_for, validate_name, Consumer, Log, LogError, OffsetLoss, PartitionLag,
    Position, Record, TopicInfo,
};
use crate::config::KafkaConfig;

/// The original's `kafka.maxRequestSize`.
const MAX_MESSAGE_BYTES: &str = "5000020";

/// How long `create_topic` waits for a new topic to show in the metadata.
const TOPIC_VISIBLE_WAIT: Duration = Duration::from_secs(15);

/// A client error as a log error: [`LogError::Unavailable`] when the brokers are out of reach
/// or slow for now (retried by [`crate::log::RetryingLog`]), [`LogError::Storage`] otherwise.
fn storage(e: KafkaError) -> LogError {
    if e.rdkafka_error_code().is_some_and(is_transient_code) {
        LogError::Unavailable(Box::new(e))
    } else {
        LogError::Storage(Box::new(e))
    }
}

/// Codes of a cluster that is unreachable, slow or moving leaders: librdkafka's own timeouts
/// and transport failures, and the brokers' retriable errors a client sees during a restart
/// or an election.
fn is_transient_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::OperationTimedOut
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::MessageTimedOut
            | C::TimedOutQueue
            | C::RequestTimedOut
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::CoordinatorLoadInProgress
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::NotController
            | C::KafkaStorageError
    )
}

fn join_error(e: tokio::task::JoinError) -> LogError {
    LogError::Storage(Box::new(e))
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
    /// Where the consumers announce records lost to retention.
    losses: tokio::sync::broadcast::Sender<OffsetLoss>,
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
                losses: tokio::sync::broadcast::channel(256).0,
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
                    let e = format!("cannot create kafka topic {name}: {code}").into();
                    return Err(if is_transient_code(code) {
                        LogError::Unavailable(e)
                    } else {
                        LogError::Storage(e)
                    });
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
                // A slow broker (elections, Tansu): the whole creation is retried.
                return Err(LogError::Unavailable(
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
        let losses = LossSink {
            topic: topic.to_string(),
            group: group.to_string(),
            tx: self.inner.losses.clone(),
        };
        // A group whose next offset was deleted while no member of it ran (a stopped engine,
        // a paused site's restart): librdkafka will move it to the earliest record silently.
        let mut expected = Vec::with_capacity(stored.len());
        for (p, (c, (lo, _))) in stored.iter().zip(&watermarks).enumerate() {
            expected.push(match c {
                Some(c) if c < lo => {
                    report_loss(&losses, p as u32, *c, *lo);
                    Some(*lo)
                }
                c => *c,
            });
        }
        Ok(Box::new(KafkaConsumer::new(
            consumer,
            ctx.events,
            full,
            committed,
            &expected,
            timeout,
            keep_alive_every(cfg.max_poll_interval_ms),
            losses,
        )))
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

    fn offset_losses(&self) -> Option<tokio::sync::broadcast::Receiver<OffsetLoss>> {
        Some(self.inner.losses.subscribe())
    }

    fn check(&self) -> Result<(), LogError> {
        if let Some((code, reason)) = self.inner.producer.client().fatal_error() {
            return Err(LogError::Storage(
                format!("kafka producer failed: {code}: {reason}").into(),
            ));
        }
        if self.inner.health.brokers_down.load(Ordering::Acquire) {
            return Err(LogError::Unavailable("every kafka broker is down".into()));
        }
        Ok(())
    }
}
