//! An inference request's body, from untrusted bytes to what the model will run: the JSON
//! (and binary part), its one input as encoded images or as a preprocessed tensor, and the
//! outputs wanted. Pure (no model, no queue), so the fuzz targets run all of it.

use bytes::Bytes;
use serde_json::Value;

use super::binary::{self, BinaryError};
use super::wire::{InferRequest, Parameters, RequestInput};
use crate::api::input;

/// Images in one request at most (each also takes one in-flight permit).
pub const MAX_BATCH: usize = 64;

/// The input names: encoded images, or a preprocessed tensor.
pub const IMAGE_INPUT: &str = "image";
pub const TENSOR_INPUT: &str = "input";
/// The output names.
pub const PROBABILITIES: &str = "probabilities";
pub const JOB_ID: &str = "job_id";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Binary(#[from] BinaryError),
    #[error("the request is not valid JSON for an inference request: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

/// What the model being asked takes and gives.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// `[3, H, W]` of an `FP32` input, if the model takes tensors.
    pub tensor_shape: Option<[usize; 3]>,
    /// Classes in a row of probabilities.
    pub classes: usize,
    /// Whether whole rows of probabilities can be given (else only `classification` up to
    /// `max_classification`).
    pub rows: bool,
    pub max_classification: usize,
    /// Whether the model answers with job ids (the `tandem` model).
    pub job_ids: bool,
}

/// The request's one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Batch {
    /// Encoded images (JPEG, PNG, ...), one per element.
    Images(Vec<Bytes>),
    /// `n` preprocessed images laid end to end.
    Tensors { n: usize, values: Vec<f32> },
}

impl Batch {
    pub fn len(&self) -> usize {
        match self {
            Batch::Images(images) => images.len(),
            Batch::Tensors { n, .. } => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One output to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedOutput {
    pub name: &'static str,
    /// The K best classes as `"score:index:label"` strings instead of the row.
    pub classification: Option<usize>,
    pub binary: bool,
}

/// A request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub id: Option<String>,
    pub batch: Batch,
    pub outputs: Vec<WantedOutput>,
}

/// Reads a request body (`header`: its `Inference-Header-Content-Length`) for `model`.
pub fn parse(body: &Bytes, header: Option<&str>, model: &ModelSpec) -> Result<Parsed, RequestError> {
    let (json, binary) = binary::split(body, header)?;
    let request: InferRequest = serde_json::from_slice(&json).map_err(|e| RequestError::Json(e.to_string()))?;
    let sizes: Vec<(String, Option<Value>)> = request
        .inputs
        .iter()
        .map(|i| (short(&i.name), param(i.parameters.as_ref(), "binary_data_size").cloned()))
        .collect();
    let mut parts = binary::take_parts(binary.as_ref(), &sizes)?;
    let [input] = &request.inputs[..] else {
        return Err(invalid(format!(
            "a request has exactly one input (`{IMAGE_INPUT}`: BYTES, or `{TENSOR_INPUT}`: FP32), got {}",
            request.inputs.len()
        )));
    };
    let batch = read_input(input, parts.pop().flatten(), model)?;
    let outputs = wanted_outputs(&request, model)?;
    Ok(Parsed { id: request.id, batch, outputs })
}

/// At most 100 characters of something a client sent, for an error message.
pub fn short(text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    match text.char_indices().nth(100) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

fn invalid(message: String) -> RequestError {
    RequestError::Invalid(message)
}

fn param<'a>(parameters: Option<&'a Parameters>, name: &str) -> Option<&'a Value> {
    parameters.and_then(|p| p.get(name))
}

/// The input's shape as sizes, each at least 0, with their product bounded.
fn shape(input: &RequestInput) -> Result<Vec<usize>, RequestError> {
    if input.shape.len() > 8 {
        return Err(invalid(format!("input {}: shape has {} dimensions", short(&input.name), input.shape.len())));
    }
    let dims: Option<Vec<usize>> = input.shape.iter().map(|&d| usize::try_from(d).ok()).collect();
    let dims = dims.ok_or_else(|| {
        invalid(format!("input {:?}: shape {:?} has a negative size", short(&input.name), input.shape))
    })?;
    Ok(dims)
}

fn read_input(input: &RequestInput, binary: Option<Bytes>, model: &ModelSpec) -> Result<Batch, RequestError> {
    let dims = shape(input)?;
    let n = dims.first().copied().unwrap_or(0);
    if n == 0 || n > MAX_BATCH {
        return Err(invalid(format!(
            "input {:?}: the batch (shape[0]) must be 1 to {MAX_BATCH}, got {:?}",
            short(&input.name),
            input.shape
        )));
    }
    match (input.name.as_str(), input.datatype.as_str()) {
        (IMAGE_INPUT, "BYTES") => {
            if !(dims.len() == 1 || (dims.len() == 2 && dims[1] == 1)) {
                return Err(invalid(format!(
                    "input {IMAGE_INPUT:?}: shape must be [N] or [N, 1], got {:?}",
                    input.shape
                )));
            }
            let images = match binary {
                Some(data) => binary::bytes_elements(&data, n)?,
                None => json_images(input, n)?,
            };
            if images.len() != n {
                return Err(invalid(format!(
                    "input {IMAGE_INPUT:?}: shape says {n} images, the data has {}",
                    images.len()
                )));
            }
            Ok(Batch::Images(images))
        }
        (TENSOR_INPUT, "FP32") => {
            let Some(per_image) = model.tensor_shape else {
                return Err(invalid(format!(
                    "this model takes encoded images only (`{IMAGE_INPUT}`, BYTES): its jobs carry the image to the accurate tier"
                )));
            };
            if dims[1..] != per_image {
                return Err(invalid(format!(
                    "input {TENSOR_INPUT:?}: shape must be [N, {}, {}, {}], got {:?}",
                    per_image[0], per_image[1], per_image[2], input.shape
                )));
            }
            let expected = n * per_image.iter().product::<usize>();
            let values = match binary {
                Some(data) => binary::fp32_elements(&data)?,
                None => json_numbers(input, expected)?,
            };
            if values.len() != expected {
                return Err(invalid(format!(
                    "input {TENSOR_INPUT:?}: shape says {expected} values, the data has {}",
                    values.len()
                )));
            }
            Ok(Batch::Tensors { n, values })
        }
        (name, datatype) => Err(invalid(format!(
            "unknown input {:?} ({}): send `{IMAGE_INPUT}` (BYTES: encoded images) or `{TENSOR_INPUT}` (FP32: [N, 3, H, W])",
            short(name),
            short(datatype)
        ))),
    }
}

/// `BYTES` in JSON: base64 strings, flat or nested.
fn json_images(input: &RequestInput, n: usize) -> Result<Vec<Bytes>, RequestError> {
    match param(input.parameters.as_ref(), "content_type") {
        None => {}
        Some(Value::String(kind)) if kind == "base64" => {}
        Some(other) => {
            return Err(invalid(format!(
                "input {IMAGE_INPUT:?}: content_type {} is not supported: images in JSON are base64",
                short(other)
            )));
        }
    }
    let data = input.data.as_ref().ok_or_else(|| invalid(format!("input {IMAGE_INPUT:?} has no data")))?;
    let mut strings = Vec::new();
    flatten(data, &mut |v| match v {
        Value::String(s) => {
            strings.push(s);
            Ok(())
        }
        _ => Err(invalid(format!("input {IMAGE_INPUT:?}: BYTES data in JSON are base64 strings"))),
    })?;
    // Counted before anything is decoded.
    if strings.len() != n {
        return Err(invalid(format!("input {IMAGE_INPUT:?}: shape says {n} images, the data has {}", strings.len())));
    }
    strings
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            input::decode_base64(s)
                .map(Bytes::from)
                .map_err(|e| invalid(format!("input {IMAGE_INPUT:?}, element {i}: {e}")))
        })
        .collect()
}

