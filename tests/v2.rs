//! The Open Inference Protocol routes' edges, against a real `tandem serve` over HTTP: the
//! binary header's mismatches and the shared limits give the protocol's `{"error": "..."}`
//! with the right status, never a dropped connection; the v2 health routes are open like
//! `/health`, inference needs the API key. (What a third-party client sees is
//! scripts/v2-client-test.sh, with NVIDIA's tritonclient.)

mod common;

use common::{Tandem, agent, images_dir};
use serde_json::{Value, json};

fn infer(url: &str, header: Option<usize>, body: &[u8], key: Option<&str>) -> (u16, Value) {
    let mut request = agent().post(url).header("content-type", "application/octet-stream");
    if let Some(length) = header {
        request = request.header("inference-header-content-length", &length.to_string());
    }
    if let Some(key) = key {
        request = request.header("authorization", &format!("Bearer {key}"));
    }
    common::read_json(request.send(body).expect("POST"))
}

/// A binary request for one encoded image: its JSON header and the whole body.
fn binary_request(image: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut element = (image.len() as u32).to_le_bytes().to_vec();
    element.extend_from_slice(image);
    let header = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
        "parameters": {"binary_data_size": element.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]});
    let header = serde_json::to_vec(&header).expect("JSON");
    let body = [header.clone(), element].concat();
    (header, body)
}

/// What is sent (a name, the header, the body) and what must come back (status, words).
type Case = (&'static str, Option<usize>, Vec<u8>, u16, &'static str);

fn error_text(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("not the protocol's error shape: {body}"))
}

#[test]
fn binary_header_mismatches_and_limits_are_clear_errors() {
    let server = Tandem::serve(&["--max-body", "200000"]);
    let url = server.url("/v2/models/mobilenet_v2/infer");
    let image = std::fs::read(images_dir().join("sample_01.jpg")).expect("sample image");
    let (header, body) = binary_request(&image);

    let (status, answer) = infer(&url, Some(header.len()), &body, None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["data"][0].as_str().and_then(|s| s.split(':').nth(1)), Some("817"), "{answer}");

    let text = binary_request(b"plain text, not an image");
    // A GIF header that claims 28205x29807 pixels.
    let huge = binary_request(b"GIF89a-not-really");
    let cases: Vec<Case> = vec![
        ("header past the body", Some(body.len() + 1), body.clone(), 400, "the body has only"),
        ("header short of the JSON", Some(header.len() - 3), body.clone(), 400, "not valid JSON"),
        ("header into the binary part", Some(header.len() + 4), body.clone(), 400, "not valid JSON"),
        ("no header, binary data", None, body.clone(), 400, "not valid JSON"),
        (
            "binary part cut short",
            Some(header.len()),
            body[..body.len() - 10].to_vec(),
            400,
            "bytes of binary data are left",
        ),
        (
            "bytes past binary_data_size",
            Some(header.len()),
            [&body[..], b"junk"].concat(),
            400,
            "no input's binary_data_size",
        ),
        ("over --max-body", Some(header.len()), vec![b' '; 300_000], 413, "larger than 200000 bytes"),
        ("not an image", Some(text.0.len()), text.1.clone(), 400, "not an image"),
        ("over the pixel bound", Some(huge.0.len()), huge.1.clone(), 413, "over the limit of 64000000 pixels"),
    ];
    for (what, header, body, expected, text) in cases {
        let (status, answer) = infer(&url, header, &body, None);
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(error_text(&answer).contains(text), "{what}: {answer}");
    }
    // A header that is not a number at all.
    let response =
        agent().post(&url).header("inference-header-content-length", "twelve").send(&body[..]).expect("POST");
    let (status, answer) = common::read_json(response);
    assert_eq!(status, 400);
    assert!(error_text(&answer).contains("not a byte count"), "{answer}");

    let (status, answer) = infer(&server.url("/v2/models/resnet9000/infer"), None, b"{}", None);
    assert_eq!(status, 404);
    assert!(error_text(&answer).contains("mobilenet_v2"), "the known models are named: {answer}");
}

#[test]
fn with_an_api_key_health_stays_open_and_inference_needs_the_key() {
    let server = Tandem::serve(&["--api-key", "s3cret", "--max-inflight", "1"]);
    for path in ["/v2/health/live", "/v2/health/ready"] {
        let response = agent().get(&server.url(path)).call().expect("GET");
        assert_eq!(response.status().as_u16(), 200, "{path} is open like /health");
    }
    let (status, _) = common::read_json(agent().get(&server.url("/v2/models/tandem")).call().expect("GET"));
    assert_eq!(status, 401);
    let image = std::fs::read(images_dir().join("sample_02.jpg")).expect("sample image");
    let (header, body) = binary_request(&image);
    let url = server.url("/v2/models/tandem/infer");
    assert_eq!(infer(&url, Some(header.len()), &body, None).0, 401);
    let (status, answer) = infer(&url, Some(header.len()), &body, Some("s3cret"));
    assert_eq!(status, 200, "{answer}");
    let job_id = answer["parameters"]["job_id"].as_str().expect("the job id in the parameters");
    assert_eq!(answer["parameters"]["status_url"], format!("/job/{job_id}"));

    // Each image takes one of --max-inflight's permits: two in one request can never be taken
    // with a bound of 1, so that is a 400 (no Retry-After: retrying would not help).
    let b64 = common::base64(&image);
    let two = json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64, b64]}]});
    let response = agent()
        .post(&url)
        .header("authorization", "Bearer s3cret")
        .header("content-type", "application/json")
        .send(two.to_string().as_bytes())
        .expect("POST");
    assert!(response.headers().get("retry-after").is_none());
    let (status, answer) = common::read_json(response);
    assert_eq!(status, 400, "{answer}");
    assert!(error_text(&answer).contains("a batch of 2 images is more than this server takes at once"), "{answer}");
}
