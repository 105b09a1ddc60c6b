//! Jobs mode: submit N predictions, follow every job to completion, report how fast the
//! accurate tier drains them.
//!
//! `--concurrency` submitter threads share the N submissions (`POST /predict`, closed loop).
//! One poller thread follows the job ids in submission order with `GET /job/{id}`, every
//! `--poll-interval` ms. The queue is (near) FIFO, so each round stops after a few jobs still
//! `queued`: later ones cannot be done yet, and not polling them keeps the poller's load on the
//! server (which shares the CPU with the workers being measured) down to a handful of requests
//! per round. A job's latency runs from the start of its `POST` to the first poll that sees it
//! `completed`, so it is accurate to about one poll interval.
//!
//! Two throughputs: over the whole run (first submission to last completion), and the drain
//! rate after the last submission, when the accurate tier no longer shares the CPU with the
//! fast tier answering the submissions (the number to hold against raw accurate images/s).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use super::stats::{Latency, Summary, cell, round3};
use super::{BenchArgs, Target, print_report};
use crate::api::types::{JobResponse, PredictResponse};
use crate::jobs::JobStatus;

/// Consecutive `queued` jobs after which a poll round stops (see the module doc).
const QUEUED_LOOKAHEAD: usize = 4;

/// A job the service accepted, waiting to be seen finished.
struct Pending {
    id: Uuid,
    submitted: Instant,
}

#[derive(Default)]
struct SubmitStats {
    latency: Latency,
    queued: u64,
    not_queued: u64,
    first_async_error: Option<String>,
    by_status: BTreeMap<u16, u64>,
    transport: u64,
    bad_replies: u64,
    first_error: Option<String>,
    first_submit: Option<Instant>,
}

