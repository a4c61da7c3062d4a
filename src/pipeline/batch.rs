//! Group updates of the state store: concurrent guarded updates (those arriving within a 2 ms
//! linger) are merged into one transaction (one flush, no write conflicts between them on the
//! shared counters). If the
//! merged transaction finds a guard false (a replayed entry), each update is applied on its
//! own, so the outcome is exactly as if they had been applied one by one.
//!
//! Callers must never have two updates of the same (version, site) in flight at once (the
//! runner's per-key order guarantees it): guards are checked before any operation of the
//! merged transaction is applied.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::store::{Guard, StateStore, StoreError, StoreOp};

/// Updates merged into one transaction at most.
const MAX_MERGED: usize = 512;
/// How long a batch waits for more updates after its first (one flush then serves many).
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

type Reply = oneshot::Sender<Result<bool, StoreError>>;

/// Handle of a batching task. Cheap to clone; the task ends when every handle is dropped.
#[derive(Clone, Debug)]
pub struct StoreBatcher {
    tx: mpsc::Sender<(Vec<Guard>, Vec<StoreOp>, Reply)>,
}

fn copy_error(e: &StoreError) -> StoreError {
    StoreError::Storage(Box::new(std::io::Error::other(e.to_string())))
}

impl StoreBatcher {
    /// Starts the batching task on `tracker`.
    pub fn start(store: Arc<dyn StateStore>, tracker: &TaskTracker) -> StoreBatcher {
        let (tx, mut rx) = mpsc::channel::<(Vec<Guard>, Vec<StoreOp>, Reply)>(MAX_MERGED * 2);
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

    /// Applies one guarded update (merged with concurrent ones); whether it was applied.
    ///
    /// # Errors
    /// The store's error.
    pub async fn apply(&self, guards: Vec<Guard>, ops: Vec<StoreOp>) -> Result<bool, StoreError> {
        let (reply, rx) = oneshot::channel();
        let closed = || StoreError::Invalid("store batcher stopped".into());
        self.tx
            .send((guards, ops, reply))
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

/// Applies `batch` as one transaction, or one by one when a guard fails.
pub async fn apply_merged(store: &dyn StateStore, batch: Vec<(Vec<Guard>, Vec<StoreOp>, Reply)>) {
    if batch.len() == 1 {
        if let Some((g, o, reply)) = batch.into_iter().next() {
            let _ = reply.send(store.apply(g, o).await);
        }
        return;
    }
    let mut guards = Vec::new();
    let mut ops = Vec::new();
    for (g, o, _) in &batch {
        guards.extend(g.iter().cloned());
        ops.extend(o.iter().cloned());
    }
    match store.apply(guards, ops).await {
        Ok(true) => {
            for (_, _, reply) in batch {
                let _ = reply.send(Ok(true));
            }
        }
        Ok(false) => {
            for (g, o, reply) in batch {
                let _ = reply.send(store.apply(g, o).await);
            }
        }
        Err(e) => {
            for (_, _, reply) in batch {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}
