//! HTTP API: `POST /predict`, `GET /job/{id}` (and its long-poll and event stream, [`watch`]),
//! health and readiness.
//!
//! Handlers only move data between HTTP and the engine/queue: the fast tier answers, the job
//! is durably enqueued *before* the response is sent, and every error goes through
//! [`error::ApiError`] so it leaves as `{"error": {"code", "message"}}` with the right status.
//! Every body is one of the wire types in [`types`]. What wraps every route (request ids, logs,
//! metrics, auth, CORS) is in [`middleware`].

pub mod error;
pub mod health;
pub mod input;
pub mod middleware;
pub mod page;
pub mod server;
pub mod types;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

use crate::engine::{Classifier, WorkPool};
use crate::jobs::now_ms;
use crate::queue::{CancelOutcome, JobQueue};
use error::ApiError;
pub use middleware::Access;
use types::{ErrorBody, Health, JobResponse, PredictResponse};

/// Limits applied to `POST /predict`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: usize,
    /// Requests past their body, being decoded, inferred and queued.
    pub max_inflight: usize,
    /// From the end of the body to the answer.
    pub request_timeout: Duration,
    /// Bodies being received at once, and the bytes they may hold (a body whose length is not
    /// declared counts as `max_body`): bounded apart from `max_inflight`, so clients that
    /// trickle their bodies cannot take the permits that requests ready to run need.
    pub max_uploads: usize,
    pub upload_memory: usize,
    /// The whole body must arrive within this.
    pub body_timeout: Duration,
    /// Classes in an answer's `top_k` (what the models compute); `?top_k=` may ask for fewer.
    pub top_k: usize,
    /// The longest `GET /job/{id}?wait=` holds a request (longer asks are cut to it).
    pub max_wait: Duration,
    /// Long-polls and event streams open at once; more get 429.
    pub max_watchers: usize,
    /// Hosts a `callback_url` may name (`--webhook-allow`); empty: webhooks are off.
    pub webhook_allow: crate::webhooks::AllowList,
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    fast: Classifier,
    queue: JobQueue,
    limits: Limits,
    access: Arc<Access>,
    inflight: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
    /// Permits are KiB of body.
    upload_kib: Arc<Semaphore>,
    /// Where large JSON bodies are parsed, off the runtime's threads.
    pool: WorkPool,
    watchers: watch::Watchers,
    /// Turns true when the process is stopping: waiting clients are answered (long-poll) or
    /// their streams closed, so they do not hold the drain open.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(fast: Classifier, queue: JobQueue, limits: Limits, access: Access, pool: WorkPool) -> Self {
        let inflight = Arc::new(Semaphore::new(limits.max_inflight.max(1)));
        let uploads = Arc::new(Semaphore::new(limits.max_uploads.max(1)));
        let upload_kib = Arc::new(Semaphore::new(kib(limits.upload_memory.max(limits.max_body))));
        let access = Arc::new(access);
        let watchers = watch::Watchers::new(limits.max_watchers);
        let stopping = tokio::sync::watch::Sender::new(false);
        let inner = Inner { fast, queue, limits, access, inflight, uploads, upload_kib, pool, watchers, stopping };
        Self { inner: Arc::new(inner) }
    }

    /// The process is stopping: long-polls answer now, event streams close (a client
    /// reconnects, to another `serve`, with `Last-Event-ID`).
    pub fn release_watchers(&self) {
        self.inner.stopping.send_replace(true);
    }
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

pub fn router(state: AppState) -> Router {
    let access = Arc::clone(&state.inner.access);
    // The Multipart extractor has its own 2 MB default: `--max-body` is the one limit.
    let max_body = state.inner.limits.max_body;
    let routes = Router::new()
        .route("/", get(page::index))
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/predict", post(predict))
        .route("/job/{id}", get(job).delete(cancel_job))
        .route("/job/{id}/events", get(job_events))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body));
    with_common_layers(routes, &access)
}

