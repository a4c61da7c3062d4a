//! A small S3 client shared by the `s3` source and the `aws_s3` site: requests signed with
//! SigV4 by `aws-sigv4` (no hand-written signing), sent through the shared HTTP client of
//! [`crate::http`], XML answers read with its [`Xml`] reader.
//!
//! - Addressing: path style `http://host/bucket/key` (default) or virtual-host style
//!   `http://bucket.host/key`; keys encoded once by [`crate::http::encode_key`].
//! - Bodies are streamed (`Content-Length` set, `UNSIGNED-PAYLOAD`); response bodies are streams
//!   with an idle timeout, and XML answers are read with a size cap.
//! - Errors are classified here ([`S3ErrorKind`]), once, from the status and the S3 error code.
//! - `http://` and `https://` endpoints. Environment variables such as `AWS_CA_BUNDLE` or
//!   `AWS_PROFILE` are never read: credentials come from the configuration, trust from the
//!   roots bundled in [`crate::http`] or the configuration's `ca_file`.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::config::S3ClientConfig;
use crate::error::chain;
use crate::http::{
    encode_key, http_client, retry_after, stream_body, uri_encode, Body, HttpBody, HttpClient, Xml,
};
use crate::model::ByteStream;

/// Largest XML answer read into memory (listings of 1,000 versions are ~500 KiB).
const MAX_XML: usize = 16 * 1024 * 1024;

/// How an S3 failure should be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3ErrorKind {
    /// Network failure, timeout, 5xx: retry.
    Transient,
    /// 429/503 SlowDown: retry no sooner than the delay.
    Throttled(Option<Duration>),
    /// 401/403, bad key or signature.
    Unauthorized,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The key, version or upload does not exist.
    NotFound,
    /// Any other 4xx, or an answer we cannot use.
    Rejected,
}

/// A classified S3 failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct S3Error {
    /// How to handle it.
    pub kind: S3ErrorKind,
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// S3 error code (`NoSuchKey`, ...), when the answer had one.
    pub code: String,
    /// What happened.
    pub detail: String,
    /// The error answer's headers, when there was one (a delete marker says so in them).
    pub headers: Option<Box<HeaderMap>>,
}

impl S3Error {
    fn transient(detail: impl Into<String>) -> S3Error {
        S3Error {
            kind: S3ErrorKind::Transient,
            status: None,
            code: String::new(),
            detail: detail.into(),
            headers: None,
        }
    }

    /// An answer that cannot be used.
    pub fn invalid(detail: impl Into<String>) -> S3Error {
        S3Error {
            kind: S3ErrorKind::Rejected,
            status: None,
            code: String::new(),
            detail: detail.into(),
            headers: None,
        }
    }

    /// Classifies an error answer from its status, S3 code and headers.
    pub fn from_answer(
        status: StatusCode,
        code: &str,
        message: &str,
        headers: &HeaderMap,
    ) -> S3Error {
        let s = status.as_u16();
        let retry_after = retry_after(headers);
        let kind = match (s, code) {
            (_, "SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded")
            | (429 | 503, _) => S3ErrorKind::Throttled(retry_after),
            (_, "NoSuchBucket") => S3ErrorKind::NoSuchBucket,
            (
                _,
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "ExpiredToken"
                | "InvalidToken"
                | "RequestTimeTooSkewed"
                | "AuthorizationHeaderMalformed",
            )
            | (401 | 403, _) => S3ErrorKind::Unauthorized,
            (_, "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
                S3ErrorKind::Transient
            }
            (500..=599, _) => S3ErrorKind::Transient,
            (_, "NoSuchKey" | "NoSuchVersion" | "NoSuchUpload") | (404, _) => S3ErrorKind::NotFound,
            _ => S3ErrorKind::Rejected,
        };
        let code_part = if code.is_empty() {
            String::new()
        } else {
            format!(" {code}")
        };
        let msg_part = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        S3Error {
            kind,
            status: Some(s),
            code: code.to_string(),
            detail: format!("HTTP {s}{code_part}{msg_part}"),
            headers: Some(Box::new(headers.clone())),
        }
    }
}

