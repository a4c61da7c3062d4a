//! The `s3` source: any S3-compatible server, through [`crate::s3::S3Client`].
//!
//! - `list_versions`: `ListObjectVersions` (`encoding-type=url`, so any key survives XML), one
//!   page per call. The cursor is a JSON array `[key-marker, version-id-marker]`; delete markers
//!   are listed with `is_delete_marker`.
//! - `head`: `HeadObject?versionId=` (the `null` version is asked without `versionId` and
//!   accepted only if the answer has no other version id) plus
//!   `GetObjectTagging` when the object has tags. A delete marker (405 with
//!   `x-amz-delete-marker: true`) is reported as one.
//! - `get`: `GetObject?versionId=`, ranged with `Range: bytes=s-e`, streamed.
//! - `replication_rules`: `GetBucketReplication`; sites are the comma list of each rule's
//!   `Destination/StorageClass` (a `:preferred_read` suffix is dropped); the prefix is `Prefix`,
//!   `Filter/Prefix` or `Filter/And/Prefix`. No configuration (404
//!   `ReplicationConfigurationNotFoundError`) is `Ok(None)`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE};
use hyper::{HeaderMap, Method};

use super::{Rule, Source, SourceError, VersionPage};
use crate::http::{http_date_to_iso, uri_decode, Xml};
use crate::model::{ByteStream, ObjectInfo, VersionRef, NULL_VERSION};
use crate::s3::{S3Client, S3Error, S3ErrorKind, S3Request};

/// Default versions per listing page (S3's maximum).
pub const DEFAULT_PAGE_SIZE: u32 = 1000;

/// An S3-compatible server as a source of versions.
#[derive(Debug, Clone)]
pub struct S3Source {
    client: S3Client,
    buckets: Vec<String>,
    page_size: u32,
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
        }
    }

    /// Sets the versions per listing page (1 to 1000).
    pub fn with_page_size(mut self, page_size: u32) -> S3Source {
        self.page_size = page_size.clamp(1, 1000);
        self
    }

    async fn tags(&self, v: &VersionRef) -> Result<BTreeMap<String, String>, SourceError> {
        let req = with_version(
            S3Request::new(Method::GET, &v.bucket, Some(&v.key)).flag("tagging"),
            &v.version_id,
        );
        let (_, xml) = self.client.send_xml(req).await.map_err(to_source)?;
        Ok(parse_tags(&xml))
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

/// The rules of a `<ReplicationConfiguration>`.
pub fn parse_rules(xml: &Xml) -> Vec<Rule> {
    xml.all("Rule")
        .map(|r| {
            let prefix = r
                .text_of("Prefix")
                .or_else(|| r.path(&["Filter", "Prefix"]))
                .or_else(|| r.path(&["Filter", "And", "Prefix"]))
                .unwrap_or_default()
                .to_string();
            let sites = r
                .path(&["Destination", "StorageClass"])
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim())
                .map(|s| s.strip_suffix(":preferred_read").unwrap_or(s))
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            Rule {
                id: r.text_of("ID").unwrap_or_default().to_string(),
                enabled: r.text_of("Status").map(str::trim) == Some("Enabled"),
                prefix,
                sites,
                destination: r
                    .path(&["Destination", "Bucket"])
                    .unwrap_or_default()
                    .to_string(),
            }
        })
        .collect()
}