/// Layers every route gets (innermost first): a panic becomes a 500 JSON error (the process
/// keeps serving), the API key check, CORS, the request's id, log line and metrics, and the
/// one JSON error shape.
fn with_common_layers(router: Router, access: &Arc<Access>) -> Router {
    let mut router = router.layer(CatchPanicLayer::custom(panic_response));
    if !access.api_keys.is_empty() {
        router = router.layer(axum::middleware::from_fn_with_state(Arc::clone(access), middleware::require_api_key));
    }
    if let Some(cors) = cors_layer(&access.cors_origins) {
        router = router.layer(cors);
    }
    let router = router.layer(axum::middleware::from_fn(middleware::observe));
    // Around the whole router rather than each route: a route's 405 gets its `Allow` header
    // outside the route's own layers, and the JSON message names the allowed methods.
    Router::new().fallback_service(router).layer(axum::middleware::from_fn(middleware::json_errors))
}

/// Browsers on these origins may call the API (`*`: any). Origins were checked at start-up.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let request_id = HeaderName::from_static(middleware::REQUEST_ID);
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, request_id.clone()])
            .expose_headers([request_id, header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

/// Checks `--cors-origin` values: `*`, or `scheme://host[:port]` as browsers send them.
pub fn check_cors_origin(origin: &str) -> Result<(), String> {
    let valid = origin == "*"
        || (HeaderValue::from_str(origin).is_ok()
            && origin.parse::<Uri>().is_ok_and(|uri| {
                uri.scheme().is_some() && uri.host().is_some() && uri.path_and_query().is_none_or(|p| p.as_str() == "/")
            })
            && !origin.ends_with('/'));
    if valid { Ok(()) } else { Err(format!("--cors-origin {origin:?} must be `*` or like https://app.example.com")) }
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
    let routes = Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found);
    with_common_layers(routes, &Arc::new(Access::default()))
}

async fn health() -> Json<Health> {
    Json(Health::new("healthy"))
}

async fn live() -> Json<Health> {
    Json(Health::new("alive"))
}

/// Ready when the models are loaded and the queue answers; the body counts live workers.
async fn ready(State(state): State<AppState>) -> Response {
    health::ready(&state.inner.queue, health::Role::Serve).await
}

/// `POST /predict`'s query: everything else is refused, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictQuery {
    /// Classes in the answer's `top_k`, 1 to what the models compute ([`Limits::top_k`]).
    top_k: Option<usize>,
    /// Where to POST the job's final state (a webhook), on a host `--webhook-allow` allows.
    callback_url: Option<String>,
}

/// `GET /job/{id}`'s query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobQuery {
    top_k: Option<usize>,
    /// Seconds to wait for the job to be final before answering (long-poll).
    wait: Option<f64>,
}

/// `GET /job/{id}/events`' query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    top_k: Option<usize>,
}

/// The `top_k` a client asked for, checked against what the models compute.
fn wanted_top_k(asked: Option<usize>, computed: usize) -> Result<usize, ApiError> {
    match asked {
        None => Ok(computed),
        Some(k) if (1..=computed).contains(&k) => Ok(k),
        Some(k) => Err(ApiError::InvalidQuery(format!("top_k must be between 1 and {computed}, got {k}"))),
    }
}

fn parse_query<T: serde::de::DeserializeOwned + Default>(uri: &Uri) -> Result<T, ApiError> {
    if uri.query().is_none_or(str::is_empty) {
        return Ok(T::default());
    }
    Query::<T>::try_from_uri(uri).map(|Query(q)| q).map_err(|e| ApiError::InvalidQuery(e.body_text()))
}

async fn predict(State(state): State<AppState>, request: Request<Body>) -> Result<Response, ApiError> {
    let uri = request.uri().clone();
    let streamed = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|kind| kind.trim().starts_with("text/event-stream")));
    let received = receive(&state, request).await?;
    // Checked after the body is in, so that a client still writing gets the 400.
    let query: PredictQuery = parse_query(&uri)?;
    let top_k = wanted_top_k(query.top_k, state.inner.limits.top_k)?;
    if let Some(url) = &query.callback_url {
        state.inner.limits.webhook_allow.check(url)?;
    }
    // Only a request whose body is in takes an in-flight permit; past the bound, refuse at
    // once rather than queue without limit. The permit is shared with the decode (and a big
    // body's parse), which keep it until they end even if the request times out first.
    let Ok(permit) = Arc::clone(&state.inner.inflight).try_acquire_owned() else {
        return Err(ApiError::Overloaded);
    };
    let permit = Arc::new(permit);
    let timeout = state.inner.limits.request_timeout;
    let callback = query.callback_url.as_deref();
    let Json(answer) = tokio::time::timeout(timeout, predict_now(&state, received, top_k, callback, permit))
        .await
        .map_err(|_| ApiError::Timeout(timeout.as_secs_f64()))??;
    if streamed {
        return Ok(watch::predict_events(&state, &answer, top_k).await.into_response());
    }
    Ok(Json(answer).into_response())
}

