//! Geometry (shorter side to `resize`, centered `crop`) and the antialiased bilinear resize.
//!
//! `fast_image_resize`'s `Convolution(Bilinear)` computes Pillow's `Image.BILINEAR` weights
//! (the filter widens with the downscale factor, i.e. antialiasing). Only the crop is produced:
//! the source box that maps onto it is resized straight into a `crop`×`crop` image, which gives
//! the same weights as resizing everything and cropping afterwards, for less work and with an
//! allocation bounded by `crop`, whatever the input's aspect ratio.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::ImageError;
use super::bitmap::Bitmap;

/// Where the output comes from, in terms of the full-resolution image.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    /// Size after resizing the shorter side to `resize`.
    pub new_width: u64,
    pub new_height: u64,
    /// Top-left corner of the centered crop in the resized image.
    pub x0: u64,
    pub y0: u64,
    pub crop: u32,
}

impl Plan {
    pub fn new(width: u32, height: u32, resize: u32, crop: u32) -> Result<Plan, ImageError> {
        let (w, h, r) = (u64::from(width), u64::from(height), u64::from(resize));
        if w == 0 || h == 0 || crop > resize {
            return Err(ImageError::Internal(format!("cannot crop {crop} from {width}x{height} resized to {resize}")));
        }
        let (new_width, new_height) = if w <= h { (r, round_ratio(h * r, w)) } else { (round_ratio(w * r, h), r) };
        let crop64 = u64::from(crop);
        Ok(Plan { new_width, new_height, x0: (new_width - crop64) / 2, y0: (new_height - crop64) / 2, crop })
    }
}

/// `num / den` rounded half to even, like Python's `round()` in the reference preprocessing.
fn round_ratio(num: u64, den: u64) -> u64 {
    let (q, r) = (num / den, num % den);
    match (2 * r).cmp(&den) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
        std::cmp::Ordering::Less => q,
    }
}

/// Resizes and crops `bitmap` per `plan` into `crop`×`crop` pixels with `bitmap.channels` each,
/// or `None` when the bitmap already has the resized size: the crop can then be read in place.
pub(super) fn resize_and_crop(bitmap: &Bitmap, plan: &Plan) -> Result<Option<Vec<u8>>, ImageError> {
    let (width, height) = (u64::from(bitmap.width), u64::from(bitmap.height));
    if bitmap.scale == 1.0 && (width, height) == (plan.new_width, plan.new_height) {
        return Ok(None);
    }
    let internal = |e: &dyn std::fmt::Display| ImageError::Internal(format!("resize: {e}"));
    let pixel_type = if bitmap.channels == 1 { PixelType::U8 } else { PixelType::U8x3 };
    let src = ImageRef::new(bitmap.width, bitmap.height, &bitmap.pixels, pixel_type).map_err(|e| internal(&e))?;
    // Decoded pixels per resized pixel.
    let sx = f64::from(bitmap.full_width) / plan.new_width as f64 * bitmap.scale;
    let sy = f64::from(bitmap.full_height) / plan.new_height as f64 * bitmap.scale;
    let (left, top) = (plan.x0 as f64 * sx, plan.y0 as f64 * sy);
    // `min`: rounding must not push the box past the edge (an error in fast_image_resize).
    let box_width = (f64::from(plan.crop) * sx).min(f64::from(bitmap.width) - left);
    let box_height = (f64::from(plan.crop) * sy).min(f64::from(bitmap.height) - top);
    let mut dst = Image::new(plan.crop, plan.crop, pixel_type);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left, top, box_width, box_height);
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| internal(&e))?;
    Ok(Some(dst.into_vec()))
}
