//! The REST API (hyper): the original's routes under `/_/backbeat/api/<route>` and `/_/<route>`.
//!
//! Connections ([`serve`]), safe to expose to a network (DESIGN 8):
//! - the client IP allow-list is checked as soon as a connection is accepted, before any byte
//!   of it is read: a client outside it is answered 403 AccessDenied and the socket closed;
//! - at most `[server] max_connections` are served at once; one more is answered 503
//!   ServiceUnavailable (`Retry-After: 1`) and closed, never queued. Such refusals are written
//!   by at most [`MAX_REFUSALS`] tasks at once; beyond, a socket is closed without an answer;
//! - a client has `[server] header_timeout_s` to send a request's line and headers (at most
//!   [`MAX_HEAD`] bytes), else its connection is closed; an idle keep-alive connection is
//!   closed after as long;
//! - a body has as long again, from the end of its headers, to arrive in full, else 408
//!   RequestTimeout; it is limited by route ([`body_limit`]: retry, requeue and the webhook
//!   1 MiB, others 16 KiB), a larger one answered 413 EntityTooLarge without reading it (at
//!   once when its `Content-Length` says so); and the bodies held at once across connections
//!   are bounded ([`state::BODY_BUDGET`]), beyond which 503 ServiceUnavailable;
//! - a connection that ends is closed gently: our side shut, then what the client still sends
//!   (a body we did not want) read and dropped for up to [`LINGER`], so the answer is not lost
//!   to a reset.
//!
//! Request pipeline, in the original's order (reference section 1.2):
//! 1. client IP allow-list -> 403 AccessDenied (on accept, and again per request);
//! 2. bearer token, when configured -> 401;
//! 3. method (GET, POST, DELETE, plus HEAD on our own object route only) -> 405;
//! 4. route (exact match) -> 404 RouteNotFound;
//! 5. query validation -> 400 InvalidQueryParameter;
//! 6. body size and deadline -> 413 EntityTooLarge, 408 RequestTimeout, 503 (body budget);
//!    body validation -> 400 MalformedPOSTRequest (retry and requeue: 413 beyond
//!    [`failed::MAX_RETRY_ITEMS`] versions);
//! 7. store or log unusable -> 500 InternalError.
//!
//! Modules, each importing only those listed before it (and none back): [`response`]
//! (JSON and text bodies), [`error`] ([`ApiError`], store failures as 500s), [`state`]
//! ([`AppState`]), [`routes`] (the route table, matching and query checks; its rows are the
//! OpenAPI document's operations, `openapi.json`), then the handlers: [`metrics`] (JSON
//! metrics and the throughput arithmetic), [`status`] (the operator's view, `GET status` and
//! its history, and each site's state), [`health`], [`failed`] (failed CRR list/get/retry),
//! [`pause`] (pause/resume/schedule/status, through [`Control`](crate::control::Control)),
//! [`bandwidth`] (each site's bandwidth limit at run time),
//! [`requeue`] (queue versions again whatever their status),
//! [`object`] (our version view and S3 notification intake), [`monitoring`] (Prometheus
//! text), [`ui`] (the status page's static files). This file owns the request pipeline above
//! ([`serve`], [`handle`]) and the call of a matched route's handler (`run`), so it is the
//! only module that imports the handlers.
//!
//! The status page (`/_/backbeat/ui/`) is answered right after the allow-list, before the
//! token check: its files hold no data, and the page sends the token with each API request
//! it makes (see [`ui`]).

pub mod bandwidth;
pub mod error;
pub mod failed;
pub mod health;
pub mod metrics;
pub mod monitoring;
pub mod object;
pub mod pause;
pub mod requeue;
pub mod response;
pub mod routes;
pub mod state;
pub mod status;
pub mod ui;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::error::ApiError;
pub use self::response::{json_bytes_response, json_response, text_response};
use self::routes::{Route, RouteId as R, OPENAPI};
pub use self::state::AppState;

/// Largest body of the routes that take a list (retry, requeue) or an event batch (the S3
/// webhook).
pub const MAX_LARGE_BODY: usize = 1024 * 1024;

