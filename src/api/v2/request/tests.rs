use base64::Engine as _;
use serde_json::json;

use super::*;

fn fast() -> ModelSpec {
    ModelSpec { tensor_shape: Some([3, 2, 2]), classes: 10, rows: true, max_classification: 10, job_ids: false }
}

fn accurate() -> ModelSpec {
    ModelSpec { tensor_shape: None, classes: 10, rows: false, max_classification: 5, job_ids: false }
}

fn tandem() -> ModelSpec {
    ModelSpec { tensor_shape: None, classes: 10, rows: true, max_classification: 10, job_ids: true }
}

fn body(value: serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&value).expect("JSON"))
}

fn error(body: &Bytes, header: Option<&str>, model: &ModelSpec) -> String {
    parse(body, header, model).expect_err("refused").to_string()
}

#[test]
fn base64_images_in_json_with_an_id_and_the_default_outputs() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"\xff\xd8jpeg");
    let request = body(json!({"id": "r1", "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
        "parameters": {"content_type": "base64"}, "data": [b64, [b64]]}]}));
    let parsed = parse(&request, None, &tandem()).expect("parsed");
    assert_eq!(parsed.id.as_deref(), Some("r1"));
    assert_eq!(parsed.batch, Batch::Images(vec![Bytes::from_static(b"\xff\xd8jpeg"); 2]));
    let names: Vec<_> = parsed.outputs.iter().map(|o| (o.name, o.classification, o.binary)).collect();
    assert_eq!(names, [(PROBABILITIES, None, false), (JOB_ID, None, false)]);
    // The accurate model gives its best classes by default.
    let parsed = parse(&request, None, &accurate()).expect("parsed");
    assert_eq!(parsed.outputs, [WantedOutput { name: PROBABILITIES, classification: Some(5), binary: false }]);
}

#[test]
fn binary_images_and_tensors_with_binary_outputs() {
    let images = binary::encode_bytes_elements([&b"one"[..], b"two"]);
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [2, 1], "datatype": "BYTES",
        "parameters": {"binary_data_size": images.len()}}], "parameters": {"binary_data_output": true},
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3, "binary_data": false}}]}))
    .expect("JSON");
    let mut request = header.clone();
    request.extend_from_slice(&images);
    let parsed = parse(&Bytes::from(request), Some(&header.len().to_string()), &fast()).expect("parsed");
    assert_eq!(parsed.batch.len(), 2);
    assert_eq!(parsed.outputs, [WantedOutput { name: PROBABILITIES, classification: Some(3), binary: false }]);

    let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let tensor = binary::encode_fp32(&values);
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32",
        "parameters": {"binary_data_size": tensor.len()}}], "parameters": {"binary_data_output": true}}))
    .expect("JSON");
    let mut request = header.clone();
    request.extend_from_slice(&tensor);
    let parsed = parse(&Bytes::from(request), Some(&header.len().to_string()), &fast()).expect("parsed");
    assert_eq!(parsed.batch, Batch::Tensors { n: 1, values });
    assert!(parsed.outputs[0].binary);
}

#[test]
fn json_tensors_flat_or_nested_must_fill_the_shape() {
    let flat: Vec<f32> = (0..12).map(|i| i as f32 / 10.0).collect();
    let request = body(json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": flat}]}));
    assert!(matches!(parse(&request, None, &fast()).expect("flat").batch, Batch::Tensors { n: 1, .. }));
    let nested = json!([[[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9], [10, 11]]]]);
    let request =
        body(json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": nested}]}));
    assert!(parse(&request, None, &fast()).is_ok());
    let short = body(json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [1, 2]}]}));
    assert!(error(&short, None, &fast()).contains("shape says 12 values, the data has 2"));
    let wrong = body(json!({"inputs": [{"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": []}]}));
    assert!(error(&wrong, None, &fast()).contains("[N, 3, 2, 2]"));
    let text = body(json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": ["x"]}]}));
    assert!(error(&text, None, &fast()).contains("numbers"));
    // Tensors go to the fast model only.
    assert!(error(&request, None, &tandem()).contains("encoded images only"));
}