/// `FP32` in JSON: numbers, flat or nested; past `expected` they are counted, not kept.
fn json_numbers(input: &RequestInput, expected: usize) -> Result<Vec<f32>, RequestError> {
    let data = input.data.as_ref().ok_or_else(|| invalid(format!("input {TENSOR_INPUT:?} has no data")))?;
    // Grown by what the data really holds, not by what the shape claims.
    let mut values = Vec::with_capacity(expected.min(1 << 16));
    let mut count = 0usize;
    flatten(data, &mut |v| {
        let x = v.as_f64().ok_or_else(|| invalid(format!("input {TENSOR_INPUT:?}: FP32 data are numbers")))?;
        count += 1;
        if values.len() < expected {
            values.push(x as f32);
        }
        Ok(())
    })?;
    if count != expected {
        return Err(invalid(format!("input {TENSOR_INPUT:?}: shape says {expected} values, the data has {count}")));
    }
    Ok(values)
}

/// Visits the leaves of nested arrays (the protocol allows tensors flat or nested).
fn flatten<'a>(
    value: &'a Value,
    visit: &mut impl FnMut(&'a Value) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|item| flatten(item, visit)),
        leaf => visit(leaf),
    }
}

fn wanted_outputs(request: &InferRequest, model: &ModelSpec) -> Result<Vec<WantedOutput>, RequestError> {
    let all_binary = match param(request.parameters.as_ref(), "binary_data_output") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(format!("parameters.binary_data_output must be true or false, got {}", short(other))));
        }
    };
    let names: &[&'static str] = if model.job_ids { &[PROBABILITIES, JOB_ID] } else { &[PROBABILITIES] };
    let Some(asked) = &request.outputs else {
        // Everything the model gives; a model without rows gives its best classes.
        let classification = (!model.rows).then_some(model.max_classification);
        return Ok(names
            .iter()
            .map(|&name| WantedOutput {
                name,
                classification: if name == PROBABILITIES { classification } else { None },
                binary: all_binary,
            })
            .collect());
    };
    asked
        .iter()
        .map(|output| {
            let name = names.iter().copied().find(|&n| n == output.name).ok_or_else(|| {
                invalid(format!("unknown output {:?}: this model gives {names:?}", short(&output.name)))
            })?;
            let binary = match param(output.parameters.as_ref(), "binary_data") {
                None => all_binary,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(invalid(format!(
                        "output {name:?}: binary_data must be true or false, got {}",
                        short(other)
                    )));
                }
            };
            let classification = match param(output.parameters.as_ref(), "classification") {
                None => None,
                Some(k) => Some(classification(name, k, model)?),
            };
            if name == PROBABILITIES && classification.is_none() && !model.rows {
                return Err(invalid(format!(
                    "this model's answers come from workers, which keep its {} best classes: ask for {PROBABILITIES:?} \
                     with parameters.classification (1 to {})",
                    model.max_classification, model.max_classification
                )));
            }
            Ok(WantedOutput { name, classification, binary })
        })
        .collect()
}

fn classification(name: &str, k: &Value, model: &ModelSpec) -> Result<usize, RequestError> {
    if name != PROBABILITIES {
        return Err(invalid(format!("output {name:?} has no classification")));
    }
    let most = if model.rows { model.classes } else { model.max_classification };
    match k.as_u64().and_then(|k| usize::try_from(k).ok()) {
        Some(k) if (1..=most).contains(&k) => Ok(k),
        _ => Err(invalid(format!("output {name:?}: classification must be 1 to {most}, got {k}"))),
    }
}

#[cfg(test)]
mod tests;
