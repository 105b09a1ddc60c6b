//! Unit tests of the image pipeline: exact values, geometry, orientation, formats, bad input.

use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage};

use super::resize::Plan;
use super::*;

fn config(resize: u32, crop: u32) -> PreprocessConfig {
    PreprocessConfig { resize, crop, ..PreprocessConfig::default() }
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn encode_jpeg(image: &DynamicImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    // `encode` rather than `encode_image`, which would turn gray into 3 components.
    let (w, h) = (image.width(), image.height());
    JpegEncoder::new_with_quality(&mut out, quality).encode(image.as_bytes(), w, h, image.color().into()).unwrap();
    out
}

/// The reference formula, in f32 like numpy on a float32 array.
fn norm(v: u8, c: usize, config: &PreprocessConfig) -> f32 {
    (f32::from(v) / 255.0 - config.mean[c]) / config.std[c]
}

/// Back to 0..255 units, to compare with pixel values.
fn denorm(out: &[f32], config: &PreprocessConfig, c: usize, x: usize, y: usize) -> f32 {
    let crop = config.crop as usize;
    (out[c * crop * crop + y * crop + x] * config.std[c] + config.mean[c]) * 255.0
}

/// `TANDEM_SHARED_DIR`/images, else `../shared/images` beside the repository (as the integration tests).
fn shared_images() -> PathBuf {
    std::env::var_os("TANDEM_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
        .join("images")
}

// ---- values and geometry ----

#[test]
fn exact_values_without_resampling() {
    let pixels = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [12, 34, 56]];
    let image = RgbImage::from_fn(2, 2, |x, y| Rgb(pixels[(y * 2 + x) as usize]));
    let cfg = config(2, 2);
    let out = preprocess(&encode(&image.into(), ImageFormat::Png), &cfg).unwrap();
    let expected: Vec<f32> = (0..3).flat_map(|c| pixels.iter().map(move |p| norm(p[c], c, &config(2, 2)))).collect();
    assert_eq!(out, expected);
    // And the literal numbers, as a check on the formula itself.
    assert!((out[0] - (-0.485 / 0.229)).abs() < 1e-6);
    assert!((out[1] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
    assert!((out[4 + 1] - (1.0 - 0.456) / 0.224).abs() < 1e-6);
    assert!((out[8 + 3] - (56.0 / 255.0 - 0.406) / 0.225).abs() < 1e-6);
}

#[test]
fn constant_color_survives_resize_and_crop() {
    for (w, h) in [(40, 30), (30, 41), (17, 17), (1000, 3)] {
        let image = RgbImage::from_pixel(w, h, Rgb([10, 200, 77]));
        let cfg = config(8, 6);
        let out = preprocess(&encode(&image.into(), ImageFormat::Png), &cfg).unwrap();
        for (c, plane) in out.chunks_exact(36).enumerate() {
            let v = [10, 200, 77][c];
            assert!(plane.iter().all(|&x| x == norm(v, c, &cfg)), "{w}x{h} channel {c}: {plane:?}");
        }
    }
}

#[test]
fn resize_matches_pillow_bilinear() {
    // Expected values computed with Pillow 13: Image.fromarray(a, 'L').resize(size, Image.BILINEAR).
    let cases: [(&[u8], u32, &[u8]); 3] = [
        (&[0, 255, 0, 255], 2, &[109, 146]),
        (&[0, 0, 255, 255, 255, 255], 4, &[0, 170, 255, 255]),
        (&[10, 50, 90, 130, 170, 210, 250], 3, &[44, 130, 216]),
    ];
    for (row, size, expected) in cases {
        let n = row.len() as u32;
        let image = GrayImage::from_fn(n, n, |x, _| Luma([row[x as usize]]));
        let cfg = config(size, size);
        let out = preprocess(&encode(&image.into(), ImageFormat::Png), &cfg).unwrap();
        for y in 0..size as usize {
            let got: Vec<u8> = (0..size as usize).map(|x| denorm(&out, &cfg, 0, x, y).round() as u8).collect();
            assert_eq!(got, expected, "row {row:?} to {size}");
        }
    }
}

#[test]
fn geometry_shorter_side_and_center_crop() {
    let plan = Plan::new(477, 256, 256, 224).unwrap();
    assert_eq!((plan.new_width, plan.new_height, plan.x0, plan.y0), (477, 256, 126, 16));
    let plan = Plan::new(3000, 4000, 256, 224).unwrap();
    assert_eq!((plan.new_width, plan.new_height, plan.x0, plan.y0), (256, 341, 16, 58));
    // Ties round to even, like Python's round(): 300*255/200 = 382.5, 5*3/2 = 7.5.
    assert_eq!(Plan::new(300, 200, 255, 224).unwrap().new_width, 382);
    assert_eq!(Plan::new(5, 2, 3, 3).unwrap().new_width, 8);
    assert_eq!(Plan::new(400, 300, 256, 224).unwrap().new_width, 341);

    // Left half red, right half blue; 64x32 → 32x16 → columns 8..24 kept.
    let image = RgbImage::from_fn(64, 32, |x, _| if x < 32 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
    let cfg = config(16, 16);
    let out = preprocess(&encode(&image.into(), ImageFormat::Png), &cfg).unwrap();
    for y in 0..16 {
        assert_eq!([0, 1, 2].map(|c| denorm(&out, &cfg, c, 0, y).round()), [255.0, 0.0, 0.0]);
        assert_eq!([0, 1, 2].map(|c| denorm(&out, &cfg, c, 15, y).round()), [0.0, 0.0, 255.0]);
        assert!(denorm(&out, &cfg, 0, 7, y) > 127.0 && denorm(&out, &cfg, 2, 8, y) > 127.0);
    }
}

#[test]
fn wrong_buffer_or_config_is_an_error_not_a_panic() {
    let png = encode(&RgbImage::new(4, 4).into(), ImageFormat::Png);
    let mut short = vec![0.0; 10];
    assert!(matches!(preprocess_into(&png, &config(4, 4), &mut short), Err(ImageError::Internal(_))));
    assert!(matches!(preprocess(&png, &config(4, 5)), Err(ImageError::Internal(_))));
    assert!(matches!(preprocess(&png, &config(0, 0)), Err(ImageError::Internal(_))));
}

// ---- orientation ----

/// Inserts an APP1 Exif segment with the given orientation right after SOI.
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec(); // big endian, IFD at 8, 1 entry
    tiff.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]); // Orientation, SHORT, count 1
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Source pixel shown at (x, y) of the upright image, for a `w`×`h` stored image.
fn exif_source(orientation: u16, w: u32, h: u32, x: u32, y: u32) -> (u32, u32) {
    match orientation {
        1 => (x, y),
        2 => (w - 1 - x, y),
        3 => (w - 1 - x, h - 1 - y),
        4 => (x, h - 1 - y),
        5 => (y, x),
        6 => (y, h - 1 - x),
        7 => (w - 1 - y, h - 1 - x),
        8 => (w - 1 - y, x),
        _ => unreachable!(),
    }
}

/// Four flat quadrants (8x8-block aligned, so JPEG keeps them flat).
fn quadrants(w: u32, h: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| Luma([[[20, 90], [160, 230]][usize::from(y >= h / 2)][usize::from(x >= w / 2)]]))
}

#[test]
fn exif_orientation_all_eight_full_decode() {
    let (w, h) = (32, 16);
    let source = quadrants(w, h);
    let jpeg = encode_jpeg(&source.clone().into(), 100);
    for orientation in 1..=8 {
        let bytes = with_orientation(&jpeg, orientation);
        let bitmap = decode::decode(&bytes, &config(16, 16)).unwrap(); // 16: no DCT scaling
        let (ow, oh) = if orientation >= 5 { (h, w) } else { (w, h) };
        assert_eq!((bitmap.width, bitmap.height, bitmap.channels), (ow, oh, 1), "orientation {orientation}");
        assert_eq!((bitmap.full_width, bitmap.full_height), (ow, oh));
        // Quadrant centers only: the edges between them are blurred by JPEG.
        for (x, y) in [(ow / 4, oh / 4), (3 * ow / 4, oh / 4), (ow / 4, 3 * oh / 4), (3 * ow / 4, 3 * oh / 4)] {
            let (sx, sy) = exif_source(orientation, w, h, x, y);
            let got = bitmap.pixels[(y * ow + x) as usize];
            let want = source.get_pixel(sx, sy)[0];
            assert!(got.abs_diff(want) <= 2, "orientation {orientation} at ({x},{y}): {got} vs {want}");
        }
    }
}

#[test]
fn exif_orientation_rotates_the_output() {
    // Wide image, left half light, right half dark; orientation 6 (90° clockwise) puts the
    // light half on top, 8 (90° counter-clockwise) at the bottom.
    let image = GrayImage::from_fn(32, 16, |x, _| Luma([if x < 16 { 240 } else { 16 }]));
    let jpeg = encode_jpeg(&image.into(), 100);
    let cfg = config(16, 16);
    let light = |out: &[f32], x, y| denorm(out, &cfg, 0, x, y) > 128.0;
    let upright = preprocess(&jpeg, &cfg).unwrap();
    assert!(light(&upright, 0, 8) && !light(&upright, 15, 8));
    let cw = preprocess(&with_orientation(&jpeg, 6), &cfg).unwrap();
    assert!(light(&cw, 8, 0) && !light(&cw, 8, 15));
    let ccw = preprocess(&with_orientation(&jpeg, 8), &cfg).unwrap();
    assert!(!light(&ccw, 8, 0) && light(&ccw, 8, 15));
}

#[test]
fn exif_orientation_with_dct_downscaling() {
    // 256x128 with resize 16: decoded at 1/8 (32x16) by libjpeg-turbo.
    let (w, h) = (256, 128);
    let source = quadrants(w, h);
    let jpeg = encode_jpeg(&source.clone().into(), 95);
    for orientation in 1..=8 {
        let bytes = with_orientation(&jpeg, orientation);
        let bitmap = decode::decode(&bytes, &config(16, 16)).unwrap();
        let (ow, oh) = if orientation >= 5 { (h, w) } else { (w, h) };
        assert_eq!((bitmap.width, bitmap.height, bitmap.channels), (ow / 8, oh / 8, 1), "orientation {orientation}");
        assert_eq!((bitmap.full_width, bitmap.full_height, bitmap.scale), (ow, oh, 0.125));
        for (x, y) in [(ow / 4, oh / 4), (3 * ow / 4, oh / 4), (ow / 4, 3 * oh / 4), (3 * ow / 4, 3 * oh / 4)] {
            let (sx, sy) = exif_source(orientation, w, h, x, y);
            let got = bitmap.pixels[((y / 8) * bitmap.width + x / 8) as usize];
            let want = source.get_pixel(sx, sy)[0];
            assert!(got.abs_diff(want) <= 3, "orientation {orientation} at ({x},{y}): {got} vs {want}");
        }
    }
}

#[test]
fn dct_downscaling_only_while_the_short_side_stays_at_least_resize() {
    assert_eq!(jpeg::dct_divisor(4000, 3000, 256), 8); // 375
    assert_eq!(jpeg::dct_divisor(1600, 1200, 256), 4); // 300
    assert_eq!(jpeg::dct_divisor(1200, 2047, 256), 4); // 300; /8 would be 150
    assert_eq!(jpeg::dct_divisor(3000, 2041, 256), 8); // 256 (rounded up, as the decoder does)
    assert_eq!(jpeg::dct_divisor(1500, 1020, 256), 2); // 510; /4 would be 255
    assert_eq!(jpeg::dct_divisor(600, 510, 256), 1); // /2 would be 255
    assert_eq!(jpeg::dct_divisor(477, 256, 256), 1);
}

#[test]
fn dct_downscaled_output_is_close_to_full_decode() {
    // A smooth photo-like gradient: decoding at 1/4 then resizing should give nearly the same
    // tensor as decoding everything.
    let image = RgbImage::from_fn(1024, 768, |x, y| {
        let (fx, fy) = (x as f32 / 1024.0, y as f32 / 768.0);
        Rgb([(255.0 * fx) as u8, (255.0 * fy) as u8, (128.0 + 100.0 * (fx * 9.0).sin() * (fy * 7.0).cos()) as u8])
    });
    let jpeg = encode_jpeg(&image.into(), 92);
    let cfg = config(160, 128);
    let scaled = decode::decode(&jpeg, &cfg).unwrap();
    assert_eq!((scaled.width, scaled.height), (256, 192));
    let full = decode::decode_with_image(&jpeg, ImageFormat::Jpeg, &cfg, 0).unwrap();
    let (mut a, mut b) = (vec![0.0; cfg.tensor_len()], vec![0.0; cfg.tensor_len()]);
    bitmap_to_tensor(&scaled, &cfg, &mut a).unwrap();
    bitmap_to_tensor(&full, &cfg, &mut b).unwrap();
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(max < 0.05, "max difference {max}");
}

// ---- color types and formats ----

fn assert_gray_planes(out: &[f32], cfg: &PreprocessConfig, expected: u8) {
    let crop = cfg.crop as usize;
    for (x, y) in [(0, 0), (crop - 1, crop - 1)] {
        for c in 0..3 {
            assert_eq!(denorm(out, cfg, c, x, y).round(), f32::from(expected), "channel {c}");
        }
    }
}

#[test]
fn grayscale_becomes_rgb() {
    let cfg = config(4, 4);
    let png = encode(&GrayImage::from_pixel(4, 4, Luma([77])).into(), ImageFormat::Png);
    assert_gray_planes(&preprocess(&png, &cfg).unwrap(), &cfg, 77);
    let gray16 = DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(4, 4, Luma([77 * 257])));
    assert_gray_planes(&preprocess(&encode(&gray16, ImageFormat::Png), &cfg).unwrap(), &cfg, 77);
}

