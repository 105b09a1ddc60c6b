//! Inputs built to cost a server far more than they cost the client, against a real
//! `tandem serve`: each is refused quickly, with the right status, and leaves no job behind.

mod common;

use std::io::Cursor;
use std::time::{Duration, Instant};

use common::{Tandem, get_json, post_bytes};

/// A small JPEG with `extra` more scans after its own.
fn jpeg_with_scans(extra: usize) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(64, 64))
        .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .expect("encode");
    let mut bytes = jpeg[..jpeg.len() - 2].to_vec();
    for _ in 0..extra {
        bytes.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0x00]);
    }
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}

#[test]
fn scan_bombs_and_oversized_gif_frames_are_refused_fast() {
    let server = Tandem::serve(&[]);
    let url = server.url("/predict");

    // 1,000 scans in a few KB: 400 in well under a second, never queued for the accurate tier.
    let started = Instant::now();
    let (status, body) = post_bytes(&url, "image/jpeg", &jpeg_with_scans(1000));
    let took = started.elapsed();
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("image_too_complex")), "{body}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // A GIF whose screen is 1x1 but whose frame is 11000x11000 (121 MP): 413 from the frame's
    // own descriptor.
    let mut gif = b"GIF89a\x01\0\x01\0\0\0\0".to_vec();
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 0xF8, 0x2A, 0xF8, 0x2A, 0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    let (status, body) = post_bytes(&url, "image/gif", &gif);
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("image_too_large")), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("11000x11000")), "{body}");

    // Neither left work behind: nothing was enqueued.
    let text = common::agent().get(&server.url("/metrics")).call().expect("metrics").into_body().read_to_string();
    assert!(text.expect("metrics").contains("tandem_jobs_enqueued_total 0"));
    assert_eq!(get_json(&server.url("/health")).0, 200);
}
