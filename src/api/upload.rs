//! Receiving a request body within the bounds every upload shares: a slot among
//! `--max-uploads`, `--upload-memory` charged as the bytes arrive (so a client that declares a
//! large body and trickles it holds only what it sent), `--max-body` and `--body-timeout`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::{AppState, input};

/// Bodies past this many bytes are parsed on the decode pool, off the runtime's threads: the
/// work is in proportion to the body, and must not hold up `/health` and other requests.
pub(super) const PARSE_OFF_RUNTIME: usize = 64 * 1024;

/// What a body is read as.
pub(super) enum Form {
    /// One of `POST /predict`'s three image forms, by `Content-Type`.
    Image,
    /// Whatever it is, as bytes (the Open Inference Protocol's JSON or binary bodies).
    AsIs,
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
pub(super) async fn receive(state: &AppState, request: Request<Body>, form: Form) -> Result<input::Received, ApiError> {
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
    let read = async {
        match form {
            Form::Image => input::receive(request, limits.max_body, &mut admit).await,
            Form::AsIs => input::receive_as_is(request, limits.max_body, &mut admit).await.map(input::Received::Raw),
        }
    };
    tokio::time::timeout(limits.body_timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout(limits.body_timeout.as_secs_f64()))?
}

/// Bytes in whole KiB, rounded up: the unit `--upload-memory` is counted in.
pub(super) fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}
