//! Domain types shared by every stage and adapter: object versions, what replication knows
//! about one version ([`ObjectInfo`]) and the stream its data travels in ([`ByteStream`]),
//! replication statuses, replication info and the status merge. No I/O here.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

/// The version id of a non-versioned object, as the original writes it in URLs.
pub const NULL_VERSION: &str = "null";

/// One object version: `(bucket, key, version_id)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct VersionRef {
    /// Source bucket.
    pub bucket: String,
    /// Object key (any UTF-8, may contain `/`, `:`, `..`).
    pub key: String,
    /// Version id; `null` for non-versioned objects.
    pub version_id: String,
}

impl VersionRef {
    /// A version reference.
    pub fn new(
        bucket: impl Into<String>,
        key: impl Into<String>,
        version_id: impl Into<String>,
    ) -> Self {
        VersionRef {
            bucket: bucket.into(),
            key: key.into(),
            version_id: version_id.into(),
        }
    }

    /// The partitioning key of the log: `bucket/key`, so one object's versions stay in order.
    pub fn log_key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.bucket.len() + self.key.len() + 1);
        k.extend_from_slice(self.bucket.as_bytes());
        k.push(b'/');
        k.extend_from_slice(self.key.as_bytes());
        k
    }

    /// A structured, unambiguous byte encoding (length-prefixed fields), used in store keys so
    /// that `:` or `/` in a key can never be mis-parsed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(12 + self.bucket.len() + self.key.len() + self.version_id.len());
        for part in [&self.bucket, &self.key, &self.version_id] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }

    /// Decodes [`VersionRef::encode`]'s output; `None` if malformed.
    pub fn decode(mut bytes: &[u8]) -> Option<VersionRef> {
        let mut parts = Vec::with_capacity(3);
        for _ in 0..3 {
            let len_bytes: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
            let len = u32::from_be_bytes(len_bytes) as usize;
            let s = bytes.get(4..4 + len)?;
            parts.push(String::from_utf8(s.to_vec()).ok()?);
            bytes = &bytes[4 + len..];
        }
        if !bytes.is_empty() {
            return None;
        }
        let version_id = parts.pop()?;
        let key = parts.pop()?;
        let bucket = parts.pop()?;
        Some(VersionRef {
            bucket,
            key,
            version_id,
        })
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}?versionId={}",
            self.bucket, self.key, self.version_id
        )
    }
}

/// A stream of object data, from a source to a site. Never a whole object in memory: items are
/// chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// What replication needs to know about one version: what a source reads and a site writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectInfo {
    /// The version.
    pub version: VersionRef,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// Last-modified, ISO-8601 with milliseconds.
    pub last_modified: String,
    /// The standard headers a replica carries (DESIGN section 3, "Metadata fidelity").
    pub headers: ContentHeaders,
    /// User metadata (names without `x-amz-meta-`, lowercase; values exactly as stored,
    /// UTF-8 kept).
    pub user_metadata: BTreeMap<String, String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Whether the version is a delete marker.
    pub is_delete_marker: bool,
    /// The MD5 of the bytes (hex) when known before reading them: an S3 ETag that is an MD5
    /// (a single-part upload), or what a file source computed.
    pub content_md5: Option<String>,
    /// Whether the version is itself a replica (`scal-replication-status: REPLICA` or
    /// `x-amz-replication-status: REPLICA`): never replicated (DESIGN section 3).
    pub replica: bool,
}

impl ObjectInfo {
    /// Last-modified in ms since the epoch (0 when unknown).
    pub fn last_modified_ms(&self) -> u64 {
        ms_of_iso(&self.last_modified)
    }
}

/// The standard headers of an object that a replica carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContentHeaders {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Content-Language`.
    pub content_language: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// `Expires`, as the source gave it.
    pub expires: Option<String>,
}

impl ContentHeaders {
    /// Each header that is set, as `(HTTP name, value)`.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("content-type", &self.content_type),
            ("content-encoding", &self.content_encoding),
            ("content-disposition", &self.content_disposition),
            ("content-language", &self.content_language),
            ("cache-control", &self.cache_control),
            ("expires", &self.expires),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.as_deref().map(|v| (n, v)))
        .collect()
    }

    /// Sets the header named `name` (case-insensitive); `false` when it is not one of them.
    pub fn set(&mut self, name: &str, value: String) -> bool {
        let slot = match name.to_ascii_lowercase().as_str() {
            "content-type" => &mut self.content_type,
            "content-encoding" => &mut self.content_encoding,
            "content-disposition" => &mut self.content_disposition,
            "content-language" => &mut self.content_language,
            "cache-control" => &mut self.cache_control,
            "expires" => &mut self.expires,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// A replication status, global or per site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ReplicationStatus {
    /// Nothing done yet.
    Pending,
    /// Some sites done, others pending (global only).
    Processing,
    /// Done.
    Completed,
    /// Failed after retries and replays.
    Failed,
    /// The copy written at a target.
    Replica,
}

impl ReplicationStatus {
    /// The wire name (`PENDING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationStatus::Pending => "PENDING",
            ReplicationStatus::Processing => "PROCESSING",
            ReplicationStatus::Completed => "COMPLETED",
            ReplicationStatus::Failed => "FAILED",
            ReplicationStatus::Replica => "REPLICA",
        }
    }
}