#[test]
fn alpha_is_dropped_not_composited() {
    // Fully transparent pixels keep their color, as with Pillow's convert('RGB').
    let image = RgbaImage::from_fn(2, 1, |x, _| if x == 0 { Rgba([200, 100, 50, 0]) } else { Rgba([1, 2, 3, 128]) });
    let cfg = config(1, 1);
    let png = encode(&image.into(), ImageFormat::Png);
    let bitmap = decode::decode(&png, &cfg).unwrap();
    assert_eq!((bitmap.channels, &bitmap.pixels[..]), (3, &[200, 100, 50, 1, 2, 3][..]));
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG by hand (the encoder in `image` writes no palette images): IHDR with the given fields,
/// optional extra chunks, then `raw` (filter bytes included) as one stored deflate block.
fn handmade_png(width: u32, height: u32, depth: u8, color: u8, extra: &[(&[u8; 4], &[u8])], raw: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        png_chunk(&mut out, kind, data);
    }
    let len = u16::try_from(raw.len()).unwrap();
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend_from_slice(&len.to_le_bytes());
    zlib.extend_from_slice(&(!len).to_le_bytes());
    zlib.extend_from_slice(raw);
    let (a, b) =
        raw.iter().fold((1u32, 0u32), |(a, b), &x| ((a + u32::from(x)) % 65521, (b + a + u32::from(x)) % 65521));
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    png_chunk(&mut out, b"IDAT", &zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn palette_becomes_rgb() {
    let palette: &[u8] = &[255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 8, 7];
    let raw = [0, 0, 1, 0, 2, 3]; // 2x2, filter byte 0 per row, indices 0 1 / 2 3
    let cfg = config(2, 2);
    let plain = handmade_png(2, 2, 8, 3, &[(b"PLTE", palette)], &raw);
    let bitmap = decode::decode(&plain, &cfg).unwrap();
    assert_eq!((bitmap.channels, &bitmap.pixels[..]), (3, palette));
    // With tRNS (index 3 transparent): still the palette colors.
    let transparent = handmade_png(2, 2, 8, 3, &[(b"PLTE", palette), (b"tRNS", &[255, 255, 255, 0])], &raw);
    let bitmap = decode::decode(&transparent, &cfg).unwrap();
    assert_eq!((bitmap.channels, &bitmap.pixels[..]), (3, palette));
    let out = preprocess(&transparent, &cfg).unwrap();
    assert_eq!(out[3], norm(9, 0, &cfg));
}

#[test]
fn gif_first_frame() {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame};
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        let frames = [Rgba([250, 0, 0, 255]), Rgba([0, 0, 250, 255])]
            .map(|c| Frame::from_parts(RgbaImage::from_pixel(4, 4, c), 0, 0, Delay::from_numer_denom_ms(100, 1)));
        encoder.encode_frames(frames).unwrap();
    }
    let cfg = config(4, 4);
    let out = preprocess(&bytes, &cfg).unwrap();
    let rgb = [0, 1, 2].map(|c| denorm(&out, &cfg, c, 1, 1).round());
    assert!(rgb[0] > 240.0 && rgb[2] < 10.0, "{rgb:?}");
}

