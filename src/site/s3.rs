//! The `aws_s3` site: any S3-compatible endpoint, through [`crate::s3::S3Client`].
//!
//! A replica is written with `PutObject` (streamed, `Content-Length`, `UNSIGNED-PAYLOAD`) or,
//! through [`MultipartSite`], `CreateMultipartUpload` / `UploadPart` / `CompleteMultipartUpload`
//! (`AbortMultipartUpload` on failure). Each replica carries:
//!
//! ```text
//! Content-Type, Content-Encoding, Content-Disposition, Content-Language, Cache-Control,
//! Expires                                          as the source version has them
//! x-amz-meta-<name>: <value>                      each user metadata entry
//! x-amz-meta-scal-replication-status: REPLICA
//! x-amz-meta-scal-version-id: <source version id>
//! x-amz-meta-scal-size: <bytes>
//! x-amz-meta-scal-md5: <hex MD5, or the source ETag of an object uploaded in parts>
//! x-amz-meta-scal-source-bucket: <source bucket>
//! x-amz-tagging: k1=v1&k2=v2                      URL-encoded tag set
//! Content-MD5: <base64>                           when the MD5 is known before the data
//! ```
//!
//! A user metadata value that is not plain header text (non-ASCII, or surrounding spaces HTTP
//! would strip) is sent in its RFC 2047 form (`=?UTF-8?B?...?=`), which S3 decodes and stores
//! exactly; a value the source already gave in that form is sent as it is.
//!
//! Integrity: the ETag S3 answers for a PUT (the MD5 of what it stored) is compared with the
//! source's MD5 of the bytes when the source gave one (also sent as `Content-MD5`), else with
//! the MD5 of the body hashed as it is sent; every part is hashed as it is sent and compared
//! with its ETag, and the completed upload's ETag with the MD5 of the parts' MD5s. A mismatch,
//! or `BadDigest` against our `Content-MD5`, is [`SiteError::ChecksumMismatch`].
//!
//! [`Site::delete`] reads the key first (HEAD): nothing there, or a delete marker already on
//! top, and nothing is written.

use async_trait::async_trait;
use hyper::header::{HeaderName, HeaderValue, ETAG};
use hyper::{HeaderMap, Method};

use super::{
    recorded_md5, ListPage, MultipartSite, PartReceipt, PutReceipt, ReplicaInfo, Site, SiteError,
    META_BUCKET, META_MD5, META_SIZE, META_STATUS, META_VERSION,
};
use crate::checksum::{hashed, hashed_unless_known, md5_of_hex, multipart_etag};
use crate::config::SiteKind;
use crate::http::{rfc2047_encode, uri_decode, uri_encode, xml_escape, Body};
use crate::model::{ByteStream, ObjectInfo};
use crate::s3::{S3Client, S3Error, S3ErrorKind, S3Request};

/// An S3-compatible bucket as a replication site.
#[derive(Debug, Clone)]
pub struct S3Site {
    name: String,
    bucket: String,
    client: S3Client,
}

impl S3Site {
    /// A site writing into `bucket` through `client`.
    pub fn new(name: impl Into<String>, bucket: impl Into<String>, client: S3Client) -> S3Site {
        S3Site {
            name: name.into(),
            bucket: bucket.into(),
            client,
        }
    }

