//! The state store contract (`tests/conformance/store.rs`) against `MongoStore` on a real
//! MongoDB replica set named by `BACKBEAT_TEST_MONGODB_URI` (e.g.
//! `mongodb://127.0.0.1:27017/?replicaSet=rs0`; transactions need a replica set). No MongoDB
//! server can be installed on the development machines: without the variable (read when the
//! tests are built, see build.rs) every test here is reported as *ignored*, with that reason,
//! never as passed.
//! Runs with `cargo test --features mongodb`.

#![cfg(feature = "mongodb")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::sync::Arc;

use backbeat::clock::SharedClock;
use backbeat::config::{MongoConfig, Secret};
use backbeat::store::{MongoStore, StateStore};
use conformance::store as suite;

/// An opener of a database of its own (reopened on the same database), or `None` after saying
/// that the test is skipped.
fn opener(test: &str) -> Option<suite::Opener> {
    let Ok(uri) = std::env::var("BACKBEAT_TEST_MONGODB_URI") else {
        eprintln!("{test}: skipped: BACKBEAT_TEST_MONGODB_URI not set");
        return None;
    };
    let database = format!("backbeat_test_{test}_{}", std::process::id());
    Some(Box::new(move |clock| {
        let config = MongoConfig {
            uri: Secret(uri.clone()),
            database: database.clone(),
        };
        Box::pin(async move {
            let clock: SharedClock = clock;
            Arc::new(
                MongoStore::open(&config, clock)
                    .await
                    .expect("open mongodb store"),
            ) as Arc<dyn StateStore>
        })
    }))
}

macro_rules! store_test {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(mongodb_test_uri),
            ignore = "skipped: BACKBEAT_TEST_MONGODB_URI not set"
        )]
        async fn $name() {
            let Some(open) = opener(stringify!($name)) else {
                return;
            };
            suite::$name(&open, "").await;
        }
    };
}

store_test!(key_changes_and_effects);
store_test!(retry_requeue_and_site_removal);
store_test!(newer_versions_take_over);
store_test!(pending_counters_balance);
store_test!(failed_paging_one_hour);
store_test!(failed_paging_24_hours);
store_test!(failed_set_membership);
store_test!(key_listings);
store_test!(key_children_listing);
store_test!(dir_summaries);
store_test!(namespace_claims);
store_test!(metrics_buckets);
store_test!(durable_state_and_locks);
store_test!(deleted_keys_expire);
store_test!(names_are_checked);