#[test]
fn webp_bmp_png_jpeg_decode() {
    let image: DynamicImage = RgbImage::from_fn(8, 8, |x, y| Rgb([(x * 30) as u8, (y * 30) as u8, 99])).into();
    let cfg = config(8, 8);
    let expected = preprocess(&encode(&image, ImageFormat::Png), &cfg).unwrap();
    for format in [ImageFormat::WebP, ImageFormat::Bmp] {
        let bytes = encode(&image, format);
        assert_eq!(image::guess_format(&bytes).unwrap(), format);
        assert_eq!(preprocess(&bytes, &cfg).unwrap(), expected, "{format:?} is lossless here");
    }
    let jpeg = preprocess(&encode_jpeg(&image, 100), &cfg).unwrap();
    let max = jpeg.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(max < 0.2, "JPEG q100 max difference {max}");
}

#[test]
fn sample_photos_preprocess() {
    let cfg = PreprocessConfig::default();
    for i in 1..=20 {
        let bytes = std::fs::read(shared_images().join(format!("sample_{i:02}.jpg"))).unwrap();
        let out = preprocess(&bytes, &cfg).unwrap();
        assert!(out.iter().all(|v| v.is_finite() && v.abs() < 3.0), "sample_{i:02}");
        if i == 10 {
            // Grayscale: the three planes hold the same pixel values.
            for p in 0..224 * 224 {
                let v = [0, 1, 2].map(|c| (out[c * 224 * 224 + p] * cfg.std[c] + cfg.mean[c]) * 255.0);
                assert!((v[0] - v[1]).abs() < 1e-3 && (v[0] - v[2]).abs() < 1e-3);
            }
        }
    }
}

