//! The pause gate of a replication processor (reference 3.9, DESIGN section 5).
//!
//! The processor holds a receiver of its site's [`PauseState`] channel (see
//! [`crate::control::Control`]), which starts at the state stored before a restart and follows
//! every later pause, resume or scheduled resume (also those made through another process
//! sharing the store). Before a copy starts, [`PauseGate::wait`] waits while the site is
//! paused: a copy already started finishes, no new copy starts, and the entries waiting stay
//! uncommitted in the log (so the queue keeps growing durably and survives a restart). Once
//! the read-ahead is full the runner stops polling and keeps its consumer in its group
//! ([`crate::log::Consumer::keep_alive`]). The other sites have their own gates and consumer
//! groups.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::PauseState;

/// Whether the site's processor may start a copy.
#[derive(Debug, Clone)]
pub struct PauseGate {
    rx: Option<watch::Receiver<PauseState>>,
}

impl PauseGate {
    /// A gate following `rx`.
    pub fn new(rx: watch::Receiver<PauseState>) -> PauseGate {
        PauseGate { rx: Some(rx) }
    }

    /// A gate that is always open (no pause control).
    pub fn open() -> PauseGate {
        PauseGate { rx: None }
    }

    /// Whether the site is paused now.
    pub fn is_paused(&self) -> bool {
        self.rx.as_ref().is_some_and(|rx| rx.borrow().paused)
    }

    /// Waits until the site is not paused. Returns `false` when `token` was cancelled first
    /// (the caller leaves the entry uncommitted).
    pub async fn wait(&self, token: &CancellationToken) -> bool {
        let Some(rx) = &self.rx else {
            return !token.is_cancelled();
        };
        let mut rx = rx.clone();
        loop {
            if !rx.borrow_and_update().paused {
                return !token.is_cancelled();
            }
            tokio::select! {
                biased;
                () = token.cancelled() => return false,
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The registry is gone (shutdown): treat as not paused.
                        return !token.is_cancelled();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_while_paused_and_opens_on_resume() {
        let (tx, rx) = watch::channel(PauseState {
            paused: true,
            scheduled_resume_ms: None,
        });
        let gate = PauseGate::new(rx);
        let token = CancellationToken::new();
        assert!(gate.is_paused());
        let waiting = tokio::time::timeout(Duration::from_millis(50), gate.wait(&token)).await;
        assert!(waiting.is_err(), "a paused gate must not open");
        tx.send_replace(PauseState::default());
        let opened = tokio::time::timeout(Duration::from_secs(1), gate.wait(&token)).await;
        assert_eq!(opened.ok(), Some(true));
    }

    #[tokio::test]
    async fn cancellation_ends_the_wait() {
        let (_tx, rx) = watch::channel(PauseState {
            paused: true,
            scheduled_resume_ms: None,
        });
        let gate = PauseGate::new(rx);
        let token = CancellationToken::new();
        token.cancel();
        assert!(!gate.wait(&token).await);
        assert!(!PauseGate::open().is_paused());
    }
}
