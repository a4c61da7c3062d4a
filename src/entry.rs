//! Entries of `backbeat-replication` and `backbeat-replication-status`: what they say
//! ([`Entry`]), how each kind is built, and both encodings (DESIGN section 3, "Entry
//! encoding"). This module owns every entry: the stages build them through its constructors
//! ([`Entry::queued`], [`Entry::outcome`], [`Entry::replay`], [`Entry::retry`]) and read them
//! through one parser ([`Entry::from_delivery`], which logs and counts a record that does not
//! decode, so none is dropped silently).
//!
//! Two encodings, one model:
//! - [`EntryFormat::Json`], the original's (reference sections 2.1 and 2.2), used on Kafka so a
//!   Zenko deployment's topics stay readable:
//!   ```json
//!   {"type": "put", "bucket": "src", "key": "photo.jpg",
//!    "value": "<ObjectMD as a JSON string>", "site": "aws-1", "replayCount": 4}
//!   ```
//!   `key` is the plain object key (the version is `value.versionId`); `site` is absent on the
//!   populator's entries (each site's processor keeps those whose
//!   `replicationInfo.storageClass` names it) and present on status, retry and replay entries;
//!   a status entry carries the site's outcome in `replicationInfo.backends[]`. Our additions
//!   are top-level members the original ignores: `skipped` (a site will never get the
//!   version: `superseded` or `replica`), `failure` (`{"reason", "attempts", "lastError",
//!   "lastAttempt"}` of a FAILED outcome), `backfill`.
//! - [`EntryFormat::Binary`], compact, for the embedded sled log: a leading byte
//!   [`BINARY_MAGIC`] then the bincode of [`Entry`]. It holds only what a copy needs (no user
//!   metadata: the processor reads the version's metadata from the source when it copies).
//!
//! Decoding accepts both, told apart by the first byte (`{` for JSON).
//!
//! The log record key is `encodeURIComponent("<bucket>/<key>")` (reference 2.0.1), so all the
//! versions of one object land in one partition, in order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::FailureReason;
use crate::log::{Delivery, Record};
use crate::model::{merge_status, ReplicationStatus, SiteState, VersionRef, NULL_VERSION};
use crate::transitions::{DropReason, FailedInfo, QueuedVersion, SiteOutcome};

/// First byte of a binary-encoded entry (a JSON entry starts with `{`).
pub const BINARY_MAGIC: u8 = 0xB1;

pub use crate::log::EntryFormat;

/// The `type` of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A version to replicate (a delete marker is a put with `isDeleteMarker`).
    #[default]
    Put,
    /// The key has no version any more at the source (every version deleted for good): its
    /// replica is removed.
    Del,
}

/// An entry of the replication topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `put` or `del`.
    pub kind: EntryKind,
    /// The version (for `del`, the last version the engine queued for the key).
    pub version: VersionRef,
    /// Source ETag without quotes.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// When the version was written at the source (ms since the epoch).
    pub written_ms: u64,
    /// A delete marker (or, with `del`, the key deleted).
    pub deleted: bool,
    /// First seen long after it was written: backfill, not lag.
    pub backfill: bool,
    /// When the populator queued it (ms, its clock): the key's record is older news than an
    /// entry queued after it last changed (an undelete can make an older version current
    /// again, so the source's write times do not order them). 0 when unknown (an entry of
    /// the original).
    pub queued_ms: u64,
    /// The sites this entry is for (the rule's, or the one site of a retry or replay).
    pub sites: Vec<String>,
    /// The site of a status, retry or replay entry.
    pub site: Option<String>,
    /// Whole-entry re-attempts left, absent until the first failure.
    pub replay_count: Option<u32>,
    /// Attempts already made by earlier replays of this entry.
    pub attempts: u32,
    /// An operator's requeue: the replica is written again even if one of this version is
    /// already there (it may be corrupt).
    pub requeued: bool,
    /// On a status entry: the site's outcome.
    pub outcome: Option<SiteOutcome>,
}

/// Errors decoding an entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The record is not a valid entry.
    #[error("invalid entry: {0}")]
    Invalid(String),
}