/// Largest body of every other route (none, or a small JSON object such as `{"hours": 6}`).
pub const MAX_SMALL_BODY: usize = 16 * 1024;

/// Largest request line plus headers (hyper's read buffer; keys of 1,024 bytes fit many times).
pub const MAX_HEAD: usize = 64 * 1024;

/// Refusals (403 outside the allow-list, 503 over `max_connections`) being written at once.
pub const MAX_REFUSALS: usize = 64;

/// How long a closing connection's late bytes are read and dropped (and a refusal written).
pub const LINGER: Duration = Duration::from_secs(1);

/// Most bytes read and dropped from a closing connection.
const LINGER_BYTES: usize = 2 * MAX_LARGE_BODY;

/// Time given to open requests once the server stops.
const DRAIN: Duration = Duration::from_secs(5);

/// The largest body route `id` takes.
pub fn body_limit(id: R) -> usize {
    match id {
        R::Retry | R::Requeue | R::NotifyS3 => MAX_LARGE_BODY,
        _ => MAX_SMALL_BODY,
    }
}

/// Answers one request.
pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = match dispatch(&state, peer, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if matches!(
        resp.status(),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        // The body was not read to its end: this connection cannot carry another request.
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110: a 405 lists the methods the resource supports.
        let allow = if ui::is_ui_path(&path) {
            ui::METHODS.join(", ")
        } else {
            routes::allowed_methods(&path).join(", ")
        };
        if let Ok(v) = header::HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
    }
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "API request.");
    if method == Method::HEAD {
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Full::new(Bytes::new()));
    }
    resp
}

async fn dispatch(
    state: &Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !state.allowed(peer.ip()) {
        return Err(ApiError::access_denied("invalid origin ip request"));
    }
    if ui::is_ui_path(req.uri().path()) {
        return ui::serve(req.method(), req.uri().path());
    }
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| token.matches(g.as_bytes())) {
            return Err(ApiError::unauthorized());
        }
    }
    let method = req.method().clone();
    // The original admits GET, POST and DELETE only (reference 1.2 step 2); HEAD exists just
    // for our object view (DESIGN 6), so anywhere else it is refused as the original does.
    let head_served = || routes::allowed_methods(req.uri().path()).contains(&"HEAD");
    let allowed = match method {
        Method::GET | Method::POST | Method::DELETE => true,
        Method::HEAD => head_served(),
        _ => false,
    };
    if !allowed {
        return Err(ApiError::method_not_allowed());
    }
    let uri = req.uri().clone();
    let route = routes::parse(&method, uri.path(), uri.query(), &state.sites)?;
    if method != Method::POST {
        return run(state, route, Bytes::new()).await;
    }
    let limit = body_limit(route.id);
    let body = req.into_body();
    // A body announced larger than the route takes is refused before a byte of it is read.
    let announced = body.size_hint().exact();
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    // The budget is taken before the body is read and kept while the handler holds it.
    let need = announced.map_or(limit, |n| n as usize);
    let _held = u32::try_from(need)
        .ok()
        .and_then(|n| state.bodies.clone().try_acquire_many_owned(n).ok())
        .ok_or_else(|| {
            ApiError::service_unavailable("too many request bodies in flight; retry later")
        })?;
    let body = read_body(body, limit, state.body_timeout).await?;
    run(state, route, body).await
}

fn too_large(limit: usize) -> ApiError {
    ApiError::entity_too_large(format!(
        "the request body is larger than the {limit} bytes this route takes"
    ))
}

/// The original's dependency check (reference 1.2 step 6): the log and the state store must
/// accept writes, else 500 InternalError.
fn dependencies_ok(state: &AppState) -> Result<(), ApiError> {
    let log = state.log.check().err().map(|e| e.to_string());
    let store = state.store.check().err().map(|e| e.to_string());
    match (log, store) {
        (None, None) => Ok(()),
        (l, s) => {
            let what: Vec<String> = l.into_iter().chain(s).collect();
            Err(ApiError::internal(format!(
                "error connecting to internal client: {}",
                what.join("; ")
            )))
        }
    }
}

