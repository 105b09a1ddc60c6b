//! JPEG specifics: a cheap walk over the marker segments (size from the frame header before
//! anything is decoded; completeness, since decoders silently render truncated files with grey
//! fill) and decoding with libjpeg-turbo.
//!
//! Why libjpeg-turbo (the `mozjpeg` crate builds its decoder from source with the C compiler):
//! it is the decoder behind Pillow, so Tandem's pixels are bit-identical to the reference
//! pipeline that models are validated with (zune-jpeg and jpeg-decoder differ by up to 5 levels,
//! enough to move EfficientNet-Lite2's top probability on one sample by 0.06); and it decodes at
//! 1/2, 1/4 or 1/8 scale by running a smaller inverse DCT per block, which skips producing the
//! pixels a big photo's resize would throw away. Scaling is only used while the scaled image's
//! shorter side stays ≥ `resize`, so images near the model's size take Pillow's exact path.
//! SIMD (the `jpeg-simd` feature) needs `nasm` at build time and roughly halves decode time.

use image::metadata::Orientation;

use super::bitmap::{Bitmap, check_pixels, oriented};
use super::{ImageError, PreprocessConfig};

pub(super) struct Header {
    pub width: u32,
    pub height: u32,
    /// Colour components (1 gray, 3 YCbCr, 4 CMYK).
    pub components: u32,
    /// Progressive (SOF2/6/10/14): libjpeg then keeps every DCT coefficient of the whole image,
    /// at full resolution, whatever scale it decodes at.
    pub progressive: bool,
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
        // memchr (SIMD): this walks the whole entropy-coded data of every JPEG, 1 MB for a
        // big photo, where a byte-at-a-time loop cost ~0.7 ms.
        pos += memchr::memchr(0xFF, bytes.get(pos..)?)?;
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
    let mut frame = (0, false);
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
                    frame =
                        (u32::from(payload.get(5).copied().unwrap_or(3)), matches!(code, 0xC2 | 0xC6 | 0xCA | 0xCE));
                }
                if code == SOS {
                    let (width, height) = size.ok_or_else(|| truncated("image data before the frame header"))?;
                    let (components, progressive) = frame;
                    return Ok(Header { width, height, components, progressive, scan_start: end });
                }
                pos = end;
            }
        }
    }
}

/// Most scans a JPEG may have. Real progressive photos have about 10 (libjpeg-turbo's own
/// encoder writes 10 for colour); each scan makes libjpeg redo work over the whole image, so
/// a small file with thousands of them is a CPU bomb (libjpeg-turbo's `djpeg -maxscan` exists
/// for exactly this).
pub const MAX_SCANS: usize = 256;

/// Checks that the scans are followed by an end-of-image marker, i.e. the file is not cut off,
/// and that there are at most [`MAX_SCANS`] of them. Linear in the file size, no allocation.
pub(super) fn ensure_complete(bytes: &[u8], scan_start: usize) -> Result<(), ImageError> {
    let mut pos = scan_start;
    let mut scans = 1;
    loop {
        let (code, after) =
            next_marker(bytes, pos).ok_or_else(|| truncated("the image data ends before the end-of-image marker"))?;
        match code {
            EOI => return Ok(()),
            SOI => pos = after,
            // Between (progressive) scans: tables, restart interval, the next SOS.
            _ => {
                if code == SOS {
                    scans += 1;
                    if scans > MAX_SCANS {
                        return Err(ImageError::TooComplex(format!(
                            "the JPEG has more than {MAX_SCANS} scans (real photos have about 10)"
                        )));
                    }
                }
                pos = segment(bytes, after)?.1;
            }
        }
    }
}

/// 8, 4 or 2 if decoding at 1/8, 1/4 or 1/2 scale keeps the shorter side ≥ `resize`, else 1
/// (full decode, the exact path the reference pipeline takes).
pub(super) fn dct_divisor(width: u32, height: u32, resize: u32) -> u32 {
    let short = width.min(height);
    [8, 4, 2].into_iter().find(|&d| short.div_ceil(d) >= resize).unwrap_or(1)
}

/// Decodes with libjpeg-turbo (through `mozjpeg`) at 1/`divisor` scale, EXIF orientation
/// applied. `Ok(None)` for CMYK/YCCK files, which the caller hands to `image` instead.
pub(super) fn decode(bytes: &[u8], header: &Header, divisor: u32) -> Result<Option<Bitmap>, ImageError> {
    // libjpeg reports errors by unwinding out of its C frames (mozjpeg-sys is built with
    // `unwinding`): catch that here and turn it into a typed error.
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<Option<Decoded>> {
        let mut decompress = mozjpeg::Decompress::with_markers(&[mozjpeg::Marker::APP(1)]).from_mem(bytes)?;
        let orientation = decompress
            .markers()
            .filter(|m| matches!(m.marker, mozjpeg::Marker::APP(1)))
            .find_map(|m| m.data.strip_prefix(b"Exif\0\0"))
            .and_then(Orientation::from_exif_chunk)
            .unwrap_or(Orientation::NoTransforms);
        // `divisor` is 1, 2, 4 or 8, so the numerator is 8, 4, 2 or 1.
        decompress.scale(u8::try_from(8 / divisor.clamp(1, 8)).unwrap_or(8));
        let (channels, mut started) = match decompress.image()? {
            mozjpeg::Format::RGB(started) => (3, started),
            mozjpeg::Format::Gray(started) => (1, started),
            mozjpeg::Format::CMYK(_) => return Ok(None),
        };
        let (width, height) = (started.width(), started.height());
        let pixels: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        Ok(Some(Decoded { width, height, channels, pixels, orientation }))
    });
    let decoded = match decoded {
        Ok(Ok(Some(decoded))) => decoded,
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(err)) => return Err(truncated(&err.to_string())),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("corrupt data");
            return Err(truncated(message));
        }
    };
    let (width, height) = (u32::try_from(decoded.width), u32::try_from(decoded.height));
    let (Ok(width), Ok(height)) = (width, height) else { return Err(truncated("implausible decoded size")) };
    let orientation = decoded.orientation;
    let mut bitmap = oriented(width, height, decoded.channels, decoded.pixels, orientation, 1.0 / f64::from(divisor))
        .ok_or_else(|| truncated("the decoder returned fewer pixels than its size"))?;
    let swaps = matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    );
    (bitmap.full_width, bitmap.full_height) =
        if swaps { (header.height, header.width) } else { (header.width, header.height) };
    Ok(Some(bitmap))
}

struct Decoded {
    width: usize,
    height: usize,
    channels: usize,
    pixels: Vec<u8>,
    orientation: Orientation,
}