/// One body being received: its upload slot, and the memory its bytes hold so far, counted in
/// the uploads gauge while it lasts.
struct Upload {
    _slot: tokio::sync::OwnedSemaphorePermit,
    memory: Option<tokio::sync::OwnedSemaphorePermit>,
    charged_kib: usize,
}

impl Upload {
    /// Charges the memory of `bytes` more of body; false when `--upload-memory` is spent.
    fn charge(&mut self, pool: &Arc<Semaphore>, bytes: usize, received: usize) -> bool {
        let needed = kib(received + bytes).saturating_sub(self.charged_kib);
        if needed == 0 {
            return true;
        }
        let Some(more) = u32::try_from(needed).ok().and_then(|n| Arc::clone(pool).try_acquire_many_owned(n).ok())
        else {
            return false;
        };
        self.charged_kib += needed;
        match &mut self.memory {
            Some(held) => held.merge(more),
            None => self.memory = Some(more),
        }
        true
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::UPLOADS_IN_PROGRESS).decrement(1.0);
    }
}

/// Receives the body within the upload bounds and `--body-timeout`: a slot among
/// `--max-uploads`, and `--upload-memory` charged as the bytes arrive (so a client that
/// declares a large body and trickles it holds only what it sent). A request refused here
/// has its body read and thrown away (bounded) first, so the client sees the 429.
async fn receive(state: &AppState, request: Request<Body>) -> Result<input::Received, ApiError> {
    let limits = &state.inner.limits;
    let Ok(slot) = Arc::clone(&state.inner.uploads).try_acquire_owned() else {
        input::discard(request).await;
        return Err(ApiError::Overloaded);
    };
    metrics::gauge!(crate::metrics::UPLOADS_IN_PROGRESS).increment(1.0);
    let mut upload = Upload { _slot: slot, memory: None, charged_kib: 0 };
    let pool = &state.inner.upload_kib;
    let mut received = 0;
    let mut admit = |bytes: usize| {
        let ok = upload.charge(pool, bytes, received);
        received += bytes;
        ok
    };
    tokio::time::timeout(limits.body_timeout, input::receive(request, limits.max_body, &mut admit))
        .await
        .map_err(|_| ApiError::BodyTimeout(limits.body_timeout.as_secs_f64()))?
}

