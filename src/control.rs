//! Pause and resume of the CRR sites: the in-process successor of the original's Redis pub/sub
//! channels `backbeat-replication-<site>` (reference 3.9).
//!
//! The state store holds the truth (`pause_state("crr", site)`, durable); [`Control`] mirrors it
//! in one `tokio::sync::watch` channel per site so the replication processors react at once.
//! Every change goes store first, then channel: a writer calls [`Control::update`], which holds
//! the registry's write lock across read-modify-write-publish, so the API and the scheduler
//! never interleave their updates.
//!
//! [`run_scheduler`] reads every site's stored state at start and then every `SCHEDULER_TICK`:
//! - it fires scheduled resumes (a schedule set before a restart still fires; one already past
//!   fires at once), against the store's clock (so a `ManualClock` drives it in tests);
//! - it publishes a stored state that differs from the channel's: with a store shared by
//!   several processes (MongoDB), a pause or resume made through another process's API
//!   reaches this process's processors within a tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{PauseState, StateStore, StoreError};

/// The service name under which CRR pause states are stored.
pub const CRR_SERVICE: &str = "crr";

/// How often the scheduler looks for due resumes.
pub const SCHEDULER_TICK: Duration = Duration::from_millis(250);

/// The per-site pause channels.
#[derive(Debug, Default)]
pub struct Control {
    channels: Mutex<HashMap<String, watch::Sender<PauseState>>>,
    write: tokio::sync::Mutex<()>,
}

impl Control {
    /// An empty registry (every site starts not paused until loaded or published).
    pub fn new() -> Control {
        Control::default()
    }

    /// A registry whose channels start at the stored state of each site.
    ///
    /// # Errors
    /// The store's error when a state cannot be read.
    pub async fn load(store: &dyn StateStore, sites: &[String]) -> Result<Control, StoreError> {
        let control = Control::new();
        for site in sites {
            let state = store
                .pause_state(CRR_SERVICE, site)
                .await?
                .unwrap_or_default();
            control.publish(site, state);
        }
        Ok(control)
    }

    /// A receiver of `site`'s pause state, starting at its current value.
    pub fn subscribe(&self, site: &str) -> watch::Receiver<PauseState> {
        let mut map = self.channels.lock();
        map.entry(site.to_string())
            .or_insert_with(|| watch::channel(PauseState::default()).0)
            .subscribe()
    }

    /// Publishes `site`'s new state to its subscribers.
    pub fn publish(&self, site: &str, state: PauseState) {
        let mut map = self.channels.lock();
        match map.get(site) {
            Some(tx) => {
                tx.send_replace(state);
            }
            None => {
                map.insert(site.to_string(), watch::channel(state).0);
            }
        }
    }

    /// The last published state of `site`.
    pub fn current(&self, site: &str) -> PauseState {
        self.channels
            .lock()
            .get(site)
            .map(|tx| *tx.borrow())
            .unwrap_or_default()
    }

    /// Reads `site`'s stored state, applies `change`, writes it back (durable) and publishes
    /// it, all under the registry's write lock. Returns the new state.
    ///
    /// # Errors
    /// The store's error; nothing is published then.
    pub async fn update(
        &self,
        store: &dyn StateStore,
        site: &str,
        change: impl FnOnce(PauseState) -> PauseState,
    ) -> Result<PauseState, StoreError> {
        let _guard = self.write.lock().await;
        let old = store
            .pause_state(CRR_SERVICE, site)
            .await?
            .unwrap_or_default();
        let new = change(old);
        store.set_pause_state(CRR_SERVICE, site, new).await?;
        self.publish(site, new);
        if old != new {
            tracing::info!(site, paused = new.paused, scheduled_resume_ms = ?new.scheduled_resume_ms,
                "Pause state changed.");
        }
        Ok(new)
    }

