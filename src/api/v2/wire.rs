//! The Open Inference Protocol's JSON bodies (`kserve/open-inference-protocol`,
//! `specification/protocol/inference_rest.md`), as named types: what `/v2` reads and sends.
//!
//! Tensor data stays `serde_json::Value` on the way in (the protocol allows it flat or nested,
//! and the datatype says how to read it); on the way out it is one of [`OutputData`]'s typed
//! forms, so a row of probabilities is written straight from its `f32`s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A request's, an input's or an output's `parameters`: names to scalars.
pub type Parameters = BTreeMap<String, Value>;

/// `POST /v2/models/{model}/infer`'s JSON (with the binary-data extension, the body's first
/// `Inference-Header-Content-Length` bytes).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `binary_data_output: true`: every output in binary (unless the output says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// Exactly one: `image` (`BYTES`, encoded images) or `input` (`FP32` `[N,3,H,W]`).
    #[schema(min_items = 1, max_items = 1)]
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted, and how; absent: all of the model's, in JSON (or as
    /// `binary_data_output` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor of a request.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct RequestInput {
    /// `image` or `input`.
    #[schema(example = "image")]
    pub name: String,
    /// Its shape: `[N]` (or `[N, 1]`) images for `BYTES`, `[N, 3, H, W]` for `FP32`; N is 1 to 64.
    #[schema(min_items = 1, max_items = 4)]
    pub shape: Vec<i64>,
    /// `BYTES` or `FP32`.
    pub datatype: String,
    /// `binary_data_size`: the input's bytes are in the binary part of the body;
    /// `content_type: "base64"` (the default for `BYTES` in JSON): its strings are base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// The elements, row-major, flat or nested: base64 strings for `BYTES`, numbers for `FP32`.
    /// Absent when the data is binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// One output a request asks for.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct RequestOutput {
    /// `probabilities`, or for the `tandem` model also `job_id`.
    pub name: String,
    /// `binary_data: true|false`; `classification: K` (Triton's classification extension): the
    /// K best classes as `"score:index:label"` strings instead of the probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
}

/// An inference's answer.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    /// The request's `id`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// For the `tandem` model: `job_id` (the jobs queued for the accurate model, one per image,
    /// comma-separated) and, for one image, `status_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor of an answer.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ResponseOutput {
    pub name: String,
    pub shape: Vec<usize>,
    /// `FP32` (probabilities) or `BYTES` (classification strings, job ids).
    pub datatype: String,
    /// `binary_data_size` when the data is in the binary part of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// The elements, row-major and flat; absent when binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<OutputData>,
}

/// An output's elements in JSON.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OutputData {
    Fp32(Vec<f32>),
    Strings(Vec<String>),
}

/// `GET /v2`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    /// The protocol extensions served: `binary_tensor_data`, `classification`.
    pub extensions: Vec<String>,
}

/// `GET /v2/models/{model}`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    /// `onnxruntime_onnx` for the two models, `tandem` for the pattern itself.
    pub platform: String,
    /// What a request may send: one of these per request.
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// A tensor's name, datatype and shape (-1: any size).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Every `/v2` error: `{"error": "<message>"}`, as the protocol has it.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct V2ErrorBody {
    pub error: String,
}

/// A body with the binary-data extension: `Inference-Header-Content-Length` bytes of JSON (an
/// [`InferRequest`] or [`InferResponse`]), then the tensors' bytes in order.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct BinaryBody(Vec<u8>);
