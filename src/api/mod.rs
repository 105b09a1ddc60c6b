//! HTTP API: `POST /predict`, `GET /job/{id}` (and its long-poll and event stream, [`watch`]),
//! health and readiness, and the API's own document ([`openapi`]: `/openapi.json`, `/docs`).
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
pub mod openapi;
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
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::engine::{Classifier, WorkPool};
use crate::jobs::now_ms;
use crate::queue::{CancelOutcome, JobQueue};
use error::ApiError;
pub use middleware::Access;
use types::{ErrorBody, Health, JobResponse, NotReady, PredictRequest, PredictResponse, Ready};

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
    let routes = served_routes().with_state(state).layer(DefaultBodyLimit::max(max_body));
    with_common_layers(routes, &access)
}

/// What [`router`] routes: [`api_routes`], and the 404 for anything else.
fn served_routes() -> Router<AppState> {
    let (routes, _document) = api_routes().split_for_parts();
    routes.fallback(not_found)
}

/// Every route `serve` answers, each registered together with its entry in the API document
/// (`routes!` takes the method and path from the handler's `#[utoipa::path]`): a route cannot
/// be served undocumented, nor documented and not served. This is the one list of paths: add
/// a route here, with `routes!`, never with a plain `.route()` (the tests in [`openapi`] read
/// the paths the router registers and fail on one the document does not have).
pub(crate) fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        // The web page.
        .routes(routes!(page::index))
        // Predictions and their jobs.
        .routes(routes!(predict))
        .routes(routes!(job, cancel_job))
        .routes(routes!(job_events))
        // Health and operations.
        .routes(routes!(health))
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(metrics_text))
        // The API document and Swagger UI.
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(openapi::docs_redirect))
        .routes(routes!(openapi::docs_index))
        .routes(routes!(openapi::docs_file))
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

/// The process answers (`"healthy"`).
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    security((), ("api_key" = [])),
    responses((status = 200, description = "`{\"status\": \"healthy\"}`.", body = Health)),
)]
async fn health() -> Json<Health> {
    Json(Health::new("healthy"))
}

/// Liveness: the process answers (`"alive"`).
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    security((), ("api_key" = [])),
    responses((status = 200, description = "`{\"status\": \"alive\"}`.", body = Health)),
)]
async fn live() -> Json<Health> {
    Json(Health::new("alive"))
}

/// Readiness: the models are loaded and the queue answers.
///
/// Ready when the models are loaded and the queue answers; the body counts live workers. A
/// `serve` with no live worker stays ready (it still gives every fast answer), with a `warning`.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Ready.", body = Ready),
        (status = 503, description = "Not ready: the queue does not answer (`queue_unavailable`).", body = NotReady),
    ),
)]
async fn ready(State(state): State<AppState>) -> Response {
    health::ready(&state.inner.queue, health::Role::Serve).await
}

/// `POST /predict`'s query: everything else is refused, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PredictQuery {
    /// Classes in the answer's `top_k`, 1 to what the models compute (`--top-k`, the default).
    #[param(minimum = 1)]
    top_k: Option<usize>,
    /// Where to POST the job's final state (a webhook, signed in the Standard Webhooks layout)
    /// once it is completed, failed or canceled: an http(s) URL on a host `--webhook-allow`
    /// allows, percent-encoded.
    callback_url: Option<String>,
}

/// `GET /job/{id}`'s query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct JobQuery {
    /// Classes in each answer's `top_k`, 1 to what the models compute (`--top-k`, the default).
    #[param(minimum = 1)]
    top_k: Option<usize>,
    /// Seconds to wait for the job to be final before answering (long-poll), cut to
    /// `--max-wait`; absent or 0: answer now.
    #[param(minimum = 0)]
    wait: Option<f64>,
}

/// `GET /job/{id}/events`' query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Classes in each answer's `top_k`, 1 to what the models compute (`--top-k`, the default).
    #[param(minimum = 1)]
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

