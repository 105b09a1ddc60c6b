//! The worker: takes jobs from the queue, runs the accurate model, stores the result.
//!
//! Used by `tandem worker` (Redis) and inside `tandem serve` (embedded queue). Up to
//! `concurrency` jobs run at once; the classifier batches whatever of them is waiting. A job
//! is acknowledged only after its result is stored; a failed or panicking job costs one attempt.
//! A job stays this worker's while it runs, however long (its lease is renewed, `queue::redis`).
//! On shutdown it stops taking jobs and finishes the ones in flight. While it takes jobs it
//! counts as a live worker of its queue (`JobQueue::live_workers`).

mod catch_panic;
mod starvation;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::engine::{Classifier, ClassifyError, Prediction, Priority};
use crate::jobs::now_ms;
use crate::queue::{Delivery, FailOutcome, JobQueue, QueueError};
use catch_panic::CatchPanic;
use starvation::StarvationWatch;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs in flight at once.
    pub concurrency: usize,
    /// Longest a `take` blocks, which bounds how fast shutdown is noticed.
    pub poll: Duration,
    /// The accurate tier's CPU priority, for the advice when jobs wait far longer than they run.
    pub priority: Priority,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { concurrency: 4, poll: Duration::from_secs(1), priority: Priority::Idle }
    }
}

/// How often a worker says again which accurate model it runs (a Redis that lost its data
/// learns it back within this).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);

/// Names this worker's model to the queue, so results are cached under it (`queue::redis`,
/// "Shared runs and the result cache"): as it starts (the last worker started names it), then
/// every `ANNOUNCE_EVERY`, only if the name is gone.
async fn announce_model(queue: JobQueue, identity: crate::fingerprint::ModelIdentity) {
    let mut first = true;
    loop {
        match queue.announce_accurate_model(&identity, first).await {
            Ok(()) => first = false,
            Err(err) => tracing::debug!(error = %err, "could not announce the accurate model; trying again"),
        }
        tokio::time::sleep(ANNOUNCE_EVERY).await;
    }
}

/// Runs until `shutdown` turns true, then waits for the jobs in flight.
pub async fn run(queue: JobQueue, classifier: Classifier, config: WorkerConfig, mut shutdown: watch::Receiver<bool>) {
    let concurrency = config.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut backoff = Backoff::default();
    let starvation = Arc::new(StarvationWatch::new(config.priority));
    // Registered so the series is in /metrics (at 0) before the first job.
    let _ = metrics::histogram!(crate::metrics::JOB_QUEUE_WAIT);
    let presence = queue.register_worker();
    let announcer = tokio::spawn(announce_model(queue.clone(), classifier.identity().clone()));
    while !*shutdown.borrow() {
        // Wait for a free slot first, so jobs are only taken when they can start at once.
        let Ok(first) = Arc::clone(&slots).acquire_owned().await else { break };
        let free = slots.available_permits() + 1;
        let taken = tokio::select! {
            taken = queue.take(free, config.poll) => taken,
            _ = shutdown.changed() => { drop(first); break; }
        };
        let deliveries = match taken {
            Ok(deliveries) => {
                backoff.succeeded();
                deliveries
            }
            Err(err) => {
                drop(first);
                let pause = backoff.failed(&err);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {},
                    _ = shutdown.changed() => {},
                }
                continue;
            }
        };
        let mut first = Some(first);
        for delivery in deliveries {
            let permit = match first.take() {
                Some(permit) => permit,
                None => match Arc::clone(&slots).acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let queue = queue.clone();
            let classifier = classifier.clone();
            let starvation = Arc::clone(&starvation);
            tokio::spawn(async move {
                process(&queue, &classifier, &starvation, &delivery).await;
                queue.release(&delivery);
                drop(permit);
            });
        }
    }
    announcer.abort();
    // No more jobs taken from here on: no longer a live worker, though the last ones finish.
    presence.leave().await;
    // Every slot back means every job in flight has finished.
    let _ = slots.acquire_many(concurrency as u32).await;
    tracing::info!("worker stopped");
}

