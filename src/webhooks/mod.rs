//! Webhooks: when a job whose `POST /predict` carried a `callback_url` ends (completed, failed
//! or canceled), its JSON — the body `GET /job/{id}` gives — is POSTed there, signed
//! ([`sign`]), to hosts on `--webhook-allow` only ([`allow`]).
//!
//! The queue holds what is to be sent ([`crate::queue::WebhookTask`]): embedded, in memory;
//! with Redis, a stream entry added in the same step that ends the job, kept pending while a
//! sender retries and taken over by another process if that sender dies, so a delivery
//! survives a crash. [`run`] is the sender: at most `concurrency` POSTs at once, each bounded
//! by `timeout`, retried with doubling pauses up to `max_attempts` attempts, every attempt
//! counted in `tandem_webhook_attempts_total`. Delivery is at least once: a receiver may see a
//! webhook again (same `webhook-id`) after a sender crashed mid-attempt.

pub mod allow;
pub mod sign;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

pub use allow::{AllowList, CallbackError};
pub use sign::Secret;

use crate::jobs::{JobRecord, now_ms};
use crate::queue::{JobQueue, WebhookTask};

/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// How long the sender waits for webhooks before looking again (and at `stop`).
const TAKE_WAIT: Duration = Duration::from_secs(2);
/// After the queue failed to answer, before trying it again.
const QUEUE_RETRY: Duration = Duration::from_secs(1);

/// A job's webhook body (the API's job JSON): given by the caller, so that this module does not
/// reach up into the HTTP API that checks its URLs.
pub type RenderBody = fn(&JobRecord) -> Option<Vec<u8>>;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub allow: AllowList,
    pub secret: Secret,
    pub max_attempts: u32,
    /// Per attempt: connecting, sending and the receiver's answer.
    pub timeout: Duration,
    /// POSTs in flight at once.
    pub concurrency: usize,
    /// The pause after the first failed attempt; it doubles after each one, up to a minute.
    pub first_pause: Duration,
    /// How often a sender tells the queue it is still at a webhook (Redis: well inside
    /// `--reclaim-after`, after which another process takes it over).
    pub renew_every: Duration,
    pub render: RenderBody,
}

impl WebhookConfig {
    fn pause_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        self.first_pause.saturating_mul(1 << doublings).min(MAX_PAUSE)
    }
}

/// Sends webhooks from `queue` until `stop` turns true. POSTs under way then are left to end
/// with the process; with Redis, their webhooks are taken over by another sender.
pub async fn run(queue: JobQueue, config: WebhookConfig, mut stop: watch::Receiver<bool>) {
    let config = Arc::new(config);
    let agent = agent(&config);
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    while !*stop.borrow() {
        // A free slot first: this sender takes no more webhooks than it can send now, so the
        // rest stay in the queue for other senders.
        let Ok(first) = Arc::clone(&slots).acquire_owned().await else { return };
        let want = 1 + slots.available_permits();
        let taken = tokio::select! {
            taken = queue.take_webhooks(want, TAKE_WAIT) => taken,
            _ = stop.changed() => return,
        };
        let tasks = match taken {
            Ok(tasks) => tasks,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the webhooks to send; retrying");
                drop(first);
                tokio::time::sleep(QUEUE_RETRY).await;
                continue;
            }
        };
        let mut first = Some(first);
        for task in tasks {
            let Some(slot) = first.take().or_else(|| Arc::clone(&slots).try_acquire_owned().ok()) else { break };
            let (queue, config, agent) = (queue.clone(), Arc::clone(&config), agent.clone());
            tokio::spawn(async move {
                let _slot = slot;
                metrics::gauge!(crate::metrics::WEBHOOKS_IN_FLIGHT).increment(1.0);
                deliver(&queue, &config, &agent, task).await;
                metrics::gauge!(crate::metrics::WEBHOOKS_IN_FLIGHT).decrement(1.0);
            });
        }
    }
}