impl SubmitStats {
    fn merge(&mut self, other: SubmitStats) {
        self.latency.merge(&other.latency);
        self.queued += other.queued;
        self.not_queued += other.not_queued;
        if self.first_async_error.is_none() {
            self.first_async_error = other.first_async_error;
        }
        for (status, count) in other.by_status {
            *self.by_status.entry(status).or_default() += count;
        }
        self.transport += other.transport;
        self.bad_replies += other.bad_replies;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.first_submit = match (self.first_submit, other.first_submit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

#[derive(Default)]
struct PollStats {
    job_latency: Latency,
    queue_ms: Latency,
    inference_ms: Latency,
    completed: u64,
    failed: u64,
    first_failure: Option<String>,
    /// `GET /job/{id}` answered 404: the record expired or was never there.
    lost: u64,
    timed_out: u64,
    polls: u64,
    poll_errors: u64,
    last_completion: Option<Instant>,
    /// When the poller saw the last submitter finish.
    all_submitted: Option<Instant>,
    /// Jobs completed after that: the queue draining with no submissions competing for CPU.
    drained: u64,
}

pub fn run(args: &BenchArgs, target: &Target, count: u64) -> anyhow::Result<bool> {
    let next = AtomicU64::new(0);
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>();
    let poll_interval = Duration::from_millis(args.poll_interval);
    let job_timeout = Duration::from_secs_f64(args.job_timeout);
    let started = Instant::now();

    let (submit, poll) = std::thread::scope(|scope| {
        let poller = scope.spawn(move || poll_jobs(target, pending_rx, poll_interval, job_timeout));
        let submitters: Vec<_> = (0..args.concurrency)
            .map(|_| {
                let tx = pending_tx.clone();
                let next = &next;
                scope.spawn(move || submit_jobs(target, next, count, &tx))
            })
            .collect();
        // The poller ends once every submitter has dropped its sender and the jobs are done.
        drop(pending_tx);
        let mut submit = SubmitStats::default();
        for handle in submitters {
            submit.merge(handle.join().unwrap_or_default());
        }
        let submitted_at = Instant::now();
        (submit, (poller.join().unwrap_or_default(), submitted_at))
    });
    let (poll, all_submitted) = poll;

    let first = submit.first_submit.unwrap_or(started);
    let submit_s = all_submitted.saturating_duration_since(first).as_secs_f64().max(1e-3);
    let elapsed = poll.last_completion.map(|t| t.saturating_duration_since(first).as_secs_f64().max(1e-3));
    let drain_s = match (poll.all_submitted, poll.last_completion) {
        (Some(from), Some(to)) if to > from => Some(to.duration_since(from).as_secs_f64()),
        _ => None,
    };
    let report = Report {
        mode: "jobs",
        url: target.base.clone(),
        image: target.image_name.clone(),
        image_bytes: target.image.len(),
        jobs: count,
        concurrency: args.concurrency,
        poll_interval_ms: args.poll_interval,
        submitted: submit.queued + submit.not_queued,
        queued: submit.queued,
        not_queued: submit.not_queued,
        first_async_error: submit.first_async_error.clone(),
        submit_errors: submit.by_status.values().sum::<u64>() + submit.transport + submit.bad_replies,
        submit_errors_by_status: submit.by_status.clone(),
        submit_transport_errors: submit.transport,
        first_submit_error: submit.first_error.clone(),
        submit_rps: round3(submit.latency.count() as f64 / submit_s),
        submit_latency: submit.latency.summary(),
        completed: poll.completed,
        failed: poll.failed,
        first_failure: poll.first_failure.clone(),
        lost: poll.lost,
        timed_out: poll.timed_out,
        elapsed_s: elapsed.map(round3),
        jobs_per_s: elapsed.map(|s| round3(poll.completed as f64 / s)),
        drain_jobs: poll.drained,
        drain_s: drain_s.map(round3),
        drain_jobs_per_s: drain_s.filter(|_| poll.drained > 0).map(|s| round3(poll.drained as f64 / s)),
        job_latency: poll.job_latency.summary(),
        server_queue_ms: poll.queue_ms.summary(),
        server_inference_ms: poll.inference_ms.summary(),
        polls: poll.polls,
        poll_errors: poll.poll_errors,
    };
    print_report(args.json, &report, || report.text())?;
    Ok(report.completed > 0)
}

/// Claims submissions from the shared counter until all `count` are taken.
fn submit_jobs(target: &Target, next: &AtomicU64, count: u64, pending: &mpsc::Sender<Pending>) -> SubmitStats {
    let agent = target.agent();
    let mut stats = SubmitStats::default();
    while next.fetch_add(1, Ordering::Relaxed) < count {
        let submitted = Instant::now();
        stats.first_submit.get_or_insert(submitted);
        match target.predict(&agent) {
            Ok((status, body)) if (200..300).contains(&status) => {
                stats.latency.record(submitted.elapsed());
                match serde_json::from_slice::<PredictResponse>(&body) {
                    Ok(PredictResponse { job_id: Some(id), .. }) => {
                        stats.queued += 1;
                        // The poller only hangs up when it has already given up on every job.
                        let _ = pending.send(Pending { id, submitted });
                    }
                    Ok(PredictResponse { job_id: None, async_error, .. }) => {
                        stats.not_queued += 1;
                        if stats.first_async_error.is_none() {
                            stats.first_async_error = async_error;
                        }
                    }
                    Err(err) => {
                        stats.bad_replies += 1;
                        stats.first_error.get_or_insert_with(|| format!("unreadable POST /predict answer: {err}"));
                    }
                }
            }
            Ok((status, body)) => {
                *stats.by_status.entry(status).or_default() += 1;
                stats.first_error.get_or_insert_with(|| {
                    format!("POST /predict answered {status}: {}", String::from_utf8_lossy(&body).trim())
                });
            }
            Err(err) => {
                stats.transport += 1;
                stats.first_error.get_or_insert_with(|| format!("POST /predict: {err}"));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    stats
}

/// Follows the jobs until all are finished, or `job_timeout` after the last was submitted.
fn poll_jobs(target: &Target, incoming: Receiver<Pending>, interval: Duration, job_timeout: Duration) -> PollStats {
    let agent = target.agent();
    let mut stats = PollStats::default();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut submitting = true;
    let mut deadline: Option<Instant> = None;
    loop {
        // Take in newly submitted jobs; block for one only when there is nothing to poll.
        while submitting {
            let next = if pending.is_empty() {
                incoming.recv_timeout(interval).map_err(|e| matches!(e, RecvTimeoutError::Disconnected))
            } else {
                incoming.try_recv().map_err(|e| matches!(e, TryRecvError::Disconnected))
            };
            match next {
                Ok(job) => pending.push_back(job),
                Err(true) => {
                    submitting = false;
                    let now = Instant::now();
                    stats.all_submitted = Some(now);
                    deadline = Some(now + job_timeout);
                }
                Err(false) => break,
            }
        }
        if pending.is_empty() {
            if submitting {
                continue;
            }
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            stats.timed_out += pending.len() as u64;
            break;
        }

        let round = Instant::now();
        let mut queued_in_a_row = 0;
        let mut i = 0;
        while i < pending.len() && queued_in_a_row < QUEUED_LOOKAHEAD {
            let polled = Instant::now();
            stats.polls += 1;
            let url = target.url(&format!("/job/{}", pending[i].id));
            match target.get(&agent, &url) {
                Ok((200, body)) => match serde_json::from_slice::<JobResponse>(&body) {
                    Ok(job) if job.status.is_final() => {
                        let Some(done) = pending.remove(i) else { break };
                        if job.status == JobStatus::Completed {
                            stats.completed += 1;
                            // Done no later than this poll was sent.
                            stats.job_latency.record(polled.saturating_duration_since(done.submitted));
                            stats.last_completion = stats.last_completion.max(Some(polled));
                            if !submitting {
                                stats.drained += 1;
                            }
                            if let Some(ms) = job.queue_ms {
                                stats.queue_ms.record_ms(ms as f64);
                            }
                            if let Some(ms) = job.inference_ms {
                                stats.inference_ms.record_ms(ms);
                            }
                        } else {
                            stats.failed += 1;
                            stats.first_failure.get_or_insert_with(|| {
                                // Quoted, as JSON: the report has always shown it so.
                                job.error
                                    .map_or_else(|| "no error given".into(), |e| serde_json::Value::from(e).to_string())
                            });
                        }
                        queued_in_a_row = 0;
                        continue;
                    }
                    Ok(job) => {
                        queued_in_a_row = if job.status == JobStatus::Queued { queued_in_a_row + 1 } else { 0 };
                    }
                    Err(_) => stats.poll_errors += 1,
                },
                Ok((404, _)) => {
                    stats.lost += 1;
                    pending.remove(i);
                    continue;
                }
                Ok(_) | Err(_) => stats.poll_errors += 1,
            }
            i += 1;
        }
        if let Some(left) = (round + interval).checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
    }
    stats
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    url: String,
    image: String,
    image_bytes: usize,
    /// Submissions asked for.
    jobs: u64,
    /// Concurrent submitters.
    concurrency: u32,
    poll_interval_ms: u64,
    /// 2xx `POST /predict` answers.
    submitted: u64,
    /// ... with a job id.
    queued: u64,
    /// ... without one: the job queue refused the job (full).
    not_queued: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_async_error: Option<String>,
    submit_errors: u64,
    submit_errors_by_status: BTreeMap<u16, u64>,
    submit_transport_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_submit_error: Option<String>,
    /// 2xx `POST /predict` answers per second while submitting.
    submit_rps: f64,
    submit_latency: Option<Summary>,
    completed: u64,
    failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_failure: Option<String>,
    lost: u64,
    timed_out: u64,
    /// First submission to the last completion seen; null when none completed.
    elapsed_s: Option<f64>,
    /// Completed jobs per second over `elapsed_s`.
    jobs_per_s: Option<f64>,
    /// Jobs completed after the last submission: with nothing else asking for CPU, their rate
    /// is the accurate tier's own throughput (when enough jobs are left queued).
    drain_jobs: u64,
    /// Last submission to the last completion; null when none completed after it.
    drain_s: Option<f64>,
    drain_jobs_per_s: Option<f64>,
    /// Submission to observed completion.
    job_latency: Option<Summary>,
    /// The service's own `queue_ms` of the completed jobs.
    server_queue_ms: Option<Summary>,
    /// The service's own `inference_ms` (the batch's model run) of the completed jobs.
    server_inference_ms: Option<Summary>,
    polls: u64,
    poll_errors: u64,
}

impl Report {
    fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} <- {} ({} bytes)\n{} jobs from {} submitters, polled every {} ms\n",
            self.url, self.image, self.image_bytes, self.jobs, self.concurrency, self.poll_interval_ms
        );
        let _ = writeln!(
            out,
            "submitted  {} ({} queued, {} without a job id, {} errors), {:.1} req/s",
            self.submitted, self.queued, self.not_queued, self.submit_errors, self.submit_rps
        );
        let _ = writeln!(
            out,
            "finished   {} completed, {} failed, {} lost, {} timed out",
            self.completed, self.failed, self.lost, self.timed_out
        );
        let _ = writeln!(
            out,
            "throughput {} jobs/s over {} s (first submit to last completion)",
            cell(self.jobs_per_s),
            cell(self.elapsed_s)
        );
        let _ = writeln!(
            out,
            "drain      {} jobs/s: {} jobs completed in the {} s after the last submission\n",
            cell(self.drain_jobs_per_s),
            self.drain_jobs,
            cell(self.drain_s)
        );
        let _ = writeln!(out, "{:<22} {:>8} {:>8} {:>8} {:>8}", "latency", "p50 ms", "p90 ms", "p99 ms", "max ms");
        for (name, summary) in [
            ("POST /predict", &self.submit_latency),
            ("job (submit to done)", &self.job_latency),
            ("server queue_ms", &self.server_queue_ms),
            ("server inference_ms", &self.server_inference_ms),
        ] {
            let s = summary.as_ref();
            let _ = writeln!(
                out,
                "{:<22} {:>8} {:>8} {:>8} {:>8}",
                name,
                cell(s.map(|s| s.p50_ms)),
                cell(s.map(|s| s.p90_ms)),
                cell(s.map(|s| s.p99_ms)),
                cell(s.map(|s| s.max_ms)),
            );
        }
        for (label, message) in [
            ("first submit error", &self.first_submit_error),
            ("first queue refusal", &self.first_async_error),
            ("first failed job", &self.first_failure),
        ] {
            if let Some(message) = message {
                let _ = writeln!(out, "{label}: {message}");
            }
        }
        out
    }
}
