//! The `s3` source: any S3-compatible server, through [`crate::s3::S3Client`].
//!
//! - `list_current`: `ListObjectVersions` (`encoding-type=url`, so any key survives XML), one
//!   page per call, keeping each key's `IsLatest` entry (a delete marker when the key is
//!   deleted). The cursor is a JSON array `[key-marker, version-id-marker]`; a page whose marker
//!   does not advance is an error, never a loop.
//! - `current`: `HeadObject` without `versionId` (a delete marker answers 404 or 405 with
//!   `x-amz-delete-marker: true`), plus `GetObjectTagging` when the object has tags (a denied
//!   tagging read replicates without tags, warned once per bucket).
//! - `open_current`: `GetObject` without `versionId`: the current version's metadata and data
//!   in one request (and its tags as above).
//! - `get_range`: `GetObject?versionId=` with `Range: bytes=s-e` and `If-Match: <etag>` (412:
//!   the version changed, reported as gone).
//! - Headers kept for the replica: Content-Type, Content-Encoding, Content-Disposition,
//!   Content-Language, Cache-Control, Expires; user metadata values as the server sends them
//!   (raw UTF-8 or RFC 2047 form, byte for byte). An ETag of 32 hex digits on an object not
//!   encrypted with KMS is its MD5 ([`ObjectInfo::content_md5`]).
//! - `replication_rules`: `GetBucketReplication`, field by field as AWS defines it: `Status`,
//!   `Prefix` (V1) or `Filter` (`Prefix`, `Tag`, `And`), `Priority`, `DeleteMarkerReplication`;
//!   sites are the comma list of each rule's `Destination/StorageClass` (a `:preferred_read`
//!   suffix is dropped). No configuration (404 `ReplicationConfigurationNotFoundError`) is
//!   `Ok(None)`, and so is a server that does not implement it (501) or refuses it (403): the
//!   configured rules then apply.

use std::collections::BTreeMap;

use std::collections::HashSet;

use async_trait::async_trait;
use hyper::header::{HeaderValue, CONTENT_LENGTH, ETAG, IF_MATCH, LAST_MODIFIED, RANGE};
use hyper::{HeaderMap, Method};
use parking_lot::Mutex;

use super::{KeyPage, Rule, Source, SourceError};
use crate::http::{http_date_to_iso, uri_decode, Xml};
use crate::model::{ByteStream, ObjectInfo, VersionRef, NULL_VERSION};
use crate::s3::{S3Client, S3Error, S3ErrorKind, S3Request};

/// Default versions per listing page (S3's maximum).
pub const DEFAULT_PAGE_SIZE: u32 = 1000;

/// An S3-compatible server as a source of versions.
#[derive(Debug)]
pub struct S3Source {
    client: S3Client,
    buckets: Vec<String>,
    page_size: u32,
    /// Buckets whose tags we may not read (warned once each).
    tags_denied: Mutex<HashSet<String>>,
}

fn to_source(e: S3Error) -> SourceError {
    match e.kind {
        S3ErrorKind::Transient => SourceError::Transient(e.detail),
        S3ErrorKind::Throttled(retry_after) => SourceError::Throttled { retry_after },
        S3ErrorKind::Unauthorized => SourceError::Denied(e.detail),
        S3ErrorKind::NoSuchBucket | S3ErrorKind::NotFound => SourceError::NotFound(e.detail),
        S3ErrorKind::Rejected => SourceError::Invalid(e.detail),
    }
}

impl S3Source {
    /// A source reading `buckets` through `client`.
    pub fn new(client: S3Client, buckets: Vec<String>) -> S3Source {
        S3Source {
            client,
            buckets,
            page_size: DEFAULT_PAGE_SIZE,
            tags_denied: Mutex::new(HashSet::new()),
        }
    }

    /// Sets the versions per listing page (1 to 1000).
    pub fn with_page_size(mut self, page_size: u32) -> S3Source {
        self.page_size = page_size.clamp(1, 1000);
        self
    }

