//! What every handler can reach: [`AppState`] (the log, the state store, the configuration,
//! the pause control, the bandwidth limits, the intake and the observer), built once at start
//! and shared by every request.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::bandwidth::{Bandwidths, LocalWeekClock};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::control::Control;
use crate::durability::Durability;
use crate::intake::Intake;
use crate::log::Log;
use crate::observe::{source_buckets, Observer, Thresholds};
use crate::store::StateStore;

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
            token: config.api_token(),
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