impl Entry {
    /// The entry the populator queues for `version` (a key's current version) and the rule's
    /// `sites`.
    pub fn queued(bucket: &str, key: &str, version: &QueuedVersion, sites: Vec<String>) -> Entry {
        Entry {
            kind: EntryKind::Put,
            version: VersionRef::new(bucket, key, version.version_id.clone()),
            etag: version.etag.clone(),
            size: version.size,
            written_ms: version.written_ms,
            deleted: version.deleted,
            backfill: version.backfill,
            queued_ms: 0,
            sites,
            site: None,
            replay_count: None,
            attempts: 0,
            requeued: false,
            outcome: None,
        }
    }

    /// The entry removing `bucket/key`'s replica: the key has no version any more.
    pub fn deletion(bucket: &str, key: &str, version: &QueuedVersion, sites: Vec<String>) -> Entry {
        let mut e = Entry::queued(bucket, key, version, sites);
        e.kind = EntryKind::Del;
        e.deleted = true;
        e
    }

    /// The version as the state store records it.
    pub fn queued_version(&self) -> QueuedVersion {
        QueuedVersion {
            version_id: self.version.version_id.clone(),
            etag: self.etag.clone(),
            size: self.size,
            written_ms: self.written_ms,
            deleted: self.deleted,
            backfill: self.backfill,
        }
    }

    /// The retry entry of this version for `site` (the original's `toRetryEntry`): for that
    /// site only.
    pub fn retry(&self, site: &str) -> Entry {
        let mut e = self.clone();
        e.sites = vec![site.to_string()];
        e.site = Some(site.to_string());
        e.outcome = None;
        e.replay_count = None;
        e.attempts = 0;
        e
    }

    /// The replay entry of this entry for `site` (reference 3.7): for that site only, with
    /// `replay_count`, carrying the attempts made so far.
    pub fn replay(&self, site: &str, replay_count: u32, attempts: u32) -> Entry {
        let mut e = self.retry(site);
        e.replay_count = Some(replay_count);
        e.attempts = attempts;
        e
    }

    /// The status entry reporting `outcome` at `site`.
    pub fn outcome(&self, site: &str, outcome: SiteOutcome) -> Entry {
        let mut e = self.clone();
        e.site = Some(site.to_string());
        e.outcome = Some(outcome);
        e
    }

    /// Whether this entry is for `site`.
    pub fn is_for(&self, site: &str) -> bool {
        self.sites.iter().any(|s| s == site)
    }

    /// Encodes the entry as a log record value in `format`.
    pub fn encode(&self, format: EntryFormat) -> Vec<u8> {
        match format {
            EntryFormat::Binary => {
                let mut out = vec![BINARY_MAGIC];
                if let Ok(body) = bincode::serde::encode_to_vec(self, bincode::config::standard()) {
                    out.extend_from_slice(&body);
                }
                out
            }
            EntryFormat::Json => {
                serde_json::to_vec(&QueueEntry::from_entry(self)).unwrap_or_default()
            }
        }
    }

    /// The log record of this entry in `format`.
    pub fn record(&self, format: EntryFormat) -> Record {
        Record::new(
            log_key(&self.version.bucket, &self.version.key),
            self.encode(format),
        )
    }

    /// Decodes a log record value in either format, checking the sanity rules of the original
    /// (bucket and key are strings, the bucket is not empty, `value` parses).
    ///
    /// # Errors
    /// `EntryError::Invalid` describing the problem.
    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        let e = match bytes.split_first() {
            Some((&BINARY_MAGIC, body)) => {
                bincode::serde::decode_from_slice::<Entry, _>(body, bincode::config::standard())
                    .map(|(e, _)| e)
                    .map_err(|e| EntryError::Invalid(format!("binary entry: {e}")))?
            }
            _ => {
                let q: QueueEntry = serde_json::from_slice(bytes)
                    .map_err(|e| EntryError::Invalid(e.to_string()))?;
                q.to_entry()?
            }
        };
        if e.version.bucket.is_empty() {
            return Err(EntryError::Invalid("empty bucket".into()));
        }
        Ok(e)
    }

    /// Parses a record delivered from `topic`; a record that does not decode is logged with
    /// its position and counted (`backbeat_log_undecodable_total`), then `None`.
    pub fn from_delivery(topic: &str, delivery: &Delivery) -> Option<Entry> {
        match Entry::decode(&delivery.record.value) {
            Ok(e) => Some(e),
            Err(error) => {
                crate::metrics::count_undecodable(topic);
                tracing::warn!(topic, partition = delivery.position.partition,
                    offset = delivery.position.offset, %error,
                    "Skipping a log record that does not decode as an entry.");
                None
            }
        }
    }
}

