//! Image pipeline: untrusted bytes in, a normalized NCHW `f32` tensor out.
//!
//! Decode (JPEG, PNG, WebP, BMP, GIF first frame) → RGB → EXIF orientation → resize the
//! shorter side (bilinear with antialiasing, as Pillow's `Image.BILINEAR`) → center crop →
//! scale to [0,1] → normalize with mean/std → write planar RGB straight into the caller's
//! buffer. Every failure is a typed [`ImageError`] so the HTTP layer can map it once.
//!
//! Files: `decode` (format, size check, pixels), `jpeg` (JPEG header walk, 1/4-1/8 scale
//! decoding of big photos), `resize` (geometry + resampling), `tensor` (normalization).
//! The reference is Pillow: `Image.open(p).convert('RGB')`, `resize((w, h), BILINEAR)` with
//! the longer side `round(long * resize / short)`, crop at `(side - crop) // 2`, `/ 255`,
//! `(x - mean) / std`. EXIF orientation is applied where the decoder reports it (JPEG, and the
//! rarer PNG/WebP eXIf), as browsers do.

use serde::{Deserialize, Serialize};

mod bitmap;
pub mod budget;
mod decode;
mod jpeg;
mod resize;
mod tensor;
#[cfg(test)]
mod tests;

use tensor::View;

/// How a model wants its input prepared. Defaults are the torchvision ImageNet convention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// The shorter side is resized to this many pixels.
    pub resize: u32,
    /// Then a centered square of this side is cropped out.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Images with more pixels than this are refused from their header, before decoding.
    pub max_pixels: u64,
    /// Whose decode this is, for the decode-memory budget ([`budget`]): a tier that answers
    /// clients refuses at once when the budget is held; a background tier waits, within its
    /// share. Not part of what the output depends on.
    #[serde(skip)]
    pub decode_priority: budget::Priority,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            resize: 256,
            crop: 224,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            max_pixels: 64_000_000,
            decode_priority: budget::Priority::Foreground,
        }
    }
}

impl PreprocessConfig {
    /// Number of `f32`s one preprocessed image occupies: `3 * crop * crop`.
    pub fn tensor_len(&self) -> usize {
        3 * self.crop as usize * self.crop as usize
    }
}

/// Why an input could not be turned into a tensor.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ImageError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("the bytes are not an image of any supported format (JPEG, PNG, WebP, BMP, GIF)")]
    NotAnImage,
    #[error("the image is truncated or corrupt: {0}")]
    Truncated(String),
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    #[error("the image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels")]
    TooLarge { width: u32, height: u32, pixels: u64, limit: u64 },
    #[error(
        "decoding the image needs {} MiB, more than the decode memory limit of {} MiB (--decode-memory)",
        needed >> 20,
        limit >> 20
    )]
    OverMemory { needed: u64, limit: u64 },
    #[error(
        "other images are being decoded: this one needs {} MiB and {} MiB of the decode memory limit ({} MiB) are free; retry shortly",
        needed >> 20,
        free >> 20,
        limit >> 20
    )]
    DecodeBusy { needed: u64, free: u64, limit: u64 },
    /// Structurally valid but built to cost far more to decode than any real image.
    #[error("the image is refused as too costly to decode: {0}")]
    TooComplex(String),
    /// The caller's fault, not the image's (output buffer of the wrong length, `crop > resize`):
    /// a server-side bug or misconfiguration.
    #[error("internal preprocessing error: {0}")]
    Internal(String),
}

/// Decodes `bytes` and writes the preprocessed tensor (`3 × crop × crop`, planar RGB) into `out`.
///
/// `out.len()` must equal [`PreprocessConfig::tensor_len`].
pub fn preprocess_into(bytes: &[u8], config: &PreprocessConfig, out: &mut [f32]) -> Result<(), ImageError> {
    check_config(config, out.len())?;
    let bitmap = decode::decode(bytes, config)?;
    bitmap_to_tensor(&bitmap, config, out)
}

/// Resize, crop and normalize a decoded bitmap into `out`.
fn bitmap_to_tensor(bitmap: &bitmap::Bitmap, config: &PreprocessConfig, out: &mut [f32]) -> Result<(), ImageError> {
    let plan = resize::Plan::new(bitmap.full_width, bitmap.full_height, config.resize, config.crop)?;
    let channels = bitmap.channels;
    match resize::resize_and_crop(bitmap, &plan)? {
        // Already at the target size (typical for 256-px inputs): read the crop in place.
        None => {
            let view =
                View { width: bitmap.width as usize, height: bitmap.height as usize, channels, pixels: &bitmap.pixels };
            let (x0, y0) = (plan.x0 as usize, plan.y0 as usize);
            tensor::write_normalized(&view, x0, y0, config, out)
        }
        Some(pixels) => {
            let crop = config.crop as usize;
            let view = View { width: crop, height: crop, channels, pixels: &pixels };
            tensor::write_normalized(&view, 0, 0, config, out)
        }
    }
}

fn check_config(config: &PreprocessConfig, out_len: usize) -> Result<(), ImageError> {
    if config.crop == 0 || config.crop > config.resize {
        return Err(ImageError::Internal(format!(
            "crop ({}) must be between 1 and resize ({})",
            config.crop, config.resize
        )));
    }
    if out_len != config.tensor_len() {
        return Err(ImageError::Internal(format!(
            "the output buffer holds {out_len} floats, 3x{c}x{c} = {} are needed",
            config.tensor_len(),
            c = config.crop
        )));
    }
    Ok(())
}

/// Convenience wrapper that allocates the output tensor.
pub fn preprocess(bytes: &[u8], config: &PreprocessConfig) -> Result<Vec<f32>, ImageError> {
    let mut out = vec![0.0; config.tensor_len()];
    preprocess_into(bytes, config, &mut out)?;
    Ok(out)
}
