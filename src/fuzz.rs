//! Entry points for fuzzing the code that parses untrusted bytes.
//!
//! Shared by the `cargo fuzz` targets in `fuzz/` (nightly, coverage-guided, for long runs) and
//! the bounded property-test pass in `tests/fuzz.rs` that CI runs on stable. Each function
//! must return normally for any input: a panic or an allocation past the limits is a bug.

use axum::body::Body;
use axum::http::Request;

use crate::api::input;
use crate::api::v2::request::{self as v2_request, ModelSpec};
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

/// An Open Inference Protocol request body, with the binary-data extension: the first two
/// bytes pick the `Inference-Header-Content-Length` (absent, or a length within the body), the
/// rest is the body. Parsed for a fast model (tensors and rows) and for the accurate one.
pub fn v2_request(data: &[u8]) {
    let (choice, body) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (0, data),
    };
    let header = (choice != u16::MAX).then(|| (usize::from(choice) % (body.len() + 2)).to_string());
    let body = bytes::Bytes::copy_from_slice(body);
    let fast =
        ModelSpec { tensor_shape: Some([3, 4, 4]), classes: 10, rows: true, max_classification: 10, job_ids: false };
    let accurate = ModelSpec { tensor_shape: None, classes: 10, rows: false, max_classification: 5, job_ids: true };
    for model in [&fast, &accurate] {
        let _ = v2_request::parse(&body, header.as_deref(), model);
        let _ = v2_request::parse(&body, None, model);
    }
}
