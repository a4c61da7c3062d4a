//! The consuming loop shared by the replication processors and the status processor.
//!
//! - Bounded concurrency: at most `concurrency` handlers run at once; up to `prefetch` entries
//!   are read ahead.
//! - Per-key order: entries with the same record key (`bucket/key`) run one after another, in
//!   log order; different keys run in parallel.
//! - Deferred outcomes: a handler whose work is done but not yet final ([`Outcome::Later`]: a
//!   replica written, waiting for the site's group commit) frees its slot for the next entry;
//!   the entry keeps its key and its offset until the outcome is final. So the concurrency
//!   bounds the copies doing I/O, and a commit is shared by everything written meanwhile (at
//!   most `prefetch` entries wait so).
//! - Offset ledger: per partition, the offsets read but not finished. The committed offset is
//!   the lowest unfinished offset (or the end of what was read), so a crash replays exactly
//!   the unfinished entries and never skips one.
//! - Outputs (status entries) are appended in one batch before the offsets of the entries that
//!   produced them are committed.
//! - Read-ahead full: the loop stops reading and calls [`Consumer::keep_alive`] as often as
//!   [`Consumer::keep_alive_every`] asks instead, so the consumer keeps its place in its group
//!   (Kafka).
//! - Shutdown: the loop stops reading, entries not started are dropped (they stay uncommitted
//!   and are replayed after the restart), entries in hand finish, their outputs are appended
//!   and the offsets committed.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::StageError;
use crate::log::{Consumer, Delivery, Log, LogError, Position, Record};

/// What a handler did with an entry.
pub enum Outcome {
    /// Finished; the optional record is appended to the output topic before the commit.
    Done(Option<Record>),
    /// Not finished (the stage is stopping); the entry stays uncommitted.
    Abandoned,
    /// Done but not final: the future gives the final outcome (a replica waiting to be made
    /// durable). The handler's slot is free meanwhile; the entry's key and offset are not.
    Later(Pin<Box<dyn Future<Output = Result<Outcome, StageError>> + Send>>),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Outcome::Abandoned => f.write_str("Abandoned"),
            Outcome::Later(_) => f.write_str("Later"),
        }
    }
}

/// The work done for each entry of a topic.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// A parsed entry.
    type Job: Send + 'static;

    /// Parses an entry; `None` when this stage has nothing to do with it (it is then finished
    /// at once).
    fn prepare(&self, delivery: &Delivery) -> Option<Self::Job>;

    /// Handles one entry. `Err` is fatal for the stage.
    async fn handle(self: Arc<Self>, job: Self::Job) -> Result<Outcome, StageError>;
}

/// Settings of one consuming loop.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Stage name for logs.
    pub stage: &'static str,
    /// Handlers running at once.
    pub concurrency: usize,
    /// Entries read ahead (at least `concurrency`).
    pub prefetch: usize,
    /// Topic the outputs go to.
    pub output_topic: Option<&'static str>,
    /// On stop, read on until the topic is empty (the status processor drains its topic once
    /// the processors have stopped) instead of dropping what was not started.
    pub drain_on_stop: bool,
}

/// Read-but-unfinished offsets per partition.
#[derive(Debug, Default)]
struct Ledger {
    parts: HashMap<u32, PartLedger>,
}

#[derive(Debug, Default)]
struct PartLedger {
    open: BTreeSet<u64>,
    next: u64,
    committed: u64,
}

impl Ledger {
    fn start(&mut self, p: Position) {
        // The first offset read on a partition is where the group's commit already stands.
        let l = self.parts.entry(p.partition).or_insert_with(|| PartLedger {
            open: BTreeSet::new(),
            next: p.offset,
            committed: p.offset,
        });
        l.open.insert(p.offset);
        if p.offset + 1 > l.next {
            l.next = p.offset + 1;
        }
    }

    fn finish(&mut self, p: Position) {
        if let Some(l) = self.parts.get_mut(&p.partition) {
            l.open.remove(&p.offset);
        }
    }

    /// Positions to commit now (the committable offset moved forward).
    fn commits(&mut self) -> Vec<Position> {
        let mut out = Vec::new();
        for (&partition, l) in &mut self.parts {
            let upto = l.open.first().copied().unwrap_or(l.next);
            if upto > l.committed {
                l.committed = upto;
                out.push(Position {
                    partition,
                    offset: upto,
                });
            }
        }
        out
    }
}

