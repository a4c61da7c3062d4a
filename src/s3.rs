//! A small S3 client shared by the `s3` source and the `aws_s3` site: requests signed with
//! SigV4 by `aws-sigv4` (no hand-written signing), sent through hyper-util's pooled client,
//! answers parsed with `quick-xml`.
//!
//! - Addressing: path style `http://host/bucket/key` (default) or virtual-host style
//!   `http://bucket.host/key`. Key bytes outside RFC 3986's unreserved set are percent-encoded
//!   once, `/` kept, which is the canonical URI S3 signs (no double encoding, no path
//!   normalization), so keys with spaces, `%`, `+`, `?`, `#`, `:` or unicode round-trip.
//! - Bodies are streamed (`Content-Length` set, `UNSIGNED-PAYLOAD`); response bodies are streams
//!   with an idle timeout, and XML answers are read with a size cap.
//! - Errors are classified here ([`S3ErrorKind`]), once, from the status and the S3 error code.
//! - `http://` and `https://` endpoints; TLS by rustls with the Mozilla roots compiled in.
//!   Environment variables such as `AWS_CA_BUNDLE` or `AWS_PROFILE` are never read:
//!   credentials come from the configuration, trust from the bundled roots.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::model::ByteStream;

/// Bytes percent-encoded in a URI path segment or query component: all but RFC 3986's
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Largest XML answer read into memory (listings of 1,000 versions are ~500 KiB).
const MAX_XML: usize = 16 * 1024 * 1024;

/// Percent-encodes a string for a URI path segment or a query component.
pub fn uri_encode(s: &str) -> String {
    utf8_percent_encode(s, STRICT).to_string()
}

/// Percent-encodes a key for a URI path: every segment encoded, `/` kept.
pub fn encode_key(key: &str) -> String {
    key.split('/').map(uri_encode).collect::<Vec<_>>().join("/")
}

/// Decodes a percent-encoded string (listings with `encoding-type=url`).
pub fn uri_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

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
}

impl S3Error {
    fn transient(detail: impl Into<String>) -> S3Error {
        S3Error {
            kind: S3ErrorKind::Transient,
            status: None,
            code: String::new(),
            detail: detail.into(),
        }
    }

    /// An answer that cannot be used.
    pub fn invalid(detail: impl Into<String>) -> S3Error {
        S3Error {
            kind: S3ErrorKind::Rejected,
            status: None,
            code: String::new(),
            detail: detail.into(),
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
        let retry_after = headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
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
        }
    }
}

/// A minimal XML element tree, enough to read S3 answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xml {
    /// Local name (namespace prefix dropped).
    pub name: String,
    /// Text content (unescaped).
    pub text: String,
    /// Child elements in order.
    pub children: Vec<Xml>,
}

impl Xml {
    /// Parses a document into its root element.
    ///
    /// # Errors
    /// A description of the problem if the XML is malformed or has no root.
    pub fn parse(bytes: &[u8]) -> Result<Xml, String> {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_reader(bytes);
        let mut stack: Vec<Xml> = Vec::new();
        let mut buf = Vec::new();
        loop {
            let ev = reader
                .read_event_into(&mut buf)
                .map_err(|e| format!("malformed XML: {e}"))?;
            match ev {
                Event::Start(e) => {
                    if stack.len() > 64 {
                        return Err("XML nested too deeply".into());
                    }
                    stack.push(Xml {
                        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                        ..Xml::default()
                    });
                }
                Event::Empty(e) => {
                    let el = Xml {
                        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                        ..Xml::default()
                    };
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => return Ok(el),
                    }
                }
                Event::Text(t) => {
                    let text = t.decode().map_err(|e| format!("malformed XML text: {e}"))?;
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&text);
                    }
                }
                Event::GeneralRef(r) => {
                    let name = String::from_utf8_lossy(r.as_ref()).into_owned();
                    let resolved = match name.as_str() {
                        "amp" => "&".to_string(),
                        "lt" => "<".to_string(),
                        "gt" => ">".to_string(),
                        "quot" => "\"".to_string(),
                        "apos" => "'".to_string(),
                        _ => match r.resolve_char_ref() {
                            Ok(Some(c)) => c.to_string(),
                            _ => return Err(format!("unknown XML entity &{name};")),
                        },
                    };
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&resolved);
                    }
                }
                Event::CData(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&String::from_utf8_lossy(&t));
                    }
                }
                Event::End(_) => {
                    let done = stack.pop().ok_or("unbalanced XML")?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => return Ok(done),
                    }
                }
                Event::Eof => return Err("XML ended before its root element closed".into()),
                _ => {}
            }
            buf.clear();
        }
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Xml> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children named `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Xml> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child named `name`.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// The text at a path of child names.
    pub fn path(&self, names: &[&str]) -> Option<&str> {
        let mut cur = self;
        for n in names {
            cur = cur.child(n)?;
        }
        Some(cur.text.as_str())
    }
}

/// Escapes text for an XML element.
pub fn xml_escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// A request body.
pub enum Body {
    /// No body.
    Empty,
    /// A small body in memory (XML).
    Bytes(Bytes),
    /// A stream of exactly `len` bytes.
    Stream(ByteStream, u64),
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
    /// Longest wait for the answer's head, or between two chunks of a body, either way.
    pub idle_timeout: Duration,
    /// Slowest upload accepted, in bytes per second: a request with a body gets
    /// `idle_timeout + len / min_upload_rate` to be answered.
    pub min_upload_rate: u64,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            path_style: true,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            min_upload_rate: 64 * 1024,
        }
    }
}

/// The pooled HTTP/1 client (http or https), with streaming request bodies.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, UnsyncBoxBody<Bytes, std::io::Error>>;

/// A pooled HTTP/1 client with a connect timeout (shared by the S3 and Azure adapters).
/// `https://` goes through rustls (ring) with the Mozilla roots compiled in (webpki-roots):
/// the system store and variables such as `AWS_CA_BUNDLE` are not read.
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
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
    /// A description of the problem if the endpoint is not a usable `http://` URL.
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
        let http = http_client(opts.connect_timeout);
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

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.opts.idle_timeout
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
        let (host, url) = self.url(req.bucket, req.key, &req.query);
        let method = req.method.clone();
        let (body, len) = match req.body {
            Body::Empty => (
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
                0,
            ),
            Body::Bytes(b) => {
                let n = b.len() as u64;
                (
                    Full::new(b).map_err(|never| match never {}).boxed_unsync(),
                    n,
                )
            }
            Body::Stream(s, n) => (exact_length_body(s, n), n),
        };
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
                    error_chain(&e)
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

    fn sign(&self, req: &mut Request<UnsyncBoxBody<Bytes, std::io::Error>>) -> Result<(), S3Error> {
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
                        error_chain(&e)
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
        let idle = self.opts.idle_timeout;
        let s = futures_util::stream::unfold(Some(body), move |state| async move {
            let mut body = state?;
            loop {
                match tokio::time::timeout(idle, body.frame()).await {
                    Err(_) => {
                        return Some((
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "S3 body stalled",
                            )),
                            None,
                        ))
                    }
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => {
                        return Some((Err(std::io::Error::other(error_chain(&e))), None))
                    }
                    Ok(Some(Ok(f))) => {
                        if let Ok(data) = f.into_data() {
                            if !data.is_empty() {
                                return Some((Ok(data), Some(body)));
                            }
                        }
                    }
                }
            }
        });
        Box::pin(s)
    }
}

