//! HTTP API: `POST /predict`, `GET /job/{id}` (and its long-poll and event stream, [`watch`]),
//! health and readiness, and the API's own document ([`openapi`]: `/openapi.json`, `/docs`).
//!
//! Handlers only move data between HTTP and the engine/queue: the fast tier answers, the job
//! is durably enqueued *before* the response is sent, and every error goes through
//! [`error::ApiError`] so it leaves as `{"error": {"code", "message"}}` with the right status.
//! Every body is one of the wire types in [`types`]. What wraps every route (request ids, logs,
//! metrics, auth, CORS) is in [`middleware`].

mod answer;
pub mod error;
pub mod health;
pub mod input;
mod jobs;
pub mod middleware;
pub mod openapi;
pub mod page;
mod predict;
mod query;
pub mod server;
pub mod types;
mod upload;
pub mod v2;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::engine::{Classifier, WorkPool};
use crate::queue::JobQueue;
pub use answer::Refinement;
use error::ApiError;
pub use jobs::webhook_body;
pub use middleware::Access;
use types::{ErrorBody, Health, NotReady, Ready};

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
    /// The accurate tier's model file, as this process was told it (`--accurate-model`): with
    /// Redis, workers run it and this process never loads it.
    accurate_model: String,
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
    /// The cascade and the fast cache.
    refinement: answer::Refinement,
    /// Turns true when the process is stopping: waiting clients are answered (long-poll) or
    /// their streams closed, so they do not hold the drain open.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(
        fast: Classifier,
        accurate_model: String,
        queue: JobQueue,
        limits: Limits,
        access: Access,
        pool: WorkPool,
        refinement: Refinement,
    ) -> Self {
        let inflight = Arc::new(Semaphore::new(limits.max_inflight.max(1)));
        let uploads = Arc::new(Semaphore::new(limits.max_uploads.max(1)));
        let upload_kib = Arc::new(Semaphore::new(upload::kib(limits.upload_memory.max(limits.max_body))));
        let access = Arc::new(access);
        let watchers = watch::Watchers::new(limits.max_watchers);
        let stopping = tokio::sync::watch::Sender::new(false);
        let inner = Inner {
            fast,
            accurate_model,
            queue,
            limits,
            access,
            inflight,
            uploads,
            upload_kib,
            pool,
            watchers,
            refinement,
            stopping,
        };
        Self { inner: Arc::new(inner) }
    }

    /// The process is stopping: long-polls answer now, event streams close (a client
    /// reconnects, to another `serve`, with `Last-Event-ID`).
    pub fn release_watchers(&self) {
        self.inner.stopping.send_replace(true);
    }
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
        .routes(routes!(predict::predict))
        .routes(routes!(jobs::job, jobs::cancel_job))
        .routes(routes!(jobs::job_events))
        // The Open Inference Protocol (KServe v2).
        .routes(routes!(v2::server_live))
        .routes(routes!(v2::server_ready))
        .routes(routes!(v2::server_metadata))
        .routes(routes!(v2::model_metadata))
        .routes(routes!(v2::model_version_metadata))
        .routes(routes!(v2::model_ready))
        .routes(routes!(v2::model_version_ready))
        .routes(routes!(v2::model_infer))
        .routes(routes!(v2::model_version_infer))
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
    use axum::body::Body;
    use axum::http::Request;
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
