//! A small pool of threads for CPU-heavy request work that is not inference: decoding images
//! and parsing large bodies, off the async runtime.
//!
//! Why not tokio's blocking pool: it grows to 512 threads at the runtime's own priority, so 64
//! concurrent 12 MP uploads meant 64 decodes competing with the threads that answer `/health`
//! (p95 ≈ 500 ms). Here there are as many threads as cores, at the fast tier's lower priority
//! (`--fast-nice`), so the runtime's threads preempt them and the work queues instead of
//! piling onto the CPU. The queue is bounded by what feeds it (requests hold in-flight permits).
//!
//! A job whose caller has gone away (a timed-out request) before a thread picks it up is
//! skipped, not run.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use super::priority::{self, ThreadPriority};

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the pool; cheap to clone. The threads stop when every handle is dropped.
#[derive(Clone)]
pub struct WorkPool {
    jobs: Sender<Job>,
    threads: usize,
}

impl std::fmt::Debug for WorkPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkPool").field("threads", &self.threads).finish()
    }
}

/// The pool's threads have stopped (the process is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the work pool has stopped")]
pub struct PoolStopped;

impl WorkPool {
    /// Starts `threads` threads (at least one) named `name-N`, each at `priority`.
    pub fn start(name: &str, threads: usize, priority: ThreadPriority) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let queue = Arc::new(queue);
        for i in 0..threads {
            let queue: Arc<Receiver<Job>> = Arc::clone(&queue);
            std::thread::Builder::new().name(format!("{name}-{}", i + 1)).spawn(move || {
                if let Err(err) = priority::apply_to_current_thread(priority) {
                    tracing::warn!(error = %err, ?priority, "cannot lower a work thread's priority");
                }
                while let Ok(job) = queue.recv() {
                    job();
                }
            })?;
        }
        Ok(Self { jobs, threads })
    }

    /// Runs `work` on the pool and waits for its result, without blocking the runtime.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolStopped> {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller gave up (its request timed out or was dropped): skip the work.
            if reply.is_closed() {
                return;
            }
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            if let Ok(out) = out {
                let _ = reply.send(out);
            }
        });
        self.jobs.send(job).map_err(|_| PoolStopped)?;
        result.await.map_err(|_| PoolStopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn runs_work_and_skips_work_nobody_waits_for() {
        let pool = WorkPool::start("test-pool", 1, ThreadPriority::Nice(0)).expect("pool");
        assert_eq!(pool.run(|| 2 + 2).await.ok(), Some(4));

        // Hold the only thread, queue a job, give up on it: it must not run.
        let ran = Arc::new(AtomicUsize::new(0));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy_pool = pool.clone();
        let busy = tokio::spawn(async move {
            busy_pool
                .run(move || {
                    let _ = hold.recv_timeout(Duration::from_secs(5));
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let counter = Arc::clone(&ran);
        let abandoned = pool.run(move || counter.fetch_add(1, Ordering::SeqCst));
        let _ = tokio::time::timeout(Duration::from_millis(10), abandoned).await;
        let _ = release.send(());
        let _ = busy.await;
        assert_eq!(pool.run(|| ()).await.ok(), Some(()));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_stop_the_pool() {
        let pool = WorkPool::start("test-pool", 1, ThreadPriority::Nice(0)).expect("pool");
        assert!(pool.run(|| panic!("deliberate")).await.is_err());
        assert_eq!(pool.run(|| 1).await.ok(), Some(1));
    }
}
