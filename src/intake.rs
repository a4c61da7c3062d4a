//! Intake of discovered versions from outside the engine's own scanners: the S3 event
//! notification webhook (`POST notifications/s3`) hands what it parsed to an [`Intake`], which
//! the pipeline's populator implements.

use async_trait::async_trait;

/// A version named by an S3 event notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredVersion {
    /// The event name (`ObjectCreated:Put`, `ObjectRemoved:DeleteMarkerCreated`, ...).
    pub event_name: String,
    /// Source bucket.
    pub bucket: String,
    /// Object key, URL-decoded.
    pub key: String,
    /// Version id; `None` for non-versioned buckets.
    pub version_id: Option<String>,
    /// Size announced by the event, if any.
    pub size: Option<u64>,
    /// ETag announced by the event, if any.
    pub etag: Option<String>,
    /// When the event happened (`eventTime`), in ms since the epoch: lag is measured from it.
    pub event_time_ms: Option<u64>,
}

/// Errors of an intake.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The versions could not be queued durably; the caller should answer 5xx so the sender
    /// retries.
    #[error("cannot queue discovered versions")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Something that queues discovered versions for replication.
#[async_trait]
pub trait Intake: Send + Sync + 'static {
    /// Whether versions of `bucket` are this intake's to queue (a configured source bucket).
    fn serves(&self, bucket: &str) -> bool;

    /// Queues the versions (each once, however often it is discovered); returns how many were
    /// newly queued. Durable on return.
    async fn discovered(&self, versions: Vec<DiscoveredVersion>) -> Result<usize, IntakeError>;

    /// Queues each version again for its sites, whatever their status (`POST crr/requeue`);
    /// returns how many entries were queued. Durable on return.
    async fn requeue(
        &self,
        items: Vec<(crate::model::VersionRef, Vec<String>)>,
    ) -> Result<usize, IntakeError>;
}
