//! The replication pipeline (DESIGN section 2): populator -> `backbeat-replication` -> one
//! replication processor per site -> `backbeat-replication-status` -> status processor -> state
//! store.
//!
//! - [`populator`]: turns discoveries about source keys (scanner, watch, webhook intake,
//!   requeue) into queued entries and their keys' records, each key's current version once.
//! - [`scanner`]: passes comparing each source bucket with the records (initial sync,
//!   rescans, deletions), and the directory watch.
//! - [`processor`]: copies the data of each entry to one site, streaming, and reports the
//!   outcome on the status topic.
//! - `local`: a small file from a directory source to a file site read and written in one
//!   blocking call.
//! - [`status`]: applies the outcomes to the state store, exactly once per (version, site).
//! - [`runner`]: the consuming loop shared by both consumers: bounded concurrency, per-key
//!   order, an offset ledger so only contiguous finished offsets are committed.
//! - [`batch`]: concurrent store updates merged into one transaction.
//! - [`retry`]: bounded retries with exponential backoff and jitter.
//! - [`replay`]: whole-entry replays through the log once retries are spent.
//! - [`pause`]: the per-site pause gate of a replication processor.
//! - [`stage`]: stage tasks with their own cancellation token, stopped in data-flow order.
//! - [`gc`]: garbage collection: a transient source's replicated files, uploads no copy
//!   owns, the state of removed sites.

pub mod batch;
pub mod gc;
mod local;
pub mod pause;
pub mod populator;
pub mod processor;
pub mod replay;
pub mod retry;
pub mod runner;
pub mod scanner;
pub mod stage;
pub mod status;

use crate::log::LogError;
use crate::store::StoreError;

pub use self::populator::Populator;
pub use self::processor::ReplicationProcessor;
pub use self::scanner::Scanner;
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
