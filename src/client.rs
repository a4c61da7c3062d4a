//! A client of the running engine's REST API, for the commands that ask it (`backbeat status`,
//! `backbeat verify --repair`): the address from `[server]` (a wildcard bind address is asked
//! on loopback), the configured bearer token, bounded waits, and errors an operator can act
//! on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::Config;

/// How long a request waits for the API.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The API's base URL from `[server]`.
pub fn api_base(cfg: &Config) -> String {
    let host = match cfg.server.host.as_str() {
        "0.0.0.0" => "127.0.0.1".to_string(),
        "::" | "[::]" => "[::1]".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    };
    format!("http://{host}:{}", cfg.server.port)
}

/// A client of one engine's API.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    /// A client of the API `cfg` describes.
    pub fn new(cfg: &Config) -> ApiClient {
        ApiClient {
            base: api_base(cfg),
            token: cfg.api_token(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The URL of `route` (relative to `/_/backbeat/api/`).
    pub fn url(&self, route: &str) -> String {
        format!("{}/_/backbeat/api/{route}", self.base)
    }

    /// `GET route`: the body of a 2xx answer.
    ///
    /// # Errors
    /// A message naming the URL: unreachable, no answer in time, or the API's error.
    pub async fn get(&self, route: &str) -> Result<Bytes, String> {
        self.call(hyper::Method::GET, route, Bytes::new()).await
    }

    /// `POST route` with a JSON body: the body of a 2xx answer.
    ///
    /// # Errors
    /// As [`ApiClient::get`].
    pub async fn post_json(&self, route: &str, body: &serde_json::Value) -> Result<Bytes, String> {
        self.call(hyper::Method::POST, route, Bytes::from(body.to_string()))
            .await
    }

    async fn call(&self, method: hyper::Method, route: &str, body: Bytes) -> Result<Bytes, String> {
        let url = self.url(route);
        let mut req = hyper::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("bad API address {url}: {e}"))?;
        let unreachable = |e: &dyn std::fmt::Display| {
            format!("cannot reach the engine's API at {url} (is `backbeat serve` running?): {e}")
        };
        let resp = match tokio::time::timeout(TIMEOUT, self.http.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(unreachable(&crate::error::chain(&e))),
            Err(_) => return Err(unreachable(&"no answer within 10 s")),
        };
        let code = resp.status();
        let body = match tokio::time::timeout(TIMEOUT, resp.into_body().collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable(&"no answer within 10 s")),
        };
        if !code.is_success() {
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["description"].as_str().map(str::to_string))
                .unwrap_or_default();
            let hint = match code.as_u16() {
                401 => " (set [server] token or token_env as the engine has it)",
                403 => " (this address is outside the engine's [server] allow_from)",
                _ => "",
            };
            return Err(format!("the API at {url} answered {code}: {detail}{hint}"));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_asked_on_loopback() {
        let mut cfg = Config::default();
        for (host, want) in [
            ("0.0.0.0", "http://127.0.0.1:8900"),
            ("::", "http://[::1]:8900"),
            ("::1", "http://[::1]:8900"),
            ("10.1.2.3", "http://10.1.2.3:8900"),
        ] {
            cfg.server.host = host.to_string();
            cfg.server.port = 8900;
            assert_eq!(api_base(&cfg), want);
        }
    }
}