#[test]
fn large_photo_takes_the_downscaled_path() {
    let bytes = std::fs::read(shared_images().join("large/photo_1600x1200.jpg")).unwrap();
    let cfg = PreprocessConfig::default();
    let bitmap = decode::decode(&bytes, &cfg).unwrap();
    assert_eq!((bitmap.width, bitmap.height, bitmap.full_width, bitmap.full_height), (400, 300, 1600, 1200));
    assert!(preprocess(&bytes, &cfg).unwrap().iter().all(|v| v.is_finite()));
}

// ---- bad input ----

#[test]
fn shared_bad_inputs() {
    let dir = shared_images().join("bad_inputs");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let cfg = PreprocessConfig::default();
    assert_eq!(preprocess(&read("empty.jpg"), &cfg), Err(ImageError::Empty));
    assert_eq!(preprocess(&read("not_an_image.png"), &cfg), Err(ImageError::NotAnImage));
    assert!(matches!(preprocess(&read("truncated.jpg"), &cfg), Err(ImageError::Truncated(_))));
}

#[test]
fn truncated_jpeg_is_refused_even_though_decoders_would_render_it() {
    let bytes = std::fs::read(shared_images().join("sample_01.jpg")).unwrap();
    let cfg = PreprocessConfig::default();
    for cut in [bytes.len() / 2, bytes.len() - 100, bytes.len() - 2, bytes.len() - 1] {
        assert!(matches!(preprocess(&bytes[..cut], &cfg), Err(ImageError::Truncated(_))), "cut at {cut}");
    }
    // Trailing bytes after the end-of-image marker are fine.
    let mut padded = bytes.clone();
    padded.extend_from_slice(b"trailing junk \xFF\xD8");
    assert!(preprocess(&padded, &cfg).is_ok());
    // Same for a truncated big photo (the downscaled path).
    let big = std::fs::read(shared_images().join("large/photo_1600x1200.jpg")).unwrap();
    assert!(matches!(preprocess(&big[..big.len() - 1000], &cfg), Err(ImageError::Truncated(_))));
}

