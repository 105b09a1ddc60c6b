//! Decoded pixels, what both decoders produce (`decode` for every format, `jpeg` for JPEG
//! through libjpeg-turbo) and the resize reads: the [`Bitmap`], the pixel-count check made from
//! a header before decoding, and turning a decoder's output upright. Its own module so that the
//! two decoders share it without importing each other.

use image::DynamicImage;
use image::metadata::Orientation;

use super::budget::Reservation;
use super::{ImageError, PreprocessConfig};

/// Decoded pixels, rows packed, upright (orientation applied).
pub(super) struct Bitmap {
    pub width: u32,
    pub height: u32,
    /// 1 (gray) or 3 (RGB). Gray stays 1 channel: replicating it before resizing would give the
    /// same numbers at three times the cost.
    pub channels: usize,
    pub pixels: Vec<u8>,
    /// Size of the full-resolution image, upright. Differs from `width`/`height` only when the
    /// JPEG was downscaled while decoding; the output geometry is computed from this.
    pub full_width: u32,
    pub full_height: u32,
    /// Decoded pixels per full-resolution pixel: 1, 1/2, 1/4 or 1/8.
    pub scale: f64,
    /// The decode-memory bytes these pixels hold, given back when they are dropped.
    pub _reservation: Option<Reservation>,
}

/// Refuses an image over `max_pixels`, or with no pixels, from the size its header gives.
pub(super) fn check_pixels(width: u32, height: u32, config: &PreprocessConfig) -> Result<(), ImageError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > config.max_pixels {
        return Err(ImageError::TooLarge { width, height, pixels, limit: config.max_pixels });
    }
    if pixels == 0 {
        return Err(ImageError::Truncated(format!("the header says {width}x{height} pixels")));
    }
    Ok(())
}

/// Rotates/flips `pixels` (`channels` = 1 or 3) upright and wraps them as a [`Bitmap`].
pub(super) fn oriented(
    width: u32,
    height: u32,
    channels: usize,
    pixels: Vec<u8>,
    orientation: Orientation,
    scale: f64,
) -> Option<Bitmap> {
    let mut image = match channels {
        1 => DynamicImage::ImageLuma8(image::GrayImage::from_raw(width, height, pixels)?),
        3 => DynamicImage::ImageRgb8(image::RgbImage::from_raw(width, height, pixels)?),
        _ => return None,
    };
    image.apply_orientation(orientation);
    Some(bitmap_from(image, scale))
}

/// `image` must be Luma8 or Rgb8.
pub(super) fn bitmap_from(image: DynamicImage, scale: f64) -> Bitmap {
    let (width, height) = (image.width(), image.height());
    let (channels, pixels) = match image {
        DynamicImage::ImageLuma8(buffer) => (1, buffer.into_raw()),
        other => (3, other.into_rgb8().into_raw()),
    };
    // Recover the full-resolution size from the decoded one: exact at scale 1; for DCT-scaled
    // JPEGs the caller overwrites it with the header's (upright) size.
    Bitmap { width, height, channels, pixels, full_width: width, full_height: height, scale, _reservation: None }
}