/// ISO-8601 with milliseconds of `ms` since the epoch.
pub fn iso_ms(ms: u64) -> String {
    let ns = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The original's JSON.

/// An entry as the original writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// `put` (a delete marker is a put with `isDeleteMarker`), or `del`.
    #[serde(rename = "type", default)]
    pub kind: EntryKind,
    /// Source bucket.
    pub bucket: String,
    /// Object key.
    pub key: String,
    /// The object metadata, serialized as a JSON string.
    pub value: String,
    /// The site this entry is about (status and retry entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Whole-entry re-attempts left, absent until the first failure.
    #[serde(
        rename = "replayCount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub replay_count: Option<u32>,
    /// Ours: on a status entry, why the site will never get the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<DropReason>,
    /// Ours: on a FAILED status entry, what is known of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<JsonFailure>,
    /// Ours: attempts made by earlier replays.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Ours: backfill rather than live replication.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backfill: bool,
    /// Ours: when it was queued (ms).
    #[serde(rename = "queuedMs", default, skip_serializing_if = "is_zero_u64")]
    pub queued_ms: u64,
    /// Ours: an operator's requeue (written again whatever the site holds).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requeue: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// Ours: a FAILED outcome's details in a JSON status entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonFailure {
    /// Typed reason.
    pub reason: FailureReason,
    /// Attempts made.
    pub attempts: u32,
    /// Last error, one line.
    pub last_error: String,
    /// When the last attempt ended (ms).
    pub last_attempt: u64,
}

/// The `replicationInfo` of an ObjectMD, as the original serializes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationInfoMd {
    /// Global status (`""` when not replicated).
    #[serde(default)]
    pub status: String,
    /// Per-site states.
    #[serde(default)]
    pub backends: Vec<SiteState>,
    /// `["DATA","METADATA"]` or `["METADATA"]`.
    #[serde(default)]
    pub content: Vec<String>,
    /// Destination bucket.
    #[serde(default)]
    pub destination: String,
    /// Comma list of sites.
    #[serde(default)]
    pub storage_class: String,
    /// Bucket replication role.
    #[serde(default)]
    pub role: String,
    /// Comma list of external location types among the sites (`aws_s3`, `azure`).
    #[serde(default)]
    pub storage_type: String,
    /// Version id at the destination.
    #[serde(default)]
    pub data_store_version_id: String,
    /// Whether the source is NFS.
    #[serde(default, rename = "isNFS")]
    pub is_nfs: Option<bool>,
}

/// The object metadata carried in a JSON entry (the original's ObjectMD, the fields
/// replication uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ObjectMd {
    /// Version id (`null` for non-versioned objects).
    #[serde(rename = "versionId", default)]
    pub version_id: Option<String>,
    /// Size in bytes.
    #[serde(rename = "content-length", default)]
    pub content_length: u64,
    /// ETag without quotes.
    #[serde(rename = "content-md5", default)]
    pub content_md5: String,
    /// Last-modified, ISO-8601.
    #[serde(rename = "last-modified", default)]
    pub last_modified: String,
    /// Whether this version is a delete marker.
    #[serde(
        rename = "isDeleteMarker",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub is_delete_marker: bool,
    /// Object tags (not carried by our entries: read from the source at copy time).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Replication information.
    #[serde(rename = "replicationInfo", default)]
    pub replication_info: ReplicationInfoMd,
    /// Every other member (user metadata as `x-amz-meta-*`, fields we do not use).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The sites of a `storageClass` comma list (`:preferred_read` suffixes dropped).
