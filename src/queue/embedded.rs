//! The embedded queue: jobs and results in this process's memory.
//!
//! The zero-setup default: `tandem serve` with no Redis runs the accurate tier on in-process
//! workers fed from here. Bounded by `max_queue`; finished records expire after `result_ttl`.
//! Nothing survives a restart of the process — use Redis for that.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{QueueDepth, QueueError, QueuePolicy};
use crate::engine::Prediction;
use crate::jobs::{Delivery, FailOutcome, JobId, JobRecord, JobStatus, NewJob, now_ms};

#[derive(Clone)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes a waiting `take` when a job arrives.
    arrived: Notify,
    policy: QueuePolicy,
    /// Workers taking from this queue now (the one inside `serve`, while it runs).
    workers: AtomicU64,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Delivery>,
    running: usize,
    records: HashMap<JobId, Entry>,
    /// Finished jobs in completion order, so expiry never scans the whole map.
    expiries: VecDeque<(Instant, JobId)>,
}

struct Entry {
    record: JobRecord,
    expires_at: Option<Instant>,
}

impl EmbeddedQueue {
    pub fn new(policy: QueuePolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                arrived: Notify::new(),
                policy,
                workers: AtomicU64::new(0),
            }),
        }
    }

    /// Counts a worker as live until the returned guard is dropped.
    pub fn register_worker(&self) -> EmbeddedWorker {
        self.inner.workers.fetch_add(1, Ordering::Relaxed);
        EmbeddedWorker { inner: Arc::clone(&self.inner) }
    }

    pub fn live_workers(&self) -> u64 {
        self.inner.workers.load(Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep serving it.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn enqueue(&self, job: NewJob) -> Result<(), QueueError> {
        let mut state = self.state();
        state.expire(Instant::now());
        let limit = self.inner.policy.max_queue;
        if state.waiting.len() + state.running >= limit {
            return Err(QueueError::Full { limit });
        }
        let record = JobRecord::new(job.id, job.sync, job.created_at_ms);
        state.records.insert(job.id, Entry { record, expires_at: None });
        state.waiting.push_back(Delivery {
            id: job.id,
            image: job.image,
            attempt: 0,
            created_at_ms: job.created_at_ms,
            tag: String::new(),
        });
        drop(state);
        self.inner.arrived.notify_one();
        Ok(())
    }

    pub fn get(&self, id: JobId) -> Option<JobRecord> {
        let state = self.state();
        let entry = state.records.get(&id)?;
        match entry.expires_at {
            Some(at) if at <= Instant::now() => None,
            _ => Some(entry.record.clone()),
        }
    }

    pub fn check_ready(&self) -> Result<(), QueueError> {
        Ok(())
    }

    pub fn depth(&self) -> QueueDepth {
        let state = self.state();
        QueueDepth { waiting: state.waiting.len() as u64, pending: state.running as u64 }
    }

    pub async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a job enqueued in between still wakes us.
            let arrived = self.inner.arrived.notified();
            let taken = self.take_now(max);
            if !taken.is_empty() {
                return Ok(taken);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    fn take_now(&self, max: usize) -> Vec<Delivery> {
        let mut state = self.state();
        let count = max.min(state.waiting.len());
        let mut taken: Vec<Delivery> = state.waiting.drain(..count).collect();
        state.running += taken.len();
        let started = now_ms();
        for delivery in &mut taken {
            delivery.attempt += 1;
            if let Some(entry) = state.records.get_mut(&delivery.id) {
                entry.record.status = JobStatus::Running;
                entry.record.attempts = delivery.attempt;
                entry.record.started_at_ms = Some(started);
            }
        }
        if !state.waiting.is_empty() {
            // More work than this taker wanted: let another worker have it.
            self.inner.arrived.notify_one();
        }
        taken
    }

    pub fn complete(&self, delivery: &Delivery, result: &Prediction) -> Result<Option<usize>, QueueError> {
        let ttl = self.inner.policy.result_ttl;
        let mut state = self.state();
        state.running = state.running.saturating_sub(1);
        let mut sync_class = None;
        state.finish(delivery.id, ttl, |record| {
            record.status = JobStatus::Completed;
            record.result = Some(result.clone());
            record.error = None;
            sync_class = Some(record.sync.class_index);
        });
        Ok(sync_class)
    }

    pub fn fail(&self, delivery: &Delivery, error: &str) -> Result<FailOutcome, QueueError> {
        let policy = &self.inner.policy;
        let mut state = self.state();
        state.running = state.running.saturating_sub(1);
        if delivery.attempt >= policy.max_attempts {
            state.finish(delivery.id, policy.result_ttl, |record| {
                record.status = JobStatus::Failed;
                record.error = Some(error.to_owned());
            });
            return Ok(FailOutcome::Dead);
        }
        if let Some(entry) = state.records.get_mut(&delivery.id) {
            entry.record.status = JobStatus::Queued;
            entry.record.error = Some(error.to_owned());
        }
        state.waiting.push_back(delivery.clone());
        drop(state);
        self.inner.arrived.notify_one();
        Ok(FailOutcome::Retrying)
    }
}

/// A worker counted in [`EmbeddedQueue::live_workers`]; uncounted when dropped.
pub struct EmbeddedWorker {
    inner: Arc<Inner>,
}

impl Drop for EmbeddedWorker {
    fn drop(&mut self) {
        self.inner.workers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl State {
    fn finish(&mut self, id: JobId, ttl: Duration, update: impl FnOnce(&mut JobRecord)) {
        let now = Instant::now();
        if let Some(entry) = self.records.get_mut(&id) {
            update(&mut entry.record);
            entry.record.completed_at_ms = Some(now_ms());
            entry.expires_at = Some(now + ttl);
            self.expiries.push_back((now + ttl, id));
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.expiries.front() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            self.records.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Prediction;
    use bytes::Bytes;
    use uuid::Uuid;

    fn prediction(label: &str) -> Prediction {
        Prediction {
            model: "m".into(),
            label: label.into(),
            class_index: 1,
            score: 0.5,
            top_k: Vec::new(),
            inference_ms: 1.0,
        }
    }

    fn job() -> NewJob {
        NewJob {
            id: Uuid::new_v4(),
            image: Bytes::from_static(b"img"),
            sync: prediction("fast"),
            created_at_ms: now_ms(),
        }
    }

    fn queue(max_queue: usize, max_attempts: u32) -> EmbeddedQueue {
        EmbeddedQueue::new(QueuePolicy { max_queue, result_ttl: Duration::from_secs(60), max_attempts })
    }

    #[tokio::test]
    async fn a_job_goes_queued_running_completed() {
        let q = queue(10, 3);
        let j = job();
        let id = j.id;
        q.enqueue(j).expect("enqueue");
        assert_eq!(q.get(id).map(|r| r.status), Some(JobStatus::Queued));
        let taken = q.take(4, Duration::from_millis(10)).await.expect("take");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].attempt, 1);
        assert_eq!(q.get(id).map(|r| r.status), Some(JobStatus::Running));
        q.complete(&taken[0], &prediction("accurate")).expect("complete");
        let record = q.get(id).expect("record");
        assert_eq!(record.status, JobStatus::Completed);
        assert_eq!(record.result.map(|p| p.label), Some("accurate".into()));
        assert_eq!(q.depth(), QueueDepth::default());
    }

    #[tokio::test]
    async fn the_queue_is_bounded() {
        let q = queue(2, 3);
        q.enqueue(job()).expect("first");
        q.enqueue(job()).expect("second");
        assert!(matches!(q.enqueue(job()), Err(QueueError::Full { limit: 2 })));
        // A running job still counts; a finished one frees its place.
        let taken = q.take(1, Duration::ZERO).await.expect("take");
        assert!(q.enqueue(job()).is_err());
        q.complete(&taken[0], &prediction("a")).expect("complete");
        q.enqueue(job()).expect("room again");
    }

    #[tokio::test]
    async fn a_job_fails_after_max_attempts_and_others_go_on() {
        let q = queue(10, 2);
        let poison = job();
        let poison_id = poison.id;
        q.enqueue(poison).expect("enqueue");
        let good = job();
        let good_id = good.id;
        q.enqueue(good).expect("enqueue");

        let first = q.take(1, Duration::ZERO).await.expect("take");
        assert_eq!(q.fail(&first[0], "boom").expect("fail"), FailOutcome::Retrying);
        let next = q.take(1, Duration::ZERO).await.expect("take");
        assert_eq!(next[0].id, good_id, "a retried job goes behind the others");
        q.complete(&next[0], &prediction("ok")).expect("complete");
        let again = q.take(1, Duration::ZERO).await.expect("take");
        assert_eq!((again[0].id, again[0].attempt), (poison_id, 2));
        assert_eq!(q.fail(&again[0], "boom twice").expect("fail"), FailOutcome::Dead);
        let record = q.get(poison_id).expect("record");
        assert_eq!(record.status, JobStatus::Failed);
        assert_eq!(record.error.as_deref(), Some("boom twice"));
        assert_eq!(record.attempts, 2);
    }

    #[tokio::test]
    async fn take_waits_for_a_job_and_gives_up_after_the_timeout() {
        let q = queue(10, 3);
        let started = Instant::now();
        assert!(q.take(1, Duration::from_millis(50)).await.expect("take").is_empty());
        assert!(started.elapsed() >= Duration::from_millis(45));

        let producer = q.clone();
        let waiter = tokio::spawn(async move { q.take(1, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        producer.enqueue(job()).expect("enqueue");
        let taken = waiter.await.expect("join").expect("take");
        assert_eq!(taken.len(), 1);
    }

    #[test]
    fn a_worker_counts_as_live_while_registered() {
        let q = queue(10, 3);
        assert_eq!(q.live_workers(), 0);
        let worker = q.register_worker();
        assert_eq!(q.live_workers(), 1);
        drop(worker);
        assert_eq!(q.live_workers(), 0);
    }

    #[tokio::test]
    async fn finished_records_expire() {
        let q = EmbeddedQueue::new(QueuePolicy { max_queue: 10, result_ttl: Duration::ZERO, max_attempts: 1 });
        let j = job();
        let id = j.id;
        q.enqueue(j).expect("enqueue");
        let taken = q.take(1, Duration::ZERO).await.expect("take");
        q.complete(&taken[0], &prediction("a")).expect("complete");
        assert!(q.get(id).is_none());
        q.enqueue(job()).expect("enqueue purges expired records");
        assert_eq!(q.state().records.len(), 1);
    }
}
