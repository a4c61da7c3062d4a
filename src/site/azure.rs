//! The `azure` site: Azure Blob Storage block blobs, shared-key authentication.
//!
//! Requests are signed by `object_store`'s [`AzureAuthorizer`] (built with only its
//! `azure-base` and `ring` features: no reqwest, no second TLS stack) and sent, streaming,
//! through the HTTP client of [`crate::http`] (rustls for `https://`), as the S3 client's are.
//! The endpoint is the account URL, e.g.
//! `https://<account>.blob.core.windows.net` or, for Azurite,
//! `http://127.0.0.1:10000/devstoreaccount1`.
//!
//! - `put`: one `Put Blob` (streamed, `Content-Length`).
//! - Multipart ([`MultipartSite`]): `Put Block` per part, block id
//!   `<16-hex upload id><8-hex part number>` (24 characters of the base64 alphabet, so a valid
//!   base64 string of fixed length); `Put Block List` commits them with the content type,
//!   metadata and tags. `abort` of an upload whose blob does not exist yet commits an empty list
//!   and deletes the blob, which discards the uncommitted blocks; when an older replica exists,
//!   its uncommitted blocks are left to Azure (discarded at the next commit or after 7 days).
//! - Metadata names must be C# identifiers: every character outside `[A-Za-z0-9_]` becomes `_`
//!   and a leading digit gets a `_` prefix ([`azure_metadata_name`]); so the markers are
//!   `scal_replication_status: REPLICA` and `scal_version_id: <source version id>`. Azure
//!   metadata names are case-insensitive. Values that are not plain ASCII header text are
//!   stored in their RFC 2047 form. The markers: `scal_replication_status`, `scal_version_id`,
//!   `scal_size`, `scal_md5`, `scal_source_bucket`.
//! - Standard headers become blob properties (`x-ms-blob-content-type`, `-content-encoding`,
//!   `-content-disposition`, `-content-language`, `-cache-control`); `Expires`, which Azure
//!   does not have, the metadata entry `scal_expires`.
//! - Integrity: each Put Blob and Put Block body is hashed as it is sent and compared with the
//!   `Content-MD5` Azure computed of what it received; the committed blob keeps its MD5
//!   (`x-ms-blob-content-md5`) when known.
//! - Limits: keys with a `.` or `..` path segment, ending with a dot, over 1,024 characters
//!   or 254 segments are refused ([`Site::check_key`]).
//! - Tags: blob index tags (`x-ms-tags`) when the tag set fits Azure's rules (at most 10 tags,
//!   keys 1-128 and values 0-256 characters of `[A-Za-z0-9 +-./:=_]`); otherwise the whole tag
//!   set goes, URL-encoded like a query string, into the metadata entry `scal_tags`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, ETAG};
use hyper::{HeaderMap, Method, Request, Response};
use object_store::azure::{AzureAccessKey, AzureAuthorizer, AzureCredential};
use object_store::client::HttpRequestBody;

use super::{
    recorded_md5, ListPage, MultipartSite, PartReceipt, PutReceipt, ReplicaInfo, Site, SiteError,
};
use crate::checksum::{hashed, md5_of_base64, md5_of_hex, Digested};
use crate::config::SiteKind;
use crate::error::{chain, FailureReason};
use crate::http::{
    encode_key, http_client, retry_after, rfc2047_decode, rfc2047_encode, uri_encode, xml_escape,
    Body, HttpClient, Xml,
};
use crate::model::{ByteStream, ObjectInfo};

/// Time to establish a TCP connection to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Metadata name of the replication status marker.
pub const META_STATUS: &str = "scal_replication_status";
/// Metadata name of the source version id marker.
pub const META_VERSION: &str = "scal_version_id";
/// Metadata name of the replica's size.
pub const META_SIZE: &str = "scal_size";
/// Metadata name of the replica's MD5.
pub const META_MD5: &str = "scal_md5";
/// Metadata name of the source bucket.
pub const META_BUCKET: &str = "scal_source_bucket";
/// Metadata name holding the tag set when it cannot be blob index tags.
pub const META_TAGS: &str = "scal_tags";

