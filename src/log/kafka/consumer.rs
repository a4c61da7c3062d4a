//! [`KafkaConsumer`]: a member of a Kafka consumer group, the [`Consumer`] of
//! [`super::KafkaLog`].
//!
//! `enable.auto.commit=false` and `enable.auto.offset.store=false`; a group starts
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
//! Records lost to retention (issue 14): a group whose next offset on a partition is below the
//! partition's earliest record (a paused site, a stopped engine, while the broker's retention
//! deleted what it had not read) is moved to the earliest record by librdkafka
//! (`auto.offset.reset=earliest`) without a word. The consumer notices: it knows the offset it
//! expects next on each partition (the committed offset when the partition is assigned, then
//! one past each record handed out, or a seek's). When the consumer opens and when a
//! partition is assigned, a committed offset below the partition's low watermark is a loss;
//! when a record comes from further on than expected, the low watermark is asked, and if it
//! is above the expected offset, the records `[expected, low)` are gone: [`report_loss`] logs an ERROR naming the topic, the partition
//! and the range, counts it (`backbeat_log_offset_out_of_range_total`) and tells the engine
//! ([`OffsetLoss`]), which queues the affected versions again. A gap with nothing deleted
//! below it (compaction, transaction markers) is not a loss.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::context::{Ctx, Events};
use super::{committed_of, join_error, storage};
use crate::log::{Consumer, Delivery, LogError, OffsetLoss, Position, Record};

/// Zero-wait receives of one `keep_alive`. Each serves one event of the consumer's queue
/// (librdkafka's logs and rebalance events come through it) or takes one record.
const KEEP_ALIVE_RECVS: usize = 16;

/// How often a member that cannot take records calls `keep_alive`: a quarter of
/// `max.poll.interval.ms`, so a slow site whose read-ahead is full for a long copy does not
/// make librdkafka drop and fetch again its prefetched records every second (each
/// `keep_alive` pauses the partitions, which discards them), with a floor of 500 ms.
pub(super) fn keep_alive_every(max_poll_interval_ms: u64) -> Duration {
    Duration::from_millis((max_poll_interval_ms / 4).max(500))
}

/// A member of a Kafka consumer group.
pub(super) struct KafkaConsumer {
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
    /// The offset expected next on each partition whose position is known (see the module
    /// doc on records lost to retention).
    expected: HashMap<u32, u64>,
    /// Where losses are reported, and the names they carry.
    losses: LossSink,
}

/// Where a consumer reports records lost to retention.
#[derive(Clone)]
pub(super) struct LossSink {
    /// Our topic name (unprefixed).
    pub(super) topic: String,
    /// Our group name (unprefixed).
    pub(super) group: String,
    pub(super) tx: tokio::sync::broadcast::Sender<OffsetLoss>,
}

/// The records lost when a record at `delivered` comes while `expected` was next and the
/// partition's earliest record is `low`: `[expected, low)`, when not empty.
pub(crate) fn lost_range(expected: u64, delivered: u64, low: u64) -> Option<(u64, u64)> {
    (delivered > expected && low > expected).then(|| (expected, low.min(delivered)))
}

/// Logs, counts and announces records of `partition` lost to retention.
pub(super) fn report_loss(sink: &LossSink, partition: u32, from: u64, to: u64) {
    tracing::error!(
        topic = %sink.topic,
        group = %sink.group,
        partition,
        from,
        to,
        lost = to - from,
        "Kafka records [from, to) were removed by retention before this group read them; \
         the affected versions are queued again."
    );
    crate::metrics::count_offset_out_of_range(&sink.topic);
    // No receiver (the populator runs in another process): the error above is what is left.
    let _ = sink.tx.send(OffsetLoss {
        topic: sink.topic.clone(),
        group: sink.group.clone(),
        partition,
        from,
        to,
    });
}