    /// Publishes `site`'s stored state if it differs from the channel's (another process
    /// changed it), under the registry's write lock so it cannot undo a local update. Returns
    /// whether the channel changed.
    ///
    /// # Errors
    /// The store's error; nothing is published then.
    pub async fn refresh(&self, store: &dyn StateStore, site: &str) -> Result<bool, StoreError> {
        let _guard = self.write.lock().await;
        let stored = store
            .pause_state(CRR_SERVICE, site)
            .await?
            .unwrap_or_default();
        if stored == self.current(site) {
            return Ok(false);
        }
        self.publish(site, stored);
        tracing::info!(site, paused = stored.paused, scheduled_resume_ms = ?stored.scheduled_resume_ms,
            "Pause state changed in the store; applied.");
        Ok(true)
    }
}

/// Fires the scheduled resumes of `sites`, and publishes the states other processes stored,
/// until `token` is cancelled.
pub async fn run_scheduler(
    store: Arc<dyn StateStore>,
    control: Arc<Control>,
    sites: Vec<String>,
    token: CancellationToken,
) {
    loop {
        sync_pass(store.as_ref(), &control, &sites).await;
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(SCHEDULER_TICK) => {}
        }
    }
}

/// One pass: resumes every site whose scheduled resume is due, and publishes every stored
/// state that differs from its channel's.
async fn sync_pass(store: &dyn StateStore, control: &Control, sites: &[String]) {
    let now = store.now_ms();
    for site in sites {
        let stored = match store.pause_state(CRR_SERVICE, site).await {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(site, error = %e, "Cannot read the pause state; will retry.");
                continue;
            }
        };
        let due = stored.scheduled_resume_ms.is_some_and(|at| at <= now);
        if !due {
            // Store first, lock only when needed: most passes change nothing.
            if stored != control.current(site) {
                if let Err(e) = control.refresh(store, site).await {
                    tracing::warn!(site, error = %e, "Cannot apply the stored pause state; will retry.");
                }
            }
            continue;
        }
        // Re-checked under the write lock: a manual pause or resume may have come in between.
        let res = control
            .update(store, site, |s| match s.scheduled_resume_ms {
                Some(at) if at <= now => PauseState {
                    paused: false,
                    scheduled_resume_ms: None,
                },
                _ => s,
            })
            .await;
        match res {
            Ok(_) => tracing::info!(site, "Scheduled resume fired."),
            Err(e) => tracing::warn!(site, error = %e, "Scheduled resume failed; will retry."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::durability::{Durability, SledDb};
    use crate::store::SledStore;

    #[test]
    fn subscribers_see_published_states() {
        let control = Control::new();
        let mut early = control.subscribe("s1");
        assert!(!early.borrow().paused);
        let paused = PauseState {
            paused: true,
            scheduled_resume_ms: Some(5),
        };
        control.publish("s1", paused);
        assert!(early.has_changed().unwrap());
        assert_eq!(*early.borrow_and_update(), paused);
        assert_eq!(*control.subscribe("s1").borrow(), paused);
        assert_eq!(control.current("s1"), paused);
        assert_eq!(control.current("s2"), PauseState::default());
    }

    #[tokio::test]
    async fn scheduler_pass_publishes_states_stored_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledDb::open(dir.path(), Durability::Group, Duration::from_millis(20)).unwrap();
        let store = SledStore::open(db, ManualClock::new(1_000)).unwrap();
        let sites = vec!["s1".to_string(), "s2".to_string()];
        let control = Control::load(&store, &sites).await.unwrap();
        let mut rx = control.subscribe("s1");
        assert!(!rx.borrow_and_update().paused);

        // Another process paused s1 through its API: only the shared store knows.
        let paused = PauseState {
            paused: true,
            scheduled_resume_ms: Some(60_000),
        };
        store
            .set_pause_state(CRR_SERVICE, "s1", paused)
            .await
            .unwrap();
        sync_pass(&store, &control, &sites).await;
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), paused);
        assert_eq!(control.current("s2"), PauseState::default());
        sync_pass(&store, &control, &sites).await;
        assert!(
            !rx.has_changed().unwrap(),
            "an unchanged state is not published again"
        );

        // ... and resumed it.
        store
            .set_pause_state(CRR_SERVICE, "s1", PauseState::default())
            .await
            .unwrap();
        sync_pass(&store, &control, &sites).await;
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), PauseState::default());
    }
}