async fn predict_now(
    state: &AppState,
    received: input::Received,
    top_k: usize,
    callback_url: Option<&str>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Json<PredictResponse>, ApiError> {
    let image = match received {
        // Parsing JSON and decoding base64 is CPU work in proportion to the body: off the
        // runtime's threads for a big one, so it cannot hold up `/health` and other requests.
        input::Received::Json(body) if body.len() > 64 * 1024 => {
            let hold = Arc::clone(&permit);
            let parsed = state.inner.pool.run(move || {
                let _hold = hold;
                input::image_from_json(&body)
            });
            parsed.await.map_err(|e| ApiError::Internal(e.to_string()))??
        }
        other => other.into_image().await?,
    };
    let fast = &state.inner.fast;
    // Decoded and queued for the fast model first: a bad image or a full inference queue is
    // refused before anything is stored.
    let answer = fast.admit_holding(image.clone(), Box::new(permit)).await?;

    // The job is enqueued before answering, so a job id the client sees always resolves; with
    // Redis, the image is written while the fast model runs. If the queue cannot take the job,
    // the fast answer still goes out, with the reason instead of an id.
    let id = Uuid::new_v4();
    let (answer, staged) = tokio::join!(answer, state.inner.queue.stage(id, image, now_ms()));
    let fast = match answer {
        Ok(fast) => fast,
        Err(err) => {
            staged.abandon().await;
            return Err(err.into());
        }
    };
    // How long the request waits for its job to be queued, once its fast answer is ready (not
    // recorded when staging failed already: then nothing is tried).
    let tried = staged.is_staged();
    let committing = std::time::Instant::now();
    let queued = staged.commit(&fast, callback_url).await;
    if tried {
        metrics::histogram!(crate::metrics::ENQUEUE_DURATION).record(committing.elapsed().as_secs_f64());
    }
    let (job_id, async_error) = match queued {
        Ok(()) => {
            metrics::counter!(crate::metrics::JOBS_ENQUEUED).increment(1);
            (Some(id), None)
        }
        Err(err) => {
            let reason = match err {
                crate::queue::QueueError::Full { .. } | crate::queue::QueueError::FullBytes { .. } => "full",
                _ => "unavailable",
            };
            metrics::counter!(crate::metrics::JOBS_REJECTED, "reason" => reason).increment(1);
            tracing::debug!(error = %err, "job not queued");
            (None, Some(err.to_string()))
        }
    };
    Ok(Json(PredictResponse::new(&fast, top_k, job_id, async_error)))
}

async fn job(State(state): State<AppState>, Path(id): Path<String>, uri: Uri) -> Result<Json<JobResponse>, ApiError> {
    let query: JobQuery = parse_query(&uri)?;
    let top_k = wanted_top_k(query.top_k, state.inner.limits.top_k)?;
    let uuid = Uuid::try_parse(&id).map_err(|_| ApiError::InvalidJobId(id.clone()))?;
    let record = match query.wait {
        None | Some(0.0) => state.inner.queue.get(uuid).await.map_err(ApiError::Queue)?,
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            let wait = Duration::from_secs_f64(seconds.min(state.inner.limits.max_wait.as_secs_f64()));
            watch::wait_until_final(&state, uuid, wait).await?
        }
        Some(_) => return Err(ApiError::InvalidQuery("wait: expected a number of seconds, 0 or more".into())),
    };
    let record = record.ok_or(ApiError::JobNotFound(id))?;
    Ok(Json(JobResponse::new(&record, top_k)))
}

/// `DELETE /job/{id}`: cancels a job no worker has started (200 with its `canceled` body,
/// also when it was canceled already); a running or ended job is left as it is (409).
async fn cancel_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobResponse>, ApiError> {
    let uuid = Uuid::try_parse(&id).map_err(|_| ApiError::InvalidJobId(id.clone()))?;
    let queue = &state.inner.queue;
    match queue.cancel(uuid).await.map_err(ApiError::Queue)? {
        CancelOutcome::Unknown => Err(ApiError::JobNotFound(id)),
        CancelOutcome::TooLate(status) => Err(ApiError::NotCancelable { id, status: status.as_str() }),
        CancelOutcome::Canceled => {
            metrics::counter!(crate::metrics::JOBS_CANCELED).increment(1);
            let record = queue.get(uuid).await.map_err(ApiError::Queue)?.ok_or(ApiError::JobNotFound(id))?;
            Ok(Json(JobResponse::new(&record, state.inner.limits.top_k)))
        }
    }
}

/// `GET /job/{id}/events`: the job's states as server-sent events (see [`watch`]).
async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query: EventsQuery = parse_query(&uri)?;
    let top_k = wanted_top_k(query.top_k, state.inner.limits.top_k)?;
    let uuid = Uuid::try_parse(&id).map_err(|_| ApiError::InvalidJobId(id.clone()))?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok(watch::events(&state, uuid, top_k, last_event_id).await?.into_response())
}

/// A job's webhook body: the JSON `GET /job/{id}` gives, with every class the models computed.
pub fn webhook_body(record: &crate::jobs::JobRecord) -> Option<Vec<u8>> {
    serde_json::to_vec(&JobResponse::new(record, usize::MAX)).ok()
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

async fn not_found(uri: Uri) -> Response {
    (StatusCode::NOT_FOUND, Json(ErrorBody::new("not_found", format!("no route {}", uri.path())))).into_response()
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
        let router = with_common_layers(
            Router::new().route("/boom", get(boom)).route("/fine", get(|| async { "ok" })),
            &Arc::new(Access::default()),
        );
        let request = |path: &str| Request::builder().uri(path).body(Body::empty()).expect("request");
        let response = router.clone().oneshot(request("/boom")).await.expect("response");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        let value: ErrorBody = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(value.error.code, "internal");
        let response = router.oneshot(request("/fine")).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
}
