//! The HTTP plumbing shared by the S3 client ([`crate::s3`]) and the Azure site
//! ([`crate::site::azure`]): one pooled hyper-util client, request bodies that stream exactly
//! their announced length, answer bodies streamed with an idle timeout, URI encoding, a small
//! XML reader and the few header and date helpers both protocols need. Nothing here signs a
//! request or knows a service's error codes: that belongs to each adapter.
//!
//! - TLS: `https://` goes through rustls (ring) with the Mozilla roots compiled in
//!   (webpki-roots); the system store and variables such as `AWS_CA_BUNDLE` are never read.
//!   An endpoint behind a private CA names a PEM file (`ca_file`): its certificates are then
//!   trusted *instead of* the bundled roots, as curl's `--cacert` does, so a certificate a
//!   public CA issued for that host is not accepted there (put several CAs in the file to trust
//!   more than one).
//! - URI encoding: key bytes outside RFC 3986's unreserved set are percent-encoded once, `/`
//!   kept, which is the canonical URI S3 signs (no double encoding, no path normalization), so
//!   keys with spaces, `%`, `+`, `?`, `#`, `:` or unicode round-trip.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rustls::RootCertStore;

use crate::error::chain;
use crate::model::ByteStream;

/// Bytes percent-encoded in a URI path segment or query component: all but RFC 3986's
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

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

/// The body type of every request the client sends.
pub type HttpBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// The pooled HTTP/1 client (http or https), with streaming request bodies.
pub type HttpClient = Client<HttpsConnector<AbortingConnector>, HttpBody>;

/// The TCP connector of [`HttpClient`]: its connections close with a reset (`SO_LINGER`
/// 0). A request given up on (a timeout, a cancelled copy) closes its connection; with a
/// reset, a request still waiting unread in the peer's socket (a peer frozen or overloaded) is
/// discarded by the peer's kernel instead of being executed later, out of order: a PUT given
/// up on must not land after the DELETE that followed it.
#[derive(Clone, Debug)]
pub struct AbortingConnector(HttpConnector);

impl tower_service::Service<hyper::Uri> for AbortingConnector {
    type Response = <HttpConnector as tower_service::Service<hyper::Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<hyper::Uri>>::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            // Best effort: without it a close is a plain FIN.
            let _ = io.inner().set_zero_linger();
            Ok(io)
        })
    }
}

/// A pooled HTTP/1 client with a connect timeout (shared by the S3 and Azure adapters),
/// trusting the bundled roots, or only the CAs of `ca_file` when one is given.
///
/// # Errors
/// A description naming `ca_file` when it cannot be used (see [`crate::tls::read_ca_file`]).
pub fn http_client(
    connect_timeout: Duration,
    ca_file: Option<&Path>,
) -> Result<HttpClient, String> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let tls = match ca_file {
        None => HttpsConnectorBuilder::new().with_webpki_roots(),
        Some(path) => HttpsConnectorBuilder::new().with_tls_config(private_ca_config(path)?),
    };
    let https = tls
        .https_or_http()
        .enable_http1()
        .wrap_connector(AbortingConnector(connector));
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https))
}

/// The TLS client configuration trusting only the CAs of `path`.
fn private_ca_config(path: &Path) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in crate::tls::read_ca_file(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
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

impl Body {
    /// The number of bytes the body carries (its `Content-Length`).
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::Stream(_, n) => *n,
        }
    }

    /// Whether the body carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body hyper sends; a stream must yield exactly its length ([`exact_length_body`]).
    pub fn into_http(self) -> HttpBody {
        match self {
            Body::Empty => Empty::new().map_err(|never| match never {}).boxed_unsync(),
            Body::Bytes(b) => Full::new(b).map_err(|never| match never {}).boxed_unsync(),
            Body::Stream(s, n) => exact_length_body(s, n),
        }
    }
}

/// A request body from a stream that must yield exactly `len` bytes; a shorter or longer stream
/// fails the request (so a broken source never becomes a truncated replica).
pub fn exact_length_body(stream: ByteStream, len: u64) -> HttpBody {
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

/// Turns an answer body into a [`ByteStream`] that fails with `TimedOut` when no chunk comes
/// for `idle` (`what` names the peer in that error).
pub fn stream_body(body: Incoming, idle: Duration, what: &'static str) -> ByteStream {
    let s = futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        loop {
            match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => {
                    return Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("{what} body stalled"),
                        )),
                        None,
                    ))
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some((Err(std::io::Error::other(chain(&e))), None)),
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

/// The delay a `Retry-After: <seconds>` header asks for, if any.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
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

/// A minimal XML element tree, enough to read S3 and Azure answers.
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

/// The RFC 2047 form (`=?UTF-8?B?<base64>?=`) of `value`: how a header carries text HTTP
/// cannot (non-ASCII, surrounding spaces); S3 decodes it when it stores user metadata (and
/// encodes it again in its answers).
pub fn rfc2047_encode(value: &str) -> String {
    use base64::Engine as _;
    format!(
        "=?UTF-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(value.as_bytes())
    )
}

/// Decodes an RFC 2047 encoded word in UTF-8 (`B` or `Q` encoding) when `value` is one;
/// anything else comes back as it is.
pub fn rfc2047_decode(value: &str) -> String {
    use base64::Engine as _;
    let decoded = (|| {
        let inner = value.trim().strip_prefix("=?")?.strip_suffix("?=")?;
        let mut parts = inner.splitn(3, '?');
        let charset = parts.next()?;
        let encoding = parts.next()?;
        let text = parts.next()?;
        if !charset.eq_ignore_ascii_case("utf-8") {
            return None;
        }
        let bytes = match encoding {
            "B" | "b" => base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?,
            "Q" | "q" => {
                let mut out = Vec::with_capacity(text.len());
                let mut it = text.bytes();
                while let Some(b) = it.next() {
                    match b {
                        b'_' => out.push(b' '),
                        b'=' => {
                            let h = [it.next()?, it.next()?];
                            out.push(u8::from_str_radix(std::str::from_utf8(&h).ok()?, 16).ok()?);
                        }
                        b => out.push(b),
                    }
                }
                out
            }
            _ => return None,
        };
        String::from_utf8(bytes).ok()
    })();
    decoded.unwrap_or_else(|| value.to_string())
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
    fn http_dates_become_iso_with_milliseconds() {
        assert_eq!(
            http_date_to_iso("Thu, 26 Nov 2026 10:00:01 GMT").as_deref(),
            Some("2026-11-26T10:00:01.000Z")
        );
    }
}