/// A versions listing in the order S3 gives it: keys in order, each key's versions together,
/// newest first. S3 interleaves `Version` and `DeleteMarker` elements that way; some servers
/// (moto) list every `Version` and then every `DeleteMarker`. Those are put back in order: a
/// key's entries together (at its first appearance), its `IsLatest` entry first, the others in
/// listing order.
fn newest_first(listed: Vec<(ObjectInfo, bool)>) -> Vec<ObjectInfo> {
    let mut groups: Vec<Vec<(ObjectInfo, bool)>> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (info, latest) in listed {
        let i = *index.entry(info.version.key.clone()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        if let Some(g) = groups.get_mut(i) {
            g.push((info, latest));
        }
    }
    groups
        .into_iter()
        .flat_map(|mut g| {
            // Stable: only the latest moves.
            g.sort_by_key(|(_, latest)| !*latest);
            g.into_iter().map(|(info, _)| info)
        })
        .collect()
}

fn strip_etag(e: &str) -> String {
    e.trim().trim_matches('"').to_string()
}

/// One page of a `<ListVersionsResult>`.
pub fn parse_versions(bucket: &str, xml: &Xml) -> Result<VersionPage, SourceError> {
    let url = xml.text_of("EncodingType") == Some("url");
    let key_of = |raw: &str| -> Result<String, SourceError> {
        if url {
            uri_decode(raw)
                .ok_or_else(|| SourceError::Invalid(format!("bad url-encoded key {raw:?}")))
        } else {
            Ok(raw.to_string())
        }
    };
    // (info, IsLatest) in document order.
    let mut listed = Vec::new();
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
            .unwrap_or("null");
        let is_latest = el.text_of("IsLatest").map(str::trim) == Some("true");
        listed.push((
            ObjectInfo {
                version: VersionRef::new(bucket, key, vid),
                size: el
                    .text_of("Size")
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0),
                etag: strip_etag(el.text_of("ETag").unwrap_or_default()),
                last_modified: el.text_of("LastModified").unwrap_or_default().to_string(),
                content_type: None,
                user_metadata: BTreeMap::new(),
                tags: BTreeMap::new(),
                is_delete_marker,
            },
            is_latest,
        ));
    }
    let versions = newest_first(listed);
    let truncated = xml.text_of("IsTruncated").map(str::trim) == Some("true");
    let next = if truncated {
        let key = key_of(xml.text_of("NextKeyMarker").unwrap_or_default())?;
        let vid = xml
            .text_of("NextVersionIdMarker")
            .unwrap_or_default()
            .to_string();
        // A truncated page without a marker would loop forever: fall back on the last entry.
        let (key, vid) = if key.is_empty() {
            let last = versions.last().ok_or_else(|| {
                SourceError::Invalid("truncated listing without entries or marker".into())
            })?;
            (last.version.key.clone(), last.version.version_id.clone())
        } else {
            (key, vid)
        };
        Some(serde_json::json!([key, vid]).to_string())
    } else {
        None
    };
    Ok(VersionPage { versions, next })
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

/// Whether an answer asked without `versionId` is the `null` version (no version id, or
/// `null`), rather than a newer version of a versioned bucket.
fn is_null_version(headers: &HeaderMap) -> bool {
    match headers
        .get("x-amz-version-id")
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(v) => v.is_empty() || v == NULL_VERSION,
    }
}

