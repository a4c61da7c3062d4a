//! The `aws_s3` site: any S3-compatible endpoint, through [`crate::s3::S3Client`].
//!
//! A replica is written with `PutObject` (streamed, `Content-Length`, `UNSIGNED-PAYLOAD`) or,
//! through [`MultipartSite`], `CreateMultipartUpload` / `UploadPart` / `CompleteMultipartUpload`
//! (`AbortMultipartUpload` on failure). Each replica carries:
//!
//! ```text
//! Content-Type: <source content type>
//! x-amz-meta-<name>: <value>                      each user metadata entry
//! x-amz-meta-scal-replication-status: REPLICA
//! x-amz-meta-scal-version-id: <source version id>
//! x-amz-tagging: k1=v1&k2=v2                      URL-encoded tag set
//! ```
//!
//! User metadata values must be valid HTTP header values (visible ASCII and spaces); others
//! are [`SiteError::Rejected`]. The receipt carries `x-amz-version-id` and the `ETag`.

use async_trait::async_trait;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, ETAG};
use hyper::{HeaderMap, Method};

use super::{MultipartSite, PartReceipt, PutReceipt, Site, SiteError};
use crate::config::SiteKind;
use crate::http::{uri_encode, xml_escape, Body};
use crate::model::{ByteStream, ObjectInfo};
use crate::s3::{S3Client, S3Error, S3ErrorKind, S3Request};

/// User metadata name of the replication status marker.
pub const META_STATUS: &str = "scal-replication-status";
/// User metadata name of the source version id marker.
pub const META_VERSION: &str = "scal-version-id";

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
        match e.kind {
            S3ErrorKind::Transient => SiteError::Transient {
                site,
                detail: e.detail,
            },
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
        if let Some(ct) = &obj.content_type {
            h.push((CONTENT_TYPE, value("content type", ct)?));
        }
        for (k, v) in &obj.user_metadata {
            let lower = k.to_ascii_lowercase();
            if lower == META_STATUS || lower == META_VERSION {
                continue; // ours win
            }
            let name =
                HeaderName::from_bytes(format!("x-amz-meta-{lower}").as_bytes()).map_err(|_| {
                    self.rejected(format!("metadata name {k:?} is not a valid header name"))
                })?;
            h.push((name, value("metadata value", v)?));
        }
        h.push((
            HeaderName::from_static("x-amz-meta-scal-replication-status"),
            HeaderValue::from_static("REPLICA"),
        ));
        h.push((
            HeaderName::from_static("x-amz-meta-scal-version-id"),
            value("version id", &obj.version.version_id)?,
        ));
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

fn receipt(headers: &HeaderMap) -> PutReceipt {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    PutReceipt {
        version_id: get("x-amz-version-id").filter(|v| !v.is_empty()),
        etag: headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|e| e.trim_matches('"').to_string()),
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

    async fn put(&self, obj: &ObjectInfo, body: ByteStream) -> Result<PutReceipt, SiteError> {
        let mut req = S3Request::new(Method::PUT, &self.bucket, Some(&obj.version.key))
            .body(Body::Stream(body, obj.size));
        req.headers = self.replica_headers(obj)?;
        let resp = self.client.send(req).await.map_err(|e| self.error(e))?;
        let r = receipt(resp.headers());
        tracing::debug!(site = %self.name, key = %obj.version.key, size = obj.size, "Replica written.");
        Ok(r)
    }

    fn multipart(&self) -> Option<&dyn MultipartSite> {
        Some(self)
    }

    async fn delete(&self, obj: &ObjectInfo) -> Result<PutReceipt, SiteError> {
        let req = S3Request::new(Method::DELETE, &self.bucket, Some(&obj.version.key));
        match self.client.send(req).await {
            Ok(resp) => Ok(receipt(resp.headers())),
            Err(e) if e.kind == S3ErrorKind::NotFound => Ok(PutReceipt::default()),
            Err(e) => Err(self.error(e)),
        }
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

#[async_trait]
impl MultipartSite for S3Site {
    async fn create(&self, obj: &ObjectInfo) -> Result<String, SiteError> {
        let mut req =
            S3Request::new(Method::POST, &self.bucket, Some(&obj.version.key)).flag("uploads");
        req.headers = self.replica_headers(obj)?;
        let (_, xml) = self.client.send_xml(req).await.map_err(|e| self.error(e))?;
        xml.text_of("UploadId")
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| self.rejected("CreateMultipartUpload answered no UploadId".into()))
    }

    async fn put_part(
        &self,
        obj: &ObjectInfo,
        upload_id: &str,
        number: u32,
        len: u64,
        body: ByteStream,
    ) -> Result<PartReceipt, SiteError> {
        let req = S3Request::new(Method::PUT, &self.bucket, Some(&obj.version.key))
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
        Ok(PartReceipt { number, etag })
    }

    async fn complete(
        &self,
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
        let req = S3Request::new(Method::POST, &self.bucket, Some(&obj.version.key))
            .query("uploadId", upload_id)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/xml"))
            .body(Body::Bytes(xml.into()));
        let (headers, _) = self.client.send_xml(req).await.map_err(|e| self.error(e))?;
        tracing::debug!(site = %self.name, key = %obj.version.key, size = obj.size, "Multipart replica written.");
        Ok(receipt(&headers))
    }

    async fn abort(&self, obj: &ObjectInfo, upload_id: &str) -> Result<(), SiteError> {
        let req = S3Request::new(Method::DELETE, &self.bucket, Some(&obj.version.key))
            .query("uploadId", upload_id);
        match self.client.send(req).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == S3ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }
}
