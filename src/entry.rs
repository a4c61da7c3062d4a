//! Wire format of the entries on `backbeat-replication` and `backbeat-replication-status`: the
//! original's JSON (reference sections 2.1 and 2.2), so a deployment can move between the
//! original and backbeat topic by topic.
//!
//! ```json
//! {"type": "put", "bucket": "src", "key": "photo.jpg",
//!  "value": "<ObjectMD as a JSON string>", "site": "aws-1", "replayCount": 4}
//! ```
//! - `key` is the plain object key (the version is `value.versionId`), as the original's retry
//!   entries carry it;
//! - `site` is absent on entries from the populator (each site's processor keeps the entries
//!   whose `replicationInfo.storageClass` names it) and present on status and retry entries;
//! - `replayCount` is absent until the first failure.
//!
//! The log record key is `encodeURIComponent("<bucket>/<key>")` (reference 2.0.1), so all the
//! versions of one object land in one partition, in order.
//!
//! This module owns every entry: the stages build them through its constructors
//! ([`QueueEntry::queued`], [`Parsed::outcome`], [`Parsed::skipped`], [`Parsed::replay`],
//! [`QueueEntry::retry`]) and read them through one parser ([`Parsed::parse`], or
//! [`Parsed::from_delivery`], which logs and counts a record that does not decode, so none is
//! dropped silently).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::log::{Delivery, Record};
use crate::model::{
    merge_status, ReplicationInfo, ReplicationStatus, SiteState, VersionRef, NULL_VERSION,
};

/// The `type` of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A version to replicate (a delete marker is a put with `isDeleteMarker`).
    #[default]
    Put,
    /// The original's deletion entry (a version deleted for good); nothing to replicate.
    Del,
}

/// Why a processor did not copy a version (on a status entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SkipReason {
    /// The version no longer exists at the source.
    Gone,
    /// The version changed at the source since it was queued.
    Changed,
}

impl SkipReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Gone => "gone",
            SkipReason::Changed => "changed",
        }
    }
}

/// An entry of the replication topics.
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
    /// On a status entry: the version was not copied because it is gone (`gone`) or changed
    /// (`changed`) at the source, so the site will never have it (the original writes no
    /// status then and the version stays PENDING, counted as pending forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<SkipReason>,
}

/// Errors decoding an entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The record is not the expected JSON.
    #[error("invalid entry: {0}")]
    Invalid(String),
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

/// The object metadata carried in an entry (the original's ObjectMD, the fields replication
/// uses). User metadata are top-level `x-amz-meta-*` members, as in the original.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ObjectMd {
    /// Version id (`null` for non-versioned objects).
    #[serde(rename = "versionId", default)]
    pub version_id: Option<String>,
    /// Size in bytes.
    #[serde(rename = "content-length", default)]
    pub content_length: u64,
    /// Content type.
    #[serde(
        rename = "content-type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<String>,
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
    /// Object tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Replication information.
    #[serde(rename = "replicationInfo", default)]
    pub replication_info: ReplicationInfoMd,
    /// Every other member (user metadata as `x-amz-meta-*`, fields we do not use).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ObjectMd {
    /// User metadata (names without the `x-amz-meta-` prefix).
    pub fn user_metadata(&self) -> BTreeMap<String, String> {
        self.extra
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("x-amz-meta-")?;
                Some((name.to_string(), v.as_str()?.to_string()))
            })
            .collect()
    }

    /// Builds the metadata of `version` from the store's replication info.
    pub fn from_info(version: &VersionRef, info: &ReplicationInfo) -> ObjectMd {
        let mut extra = Map::new();
        for (k, v) in &info.user_metadata {
            extra.insert(format!("x-amz-meta-{k}"), Value::String(v.clone()));
        }
        ObjectMd {
            version_id: Some(version.version_id.clone()),
            content_length: info.size,
            content_type: info.content_type.clone(),
            content_md5: info.etag.clone(),
            last_modified: info.last_modified.clone(),
            is_delete_marker: false,
            tags: info.tags.clone(),
            replication_info: ReplicationInfoMd {
                status: info
                    .status
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                backends: info.backends.clone(),
                content: info.content.clone(),
                destination: info.destination.clone(),
                storage_class: info.storage_class.clone(),
                role: String::new(),
                storage_type: String::new(),
                data_store_version_id: String::new(),
                is_nfs: None,
            },
            extra,
        }
    }

    /// The store's replication info from this metadata.
    pub fn to_info(&self) -> ReplicationInfo {
        ReplicationInfo {
            status: parse_status(&self.replication_info.status),
            backends: self.replication_info.backends.clone(),
            content: self.replication_info.content.clone(),
            destination: self.replication_info.destination.clone(),
            storage_class: self.replication_info.storage_class.clone(),
            size: self.content_length,
            etag: self.content_md5.clone(),
            last_modified: self.last_modified.clone(),
            content_type: self.content_type.clone(),
            user_metadata: self.user_metadata(),
            tags: self.tags.clone(),
        }
    }

    /// The sites named by `replicationInfo.storageClass` (`:preferred_read` suffixes dropped).
    pub fn sites(&self) -> Vec<String> {
        sites_of(&self.replication_info.storage_class)
    }
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

