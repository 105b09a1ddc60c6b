//! Entry points for fuzzing the code that parses untrusted bytes.
//!
//! Shared by the `cargo fuzz` targets in `fuzz/` (nightly, coverage-guided, for long runs) and
//! the bounded property-test pass in `tests/fuzz.rs` that CI runs on stable. Each function
//! must return normally for any input: a panic or an allocation past the limits is a bug.

use axum::body::Body;
use axum::http::Request;

use crate::api::input;
use crate::pipeline::{self, PreprocessConfig};

/// Body limit used while fuzzing the request parsers.
pub const MAX_BODY: usize = 1 << 20;

/// A pixel limit small enough that no fuzz input can make the decoder allocate much.
pub const MAX_PIXELS: u64 = 1 << 20;

/// `POST /predict` body parsing with the given content type: JSON + base64, raw, multipart.
pub fn request_body(content_type: &str, body: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else { return };
    let request = Request::builder().method("POST").uri("/predict").header("content-type", content_type);
    let Ok(request) = request.body(Body::from(body.to_vec())) else { return };
    let _ = runtime.block_on(input::read_image(request, MAX_BODY));
}

/// Base64 as accepted in `image_data` (with or without a data-URL prefix).
pub fn base64_text(text: &[u8]) {
    let _ = input::decode_base64(&String::from_utf8_lossy(text));
}

/// The whole image pipeline: decode, orient, resize, crop, normalize.
pub fn image(bytes: &[u8]) {
    let config = PreprocessConfig { resize: 64, crop: 56, max_pixels: MAX_PIXELS, ..PreprocessConfig::default() };
    let _ = pipeline::preprocess(bytes, &config);
}
