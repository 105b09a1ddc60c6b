//! Untrusted bytes → 8-bit gray or RGB pixels, EXIF orientation applied, after checking the
//! format and the pixel count from the header.
//!
//! JPEG goes through libjpeg-turbo, at 1/2, 1/4 or 1/8 scale when the image is big enough (see
//! [`super::jpeg`]); PNG, WebP, BMP and GIF through `image`.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::bitmap::{Bitmap, bitmap_from, check_pixels};
use super::budget;
use super::jpeg;
use super::{ImageError, PreprocessConfig};

/// Sniffs the format from the bytes (never the file name), checks the size, decodes.
pub(super) fn decode(bytes: &[u8], config: &PreprocessConfig) -> Result<Bitmap, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::NotAnImage)?;
    match format {
        ImageFormat::Jpeg => {
            let header = jpeg::read_header(bytes, config)?;
            // Decoders render truncated files (grey fill) without complaint; Pillow refuses them.
            jpeg::ensure_complete(bytes, header.scan_start)?;
            let divisor = jpeg::dct_divisor(header.width, header.height, config.resize);
            // libjpeg's RGB scanlines, and as much again for a rotated copy (EXIF orientation);
            // for a progressive file also its whole-image coefficient buffer (2 bytes per
            // coefficient, one per pixel and component, at full resolution).
            let (w, h) = (u64::from(header.width.div_ceil(divisor)), u64::from(header.height.div_ceil(divisor)));
            let coefficients = if header.progressive {
                u64::from(header.width) * u64::from(header.height) * u64::from(header.components.max(1)) * 2
            } else {
                0
            };
            let reservation = budget::reserve(w * h * 3 * 2 + coefficients, config.decode_priority)?;
            match jpeg::decode(bytes, &header, divisor)? {
                Some(bitmap) => Ok(Bitmap { _reservation: Some(reservation), ..bitmap }),
                // CMYK/YCCK (Adobe) files: `image` knows their conventions.
                None => {
                    drop(reservation);
                    decode_with_image(bytes, format, config, 0)
                }
            }
        }
        ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp | ImageFormat::Gif => {
            let peeked = peek_size(format, bytes);
            if let Some((width, height)) = peeked {
                check_pixels(width, height, config)?;
            }
            // A GIF frame larger than its screen is decoded at its own size, as RGBA.
            let at_least = match (format, peeked) {
                (ImageFormat::Gif, Some((w, h))) => u64::from(w) * u64::from(h) * 4,
                _ => 0,
            };
            if format == ImageFormat::Png {
                decode_with_image(&without_unused_png_chunks(bytes), format, config, at_least)
            } else {
                decode_with_image(bytes, format, config, at_least)
            }
        }
        other => Err(ImageError::Unsupported(format!("{other:?} (supported: JPEG, PNG, WebP, BMP, GIF)"))),
    }
}

/// PNG and GIF sizes sit at fixed offsets. `image` reads further before it reports them (PNG to
/// the first image data, GIF to the first frame), so a header-only bomb would be reported as
/// truncated rather than too large.
fn peek_size(format: ImageFormat, bytes: &[u8]) -> Option<(u32, u32)> {
    let field = |range: std::ops::Range<usize>| bytes.get(range);
    match format {
        ImageFormat::Png if field(12..16) == Some(b"IHDR") => {
            let be = |r| field(r).and_then(|b: &[u8]| b.try_into().ok()).map(u32::from_be_bytes);
            Some((be(16..20)?, be(20..24)?))
        }
        ImageFormat::Gif => {
            let le = |r| field(r).and_then(|b: &[u8]| b.try_into().ok()).map(u16::from_le_bytes).map(u32::from);
            let screen = (le(6..8)?, le(8..10)?);
            // A frame may be larger than the logical screen it claims to sit on, and the
            // decoder allocates the frame: check whichever is bigger.
            let frame = gif_first_frame_size(bytes).unwrap_or(screen);
            let pixels = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
            Some(if pixels(frame) > pixels(screen) { frame } else { screen })
        }
        _ => None,
    }
}

