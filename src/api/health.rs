//! `GET healthcheck`: the original's shape (reference section 1.5) over our own log and store.
//!
//! ```json
//! {"topics": {"backbeat-replication": {"name": "...", "partitions": [{"id": 0, "leader": 0,
//!   "replicas": [0], "isrs": [0]}]}},
//!  "internalConnections": {"isrHealth": "ok", "zookeeper": {...}, "kafkaProducer": {...}},
//!  "log": {...}, "store": {...}, "consumers": {...},
//!  "sites": {"<site>": {"state": "ok" | "behind" | "paused" | "failing" | "stalled",
//!                       "lastError": {"at": "...", "message": "..."}}}}
//! ```
//! `topics` holds the CRR topic only, as the original's (reference 1.5), and `isrHealth` is
//! about its partitions; every topic of the log is listed under `log.topics`. Our log has one
//! replica per partition (this node), so a partition's leader, replicas and
//! in-sync replicas are all node 0 while the log accepts writes. `zookeeper` reports the state
//! store (the original's ZooKeeper role), `kafkaProducer` the log. Any unusable part answers
//! 500 InternalError, once, with the same details.
//!
//! `sites` tells each site's state (DESIGN section 5, [`status::site_state`]) and, for a
//! failing or stalled one, its last error. A paused, failing or stalled site does not make the
//! engine unhealthy: the answer stays 200 as the original's while the log and the store work,
//! so a load balancer never takes the API away from the operator who has to act.
//!
//! An outage of the state store or the log (issue 14) does make it unhealthy (500, with
//! `store.status` or `kafkaProducer.status` "error") while the pipeline waits and retries; the
//! process stays up and the answer is 200 again once the dependency is back.

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::state::AppState;
use super::status;
use crate::clock::iso8601_ms;
use crate::log::TOPIC_REPLICATION;
use crate::observe::SiteState;

/// How long the healthcheck waits for the state store's answer before calling it unusable.
const STORE_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Builds the healthcheck body and whether everything is healthy.
pub async fn healthcheck(state: &AppState) -> Result<Value, (ApiError, Value)> {
    let log_ok = state.log.check().is_ok();
    // The probe is bounded: an unreachable MongoDB answers only after its server selection
    // timeout (30 s by default), and a healthcheck must answer before a load balancer gives up.
    let store_ok = state.store.check().is_ok()
        && matches!(
            tokio::time::timeout(STORE_PROBE_TIMEOUT, state.store.cursor("\u{1}probe")).await,
            Ok(Ok(_))
        );
    let topics_res = state.log.topics().await;
    let mut topics = Map::new();
    let mut all_isr = true;
    let mut topic_list = Vec::new();
    match &topics_res {
        Ok(list) => {
            for t in list {
                topic_list.push(json!({"name": t.name, "partitions": t.partitions}));
                if t.name != TOPIC_REPLICATION {
                    continue;
                }
                let isrs: Vec<u32> = if log_ok { vec![0] } else { vec![] };
                if isrs.is_empty() {
                    all_isr = false;
                }
                let partitions: Vec<Value> = (0..t.partitions)
                    .map(|id| json!({"id": id, "leader": 0, "replicas": [0], "isrs": isrs}))
                    .collect();
                topics.insert(
                    t.name.clone(),
                    json!({"name": t.name, "partitions": partitions}),
                );
            }
        }
        Err(_) => all_isr = false,
    }
    let zk = if store_ok {
        json!({"status": "ok", "details": {"name": "SYNC_CONNECTED", "code": 3}})
    } else {
        json!({"status": "error", "details": {"name": "DISCONNECTED", "code": 0}})
    };
    let producer = if log_ok {
        json!({"status": "ok"})
    } else {
        json!({"status": "error"})
    };
    let mut conns = Map::new();
    if !topics.is_empty() {
        conns.insert(
            "isrHealth".into(),
            Value::from(if all_isr { "ok" } else { "error" }),
        );
    }
    conns.insert("zookeeper".into(), zk);
    conns.insert("kafkaProducer".into(), producer);
    let consumers = state.consumers_health().await;
    let mut sites = Map::new();
    for site in &state.sites {
        let ops = state.store.pending(site).await.map_or(0, |(ops, _)| ops);
        let st = status::site_state(state, site, ops);
        let mut v = Map::new();
        v.insert("state".into(), Value::from(st.as_str()));
        if matches!(st, SiteState::Failing | SiteState::Stalled) {
            let last = state.observer.view(site).and_then(|v| v.last_error);
            v.insert(
                "lastError".into(),
                last.map_or(
                    Value::Null,
                    |e| json!({"at": iso8601_ms(e.at_ms), "message": e.message}),
                ),
            );
        }
        sites.insert(site.clone(), Value::Object(v));
    }
    let body = json!({
        "topics": topics,
        "internalConnections": conns,
        "log": {"kind": state.log.kind(), "durability": state.durability.as_str(), "topics": topic_list},
        "store": {"kind": state.store.kind(), "status": if store_ok { "ok" } else { "error" }},
        "consumers": consumers,
        "sites": sites,
    });
    if log_ok && store_ok && topics_res.is_ok() && all_isr {
        Ok(body)
    } else {
        let what = match (log_ok && topics_res.is_ok(), store_ok) {
            (false, false) => "log and state store unusable",
            (false, true) => "log unusable",
            (true, false) => "state store unusable",
            (true, true) => "a log partition has no in-sync replica",
        };
        Err((
            ApiError::internal(format!("error connecting to internal client: {what}")),
            body,
        ))
    }
}