pub fn sites_of(storage_class: &str) -> Vec<String> {
    storage_class
        .split(',')
        .map(|s| s.split(':').next().unwrap_or("").trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses a status name; `None` for `""` or unknown.
pub fn parse_status(s: &str) -> Option<ReplicationStatus> {
    Some(match s {
        "PENDING" => ReplicationStatus::Pending,
        "PROCESSING" => ReplicationStatus::Processing,
        "COMPLETED" => ReplicationStatus::Completed,
        "FAILED" => ReplicationStatus::Failed,
        "REPLICA" => ReplicationStatus::Replica,
        _ => return None,
    })
}

impl QueueEntry {
    /// The original's entry for `e`.
    pub fn from_entry(e: &Entry) -> QueueEntry {
        let mut backends: Vec<SiteState> = e
            .sites
            .iter()
            .map(|s| SiteState {
                site: s.clone(),
                status: ReplicationStatus::Pending,
                data_store_version_id: String::new(),
            })
            .collect();
        let (mut skipped, mut failure) = (None, None);
        let mut global = ReplicationStatus::Pending;
        if let (Some(site), Some(outcome)) = (&e.site, &e.outcome) {
            let (status, dsv) = match outcome {
                SiteOutcome::Completed {
                    data_store_version_id,
                } => (
                    ReplicationStatus::Completed,
                    data_store_version_id.clone().unwrap_or_default(),
                ),
                SiteOutcome::Failed(info) => {
                    failure = Some(JsonFailure {
                        reason: info.reason,
                        attempts: info.attempts,
                        last_error: info.last_error.clone(),
                        last_attempt: info.last_attempt_ms,
                    });
                    (ReplicationStatus::Failed, String::new())
                }
                SiteOutcome::Dropped(why) => {
                    skipped = Some(*why);
                    (ReplicationStatus::Pending, String::new())
                }
            };
            match backends.iter_mut().find(|b| &b.site == site) {
                Some(b) => {
                    b.status = status;
                    b.data_store_version_id = dsv;
                }
                None => backends.push(SiteState {
                    site: site.clone(),
                    status,
                    data_store_version_id: dsv,
                }),
            }
            global = if status == ReplicationStatus::Failed {
                ReplicationStatus::Failed
            } else {
                merge_status(&backends)
            };
        }
        let md = ObjectMd {
            version_id: Some(e.version.version_id.clone()),
            content_length: e.size,
            content_md5: e.etag.clone(),
            last_modified: iso_ms(e.written_ms),
            is_delete_marker: e.deleted && e.kind == EntryKind::Put,
            tags: BTreeMap::new(),
            replication_info: ReplicationInfoMd {
                status: global.as_str().to_string(),
                backends,
                content: if e.size == 0 || e.deleted {
                    vec!["METADATA".into()]
                } else {
                    vec!["DATA".into(), "METADATA".into()]
                },
                storage_class: e.sites.join(","),
                ..ReplicationInfoMd::default()
            },
            extra: Map::new(),
        };
        QueueEntry {
            kind: e.kind,
            bucket: e.version.bucket.clone(),
            key: e.version.key.clone(),
            value: serde_json::to_string(&md).unwrap_or_else(|_| "{}".into()),
            site: e.site.clone(),
            replay_count: e.replay_count,
            skipped,
            failure,
            attempts: e.attempts,
            backfill: e.backfill,
            queued_ms: e.queued_ms,
            requeue: e.requeued,
        }
    }

    /// Parses the metadata in `value`.
    ///
    /// # Errors
    /// `EntryError::Invalid` when `value` is not an ObjectMD JSON object.
    pub fn metadata(&self) -> Result<ObjectMd, EntryError> {
        serde_json::from_str(&self.value).map_err(|e| EntryError::Invalid(format!("value: {e}")))
    }

    /// The entry this JSON says (the original's, or ours).
    ///
    /// # Errors
    /// `EntryError::Invalid` when `value` does not parse.
    pub fn to_entry(&self) -> Result<Entry, EntryError> {
        let md = self.metadata()?;
        let ri = &md.replication_info;
        let version_id = md
            .version_id
            .clone()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| NULL_VERSION.to_string());
        let mut sites = sites_of(&ri.storage_class);
        if sites.is_empty() {
            sites = ri.backends.iter().map(|b| b.site.clone()).collect();
        }
        let outcome = match &self.site {
            None => None,
            Some(site) => {
                if let Some(why) = self.skipped {
                    Some(SiteOutcome::Dropped(why))
                } else {
                    match ri
                        .backends
                        .iter()
                        .find(|b| &b.site == site)
                        .map(|b| b.status)
                    {
                        Some(ReplicationStatus::Completed) => {
                            let dsv = ri
                                .backends
                                .iter()
                                .find(|b| &b.site == site)
                                .map(|b| b.data_store_version_id.clone())
                                .filter(|d| !d.is_empty());
                            Some(SiteOutcome::Completed {
                                data_store_version_id: dsv,
                            })
                        }
                        Some(ReplicationStatus::Failed) => {
                            let f = self.failure.clone();
                            Some(SiteOutcome::Failed(FailedInfo {
                                size: md.content_length,
                                written_ms: crate::model::ms_of_iso(&md.last_modified),
                                reason: f.as_ref().map_or(FailureReason::Rejected, |f| f.reason),
                                attempts: f.as_ref().map_or(0, |f| f.attempts),
                                last_error: f
                                    .as_ref()
                                    .map(|f| f.last_error.clone())
                                    .unwrap_or_default(),
                                last_attempt_ms: f.as_ref().map_or(0, |f| f.last_attempt),
                            }))
                        }
                        // A retry or replay entry (site PENDING): no outcome.
                        _ => None,
                    }
                }
            }
        };
        Ok(Entry {
            kind: self.kind,
            version: VersionRef::new(self.bucket.clone(), self.key.clone(), version_id),
            etag: md.content_md5.clone(),
            size: md.content_length,
            written_ms: crate::model::ms_of_iso(&md.last_modified),
            deleted: md.is_delete_marker || self.kind == EntryKind::Del,
            backfill: self.backfill,
            queued_ms: self.queued_ms,
            sites,
            site: self.site.clone(),
            replay_count: self.replay_count,
            attempts: self.attempts,
            requeued: self.requeue,
            outcome,
        })
    }
}

/// `encodeURIComponent("<bucket>/<key>")`, the original's message key.
pub fn log_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut out = String::with_capacity(bucket.len() + key.len() + 8);
    encode_uri_component_into(bucket, &mut out);
    out.push_str("%2F");
    encode_uri_component_into(key, &mut out);
    out.into_bytes()
}