/// `md` narrowed to `site` (the original's `toRetryEntry`): backends reduced to the site (its
/// `dataStoreVersionId` kept), site PENDING, `storageClass` = the site, global PENDING.
fn narrowed(mut md: ObjectMd, site: &str) -> ObjectMd {
    let dsv = md
        .replication_info
        .backends
        .iter()
        .find(|b| b.site == site)
        .map(|b| b.data_store_version_id.clone())
        .unwrap_or_default();
    md.replication_info.backends = vec![SiteState {
        site: site.to_string(),
        status: ReplicationStatus::Pending,
        data_store_version_id: dsv,
    }];
    md.replication_info.storage_class = site.to_string();
    md.replication_info.status = ReplicationStatus::Pending.as_str().into();
    md
}

impl QueueEntry {
    /// The entry the populator queues for `version`, carrying `md` (every site of the rule).
    pub fn queued(version: &VersionRef, md: &ObjectMd) -> QueueEntry {
        QueueEntry {
            kind: EntryKind::Put,
            bucket: version.bucket.clone(),
            key: version.key.clone(),
            value: serde_json::to_string(md).unwrap_or_else(|_| "{}".into()),
            site: None,
            replay_count: None,
            skipped: None,
        }
    }

    /// The retry entry of `version` for `site` (the original's `toRetryEntry`), built from the
    /// store's replication info.
    pub fn retry(version: &VersionRef, info: &ReplicationInfo, site: &str) -> QueueEntry {
        let md = narrowed(ObjectMd::from_info(version, info), site);
        let mut e = QueueEntry::queued(version, &md);
        e.site = Some(site.to_string());
        e
    }

    /// Parses the metadata in `value`.
    ///
    /// # Errors
    /// `EntryError::Invalid` when `value` is not an ObjectMD JSON object.
    pub fn metadata(&self) -> Result<ObjectMd, EntryError> {
        serde_json::from_str(&self.value).map_err(|e| EntryError::Invalid(format!("value: {e}")))
    }

    /// The version this entry is about.
    ///
    /// # Errors
    /// `EntryError::Invalid` when the metadata cannot be parsed.
    pub fn version(&self) -> Result<VersionRef, EntryError> {
        Ok(self.version_with(&self.metadata()?))
    }

    fn version_with(&self, md: &ObjectMd) -> VersionRef {
        VersionRef::new(
            self.bucket.clone(),
            self.key.clone(),
            md.version_id
                .clone()
                .unwrap_or_else(|| NULL_VERSION.to_string()),
        )
    }

    /// Encodes the entry as its log record value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a log record value, checking the sanity rules of the original (bucket and key
    /// are strings; `value` parses).
    ///
    /// # Errors
    /// `EntryError::Invalid` describing the problem.
    pub fn decode(bytes: &[u8]) -> Result<QueueEntry, EntryError> {
        Parsed::parse(bytes).map(|p| p.entry)
    }

    /// The log record key: `encodeURIComponent("<bucket>/<key>")`.
    pub fn log_key(&self) -> Vec<u8> {
        log_key(&self.bucket, &self.key)
    }

    /// The log record of this entry.
    pub fn record(&self) -> Record {
        Record::new(self.log_key(), self.encode())
    }
}