    /// The target bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn error(&self, e: S3Error) -> SiteError {
        let site = self.name.clone();
        match e.code.as_str() {
            "BadDigest" | "InvalidDigest" => {
                return SiteError::ChecksumMismatch {
                    site,
                    detail: e.detail,
                }
            }
            "EntityTooLarge" => {
                return SiteError::TooLarge {
                    site,
                    size: 0,
                    detail: e.detail,
                }
            }
            _ => {}
        }
        match e.kind {
            S3ErrorKind::Transient => SiteError::transient(&site, e.detail),
            S3ErrorKind::Throttled(retry_after) => SiteError::Throttled { site, retry_after },
            S3ErrorKind::Unauthorized => SiteError::Unauthorized {
                site,
                detail: e.detail,
            },
            S3ErrorKind::NoSuchBucket => SiteError::NoSuchBucket {
                site,
                bucket: self.bucket.clone(),
            },
            S3ErrorKind::NotFound | S3ErrorKind::Rejected => SiteError::Rejected {
                site,
                detail: e.detail,
            },
        }
    }

    fn rejected(&self, detail: String) -> SiteError {
        SiteError::Rejected {
            site: self.name.clone(),
            detail,
        }
    }

    fn mismatch(&self, detail: String) -> SiteError {
        SiteError::ChecksumMismatch {
            site: self.name.clone(),
            detail,
        }
    }

    /// The headers every replica carries (put and create-multipart).
    fn replica_headers(
        &self,
        obj: &ObjectInfo,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, SiteError> {
        let mut h = Vec::new();
        let value = |what: &str, v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| self.rejected(format!("{what} {v:?} is not a valid header value")))
        };
        for (name, v) in obj.headers.pairs() {
            h.push((HeaderName::from_static(name), value(name, v)?));
        }
        let ours = [META_STATUS, META_VERSION, META_SIZE, META_MD5, META_BUCKET];
        for (k, v) in &obj.user_metadata {
            let lower = k.to_ascii_lowercase();
            if ours.contains(&lower.as_str()) {
                continue; // ours win
            }
            let name =
                HeaderName::from_bytes(format!("x-amz-meta-{lower}").as_bytes()).map_err(|_| {
                    self.rejected(format!("metadata name {k:?} is not a valid header name"))
                })?;
            h.push((name, value("metadata value", &header_text(v))?));
        }
        let meta = |n: &str| HeaderName::from_bytes(format!("x-amz-meta-{n}").as_bytes());
        let markers = [
            (META_STATUS, "REPLICA".to_string()),
            (META_VERSION, obj.version.version_id.clone()),
            (META_SIZE, obj.size.to_string()),
            (META_MD5, recorded_md5(obj)),
            (META_BUCKET, obj.version.bucket.clone()),
        ];
        for (n, v) in markers {
            let name = meta(n).map_err(|e| self.rejected(e.to_string()))?;
            h.push((name, value(n, &header_text(&v))?));
        }
        if !obj.tags.is_empty() {
            let tagging = obj
                .tags
                .iter()
                .map(|(k, v)| format!("{}={}", uri_encode(k), uri_encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            h.push((
                HeaderName::from_static("x-amz-tagging"),
                value("tags", &tagging)?,
            ));
        }
        Ok(h)
    }
}

/// `v` as header text: as it is when HTTP carries it unchanged, else its RFC 2047 form.
fn header_text(v: &str) -> String {
    let plain = v.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        && !v.starts_with(' ')
        && !v.ends_with(' ');
    if plain {
        v.to_string()
    } else {
        rfc2047_encode(v)
    }
}

fn receipt(headers: &HeaderMap) -> PutReceipt {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    PutReceipt {
        version_id: get("x-amz-version-id").filter(|v| !v.is_empty() && v != "null"),
        etag: headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|e| e.trim_matches('"').to_string()),
        wrote: true,
    }
}