#[test]
fn malformed_requests_are_refused_with_a_reason() {
    let one = json!({"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]});
    let cases = [
        (json!({"inputs": []}), "exactly one input"),
        (json!({"inputs": [one.clone(), one.clone()]}), "exactly one input"),
        (json!({"inputs": [{"name": "image", "shape": [0], "datatype": "BYTES", "data": []}]}), "1 to 64"),
        (json!({"inputs": [{"name": "image", "shape": [65], "datatype": "BYTES", "data": []}]}), "1 to 64"),
        (json!({"inputs": [{"name": "image", "shape": [-1], "datatype": "BYTES", "data": []}]}), "negative"),
        (
            json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["aGk="]}]}),
            "shape says 2 images",
        ),
        (
            json!({"inputs": [{"name": "image", "shape": [1, 2], "datatype": "BYTES", "data": ["aGk="]}]}),
            "[N] or [N, 1]",
        ),
        (json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}), "base64"),
        (json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [1]}]}), "base64 strings"),
        (json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}), "no data"),
        (
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="],
            "parameters": {"content_type": "str"}}]}),
            "content_type",
        ),
        (json!({"inputs": [{"name": "pixels", "shape": [1], "datatype": "INT8", "data": [1]}]}), "unknown input"),
        (json!({"inputs": [one.clone()], "outputs": [{"name": "logits"}]}), "unknown output"),
        (
            json!({"inputs": [one.clone()], "outputs": [{"name": "probabilities", "parameters": {"classification": 0}}]}),
            "classification must be 1 to 10",
        ),
        (
            json!({"inputs": [one.clone()], "outputs": [{"name": "probabilities", "parameters": {"binary_data": "yes"}}]}),
            "binary_data must be",
        ),
        (json!({"inputs": [one.clone()], "parameters": {"binary_data_output": 1}}), "binary_data_output"),
        (json!({"inputs": [one.clone()], "outputs": [{"name": "job_id"}]}), "unknown output"),
        (
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}),
            "no Inference-Header-Content-Length",
        ),
        (json!({"inputs": "image"}), "not valid JSON"),
    ];
    for (request, expected) in cases {
        let message = error(&body(request.clone()), None, &fast());
        assert!(message.contains(expected), "{request}: {message:?} lacks {expected:?}");
    }
    // The accurate model gives no rows: it needs a classification, at most its top-k.
    let rows = body(json!({"inputs": [one.clone()], "outputs": [{"name": "probabilities"}]}));
    assert!(error(&rows, None, &accurate()).contains("parameters.classification (1 to 5)"));
    let deep =
        body(json!({"inputs": [one], "outputs": [{"name": "probabilities", "parameters": {"classification": 6}}]}));
    assert!(error(&deep, None, &accurate()).contains("1 to 5"));
}

#[test]
fn the_binary_header_must_match_the_body() {
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
        "parameters": {"binary_data_size": 8}}]}))
    .expect("JSON");
    let mut request = header.clone();
    request.extend_from_slice(&binary::encode_bytes_elements([&b"abcd"[..]]));
    let request = Bytes::from(request);
    let exact = header.len().to_string();
    assert!(parse(&request, Some(&exact), &fast()).is_ok());
    // Too small: the JSON is cut; too large: past the body or into the binary part.
    assert!(error(&request, Some(&(header.len() - 1).to_string()), &fast()).contains("not valid JSON"));
    assert!(error(&request, Some("100000"), &fast()).contains("the body has only"));
    assert!(error(&request, Some(&(header.len() + 2).to_string()), &fast()).contains("not valid JSON"));
    assert!(error(&request, Some("-5"), &fast()).contains("not a byte count"));
    // Missing: the binary part is read as JSON.
    assert!(error(&request, None, &fast()).contains("not valid JSON"));
    // binary_data_size that disagrees with the binary part.
    let long = Bytes::from([&request[..], b"xx"].concat());
    assert!(error(&long, Some(&exact), &fast()).contains("2 bytes of binary data"));
    let cut = request.slice(..request.len() - 1);
    assert!(error(&cut, Some(&exact), &fast()).contains("only 7 bytes"));
}