#[test]
fn other_formats_are_unsupported() {
    let cfg = PreprocessConfig::default();
    let tiff = b"II*\0\x08\0\0\0\0\0\0\0";
    assert!(matches!(preprocess(tiff, &cfg), Err(ImageError::Unsupported(_))));
    let qoi = b"qoif\0\0\0\x04\0\0\0\x04\x03\0";
    assert!(matches!(preprocess(qoi, &cfg), Err(ImageError::Unsupported(_))));
}

fn assert_too_large(bytes: &[u8], width: u32, height: u32) {
    let start = Instant::now();
    let result = preprocess(bytes, &PreprocessConfig::default());
    let pixels = u64::from(width) * u64::from(height);
    assert_eq!(result, Err(ImageError::TooLarge { width, height, pixels, limit: 64_000_000 }));
    assert!(start.elapsed() < Duration::from_millis(200), "took {:?}", start.elapsed());
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    // PNG claiming 100000x100000 RGB, with a few bytes of data.
    assert_too_large(&handmade_png(100_000, 100_000, 8, 2, &[], &[0, 1, 2, 3]), 100_000, 100_000);
    // The same without any image data chunk: still refused for its size.
    let header_only = handmade_png(100_000, 100_000, 8, 2, &[], &[]);
    assert_too_large(&header_only[..33], 100_000, 100_000);
    // JPEG whose frame header says 65535x65535: SOI, SOF0 and nothing else.
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x03];
    jpeg.extend_from_slice(&[1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    assert_too_large(&jpeg, 65535, 65535);
    // A real JPEG header with the size patched to 20000x20000.
    let mut patched = encode_jpeg(&RgbImage::new(16, 16).into(), 90);
    let sof = patched.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    patched[sof + 5..sof + 9].copy_from_slice(&[0x4E, 0x20, 0x4E, 0x20]);
    assert_too_large(&patched, 20000, 20000);
    // GIF with a 60000x60000 logical screen, and a BMP header claiming 30000x30000.
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0x60, 0xEA, 0x60, 0xEA, 0, 0, 0, 0x3B]);
    assert_too_large(&gif, 60000, 60000);
    let mut bmp = encode(&RgbImage::new(2, 2).into(), ImageFormat::Bmp);
    bmp[18..26].copy_from_slice(&[0x30, 0x75, 0, 0, 0x30, 0x75, 0, 0]);
    assert_too_large(&bmp, 30000, 30000);
    // Lossless WebP header claiming 16000x16000.
    let mut webp = b"RIFF\x1a\0\0\0WEBPVP8L\x0d\0\0\0\x2f\x7f\xfe\x9f\x0f".to_vec();
    webp.extend_from_slice(&[0; 9]);
    assert_too_large(&webp, 16000, 16000);
    // GIF with a small screen but a 65535x65535 frame: refused for the frame's size, found by
    // walking past the palette and an extension block to the first image descriptor.
    let mut gif = b"GIF89a\x0a\0\x0a\0\x80\0\0".to_vec();
    gif.extend_from_slice(&[0, 0, 0, 255, 255, 255]); // 2-color global palette
    gif.extend_from_slice(&[0x21, 0xF9, 4, 0, 0, 0, 0, 0]); // graphic control extension
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    assert_too_large(&gif, 65535, 65535);
    // 1x1 screen, 11000x11000 frame (121 MP): the screen alone would pass the pixel limit.
    let mut gif = b"GIF89a\x01\0\x01\0\0\0\0".to_vec();
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 0xF8, 0x2A, 0xF8, 0x2A, 0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    assert_too_large(&gif, 11000, 11000);
    // Under the limit but with a lower limit configured: refused too.
    let small = encode(&RgbImage::new(100, 100).into(), ImageFormat::Png);
    let strict = PreprocessConfig { max_pixels: 9_999, ..PreprocessConfig::default() };
    assert!(matches!(preprocess(&small, &strict), Err(ImageError::TooLarge { pixels: 10_000, .. })));
}