/// A delivered entry, parsed once: the version it is about, its metadata and the entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The version.
    pub version: VersionRef,
    /// The object metadata (`value`).
    pub md: ObjectMd,
    /// The entry itself.
    pub entry: QueueEntry,
}

impl Parsed {
    /// Parses a log record value, checking the sanity rules of the original (bucket and key
    /// are strings, the bucket is not empty, `value` parses).
    ///
    /// # Errors
    /// `EntryError::Invalid` describing the problem.
    pub fn parse(bytes: &[u8]) -> Result<Parsed, EntryError> {
        let entry: QueueEntry =
            serde_json::from_slice(bytes).map_err(|e| EntryError::Invalid(e.to_string()))?;
        if entry.bucket.is_empty() {
            return Err(EntryError::Invalid("empty bucket".into()));
        }
        let md = entry.metadata()?;
        let version = entry.version_with(&md);
        Ok(Parsed { version, md, entry })
    }

    /// Parses a record delivered from `topic`; a record that does not decode is logged with
    /// its position and counted (`backbeat_log_undecodable_total`), then `None`.
    pub fn from_delivery(topic: &str, delivery: &Delivery) -> Option<Parsed> {
        match Parsed::parse(&delivery.record.value) {
            Ok(p) => Some(p),
            Err(error) => {
                crate::metrics::count_undecodable(topic);
                tracing::warn!(topic, partition = delivery.position.partition,
                    offset = delivery.position.offset, %error,
                    "Skipping a log record that does not decode as an entry.");
                None
            }
        }
    }

    /// The status entry reporting `status` at `site` (the replica's version id there when
    /// known), for the status processor. The global status is FAILED on a failure, else the
    /// merge of the sites as the entry knows them.
    pub fn outcome(
        &self,
        site: &str,
        status: ReplicationStatus,
        data_store_version_id: Option<String>,
    ) -> QueueEntry {
        let mut md = self.md.clone();
        let ri = &mut md.replication_info;
        match ri.backends.iter_mut().find(|b| b.site == site) {
            Some(b) => {
                b.status = status;
                if let Some(v) = &data_store_version_id {
                    b.data_store_version_id = v.clone();
                }
            }
            None => ri.backends.push(SiteState {
                site: site.to_string(),
                status,
                data_store_version_id: data_store_version_id.unwrap_or_default(),
            }),
        }
        ri.status = if status == ReplicationStatus::Failed {
            ReplicationStatus::Failed.as_str().to_string()
        } else {
            merge_status(&ri.backends).as_str().to_string()
        };
        self.at_site(md, site)
    }

    /// The status entry of a version `site` did not copy because it is gone or changed at
    /// the source.
    pub fn skipped(&self, site: &str, why: SkipReason) -> QueueEntry {
        let mut e = self.at_site(self.md.clone(), site);
        e.skipped = Some(why);
        e
    }

    /// The replay entry of this entry for `site` (reference 3.7): narrowed to the site, with
    /// `replay_count`.
    pub fn replay(&self, site: &str, replay_count: u32) -> QueueEntry {
        let mut e = self.at_site(narrowed(self.md.clone(), site), site);
        e.replay_count = Some(replay_count);
        e
    }

