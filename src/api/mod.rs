//! The REST API (hyper): the original's routes under `/_/backbeat/api/<route>` and `/_/<route>`.
//!
//! Request pipeline, in the original's order (reference section 1.2):
//! 1. client IP allow-list -> 403 AccessDenied;
//! 2. bearer token, when configured -> 401;
//! 3. method (GET, POST, DELETE, plus HEAD on our own object route only) -> 405;
//! 4. route (exact match) -> 404 RouteNotFound;
//! 5. query validation -> 400 InvalidQueryParameter;
//! 6. body validation -> 400 MalformedPOSTRequest;
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
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::error::ApiError;
pub use self::response::{json_response, text_response};
use self::routes::{Route, RouteId as R, OPENAPI};
pub use self::state::AppState;

/// Largest request body read (a retry body of thousands of entries fits).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

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
        if !given
            .map(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
            .unwrap_or(false)
        {
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
    let body = if method == Method::POST {
        read_body(req.into_body()).await?
    } else {
        Bytes::new()
    };
    run(state, route, body).await
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
        R::FailedList => ok(failed::list(state, &route).await?),
        R::FailedVersion => match route.version() {
            Some(v) => ok(failed::of_version(state, &v).await?),
            None => ok(failed::list(state, &route).await?),
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

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(_) => Err(ApiError::malformed_post("body too large or unreadable")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the API on `listener` until `shutdown` fires, then lets open requests finish.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            res = listener.accept() => match res {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let st = state.clone();
        let svc = service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(handle(st, peer, req).await) }
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tracker.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Connection ended with an error.");
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}
