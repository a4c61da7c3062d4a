//! The consuming loop shared by the replication processors and the status processor.
//!
//! - Bounded concurrency: at most `concurrency` handlers run at once; up to `prefetch` entries
//!   are read ahead.
//! - Per-key order: entries with the same record key (`bucket/key`) run one after another, in
//!   log order; different keys run in parallel.
//! - Offset ledger: per partition, the offsets read but not finished. The committed offset is
//!   the lowest unfinished offset (or the end of what was read), so a crash replays exactly
//!   the unfinished entries and never skips one.
//! - Outputs (status entries) are appended in one batch before the offsets of the entries that
//!   produced them are committed.
//! - Shutdown: the loop stops reading, entries not started are dropped (they stay uncommitted
//!   and are replayed after the restart), entries in hand finish, their outputs are appended
//!   and the offsets committed.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::StageError;
use crate::log::{Consumer, Delivery, Log, Position, Record};

/// What a handler did with an entry.
#[derive(Debug)]
pub enum Outcome {
    /// Finished; the optional record is appended to the output topic before the commit.
    Done(Option<Record>),
    /// Not finished (the stage is stopping); the entry stays uncommitted.
    Abandoned,
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
    async fn handle(&self, job: Self::Job) -> Result<Outcome, StageError>;
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
}

/// Idle wait of a poll when nothing is in flight.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How long to wait for completions before reading more entries.
const BUSY_WAIT: Duration = Duration::from_millis(10);

/// Runs the loop until `token` is cancelled (then drains what is in hand) or a fatal error.
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
    let mut stopping = false;
    let mut finished: Vec<Finished> = Vec::new();
    loop {
        let draining = cfg.drain_on_stop && token.is_cancelled();
        if !stopping && !draining && token.is_cancelled() {
            stopping = true;
            ready.clear();
            blocked.clear();
            blocked_count = 0;
        }
        if stopping && running == 0 {
            break;
        }
        if !stopping {
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
                let wait = if outstanding == 0 && !draining {
                    IDLE_POLL
                } else {
                    Duration::ZERO
                };
                let batch = consumer.poll(room, wait).await?;
                if draining && batch.is_empty() && outstanding == 0 {
                    break;
                }
                let mut any_skipped = false;
                for d in batch {
                    ledger.start(d.position);
                    match handler.prepare(&d) {
                        None => {
                            ledger.finish(d.position);
                            any_skipped = true;
                        }
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
                if any_skipped && running == 0 && ready.is_empty() {
                    commit(&mut *consumer, &mut ledger).await?;
                }
                if !ready.is_empty() && running < concurrency {
                    continue;
                }
            }
        }
        if running == 0 {
            continue;
        }
        // Wait for at least one completion (bounded, so new entries are read soon), then take
        // every other completion already there.
        let wait =
            if stopping || prefetch.saturating_sub(running + ready.len() + blocked_count) == 0 {
                Duration::from_secs(1)
            } else {
                BUSY_WAIT
            };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(f)) => finished.push(f),
            Ok(None) => return Err(StageError::Closed),
            Err(_) => continue,
        }
        while let Ok(f) = rx.try_recv() {
            finished.push(f);
        }
        let mut outputs = Vec::new();
        let mut fatal = None;
        let mut done = Vec::with_capacity(finished.len());
        for f in finished.drain(..) {
            running -= 1;
            match f.result {
                Ok(Outcome::Done(out)) => {
                    if let Some(r) = out {
                        outputs.push(r);
                    }
                    done.push(f.position);
                }
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
        // Keep the slots busy while the outputs and offsets are flushed.
        if !stopping {
            spawn_ready(
                &mut ready,
                &mut running,
                concurrency,
                &handler,
                &tx,
                &tracker,
            );
        }
        if !outputs.is_empty() {
            if let Some(topic) = cfg.output_topic {
                log.append(topic, outputs).await?;
            }
        }
        for p in done {
            ledger.finish(p);
        }
        commit(&mut *consumer, &mut ledger).await?;
    }
    commit(&mut *consumer, &mut ledger).await?;
    tracing::debug!(stage = cfg.stage, "Consumer drained.");
    Ok(())
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
            });
        });
    }
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
    use super::*;

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
}
