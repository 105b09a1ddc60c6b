//! Prometheus metrics: one recorder per process, rendered by `GET /metrics`.
//!
//! Names follow Prometheus conventions (`tandem_..._seconds`, `_total`). Recording goes
//! through the `metrics` facade, so the engine, queue and worker only call the macros below
//! and never know about the exporter.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "tandem_http_requests_total";
pub const HTTP_DURATION: &str = "tandem_http_request_duration_seconds";
pub const UPLOADS_IN_PROGRESS: &str = "tandem_uploads_in_progress";
pub const INFERENCE_DURATION: &str = "tandem_inference_duration_seconds";
pub const PREPROCESS_DURATION: &str = "tandem_preprocess_duration_seconds";
pub const ENQUEUE_DURATION: &str = "tandem_enqueue_duration_seconds";
pub const BATCH_SIZE: &str = "tandem_inference_batch_size";
pub const QUEUE_DEPTH: &str = "tandem_queue_depth";
pub const JOBS_ENQUEUED: &str = "tandem_jobs_enqueued_total";
pub const JOBS_REJECTED: &str = "tandem_jobs_rejected_total";
pub const JOBS_FINISHED: &str = "tandem_jobs_finished_total";
pub const JOB_ATTEMPTS: &str = "tandem_job_attempts_total";
pub const JOB_DURATION: &str = "tandem_job_duration_seconds";
pub const TIER_AGREEMENT: &str = "tandem_tier_agreement_total";
pub const JOB_QUEUE_WAIT: &str = "tandem_job_queue_wait_seconds";
pub const INFERENCE_WAIT: &str = "tandem_inference_wait_seconds";
pub const WORKERS_LIVE: &str = "tandem_workers_live";
pub const WATCHERS: &str = "tandem_watchers";
pub const JOBS_CANCELED: &str = "tandem_jobs_canceled_total";
pub const WEBHOOK_ATTEMPTS: &str = "tandem_webhook_attempts_total";
pub const WEBHOOKS_IN_FLIGHT: &str = "tandem_webhooks_in_flight";
pub const WEBHOOK_DURATION: &str = "tandem_webhook_duration_seconds";
pub const CASCADE_DECISIONS: &str = "tandem_cascade_decisions_total";
pub const CACHE_REQUESTS: &str = "tandem_cache_requests_total";
pub const JOBS_DEDUPLICATED: &str = "tandem_jobs_deduplicated_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder (once) and returns the handle that renders it.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let latency = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
            let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &batch));
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "metrics disabled");
                    None
                }
            }
        })
        .clone()
}

/// Series a `serve` can produce, at 0 from the start: dashboards and alerts (`rate()`,
/// `absent()`) expect every known series to exist before its first event.
pub fn register_serve_series() {
    metrics::gauge!(UPLOADS_IN_PROGRESS).set(0.0);
    metrics::gauge!(WATCHERS).set(0.0);
    metrics::counter!(JOBS_ENQUEUED).absolute(0);
    metrics::counter!(JOBS_CANCELED).absolute(0);
    for reason in ["full", "unavailable"] {
        metrics::counter!(JOBS_REJECTED, "reason" => reason).absolute(0);
    }
    for refined in ["true", "false"] {
        metrics::counter!(CASCADE_DECISIONS, "refined" => refined).absolute(0);
    }
    for tier in ["fast", "accurate"] {
        for result in ["hit", "miss"] {
            metrics::counter!(CACHE_REQUESTS, "tier" => tier, "result" => result).absolute(0);
        }
    }
    metrics::counter!(JOBS_DEDUPLICATED).absolute(0);
    register_worker_series();
}

/// Series a worker (or the embedded one inside `serve`) can produce, at 0 from the start.
pub fn register_worker_series() {
    for status in ["completed", "failed"] {
        metrics::counter!(JOBS_FINISHED, "status" => status).absolute(0);
    }
    metrics::counter!(JOB_ATTEMPTS).absolute(0);
    for agree in ["true", "false"] {
        metrics::counter!(TIER_AGREEMENT, "agree" => agree).absolute(0);
    }
    for outcome in WEBHOOK_OUTCOMES {
        metrics::counter!(WEBHOOK_ATTEMPTS, "outcome" => outcome).absolute(0);
    }
    metrics::gauge!(WEBHOOKS_IN_FLIGHT).set(0.0);
}

/// `outcome` of a webhook attempt: answered 2xx; answered otherwise or unreachable (retried);
/// the last attempt failed (given up); not sent, its host not allowed by the sending process.
pub const WEBHOOK_OUTCOMES: [&str; 4] = ["delivered", "failed", "given_up", "refused"];

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route, method and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request latency by route and status");
    describe_gauge!(UPLOADS_IN_PROGRESS, "POST /predict bodies being received now");
    describe_histogram!(INFERENCE_DURATION, Unit::Seconds, "model run time per batch, by tier and model");
    describe_histogram!(PREPROCESS_DURATION, Unit::Seconds, "image decode + resize + normalize time, by tier");
    describe_histogram!(
        ENQUEUE_DURATION,
        Unit::Seconds,
        "time POST /predict waits for the job queue once its fast answer is ready"
    );
    describe_histogram!(BATCH_SIZE, "images per model run, by tier");
    describe_gauge!(QUEUE_DEPTH, "jobs in the queue: waiting (not taken) and pending (taken, unfinished)");
    describe_counter!(JOBS_ENQUEUED, "jobs accepted into the queue");
    describe_counter!(JOBS_REJECTED, "jobs the queue could not take (full or unavailable)");
    describe_counter!(JOBS_FINISHED, "jobs that ended, by final status");
    describe_counter!(JOB_ATTEMPTS, "job attempts started by workers in this process");
    describe_histogram!(JOB_DURATION, Unit::Seconds, "job creation to result, for completed jobs");
    describe_counter!(TIER_AGREEMENT, "completed jobs by whether both tiers gave the same top-1");
    describe_histogram!(JOB_QUEUE_WAIT, Unit::Seconds, "job creation to the start of each attempt, as queue_ms");
    describe_histogram!(
        INFERENCE_WAIT,
        Unit::Seconds,
        "an image handed to a tier until its batch starts: earlier batches, decoding, waiting for a CPU"
    );
    describe_gauge!(WORKERS_LIVE, "workers taking jobs from the queue now (read at scrape time)");
    describe_gauge!(WATCHERS, "clients waiting for a job now: long-polls and event streams");
    describe_counter!(JOBS_CANCELED, "jobs canceled by DELETE /job/{id} before they started");
    describe_counter!(
        WEBHOOK_ATTEMPTS,
        "webhook attempts by outcome: delivered (2xx), failed (retried), given_up (the last failed), refused (host not allowed)"
    );
    describe_gauge!(WEBHOOKS_IN_FLIGHT, "webhook POSTs being sent now");
    describe_histogram!(WEBHOOK_DURATION, Unit::Seconds, "webhook POST time, every attempt");
    describe_counter!(CASCADE_DECISIONS, "fast answers by whether the accurate tier refines them (--refine-below)");
    describe_counter!(CACHE_REQUESTS, "result cache lookups by tier and result (hit, miss)");
    describe_counter!(JOBS_DEDUPLICATED, "jobs that shared the run of a queued or running job for the same bytes");
}