/// A request body from a stream that must yield exactly `len` bytes; a shorter or longer stream
/// fails the request (so a broken source never becomes a truncated replica).
pub fn exact_length_body(stream: ByteStream, len: u64) -> UnsyncBoxBody<Bytes, std::io::Error> {
    let counted = futures_util::stream::unfold(
        (stream, 0u64, false),
        move |(mut s, seen, done)| async move {
            if done {
                return None;
            }
            match s.next().await {
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    if seen > len {
                        let e =
                            std::io::Error::other(format!("source stream longer than {len} bytes"));
                        return Some((Err(e), (s, seen, true)));
                    }
                    Some((Ok(Frame::data(chunk)), (s, seen, false)))
                }
                Some(Err(e)) => Some((Err(e), (s, seen, true))),
                None if seen < len => {
                    let e = std::io::Error::other(format!(
                        "source stream ended after {seen} of {len} bytes"
                    ));
                    Some((Err(e), (s, seen, true)))
                }
                None => None,
            }
        },
    );
    StreamBody::new(counted).boxed_unsync()
}

/// An error and its causes, joined (hyper's own messages are terse).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Parses an HTTP date (`Last-Modified`) into ISO-8601 with milliseconds.
pub fn http_date_to_iso(s: &str) -> Option<String> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let t = time::PrimitiveDateTime::parse(s.trim(), fmt)
        .ok()?
        .assume_utc();
    let out = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_once_with_slashes_kept() {
        assert_eq!(encode_key("a b/c+d?e#f%g:h"), "a%20b/c%2Bd%3Fe%23f%25g%3Ah");
        assert_eq!(encode_key("é"), "%C3%A9");
        assert_eq!(encode_key("x~y_z-.1"), "x~y_z-.1");
        assert_eq!(uri_decode("a%20b%2Fc").as_deref(), Some("a b/c"));
    }

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
    fn xml_answers_parse_with_entities() {
        let x = Xml::parse(
            br#"<?xml version="1.0"?><R xmlns="http://s3"><A>x &amp; y</A><B/><A>2</A><C><D>d</D></C></R>"#,
        )
        .unwrap();
        assert_eq!(x.name, "R");
        assert_eq!(x.text_of("A"), Some("x & y"));
        assert_eq!(x.all("A").count(), 2);
        assert_eq!(x.path(&["C", "D"]), Some("d"));
        assert!(Xml::parse(b"<R><A></R>").is_err());
        assert!(Xml::parse(b"").is_err());
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
        assert!(S3Client::new("ftp://x", "r", "a", "s", S3Options::default()).is_err());
        assert!(S3Client::new("http://", "r", "a", "s", S3Options::default()).is_err());
    }

    #[test]
    fn http_dates_become_iso_with_milliseconds() {
        assert_eq!(
            http_date_to_iso("Thu, 26 Nov 2026 10:00:01 GMT").as_deref(),
            Some("2026-11-26T10:00:01.000Z")
        );
    }
}
