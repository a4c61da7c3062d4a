//! `[server]`: where the REST API listens, who may call it, its optional bearer token, and
//! the bounds that make it safe to expose (header and body deadlines, connections at once).

use std::net::IpAddr;

use serde::Deserialize;

use super::defaults;
use super::fields::deserialize;
use super::secret::{resolve_secret, Secret};

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind.
    #[serde(default = "defaults::host")]
    pub host: String,
    /// Port to bind (0 picks a free one).
    #[serde(default = "defaults::port")]
    pub port: u16,
    /// Client networks allowed to call the API (CIDR or single address).
    #[serde(default = "defaults::allow_from")]
    pub allow_from: Vec<String>,
    /// Bearer token required on every API request, inline.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Environment variable holding the bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Seconds a client has to send a request's headers (an idle keep-alive connection is
    /// closed after as long), and again, from the end of its headers, its whole body.
    #[serde(default = "defaults::header_timeout_s")]
    pub header_timeout_s: u64,
    /// Connections served at once; one more is answered 503 ServiceUnavailable and closed.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: defaults::host(),
            port: defaults::port(),
            allow_from: defaults::allow_from(),
            token: None,
            token_env: None,
            header_timeout_s: defaults::header_timeout_s(),
            max_connections: defaults::max_connections(),
        }
    }
}

impl ServerConfig {
    /// The bearer token required by the API, if configured (and readable).
    pub fn token(&self) -> Option<String> {
        let mut ignored = Vec::new();
        resolve_secret(
            "server.token",
            &self.token,
            &self.token_env,
            false,
            &mut ignored,
        )
    }
}

/// Largest `max_connections`: far above what one process's file descriptors allow anyway.
const MAX_CONNECTIONS: usize = 1_000_000;

/// Reads and checks `[server]`.
pub(super) fn read(value: toml::Value, e: &mut Vec<String>) -> Option<ServerConfig> {
    let s: ServerConfig = deserialize("server", value, e)?;
    if s.host.trim().is_empty() {
        e.push("server.host: must not be empty".into());
    } else if s.host.parse::<IpAddr>().is_err()
        && !s
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        e.push(format!(
            "server.host: {:?} is neither an IP address nor a host name",
            s.host
        ));
    }
    for (i, net) in s.allow_from.iter().enumerate() {
        if parse_net(net).is_none() {
            e.push(format!(
                "server.allow_from[{i}]: {net:?} is not a CIDR or IP address"
            ));
        }
    }
    if !(1..=3600).contains(&s.header_timeout_s) {
        e.push(format!(
            "server.header_timeout_s: {} must be between 1 and 3600",
            s.header_timeout_s
        ));
    }
    if !(1..=MAX_CONNECTIONS).contains(&s.max_connections) {
        e.push(format!(
            "server.max_connections: {} must be between 1 and {MAX_CONNECTIONS}",
            s.max_connections
        ));
    }
    if s.token.is_some() || s.token_env.is_some() {
        resolve_secret("server.token", &s.token, &s.token_env, false, e);
    }
    Some(s)
}

/// Parses a CIDR (`127.0.0.1/8`) or a single address (`::1`).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Some(n);
    }
    s.parse::<IpAddr>().ok().map(ipnet::IpNet::from)
}
