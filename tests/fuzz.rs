//! A bounded fuzz pass over everything that parses untrusted bytes, on stable Rust.
//!
//! Random bytes, and valid inputs mutated at random (flipped, truncated, spliced), go through
//! the same entry points as the `cargo fuzz` targets in `fuzz/`. Passing means: no panic, and
//! every call returns (allocations are bounded by the body and pixel limits). Set
//! `PROPTEST_CASES` for a longer run.

mod common;

use std::io::Cursor;

use proptest::prelude::*;
use tandem::fuzz;

/// Valid images in each supported format, as mutation seeds.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![std::fs::read(common::images_dir().join("sample_10.jpg")).expect("grayscale jpeg")];
    let rgb = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, ((x + y) * 3) as u8]));
    for format in [image::ImageFormat::Png, image::ImageFormat::Gif, image::ImageFormat::Bmp, image::ImageFormat::WebP]
    {
        let mut out = Cursor::new(Vec::new());
        if image::DynamicImage::ImageRgb8(rgb.clone()).write_to(&mut out, format).is_ok() {
            seeds.push(out.into_inner());
        }
    }
    seeds
}

/// Applies (position, value) edits, then truncates: cheap structure-aware-enough mutations.
fn mutate(seed: &[u8], edits: &[(usize, u8)], keep: usize) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for &(at, value) in edits {
        if !bytes.is_empty() {
            let at = at % bytes.len();
            bytes[at] = value;
        }
    }
    let keep = if bytes.is_empty() { 0 } else { keep % (bytes.len() + 1) };
    bytes.truncate(keep.max(bytes.len() / 8));
    bytes
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_break_the_image_pipeline(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        fuzz::image(&bytes);
    }

    #[test]
    fn mutated_images_never_break_the_image_pipeline(
        seed in 0usize..5,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..12),
        keep in any::<usize>(),
    ) {
        let seeds = seeds();
        let bytes = mutate(&seeds[seed % seeds.len()], &edits, keep);
        fuzz::image(&bytes);
        fuzz::request_body("image/jpeg", &bytes);
    }

    #[test]
    fn any_json_body_is_answered(text in ".{0,300}", junk in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzz::request_body("application/json", text.as_bytes());
        fuzz::request_body("application/json", &junk);
        let wrapped = serde_json::json!({"image_data": text}).to_string();
        fuzz::request_body("application/json", wrapped.as_bytes());
    }

    #[test]
    fn any_base64_is_answered(text in "(data:[a-z/]{0,12};base64,)?[A-Za-z0-9+/=\\s]{0,400}") {
        fuzz::base64_text(text.as_bytes());
    }

    #[test]
    fn any_multipart_body_is_answered(
        boundary in "[A-Za-z0-9'()+_,./:=?-]{1,70}",
        name in "[a-z]{0,8}",
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        cut in any::<usize>(),
    ) {
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"f\"\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&payload);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let cut = cut % (body.len() + 1);
        let content_type = format!("multipart/form-data; boundary={boundary}");
        fuzz::request_body(&content_type, &body);
        fuzz::request_body(&content_type, &body[..cut]);
        fuzz::request_body("multipart/form-data", &payload);
    }

    #[test]
    fn any_v2_body_is_answered(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz::v2_request(&data);
    }

    #[test]
    fn mutated_v2_requests_are_answered(
        seed in 0usize..3,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        keep in any::<usize>(),
    ) {
        let seeds = v2_seeds();
        let seed = &seeds[seed % seeds.len()];
        fuzz::v2_request(&mutate(seed, &edits, keep));
        fuzz::v2_request(seed);
    }
}

/// Valid v2 requests (the header-length choice in the first two bytes), as mutation seeds:
/// binary images, a binary tensor, JSON base64 images.
fn v2_seeds() -> Vec<Vec<u8>> {
    let with_header = |json: serde_json::Value, binary: &[u8]| {
        let json = serde_json::to_vec(&json).expect("JSON");
        [&(json.len() as u16).to_le_bytes()[..], &json, binary].concat()
    };
    let images: Vec<u8> = [&3u32.to_le_bytes()[..], b"abc", &1u32.to_le_bytes(), b"d"].concat();
    let tensor: Vec<u8> = (0..48).flat_map(|i| (i as f32).to_le_bytes()).collect();
    vec![
        with_header(
            serde_json::json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                "parameters": {"binary_data_size": images.len()}}],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 2, "binary_data": true}}]}),
            &images,
        ),
        with_header(
            serde_json::json!({"inputs": [{"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32",
                "parameters": {"binary_data_size": tensor.len()}}], "parameters": {"binary_data_output": true}}),
            &tensor,
        ),
        [
            &u16::MAX.to_le_bytes()[..],
            br#"{"id":"x","inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["aGk="]}]}"#,
        ]
        .concat(),
    ]
}