/// An S3 request, before signing.
pub struct S3Request<'a> {
    /// Method.
    pub method: Method,
    /// Bucket.
    pub bucket: &'a str,
    /// Key, if the request is about an object.
    pub key: Option<&'a str>,
    /// Query parameters, unencoded; a `None` value is a flag (`?uploads`).
    pub query: Vec<(&'a str, Option<String>)>,
    /// Extra headers (already valid header values).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Body,
}

impl<'a> S3Request<'a> {
    /// A request without query, headers or body.
    pub fn new(method: Method, bucket: &'a str, key: Option<&'a str>) -> S3Request<'a> {
        S3Request {
            method,
            bucket,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    /// Adds a query parameter.
    pub fn query(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.query.push((name, Some(value.into())));
        self
    }

    /// Adds a query flag (`?versions`).
    pub fn flag(mut self, name: &'a str) -> Self {
        self.query.push((name, None));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }
}

/// Connection and timeout settings.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Path-style addressing.
    pub path_style: bool,
    /// Time to establish a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for the answer's head, or between two chunks of a body, either way: the
    /// configuration's `request_timeout_s` (15 s by default), so a peer that accepts
    /// connections and never answers fails a request, and is logged and counted, that soon.
    pub idle_timeout: Duration,
    /// Slowest upload accepted, in bytes per second: a request with a body gets
    /// `idle_timeout + len / min_upload_rate` to be answered.
    pub min_upload_rate: u64,
    /// PEM file of the CA(s) trusted instead of the bundled roots (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            path_style: true,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(crate::config::defaults::request_timeout_s()),
            min_upload_rate: 64 * 1024,
            ca_file: None,
        }
    }
}

/// A signed S3 client for one endpoint and one set of credentials.
#[derive(Clone)]
pub struct S3Client {
    scheme: String,
    authority: String,
    base_path: String,
    region: String,
    credentials: Credentials,
    opts: S3Options,
    http: HttpClient,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client")
            .field(
                "endpoint",
                &format!("{}://{}{}", self.scheme, self.authority, self.base_path),
            )
            .field("region", &self.region)
            .field("path_style", &self.opts.path_style)
            .finish_non_exhaustive()
    }
}