struct Queued<J> {
    position: Position,
    key: Vec<u8>,
    job: J,
}

struct Finished {
    position: Position,
    key: Vec<u8>,
    result: Result<Outcome, StageError>,
    /// The final outcome of an [`Outcome::Later`] (it held no slot).
    deferred: bool,
}

/// Idle wait of a poll when nothing is in flight.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How long to wait for completions before reading more entries.
const BUSY_WAIT: Duration = Duration::from_millis(10);
/// Offsets are committed at most this often while entries are in flight.
const COMMIT_EVERY: Duration = Duration::from_millis(100);
/// While entries are in flight, outputs are gathered for up to this long (or until
/// [`OUTPUT_BATCH`] are waiting) before they are appended: one flush of the log then serves
/// many entries instead of one or two. Only the commit of their offsets waits for it.
const OUTPUT_LINGER: Duration = Duration::from_millis(5);
/// Outputs that are appended at once, without waiting for [`OUTPUT_LINGER`].
const OUTPUT_BATCH: usize = 64;
/// The longest wait of the loop while the read-ahead is full or the stage is stopping.
const FULL_WAIT: Duration = Duration::from_secs(1);

/// The append in flight: its outcome and the positions it finishes.
type InFlightAppend = (oneshot::Receiver<Result<(), LogError>>, Vec<Position>);

/// What woke the loop up.
enum Event {
    Finished(Option<Finished>),
    Appended(Result<Result<(), LogError>, oneshot::error::RecvError>),
    Timeout,
}

