//! Readiness: whether this process can do its work now, and who will take the jobs it queues.
//!
//! Both `serve` and `tandem worker` (on its `--metrics-addr`) answer `GET /health/ready`: 200
//! when the models are loaded (they are before any listener opens) and the queue answers, else
//! 503 with the reason. The body also counts the live workers (`JobQueue::live_workers`). A
//! `serve` with none stays *ready*, with a `warning`: it still gives every fast answer, and a
//! load balancer that took it out of rotation would lose those too; whether jobs are being
//! refined is for an alert on `tandem_workers_live` (set here, at scrape time) to say.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::types::{ErrorDetail, NotReady, Ready, Workers};
use crate::queue::{JobQueue, QueueError};

/// What `serve` warns when no worker takes its jobs.
const NO_WORKERS: &str = "no live worker: jobs stay queued until a worker takes them (`tandem worker` \
     with the same --redis-url and --redis-prefix); fast answers are unaffected";

/// Who is asking, which decides what a missing worker means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `serve`: no live worker is worth a warning.
    Serve,
    /// `tandem worker`: it is a worker itself.
    Worker,
}

/// The readiness answer for `queue`.
pub async fn ready(queue: &JobQueue, role: Role) -> Response {
    match check(queue).await {
        Ok(live) => {
            let warning = (role == Role::Serve && live == 0).then(|| NO_WORKERS.to_owned());
            let queue = queue.backend().to_owned();
            Json(Ready { status: "ready".into(), queue, workers: Workers { live }, warning }).into_response()
        }
        Err(err) => {
            let body = NotReady {
                error: ErrorDetail::new("queue_unavailable", err.to_string()),
                status: "not_ready".into(),
                queue: queue.backend().to_owned(),
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// The queue answers, and how many workers are live.
async fn check(queue: &JobQueue) -> Result<u64, QueueError> {
    queue.check_ready().await?;
    let live = queue.live_workers().await?;
    publish(live);
    Ok(live)
}

/// Sets `tandem_workers_live` from the queue now (left as it was if the queue does not answer).
pub async fn publish_workers_live(queue: &JobQueue) {
    if let Ok(live) = queue.live_workers().await {
        publish(live);
    }
}

fn publish(live: u64) {
    metrics::gauge!(crate::metrics::WORKERS_LIVE).set(live as f64);
}