/// Runs a matched route.
///
/// # Errors
/// The route's own errors.
async fn run(
    state: &Arc<AppState>,
    route: Route,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let ok = |v: serde_json::Value| Ok(json_response(StatusCode::OK, &v));
    // Body validation (400) before the dependency check (500), as the original's pipeline.
    let retries = match route.id {
        R::Retry | R::Requeue => failed::parse_retry_body(&body)?,
        _ => Vec::new(),
    };
    let hours = match route.id {
        R::ScheduleResume => pause::parse_hours(&body)?,
        _ => pause::DEFAULT_RESUME_HOURS,
    };
    let limit = match route.id {
        R::SetBandwidth => Some(bandwidth::parse_body(&body)?),
        _ => None,
    };
    if !matches!(
        route.id,
        R::Healthcheck | R::OpenApi | R::Monitoring | R::NotifyS3
    ) {
        dependencies_ok(state)?;
    }
    match route.id {
        R::Healthcheck => match health::healthcheck(state).await {
            Ok(body) => ok(body),
            Err((err, details)) => {
                let mut body = err.body();
                if let (Some(obj), serde_json::Value::Object(d)) = (body.as_object_mut(), details) {
                    for (k, v) in d {
                        obj.insert(k, v);
                    }
                }
                Ok(json_response(err.status, &body))
            }
        },
        R::Monitoring => monitoring::prometheus(state).await,
        R::OpenApi => Ok(text_response(
            StatusCode::OK,
            "application/json",
            OPENAPI.to_string(),
        )),
        R::Metrics(service, kind) => {
            ok(metrics::site_metrics(state, service, kind, &route.site).await?)
        }
        R::ObjectProgress | R::ObjectThroughput => {
            let Some(version) = route.version() else {
                return Err(ApiError::route_not_found(
                    "must provide object key and version ID",
                ));
            };
            let progress = route.id == R::ObjectProgress;
            ok(metrics::object_metrics(state, &route.site, &version, progress).await?)
        }
        R::FailedList => Ok(json_bytes_response(
            StatusCode::OK,
            failed::list(state, &route).await?,
        )),
        R::FailedVersion => match route.version() {
            Some(v) => ok(failed::of_version(state, &v).await?),
            None => Ok(json_bytes_response(
                StatusCode::OK,
                failed::list(state, &route).await?,
            )),
        },
        R::Retry => ok(failed::retry(state, retries).await?),
        R::Requeue => ok(requeue::requeue(state, retries).await?),
        R::Pause => ok(pause::pause(state, &route.site).await?),
        R::Resume => ok(pause::resume(state, &route.site).await?),
        R::ScheduleResume => ok(pause::schedule(state, &route.site, hours).await?),
        R::CancelSchedule => ok(pause::cancel_schedule(state, &route.site).await?),
        R::GetSchedule => ok(pause::get_schedule(state, &route.site).await?),
        R::Status => ok(pause::status(state, &route.site).await?),
        R::ObjectView => {
            let (Some(bucket), Some(key)) = (&route.bucket, &route.key) else {
                return Err(ApiError::route_not_found("must provide object key"));
            };
            let version_id = route.query.get("versionId").filter(|v| !v.is_empty());
            object::view(state, bucket, key, version_id.map(String::as_str)).await
        }
        R::NotifyS3 => ok(object::notify_s3(state, &body).await?),
        R::OperatorStatus => ok(status::status(state).await?),
        R::StatusHistory => ok(status::history(state, routes::history_hours(&route)?).await?),
        R::GetBandwidth => ok(bandwidth::get(state, &route.site).await?),
        R::SetBandwidth => match limit {
            Some(limit) => ok(bandwidth::set(state, &route.site, limit).await?),
            None => Err(ApiError::malformed_post("no limit")),
        },
        R::ResetBandwidth => ok(bandwidth::reset(state, &route.site).await?),
    }
}

