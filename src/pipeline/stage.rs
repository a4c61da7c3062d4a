//! Tasks of one pipeline stage (STYLE section D): each stage has its own cancellation token
//! and task tracker, so `app.rs` stops the stages one at a time in data-flow order. A task that
//! fails or panics cancels the root token and marks the process as failed (exit code 1).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::StageError;

/// Tasks of one pipeline stage. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StageTasks {
    name: &'static str,
    root: CancellationToken,
    token: CancellationToken,
    tracker: TaskTracker,
    failed: Arc<AtomicBool>,
}

impl StageTasks {
    /// A stage named `name`; a failure cancels `root` and sets `failed`.
    pub fn new(name: &'static str, root: CancellationToken, failed: Arc<AtomicBool>) -> StageTasks {
        StageTasks {
            name,
            root,
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            failed,
        }
    }

    /// The stage's own token: cancelled when the stage is asked to stop.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The stage's tracker, for helper tasks that report through their own channel.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Spawns a long-running task of this stage. If it fails or panics, the whole process
    /// starts shutting down and will exit non-zero. A task that returns `Ok` while the stage
    /// is not stopping also stops the process (a stage never stops on its own).
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = Result<(), StageError>> + Send + 'static,
    {
        let root = self.root.clone();
        let token = self.token.clone();
        let failed = self.failed.clone();
        let stage = self.name;
        self.tracker.spawn(async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(())) => {
                    tracing::info!(stage, "Stage stopped.");
                    if !token.is_cancelled() {
                        root.cancel();
                    }
                }
                Ok(Err(error)) => {
                    let cause = crate::error::chain(&error);
                    tracing::error!(stage, %error, cause, "Stage failed; shutting down.");
                    failed.store(true, Ordering::SeqCst);
                    root.cancel();
                }
                Err(_) => {
                    tracing::error!(stage, "Stage panicked; shutting down.");
                    failed.store(true, Ordering::SeqCst);
                    root.cancel();
                }
            }
        });
    }

    /// Cancels this stage and waits up to `grace` for its tasks; `false` when it timed out.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}