/// Width and height in the first image descriptor of a GIF, found by walking its blocks
/// (header, logical screen, colour table, extensions); `None` if the walk runs out of bytes.
fn gif_first_frame_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let flags = *bytes.get(10)?;
    let table = |flags: u8| if flags & 0x80 != 0 { 3usize << ((flags & 0x07) + 1) } else { 0 };
    let mut pos = 13 + table(flags);
    loop {
        match *bytes.get(pos)? {
            // Image descriptor: separator, left, top, width, height (little-endian u16s).
            0x2C => {
                let le = |at: usize| bytes.get(at..at + 2).map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])));
                return Some((le(pos + 5)?, le(pos + 7)?));
            }
            // Extension: introducer, label, then data sub-blocks up to a zero-length one.
            0x21 => {
                pos += 2;
                loop {
                    let len = usize::from(*bytes.get(pos)?);
                    pos += 1 + len;
                    if len == 0 {
                        break;
                    }
                }
            }
            _ => return None,
        }
    }
}

/// Decoder allocations are capped too, in case a decoder allocates from some field other than
/// the dimensions we checked: 8 bytes per allowed pixel (16-bit RGBA) plus room for metadata.
/// Width/height limits are left to [`check_pixels`] so that the error carries the dimensions.
fn limits(config: &PreprocessConfig) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(config.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    limits
}

/// `at_least`: bytes the decoder is known to allocate beyond what its reported size says (a
/// GIF frame larger than its logical screen).
pub(super) fn decode_with_image(
    bytes: &[u8],
    format: ImageFormat,
    config: &PreprocessConfig,
    at_least: u64,
) -> Result<Bitmap, ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits(config));
    // `into_decoder` reads the header only: the bitmap is allocated after the pixel check.
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, config)?;
    // The decoder's own buffer (bit depth × channels × pixels), the 8-bit copy when it is not
    // 8-bit gray or RGB already, and a rotated copy (EXIF orientation).
    let rgb = u64::from(width) * u64::from(height) * 3;
    let converted = if matches!(decoder.color_type(), image::ColorType::L8 | image::ColorType::Rgb8) { 0 } else { rgb };
    let reservation = budget::reserve(decoder.total_bytes().max(at_least) + converted + rgb, config.decode_priority)?;
    // Broken metadata is no reason to refuse the pixels (Pillow ignores it too).
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    // Like Pillow's convert('RGB'): alpha is dropped (not composited), 16-bit becomes 8-bit.
    let mut image = match image {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => image,
        other if other.color().has_color() => DynamicImage::ImageRgb8(other.to_rgb8()),
        other => DynamicImage::ImageLuma8(other.to_luma8()),
    };
    image.apply_orientation(orientation);
    Ok(Bitmap { _reservation: Some(reservation), ..bitmap_from(image, 1.0) })
}

/// The PNG without its text and ICC profile chunks (`tEXt`, `zTXt`, `iTXt`, `iCCP`), which
/// classification does not use: the decoder would inflate the compressed ones, and a 400 KB
/// chunk can inflate to hundreds of MB. Borrowed as is when there are none; chunks are copied
/// whole (CRCs included), and anything malformed is left for the decoder to report.
fn without_unused_png_chunks(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const UNUSED: [&[u8; 4]; 4] = [b"tEXt", b"zTXt", b"iTXt", b"iCCP"];
    let mut chunks = Vec::new();
    let mut pos = 8;
    while let Some(header) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(end) = pos.checked_add(12).and_then(|p| p.checked_add(len)).filter(|&end| end <= bytes.len()) else {
            break;
        };
        chunks.push((pos, end, UNUSED.iter().any(|kind| &header[4..8] == kind.as_slice())));
        pos = end;
    }
    if !chunks.iter().any(|&(_, _, unused)| unused) {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut kept = bytes[..8].to_vec();
    for &(start, end, unused) in &chunks {
        if !unused {
            kept.extend_from_slice(&bytes[start..end]);
        }
    }
    // Whatever follows the last whole chunk (a cut-off one) stays, for the decoder to judge.
    kept.extend_from_slice(&bytes[pos..]);
    std::borrow::Cow::Owned(kept)
}

fn map_image_error(error: image::ImageError) -> ImageError {
    use image::ImageError as E;
    match error {
        E::Unsupported(e) => ImageError::Unsupported(e.to_string()),
        // The input is in memory, so an I/O error can only be running out of bytes.
        E::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated("the data ends unexpectedly".into())
        }
        E::Limits(e) => ImageError::Truncated(format!("decoding would exceed the memory limit ({e})")),
        other => ImageError::Truncated(other.to_string()),
    }
}