/// Classify an image: the fast model's answer now, and a job for the accurate one.
///
/// The image comes in one of three forms, by `Content-Type`. The job is queued before the
/// answer is sent, so its `job_id` always resolves; if the queue cannot take it, the fast answer
/// still comes, with `job_id: null` and `async_error`. With `Accept: text/event-stream` the
/// answer is a stream instead: the fast answer, then the job's states, in one connection.
#[utoipa::path(
    post,
    path = "/predict",
    tag = "predict",
    params(PredictQuery),
    request_body(
        description = "The image: JSON with `image_data` (base64), the raw image bytes (`image/*` or \
            `application/octet-stream`), or `multipart/form-data` with an `image` file part.",
        content(
            (PredictRequest = "application/json"),
            (openapi::RawImage = "image/*"),
            (openapi::RawImage = "application/octet-stream"),
            (openapi::ImageUpload = "multipart/form-data"),
        ),
    ),
    responses(
        (status = 200, description = "The fast answer (JSON); or, when the request's `Accept` has \
            `text/event-stream`, server-sent events: first `fast` (data: the same `PredictResponse`), \
            then the job's states as in `GET /job/{id}/events` (`queued`, `running`, then a final one \
            `completed`, `failed` or `canceled`; data: `JobResponse`, id: `<status>-<attempts>`), after which \
            the stream ends. Without a job (`job_id: null`) `fast` is the only event; if the job cannot \
            be followed (past `--max-watchers`, queue down) an `error` event (data: `ErrorBody`) ends it.",
            content(
                (PredictResponse = "application/json"),
                (String = "text/event-stream", example = json!(openapi::PREDICT_EVENTS_EXAMPLE)),
            ),
        ),
        (status = 400, description = "The body or query is malformed: `invalid_json`, `invalid_base64`, \
            `invalid_multipart`, `body_unreadable`, `empty_image`, `not_an_image`, `truncated_image`, \
            `unsupported_format`, `image_too_complex`, `invalid_query`.", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `--body-timeout` (`body_timeout`).",
            body = ErrorBody),
        (status = 413, description = "The body is over `--max-body` (`body_too_large`), or the image over \
            the pixel or memory bounds (`image_too_large`).", body = ErrorBody),
        (status = 415, description = "Not one of the three forms (`unsupported_media_type`).", body = ErrorBody),
        (status = 422, description = "JSON without `image_data` (`missing_field`) or with it not a string \
            (`invalid_field`); a `callback_url` on a host `--webhook-allow` does not allow \
            (`callback_not_allowed`), not an http(s) URL (`invalid_callback_url`), or given to a server \
            without webhooks (`webhooks_disabled`).", body = ErrorBody),
        (status = 429, description = "Too many requests at once, or bodies being received (`overloaded`).",
            body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
        (status = 431, description = "Over 100 headers or 32 KiB of them (`headers_too_large`).", body = ErrorBody),
        (status = 500, description = "The model failed (`inference_failed`) or another fault (`internal`).",
            body = ErrorBody),
        (status = 503, description = "No answer within `--request-timeout` (`timeout`), or the decoders are \
            all busy (`decode_busy`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
    ),
)]
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

/// A job: its state, the fast answer, and the accurate one once completed.
///
/// With `?wait=SECONDS`, a job not yet final is answered as soon as it is (or when the wait runs
/// out, as it is then); such a wait counts against `--max-watchers`.
#[utoipa::path(
    get,
    path = "/job/{id}",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The `job_id` `POST /predict` gave.",
            example = "0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11"),
        JobQuery,
    ),
    responses(
        (status = 200, description = "The job.", body = JobResponse),
        (status = 400, description = "The id is not a UUID (`invalid_job_id`) or the query is wrong \
            (`invalid_query`).", body = ErrorBody),
        (status = 404, description = "No such job: unknown, or expired (`job_not_found`).", body = ErrorBody),
        (status = 429, description = "`?wait` past `--max-watchers` (`too_many_watchers`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
        (status = 503, description = "The queue does not answer (`queue_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
    ),
)]
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

/// Cancels a job no worker has started.
///
/// 200 with its `canceled` body (also when it was canceled already); it never runs, and a
/// `callback_url` is told. A running or ended job is left as it is (409): a running one
/// finishes and keeps its result.
#[utoipa::path(
    delete,
    path = "/job/{id}",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The `job_id` `POST /predict` gave.",
            example = "0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11"),
    ),
    responses(
        (status = 200, description = "The job, now `canceled`.", body = JobResponse),
        (status = 400, description = "The id is not a UUID (`invalid_job_id`).", body = ErrorBody),
        (status = 404, description = "No such job: unknown, or expired (`job_not_found`).", body = ErrorBody),
        (status = 409, description = "A worker has started the job, or it has ended (`job_not_cancelable`).",
            body = ErrorBody),
        (status = 503, description = "The queue does not answer (`queue_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
    ),
)]
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

/// A job's states as server-sent events: the state now, then each change, closed after the
/// final one (see [`watch`]).
#[utoipa::path(
    get,
    path = "/job/{id}/events",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The `job_id` `POST /predict` gave.",
            example = "0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11"),
        EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "A reconnecting client's last event id \
            (`<status>-<attempts>`): a state it has seen is not sent again."),
    ),
    responses(
        (status = 200, description = "Server-sent events, one per state: the event name is the status \
            (`queued`, `running`, then a final one: `completed`, `failed` or `canceled`), the id \
            `<status>-<attempts>`, the data a `JobResponse`. The stream ends after the final state; a \
            comment every 15 s keeps it open while idle.",
            content((String = "text/event-stream", example = json!(openapi::JOB_EVENTS_EXAMPLE)))),
        (status = 204, description = "`Last-Event-ID` is the job's final event: nothing more will come \
            (an `EventSource` stops reconnecting)."),
        (status = 400, description = "The id is not a UUID (`invalid_job_id`) or the query is wrong \
            (`invalid_query`).", body = ErrorBody),
        (status = 404, description = "No such job: unknown, or expired (`job_not_found`).", body = ErrorBody),
        (status = 429, description = "Past `--max-watchers` (`too_many_watchers`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
        (status = 503, description = "The queue does not answer (`queue_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
    ),
)]
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

/// The process's metrics, in Prometheus' text format.
///
/// Queue depth is read now rather than tracked, so it is exact for Redis too, where other
/// processes change it.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.",
            content((String = "text/plain; version=0.0.4"))),
        (status = 500, description = "The metrics recorder could not be installed (`internal`).", body = ErrorBody),
    ),
)]
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
