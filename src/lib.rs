//! backbeat: an asynchronous object replication engine (a Rust re-implementation of Scality's
//! Backbeat) on an embedded durable log and state store.
//!
//! Crate map:
//! - [`config`]: the TOML configuration, read into typed sections that are checked as read.
//! - [`control`]: per-site pause/resume channels and the scheduled-resume task.
//! - [`bandwidth`]: per-site bandwidth limits (syntax, timetables, the limiter copies pass
//!   through, run-time changes).
//! - [`durability`]: the embedded sled database and its flush policy (group commit).
//! - [`log`]: the durable log (topics, partitions, consumer groups); [`log::SledLog`].
//! - [`store`]: the state store (replication info, failed set, pause state, metrics, cursors,
//!   locks); [`store::SledStore`].
//! - [`entry`]: the JSON wire format of replication entries (the original's).
//! - [`intake`]: the hand-off of webhook-discovered versions to the populator.
//! - [`error`]: the retry/fail disposition and the failure reasons shared by adapters and
//!   stages.
//! - [`metrics`]: process-wide counters (retries, replays, skips, undecodable records).
//! - [`source`], [`site`]: where versions come from and where replicas go (traits).
//! - [`pipeline`]: populator, replication processors, status processor (the stages).
//! - [`s3`]: the SigV4-signed S3 client shared by the `s3` source and the `aws_s3` site.
//! - [`http`]: the HTTP client, bodies, URI encoding and XML reader shared by the S3 client and
//!   the `azure` site.
//! - [`model`]: versions, replication statuses and the status merge, the per-key record.
//! - [`transitions`]: the one pure function turning a change to a source key (queued, outcome,
//!   retry, requeue, site removed) into its new record and effects; the stores apply it.
//! - [`observe`]: the operator's view in memory (attempts, reasons, lag, short-window
//!   throughput, scans) and the site states; fed by the pipeline, read by the API.
//! - [`api`]: the REST API (hyper).
//! - [`app`]: builds the engine from a configuration and runs it until shutdown.
//! - [`checksum`]: MD5 computed while streaming (integrity end to end).
//! - [`blocking`]: short blocking calls queued and run together on a few pool threads (the
//!   file source's opens).
//! - [`fswalk`]: directory trees walked in key byte order with bounded memory (file source and
//!   file site listings).
//! - [`clock`]: wall-clock time, injectable for expiry tests.
//! - [`client`]: a client of the running engine's API (`backbeat status`, `verify --repair`).
//! - [`verify`]: `backbeat verify`, each site compared with its source key by key.
//! - [`telemetry`]: logging setup.
//! - [`testkit`]: helpers for crash tests that need a separate process.

pub mod api;
pub mod app;
pub mod bandwidth;
pub mod blocking;
pub mod checksum;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod durability;
pub mod entry;
pub mod error;
pub mod fswalk;
pub mod http;
pub mod intake;
pub mod log;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod pipeline;
pub mod s3;
pub mod site;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod testkit;
pub mod tls;
pub mod transitions;
pub mod verify;