fn agent(config: &WebhookConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A redirect could lead anywhere, past the allow list: the first answer is the answer.
        .max_redirects(0)
        .timeout_global(Some(config.timeout))
        .user_agent(concat!("tandem-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Why an attempt did not deliver.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("the receiver answered {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
}

/// One webhook, attempted until delivered, given up, or its job is gone.
async fn deliver(queue: &JobQueue, config: &WebhookConfig, agent: &ureq::Agent, mut task: WebhookTask) {
    let id = task.id;
    loop {
        let attempt = match queue.count_webhook_attempt(&mut task).await {
            Ok(0) => {
                tracing::info!(job = %id, "webhook dropped: the job's record has expired");
                break;
            }
            Ok(attempt) => attempt,
            Err(err) => {
                tracing::warn!(job = %id, error = %err, "cannot count a webhook attempt; retrying");
                tokio::time::sleep(QUEUE_RETRY).await;
                continue;
            }
        };
        if attempt > config.max_attempts {
            // Taken over from a sender that died during its last attempt.
            tracing::warn!(job = %id, attempts = config.max_attempts, "webhook given up: out of attempts");
            break;
        }
        let record = match queue.get(id).await {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(job = %id, error = %err, "cannot read the job for its webhook; retrying");
                tokio::time::sleep(QUEUE_RETRY).await;
                continue;
            }
        };
        let Some(url) = record.callback_url.clone() else { break };
        if let Err(err) = config.allow.check(&url) {
            metrics::counter!(crate::metrics::WEBHOOK_ATTEMPTS, "outcome" => "refused").increment(1);
            tracing::warn!(job = %id, error = %err, "webhook not sent: its URL is not allowed by this process");
            break;
        }
        let Some(body) = (config.render)(&record) else { break };
        let started = Instant::now();
        let outcome = renewing(queue, config, &task, post(agent, &config.secret, &url, &id.to_string(), body)).await;
        metrics::histogram!(crate::metrics::WEBHOOK_DURATION).record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                metrics::counter!(crate::metrics::WEBHOOK_ATTEMPTS, "outcome" => "delivered").increment(1);
                tracing::debug!(job = %id, attempt, "webhook delivered");
                break;
            }
            Err(err) if attempt >= config.max_attempts => {
                metrics::counter!(crate::metrics::WEBHOOK_ATTEMPTS, "outcome" => "given_up").increment(1);
                tracing::warn!(job = %id, attempt, error = %err, "webhook given up after its last attempt");
                break;
            }
            Err(err) => {
                metrics::counter!(crate::metrics::WEBHOOK_ATTEMPTS, "outcome" => "failed").increment(1);
                let pause = config.pause_after(attempt);
                tracing::info!(job = %id, attempt, error = %err, ?pause, "webhook attempt failed; retrying");
                renewing(queue, config, &task, tokio::time::sleep(pause)).await;
            }
        }
    }
    if let Err(err) = queue.webhook_done(&task).await {
        // With Redis the entry stays pending: another sender takes it over and finds it done
        // (out of attempts) or sends it once more.
        tracing::warn!(job = %id, error = %err, "cannot mark a webhook done");
    }
}

/// Runs `work` (an attempt, or the pause after one) while renewing the task's hold on the
/// queue every `renew_every`, so that no other sender (nor this one) takes it over meanwhile.
async fn renewing<F: Future>(queue: &JobQueue, config: &WebhookConfig, task: &WebhookTask, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            () = tokio::time::sleep(config.renew_every) => {
                if let Err(err) = queue.renew_webhook(task).await {
                    tracing::debug!(job = %task.id, error = %err, "cannot renew a webhook's hold");
                }
            }
        }
    }
}

/// One signed POST, on a blocking thread (ureq), bounded by the agent's timeout.
async fn post(agent: &ureq::Agent, secret: &Secret, url: &str, id: &str, body: Vec<u8>) -> Result<(), AttemptError> {
    let timestamp = now_ms() / 1000;
    let signature = secret.sign(id, timestamp, &body);
    let (agent, url, id) = (agent.clone(), url.to_owned(), id.to_owned());
    let sent = tokio::task::spawn_blocking(move || {
        agent
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", &signature)
            .send(&body[..])
            .map(|response| response.status().as_u16())
    })
    .await;
    match sent {
        Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
        Ok(Ok(status)) => Err(AttemptError::Status(status)),
        Ok(Err(err)) => Err(AttemptError::Transport(err.to_string())),
        Err(err) => Err(AttemptError::Transport(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_a_minute() {
        let config = WebhookConfig {
            allow: AllowList::default(),
            secret: Secret::parse("0123456789abcdef").expect("secret"),
            max_attempts: 5,
            timeout: Duration::from_secs(1),
            concurrency: 1,
            first_pause: Duration::from_secs(1),
            renew_every: Duration::from_secs(1),
            render: |_| None,
        };
        let pauses: Vec<u64> = [1, 2, 3, 4, 7, 40].map(|a| config.pause_after(a).as_secs()).to_vec();
        assert_eq!(pauses, [1, 2, 4, 8, 60, 60]);
    }
}