impl KafkaConsumer {
    /// A member reading `topic` (the Kafka name) through `consumer`, already subscribed, from
    /// its group's `committed` offsets (next to read, one per partition), expecting `expected`
    /// next where known (the stored commits, moved past a loss already reported), and
    /// reporting losses to `losses`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        consumer: Arc<StreamConsumer<Ctx>>,
        events: Events,
        topic: String,
        committed: Vec<u64>,
        stored: &[Option<u64>],
        timeout: Duration,
        keep_alive_every: Duration,
        losses: LossSink,
    ) -> KafkaConsumer {
        KafkaConsumer {
            expected: stored
                .iter()
                .enumerate()
                .filter_map(|(p, c)| c.map(|c| (p as u32, c)))
                .collect(),
            losses,
            consumer,
            events,
            topic,
            partitions: committed.len() as u32,
            committed,
            seeks: HashMap::new(),
            timeout,
            held: VecDeque::new(),
            paused: false,
            keep_alive_every,
        }
    }

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
                    self.expected.remove(&p);
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
            let mut fresh = Vec::new();
            for (p, (slot, c)) in self.committed.iter_mut().zip(stored).enumerate() {
                if let Some(c) = c {
                    *slot = c;
                    // A partition assigned now starts at its committed offset.
                    if let std::collections::hash_map::Entry::Vacant(e) =
                        self.expected.entry(p as u32)
                    {
                        e.insert(c);
                        fresh.push((p as u32, c));
                    }
                }
            }
            self.check_assigned(&fresh).await?;
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

    /// Reports the records lost below the committed offsets of partitions assigned now,
    /// `(partition, committed)`: librdkafka would move past them without a word.
    async fn check_assigned(&mut self, fresh: &[(u32, u64)]) -> Result<(), LogError> {
        for &(partition, committed) in fresh {
            let Some(low) = self.low_watermark(partition).await? else {
                continue;
            };
            if low > committed {
                report_loss(&self.losses, partition, committed, low);
                self.expected.insert(partition, low);
            }
        }
        Ok(())
    }

    /// The earliest offset of `partition`, `None` (logged) when the broker does not say.
    async fn low_watermark(&self, partition: u32) -> Result<Option<u64>, LogError> {
        let c = self.consumer.clone();
        let topic = self.topic.clone();
        let timeout = self.timeout;
        let marks = tokio::task::spawn_blocking(move || {
            c.client()
                .fetch_watermarks(&topic, partition as i32, timeout)
        })
        .await
        .map_err(join_error)?;
        match marks {
            Ok((low, _)) => Ok(Some(u64::try_from(low).unwrap_or(0))),
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition, error = %e,
                    "The earliest offset of a partition could not be read; records lost to retention may go unnoticed there.");
                Ok(None)
            }
        }
    }

    /// Moves the expected offsets past `out`, and reports the records lost before any of
    /// them (see the module doc).
    async fn check_gaps(&mut self, out: &[Delivery]) -> Result<(), LogError> {
        let mut gaps = Vec::new();
        for d in out {
            let Position { partition, offset } = d.position;
            if let Some(&e) = self.expected.get(&partition) {
                if offset > e {
                    gaps.push((partition, e, offset));
                }
            }
            self.expected.insert(partition, offset + 1);
        }
        for (partition, expected, delivered) in gaps {
            if let Some(low) = self.low_watermark(partition).await? {
                if let Some((from, to)) = lost_range(expected, delivered, low) {
                    report_loss(&self.losses, partition, from, to);
                }
            }
        }
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
        self.check_gaps(&out).await?;
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
        self.expected.insert(position.partition, position.offset);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_a_loss_only_below_the_earliest_record() {
        // Retention removed 10..40 while the group expected 10: it reads 40 next.
        assert_eq!(lost_range(10, 40, 40), Some((10, 40)));
        // The earliest record is beyond what was delivered (read ahead raced a deletion).
        assert_eq!(lost_range(10, 40, 55), Some((10, 40)));
        // A gap without deletion (compaction, transaction markers): no loss.
        assert_eq!(lost_range(10, 40, 0), None);
        assert_eq!(lost_range(10, 40, 10), None);
        // No gap.
        assert_eq!(lost_range(10, 10, 30), None);
        // A record from before (a seek back, a replay): no loss.
        assert_eq!(lost_range(10, 5, 30), None);
    }

    #[test]
    fn a_loss_is_counted_and_announced() {
        let (tx, mut rx) = tokio::sync::broadcast::channel(4);
        let sink = LossSink {
            topic: "loss-test-topic".into(),
            group: "g".into(),
            tx,
        };
        let before = crate::metrics::offset_out_of_range()
            .get("loss-test-topic")
            .copied()
            .unwrap_or(0);
        report_loss(&sink, 3, 10, 40);
        assert_eq!(
            crate::metrics::offset_out_of_range().get("loss-test-topic"),
            Some(&(before + 1))
        );
        let got = rx.try_recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got,
            OffsetLoss {
                topic: "loss-test-topic".into(),
                group: "g".into(),
                partition: 3,
                from: 10,
                to: 40,
            }
        );
    }
}
