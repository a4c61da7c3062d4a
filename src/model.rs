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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The version.
    pub version: VersionRef,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// Last-modified, ISO-8601 with milliseconds.
    pub last_modified: String,
    /// Content type.
    pub content_type: Option<String>,
    /// User metadata (names without `x-amz-meta-`).
    pub user_metadata: BTreeMap<String, String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Whether the version is a delete marker.
    pub is_delete_marker: bool,
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

/// Replication information of one version (mirrors the original's `replicationInfo`, plus what
/// is needed to write the replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationInfo {
    /// Global status, merged from the sites.
    pub status: Option<ReplicationStatus>,
    /// One entry per destination site.
    pub backends: Vec<SiteState>,
    /// `["DATA","METADATA"]`, or `["METADATA"]` for 0-byte objects.
    pub content: Vec<String>,
    /// Destination bucket (ARN or name).
    pub destination: String,
    /// Comma list of site names.
    pub storage_class: String,
    /// Object size in bytes.
    pub size: u64,
    /// Source ETag.
    pub etag: String,
    /// Source last-modified, ISO-8601.
    pub last_modified: String,
    /// Content type of the source object.
    pub content_type: Option<String>,
    /// User metadata (without the `x-amz-meta-` prefix).
    pub user_metadata: BTreeMap<String, String>,
    /// Object tags.
    pub tags: BTreeMap<String, String>,
}

impl ReplicationInfo {
    /// Replication info for a new version: every site PENDING.
    pub fn pending(sites: &[String]) -> ReplicationInfo {
        let mut info = ReplicationInfo {
            backends: sites
                .iter()
                .map(|s| SiteState {
                    site: s.clone(),
                    status: ReplicationStatus::Pending,
                    data_store_version_id: String::new(),
                })
                .collect(),
            storage_class: sites.join(","),
            ..ReplicationInfo::default()
        };
        info.status = Some(merge_status(&info.backends));
        info
    }

    /// The state of `site`, if the version replicates there.
    pub fn site(&self, site: &str) -> Option<&SiteState> {
        self.backends.iter().find(|b| b.site == site)
    }

    /// Sets `site`'s status following the transition rules (COMPLETED is final; a retry moves
    /// FAILED to PENDING) and re-merges the global status. Returns whether anything changed.
    pub fn set_site_status(
        &mut self,
        site: &str,
        status: ReplicationStatus,
        data_store_version_id: Option<&str>,
    ) -> bool {
        let Some(b) = self.backends.iter_mut().find(|b| b.site == site) else {
            return false;
        };
        if b.status == ReplicationStatus::Completed && status != ReplicationStatus::Completed {
            return false;
        }
        let mut changed = b.status != status;
        b.status = status;
        if let Some(v) = data_store_version_id {
            if b.data_store_version_id != v {
                b.data_store_version_id = v.to_string();
                changed = true;
            }
        }
        self.status = Some(merge_status(&self.backends));
        changed
    }

    /// Drops `site` from the version's sites (the version is gone or changed at the source, so
    /// it will never be copied there) unless the site is COMPLETED, and re-merges the global
    /// status. Returns whether anything changed.
    pub fn remove_site(&mut self, site: &str) -> bool {
        let before = self.backends.len();
        self.backends
            .retain(|b| b.site != site || b.status == ReplicationStatus::Completed);
        if self.backends.len() == before {
            return false;
        }
        self.status = Some(merge_status(&self.backends));
        true
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
    fn completed_is_final() {
        let mut info = ReplicationInfo::pending(&["a".into(), "b".into()]);
        assert!(info.set_site_status("a", ReplicationStatus::Completed, Some("v1")));
        assert_eq!(info.status, Some(ReplicationStatus::Processing));
        assert!(!info.set_site_status("a", ReplicationStatus::Failed, None));
        assert_eq!(
            info.site("a").map(|s| s.status),
            Some(ReplicationStatus::Completed)
        );
        assert!(info.set_site_status("b", ReplicationStatus::Failed, None));
        assert_eq!(info.status, Some(ReplicationStatus::Failed));
        assert!(info.set_site_status("b", ReplicationStatus::Pending, None));
        assert_eq!(info.status, Some(ReplicationStatus::Processing));
    }

    #[test]
    fn version_ref_encoding_is_unambiguous() {
        let a = VersionRef::new("b:1", "k:2/../x", "v:3");
        let enc = a.encode();
        assert_eq!(VersionRef::decode(&enc), Some(a));
        assert_eq!(VersionRef::decode(&enc[..enc.len() - 1]), None);
    }
}