impl S3Client {
    /// A client for `endpoint` (`http://host:port[/base]`).
    ///
    /// # Errors
    /// A description of the problem if the endpoint is not a usable `http://` or `https://`
    /// URL, or the CA file cannot be used.
    pub fn new(
        endpoint: &str,
        region: &str,
        access_key: &str,
        secret_key: &str,
        opts: S3Options,
    ) -> Result<S3Client, String> {
        let (scheme, rest) = endpoint
            .split_once("://")
            .ok_or_else(|| format!("endpoint {endpoint:?} is not a URL"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "endpoint {endpoint:?} is not an http:// or https:// URL"
            ));
        }
        let (authority, base_path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) {
            return Err(format!("endpoint {endpoint:?} has no usable host"));
        }
        let http = http_client(opts.connect_timeout, opts.ca_file.as_deref())?;
        Ok(S3Client {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            base_path: base_path.to_string(),
            region: region.to_string(),
            credentials: Credentials::new(access_key, secret_key, None, None, "backbeat-config"),
            opts,
            http,
        })
    }

    /// A client for the S3 server a configuration describes: its request timeout, the default
    /// connect timeout and upload rate.
    ///
    /// # Errors
    /// As [`S3Client::new`].
    pub fn from_config(cfg: &S3ClientConfig) -> Result<S3Client, String> {
        let opts = S3Options {
            path_style: cfg.path_style,
            ca_file: cfg.ca_file.clone(),
            idle_timeout: Duration::from_secs(cfg.request_timeout_s),
            ..S3Options::default()
        };
        S3Client::new(
            &cfg.endpoint,
            &cfg.region,
            &cfg.access_key.0,
            &cfg.secret_key.0,
            opts,
        )
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.opts.idle_timeout
    }

    /// With virtual-host addressing the bucket becomes part of the host name: only a valid S3
    /// bucket name may, so a crafted one (`evil.com/`, `h:80@`) never changes the host a
    /// signed request goes to. (Path style percent-encodes it into one path segment.)
    fn check_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        if self.opts.path_style || crate::config::is_s3_bucket_name(bucket) {
            Ok(())
        } else {
            Err(S3Error::invalid(format!(
                "{bucket:?} is not a valid S3 bucket name: not sent (virtual-host addressing)"
            )))
        }
    }

    fn url(
        &self,
        bucket: &str,
        key: Option<&str>,
        query: &[(&str, Option<String>)],
    ) -> (String, String) {
        let key_path = key
            .map(|k| format!("/{}", encode_key(k)))
            .unwrap_or_default();
        let (host, path) = if self.opts.path_style {
            (
                self.authority.clone(),
                format!("{}/{}{}", self.base_path, uri_encode(bucket), key_path),
            )
        } else {
            let path = if key_path.is_empty() {
                "/".to_string()
            } else {
                key_path
            };
            (
                format!("{bucket}.{}", self.authority),
                format!("{}{}", self.base_path, path),
            )
        };
        let mut url = format!("{}://{host}{path}", self.scheme);
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&uri_encode(name));
            if let Some(v) = value {
                url.push('=');
                url.push_str(&uri_encode(v));
            }
        }
        (host, url)
    }

    /// Signs and sends a request; answers with status >= 300 become classified errors.
    ///
    /// # Errors
    /// A classified [`S3Error`].
    pub async fn send(&self, req: S3Request<'_>) -> Result<Response<Incoming>, S3Error> {
        self.check_bucket(req.bucket)?;
        let (host, url) = self.url(req.bucket, req.key, &req.query);
        let method = req.method.clone();
        let len = req.body.len();
        let body = req.body.into_http();
        let host_value =
            HeaderValue::from_str(&host).map_err(|e| S3Error::invalid(format!("bad host: {e}")))?;
        let mut http_req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(body)
            .map_err(|e| S3Error::invalid(format!("bad request: {e}")))?;
        let h = http_req.headers_mut();
        h.insert(hyper::header::HOST, host_value);
        if len > 0 || matches!(method, Method::PUT | Method::POST) {
            h.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        for (n, v) in req.headers {
            h.append(n, v);
        }
        self.sign(&mut http_req)?;
        let budget =
            self.opts.idle_timeout + Duration::from_secs(len / self.opts.min_upload_rate.max(1));
        let resp = match tokio::time::timeout(budget, self.http.request(http_req)).await {
            Err(_) => {
                return Err(S3Error::transient(format!(
                    "{method} timed out after {budget:?}"
                )))
            }
            Ok(Err(e)) => {
                return Err(S3Error::transient(format!(
                    "{method} failed: {}",
                    chain(&e)
                )))
            }
            Ok(Ok(r)) => r,
        };
        if resp.status().as_u16() >= 300 {
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = if method == Method::HEAD {
                Bytes::new()
            } else {
                self.read_capped(resp.into_body(), 64 * 1024)
                    .await
                    .unwrap_or_default()
            };
            let (code, message) = match Xml::parse(&body) {
                Ok(x) => (
                    x.text_of("Code").unwrap_or_default().to_string(),
                    x.text_of("Message").unwrap_or_default().to_string(),
                ),
                Err(_) => (String::new(), String::new()),
            };
            return Err(S3Error::from_answer(status, &code, &message, &headers));
        }
        Ok(resp)
    }

    fn sign(&self, req: &mut Request<HttpBody>) -> Result<(), S3Error> {
        let identity = self.credentials.clone().into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| S3Error::invalid(format!("cannot sign: {e}")))?
            .into();
        let uri = req.uri().to_string();
        let headers: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
            .collect();
        let signable = SignableRequest::new(
            req.method().as_str(),
            uri.as_str(),
            headers.into_iter(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| S3Error::invalid(format!("cannot sign: {e}")))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| S3Error::invalid(format!("cannot sign: {e}")))?
            .into_parts();
        instructions.apply_to_request_http1x(req);
        Ok(())
    }

    /// Reads a whole (small) body, at most `cap` bytes, each chunk within the idle timeout.
    ///
    /// # Errors
    /// Transient on network failure or timeout, Rejected if the body exceeds `cap`.
    pub async fn read_capped(&self, mut body: Incoming, cap: usize) -> Result<Bytes, S3Error> {
        let mut out = Vec::new();
        loop {
            let frame = match tokio::time::timeout(self.opts.idle_timeout, body.frame()).await {
                Err(_) => return Err(S3Error::transient("answer body stalled")),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(S3Error::transient(format!(
                        "answer body failed: {}",
                        chain(&e)
                    )))
                }
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > cap {
                    return Err(S3Error::invalid(format!("answer larger than {cap} bytes")));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(out))
    }

    /// Sends a request and parses its XML answer.
    ///
    /// # Errors
    /// A classified [`S3Error`]; a `200` whose body is an `<Error>` (as CompleteMultipartUpload
    /// may answer) is classified like an error status.
    pub async fn send_xml(&self, req: S3Request<'_>) -> Result<(HeaderMap, Xml), S3Error> {
        let resp = self.send(req).await?;
        let headers = resp.headers().clone();
        let status = resp.status();
        let body = self.read_capped(resp.into_body(), MAX_XML).await?;
        let xml =
            Xml::parse(&body).map_err(|e| S3Error::invalid(format!("unreadable answer: {e}")))?;
        if xml.name == "Error" {
            let code = xml.text_of("Code").unwrap_or_default();
            let message = xml.text_of("Message").unwrap_or_default();
            let status = if status.is_success() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                status
            };
            return Err(S3Error::from_answer(status, code, message, &headers));
        }
        Ok((headers, xml))
    }

    /// Turns an answer body into a [`ByteStream`] with the idle timeout between chunks.
    pub fn stream_body(&self, body: Incoming) -> ByteStream {
        stream_body(body, self.opts.idle_timeout, "S3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_from_status_and_code() {
        let h = HeaderMap::new();
        let k = |s: u16, c: &str| {
            S3Error::from_answer(StatusCode::from_u16(s).unwrap(), c, "", &h).kind
        };
        assert_eq!(k(503, "SlowDown"), S3ErrorKind::Throttled(None));
        assert_eq!(k(429, ""), S3ErrorKind::Throttled(None));
        assert_eq!(k(500, "InternalError"), S3ErrorKind::Transient);
        assert_eq!(k(403, "SignatureDoesNotMatch"), S3ErrorKind::Unauthorized);
        assert_eq!(k(403, "InvalidAccessKeyId"), S3ErrorKind::Unauthorized);
        assert_eq!(k(404, "NoSuchBucket"), S3ErrorKind::NoSuchBucket);
        assert_eq!(k(404, "NoSuchKey"), S3ErrorKind::NotFound);
        assert_eq!(k(400, "InvalidArgument"), S3ErrorKind::Rejected);
        let mut h = HeaderMap::new();
        h.insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("7"));
        let e = S3Error::from_answer(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", "", &h);
        assert_eq!(e.kind, S3ErrorKind::Throttled(Some(Duration::from_secs(7))));
    }

    #[test]
    fn path_and_virtual_host_urls() {
        let mut opts = S3Options::default();
        let c = S3Client::new(
            "http://127.0.0.1:9000/base/",
            "us-east-1",
            "ak",
            "sk",
            opts.clone(),
        )
        .unwrap();
        let q = [("versionId", Some("a+b".to_string())), ("uploads", None)];
        assert_eq!(
            c.url("bkt", Some("k x/é"), &q),
            (
                "127.0.0.1:9000".to_string(),
                "http://127.0.0.1:9000/base/bkt/k%20x/%C3%A9?versionId=a%2Bb&uploads".to_string()
            )
        );
        opts.path_style = false;
        let c = S3Client::new("https://s3.example.com", "eu-west-1", "ak", "sk", opts).unwrap();
        assert_eq!(
            c.url("bkt", Some("k"), &[]),
            (
                "bkt.s3.example.com".to_string(),
                "https://bkt.s3.example.com/k".to_string()
            )
        );
        assert_eq!(c.url("bkt", None, &[]).1, "https://bkt.s3.example.com/");
        // A name that would change the host is never sent.
        assert!(c.check_bucket("my.bucket-1").is_ok());
        for crafted in ["evil.com/x", "h:80@", "a b", "UPPER", "x", "10.0.0.1"] {
            assert_eq!(
                c.check_bucket(crafted).map_err(|e| e.kind),
                Err(S3ErrorKind::Rejected),
                "{crafted:?}"
            );
        }
        assert!(S3Client::new("ftp://x", "r", "a", "s", S3Options::default()).is_err());
        assert!(S3Client::new("http://", "r", "a", "s", S3Options::default()).is_err());
    }
}
