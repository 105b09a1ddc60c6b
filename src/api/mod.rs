//! HTTP API: `POST /predict`, `GET /job/{id}`, health and readiness.
//!
//! Handlers only move data between HTTP and the engine/queue: the fast tier answers, the job
//! is durably enqueued *before* the response is sent, and every error goes through
//! [`error::ApiError`] so it leaves as `{"error": {"code", "message"}}` with the right status.

pub mod error;
pub mod health;
pub mod input;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use uuid::Uuid;

use crate::engine::Classifier;
use crate::jobs::{JobRecord, JobStatus, format_ms, now_ms};
use crate::queue::JobQueue;
use error::{ApiError, error_body};

/// Limits applied to `POST /predict`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: usize,
    pub max_inflight: usize,
    pub request_timeout: Duration,
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    fast: Classifier,
    queue: JobQueue,
    limits: Limits,
    inflight: Arc<Semaphore>,
}

impl AppState {
    pub fn new(fast: Classifier, queue: JobQueue, limits: Limits) -> Self {
        let inflight = Arc::new(Semaphore::new(limits.max_inflight.max(1)));
        Self { inner: Arc::new(Inner { fast, queue, limits, inflight }) }
    }
}

pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/predict", post(predict))
        .route("/job/{id}", get(job))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .with_state(state);
    with_common_layers(routes)
}

/// Layers every route gets: a panic becomes a 500 JSON error (the process keeps serving), and
/// every request is counted and timed.
fn with_common_layers(router: Router) -> Router {
    router.layer(CatchPanicLayer::custom(panic_response)).layer(axum::middleware::from_fn(record_request))
}

/// The worker's small HTTP surface: liveness, readiness (its Redis answers; its model is
/// loaded before this listener opens) and metrics. It serves no predictions.
pub fn worker_router(queue: JobQueue) -> Router {
    let ready_queue = queue.clone();
    let ready = move || {
        let queue = ready_queue.clone();
        async move { health::ready(&queue, health::Role::Worker).await }
    };
    let metrics = move || {
        let queue = queue.clone();
        async move {
            publish_queue_depth(&queue).await;
            render_metrics()
        }
    };
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "healthy"}))
}

async fn live() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

/// Ready when the models are loaded and the queue answers; the body counts live workers.
async fn ready(State(state): State<AppState>) -> Response {
    health::ready(&state.inner.queue, health::Role::Serve).await
}

async fn predict(State(state): State<AppState>, request: Request<Body>) -> Result<Json<Value>, ApiError> {
    // Past the in-flight bound, refuse at once rather than queue without limit.
    let Ok(_permit) = Arc::clone(&state.inner.inflight).try_acquire_owned() else {
        return Err(ApiError::Overloaded);
    };
    let timeout = state.inner.limits.request_timeout;
    tokio::time::timeout(timeout, predict_now(&state, request))
        .await
        .map_err(|_| ApiError::Timeout(timeout.as_secs_f64()))?
}

async fn predict_now(state: &AppState, request: Request<Body>) -> Result<Json<Value>, ApiError> {
    let image = input::read_image(request, state.inner.limits.max_body).await?;
    let fast = &state.inner.fast;
    // Decoded and queued for the fast model first: a bad image or a full inference queue is
    // refused before anything is stored.
    let answer = fast.admit(image.clone()).await?;

    // The job is enqueued before answering, so a job id the client sees always resolves; with
    // Redis, the image is written while the fast model runs. If the queue cannot take the job,
    // the fast answer still goes out, with the reason instead of an id.
    let id = Uuid::new_v4();
    let (sync, queued) = state.inner.queue.enqueue_after(id, image, now_ms(), answer).await?;
    let mut body = json!({"job_id": null, "result_sync": sync.label, "sync": sync, "status_url": null});
    match queued {
        Ok(()) => {
            metrics::counter!(crate::metrics::JOBS_ENQUEUED).increment(1);
            body["job_id"] = json!(id);
            body["status_url"] = json!(format!("/job/{id}"));
        }
        Err(err) => {
            let reason = match err {
                crate::queue::QueueError::Full { .. } => "full",
                _ => "unavailable",
            };
            metrics::counter!(crate::metrics::JOBS_REJECTED, "reason" => reason).increment(1);
            tracing::debug!(error = %err, "job not queued");
            body["async_error"] = json!(err.to_string());
        }
    }
    Ok(Json(body))
}

async fn job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let uuid = Uuid::try_parse(&id).map_err(|_| ApiError::InvalidJobId(id.clone()))?;
    let record = state.inner.queue.get(uuid).await.map_err(ApiError::Queue)?;
    let record = record.ok_or(ApiError::JobNotFound(id))?;
    Ok(Json(job_body(&record)))
}

/// `GET /job/{id}`'s body. `prediction` stays `""` until completed, as the original design did.
pub fn job_body(record: &JobRecord) -> Value {
    let completed = record.status == JobStatus::Completed;
    let prediction = match (&record.result, completed) {
        (Some(result), true) => result.label.clone(),
        _ => String::new(),
    };
    let mut body = json!({
        "job_id": record.id,
        "prediction": prediction,
        "status": record.status.as_str(),
        "sync": record.sync,
        "attempts": record.attempts,
        "created_at": format_ms(record.created_at_ms),
    });
    if let Some(queue_ms) = record.queue_ms() {
        body["queue_ms"] = json!(queue_ms);
    }
    if let (Some(result), true) = (&record.result, completed) {
        body["result"] = json!(result);
        body["agrees_with_sync"] = json!(result.class_index == record.sync.class_index);
        body["inference_ms"] = json!(result.inference_ms);
    }
    if let Some(at) = record.completed_at_ms {
        body["completed_at"] = json!(format_ms(at));
    }
    if let Some(error) = &record.error {
        body["error"] = json!(error);
    }
    body
}

/// Prometheus text format. Queue depth is read now rather than tracked, so it is exact for
/// Redis too, where other processes change it.
async fn metrics_text(State(state): State<AppState>) -> Response {
    publish_queue_depth(&state.inner.queue).await;
    render_metrics()
}

async fn publish_queue_depth(queue: &JobQueue) {
    if let Ok(depth) = queue.depth().await {
        metrics::gauge!(crate::metrics::QUEUE_DEPTH, "state" => "waiting").set(depth.waiting as f64);
        metrics::gauge!(crate::metrics::QUEUE_DEPTH, "state" => "pending").set(depth.pending as f64);
    }
    health::publish_workers_live(queue).await;
}

/// The process's metrics, or 503 if the recorder could not be installed.
pub fn render_metrics() -> Response {
    match crate::metrics::install() {
        Some(handle) => {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
        }
        None => ApiError::Internal("metrics are disabled".into()).into_response(),
    }
}

/// Counts and times every request by its route template (not the raw path, which holds ids).
async fn record_request(request: Request<Body>, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.clone())
        .increment(1);
    metrics::histogram!(crate::metrics::HTTP_DURATION, "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(error_body("not_found", "no such route"))).into_response()
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "a request handler panicked");
    ApiError::Internal("the request could not be completed".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn boom() -> &'static str {
        panic!("deliberate")
    }

    #[tokio::test]
    async fn a_panicking_handler_gives_a_500_json_error_and_the_router_keeps_serving() {
        let router = with_common_layers(Router::new().route("/boom", get(boom)).route("/fine", get(|| async { "ok" })));
        let request = |path: &str| Request::builder().uri(path).body(Body::empty()).expect("request");
        let response = router.clone().oneshot(request("/boom")).await.expect("response");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        let value: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(value["error"]["code"], "internal");
        let response = router.oneshot(request("/fine")).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
}
