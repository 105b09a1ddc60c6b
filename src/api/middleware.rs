//! What every request passes through on its way to a handler, outermost first:
//!
//! 1. [`json_errors`]: an error status produced outside our handlers (the router's 404/405, an
//!    extractor's text rejection) leaves in the same `{"error": {...}}` shape as ours, keeping
//!    its headers (`Allow` on a 405).
//! 2. [`observe`]: a request id (the client's `x-request-id` if it is sane, else a new one,
//!    returned in the response either way), header limits, one log line and the HTTP metrics.
//!    Metric labels take only known values, so no client can grow the series without bound.
//! 3. CORS, when configured (tower-http's layer answers preflights itself).
//! 4. [`require_api_key`], when keys are configured.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, HEADER_BYTES_LIMIT, HEADER_COUNT_LIMIT, code_for_status};
use super::types::ErrorBody;

pub const REQUEST_ID: &str = "x-request-id";

/// Who may call what. With no keys every route is open.
#[derive(Clone, Default)]
pub struct Access {
    /// Accepted bearer tokens (`--api-key`); empty: no authentication.
    pub api_keys: Vec<String>,
    /// `/health*` answers without a key.
    pub open_health: bool,
    /// `/metrics` answers without a key.
    pub open_metrics: bool,
    /// Origins allowed to call from a browser (`--cors-origin`; `*` for any); empty: no CORS.
    pub cors_origins: Vec<String>,
}

/// Keys never reach a log line, even through `{:?}`.
impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("api_keys", &format_args!("[{} redacted]", self.api_keys.len()))
            .field("open_health", &self.open_health)
            .field("open_metrics", &self.open_metrics)
            .field("cors_origins", &self.cors_origins)
            .finish()
    }
}

/// The request id the client sent, if it is short and printable, else a fresh random one.
fn request_id(request: &Request<Body>) -> String {
    request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// The method as a metric label: the standard ones by name, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Request id, header limits, access log line and HTTP metrics.
pub async fn observe(request: Request<Body>, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    // The matched route template, never the raw path (which holds ids, or anything at all).
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = request.method().clone();
    let mut response = match header_excess(&request) {
        Some(excess) => ApiError::HeadersTooLarge(excess).into_response(),
        None => next.run(request).await,
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let ms = (elapsed.as_secs_f64() * 1e5).round() / 1e2;
    // Probes and scrapes come every few seconds: logged at debug so they do not drown the rest.
    if route.starts_with("/health") || route == "/metrics" {
        tracing::debug!(target: "tandem::http", request_id = %id, method = %method, route, status, ms, "request");
    } else {
        tracing::info!(target: "tandem::http", request_id = %id, method = %method, route, status, ms, "request");
    }
    let status = status.to_string();
    let method = method_label(&method);
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.clone())
        .increment(1);
    metrics::histogram!(crate::metrics::HTTP_DURATION, "route" => route, "status" => status)
        .record(elapsed.as_secs_f64());
    response
}

/// Why the request's headers are over [`HEADER_COUNT_LIMIT`] or [`HEADER_BYTES_LIMIT`], if they are.
fn header_excess(request: &Request<Body>) -> Option<String> {
    let headers = request.headers();
    if headers.len() > HEADER_COUNT_LIMIT {
        return Some(format!("{} headers", headers.len()));
    }
    let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    (bytes > HEADER_BYTES_LIMIT).then(|| format!("{bytes} bytes"))
}

/// Rewrites an error response that is not JSON into the one error shape.
pub async fn json_errors(request: Request<Body>, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // An extractor's rejection says what was wrong in plain text: keep its words.
    let detail = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    let message = match (status, detail) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            let allowed = parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("none");
            format!("{method} is not allowed on {path} (allowed: {allowed})")
        }
        (StatusCode::NOT_FOUND, None) => format!("no route {path}"),
        (_, Some(detail)) => detail,
        (_, None) => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let body = axum::Json(ErrorBody::new(code_for_status(status), message)).into_response().into_body();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, body)
}

/// Routes open even with `--api-key`: the page (`/`), the API document and Swagger UI. They
/// are the same static bytes for everyone, and a browser cannot send a key when it navigates;
/// the page and Swagger UI send the user's key with the API calls they make.
pub fn always_open(path: &str) -> bool {
    path == "/" || path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/")
}

/// Refuses a request without one of the configured bearer tokens, except on the open routes.
pub async fn require_api_key(State(access): State<Arc<Access>>, request: Request<Body>, next: Next) -> Response {
    let path = request.uri().path();
    let open = always_open(path)
        || (access.open_health
            && (path == "/health" || path.starts_with("/health/") || path.starts_with("/v2/health/")))
        || (access.open_metrics && path == "/metrics");
    if open || access.api_keys.is_empty() {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match token {
        Some(token) if key_matches(&access.api_keys, token) => next.run(request).await,
        _ => {
            // Read (bounded) what the client is still sending, so it sees the 401.
            super::input::discard(request).await;
            ApiError::Unauthorized.into_response()
        }
    }
}

/// Compares in constant time, so response timing does not reveal how much of a key was right.
fn key_matches(keys: &[String], token: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    // Every key is compared (no early exit), each in time independent of where it differs.
    keys.iter().fold(false, |found, key| found | bool::from(key.as_bytes().ct_eq(token.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_become_labels() {
        assert_eq!(method_label(&Method::POST), "POST");
        let made_up = Method::from_bytes(b"FOO1").expect("a valid token");
        assert_eq!(method_label(&made_up), "other");
    }

    #[test]
    fn a_sane_client_request_id_is_kept_and_anything_else_replaced() {
        let with = |id: &str| Request::builder().header(REQUEST_ID, id).body(Body::empty()).expect("request");
        assert_eq!(request_id(&with("abc-123_x.y")), "abc-123_x.y");
        assert_ne!(request_id(&with("has space")), "has space");
        assert_eq!(request_id(&with(&"a".repeat(200))).len(), 32);
    }

    #[test]
    fn keys_match_exactly() {
        let keys = vec!["s3cret".to_owned(), "other".to_owned()];
        assert!(key_matches(&keys, "s3cret"));
        assert!(key_matches(&keys, "other"));
        assert!(!key_matches(&keys, "s3cre"));
        assert!(!key_matches(&keys, "s3cret2"));
        assert!(!key_matches(&keys, ""));
    }
}
