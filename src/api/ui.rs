//! The status page, `GET /_/backbeat/ui/` (DESIGN section 6): three static files compiled into
//! the binary with `include_str!` (`ui/index.html`, `ui/app.js`, `ui/style.css`), no CDN, no
//! build step. The page draws everything itself from the API: `GET status` every 3 s,
//! `GET status/history` for its charts, `GET crr/failed` for the failed list, and
//! `POST crr/pause|resume/<site>` and `POST crr/failed` for its buttons.
//!
//! Access: the page is under the API's client allow-list like every route. Its files hold no
//! data, so they are served without the bearer token (a browser cannot attach one to a page
//! load); every request the page makes for data carries the token the operator typed, kept in
//! the tab's `sessionStorage`, and is refused without it like any other API request.
//!
//! Only `GET` and `HEAD` are served (405 otherwise); `/_/backbeat/ui` redirects to
//! `/_/backbeat/ui/` so the page's relative links resolve; an unknown file is a 404.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Response, StatusCode};

use super::error::ApiError;

/// The page's path (assets are under it).
pub const PREFIX: &str = "/_/backbeat/ui/";

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The page's only sources: its own files and its own API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` belongs to the status page.
pub fn is_ui_path(path: &str) -> bool {
    path == PREFIX.trim_end_matches('/') || path.starts_with(PREFIX)
}

/// The methods the page's paths serve (for the `Allow` header of a 405).
pub const METHODS: &[&str] = &["GET", "HEAD"];

/// Answers a request for the page or one of its files.
///
/// # Errors
/// 405 MethodNotAllowed for a method other than GET or HEAD; 404 RouteNotFound for an unknown
/// file.
pub fn serve(method: &Method, path: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::method_not_allowed());
    }
    let Some(file) = path.strip_prefix(PREFIX) else {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
        resp.headers_mut()
            .insert(header::LOCATION, header::HeaderValue::from_static(PREFIX));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, header::HeaderValue::from(0));
        return Ok(resp);
    };
    let (body, content_type) = match file {
        "" | "index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => {
            return Err(ApiError::route_not_found(format!(
                "path {path} does not exist"
            )))
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(body.len()),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_served_and_nothing_else() {
        for (path, ct) in [
            ("/_/backbeat/ui/", "text/html; charset=utf-8"),
            ("/_/backbeat/ui/index.html", "text/html; charset=utf-8"),
            ("/_/backbeat/ui/app.js", "text/javascript; charset=utf-8"),
            ("/_/backbeat/ui/style.css", "text/css; charset=utf-8"),
        ] {
            assert!(is_ui_path(path));
            let r = serve(&Method::GET, path).unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[header::CONTENT_TYPE], ct);
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        let r = serve(&Method::GET, "/_/backbeat/ui").unwrap();
        assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(r.headers()[header::LOCATION], PREFIX);
        assert_eq!(
            serve(&Method::GET, "/_/backbeat/ui/../api/status")
                .unwrap_err()
                .status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            serve(&Method::POST, "/_/backbeat/ui/").unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert!(!is_ui_path("/_/backbeat/uix"));
        assert!(!is_ui_path("/_/backbeat/api/status"));
    }

    #[test]
    fn the_page_loads_its_own_files_only() {
        assert!(INDEX_HTML.contains("<script src=\"app.js\"></script>"));
        assert!(INDEX_HTML.contains("href=\"style.css\""));
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn"));
        }
        // Every API route the page calls exists.
        for route in [
            "'status'",
            "'status/history?hours='",
            "'crr/failed?sitename='",
            "'crr/'",
        ] {
            assert!(APP_JS.contains(route), "{route}");
        }
    }
}