    /// The tags of `v` when `headers` (of a HEAD or GET) say it has some. Permission to read
    /// tags denied: no tags, warned once per bucket (the copy goes on without them).
    async fn tags_of(
        &self,
        v: &VersionRef,
        headers: &HeaderMap,
    ) -> Result<BTreeMap<String, String>, SourceError> {
        let count = headers
            .get("x-amz-tagging-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        // A server that does not say how many tags there are is asked.
        if count == Some(0) {
            return Ok(BTreeMap::new());
        }
        if self.tags_denied.lock().contains(&v.bucket) {
            return Ok(BTreeMap::new());
        }
        let req = with_version(
            S3Request::new(Method::GET, &v.bucket, Some(&v.key)).flag("tagging"),
            &v.version_id,
        );
        match self.client.send_xml(req).await {
            Ok((_, xml)) => Ok(parse_tags(&xml)),
            Err(e) if e.kind == S3ErrorKind::Unauthorized || e.status == Some(501) => {
                if self.tags_denied.lock().insert(v.bucket.clone()) {
                    tracing::warn!(bucket = %v.bucket, error = %e.detail,
                        "Cannot read object tags in this bucket; replicating without tags.");
                }
                Ok(BTreeMap::new())
            }
            Err(e) => Err(to_source(e)),
        }
    }
}

/// Tags of a `<Tagging><TagSet><Tag><Key/><Value/></Tag>...` answer.
pub fn parse_tags(xml: &Xml) -> BTreeMap<String, String> {
    xml.child("TagSet")
        .map(|set| {
            set.all("Tag")
                .map(|t| {
                    (
                        t.text_of("Key").unwrap_or_default().to_string(),
                        t.text_of("Value").unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of a `<ReplicationConfiguration>`, field by field as AWS defines them.
pub fn parse_rules(xml: &Xml) -> Vec<Rule> {
    xml.all("Rule")
        .map(|r| {
            let filter = r.child("Filter");
            let and = filter.and_then(|f| f.child("And"));
            let prefix = r
                .text_of("Prefix")
                .or_else(|| filter.and_then(|f| f.text_of("Prefix")))
                .or_else(|| and.and_then(|a| a.text_of("Prefix")))
                .unwrap_or_default()
                .to_string();
            let tag = |t: &Xml| {
                (
                    t.text_of("Key").unwrap_or_default().to_string(),
                    t.text_of("Value").unwrap_or_default().to_string(),
                )
            };
            let mut tags: Vec<(String, String)> = Vec::new();
            if let Some(f) = filter {
                tags.extend(f.all("Tag").map(tag));
            }
            if let Some(a) = and {
                tags.extend(a.all("Tag").map(tag));
            }
            let sites = r
                .path(&["Destination", "StorageClass"])
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim())
                .map(|s| s.strip_suffix(":preferred_read").unwrap_or(s))
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            // V1 rules (a top-level Prefix, no Filter) replicate delete markers; V2 rules say
            // so in DeleteMarkerReplication (absent: not replicated).
            let delete_markers = match r.path(&["DeleteMarkerReplication", "Status"]) {
                Some(s) => s.trim() == "Enabled",
                None => filter.is_none(),
            };
            Rule {
                id: r.text_of("ID").unwrap_or_default().to_string(),
                enabled: r.text_of("Status").map(str::trim) == Some("Enabled"),
                prefix,
                tags,
                priority: r
                    .text_of("Priority")
                    .and_then(|p| p.trim().parse().ok())
                    .unwrap_or(0),
                delete_markers,
                sites,
                destination: r
                    .path(&["Destination", "Bucket"])
                    .unwrap_or_default()
                    .to_string(),
            }
        })
        .collect()
}

fn strip_etag(e: &str) -> String {
    e.trim().trim_matches('"').to_string()
}

/// One page of a `<ListVersionsResult>`: each key's `IsLatest` entry, in key byte order.
/// Servers order `Version` and `DeleteMarker` elements differently (moto lists every
/// `Version`, then every `DeleteMarker`), so the page is sorted by key.
///
/// # Errors
/// [`SourceError::Invalid`] for a key that does not decode, or a truncated page whose marker
/// would not move past `cursor` (a listing that does not advance).
pub fn parse_current(
    bucket: &str,
    xml: &Xml,
    cursor: Option<&(String, String)>,
) -> Result<KeyPage, SourceError> {
    let url = xml.text_of("EncodingType") == Some("url");
    let key_of = |raw: &str| -> Result<String, SourceError> {
        if url {
            uri_decode(raw)
                .ok_or_else(|| SourceError::Invalid(format!("bad url-encoded key {raw:?}")))
        } else {
            Ok(raw.to_string())
        }
    };
    let mut items = Vec::new();
    let mut last: Option<(String, String)> = None;
    for el in &xml.children {
        let is_delete_marker = match el.name.as_str() {
            "Version" => false,
            "DeleteMarker" => true,
            _ => continue,
        };
        let key = key_of(el.text_of("Key").unwrap_or_default())?;
        let vid = el
            .text_of("VersionId")
            .filter(|v| !v.is_empty())
            .unwrap_or(NULL_VERSION)
            .to_string();
        last = Some((key.clone(), vid.clone()));
        if el.text_of("IsLatest").map(str::trim) != Some("true") {
            continue;
        }
        let etag = strip_etag(el.text_of("ETag").unwrap_or_default());
        items.push(ObjectInfo {
            version: VersionRef::new(bucket, key, vid),
            size: el
                .text_of("Size")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            content_md5: md5_etag(&etag, false),
            etag,
            last_modified: el.text_of("LastModified").unwrap_or_default().to_string(),
            is_delete_marker,
            ..ObjectInfo::default()
        });
    }
    items.sort_by(|a, b| a.version.key.as_bytes().cmp(b.version.key.as_bytes()));
    let truncated = xml.text_of("IsTruncated").map(str::trim) == Some("true");
    let next = if truncated {
        let key = key_of(xml.text_of("NextKeyMarker").unwrap_or_default())?;
        let vid = xml
            .text_of("NextVersionIdMarker")
            .unwrap_or_default()
            .to_string();
        // A truncated page without a marker: go on after its last entry.
        let marker = if key.is_empty() {
            last.ok_or_else(|| {
                SourceError::Invalid("truncated listing without entries or marker".into())
            })?
        } else {
            (key, vid)
        };
        if cursor == Some(&marker) {
            return Err(SourceError::Invalid(format!(
                "the versions listing of {bucket} does not advance past {:?}",
                marker.0
            )));
        }
        Some(serde_json::json!([marker.0, marker.1]).to_string())
    } else {
        None
    };
    Ok(KeyPage { items, next })
}

/// The MD5 an ETag is, when it is one: 32 hex digits (a single-part upload) on an object not
/// encrypted with KMS (whose ETags are not MD5s).
fn md5_etag(etag: &str, kms: bool) -> Option<String> {
    (!kms && crate::checksum::md5_of_hex(etag).is_some()).then(|| etag.to_ascii_lowercase())
}

/// Adds `versionId` for a real version id. The `null` version is asked for without it (moto,
/// like some S3 servers, refuses `versionId=null` on unversioned buckets); the answer's
/// `x-amz-version-id` is then checked by [`is_null_version`].
fn with_version<'a>(req: S3Request<'a>, vid: &str) -> S3Request<'a> {
    if vid == NULL_VERSION {
        req
    } else {
        req.query("versionId", vid.to_string())
    }
}

/// The metadata of a HEAD or GET answer about `v`.
fn info_from_head(v: &VersionRef, headers: &HeaderMap) -> ObjectInfo {
    let get = |n: &str| headers.get(n).and_then(|h| h.to_str().ok());
    // Values as sent, byte for byte: raw UTF-8 is not a valid `to_str`.
    let raw = |h: &HeaderValue| String::from_utf8(h.as_bytes().to_vec()).ok();
    let mut info = ObjectInfo {
        version: v.clone(),
        size: get(CONTENT_LENGTH.as_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        etag: get(ETAG.as_str()).map(strip_etag).unwrap_or_default(),
        last_modified: get(LAST_MODIFIED.as_str())
            .and_then(http_date_to_iso)
            .unwrap_or_default(),
        is_delete_marker: get("x-amz-delete-marker") == Some("true"),
        ..ObjectInfo::default()
    };
    for (name, value) in headers {
        let name = name.as_str();
        if let Some(k) = name.strip_prefix("x-amz-meta-") {
            // The value S3 holds: it decodes an RFC 2047 word when storing (and encodes it
            // again to answer); sites encode it as their protocol needs.
            if let Some(val) = raw(value) {
                info.user_metadata
                    .insert(k.to_string(), crate::http::rfc2047_decode(&val));
            }
        } else if let Some(val) = raw(value) {
            info.headers.set(name, val);
        }
    }
    let replica = |v: Option<&String>| v.is_some_and(|s| s.trim() == "REPLICA");
    info.replica = replica(info.user_metadata.get("scal-replication-status"))
        || get("x-amz-replication-status").map(str::trim) == Some("REPLICA");
    let kms = get("x-amz-server-side-encryption") == Some("aws:kms");
    info.content_md5 = md5_etag(&info.etag, kms);
    info
}

/// The version id an answer names (`null` when it names none).
fn version_of_answer(headers: &HeaderMap) -> String {
    headers
        .get("x-amz-version-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(NULL_VERSION)
        .to_string()
}

/// The current version of a key whose HEAD or GET answered an error: a delete marker (404 or
/// 405 with `x-amz-delete-marker: true`), no version (404), or the error.
fn current_from_error(
    bucket: &str,
    key: &str,
    e: S3Error,
) -> Result<Option<ObjectInfo>, SourceError> {
    let dm = e
        .headers
        .as_ref()
        .and_then(|h| h.get("x-amz-delete-marker"))
        .and_then(|v| v.to_str().ok())
        == Some("true");
    match e.status {
        Some(404 | 405) if dm => {
            let headers = e.headers.as_deref().cloned().unwrap_or_default();
            let v = VersionRef::new(bucket, key, version_of_answer(&headers));
            let mut info = info_from_head(&v, &headers);
            info.is_delete_marker = true;
            info.size = 0;
            Ok(Some(info))
        }
        Some(404) if e.kind != S3ErrorKind::NoSuchBucket => Ok(None),
        _ => Err(to_source(e)),
    }
}

#[async_trait]
impl Source for S3Source {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn buckets(&self) -> Vec<String> {
        self.buckets.clone()
    }

    async fn list_current(
        &self,
        bucket: &str,
        cursor: Option<&str>,
    ) -> Result<KeyPage, SourceError> {
        let mut req = S3Request::new(Method::GET, bucket, None)
            .flag("versions")
            .query("encoding-type", "url")
            .query("max-keys", self.page_size.to_string());
        let marker = match cursor {
            Some(c) => {
                let m: (String, String) = serde_json::from_str(c)
                    .map_err(|e| SourceError::Invalid(format!("bad listing cursor {c:?}: {e}")))?;
                req = req.query("key-marker", m.0.clone());
                if !m.1.is_empty() {
                    req = req.query("version-id-marker", m.1.clone());
                }
                Some(m)
            }
            None => None,
        };
        let (_, xml) = self.client.send_xml(req).await.map_err(to_source)?;
        parse_current(bucket, &xml, marker.as_ref())
    }

    async fn current(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, SourceError> {
        let req = S3Request::new(Method::HEAD, bucket, Some(key));
        let headers = match self.client.send(req).await {
            Ok(resp) => resp.headers().clone(),
            Err(e) => return current_from_error(bucket, key, e),
        };
        let v = VersionRef::new(bucket, key, version_of_answer(&headers));
        let mut info = info_from_head(&v, &headers);
        info.tags = self.tags_of(&v, &headers).await?;
        Ok(Some(info))
    }

    async fn open_current(
        &self,
        bucket: &str,
        key: &str,
        _want_md5: bool,
    ) -> Result<Option<(ObjectInfo, Option<ByteStream>)>, SourceError> {
        let req = S3Request::new(Method::GET, bucket, Some(key));
        let resp = match self.client.send(req).await {
            Ok(r) => r,
            // Some servers (moto) do not say on a GET that the key's newest version is a
            // delete marker: a HEAD tells.
            Err(e) if e.status == Some(404) && e.kind != S3ErrorKind::NoSuchBucket => {
                return Ok(self.current(bucket, key).await?.map(|i| (i, None)))
            }
            Err(e) => return Ok(current_from_error(bucket, key, e)?.map(|i| (i, None))),
        };
        let headers = resp.headers().clone();
        let v = VersionRef::new(bucket, key, version_of_answer(&headers));
        let mut info = info_from_head(&v, &headers);
        let body = self.client.stream_body(resp.into_body());
        info.tags = self.tags_of(&v, &headers).await?;
        Ok(Some((info, Some(body))))
    }

    async fn get_range(
        &self,
        version: &VersionRef,
        etag: &str,
        range: (u64, u64),
    ) -> Result<ByteStream, SourceError> {
        let (s, e) = range;
        if s > e {
            return Err(SourceError::Invalid(format!("empty range {s}-{e}")));
        }
        let mut req = with_version(
            S3Request::new(Method::GET, &version.bucket, Some(&version.key)),
            &version.version_id,
        );
        let r = HeaderValue::from_str(&format!("bytes={s}-{e}"))
            .map_err(|e| SourceError::Invalid(e.to_string()))?;
        req = req.header(RANGE, r);
        if !etag.is_empty() {
            let m = HeaderValue::from_str(&format!("\"{etag}\""))
                .map_err(|e| SourceError::Invalid(format!("etag {etag:?}: {e}")))?;
            req = req.header(IF_MATCH, m);
        }
        let resp = match self.client.send(req).await {
            Ok(r) => r,
            Err(e) if e.status == Some(412) => {
                return Err(SourceError::NotFound(format!(
                    "{version} changed since it was queued (ETag {etag} no longer matches)"
                )))
            }
            Err(e) => return Err(to_source(e)),
        };
        if version.version_id == NULL_VERSION && version_of_answer(resp.headers()) != NULL_VERSION {
            return Err(SourceError::NotFound(format!(
                "{version} is no longer the current version"
            )));
        }
        Ok(self.client.stream_body(resp.into_body()))
    }

    async fn replication_rules(&self, bucket: &str) -> Result<Option<Vec<Rule>>, SourceError> {
        let req = S3Request::new(Method::GET, bucket, None).flag("replication");
        match self.client.send_xml(req).await {
            Ok((_, xml)) => Ok(Some(parse_rules(&xml))),
            Err(e) if e.code == "ReplicationConfigurationNotFoundError" => Ok(None),
            Err(e)
                if matches!(e.status, Some(403 | 501))
                    || e.code == "NotImplemented"
                    || e.code == "AccessDenied" =>
            {
                tracing::debug!(bucket, error = %e.detail,
                    "GetBucketReplication refused or not implemented; the configured rules apply.");
                Ok(None)
            }
            Err(e) => Err(to_source(e)),
        }
    }

    async fn versioning_enabled(&self, bucket: &str) -> Result<Option<bool>, SourceError> {
        let req = S3Request::new(Method::GET, bucket, None).flag("versioning");
        let (_, xml) = self.client.send_xml(req).await.map_err(to_source)?;
        // No `Status` (never enabled) or `Suspended`: overwrites replace the null version.
        Ok(Some(xml.text_of("Status") == Some("Enabled")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_rules_parse_the_zenko_convention() {
        let xml = Xml::parse(
            br#"<ReplicationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
            <Role>arn:aws:iam::123456789012:role/src,arn:aws:iam::123456789012:role/dst</Role>
            <Rule><ID>r1</ID><Status>Enabled</Status><Prefix>logs/</Prefix>
              <Destination><Bucket>arn:aws:s3:::target</Bucket>
              <StorageClass>site-a, site-b:preferred_read</StorageClass></Destination></Rule>
            <Rule><ID>r2</ID><Status>Disabled</Status><Filter><Prefix>x</Prefix></Filter>
              <Destination><Bucket>arn:aws:s3:::t2</Bucket></Destination></Rule>
            </ReplicationConfiguration>"#,
        )
        .unwrap();
        let rules = parse_rules(&xml);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].id, "r1");
        assert!(rules[0].enabled);
        assert_eq!(rules[0].prefix, "logs/");
        assert_eq!(rules[0].sites, vec!["site-a", "site-b"]);
        assert_eq!(rules[0].destination, "arn:aws:s3:::target");
        assert!(!rules[1].enabled);
        assert_eq!(rules[1].prefix, "x");
        assert!(rules[1].sites.is_empty());
    }

    #[test]
    fn v2_rules_honour_tags_priority_and_delete_marker_replication() {
        let xml = Xml::parse(
            br#"<ReplicationConfiguration>
            <Rule><ID>low</ID><Status>Enabled</Status><Priority>1</Priority>
              <Filter><Prefix>docs/</Prefix></Filter>
              <DeleteMarkerReplication><Status>Disabled</Status></DeleteMarkerReplication>
              <Destination><StorageClass>a</StorageClass></Destination></Rule>
            <Rule><ID>high</ID><Status>Enabled</Status><Priority>5</Priority>
              <Filter><And><Prefix>docs/</Prefix><Tag><Key>k</Key><Value>v</Value></Tag></And></Filter>
              <DeleteMarkerReplication><Status>Enabled</Status></DeleteMarkerReplication>
              <Destination><StorageClass>b</StorageClass></Destination></Rule>
            </ReplicationConfiguration>"#,
        )
        .unwrap();
        let rules = parse_rules(&xml);
        assert!(!rules[0].delete_markers);
        assert!(rules[1].delete_markers);
        assert_eq!(rules[1].tags, vec![("k".to_string(), "v".to_string())]);
        let tagged = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let id = |key: &str, tags: &BTreeMap<String, String>| {
            crate::source::rule_for(&rules, key, tags).map(|r| r.id.clone())
        };
        assert_eq!(id("docs/x", &tagged).as_deref(), Some("high"));
        assert_eq!(id("docs/x", &BTreeMap::new()).as_deref(), Some("low"));
        assert_eq!(id("other", &tagged), None);
    }

    #[test]
    fn a_listing_page_keeps_each_keys_current_version_in_key_order() {
        // moto's layout: every Version, then every DeleteMarker.
        let xml = Xml::parse(
            br#"<ListVersionsResult><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
            <NextKeyMarker>gone</NextKeyMarker><NextVersionIdMarker>g1</NextVersionIdMarker>
            <Version><Key>back</Key><VersionId>b3</VersionId><IsLatest>true</IsLatest><ETag>"5eb63bbbe01eeed093cb22bb8f5acdc3"</ETag><Size>11</Size></Version>
            <Version><Key>back</Key><VersionId>b1</VersionId><IsLatest>false</IsLatest></Version>
            <Version><Key>gone</Key><VersionId>g1</VersionId><IsLatest>false</IsLatest></Version>
            <Version><Key>a%20b</Key><VersionId>ab</VersionId><IsLatest>true</IsLatest><ETag>"x-2"</ETag></Version>
            <DeleteMarker><Key>gone</Key><VersionId>g3</VersionId><IsLatest>true</IsLatest></DeleteMarker>
            </ListVersionsResult>"#,
        )
        .unwrap();
        let page = parse_current("b", &xml, None).unwrap();
        let ids: Vec<(&str, &str)> = page
            .items
            .iter()
            .map(|v| (v.version.key.as_str(), v.version.version_id.as_str()))
            .collect();
        assert_eq!(ids, [("a b", "ab"), ("back", "b3"), ("gone", "g3")]);
        assert!(page.items[2].is_delete_marker);
        assert_eq!(
            page.items[1].content_md5.as_deref(),
            Some("5eb63bbbe01eeed093cb22bb8f5acdc3")
        );
        assert_eq!(page.items[0].content_md5, None);
        assert_eq!(page.next.as_deref(), Some(r#"["gone","g1"]"#));
        // A page whose marker is where it started does not advance: an error, not a loop.
        let stuck = ("gone".to_string(), "g1".to_string());
        assert!(parse_current("b", &xml, Some(&stuck)).is_err());
    }
}
