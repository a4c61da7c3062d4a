//! The state store contract against the sled store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backbeat::clock::SharedClock;
use backbeat::durability::{Durability, SledDb};
use backbeat::store::{SledStore, StateStore};
use conformance::store as suite;

fn open_db(dir: &Path) -> SledDb {
    for _ in 0..100 {
        if let Ok(db) = SledDb::open(dir, Durability::Group, Duration::from_millis(20)) {
            return db;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cannot open sled in {}", dir.display());
}

fn opener(dir: PathBuf) -> suite::Opener {
    Box::new(move |clock| {
        let dir = dir.clone();
        Box::pin(async move {
            let clock: SharedClock = clock;
            Arc::new(SledStore::open(open_db(&dir), clock).expect("open store"))
                as Arc<dyn StateStore>
        })
    })
}

macro_rules! store_test {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().unwrap();
            suite::$name(&opener(dir.path().to_path_buf()), "").await;
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
