//! The replication pipeline (DESIGN section 2): populator -> `backbeat-replication` -> one
//! replication processor per site -> `backbeat-replication-status` -> status processor -> state
//! store.
//!
//! - [`populator`]: turns discovered versions (scanner, webhook intake) into queued entries and
//!   their PENDING replication info, each version once.
//! - [`processor`]: copies the data of each entry to one site, streaming, and reports the
//!   outcome on the status topic.
//! - [`status`]: applies the outcomes to the state store, exactly once per (version, site).
//! - [`runner`]: the consuming loop shared by both consumers: bounded concurrency, per-key
//!   order, an offset ledger so only contiguous finished offsets are committed.
//! - [`batch`]: concurrent store updates merged into one transaction.
//! - [`retry`]: bounded retries with exponential backoff and jitter.
//! - [`replay`]: whole-entry replays through the log once retries are spent.
//! - [`transitions`]: the pure functions turning each event about a version (queued, outcome,
//!   skipped, retry) into one guarded store update.
//! - [`pause`]: the per-site pause gate of a replication processor.
//! - [`stage`]: stage tasks with their own cancellation token, stopped in data-flow order.

pub mod batch;
pub mod pause;
pub mod populator;
pub mod processor;
pub mod replay;
pub mod retry;
pub mod runner;
pub mod stage;
pub mod status;
pub mod transitions;

use crate::log::LogError;
use crate::store::StoreError;

pub use self::populator::{Populator, Scanner};
pub use self::processor::ReplicationProcessor;
pub use self::stage::StageTasks;
pub use self::status::StatusProcessor;

/// A failure that stops a stage (and the process): the log or the store cannot be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// The log failed.
    #[error("log failure")]
    Log(#[from] LogError),
    /// The state store failed.
    #[error("state store failure")]
    Store(#[from] StoreError),
    /// A task of the stage panicked.
    #[error("a task panicked")]
    Panicked,
    /// The stage's input channel closed unexpectedly.
    #[error("stage input closed")]
    Closed,
}
