//! Every `/v2` error, mapped once to its status and the protocol's `{"error": "<message>"}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::request::RequestError;
use super::wire::V2ErrorBody;
use crate::api::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum V2Error {
    #[error("unknown model {name:?}: this server has {known}")]
    ModelNotFound { name: String, known: String },
    #[error("model {model:?} has no version {version:?}: it has version 1")]
    VersionNotFound { model: String, version: String },
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The accurate model's job failed or was canceled.
    #[error("{0}")]
    JobFailed(String),
    /// The accurate model's job could not be queued, or did not end within the request.
    #[error("{0}")]
    NotRefined(String),
    /// What every route shares: body bounds, overload, the fast model, the queue.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl V2Error {
    pub fn status(&self) -> StatusCode {
        match self {
            V2Error::ModelNotFound { .. } | V2Error::VersionNotFound { .. } => StatusCode::NOT_FOUND,
            V2Error::Request(_) => StatusCode::BAD_REQUEST,
            V2Error::JobFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            V2Error::NotRefined(_) => StatusCode::SERVICE_UNAVAILABLE,
            V2Error::Api(err) => err.status(),
        }
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "v2 request failed");
        }
        let retry = matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
        let mut response = (status, Json(V2ErrorBody { error: self.to_string() })).into_response();
        if retry {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
