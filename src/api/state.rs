//! What every handler can reach: [`AppState`] (the log, the state store, the configuration,
//! the pause control, the bandwidth limits, the intake and the observer, the bearer token and
//! the request body budget), built once at start and shared by every request.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::bandwidth::{Bandwidths, LocalWeekClock};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::control::Control;
use crate::durability::Durability;
use crate::intake::Intake;
use crate::log::Log;
use crate::observe::{source_buckets, Observer, Thresholds};
use crate::store::StateStore;

/// Bytes of request bodies held in memory at once (16 of the largest, 1 MiB each).
pub const BODY_BUDGET: usize = 16 * 1024 * 1024;

/// The API's bearer token, kept only as its HMAC-SHA256 under a key drawn at start. A presented
/// token is compared by its own HMAC: two 32-byte tags (64 hex characters) compared in
/// constant time, so neither an early exit nor the comparison's time tells how long the token
/// is or how much of it matched.
pub struct BearerToken {
    key: [u8; 32],
    tag: String,
}

impl BearerToken {
    /// Keeps `token` as its tag.
    pub fn new(token: &str) -> BearerToken {
        let key: [u8; 32] = rand::random();
        let tag = hmac_hex(&key, token.as_bytes());
        BearerToken { key, tag }
    }

    /// Whether `given` is the token.
    pub fn matches(&self, given: &[u8]) -> bool {
        let tag = hmac_hex(&self.key, given);
        // Both tags are 64 bytes: every byte is compared, whatever differs.
        tag.len() == self.tag.len()
            && tag
                .bytes()
                .zip(self.tag.bytes())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }
}

/// HMAC-SHA256 in hex. aws-sigv4's `calculate_signature` is exactly that (a SigV4 signature is
/// an HMAC-SHA256 of the string to sign), so no crypto crate is added for it.
fn hmac_hex(key: &[u8; 32], data: &[u8]) -> String {
    aws_sigv4::sign::v4::calculate_signature(key, data)
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

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
    pub token: Option<BearerToken>,
    /// Bytes of request bodies that may be held at once, across every connection: a body
    /// takes its size (or its route's limit when it does not announce one) before it is read.
    pub bodies: Arc<Semaphore>,
    /// How long a request body has to arrive, from the end of its headers.
    pub body_timeout: Duration,
    /// When the API started.
    pub started: Instant,
    /// The per-site pause channels.
    pub control: Arc<Control>,
    /// The per-site bandwidth limits.
    pub bandwidth: Arc<Bandwidths>,
    /// Where `POST notifications/s3` hands discovered versions; `None` without a source.
    pub intake: Option<Arc<dyn Intake>>,
    /// What the pipeline reported (attempts, reasons, lag, scans): `GET status` and friends.
    pub observer: Arc<Observer>,
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
        let sites: Vec<String> = config.sites.iter().map(|s| s.name.clone()).collect();
        let bandwidth = Arc::new(Bandwidths::new(
            config
                .sites
                .iter()
                .map(|s| (s.name.clone(), s.bandwidth.clone())),
            Arc::new(LocalWeekClock::default()),
        ));
        let observer = Observer::new(
            &sites,
            &source_buckets(&config),
            Thresholds::default(),
            Arc::new(SystemClock),
        );
        AppState {
            durability: config.storage.durability,
            sites,
            token: config.api_token().as_deref().map(BearerToken::new),
            bodies: Arc::new(Semaphore::new(BODY_BUDGET)),
            body_timeout: Duration::from_secs(config.server.header_timeout_s),
            allow,
            log,
            store,
            config,
            started: Instant::now(),
            control,
            bandwidth,
            intake: None,
            observer,
        }
    }

    /// Sets the observer the pipeline feeds (the engine's; `new` makes an unfed one).
    pub fn with_observer(mut self, observer: Arc<Observer>) -> AppState {
        self.observer = observer;
        self
    }

    /// Sets the bandwidth limits the processors follow (the engine's; `new` makes its own from
    /// the configuration).
    pub fn with_bandwidth(mut self, bandwidth: Arc<Bandwidths>) -> AppState {
        self.bandwidth = bandwidth;
        self
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

    /// Whether a client at `ip` is inside the allow-list (IPv4-mapped IPv6 read as IPv4).
    pub(super) fn allowed(&self, ip: IpAddr) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_kept_as_a_fixed_size_tag_and_only_the_token_matches() {
        for token in ["s", "s3cret", &"x".repeat(500)] {
            let t = BearerToken::new(token);
            // Nothing of the token's length is kept: a 64-character tag whatever it is.
            assert_eq!(t.tag.len(), 64);
            assert!(!t.tag.contains(token));
            assert!(t.matches(token.as_bytes()));
            let mut longer = token.to_string();
            longer.push('x');
            for wrong in [
                "",
                &token[..token.len() - 1],
                longer.as_str(),
                &token.to_ascii_uppercase(),
            ] {
                assert!(!t.matches(wrong.as_bytes()), "{wrong:?} for {token:?}");
            }
            assert_eq!(format!("{t:?}"), "BearerToken(<redacted>)");
        }
        // Each start draws its own key.
        assert_ne!(
            BearerToken::new("s3cret").tag,
            BearerToken::new("s3cret").tag
        );
    }
}