fn info_from_head(v: &VersionRef, headers: &HeaderMap) -> ObjectInfo {
    let get = |n: &str| headers.get(n).and_then(|h| h.to_str().ok());
    let mut user_metadata = BTreeMap::new();
    for (name, value) in headers {
        if let Some(k) = name.as_str().strip_prefix("x-amz-meta-") {
            if let Ok(val) = value.to_str() {
                user_metadata.insert(k.to_string(), val.to_string());
            }
        }
    }
    ObjectInfo {
        version: v.clone(),
        size: get(CONTENT_LENGTH.as_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        etag: get(ETAG.as_str()).map(strip_etag).unwrap_or_default(),
        last_modified: get(LAST_MODIFIED.as_str())
            .and_then(http_date_to_iso)
            .unwrap_or_default(),
        content_type: get(CONTENT_TYPE.as_str()).map(str::to_owned),
        user_metadata,
        tags: BTreeMap::new(),
        is_delete_marker: get("x-amz-delete-marker") == Some("true"),
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

    async fn list_versions(
        &self,
        bucket: &str,
        cursor: Option<&str>,
    ) -> Result<VersionPage, SourceError> {
        let mut req = S3Request::new(Method::GET, bucket, None)
            .flag("versions")
            .query("encoding-type", "url")
            .query("max-keys", self.page_size.to_string());
        if let Some(c) = cursor {
            let (key, vid): (String, String) = serde_json::from_str(c)
                .map_err(|e| SourceError::Invalid(format!("bad listing cursor {c:?}: {e}")))?;
            req = req.query("key-marker", key);
            if !vid.is_empty() {
                req = req.query("version-id-marker", vid);
            }
        }
        let (_, xml) = self.client.send_xml(req).await.map_err(to_source)?;
        parse_versions(bucket, &xml)
    }

    async fn head(&self, version: &VersionRef) -> Result<Option<ObjectInfo>, SourceError> {
        let req = with_version(
            S3Request::new(Method::HEAD, &version.bucket, Some(&version.key)),
            &version.version_id,
        );
        let headers = match self.client.send(req).await {
            Ok(resp) => resp.headers().clone(),
            Err(e) if e.status == Some(404) && e.kind != S3ErrorKind::NoSuchBucket => {
                return Ok(None)
            }
            Err(e) if e.status == Some(405) => {
                // HEAD of a delete marker version: 405 with `x-amz-delete-marker: true`.
                let mut info = info_from_head(version, &HeaderMap::new());
                info.is_delete_marker = true;
                return Ok(Some(info));
            }
            Err(e) => return Err(to_source(e)),
        };
        if version.version_id == NULL_VERSION && !is_null_version(&headers) {
            return Ok(None); // the null version is no longer the current one
        }
        let mut info = info_from_head(version, &headers);
        let tag_count = headers
            .get("x-amz-tagging-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        if tag_count != Some(0) && !info.is_delete_marker {
            info.tags = match self.tags(version).await {
                Ok(t) => t,
                Err(SourceError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
        }
        Ok(Some(info))
    }

    async fn get(
        &self,
        version: &VersionRef,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, SourceError> {
        let mut req = with_version(
            S3Request::new(Method::GET, &version.bucket, Some(&version.key)),
            &version.version_id,
        );
        if let Some((s, e)) = range {
            if s > e {
                return Err(SourceError::Invalid(format!("empty range {s}-{e}")));
            }
            let v = HeaderValue::from_str(&format!("bytes={s}-{e}"))
                .map_err(|e| SourceError::Invalid(e.to_string()))?;
            req = req.header(RANGE, v);
        }
        let resp = self.client.send(req).await.map_err(to_source)?;
        if version.version_id == NULL_VERSION && !is_null_version(resp.headers()) {
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
    fn versions_listing_keeps_order_and_delete_markers() {
        let xml = Xml::parse(
            br#"<ListVersionsResult><Name>b</Name><EncodingType>url</EncodingType>
            <IsTruncated>true</IsTruncated><NextKeyMarker>a%20b</NextKeyMarker>
            <NextVersionIdMarker>v2</NextVersionIdMarker>
            <Version><Key>a%20b</Key><VersionId>v3</VersionId><ETag>"e"</ETag><Size>3</Size>
              <LastModified>2026-01-01T00:00:00.000Z</LastModified></Version>
            <DeleteMarker><Key>a%20b</Key><VersionId>v2</VersionId>
              <LastModified>2026-01-01T00:00:00.000Z</LastModified></DeleteMarker>
            </ListVersionsResult>"#,
        )
        .unwrap();
        let page = parse_versions("b", &xml).unwrap();
        assert_eq!(page.versions.len(), 2);
        assert_eq!(page.versions[0].version.key, "a b");
        assert_eq!(page.versions[0].etag, "e");
        assert_eq!(page.versions[0].size, 3);
        assert!(page.versions[1].is_delete_marker);
        assert_eq!(page.next.as_deref(), Some(r#"["a b","v2"]"#));
    }

    #[test]
    fn delete_markers_listed_after_the_versions_are_put_back_in_order() {
        // moto's layout: every Version, then every DeleteMarker.
        let xml = Xml::parse(
            br#"<ListVersionsResult><IsTruncated>false</IsTruncated>
            <Version><Key>back</Key><VersionId>b3</VersionId><IsLatest>true</IsLatest></Version>
            <Version><Key>back</Key><VersionId>b1</VersionId><IsLatest>false</IsLatest></Version>
            <Version><Key>gone</Key><VersionId>g2</VersionId><IsLatest>false</IsLatest></Version>
            <Version><Key>gone</Key><VersionId>g1</VersionId><IsLatest>false</IsLatest></Version>
            <DeleteMarker><Key>back</Key><VersionId>b2</VersionId><IsLatest>false</IsLatest></DeleteMarker>
            <DeleteMarker><Key>gone</Key><VersionId>g3</VersionId><IsLatest>true</IsLatest></DeleteMarker>
            </ListVersionsResult>"#,
        )
        .unwrap();
        let page = parse_versions("b", &xml).unwrap();
        let ids: Vec<&str> = page
            .versions
            .iter()
            .map(|v| v.version.version_id.as_str())
            .collect();
        assert_eq!(ids, ["b3", "b1", "b2", "g3", "g2", "g1"]);
        assert!(page.versions[3].is_delete_marker);
    }
}
