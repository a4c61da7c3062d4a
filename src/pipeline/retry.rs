//! Bounded retries with exponential backoff and jitter (reference 3.5), classified by the
//! errors' [`Disposition`], never by message text.
//!
//! Delay before retry `n` (from 0): `min(min_ms * factor^n, max_ms)`, then +/- `jitter` of it
//! at random; a remote's `Retry-After` wins when it is longer. The loop gives up when the
//! attempts reach `max_retries`, or when `timeout_s` has passed and at least one retry was
//! made. A cancelled token ends the wait at once: the caller leaves the entry uncommitted so
//! it is replayed after the restart.
//!
//! A later issue adds whole-entry replays and pause on top of this loop.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::RetryConfig;
use crate::error::Disposition;

/// The retry policy of one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub max_attempts: u32,
    /// Total time after which no new retry starts (once one retry was made).
    pub timeout: Duration,
    /// First backoff.
    pub min: Duration,
    /// Largest backoff.
    pub max: Duration,
    /// Backoff growth factor.
    pub factor: f64,
    /// Random fraction added to or removed from each backoff.
    pub jitter: f64,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        RetryPolicy {
            max_attempts: c.max_retries.max(1),
            timeout: Duration::from_secs(c.timeout_s),
            min: Duration::from_millis(c.backoff_min_ms),
            max: Duration::from_millis(c.backoff_max_ms.max(c.backoff_min_ms)),
            factor: if c.factor.is_finite() && c.factor >= 1.0 {
                c.factor
            } else {
                1.0
            },
            jitter: if c.jitter.is_finite() {
                c.jitter.clamp(0.0, 1.0)
            } else {
                0.0
            },
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `n` (0 for the first retry), without jitter.
    pub fn base_delay(&self, n: u32) -> Duration {
        let min = self.min.as_secs_f64();
        let d = (min * self.factor.powi(n.min(1000) as i32)).min(self.max.as_secs_f64());
        Duration::from_secs_f64(d.max(0.0))
    }

    /// The delay before retry number `n`, jittered.
    pub fn delay(&self, n: u32) -> Duration {
        let base = self.base_delay(n).as_secs_f64();
        let j = if self.jitter > 0.0 {
            rand::thread_rng().gen_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64((base * (1.0 + j)).max(0.0))
    }
}

/// How a retried operation ended.
#[derive(Debug)]
pub enum Retried<T, E> {
    /// It succeeded.
    Done(T),
    /// It failed permanently, or ran out of attempts or time; the last error.
    Failed {
        /// The last error.
        error: E,
        /// Attempts made.
        attempts: u32,
    },
    /// The stage is stopping; the operation was not finished.
    Cancelled,
}

/// Runs `op` until it succeeds, fails permanently, or the policy gives up. `classify` says
/// whether an error may be retried.
pub async fn retry<T, E, F, Fut, C>(
    policy: &RetryPolicy,
    token: &CancellationToken,
    classify: C,
    mut op: F,
) -> Retried<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Fn(&E) -> Disposition,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        let result = op(attempt).await;
        attempt += 1;
        let error = match result {
            Ok(v) => return Retried::Done(v),
            Err(e) => e,
        };
        let after = match classify(&error) {
            Disposition::Fail => {
                return Retried::Failed {
                    error,
                    attempts: attempt,
                }
            }
            Disposition::Retry { after } => after,
        };
        if attempt >= policy.max_attempts || (attempt > 1 && started.elapsed() >= policy.timeout) {
            return Retried::Failed {
                error,
                attempts: attempt,
            };
        }
        let mut delay = policy.delay(attempt - 1);
        if let Some(a) = after {
            delay = delay.max(a);
        }
        tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, error = %error, "Attempt failed; will retry.");
        tokio::select! {
            biased;
            () = token.cancelled() => return Retried::Cancelled,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            timeout: Duration::from_secs(60),
            min: Duration::from_millis(10),
            max: Duration::from_millis(25),
            factor: 2.0,
            jitter: 0.0,
        }
    }

    #[test]
    fn backoff_grows_then_caps() {
        let p = policy();
        assert_eq!(p.base_delay(0), Duration::from_millis(10));
        assert_eq!(p.base_delay(1), Duration::from_millis(20));
        assert_eq!(p.base_delay(2), Duration::from_millis(25));
        assert_eq!(p.base_delay(50), Duration::from_millis(25));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_retry_until_the_limit() {
        let token = CancellationToken::new();
        let out: Retried<(), String> = retry(
            &policy(),
            &token,
            |_| Disposition::Retry { after: None },
            |_| async { Err("boom".to_string()) },
        )
        .await;
        assert!(matches!(out, Retried::Failed { attempts: 4, .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_fail_at_once_and_success_stops() {
        let token = CancellationToken::new();
        let out: Retried<(), String> = retry(
            &policy(),
            &token,
            |_| Disposition::Fail,
            |_| async { Err("no".to_string()) },
        )
        .await;
        assert!(matches!(out, Retried::Failed { attempts: 1, .. }));
        let out: Retried<u32, String> = retry(
            &policy(),
            &token,
            |_| Disposition::Retry { after: None },
            |n| async move {
                if n < 2 {
                    Err("again".to_string())
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert!(matches!(out, Retried::Done(2)));
    }

    #[tokio::test]
    async fn cancellation_ends_the_wait() {
        let token = CancellationToken::new();
        token.cancel();
        let out: Retried<(), String> = retry(
            &policy(),
            &token,
            |_| Disposition::Retry { after: None },
            |_| async { Err("boom".to_string()) },
        )
        .await;
        assert!(matches!(out, Retried::Cancelled));
    }
}
