//! An inference's answer as output tensors, in JSON or with the binary-data extension.

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use uuid::Uuid;

use super::binary::{self, HEADER_LENGTH};
use super::request::{JOB_ID, PROBABILITIES, WantedOutput};
use super::wire::{InferResponse, OutputData, Parameters, ResponseOutput};
use crate::engine::Prediction;
use crate::labels::Labels;

/// What a model answered for each image of a request.
pub struct Answers<'a> {
    pub predictions: &'a [Prediction],
    /// The `tandem` model's jobs, one per image (`None`: not queued).
    pub job_ids: Option<&'a [Option<Uuid>]>,
    /// Names for the classes of a whole row (for a classification deeper than `top_k`).
    pub labels: Option<&'a Labels>,
}

/// The outputs `wanted`, from `answers`.
pub fn outputs(wanted: &[WantedOutput], answers: &Answers<'_>) -> Vec<(ResponseOutput, bool)> {
    let n = answers.predictions.len();
    wanted
        .iter()
        .map(|output| {
            let (shape, datatype, data) = match (output.name, output.classification) {
                (PROBABILITIES, Some(k)) => {
                    // As many classes for every image: a stored answer may hold fewer than asked.
                    let k = answers.predictions.iter().map(|p| available(p, k, answers.labels)).min().unwrap_or(k);
                    let strings: Vec<String> =
                        answers.predictions.iter().flat_map(|p| best_classes(p, k, answers.labels)).collect();
                    (vec![n, k], "BYTES", OutputData::Strings(strings))
                }
                (PROBABILITIES, None) => {
                    let rows: Vec<f32> =
                        answers.predictions.iter().flat_map(|p| p.probabilities.iter().flatten().copied()).collect();
                    let classes = rows.len().checked_div(n).unwrap_or(0);
                    (vec![n, classes], "FP32", OutputData::Fp32(rows))
                }
                _ => {
                    debug_assert_eq!(output.name, JOB_ID);
                    let ids = answers.job_ids.unwrap_or_default();
                    let ids: Vec<String> =
                        ids.iter().map(|id| id.map(|id| id.to_string()).unwrap_or_default()).collect();
                    (vec![ids.len()], "BYTES", OutputData::Strings(ids))
                }
            };
            let tensor = ResponseOutput {
                name: output.name.to_owned(),
                shape,
                datatype: datatype.to_owned(),
                parameters: None,
                data: Some(data),
            };
            (tensor, output.binary)
        })
        .collect()
}

/// How many of the `k` best classes `prediction` can give.
fn available(prediction: &Prediction, k: usize, labels: Option<&Labels>) -> usize {
    match (&prediction.probabilities, labels) {
        (Some(row), Some(_)) => k.min(row.len()),
        _ => k.min(prediction.top_k.len()),
    }
}

/// Triton's classification strings, `"score:index:label"`, best first: from the whole row
/// when the prediction has it, else from its `top_k`.
fn best_classes(prediction: &Prediction, k: usize, labels: Option<&Labels>) -> Vec<String> {
    let text = |score: f32, index: usize, label: &str| format!("{score:.6}:{index}:{label}");
    match (&prediction.probabilities, labels) {
        (Some(row), Some(labels)) => {
            let mut order: Vec<usize> = (0..row.len()).collect();
            if k < order.len() {
                order.select_nth_unstable_by(k, |&a, &b| row[b].total_cmp(&row[a]));
                order.truncate(k);
            }
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order.into_iter().take(k).map(|i| text(row[i], i, &labels.name(i))).collect()
        }
        _ => prediction.top_k.iter().take(k).map(|c| text(c.score, c.class_index, &c.label)).collect(),
    }
}

/// The answer: JSON, or (when any output is binary) the JSON header followed by the binary
/// outputs in order, its length in `Inference-Header-Content-Length`.
pub fn encode(
    model_name: &str,
    id: Option<String>,
    parameters: Option<Parameters>,
    outputs: Vec<(ResponseOutput, bool)>,
) -> Response {
    let mut binary_part = Vec::new();
    let outputs: Vec<ResponseOutput> = outputs
        .into_iter()
        .map(|(mut output, binary)| {
            if binary {
                let bytes = match output.data.take() {
                    Some(OutputData::Fp32(values)) => binary::encode_fp32(&values),
                    Some(OutputData::Strings(strings)) => {
                        binary::encode_bytes_elements(strings.iter().map(|s| s.as_bytes()))
                    }
                    None => Vec::new(),
                };
                let size = Parameters::from([("binary_data_size".to_owned(), Value::from(bytes.len()))]);
                output.parameters = Some(size);
                binary_part.extend_from_slice(&bytes);
            }
            output
        })
        .collect();
    let answer =
        InferResponse { model_name: model_name.to_owned(), model_version: "1".into(), id, parameters, outputs };
    if binary_part.is_empty() && answer.outputs.iter().all(|o| o.data.is_some()) {
        return Json(answer).into_response();
    }
    let Ok(mut body) = serde_json::to_vec(&answer) else {
        return crate::api::error::ApiError::Internal("cannot write the answer".into()).into_response();
    };
    let header_length = body.len();
    body.extend_from_slice(&binary_part);
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(HEADER_LENGTH, HeaderValue::from(header_length));
    response
}
