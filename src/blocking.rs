//! Blocking calls made together: [`BlockingQueue`] runs short blocking jobs one after the
//! other on a few threads of tokio's blocking pool, so that jobs asked at about the same time
//! share one hand-off.
//!
//! A hand-off to the blocking pool costs two thread wake-ups (a pool thread, then the waiting
//! task), more than opening and reading a small cached file. So jobs are queued, and a
//! *drain* (one blocking-pool call) takes them one after the other until the queue is empty:
//! a job asked while a drain runs costs no hand-off of its own. The file source's opens for
//! copies go through one (issue 17: about one wake-up less per object).
//!
//! - Several jobs still run at once when many wait (a cold disk serves several reads in
//!   flight): another drain starts while more than [`PER_DRAIN`] jobs wait for each running
//!   drain, up to twice the machine's cores, and at least [`MIN_DRAINS`] (a job may also
//!   write, as a small file -> file copy does: a larger machine runs more of them at once).
//! - Never stuck behind one slow job: a job still waiting after [`STUCK`], with no drain
//!   having taken a job meanwhile, starts another drain, whatever their number.
//! - A job that panics loses only its own answer ([`JobLost`]); the queue goes on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Jobs waiting per running drain before another one starts.
const PER_DRAIN: usize = 2;
/// The least number of drains allowed at once (unless they are stuck), on any machine.
const MIN_DRAINS: usize = 4;
/// How long a job waits, with no drain taking any job, before it starts another drain.
const STUCK: Duration = Duration::from_millis(20);

type Job = Box<dyn FnOnce() + Send>;

/// The job ended without an answer (it panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the blocking job failed")]
pub struct JobLost;

struct State {
    queue: VecDeque<Job>,
    /// Drains running.
    drains: usize,
    /// When a drain last took a job (or started).
    progress: Instant,
}

/// A queue of blocking jobs (see the module documentation).
pub struct BlockingQueue {
    state: Mutex<State>,
    /// Drains at once, unless they are stuck.
    max_drains: usize,
}

impl std::fmt::Debug for BlockingQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingQueue").finish_non_exhaustive()
    }
}

impl Default for BlockingQueue {
    fn default() -> Self {
        BlockingQueue::new()
    }
}

impl BlockingQueue {
    /// An empty queue.
    pub fn new() -> BlockingQueue {
        BlockingQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                drains: 0,
                progress: Instant::now(),
            }),
            max_drains: std::thread::available_parallelism()
                .map_or(MIN_DRAINS, |n| n.get().saturating_mul(2))
                .max(MIN_DRAINS),
        }
    }

    /// Runs `job` in a drain and returns its answer. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`JobLost`] if the job panicked.
    pub async fn run<T, F>(self: &Arc<Self>, job: F) -> Result<T, JobLost>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, mut rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The asker may have gone (its task was stopped): nothing to answer then.
            let _ = tx.send(job());
        });
        let start = {
            let mut st = self.state.lock();
            st.queue.push_back(job);
            let start = st.drains == 0
                || (st.drains < self.max_drains && st.queue.len() > st.drains * PER_DRAIN);
            if start {
                st.drains += 1;
                st.progress = Instant::now();
            }
            start
        };
        if start {
            self.spawn_drain();
        }
        loop {
            match tokio::time::timeout(STUCK, &mut rx).await {
                Ok(answer) => return answer.map_err(|_| JobLost),
                Err(_) => self.unstick(),
            }
        }
    }

    /// Starts another drain if jobs wait and no drain has taken one for [`STUCK`].
    fn unstick(self: &Arc<Self>) {
        let start = {
            let mut st = self.state.lock();
            let stuck = !st.queue.is_empty() && st.progress.elapsed() >= STUCK;
            if stuck {
                st.drains += 1;
                st.progress = Instant::now();
            }
            stuck
        };
        if start {
            tracing::debug!("Blocking jobs wait on a slow one; one more thread takes them.");
            self.spawn_drain();
        }
    }

    fn spawn_drain(self: &Arc<Self>) {
        let me = self.clone();
        // Detached: it ends once the queue is empty.
        drop(tokio::task::spawn_blocking(move || me.drain()));
    }

    /// Takes and runs jobs until the queue is empty.
    fn drain(&self) {
        let mut running = Running(Some(self));
        loop {
            let job = {
                let mut st = self.state.lock();
                match st.queue.pop_front() {
                    Some(job) => {
                        st.progress = Instant::now();
                        job
                    }
                    None => {
                        // Counted out under the lock that saw the queue empty, so a job
                        // queued after this starts a drain of its own.
                        st.drains -= 1;
                        running.0 = None;
                        return;
                    }
                }
            };
            job();
        }
    }
}

/// Counts a drain out if it ends by a panic (the jobs it left are taken by the next drain).
struct Running<'a>(Option<&'a BlockingQueue>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(q) = self.0 {
            q.state.lock().drains -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Waits up to 10 s for `rx` (a bound on a hang, not a measure of speed).
    async fn within<T>(rx: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("answered within 10 s")
            .expect("task ran")
    }

    /// Waits up to 10 s for every drain to end (a bound on a hang). A drain counts itself out
    /// only when it next finds the queue empty, just after its last job sent its answer, so
    /// the count is read after that, not at once.
    async fn drains_end(q: &BlockingQueue) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.state.lock().drains != 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            q.state.lock().drains,
            0,
            "every drain ends once the queue is empty"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_asked_together_each_get_their_own_answer() {
        let q = Arc::new(BlockingQueue::new());
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move { q.run(move || i * 3).await })
            })
            .collect();
        for (i, t) in (0..200u32).zip(tasks) {
            assert_eq!(within(t).await, Ok(i * 3));
        }
        // Every drain ended once the queue was empty.
        drains_end(&q).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_asked_together_run_on_several_threads_up_to_twice_the_cores() {
        let q = Arc::new(BlockingQueue::new());
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(q.max_drains, (cores * 2).max(MIN_DRAINS));
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (q, running, peak) = (q.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    q.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(2));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(within(t).await, Ok(()));
        }
        // Jobs that each block for a while do not all wait on one thread.
        assert!(peak.load(Ordering::SeqCst) >= 2, "one drain ran them all");
        drains_end(&q).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_is_not_held_up_by_one_that_blocks() {
        let q = Arc::new(BlockingQueue::new());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocked = {
            let q = q.clone();
            tokio::spawn(async move { q.run(move || held.recv().is_ok()).await })
        };
        // The blocked job is taken before the next is asked.
        loop {
            let taken = {
                let st = q.state.lock();
                st.queue.is_empty() && st.drains == 1
            };
            if taken {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let next = {
            let q = q.clone();
            tokio::spawn(async move { q.run(|| "answered").await })
        };
        assert_eq!(within(next).await, Ok("answered"));
        assert!(!blocked.is_finished());
        release.send(()).unwrap();
        assert_eq!(within(blocked).await, Ok(true));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_panics_loses_only_its_answer() {
        let q = Arc::new(BlockingQueue::new());
        let failed = {
            let q = q.clone();
            tokio::spawn(async move { q.run(|| -> u32 { panic!("a job fails") }).await })
        };
        assert_eq!(within(failed).await, Err(JobLost));
        let q2 = q.clone();
        assert_eq!(
            within(tokio::spawn(async move { q2.run(|| 7).await })).await,
            Ok(7)
        );
        drains_end(&q).await;
    }
}
