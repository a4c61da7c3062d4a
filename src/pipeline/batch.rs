//! Group updates of the state store: concurrent updates (those arriving within a 2 ms linger)
//! are merged into one transaction: one flush, and no write conflicts between them on the
//! shared counters. Each key change checks its own preconditions inside the transaction
//! ([`crate::transitions::apply`]), so merging changes nothing about the outcome: each caller
//! gets back, per op of its own, whether it changed anything. Two changes of the same key in
//! one batch are applied in arrival order.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::store::{StateStore, StoreError, StoreOp};

/// Updates merged into one transaction at most.
const MAX_MERGED: usize = 512;
/// How long a batch waits for more updates after its first (one flush then serves many).
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Where a caller's answer goes: per op, whether it changed anything.
pub type Reply = oneshot::Sender<Result<Vec<bool>, StoreError>>;

/// Handle of a batching task. Cheap to clone; the task ends when every handle is dropped.
#[derive(Clone, Debug)]
pub struct StoreBatcher {
    tx: mpsc::Sender<(Vec<StoreOp>, Reply)>,
}

/// The error of a merged update, for each of its callers: a transient one stays transient (so
/// a caller that retries store outages still does), anything else is a storage failure.
fn copy_error(e: &StoreError) -> StoreError {
    let copy = Box::new(std::io::Error::other(crate::error::chain(e)));
    if e.is_transient() {
        StoreError::Unavailable(copy)
    } else {
        StoreError::Storage(copy)
    }
}

impl StoreBatcher {
    /// Starts the batching task on `tracker`.
    pub fn start(store: Arc<dyn StateStore>, tracker: &TaskTracker) -> StoreBatcher {
        let (tx, mut rx) = mpsc::channel::<(Vec<StoreOp>, Reply)>(MAX_MERGED * 2);
        tracker.spawn(async move {
            let mut batch = Vec::with_capacity(MAX_MERGED);
            while rx.recv_many(&mut batch, MAX_MERGED).await > 0 {
                let deadline = tokio::time::Instant::now() + LINGER;
                while batch.len() < MAX_MERGED {
                    let room = MAX_MERGED - batch.len();
                    match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
                apply_merged(&*store, std::mem::take(&mut batch)).await;
            }
        });
        StoreBatcher { tx }
    }

    /// Applies `ops` (merged with concurrent updates); per op, whether it changed anything.
    ///
    /// # Errors
    /// The store's error.
    pub async fn apply(&self, ops: Vec<StoreOp>) -> Result<Vec<bool>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let closed = || StoreError::Invalid("store batcher stopped".into());
        self.tx.send((ops, reply)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

/// Applies `batch` as one transaction and hands each caller its own ops' results.
pub async fn apply_merged(store: &dyn StateStore, batch: Vec<(Vec<StoreOp>, Reply)>) {
    let mut ops = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for (o, reply) in batch {
        replies.push((o.len(), reply));
        ops.extend(o);
    }
    match store.apply(ops).await {
        Ok(changed) => {
            let mut rest = changed.into_iter();
            for (n, reply) in replies {
                let mine: Vec<bool> = rest.by_ref().take(n).collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}