impl fmt::Display for ReplicationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of one destination site for one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteState {
    /// Site name.
    pub site: String,
    /// Site status.
    pub status: ReplicationStatus,
    /// Version id of the replica at the site, once known (empty until then).
    #[serde(rename = "dataStoreVersionId")]
    pub data_store_version_id: String,
}

/// What the state store keeps per source key (DESIGN section 3, "newest wins"): the key's
/// current version as last queued, and where each site stands with it. One record per key,
/// not per version: a newer version replaces the older one's record, so state grows with the
/// keys of the source, never with their history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyState {
    /// The version id (a delete marker's id, or a synthetic id for a key deleted at a source
    /// without delete markers).
    pub version_id: String,
    /// Source ETag without quotes (the file source's is its version id); with the version id,
    /// what tells two `null` versions apart.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// When the version was written at the source (ms since the epoch): lag is measured from
    /// it.
    pub written_ms: u64,
    /// When it was queued (ms since the epoch).
    pub queued_ms: u64,
    /// The key's current state is "deleted" (a delete marker, or no version any more).
    pub deleted: bool,
    /// First seen long after it was written (initial sync, rescan, new site): counted as
    /// backfill, not lag.
    pub backfill: bool,
    /// One entry per site of the version's rule: PENDING, COMPLETED or FAILED.
    pub sites: Vec<SiteState>,
}

impl KeyState {
    /// The state of `site`, if the version replicates there.
    pub fn site(&self, site: &str) -> Option<&SiteState> {
        self.sites.iter().find(|b| b.site == site)
    }

    /// The global status merged from the sites (`None` when no site is left).
    pub fn status(&self) -> Option<ReplicationStatus> {
        (!self.sites.is_empty()).then(|| merge_status(&self.sites))
    }

    /// Whether this record is about `version_id` (and, for `null` versions, `etag`).
    pub fn is_version(&self, version_id: &str, etag: &str) -> bool {
        self.version_id == version_id && (version_id != NULL_VERSION || self.etag == etag)
    }
}

/// The global status from the per-site statuses (DESIGN section 3): any FAILED -> FAILED; else
/// any PENDING -> PROCESSING if at least one site is done, PENDING if none is; else COMPLETED.
pub fn merge_status(backends: &[SiteState]) -> ReplicationStatus {
    if backends
        .iter()
        .any(|b| b.status == ReplicationStatus::Failed)
    {
        return ReplicationStatus::Failed;
    }
    let pending = backends
        .iter()
        .filter(|b| {
            matches!(
                b.status,
                ReplicationStatus::Pending | ReplicationStatus::Processing
            )
        })
        .count();
    if pending > 0 {
        if pending < backends.len() {
            ReplicationStatus::Processing
        } else {
            ReplicationStatus::Pending
        }
    } else {
        ReplicationStatus::Completed
    }
}

/// Site-level counters, as the original's `bb:crr:<dp>` data points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Metric {
    /// Operations queued.
    Ops,
    /// Bytes queued.
    Bytes,
    /// Operations completed.
    OpsDone,
    /// Bytes completed.
    BytesDone,
    /// Operations failed.
    OpsFail,
    /// Bytes failed.
    BytesFail,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Metric; 6] = [
        Metric::Ops,
        Metric::Bytes,
        Metric::OpsDone,
        Metric::BytesDone,
        Metric::OpsFail,
        Metric::BytesFail,
    ];

    /// Position in [`Metric::ALL`].
    pub fn index(self) -> usize {
        usize::from(self.code() - 1)
    }

    /// Its code in store keys (1..=6).
    pub(crate) fn code(self) -> u8 {
        match self {
            Metric::Ops => 1,
            Metric::Bytes => 2,
            Metric::OpsDone => 3,
            Metric::BytesDone => 4,
            Metric::OpsFail => 5,
            Metric::BytesFail => 6,
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 time; 0 when it does not parse.
pub fn ms_of_iso(s: &str) -> u64 {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(s: ReplicationStatus) -> SiteState {
        SiteState {
            site: "x".into(),
            status: s,
            data_store_version_id: String::new(),
        }
    }

    #[test]
    fn merge_follows_design() {
        use ReplicationStatus::*;
        assert_eq!(merge_status(&[st(Pending), st(Pending)]), Pending);
        assert_eq!(merge_status(&[st(Completed), st(Pending)]), Processing);
        assert_eq!(merge_status(&[st(Completed), st(Failed)]), Failed);
        assert_eq!(merge_status(&[st(Pending), st(Failed)]), Failed);
        assert_eq!(merge_status(&[st(Completed), st(Completed)]), Completed);
    }

    #[test]
    fn version_ref_encoding_is_unambiguous() {
        let a = VersionRef::new("b:1", "k:2/../x", "v:3");
        let enc = a.encode();
        assert_eq!(VersionRef::decode(&enc), Some(a));
        assert_eq!(VersionRef::decode(&enc[..enc.len() - 1]), None);
    }
}
