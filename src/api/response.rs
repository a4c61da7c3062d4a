//! The response builders every route answers with: JSON (error bodies and handler results) and
//! text (Prometheus exposition, the OpenAPI document), each with an explicit `Content-Length`.
//! It imports no other API module, so errors and handlers alike can build on it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};

/// A JSON response with `Content-Type: application/json` and an explicit length.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    json_bytes_response(status, Bytes::from(bytes))
}

/// A JSON response from bytes already serialized (a cached page).
pub fn json_bytes_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    resp
}

/// A text response of `content_type` (Prometheus exposition, the OpenAPI document).
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
