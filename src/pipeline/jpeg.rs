//! JPEG specifics: a cheap walk over the marker segments (size from the frame header before
//! anything is decoded; completeness, since zune-jpeg silently renders truncated files) and
//! decoding at 1/4 or 1/8 scale for big photos.
//!
//! Why `jpeg-decoder` for the scaled decode: most of the cost of a 12-megapixel photo is
//! producing pixels that the resize then throws away. JPEG can skip that by running a smaller
//! inverse DCT per 8x8 block (what libjpeg's `scale_denom` and Pillow's `draft` do). zune-jpeg,
//! which `image` uses, has no such option; `jpeg-decoder` (pure Rust, image-rs, no dependencies
//! with default features off) has `Decoder::scale` (1/2, 1/4, 1/8). It is only used when the
//! scaled image still has its shorter side ≥ `resize`, so small images take exactly Pillow's
//! path (full decode + antialiased bilinear), through zune-jpeg, which decodes them about twice
//! as fast; see [`dct_divisor`] for why 1/2 is not used.

use image::metadata::Orientation;

use super::decode::{Bitmap, check_pixels, oriented};
use super::{ImageError, PreprocessConfig};

pub(super) struct Header {
    pub width: u32,
    pub height: u32,
    /// Offset of the first entropy-coded byte (just after the first SOS segment).
    pub scan_start: usize,
}

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;

fn truncated(what: &str) -> ImageError {
    ImageError::Truncated(format!("JPEG: {what}"))
}

/// Finds the next marker at or after `pos`: returns (marker code, offset just past the code).
/// Skips stuffed `FF 00`, fill bytes and restart markers, as in entropy-coded data; between
/// segments it also skips stray bytes, as libjpeg does (with a warning).
fn next_marker(bytes: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    loop {
        pos += bytes.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        let mut code_at = pos + 1;
        let code = loop {
            match *bytes.get(code_at)? {
                0xFF => code_at += 1,
                code => break code,
            }
        };
        if code == 0x00 || (0xD0..=0xD7).contains(&code) || code == 0x01 {
            pos = code_at + 1;
            continue;
        }
        return Some((code, code_at + 1));
    }
}

/// Payload of the segment whose length field starts at `pos`, and the offset after it.
fn segment(bytes: &[u8], pos: usize) -> Result<(&[u8], usize), ImageError> {
    let len_bytes = bytes.get(pos..pos + 2).ok_or_else(|| truncated("a segment header is cut off"))?;
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    if len < 2 {
        return Err(truncated("invalid segment length"));
    }
    let payload = bytes.get(pos + 2..pos + len).ok_or_else(|| truncated("a segment is cut off"))?;
    Ok((payload, pos + len))
}

fn is_frame_header(code: u8) -> bool {
    // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
    (0xC0..=0xCF).contains(&code) && !matches!(code, 0xC4 | 0xC8 | 0xCC)
}

/// Reads the segments up to the first scan: image size (checked against the pixel limit as soon
/// as the frame header is seen), and where the scan data starts.
pub(super) fn read_header(bytes: &[u8], config: &PreprocessConfig) -> Result<Header, ImageError> {
    if bytes.get(..2) != Some(&[0xFF, SOI][..]) {
        return Err(ImageError::NotAnImage);
    }
    let mut size = None;
    let mut pos = 2;
    loop {
        let (code, after) = next_marker(bytes, pos).ok_or_else(|| truncated("the data ends before the image data"))?;
        match code {
            SOI => pos = after,
            EOI => return Err(truncated("the file ends before the image data")),
            _ => {
                let (payload, end) = segment(bytes, after)?;
                if is_frame_header(code) && size.is_none() {
                    // precision (1), height (2), width (2), components (1)...
                    let field = payload.get(1..5).ok_or_else(|| truncated("frame header too short"))?;
                    let height = u32::from(u16::from_be_bytes([field[0], field[1]]));
                    let width = u32::from(u16::from_be_bytes([field[2], field[3]]));
                    if height == 0 {
                        return Err(ImageError::Unsupported("JPEG whose height is set by a DNL marker".into()));
                    }
                    check_pixels(width, height, config)?;
                    size = Some((width, height));
                }
                if code == SOS {
                    let (width, height) = size.ok_or_else(|| truncated("image data before the frame header"))?;
                    return Ok(Header { width, height, scan_start: end });
                }
                pos = end;
            }
        }
    }
}

/// Checks that the scans are followed by an end-of-image marker, i.e. the file is not cut off.
/// Linear in the file size, no allocation.
pub(super) fn ensure_complete(bytes: &[u8], scan_start: usize) -> Result<(), ImageError> {
    let mut pos = scan_start;
    loop {
        let (code, after) =
            next_marker(bytes, pos).ok_or_else(|| truncated("the image data ends before the end-of-image marker"))?;
        match code {
            EOI => return Ok(()),
            SOI => pos = after,
            // Between (progressive) scans: tables, restart interval, the next SOS.
            _ => pos = segment(bytes, after)?.1,
        }
    }
}

/// 8 or 4 if decoding at that scale keeps the shorter side ≥ `resize`, else 1 (full decode).
///
/// Not 2: jpeg-decoder is about half as fast as zune-jpeg, so a 1/2-scale decode measured
/// slower than zune's full decode + resize (e.g. 1000x750: 11 ms vs 5 ms); 1/4 is about even
/// to 25% faster, 1/8 a clear win (4000x3000: 1.5x faster).
pub(super) fn dct_divisor(width: u32, height: u32, resize: u32) -> u32 {
    let short = width.min(height);
    [8, 4].into_iter().find(|&d| short.div_ceil(d) >= resize).unwrap_or(1)
}

/// Decodes at 1/`divisor` scale. `None` when jpeg-decoder cannot (or the result is not what we
/// expect): the caller then does the full decode, which also produces the error to report.
pub(super) fn decode_downscaled(bytes: &[u8], header: &Header, divisor: u32) -> Option<Bitmap> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    // The output at this scale is ≤ 1/4 of the full RGB size, itself within the pixel limit.
    let full_rgb = 3 * u64::from(header.width) * u64::from(header.height);
    decoder.set_max_decoding_buffer_size(usize::try_from(full_rgb).ok()?);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    if (u32::from(info.width), u32::from(info.height)) != (header.width, header.height) {
        return None;
    }
    let (want_w, want_h) = (header.width.div_ceil(divisor), header.height.div_ceil(divisor));
    // `scale` picks the smallest scale reaching the request on either axis: ask on the shorter
    // axis only (u16::MAX is out of reach on the other one).
    let short = u16::try_from(want_w.min(want_h)).ok()?;
    let request = if header.width <= header.height { (short, u16::MAX) } else { (u16::MAX, short) };
    let (w, h) = decoder.scale(request.0, request.1).ok()?;
    if (u32::from(w), u32::from(h)) != (want_w, want_h) {
        return None;
    }
    let pixels = decoder.decode().ok()?;
    let channels = match decoder.info()?.pixel_format {
        jpeg_decoder::PixelFormat::L8 => 1,
        jpeg_decoder::PixelFormat::RGB24 => 3,
        // CMYK/YCCK conventions differ between decoders: leave those rare files to the full path.
        _ => return None,
    };
    let orientation = decoder.exif_data().and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms);
    let mut bitmap = oriented(want_w, want_h, channels, pixels, orientation, 1.0 / f64::from(divisor))?;
    let swaps = matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    );
    (bitmap.full_width, bitmap.full_height) =
        if swaps { (header.height, header.width) } else { (header.width, header.height) };
    Some(bitmap)
}