/// Runs the loop until `token` is cancelled (then drains what is in hand) or a fatal error.
///
/// The outputs of finished entries are appended by one append in flight at a time, pipelined
/// with the copies (the next batch gathers while the previous one is flushed, for at least
/// [`OUTPUT_LINGER`] unless [`OUTPUT_BATCH`] are waiting or nothing runs); offsets are
/// committed at most every [`COMMIT_EVERY`] while busy, at once when idle, and at the end.
pub async fn run<H: Handler>(
    log: Arc<dyn Log>,
    mut consumer: Box<dyn Consumer>,
    handler: Arc<H>,
    cfg: RunnerConfig,
    token: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), StageError> {
    let concurrency = cfg.concurrency.max(1);
    let prefetch = cfg.prefetch.max(concurrency);
    let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
    let mut ledger = Ledger::default();
    let mut ready: VecDeque<Queued<H::Job>> = VecDeque::new();
    let mut blocked: HashMap<Vec<u8>, VecDeque<Queued<H::Job>>> = HashMap::new();
    let mut blocked_count = 0usize;
    let mut active: HashSet<Vec<u8>> = HashSet::new();
    let mut running = 0usize;
    // Entries whose outcome is deferred ([`Outcome::Later`]): no slot, their key held.
    let mut deferred = 0usize;
    let mut stopping = false;
    let mut finished: Vec<Finished> = Vec::new();
    // The append in flight and the positions it finishes; the outputs gathered meanwhile.
    let mut append: Option<InFlightAppend> = None;
    let mut outputs = Outputs::default();
    let mut last_commit = Instant::now();
    let mut last_poll = Instant::now();
    // While the read-ahead is full (a paused or slow site: every handler busy) the loop does
    // not poll; a consumer that must poll to stay in its group (Kafka) says how often.
    let keep_alive_every = consumer.keep_alive_every();
    loop {
        let draining = cfg.drain_on_stop && token.is_cancelled();
        if !stopping && !draining && token.is_cancelled() {
            stopping = true;
            ready.clear();
            blocked.clear();
            blocked_count = 0;
        }
        let flushed = append.is_none() && outputs.records.is_empty();
        if stopping && running == 0 && deferred == 0 && flushed {
            break;
        }
        if !stopping && deferred < prefetch {
            spawn_ready(
                &mut ready,
                &mut running,
                concurrency,
                &handler,
                &tx,
                &tracker,
            );
            let outstanding = running + ready.len() + blocked_count;
            let room = prefetch.saturating_sub(outstanding);
            if room > 0 {
                // Not idle while replicas wait for their commit: their outcomes arrive
                // without an entry to read, and a long poll would hold them back.
                let idle = outstanding == 0 && deferred == 0 && flushed;
                let wait = if idle && !draining {
                    IDLE_POLL
                } else {
                    Duration::ZERO
                };
                let batch = consumer.poll(room, wait).await?;
                last_poll = Instant::now();
                if draining && batch.is_empty() && idle {
                    break;
                }
                for d in batch {
                    ledger.start(d.position);
                    match handler.prepare(&d) {
                        None => ledger.finish(d.position),
                        Some(job) => {
                            let q = Queued {
                                position: d.position,
                                key: d.record.key,
                                job,
                            };
                            if active.contains(&q.key) {
                                blocked.entry(q.key.clone()).or_default().push_back(q);
                                blocked_count += 1;
                            } else {
                                active.insert(q.key.clone());
                                ready.push_back(q);
                            }
                        }
                    }
                }
                if !ready.is_empty() && running < concurrency && deferred < prefetch {
                    continue;
                }
            }
        }
        if running == 0 && deferred == 0 && append.is_none() {
            // Idle (or only outputs waiting, handled below): commit what is finished.
            start_append(&log, &cfg, &tracker, &mut append, &mut outputs, &mut ledger);
            if append.is_none() {
                commit(&mut *consumer, &mut ledger).await?;
                last_commit = Instant::now();
                continue;
            }
        }
        let full = prefetch.saturating_sub(running + ready.len() + blocked_count) == 0;
        if let Some(every) = keep_alive_every.filter(|_| full && !stopping) {
            if last_poll.elapsed() >= every {
                consumer.keep_alive().await?;
                last_poll = Instant::now();
            }
        }
        let mut wait = if stopping || full {
            keep_alive_every.map_or(FULL_WAIT, |every| every.min(FULL_WAIT))
        } else {
            BUSY_WAIT
        };
        if let (Some(since), None) = (outputs.since, append.as_ref()) {
            wait = wait.min(OUTPUT_LINGER.saturating_sub(since.elapsed()));
        }
        let event = {
            let appended = async {
                match append.as_mut() {
                    Some((rx, _)) => rx.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rx.recv(), if running + deferred > 0 => Event::Finished(r),
                r = appended => Event::Appended(r),
                () = tokio::time::sleep(wait) => Event::Timeout,
            }
        };
        match event {
            Event::Timeout => {}
            Event::Appended(r) => {
                r.map_err(|_| StageError::Closed)??;
                if let Some((_, positions)) = append.take() {
                    for p in positions {
                        ledger.finish(p);
                    }
                }
            }
            Event::Finished(None) => return Err(StageError::Closed),
            Event::Finished(Some(f)) => {
                finished.push(f);
                while let Ok(f) = rx.try_recv() {
                    finished.push(f);
                }
                let mut fatal = None;
                for f in finished.drain(..) {
                    if f.deferred {
                        deferred -= 1;
                    } else {
                        running -= 1;
                    }
                    match f.result {
                        Ok(Outcome::Later(later)) => {
                            // The key stays held until the final outcome.
                            deferred += 1;
                            spawn_later(later, f.position, f.key, &tx, &tracker);
                            continue;
                        }
                        Ok(Outcome::Done(Some(r))) => outputs.push(r, f.position),
                        Ok(Outcome::Done(None)) => ledger.finish(f.position),
                        Ok(Outcome::Abandoned) => {}
                        Err(e) => {
                            if fatal.is_none() {
                                fatal = Some(e);
                            }
                        }
                    }
                    // Release the key: the next entry of the same key may start.
                    match blocked.get_mut(&f.key).and_then(VecDeque::pop_front) {
                        Some(next) => {
                            blocked_count -= 1;
                            ready.push_back(next);
                        }
                        None => {
                            blocked.remove(&f.key);
                            active.remove(&f.key);
                        }
                    }
                }
                if let Some(e) = fatal {
                    return Err(e);
                }
                if !stopping && deferred < prefetch {
                    spawn_ready(
                        &mut ready,
                        &mut running,
                        concurrency,
                        &handler,
                        &tx,
                        &tracker,
                    );
                }
            }
        }
        let due = stopping
            || running + deferred == 0
            || outputs.records.len() >= OUTPUT_BATCH
            || outputs.since.is_some_and(|t| t.elapsed() >= OUTPUT_LINGER);
        if due {
            start_append(&log, &cfg, &tracker, &mut append, &mut outputs, &mut ledger);
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            commit(&mut *consumer, &mut ledger).await?;
            last_commit = Instant::now();
        }
    }
    commit(&mut *consumer, &mut ledger).await?;
    tracing::debug!(stage = cfg.stage, "Consumer drained.");
    Ok(())
}

/// Outputs of finished entries waiting for their append.
#[derive(Default)]
struct Outputs {
    records: Vec<Record>,
    positions: Vec<Position>,
    /// When the oldest of them was gathered.
    since: Option<Instant>,
}

impl Outputs {
    fn push(&mut self, record: Record, position: Position) {
        self.records.push(record);
        self.positions.push(position);
        self.since.get_or_insert_with(Instant::now);
    }
}

/// Starts appending the gathered outputs if no append is in flight.
fn start_append(
    log: &Arc<dyn Log>,
    cfg: &RunnerConfig,
    tracker: &TaskTracker,
    append: &mut Option<InFlightAppend>,
    outputs: &mut Outputs,
    ledger: &mut Ledger,
) {
    if append.is_some() || outputs.records.is_empty() {
        return;
    }
    let Outputs {
        records, positions, ..
    } = std::mem::take(outputs);
    let Some(topic) = cfg.output_topic else {
        for p in positions {
            ledger.finish(p);
        }
        return;
    };
    let (done, rx) = oneshot::channel();
    let log = log.clone();
    tracker.spawn(async move {
        let _ = done.send(log.append(topic, records).await.map(|_| ()));
    });
    *append = Some((rx, positions));
}

/// Starts ready entries while fewer than `concurrency` run.
fn spawn_ready<H: Handler>(
    ready: &mut VecDeque<Queued<H::Job>>,
    running: &mut usize,
    concurrency: usize,
    handler: &Arc<H>,
    tx: &mpsc::UnboundedSender<Finished>,
    tracker: &TaskTracker,
) {
    while *running < concurrency {
        let Some(q) = ready.pop_front() else { break };
        *running += 1;
        let h = handler.clone();
        let tx = tx.clone();
        tracker.spawn(async move {
            let result = match AssertUnwindSafe(h.handle(q.job)).catch_unwind().await {
                Ok(r) => r,
                Err(_) => Err(StageError::Panicked),
            };
            let _ = tx.send(Finished {
                position: q.position,
                key: q.key,
                result,
                deferred: false,
            });
        });
    }
}

/// Waits for a deferred outcome in its own task; it arrives as a [`Finished`] like any other.
fn spawn_later(
    later: Pin<Box<dyn Future<Output = Result<Outcome, StageError>> + Send>>,
    position: Position,
    key: Vec<u8>,
    tx: &mpsc::UnboundedSender<Finished>,
    tracker: &TaskTracker,
) {
    let tx = tx.clone();
    tracker.spawn(async move {
        let result = match AssertUnwindSafe(later).catch_unwind().await {
            Ok(r) => r,
            Err(_) => Err(StageError::Panicked),
        };
        let _ = tx.send(Finished {
            position,
            key,
            result,
            deferred: true,
        });
    });
}

async fn commit(consumer: &mut dyn Consumer, ledger: &mut Ledger) -> Result<(), StageError> {
    let positions = ledger.commits();
    if !positions.is_empty() {
        consumer.commit(&positions).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::durability::{Durability, SledDb};
    use crate::log::SledLog;

    fn pos(partition: u32, offset: u64) -> Position {
        Position { partition, offset }
    }

    #[test]
    fn ledger_commits_only_contiguous_finished_offsets() {
        let mut l = Ledger::default();
        for o in 0..4 {
            l.start(pos(0, o));
        }
        l.start(pos(1, 7));
        l.finish(pos(0, 1));
        l.finish(pos(0, 2));
        assert_eq!(l.commits(), Vec::<Position>::new());
        l.finish(pos(0, 0));
        assert_eq!(l.commits(), vec![pos(0, 3)]);
        l.finish(pos(0, 3));
        l.finish(pos(1, 7));
        let mut c = l.commits();
        c.sort();
        assert_eq!(c, vec![pos(0, 4), pos(1, 8)]);
        assert!(l.commits().is_empty());
    }

    /// Hands out records with distinct keys; counts polls and keep-alives.
    #[derive(Default)]
    struct CountingConsumer {
        next: u64,
        polls: Arc<AtomicUsize>,
        keep_alives: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Consumer for CountingConsumer {
        async fn poll(&mut self, max: usize, _wait: Duration) -> Result<Vec<Delivery>, LogError> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            let out = (self.next..self.next + max as u64)
                .map(|offset| Delivery {
                    position: pos(0, offset),
                    record: Record::new(offset.to_string(), "v"),
                })
                .collect();
            self.next += max as u64;
            Ok(out)
        }
        async fn commit(&mut self, _positions: &[Position]) -> Result<(), LogError> {
            Ok(())
        }
        fn seek(&mut self, _position: Position) -> Result<(), LogError> {
            Ok(())
        }
        fn committed(&self) -> Vec<u64> {
            vec![0]
        }
        async fn keep_alive(&mut self) -> Result<(), LogError> {
            self.keep_alives.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn keep_alive_every(&self) -> Option<Duration> {
            Some(TEST_KEEP_ALIVE)
        }
    }

    const TEST_KEEP_ALIVE: Duration = Duration::from_millis(300);

    /// Holds every entry until the stage stops (a paused site).
    struct Stuck(CancellationToken);

    #[async_trait]
    impl Handler for Stuck {
        type Job = ();
        fn prepare(&self, _delivery: &Delivery) -> Option<()> {
            Some(())
        }
        async fn handle(self: Arc<Self>, _job: ()) -> Result<Outcome, StageError> {
            self.0.cancelled().await;
            Ok(Outcome::Abandoned)
        }
    }

    #[tokio::test]
    async fn a_full_read_ahead_keeps_the_consumer_alive_instead_of_polling() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledDb::open(dir.path(), Durability::Group, Duration::from_millis(20)).unwrap();
        let log: Arc<dyn Log> = Arc::new(SledLog::open(db).unwrap());
        let consumer = CountingConsumer::default();
        let (polls, keep_alives) = (consumer.polls.clone(), consumer.keep_alives.clone());
        let token = CancellationToken::new();
        let cfg = RunnerConfig {
            stage: "test",
            concurrency: 2,
            prefetch: 4,
            output_topic: None,
            drain_on_stop: false,
        };
        let tracker = TaskTracker::new();
        let run = tokio::spawn(run(
            log,
            Box::new(consumer),
            Arc::new(Stuck(token.clone())),
            cfg,
            token.clone(),
            tracker,
        ));
        let start = Instant::now();
        while keep_alives.load(Ordering::SeqCst) < 3 {
            assert!(start.elapsed() < Duration::from_secs(10), "no keep-alives");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The first comes TEST_KEEP_ALIVE after the poll at the earliest, then no more often.
        assert!(
            start.elapsed() >= TEST_KEEP_ALIVE * 3,
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the read-ahead filled at once"
        );
        token.cancel();
        run.await.unwrap().unwrap();
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }

    /// Hands out the given keys once, in order; remembers the committed offsets and how long
    /// each poll was allowed to wait.
    struct ListConsumer {
        keys: VecDeque<(u64, String)>,
        committed: Arc<parking_lot::Mutex<u64>>,
        waits: Arc<parking_lot::Mutex<Vec<Duration>>>,
    }

    #[async_trait]
    impl Consumer for ListConsumer {
        async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, LogError> {
            self.waits.lock().push(wait);
            let n = max.min(self.keys.len());
            if n == 0 {
                tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
            }
            Ok(self
                .keys
                .drain(..n)
                .map(|(offset, key)| Delivery {
                    position: pos(0, offset),
                    record: Record::new(key, "v"),
                })
                .collect())
        }
        async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
            for p in positions {
                let mut c = self.committed.lock();
                *c = (*c).max(p.offset);
            }
            Ok(())
        }
        fn seek(&mut self, _position: Position) -> Result<(), LogError> {
            Ok(())
        }
        fn committed(&self) -> Vec<u64> {
            vec![*self.committed.lock()]
        }
    }

    /// Answers every entry with [`Outcome::Later`], final once `release` is cancelled;
    /// records the order entries started in.
    struct Deferring {
        release: CancellationToken,
        started: parking_lot::Mutex<Vec<u64>>,
    }

    #[async_trait]
    impl Handler for Deferring {
        type Job = u64;
        fn prepare(&self, delivery: &Delivery) -> Option<u64> {
            Some(delivery.position.offset)
        }
        async fn handle(self: Arc<Self>, job: u64) -> Result<Outcome, StageError> {
            self.started.lock().push(job);
            let release = self.release.clone();
            Ok(Outcome::Later(Box::pin(async move {
                release.cancelled().await;
                Ok(Outcome::Done(None))
            })))
        }
    }

    /// A runner over a [`ListConsumer`] of `keys` with a [`Deferring`] handler.
    struct DeferringRun {
        handler: Arc<Deferring>,
        committed: Arc<parking_lot::Mutex<u64>>,
        waits: Arc<parking_lot::Mutex<Vec<Duration>>>,
        token: CancellationToken,
        run: tokio::task::JoinHandle<Result<(), StageError>>,
        _dir: tempfile::TempDir,
    }

    impl DeferringRun {
        fn start(keys: VecDeque<(u64, String)>, concurrency: usize) -> DeferringRun {
            let dir = tempfile::tempdir().unwrap();
            let db =
                SledDb::open(dir.path(), Durability::Group, Duration::from_millis(20)).unwrap();
            let log: Arc<dyn Log> = Arc::new(SledLog::open(db).unwrap());
            let committed = Arc::new(parking_lot::Mutex::new(0));
            let waits = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let consumer = ListConsumer {
                keys,
                committed: committed.clone(),
                waits: waits.clone(),
            };
            let handler = Arc::new(Deferring {
                release: CancellationToken::new(),
                started: parking_lot::Mutex::new(Vec::new()),
            });
            let token = CancellationToken::new();
            let cfg = RunnerConfig {
                stage: "test",
                concurrency,
                prefetch: 16,
                output_topic: None,
                drain_on_stop: false,
            };
            let run = tokio::spawn(run(
                log,
                Box::new(consumer),
                handler.clone(),
                cfg,
                token.clone(),
                TaskTracker::new(),
            ));
            DeferringRun {
                handler,
                committed,
                waits,
                token,
                run,
                _dir: dir,
            }
        }

        /// Waits until `n` entries started.
        async fn started(&self, n: usize) {
            let start = Instant::now();
            while self.handler.started.lock().len() < n {
                assert!(start.elapsed() < Duration::from_secs(10), "not started");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        /// Releases every outcome, then waits until offsets up to `offset` are committed.
        async fn release_until_committed(&self, offset: u64) {
            self.handler.release.cancel();
            let start = Instant::now();
            while *self.committed.lock() < offset {
                assert!(start.elapsed() < Duration::from_secs(10), "not committed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn stop(self) {
            self.token.cancel();
            self.run.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_deferred_outcome_frees_its_slot_but_holds_its_key_and_offset() {
        // Ten entries: nine keys, the last one a second entry of the first key.
        let mut keys: VecDeque<(u64, String)> = (0..9).map(|o| (o, format!("k{o}"))).collect();
        keys.push_back((9, "k0".to_string()));
        let r = DeferringRun::start(keys, 2);
        let handler = &r.handler;
        // Far more than the concurrency of 2 start while none is final (the slots are
        // freed); not the second k0.
        r.started(9).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!handler.started.lock().contains(&9), "the key was not held");
        assert_eq!(
            *r.committed.lock(),
            0,
            "an offset was committed before its outcome"
        );
        r.release_until_committed(10).await;
        assert_eq!(handler.started.lock().last(), Some(&9));
        r.stop().await;
    }

    #[tokio::test]
    async fn replicas_waiting_for_their_commit_are_not_held_back_by_a_long_poll() {
        let r = DeferringRun::start((0..4).map(|o| (o, format!("k{o}"))).collect(), 4);
        let waits = &r.waits;
        r.started(4).await;
        // Every copy is done, every outcome waits (a commit in progress): the log is empty,
        // but the loop is not idle. Its polls must not wait: an outcome that becomes final
        // meanwhile would wait for the poll's end (IDLE_POLL) before it is counted.
        let seen = waits.lock().len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let long: Vec<Duration> = waits
            .lock()
            .iter()
            .skip(seen)
            .copied()
            .filter(|w| *w >= IDLE_POLL)
            .collect();
        assert!(
            long.is_empty(),
            "long polls while outcomes waited: {long:?}"
        );
        r.release_until_committed(4).await;
        // Idle again once nothing waits: the loop goes back to long polls.
        let seen = waits.lock().len();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            waits.lock().iter().skip(seen).any(|w| *w >= IDLE_POLL),
            "an idle loop polled without waiting"
        );
        r.stop().await;
    }
}