/// Runs one job. A panic in the model run is caught here and recorded as a failed attempt
/// instead of ending the job's task. Storing the outcome is retried briefly by the queue itself
/// (`queue::redis`, "Retries").
async fn process(queue: &JobQueue, classifier: &Classifier, starvation: &StarvationWatch, delivery: &Delivery) {
    metrics::counter!(crate::metrics::JOB_ATTEMPTS).increment(1);
    // Creation to this attempt's start, as the job record's `queue_ms`.
    let queue_wait_ms = now_ms().saturating_sub(delivery.created_at_ms);
    metrics::histogram!(crate::metrics::JOB_QUEUE_WAIT).record(queue_wait_ms as f64 / 1e3);
    let result = match CatchPanic::new(classifier.classify(delivery.image.clone())).await {
        Ok(Ok(prediction)) => Ok(prediction),
        Ok(Err(err)) => Err(describe(&err)),
        Err(_panic) => Err("the model panicked on this job".to_owned()),
    };
    match result {
        Ok(prediction) => {
            // If the result cannot be stored (queue down), the job stays unacknowledged and, once
            // released, is taken over after the reclaim timeout: done again rather than lost.
            match queue.complete(delivery, &prediction).await {
                Ok(()) => record_completion(delivery, &prediction, starvation),
                Err(err) => {
                    tracing::warn!(job = %delivery.id, error = %err, "result not stored; the job will be retried")
                }
            }
        }
        Err(error) => match queue.fail(delivery, &error).await {
            Ok(FailOutcome::Dead) => {
                metrics::counter!(crate::metrics::JOBS_FINISHED, "status" => "failed").increment(1);
                tracing::warn!(job = %delivery.id, attempts = delivery.attempt, %error, "job failed for good")
            }
            Ok(FailOutcome::Retrying) => {
                tracing::info!(job = %delivery.id, attempt = delivery.attempt, %error, "job failed; retrying")
            }
            Err(err) => tracing::warn!(job = %delivery.id, error = %err, "failure not recorded"),
        },
    }
}

fn record_completion(delivery: &Delivery, result: &Prediction, starvation: &StarvationWatch) {
    metrics::counter!(crate::metrics::JOBS_FINISHED, "status" => "completed").increment(1);
    let total = Duration::from_millis(now_ms().saturating_sub(delivery.created_at_ms));
    metrics::histogram!(crate::metrics::JOB_DURATION).record(total.as_secs_f64());
    // Everything but the model run: the queue, the engine's own queue, decoding, a starved CPU.
    let ran = Duration::try_from_secs_f64(result.inference_ms / 1e3).unwrap_or_default();
    starvation.job_finished(total.saturating_sub(ran), ran);
    if let Some(fast_class) = delivery.fast_class {
        let agree = if fast_class == result.class_index { "true" } else { "false" };
        metrics::counter!(crate::metrics::TIER_AGREEMENT, "agree" => agree).increment(1);
    }
}

fn describe(err: &ClassifyError) -> String {
    match err {
        ClassifyError::Image(e) => format!("the image cannot be used: {e}"),
        other => other.to_string(),
    }
}

/// Exponential backoff for an unreachable queue, logging the outage once rather than per try.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn failed(&mut self, err: &QueueError) -> Duration {
        // Debug only: the Redis queue logs each outage itself, once, for every caller.
        if self.failures == 0 {
            tracing::debug!(error = %err, "queue unavailable; retrying with backoff");
        }
        self.failures = self.failures.saturating_add(1);
        let exponent = self.failures.min(6);
        Duration::from_millis(100 * (1 << exponent)).min(Duration::from_secs(5))
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::debug!(after = self.failures, "queue reachable again");
        }
        self.failures = 0;
    }
}