/// Maps a metadata name to a C# identifier, as Azure requires.
pub fn azure_metadata_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Whether a tag set can be stored as blob index tags.
pub fn fits_index_tags(tags: &BTreeMap<String, String>) -> bool {
    let ok_chars = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " +-./:=_".contains(c))
    };
    tags.len() <= 10
        && tags.iter().all(|(k, v)| {
            (1..=128).contains(&k.len()) && v.len() <= 256 && ok_chars(k) && ok_chars(v)
        })
}

/// Encodes a tag set like a query string (`k=v&k2=v2`).
pub fn encode_tags(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k), uri_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// An Azure Blob container as a replication site.
pub struct AzureSite {
    name: String,
    /// Account URL without trailing slash.
    endpoint: String,
    account: String,
    container: String,
    credential: AzureCredential,
    http: HttpClient,
    idle_timeout: Duration,
}

impl std::fmt::Debug for AzureSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSite")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("account", &self.account)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

/// Azure's answer, classified.
struct AzureError {
    retry_after: Option<Duration>,
    status: Option<u16>,
    code: String,
    detail: String,
}

impl AzureSite {
    /// A site writing into `container` of `account` at `endpoint`, with the base64 account key.
    ///
    /// # Errors
    /// A description of the problem if the endpoint or key is unusable.
    pub fn new(
        name: &str,
        endpoint: &str,
        account: &str,
        key: &str,
        container: &str,
    ) -> Result<AzureSite, String> {
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err(format!(
                "endpoint {endpoint:?} is not an http:// or https:// URL"
            ));
        }
        let key = AzureAccessKey::try_new(key).map_err(|e| format!("account key: {e}"))?;
        Ok(AzureSite {
            name: name.to_string(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            account: account.to_string(),
            container: container.to_string(),
            credential: AzureCredential::AccessKey(key),
            http: http_client(CONNECT_TIMEOUT, None)?,
            idle_timeout: Duration::from_secs(crate::config::defaults::request_timeout_s()),
        })
    }

