//! Default values of the configuration, one named function each (serde needs functions).

use std::path::PathBuf;

/// API bind address: loopback only.
pub fn host() -> String {
    "127.0.0.1".into()
}
/// API port, as the original.
pub fn port() -> u16 {
    8900
}
/// Clients allowed by default: loopback, as the original's `healthChecks.allowFrom`.
pub fn allow_from() -> Vec<String> {
    vec!["127.0.0.1/8".into(), "::1".into()]
}
/// Seconds a client has to send a request's headers, then its body.
pub fn header_timeout_s() -> u64 {
    10
}
/// API connections served at once.
pub fn max_connections() -> usize {
    1024
}
/// Embedded database directory.
pub fn data_path() -> PathBuf {
    PathBuf::from("./backbeat-data")
}
/// Interval-mode flush period.
pub fn flush_interval_ms() -> u64 {
    100
}
/// Partitions per topic.
pub fn partitions() -> u32 {
    8
}
/// Garbage collection passes.
pub fn gc_interval_s() -> u64 {
    3600
}
/// Age at which another process's multipart upload is abandoned.
pub fn upload_max_age_s() -> u64 {
    86_400
}
/// The embedded database's page cache, in MiB: sized for a small machine (sled holds a few
/// times its cache with many keys; DESIGN section 10).
pub fn cache_mb() -> u64 {
    crate::durability::DEFAULT_CACHE_MB
}
/// Retention and expiry sweep period.
pub fn retention_interval_s() -> u64 {
    60
}
/// Kafka topic replication factor: the broker's `default.replication.factor`.
pub fn kafka_replication_factor() -> i32 {
    -1
}
/// Kafka consumer session timeout: librdkafka's default (45 s). Brokers with a slow group
/// join (Tansu) want about 6 s.
pub fn kafka_session_timeout_ms() -> u64 {
    45_000
}
/// Kafka consumer heartbeat interval: librdkafka's default (3 s); 1 s with a 6 s session.
pub fn kafka_heartbeat_interval_ms() -> u64 {
    3_000
}
/// Kafka consumer max poll interval: librdkafka's default (300 s). A processor that cannot take
/// records still polls every quarter of it (`Consumer::keep_alive_every`).
pub fn kafka_max_poll_interval_ms() -> u64 {
    300_000
}
/// Kafka producer request timeout: the original's 5 s.
pub fn kafka_request_timeout_ms() -> u64 {
    5_000
}
/// MongoDB database.
pub fn mongo_database() -> String {
    "backbeat".into()
}
/// S3 region.
pub fn region() -> String {
    "us-east-1".into()
}
/// Versions listing period.
pub fn scan_interval_s() -> u64 {
    30
}
/// Longest wait, in seconds, for the head of an S3 or Azure answer, or between two pieces of
/// its body. A healthy server, even loaded, sends the head of its answer to a PUT within a
/// few seconds of the last byte (and a request with a body gets its upload time at
/// `min_upload_rate` on top), so 15 s tells a silent peer within a short outage's span rather
/// than a minute later, without failing slow but working servers.
pub fn request_timeout_s() -> u64 {
    15
}
/// Path-style addressing (what self-hosted S3 servers expect).
pub fn path_style() -> bool {
    true
}
/// Copies in flight per site, as the original's `queueProcessor.concurrency`.
pub fn concurrency() -> usize {
    10
}
/// Multipart threshold, as the original's `minMPUSizeMB`.
pub fn mpu_threshold_mb() -> u64 {
    20
}
/// Attempts per entry, as the original's cloud targets.
pub fn max_retries() -> u32 {
    5
}
/// Retry timeout of the original's cloud targets.
pub fn timeout_s() -> u64 {
    900
}
/// First backoff of the original's cloud targets.
pub fn backoff_min_ms() -> u64 {
    60_000
}
/// Largest backoff of the original's cloud targets.
pub fn backoff_max_ms() -> u64 {
    900_000
}
/// Backoff factor of the original.
pub fn backoff_factor() -> f64 {
    1.5
}
/// Backoff jitter of the original.
pub fn jitter() -> f64 {
    0.1
}
/// Whole-entry replays before FAILED, as the original's replay topic.
pub fn replay() -> u32 {
    5
}
/// Rules are enabled unless said otherwise.
pub fn enabled() -> bool {
    true
}
/// Grace period after SIGTERM.
pub fn grace_period_s() -> u64 {
    30
}
/// Pipeline stages of an engine: all of them.
pub fn stages() -> Vec<super::Stage> {
    super::Stage::ALL.to_vec()
}

/// Seconds between rescans of a watched directory (the watch finds changes at once).
pub const WATCHED_SCAN_INTERVAL_S: u64 = 300;

/// A rescan leaves files modified less than this many ms ago to a later pass.
pub const SETTLE_MS: u64 = 2000;

/// A version first seen more than this many seconds after its write is backfill, and a site
/// whose oldest pending version is older is `behind`.
pub fn lag_target_s() -> u64 {
    60
}

/// A site with work waiting and no completion for this many seconds is `stalled`.
pub fn stall_after_s() -> u64 {
    120
}
