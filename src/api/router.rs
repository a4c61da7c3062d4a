//! Route parsing and dispatch (reference sections 1.3 and 1.4). Matching is exact: a misspelt
//! service, type or site is a 404, never a guess.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};

use super::{health, json_response, ApiError, AppState};

/// A matched route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET healthcheck`.
    Healthcheck,
}

/// Strips the two accepted prefixes; `None` if the path has neither.
pub fn strip_prefix(path: &str) -> Option<&str> {
    path.strip_prefix("/_/backbeat/api/")
        .or_else(|| path.strip_prefix("/_/"))
}

/// Matches a request to a route.
///
/// # Errors
/// 404 RouteNotFound, 405 MethodNotAllowed or 400 InvalidQueryParameter, as the original.
pub fn parse(method: &Method, path: &str, _query: Option<&str>) -> Result<Route, ApiError> {
    let Some(route) = strip_prefix(path) else {
        return Err(ApiError::route_not_found(format!(
            "path {path} does not exist"
        )));
    };
    match route {
        "healthcheck" => {
            if method == Method::GET {
                Ok(Route::Healthcheck)
            } else {
                Err(ApiError::method_not_allowed())
            }
        }
        _ => Err(ApiError::route_not_found(format!(
            "path {route} does not exist"
        ))),
    }
}

/// Runs a matched route.
///
/// # Errors
/// The route's own errors.
pub async fn run(
    state: &Arc<AppState>,
    route: Route,
    _body: Bytes,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match route {
        Route::Healthcheck => match health::healthcheck(state).await {
            Ok(body) => Ok(json_response(StatusCode::OK, &body)),
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
    }
}