/// The REPLICA metadata of a HEAD answer about `key`.
fn replica_of(key: &str, headers: &HeaderMap) -> ReplicaInfo {
    let meta = |n: &str| {
        headers
            .get(format!("x-amz-meta-{n}").as_str())
            .and_then(|v| v.to_str().ok())
            .map(crate::http::rfc2047_decode)
    };
    let is_replica = meta(META_STATUS).is_some_and(|s| s.trim() == "REPLICA");
    ReplicaInfo {
        key: key.to_string(),
        source_version_id: meta(META_VERSION).filter(|_| is_replica),
        source_bucket: meta(META_BUCKET),
        size: headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        md5: meta(META_MD5),
        content_md5: headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(md5_of_hex)
            .map(|m| crate::checksum::hex(&m)),
        site_version_id: headers
            .get("x-amz-version-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && *v != "null")
            .map(str::to_owned),
        delete_marker: false,
    }
}

#[async_trait]
impl Site for S3Site {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SiteKind {
        SiteKind::AwsS3
    }

    fn check_key(&self, key: &str) -> Result<(), SiteError> {
        if key.is_empty() || key.len() > 1024 {
            return Err(self.rejected(format!(
                "S3 keys are 1 to 1024 bytes; {key:?} is {} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    fn needs_md5_up_front(&self) -> bool {
        true
    }

    async fn replica(&self, key: &str) -> Result<Option<ReplicaInfo>, SiteError> {
        let req = S3Request::new(Method::HEAD, &self.bucket, Some(key));
        match self.client.send(req).await {
            Ok(resp) => Ok(Some(replica_of(key, resp.headers()))),
            Err(e)
                if matches!(e.status, Some(404 | 405)) && e.kind != S3ErrorKind::NoSuchBucket =>
            {
                let dm = e
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("x-amz-delete-marker"))
                    .and_then(|v| v.to_str().ok())
                    == Some("true");
                Ok(dm.then(|| ReplicaInfo {
                    key: key.to_string(),
                    delete_marker: true,
                    ..ReplicaInfo::default()
                }))
            }
            Err(e) => Err(self.error(e)),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<ByteStream>, SiteError> {
        let req = S3Request::new(Method::GET, &self.bucket, Some(key));
        match self.client.send(req).await {
            Ok(resp) => Ok(Some(self.client.stream_body(resp.into_body()))),
            Err(e)
                if matches!(e.status, Some(404 | 405)) && e.kind != S3ErrorKind::NoSuchBucket =>
            {
                Ok(None)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    async fn put(
        &self,
        key: &str,
        obj: &ObjectInfo,
        body: ByteStream,
    ) -> Result<PutReceipt, SiteError> {
        // The source's MD5 of these bytes, when known, is sent as Content-MD5 (S3 refuses a
        // body that does not match it) and is what the ETag must equal: the bytes are not
        // hashed again on the way.
        let source_md5 = obj.content_md5.as_deref().and_then(md5_of_hex);
        let (body, digest) = hashed_unless_known(body, source_md5);
        let mut req =
            S3Request::new(Method::PUT, &self.bucket, Some(key)).body(Body::Stream(body, obj.size));
        req.headers = self.replica_headers(obj)?;
        if let Some(md5) = source_md5 {
            let b64 = base64_of(&md5);
            if let Ok(v) = HeaderValue::from_str(&b64) {
                req.headers
                    .push((HeaderName::from_static("content-md5"), v));
            }
        }
        let resp = self.client.send(req).await.map_err(|e| self.error(e))?;
        let r = receipt(resp.headers());
        let sent = digest
            .get()
            .filter(|d| d.len == obj.size)
            .ok_or_else(|| SiteError::transient(&self.name, "the body was not sent whole"))?;
        if let Some(got) = r.etag.as_deref().and_then(md5_of_hex) {
            if got != sent.md5 {
                return Err(self.mismatch(format!(
                    "PUT {key}: ETag {} is not the MD5 of the {} bytes {} ({})",
                    r.etag.as_deref().unwrap_or_default(),
                    sent.len,
                    if source_md5.is_some() {
                        "read from the source"
                    } else {
                        "sent"
                    },
                    sent.hex()
                )));
            }
        }
        tracing::debug!(site = %self.name, key, size = obj.size, "Replica written.");
        Ok(r)
    }

    fn multipart(&self) -> Option<&dyn MultipartSite> {
        Some(self)
    }

    async fn delete(&self, key: &str) -> Result<PutReceipt, SiteError> {
        match self.replica(key).await? {
            None => return Ok(PutReceipt::default()),
            Some(r) if r.delete_marker => return Ok(PutReceipt::default()),
            Some(_) => {}
        }
        let req = S3Request::new(Method::DELETE, &self.bucket, Some(key));
        match self.client.send(req).await {
            Ok(resp) => Ok(receipt(resp.headers())),
            Err(e) if e.kind == S3ErrorKind::NotFound => Ok(PutReceipt::default()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, SiteError> {
        let mut req = S3Request::new(Method::GET, &self.bucket, None)
            .query("list-type", "2")
            .query("encoding-type", "url")
            .query("max-keys", limit.clamp(1, 1000).to_string());
        if !prefix.is_empty() {
            req = req.query("prefix", prefix.to_string());
        }
        // The cursor is the last key of the previous page.
        if let Some(a) = cursor {
            req = req.query("start-after", a.to_string());
        }
        let (_, xml) = self.client.send_xml(req).await.map_err(|e| self.error(e))?;
        let url = xml.text_of("EncodingType") == Some("url");
        let mut items = Vec::new();
        for c in xml.all("Contents") {
            let raw = c.text_of("Key").unwrap_or_default();
            let key = if url {
                uri_decode(raw).ok_or_else(|| self.rejected(format!("bad listed key {raw:?}")))?
            } else {
                raw.to_string()
            };
            let size = c
                .text_of("Size")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            items.push((key, size, None));
        }
        let truncated = xml.text_of("IsTruncated").map(str::trim) == Some("true");
        let next = if truncated {
            items.last().map(|(k, _, _)| k.clone())
        } else {
            None
        };
        Ok(ListPage { items, next })
    }

    async fn health(&self) -> Result<(), SiteError> {
        let req = S3Request::new(Method::HEAD, &self.bucket, None);
        match self.client.send(req).await {
            Ok(_) => Ok(()),
            // HEAD answers carry no error code: a 404 on a bucket is a missing bucket.
            Err(e) if e.status == Some(404) => Err(SiteError::NoSuchBucket {
                site: self.name.clone(),
                bucket: self.bucket.clone(),
            }),
            Err(e) => Err(self.error(e)),
        }
    }
}

fn base64_of(md5: &[u8; 16]) -> String {
    crate::checksum::Digested { md5: *md5, len: 0 }.base64()
}

#[async_trait]
impl MultipartSite for S3Site {
    async fn create(&self, key: &str, obj: &ObjectInfo) -> Result<String, SiteError> {
        let mut req = S3Request::new(Method::POST, &self.bucket, Some(key)).flag("uploads");
        req.headers = self.replica_headers(obj)?;
        let (_, xml) = self.client.send_xml(req).await.map_err(|e| self.error(e))?;
        xml.text_of("UploadId")
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| self.rejected("CreateMultipartUpload answered no UploadId".into()))
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        len: u64,
        body: ByteStream,
    ) -> Result<PartReceipt, SiteError> {
        let (body, digest) = hashed(body);
        let req = S3Request::new(Method::PUT, &self.bucket, Some(key))
            .query("partNumber", number.to_string())
            .query("uploadId", upload_id)
            .body(Body::Stream(body, len));
        let resp = self.client.send(req).await.map_err(|e| self.error(e))?;
        let etag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| self.rejected(format!("UploadPart {number} answered no ETag")))?;
        let sent = digest
            .get()
            .filter(|d| d.len == len)
            .ok_or_else(|| SiteError::transient(&self.name, "a part was not sent whole"))?;
        if let Some(got) = md5_of_hex(&etag) {
            if got != sent.md5 {
                return Err(self.mismatch(format!(
                    "part {number} of {key}: ETag {etag} is not the MD5 of the bytes sent ({})",
                    sent.hex()
                )));
            }
        }
        Ok(PartReceipt {
            number,
            etag,
            md5: sent.md5,
        })
    }

    async fn complete(
        &self,
        key: &str,
        obj: &ObjectInfo,
        upload_id: &str,
        parts: &[PartReceipt],
    ) -> Result<PutReceipt, SiteError> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for p in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                p.number,
                xml_escape(&p.etag)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let req = S3Request::new(Method::POST, &self.bucket, Some(key))
            .query("uploadId", upload_id)
            .header(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml"),
            )
            .body(Body::Bytes(xml.into()));
        let (headers, answer) = self.client.send_xml(req).await.map_err(|e| self.error(e))?;
        let mut r = receipt(&headers);
        // The ETag of a completed upload is in the answer's body.
        if let Some(e) = answer.text_of("ETag") {
            r.etag = Some(e.trim().trim_matches('"').to_string());
        }
        let expected = multipart_etag(&parts.iter().map(|p| p.md5).collect::<Vec<_>>());
        if let Some(got) = r.etag.as_deref().filter(|e| e.contains('-')) {
            if got != expected {
                return Err(self.mismatch(format!(
                    "completed upload of {key}: ETag {got}, expected {expected}"
                )));
            }
        }
        tracing::debug!(site = %self.name, key, size = obj.size, "Multipart replica written.");
        Ok(r)
    }

    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), SiteError> {
        let req =
            S3Request::new(Method::DELETE, &self.bucket, Some(key)).query("uploadId", upload_id);
        match self.client.send(req).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == S3ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn uploads_at(&self, key: &str) -> Result<Vec<(String, u64)>, SiteError> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        // Bounded: an object key has few uploads; stop after 100 pages whatever happens.
        for _ in 0..100 {
            let mut req = S3Request::new(Method::GET, &self.bucket, None)
                .flag("uploads")
                .query("prefix", key)
                .query("encoding-type", "url");
            if let Some((k, u)) = &markers {
                req = req
                    .query("key-marker", k.clone())
                    .query("upload-id-marker", u.clone());
            }
            let (_, xml) = self.client.send_xml(req).await.map_err(|e| self.error(e))?;
            let url = xml.text_of("EncodingType") == Some("url");
            for u in xml.all("Upload") {
                let raw = u.text_of("Key").unwrap_or_default();
                let k = if url {
                    uri_decode(raw).unwrap_or_default()
                } else {
                    raw.to_string()
                };
                let Some(id) = u.text_of("UploadId") else {
                    continue;
                };
                if k == key {
                    let at = crate::model::ms_of_iso(u.text_of("Initiated").unwrap_or_default());
                    out.push((id.to_string(), at));
                }
            }
            let next = (
                xml.text_of("NextKeyMarker").unwrap_or_default().to_string(),
                xml.text_of("NextUploadIdMarker")
                    .unwrap_or_default()
                    .to_string(),
            );
            if xml.text_of("IsTruncated") != Some("true") || next.0.is_empty() {
                break;
            }
            markers = Some(next);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_keeps_plain_values_and_encodes_the_rest() {
        assert_eq!(header_text("blue sky"), "blue sky");
        assert_eq!(header_text("=?UTF-8?B?w6k=?="), "=?UTF-8?B?w6k=?=");
        let e = header_text("é");
        assert!(e.starts_with("=?UTF-8?B?"), "{e}");
        assert_eq!(crate::http::rfc2047_decode(&e), "é");
        assert_eq!(
            crate::http::rfc2047_decode(&header_text(" padded ")),
            " padded "
        );
    }
}