/// JavaScript's `encodeURIComponent`.
pub fn encode_uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    encode_uri_component_into(s, &mut out);
    out
}

fn encode_uri_component_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        let mut e = Entry::queued(
            "b",
            "k:1/é",
            &QueuedVersion {
                version_id: "v1".into(),
                etag: "e1".into(),
                size: 10,
                written_ms: 1_700_000_000_123,
                deleted: false,
                backfill: true,
            },
            vec!["s1".into(), "s2".into()],
        );
        e.queued_ms = 1_700_000_001_000;
        e
    }

    #[test]
    fn encode_uri_component_matches_javascript() {
        assert_eq!(
            encode_uri_component("a b/c:d?#%+é"),
            "a%20b%2Fc%3Ad%3F%23%25%2B%C3%A9"
        );
        assert_eq!(log_key("bk", "x/y"), b"bk%2Fx%2Fy".to_vec());
    }

    #[test]
    fn every_kind_roundtrips_in_both_formats() {
        let q = sample();
        let failed = FailedInfo {
            size: 10,
            written_ms: 1_700_000_000_123,
            reason: FailureReason::Timeout,
            attempts: 7,
            last_error: "frozen".into(),
            last_attempt_ms: 9,
        };
        let entries = [
            q.clone(),
            q.retry("s2"),
            q.replay("s1", 3, 5),
            q.outcome(
                "s1",
                SiteOutcome::Completed {
                    data_store_version_id: Some("r1".into()),
                },
            ),
            q.outcome("s2", SiteOutcome::Failed(failed)),
            q.outcome("s2", SiteOutcome::Dropped(DropReason::Superseded)),
            Entry::deletion("b", "gone", &q.queued_version(), vec!["s1".into()]),
        ];
        for e in entries {
            for f in [EntryFormat::Binary, EntryFormat::Json] {
                let back = Entry::decode(&e.encode(f)).unwrap();
                assert_eq!(back, e, "{f:?}");
            }
        }
    }

    #[test]
    fn the_json_is_the_originals() {
        let q = sample().outcome(
            "s1",
            SiteOutcome::Completed {
                data_store_version_id: Some("r1".into()),
            },
        );
        let json: Value = serde_json::from_slice(&q.encode(EntryFormat::Json)).unwrap();
        assert_eq!(json["type"], "put");
        assert_eq!(json["bucket"], "b");
        assert_eq!(json["key"], "k:1/é");
        assert_eq!(json["site"], "s1");
        let md: Value = serde_json::from_str(json["value"].as_str().unwrap()).unwrap();
        assert_eq!(md["versionId"], "v1");
        assert_eq!(md["content-length"], 10);
        assert_eq!(md["last-modified"], "2023-11-14T22:13:20.123Z");
        assert_eq!(md["replicationInfo"]["storageClass"], "s1,s2");
        assert_eq!(md["replicationInfo"]["status"], "PROCESSING");
        assert_eq!(md["replicationInfo"]["backends"][0]["status"], "COMPLETED");
        assert_eq!(
            md["replicationInfo"]["backends"][0]["dataStoreVersionId"],
            "r1"
        );
        // An original retry entry (toRetryEntry) decodes as one for its site.
        let original = br#"{"bucket":"b","key":"k","site":"aws","replayCount":2,
            "value":"{\"versionId\":\"v9\",\"content-length\":3,\"replicationInfo\":{\"status\":\"PENDING\",\"storageClass\":\"aws\",\"backends\":[{\"site\":\"aws\",\"status\":\"PENDING\",\"dataStoreVersionId\":\"\"}]}}"}"#;
        let e = Entry::decode(original).unwrap();
        assert_eq!(e.version, VersionRef::new("b", "k", "v9"));
        assert_eq!(e.sites, vec!["aws".to_string()]);
        assert_eq!(e.replay_count, Some(2));
        assert_eq!(e.outcome, None);
        // The binary form is several times smaller.
        assert!(
            sample().encode(EntryFormat::Binary).len() * 4
                < sample().encode(EntryFormat::Json).len()
        );
    }

    #[test]
    fn records_that_do_not_decode_are_counted() {
        let delivery = |value: &[u8]| Delivery {
            position: crate::log::Position {
                partition: 1,
                offset: 7,
            },
            record: Record::new(b"k".to_vec(), value.to_vec()),
        };
        let before = crate::metrics::undecodable()
            .get("entry-test-topic")
            .copied()
            .unwrap_or(0);
        for bad in [
            &b"not json"[..],
            &[BINARY_MAGIC, 1, 2][..],
            br#"{"bucket":"","key":"k","value":"{}"}"#,
            br#"{"bucket":"b","key":"k","value":"[1]"}"#,
            br#"{"type":"unknown","bucket":"b","key":"k","value":"{}"}"#,
        ] {
            assert!(Entry::from_delivery("entry-test-topic", &delivery(bad)).is_none());
        }
        let ok = br#"{"type":"del","bucket":"b","key":"k","value":"{}"}"#;
        let e = Entry::from_delivery("entry-test-topic", &delivery(ok)).unwrap();
        assert_eq!(e.kind, EntryKind::Del);
        assert_eq!(e.version.version_id, NULL_VERSION);
        assert_eq!(
            crate::metrics::undecodable()
                .get("entry-test-topic")
                .copied(),
            Some(before + 5)
        );
    }
}