    /// An entry of this kind about this version at `site`, carrying `md` and this entry's
    /// replay count.
    fn at_site(&self, md: ObjectMd, site: &str) -> QueueEntry {
        let mut e = QueueEntry::queued(&self.version, &md);
        e.kind = self.entry.kind;
        e.site = Some(site.to_string());
        e.replay_count = self.entry.replay_count;
        e
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

    #[test]
    fn encode_uri_component_matches_javascript() {
        assert_eq!(
            encode_uri_component("a b/c:d?#%+é"),
            "a%20b%2Fc%3Ad%3F%23%25%2B%C3%A9"
        );
        assert_eq!(log_key("bk", "x/y"), b"bk%2Fx%2Fy".to_vec());
    }

    #[test]
    fn entry_roundtrips_and_keeps_user_metadata() {
        let v = VersionRef::new("b", "k:1/é", "v1");
        let mut info = ReplicationInfo::pending(&["s1".into(), "s2".into()]);
        info.size = 10;
        info.user_metadata.insert("color".into(), "blue".into());
        let e = QueueEntry::queued(&v, &ObjectMd::from_info(&v, &info));
        let d = QueueEntry::decode(&e.encode()).unwrap();
        assert_eq!(d.version().unwrap(), v);
        let md = d.metadata().unwrap();
        assert_eq!(
            md.user_metadata().get("color").map(String::as_str),
            Some("blue")
        );
        assert_eq!(md.sites(), vec!["s1".to_string(), "s2".to_string()]);
        assert_eq!(md.to_info().size, 10);
        let r = QueueEntry::retry(&v, &info, "s2");
        let rmd = r.metadata().unwrap();
        assert_eq!(rmd.sites(), vec!["s2".to_string()]);
        assert_eq!(rmd.replication_info.backends.len(), 1);
    }

    #[test]
    fn replay_entries_are_narrowed_to_the_site() {
        let v = VersionRef::new("b", "k", "v1");
        let mut md = ObjectMd {
            version_id: Some("v1".into()),
            ..ObjectMd::default()
        };
        md.replication_info.storage_class = "a,b".into();
        md.replication_info.backends = vec![
            SiteState {
                site: "a".into(),
                status: ReplicationStatus::Pending,
                data_store_version_id: String::new(),
            },
            SiteState {
                site: "b".into(),
                status: ReplicationStatus::Completed,
                data_store_version_id: "x".into(),
            },
        ];
        let parsed = Parsed::parse(&QueueEntry::queued(&v, &md).encode()).unwrap();
        let e = QueueEntry::decode(&parsed.replay("a", 3).encode()).expect("decodes");
        assert_eq!(e.replay_count, Some(3));
        assert_eq!(e.kind, EntryKind::Put);
        let md = e.metadata().expect("metadata");
        assert_eq!(md.sites(), vec!["a".to_string()]);
        assert_eq!(md.replication_info.backends.len(), 1);
        assert_eq!(e.version().expect("version"), v);
    }

    #[test]
    fn outcomes_and_skips_name_their_site_and_keep_the_kind() {
        let v = VersionRef::new("b", "k", "v1");
        let info = ReplicationInfo::pending(&["a".into(), "c".into()]);
        let mut queued = QueueEntry::queued(&v, &ObjectMd::from_info(&v, &info));
        queued.replay_count = Some(2);
        let parsed = Parsed::parse(&queued.encode()).unwrap();
        let done = Parsed::parse(
            &parsed
                .outcome("a", ReplicationStatus::Completed, Some("r1".into()))
                .encode(),
        )
        .unwrap();
        assert_eq!(done.entry.site.as_deref(), Some("a"));
        assert_eq!(done.entry.replay_count, Some(2));
        let a = done
            .md
            .replication_info
            .backends
            .iter()
            .find(|b| b.site == "a");
        assert_eq!(a.map(|b| b.status), Some(ReplicationStatus::Completed));
        assert_eq!(done.md.replication_info.status, "PROCESSING");
        let failed = parsed.outcome("c", ReplicationStatus::Failed, None);
        assert_eq!(failed.metadata().unwrap().replication_info.status, "FAILED");
        let skipped = parsed.skipped("c", SkipReason::Changed);
        let json: Value = serde_json::from_slice(&skipped.encode()).unwrap();
        assert_eq!(json["skipped"], "changed");
        assert_eq!(json["type"], "put");
        assert_eq!(
            QueueEntry::decode(&skipped.encode()).unwrap().skipped,
            Some(SkipReason::Changed)
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
            br#"{"bucket":"","key":"k","value":"{}"}"#,
            br#"{"bucket":"b","key":"k","value":"[1]"}"#,
            br#"{"type":"unknown","bucket":"b","key":"k","value":"{}"}"#,
        ] {
            assert!(Parsed::from_delivery("entry-test-topic", &delivery(bad)).is_none());
        }
        let ok = br#"{"type":"del","bucket":"b","key":"k","value":"{}"}"#;
        let parsed = Parsed::from_delivery("entry-test-topic", &delivery(ok)).unwrap();
        assert_eq!(parsed.entry.kind, EntryKind::Del);
        assert_eq!(parsed.version.version_id, NULL_VERSION);
        assert_eq!(
            crate::metrics::undecodable()
                .get("entry-test-topic")
                .copied(),
            Some(before + 4)
        );
    }
}