/// Reads a body of at most `limit` bytes that must arrive within `deadline`.
async fn read_body(body: Incoming, limit: usize, deadline: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(_)) => Err(ApiError::malformed_post("body unreadable")),
        Err(_) => Err(ApiError::request_timeout(format!(
            "the request body did not arrive within {} s",
            deadline.as_secs()
        ))),
    }
}

/// Serves the API on `listener` until `shutdown` fires, then lets open requests finish (up to
/// 5 s). Connections are admitted, bounded and closed as the module documentation says.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let server = &state.config.server;
    let max_connections = server.max_connections;
    let connections = Arc::new(Semaphore::new(max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(MAX_HEAD)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(server.header_timeout_s));
    let tracker = TaskTracker::new();
    let mut denied = Tally::default();
    let mut over = Tally::default();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            res = listener.accept() => match res {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections end.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !state.allowed(peer.ip()) {
            if let Some(n) = denied.count() {
                tracing::warn!(%peer, refused = n, "API connections from outside allow_from refused (403).");
            }
            refuse(
                &tracker,
                &refusals,
                stream,
                ApiError::access_denied("invalid origin ip request"),
            );
            continue;
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if let Some(n) = over.count() {
                tracing::warn!(
                    max_connections,
                    refused = n,
                    "API connections over max_connections refused (503)."
                );
            }
            let err = ApiError::service_unavailable(format!(
                "more than {max_connections} connections at once; retry later"
            ));
            refuse(&tracker, &refusals, stream, err);
            continue;
        };
        let st = state.clone();
        // Boxed so the connection can be driven without hyper shutting the socket
        // (`poll_without_shutdown` wants an `Unpin` future): we close it ourselves, gently.
        let svc = service_fn(move |req| {
            let st = st.clone();
            Box::pin(async move { Ok::<_, Infallible>(handle(st, peer, req).await) })
        });
        let mut conn = builder.serve_connection(TokioIo::new(stream), svc);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut stopping = false;
            let res = loop {
                let stop = tokio::select! {
                    res = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break res,
                    () = shutdown.cancelled(), if !stopping => true,
                };
                if stop {
                    // Finish the request in hand, then close (an idle connection at once).
                    stopping = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
            };
            if let Err(e) = res {
                // Header timeouts and malformed requests end here.
                tracing::debug!(%peer, error = %e, "Connection ended with an error.");
            }
            linger_close(conn.into_parts().io.into_inner()).await;
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(DRAIN, tracker.wait()).await;
}

/// Answers `err` on a connection that will not be served and closes it, in a task of its own
/// (at most [`MAX_REFUSALS`] at once: beyond, the socket is closed without an answer).
fn refuse(tracker: &TaskTracker, refusals: &Arc<Semaphore>, mut stream: TcpStream, err: ApiError) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tracker.spawn(async move {
        let _permit = permit;
        let answer = raw_answer(&err);
        if tokio::time::timeout(LINGER, stream.write_all(&answer))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            linger_close(stream).await;
        }
    });
}

/// `err` as a whole HTTP/1.1 answer that closes the connection.
fn raw_answer(err: &ApiError) -> Vec<u8> {
    let body = serde_json::to_vec(&err.body()).unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        err.status.as_u16(),
        err.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if err.status == StatusCode::SERVICE_UNAVAILABLE {
        head.push_str("Retry-After: 1\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Closes a connection without losing what was written to a reset: shuts our side (the client
/// reads the answer to its end), then reads and drops what the client still sends (a body we
/// did not want), for at most [`LINGER`] and [`LINGER_BYTES`].
async fn linger_close(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 8192];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Counts refused connections so a flood is logged once per [`Tally::EVERY`], with its count.
#[derive(Default)]
struct Tally {
    since: Option<Instant>,
    count: u64,
}

impl Tally {
    const EVERY: Duration = Duration::from_secs(10);

    /// Counts one; `Some(count)` when it is time to log (the first, then once per period).
    fn count(&mut self) -> Option<u64> {
        self.count += 1;
        match self.since {
            Some(t) if t.elapsed() < Self::EVERY => None,
            _ => {
                self.since = Some(Instant::now());
                Some(std::mem::take(&mut self.count))
            }
        }
    }
}
