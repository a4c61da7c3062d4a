//! A small HTTP proxy for failure tests: answers the first `fail_first` requests with
//! `503 SlowDown` (the S3 throttling answer), forwards the others to `upstream` (streaming
//! both bodies), and counts what it saw. Loopback only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Counters of a [`Flaky`] proxy.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests received.
    pub requests: AtomicUsize,
    /// Requests answered 503.
    pub failed: AtomicUsize,
    /// Requests whose upstream could not be reached (answered 502).
    pub unreachable: AtomicUsize,
}

/// A running proxy; stops when dropped.
pub struct Flaky {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Flaky {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Out = BoxBody<Bytes, hyper::Error>;

fn fixed(status: StatusCode, body: &'static str) -> Response<Out> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

/// Which requests a [`Flaky`] proxy answers itself: given the request's number (from 0) and
/// its head, `Some((status, XML body))` answers it, `None` forwards it.
pub type Rule =
    Arc<dyn Fn(usize, &hyper::http::request::Parts) -> Option<(StatusCode, String)> + Send + Sync>;

/// Starts the proxy in front of `upstream`, answering the first `fail_first` requests 503.
pub async fn start(upstream: SocketAddr, fail_first: usize) -> Flaky {
    start_with(
        upstream,
        Arc::new(move |n, _| {
            (n < fail_first).then(|| (StatusCode::SERVICE_UNAVAILABLE, SLOW_DOWN.to_string()))
        }),
    )
    .await
}

/// Starts the proxy in front of `upstream`, answering what `rule` picks.
pub async fn start_with(upstream: SocketAddr, rule: Rule) -> Flaky {
    start_slow(upstream, rule, std::time::Duration::ZERO).await
}

/// [`start_with`], each answer the proxy gives itself coming only after `delay` (a site slow
/// to fail).
pub async fn start_slow(upstream: SocketAddr, rule: Rule, delay: std::time::Duration) -> Flaky {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let counts = Arc::new(Counts::default());
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let c = counts.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counts = c.clone();
            let client = client.clone();
            let rule = rule.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let counts = counts.clone();
                    let client = client.clone();
                    let rule = rule.clone();
                    async move {
                        let n = counts.requests.fetch_add(1, Ordering::SeqCst);
                        let (mut parts, body) = req.into_parts();
                        if let Some((status, xml)) = rule(n, &parts) {
                            counts.failed.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            let mut r = Response::new(
                                Full::new(Bytes::from(xml))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            );
                            *r.status_mut() = status;
                            r.headers_mut()
                                .insert("content-type", "application/xml".parse().expect("hv"));
                            return Ok::<_, Infallible>(r);
                        }
                        let pq = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_else(|| "/".into());
                        parts.uri = format!("http://{upstream}{pq}").parse().expect("uri");
                        match client.request(Request::from_parts(parts, body)).await {
                            Ok(resp) => Ok(resp.map(|b| b.boxed())),
                            Err(_) => {
                                counts.unreachable.fetch_add(1, Ordering::SeqCst);
                                Ok(fixed(StatusCode::BAD_GATEWAY, "upstream unreachable"))
                            }
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Flaky { addr, counts, task }
}

/// Counters of a [`Corrupting`] proxy.
#[derive(Debug, Default)]
pub struct CorruptCounts {
    /// Requests received.
    pub requests: AtomicUsize,
    /// PUT requests carrying data.
    pub data_puts: AtomicUsize,
    /// Request bodies whose bytes were changed on the way.
    pub corrupted: AtomicUsize,
}

/// A proxy that changes one byte of the body of the first `corrupt_first` PUT requests
/// carrying data (an object or a part) on their way to the upstream, and with `strip_md5`
/// removes their `Content-MD5` header too, so the upstream stores other bytes than were sent
/// and answers with their ETag. Stops when dropped.
pub struct Corrupting {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it did.
    pub counts: Arc<CorruptCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl Corrupting {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Corrupting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a [`Corrupting`] proxy in front of `upstream`.
pub async fn start_corrupting(
    upstream: SocketAddr,
    corrupt_first: usize,
    strip_md5: bool,
) -> Corrupting {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let counts = Arc::new(CorruptCounts::default());
    let client: Client<HttpConnector, BoxBody<Bytes, hyper::Error>> =
        Client::builder(TokioExecutor::new()).build_http();
    let c = counts.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counts = c.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let counts = counts.clone();
                    let client = client.clone();
                    async move {
                        counts.requests.fetch_add(1, Ordering::SeqCst);
                        let (mut parts, body) = req.into_parts();
                        let has_data = parts.method == hyper::Method::PUT
                            && parts
                                .headers
                                .get("content-length")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok())
                                .is_some_and(|n| n > 0)
                            && !parts.uri.query().unwrap_or("").contains("comp=blocklist");
                        let corrupt = has_data
                            && counts.data_puts.fetch_add(1, Ordering::SeqCst) < corrupt_first;
                        if corrupt {
                            counts.corrupted.fetch_add(1, Ordering::SeqCst);
                        }
                        if corrupt && strip_md5 {
                            parts.headers.remove("content-md5");
                        }
                        let mut first = corrupt;
                        let body = body
                            .map_frame(move |frame| match frame.into_data() {
                                Ok(data) if first && !data.is_empty() => {
                                    first = false;
                                    let mut v = data.to_vec();
                                    v[0] ^= 0x5a;
                                    hyper::body::Frame::data(Bytes::from(v))
                                }
                                Ok(data) => hyper::body::Frame::data(data),
                                Err(f) => f,
                            })
                            .boxed();
                        let pq = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_else(|| "/".into());
                        parts.uri = format!("http://{upstream}{pq}").parse().expect("uri");
                        match client.request(Request::from_parts(parts, body)).await {
                            Ok(resp) => Ok::<_, Infallible>(resp.map(|b| b.boxed())),
                            Err(_) => Ok(fixed(StatusCode::BAD_GATEWAY, "upstream unreachable")),
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Corrupting { addr, counts, task }
}
