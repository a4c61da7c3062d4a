//! API errors in the original's format: `{"code": N, "description": "...", "<ErrorName>": true}`,
//! and how a state store failure becomes one (a 500).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::response::json_response;
use crate::store::StoreError;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The arsenal error name (`RouteNotFound`, ...).
    pub name: &'static str,
    /// Human-readable description.
    pub description: String,
}

impl ApiError {
    fn new(status: StatusCode, name: &'static str, description: impl Into<String>) -> Self {
        ApiError {
            status,
            name,
            description: description.into(),
        }
    }

    /// 403 AccessDenied.
    pub fn access_denied(description: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "AccessDenied", description)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        )
    }

    /// 404 RouteNotFound.
    pub fn route_not_found(description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "RouteNotFound", description)
    }

    /// 400 InvalidQueryParameter.
    pub fn invalid_query(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidQueryParameter",
            description,
        )
    }

    /// 400 MalformedPOSTRequest, with the original's description prefix.
    pub fn malformed_post(detail: impl AsRef<str>) -> Self {
        let detail = detail.as_ref();
        let description = if detail.is_empty() {
            "The body of your POST request is not well-formed multipart/form-data.".to_string()
        } else {
            format!("The body of your POST request is not well-formed: {detail}")
        };
        Self::new(StatusCode::BAD_REQUEST, "MalformedPOSTRequest", description)
    }

    /// 500 InternalError.
    pub fn internal(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            description,
        )
    }

    /// 401 with the original's `InvalidToken`-like name for a missing or wrong bearer token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "AccessDenied",
            "missing or invalid bearer token",
        )
    }

    /// 404 NoSuchKey: the version is unknown to the state store.
    pub fn no_such_key() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        )
    }

    /// 413 EntityTooLarge (S3's name): a request body over its route's limit, refused without
    /// reading it.
    pub fn entity_too_large(description: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "EntityTooLarge", description)
    }

    /// 408 RequestTimeout (S3's name): a request body that did not arrive in time.
    pub fn request_timeout(description: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "RequestTimeout", description)
    }

    /// 503 ServiceUnavailable.
    pub fn service_unavailable(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            description,
        )
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("code".into(), self.status.as_u16().into());
        m.insert("description".into(), self.description.clone().into());
        m.insert(self.name.into(), true.into());
        serde_json::Value::Object(m)
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        json_response(self.status, &self.body())
    }
}

/// A state store failure is the API's 500 (the original's answer when its internal clients
/// fail); logged here so that every handler's `?` leaves the same warning.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "State store request failed.");
        ApiError::internal(format!("error connecting to internal client: {e}"))
    }
}