    /// Waits at most `timeout` for an answer's head or the next piece of its body (a request
    /// with a body gets its upload time on top): the site's `request_timeout_s`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> AzureSite {
        self.idle_timeout = timeout;
        self
    }

    /// Trusts only the CAs of `ca_file` (PEM) for an `https://` endpoint behind a private CA;
    /// `None` keeps the bundled roots.
    ///
    /// # Errors
    /// A description naming the file when it cannot be used.
    pub fn with_ca_file(mut self, ca_file: Option<&std::path::Path>) -> Result<AzureSite, String> {
        if ca_file.is_some() {
            self.http = http_client(CONNECT_TIMEOUT, ca_file)?;
        }
        Ok(self)
    }

    /// The target container.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The URL of `blob` (or of the container), with `query` (already encoded).
    pub fn url(&self, blob: Option<&str>, query: &str) -> String {
        let mut u = format!("{}/{}", self.endpoint, uri_encode(&self.container));
        if let Some(b) = blob {
            u.push('/');
            u.push_str(&encode_key(b));
        }
        if !query.is_empty() {
            u.push('?');
            u.push_str(query);
        }
        u
    }

    /// Sends a signed request; answers >= 300 become errors.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Body,
    ) -> Result<Response<Incoming>, AzureError> {
        let transient = |detail: String| AzureError {
            retry_after: None,
            status: None,
            code: String::new(),
            detail,
        };
        let len = body.len();
        // Sign a body-less twin of the request: the signature covers method, URL and headers
        // (Content-Length included), never the body, which is then streamed.
        let mut twin = Request::builder()
            .method(method.clone())
            .uri(url)
            .body(HttpRequestBody::from(Bytes::new()))
            .map_err(|e| transient(format!("bad request: {e}")))?;
        {
            let h = twin.headers_mut();
            if len > 0 || method == Method::PUT {
                h.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
            for (n, v) in headers {
                h.append(n, v);
            }
        }
        AzureAuthorizer::new(&self.credential, &self.account)
            .try_authorize(&mut twin)
            .map_err(|e| transient(format!("cannot sign: {e}")))?;
        let (parts, _) = twin.into_parts();
        let req = Request::from_parts(parts, body.into_http());
        let budget = self.idle_timeout + Duration::from_secs(len / (64 * 1024));
        let resp = match tokio::time::timeout(budget, self.http.request(req)).await {
            Err(_) => return Err(transient(format!("{method} timed out after {budget:?}"))),
            Ok(Err(e)) => return Err(transient(format!("{method} failed: {}", chain(&e)))),
            Ok(Ok(r)) => r,
        };
        if resp.status().as_u16() < 300 {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let mut code = resp
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut message = String::new();
        if method != Method::HEAD {
            if let Ok(Ok(collected)) =
                tokio::time::timeout(self.idle_timeout, resp.into_body().collect()).await
            {
                let bytes = collected.to_bytes();
                if let Ok(x) = Xml::parse(&bytes[..bytes.len().min(64 * 1024)]) {
                    if code.is_empty() {
                        code = x.text_of("Code").unwrap_or_default().to_string();
                    }
                    message = x
                        .text_of("Message")
                        .unwrap_or_default()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                }
            }
        }
        Err(AzureError {
            retry_after,
            status: Some(status),
            detail: format!("HTTP {status} {code}: {message}"),
            code,
        })
    }

    fn classify(&self, e: AzureError) -> SiteError {
        let site = self.name.clone();
        match (e.status, e.code.as_str()) {
            (None, _) => SiteError::transient(&site, e.detail),
            (_, "ServerBusy") | (Some(429 | 503), _) => SiteError::Throttled {
                site,
                retry_after: e.retry_after,
            },
            (_, "ContainerNotFound") => SiteError::NoSuchBucket {
                site,
                bucket: self.container.clone(),
            },
            (_, "AuthenticationFailed" | "AuthorizationFailure" | "InvalidAuthenticationInfo")
            | (Some(401 | 403), _) => SiteError::Unauthorized {
                site,
                detail: e.detail,
            },
            (Some(500..=599), _) => SiteError::Transient {
                site,
                detail: e.detail,
                reason: FailureReason::ServerError,
            },
            (_, "Md5Mismatch" | "InvalidMd5") => SiteError::ChecksumMismatch {
                site,
                detail: e.detail,
            },
            (_, "RequestBodyTooLarge") => SiteError::TooLarge {
                site,
                size: 0,
                detail: e.detail,
            },
            _ => SiteError::Rejected {
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

    /// Blob properties (the standard headers), metadata (with the REPLICA markers) and tags
    /// of a replica.
    fn replica_headers(
        &self,
        obj: &ObjectInfo,
        md5: Option<&str>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, SiteError> {
        let value = |what: &str, v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| self.rejected(format!("{what} {v:?} is not a valid header value")))
        };
        let mut h = Vec::new();
        let mut meta: BTreeMap<String, String> = BTreeMap::new();
        for (name, v) in obj.headers.pairs() {
            let prop = match name {
                "content-type" => "x-ms-blob-content-type",
                "content-encoding" => "x-ms-blob-content-encoding",
                "content-disposition" => "x-ms-blob-content-disposition",
                "content-language" => "x-ms-blob-content-language",
                "cache-control" => "x-ms-blob-cache-control",
                // Azure has no Expires property: kept as metadata.
                _ => {
                    meta.insert(format!("scal_{name}"), v.to_string());
                    continue;
                }
            };
            h.push((HeaderName::from_static(prop), value(name, v)?));
        }
        for (k, v) in &obj.user_metadata {
            meta.insert(azure_metadata_name(k).to_ascii_lowercase(), v.clone());
        }
        meta.insert(META_STATUS.into(), "REPLICA".into());
        meta.insert(META_VERSION.into(), obj.version.version_id.clone());
        meta.insert(META_SIZE.into(), obj.size.to_string());
        meta.insert(
            META_MD5.into(),
            md5.map_or_else(|| recorded_md5(obj), str::to_owned),
        );
        meta.insert(META_BUCKET.into(), obj.version.bucket.clone());
        if !obj.tags.is_empty() {
            if fits_index_tags(&obj.tags) {
                h.push((
                    HeaderName::from_static("x-ms-tags"),
                    value("tags", &encode_tags(&obj.tags))?,
                ));
            } else {
                meta.insert(META_TAGS.into(), encode_tags(&obj.tags));
            }
        }
        for (k, v) in meta {
            let name =
                HeaderName::from_bytes(format!("x-ms-meta-{k}").as_bytes()).map_err(|_| {
                    self.rejected(format!("metadata name {k:?} is not a valid header name"))
                })?;
            h.push((name, value("metadata value", &header_text(&v))?));
        }
        if let Some(m) = md5.and_then(md5_of_hex) {
            h.push((
                HeaderName::from_static("x-ms-blob-content-md5"),
                value("MD5", &base64_of(&m))?,
            ));
        }
        Ok(h)
    }

    fn mismatch(&self, detail: String) -> SiteError {
        SiteError::ChecksumMismatch {
            site: self.name.clone(),
            detail,
        }
    }

    /// Checks the Content-MD5 Azure computed of what it received against what was sent.
    fn check_md5(&self, what: &str, headers: &HeaderMap, sent: &Digested) -> Result<(), SiteError> {
        let got = headers
            .get("content-md5")
            .and_then(|v| v.to_str().ok())
            .and_then(md5_of_base64);
        match got {
            Some(g) if g != sent.md5 => Err(self.mismatch(format!(
                "{what}: Content-MD5 {} is not the MD5 of the {} bytes sent ({})",
                base64_of(&g),
                sent.len,
                sent.base64()
            ))),
            _ => Ok(()),
        }
    }

    fn block_id(upload_id: &str, number: u32) -> String {
        format!("{upload_id}{number:08x}")
    }

    fn check_upload_id(&self, upload_id: &str) -> Result<(), SiteError> {
        if upload_id.len() == 16 && upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(self.rejected(format!("invalid upload id {upload_id:?}")))
        }
    }

    /// The properties and metadata of `blob`, `None` when it does not exist.
    async fn properties(&self, blob: &str) -> Result<Option<HeaderMap>, SiteError> {
        match self
            .send(
                Method::HEAD,
                &self.url(Some(blob), ""),
                Vec::new(),
                Body::Empty,
            )
            .await
        {
            Ok(resp) => Ok(Some(resp.headers().clone())),
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(self.classify(e)),
        }
    }

    async fn commit(
        &self,
        blob: &str,
        block_ids: &[String],
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<HeaderMap, SiteError> {
        let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        for id in block_ids {
            xml.push_str(&format!("<Latest>{}</Latest>", xml_escape(id)));
        }
        xml.push_str("</BlockList>");
        let resp = self
            .send(
                Method::PUT,
                &self.url(Some(blob), "comp=blocklist"),
                headers,
                Body::Bytes(Bytes::from(xml)),
            )
            .await
            .map_err(|e| self.classify(e))?;
        Ok(resp.headers().clone())
    }
}

fn receipt(headers: &HeaderMap) -> PutReceipt {
    PutReceipt {
        version_id: headers
            .get("x-ms-version-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        etag: headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|e| e.trim_matches('"').to_string()),
        wrote: true,
    }
}

fn base64_of(md5: &[u8; 16]) -> String {
    Digested { md5: *md5, len: 0 }.base64()
}

/// `v` as metadata header text: as it is when plain ASCII, else its RFC 2047 form.
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

/// The REPLICA metadata of `blob` from its metadata (`x-ms-meta-*` headers, or a listing's
/// `<Metadata>`), by lowercase name, and its size.
/// The REPLICA metadata of a blob; `content_md5` is its `Content-MD5` property (base64).
fn replica_from(
    blob: &str,
    size: u64,
    meta: &BTreeMap<String, String>,
    content_md5: Option<&str>,
) -> ReplicaInfo {
    let get = |n: &str| meta.get(n).map(|v| rfc2047_decode(v));
    let is_replica = get(META_STATUS).is_some_and(|s| s.trim() == "REPLICA");
    ReplicaInfo {
        key: blob.to_string(),
        source_version_id: get(META_VERSION).filter(|_| is_replica),
        source_bucket: get(META_BUCKET),
        size,
        md5: get(META_MD5),
        content_md5: content_md5
            .and_then(crate::checksum::md5_of_base64)
            .map(|m| crate::checksum::hex(&m)),
        site_version_id: None,
        delete_marker: false,
    }
}

#[async_trait]
impl Site for AzureSite {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SiteKind {
        SiteKind::Azure
    }

    fn check_key(&self, key: &str) -> Result<(), SiteError> {
        let limit = |what: &str| {
            Err(self.rejected(format!(
                "Azure Blob Storage cannot store key {key:?}: {what}"
            )))
        };
        if key.is_empty() || key.chars().count() > 1024 {
            return limit("blob names are 1 to 1024 characters");
        }
        let segments: Vec<&str> = key.split('/').collect();
        if segments.iter().any(|s| *s == "." || *s == "..") {
            return limit("a path segment is \".\" or \"..\"");
        }
        if segments.len() > 254 {
            return limit("more than 254 path segments");
        }
        if key.ends_with('.') {
            return limit("a blob name cannot end with a dot");
        }
        Ok(())
    }

    fn needs_md5_up_front(&self) -> bool {
        true
    }

    async fn replica(&self, key: &str) -> Result<Option<ReplicaInfo>, SiteError> {
        let Some(h) = self.properties(key).await? else {
            return Ok(None);
        };
        let mut meta = BTreeMap::new();
        for (name, v) in &h {
            if let (Some(k), Ok(v)) = (name.as_str().strip_prefix("x-ms-meta-"), v.to_str()) {
                meta.insert(k.to_ascii_lowercase(), v.to_string());
            }
        }
        let size = h
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let md5 = h.get("content-md5").and_then(|v| v.to_str().ok());
        Ok(Some(replica_from(key, size, &meta, md5)))
    }

    async fn read(&self, key: &str) -> Result<Option<ByteStream>, SiteError> {
        match self
            .send(
                Method::GET,
                &self.url(Some(key), ""),
                Vec::new(),
                Body::Empty,
            )
            .await
        {
            Ok(resp) => Ok(Some(crate::http::stream_body(
                resp.into_body(),
                self.idle_timeout,
                "azure blob",
            ))),
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(self.classify(e)),
        }
    }

    async fn put(
        &self,
        key: &str,
        obj: &ObjectInfo,
        body: ByteStream,
    ) -> Result<PutReceipt, SiteError> {
        let (body, digest) = hashed(body);
        let mut headers = self.replica_headers(obj, obj.content_md5.as_deref())?;
        headers.push((
            HeaderName::from_static("x-ms-blob-type"),
            HeaderValue::from_static("BlockBlob"),
        ));
        let url = self.url(Some(key), "");
        let resp = self
            .send(Method::PUT, &url, headers, Body::Stream(body, obj.size))
            .await
            .map_err(|e| self.classify(e))?;
        let sent = digest
            .get()
            .filter(|d| d.len == obj.size)
            .ok_or_else(|| SiteError::transient(&self.name, "the body was not sent whole"))?;
        self.check_md5(&format!("Put Blob {key}"), resp.headers(), &sent)?;
        tracing::debug!(site = %self.name, key, size = obj.size, "Replica written.");
        Ok(receipt(resp.headers()))
    }

    fn multipart(&self) -> Option<&dyn MultipartSite> {
        Some(self)
    }

    async fn delete(&self, key: &str) -> Result<PutReceipt, SiteError> {
        if self.properties(key).await?.is_none() {
            return Ok(PutReceipt::default());
        }
        match self
            .send(
                Method::DELETE,
                &self.url(Some(key), ""),
                Vec::new(),
                Body::Empty,
            )
            .await
        {
            Ok(resp) => Ok(receipt(resp.headers())),
            Err(e) if e.code == "BlobNotFound" => Ok(PutReceipt::default()),
            Err(e) => Err(self.classify(e)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, SiteError> {
        let mut query = format!(
            "restype=container&comp=list&include=metadata&maxresults={}",
            limit.clamp(1, 5000)
        );
        if !prefix.is_empty() {
            query.push_str(&format!("&prefix={}", uri_encode(prefix)));
        }
        if let Some(m) = cursor {
            query.push_str(&format!("&marker={}", uri_encode(m)));
        }
        let resp = self
            .send(
                Method::GET,
                &self.url(None, &query),
                Vec::new(),
                Body::Empty,
            )
            .await
            .map_err(|e| self.classify(e))?;
        let bytes = match tokio::time::timeout(self.idle_timeout, resp.into_body().collect()).await
        {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(e)) => return Err(SiteError::transient(&self.name, chain(&e))),
            Err(_) => return Err(SiteError::transient(&self.name, "listing timed out")),
        };
        let xml = Xml::parse(&bytes).map_err(|e| self.rejected(format!("listing: {e}")))?;
        let mut items = Vec::new();
        if let Some(blobs) = xml.child("Blobs") {
            for b in blobs.all("Blob") {
                let name = b.text_of("Name").unwrap_or_default().to_string();
                let size = b
                    .path(&["Properties", "Content-Length"])
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                let mut meta = BTreeMap::new();
                if let Some(m) = b.child("Metadata") {
                    for c in &m.children {
                        meta.insert(c.name.to_ascii_lowercase(), c.text.clone());
                    }
                }
                let md5 = b.path(&["Properties", "Content-MD5"]);
                let r = replica_from(&name, size, &meta, md5);
                items.push((name, size, Some(r)));
            }
        }
        let next = xml
            .text_of("NextMarker")
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        Ok(ListPage { items, next })
    }

    async fn health(&self) -> Result<(), SiteError> {
        match self
            .send(
                Method::GET,
                &self.url(None, "restype=container"),
                Vec::new(),
                Body::Empty,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(404) => Err(SiteError::NoSuchBucket {
                site: self.name.clone(),
                bucket: self.container.clone(),
            }),
            Err(e) => Err(self.classify(e)),
        }
    }
}

#[async_trait]
impl MultipartSite for AzureSite {
    async fn create(&self, _key: &str, obj: &ObjectInfo) -> Result<String, SiteError> {
        // Nothing to create at Azure: blocks are staged against the blob name. Validate what
        // the commit will send now, so a bad header fails before any data moves.
        self.replica_headers(obj, None)?;
        Ok(format!("{:016x}", rand::random::<u64>()))
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        len: u64,
        body: ByteStream,
    ) -> Result<PartReceipt, SiteError> {
        self.check_upload_id(upload_id)?;
        let id = Self::block_id(upload_id, number);
        let url = self.url(
            Some(key),
            &format!("comp=block&blockid={}", uri_encode(&id)),
        );
        let (body, digest) = hashed(body);
        let resp = self
            .send(Method::PUT, &url, Vec::new(), Body::Stream(body, len))
            .await
            .map_err(|e| self.classify(e))?;
        let sent = digest
            .get()
            .filter(|d| d.len == len)
            .ok_or_else(|| SiteError::transient(&self.name, "a block was not sent whole"))?;
        self.check_md5(&format!("block {number} of {key}"), resp.headers(), &sent)?;
        Ok(PartReceipt {
            number,
            etag: id,
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
        self.check_upload_id(upload_id)?;
        let ids: Vec<String> = parts
            .iter()
            .map(|p| Self::block_id(upload_id, p.number))
            .collect();
        // The whole object's MD5 is known by now (computed over the parts): the blob keeps it.
        let headers = self
            .commit(
                key,
                &ids,
                self.replica_headers(obj, obj.content_md5.as_deref())?,
            )
            .await?;
        tracing::debug!(site = %self.name, key, size = obj.size, "Multipart replica written.");
        Ok(receipt(&headers))
    }

    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), SiteError> {
        self.check_upload_id(upload_id)?;
        if self.properties(key).await?.is_some() {
            // Never replace an existing replica to drop staged blocks; Azure discards them.
            return Ok(());
        }
        self.commit(key, &[], Vec::new()).await?;
        match self
            .send(
                Method::DELETE,
                &self.url(Some(key), ""),
                Vec::new(),
                Body::Empty,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == "BlobNotFound" => Ok(()),
            Err(e) => Err(self.classify(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_become_csharp_identifiers() {
        assert_eq!(azure_metadata_name("scal-replication-status"), META_STATUS);
        assert_eq!(azure_metadata_name("scal-version-id"), META_VERSION);
        assert_eq!(azure_metadata_name("1st.name é"), "_1st_name__");
        assert_eq!(azure_metadata_name(""), "_");
    }

    #[test]
    fn only_azure_compatible_tag_sets_become_index_tags() {
        let t = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(fits_index_tags(&t("project", "x y")));
        assert!(!fits_index_tags(&t("k&", "v")));
        assert!(!fits_index_tags(&t("", "v")));
        let many: BTreeMap<_, _> = (0..11)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(!fits_index_tags(&many));
        assert_eq!(encode_tags(&t("a b", "c&d")), "a%20b=c%26d");
    }
}