/// A JPEG with `extra` more scans: tiny, but each scan would make libjpeg pass over the whole
/// image again.
fn jpeg_with_scans(extra: usize) -> Vec<u8> {
    let jpeg = encode_jpeg(&RgbImage::new(64, 64).into(), 90);
    let mut bytes = jpeg[..jpeg.len() - 2].to_vec();
    for _ in 0..extra {
        // SOS: one component (1), tables 0/0, spectral 0..63, approximation 0; one data byte.
        bytes.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0x00]);
    }
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}

#[test]
fn a_jpeg_with_too_many_scans_is_refused_before_decoding() {
    let start = Instant::now();
    let result = preprocess(&jpeg_with_scans(jpeg::MAX_SCANS), &PreprocessConfig::default());
    assert!(matches!(result, Err(ImageError::TooComplex(_))), "{result:?}");
    assert!(start.elapsed() < Duration::from_millis(200), "took {:?}", start.elapsed());
    // At the limit it is not refused as too complex (whatever libjpeg then makes of the scans).
    let result = preprocess(&jpeg_with_scans(jpeg::MAX_SCANS - 1), &PreprocessConfig::default());
    assert!(!matches!(result, Err(ImageError::TooComplex(_))), "{result:?}");
}

/// xorshift64*: reproducible noise without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn garbage_prefixes_and_bit_flips_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let cfg = config(32, 24);
    let image: DynamicImage =
        RgbaImage::from_fn(48, 40, |x, y| Rgba([(x * 5) as u8, (y * 6) as u8, 7, (x + y) as u8])).into();
    let mut valid = vec![
        encode_jpeg(&image.to_rgb8().into(), 85),
        with_orientation(&encode_jpeg(&image.to_rgb8().into(), 85), 6),
        encode(&image, ImageFormat::Png),
        encode(&image, ImageFormat::Gif),
        encode(&image, ImageFormat::WebP),
        encode(&image, ImageFormat::Bmp),
        // 512x512 JPEG: exercises the DCT-downscaled decoder (resize 32 → 1/8).
        encode_jpeg(&RgbImage::from_fn(512, 512, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8])).into(), 80),
    ];
    valid.push(std::fs::read(shared_images().join("sample_10.jpg")).unwrap());
    for bytes in &valid {
        assert!(preprocess(bytes, &cfg).is_ok());
        for _ in 0..40 {
            let _ = preprocess(&bytes[..rng.below(bytes.len())], &cfg);
            let mut mutated = bytes.clone();
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(mutated.len());
                mutated[i] = rng.next() as u8;
            }
            let _ = preprocess(&mutated, &cfg);
        }
    }
    for _ in 0..300 {
        let len = rng.below(200);
        let mut noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Give some of it a real signature so that the decoders get to chew on it.
        let magic: [&[u8]; 6] = [b"\xFF\xD8\xFF", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8L", b"BM", b""];
        let m = magic[rng.below(magic.len())];
        noise.splice(0..0, m.iter().copied());
        let _ = preprocess(&noise, &cfg);
    }
}
