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
//! Modules: [`router`] (the route table, matching, dispatch; its rows are the OpenAPI
//! document's operations, `openapi.json`), [`health`], [`metrics`] (JSON metrics),
//! [`failed`] (failed CRR list/get/retry), [`pause`] (pause/resume/schedule/status, through
//! [`Control`]), [`object`] (our version view and S3 notification intake), [`monitoring`]
//! (Prometheus text), [`error`].

pub mod error;
pub mod failed;
pub mod health;
pub mod metrics;
pub mod monitoring;
pub mod object;
pub mod pause;
pub mod router;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

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

pub use self::error::{json_response, ApiError};
use crate::config::Config;
use crate::control::Control;
use crate::durability::Durability;
use crate::intake::Intake;
use crate::log::Log;
use crate::store::StateStore;

/// Largest request body read (a retry body of thousands of entries fits).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// What every handler can reach.
pub struct AppState {
    /// The durable log.
    pub log: Arc<dyn Log>,
    /// The state store.
    pub store: Arc<dyn StateStore>,
    /// The configuration.
    pub config: Arc<Config>,
    /// Durability mode of the log.
    pub durability: Durability,
    /// Names of the configured CRR sites, in configuration order.
    pub sites: Vec<String>,
    /// Client networks allowed.
    pub allow: Vec<ipnet::IpNet>,
    /// Bearer token, when required.
    pub token: Option<String>,
    /// When the API started.
    pub started: Instant,
    /// The per-site pause channels.
    pub control: Arc<Control>,
    /// Where `POST notifications/s3` hands discovered versions; `None` without a source.
    pub intake: Option<Arc<dyn Intake>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("sites", &self.sites)
            .finish()
    }
}

impl AppState {
    /// Builds the API state from the configuration and the opened log and store.
    pub fn new(
        config: Arc<Config>,
        log: Arc<dyn Log>,
        store: Arc<dyn StateStore>,
        control: Arc<Control>,
    ) -> AppState {
        let allow = config
            .server
            .allow_from
            .iter()
            .filter_map(|s| crate::config::parse_net(s))
            .collect();
        AppState {
            durability: config.storage.durability,
            sites: config.sites.iter().map(|s| s.name.clone()).collect(),
            token: config.api_token(),
            allow,
            log,
            store,
            config,
            started: Instant::now(),
            control,
            intake: None,
        }
    }

    /// Sets the intake of S3 event notifications.
    pub fn with_intake(mut self, intake: Arc<dyn Intake>) -> AppState {
        self.intake = Some(intake);
        self
    }

    /// Per-site consumer state for the healthcheck: the lag of each site's consumer group.
    pub async fn consumers_health(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for site in &self.sites {
            let group = crate::log::replication_group(site);
            let v = match self.log.lag(crate::log::TOPIC_REPLICATION, &group).await {
                Ok(lags) => {
                    let lag: u64 = lags.iter().map(|l| l.lag).sum();
                    serde_json::json!({"group": group, "status": "ok", "lag": lag})
                }
                Err(e) => {
                    serde_json::json!({"group": group, "status": "error", "error": e.to_string()})
                }
            };
            out.insert(site.clone(), v);
        }
        serde_json::Value::Object(out)
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.allow.iter().any(|n| n.contains(&ip))
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
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110: a 405 lists the methods the resource supports.
        let allow = router::allowed_methods(&path).join(", ");
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
    let head_served = || router::allowed_methods(req.uri().path()).contains(&"HEAD");
    let allowed = match method {
        Method::GET | Method::POST | Method::DELETE => true,
        Method::HEAD => head_served(),
        _ => false,
    };
    if !allowed {
        return Err(ApiError::method_not_allowed());
    }
    let uri = req.uri().clone();
    let route = router::parse(&method, uri.path(), uri.query(), &state.sites)?;
    let body = if method == Method::POST {
        read_body(req.into_body()).await?
    } else {
        Bytes::new()
    };
    router::run(state, route, body).await
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

/// A plain-text response (Prometheus exposition).
pub fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    resp
}
