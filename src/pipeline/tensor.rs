//! The last step: 8-bit pixels → `(x / 255 - mean) / std`, planar (R, G, B planes), written
//! straight into the caller's buffer.

use super::{ImageError, PreprocessConfig};

/// Packed 8-bit pixels with 1 (gray) or 3 (RGB) channels.
pub(super) struct View<'a> {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: &'a [u8],
}

/// Writes the `crop`×`crop` square at (`x0`, `y0`) of `view`; gray is replicated to R, G and B.
pub(super) fn write_normalized(
    view: &View<'_>,
    x0: usize,
    y0: usize,
    config: &PreprocessConfig,
    out: &mut [f32],
) -> Result<(), ImageError> {
    let crop = config.crop as usize;
    let ch = view.channels;
    let fits = (ch == 1 || ch == 3)
        && x0 + crop <= view.width
        && y0 + crop <= view.height
        && view.pixels.len() >= view.width * view.height * ch
        && out.len() == 3 * crop * crop;
    if !fits {
        return Err(ImageError::Internal(format!(
            "crop {crop} at ({x0}, {y0}) does not fit a {}x{}x{ch} image",
            view.width, view.height
        )));
    }
    // One table per channel: 3 × 256 divisions instead of one per output value, and exactly
    // the f32 arithmetic of the numpy reference.
    let lut: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - config.mean[c]) / config.std[c]));
    let (r_plane, rest) = out.split_at_mut(crop * crop);
    let (g_plane, b_plane) = rest.split_at_mut(crop * crop);
    let rows = r_plane.chunks_exact_mut(crop).zip(g_plane.chunks_exact_mut(crop)).zip(b_plane.chunks_exact_mut(crop));
    for (y, ((r, g), b)) in rows.enumerate() {
        let start = ((y0 + y) * view.width + x0) * ch;
        let src = &view.pixels[start..start + crop * ch];
        if ch == 3 {
            for (((px, r), g), b) in src.chunks_exact(3).zip(r.iter_mut()).zip(g.iter_mut()).zip(b.iter_mut()) {
                *r = lut[0][usize::from(px[0])];
                *g = lut[1][usize::from(px[1])];
                *b = lut[2][usize::from(px[2])];
            }
        } else {
            for (((&v, r), g), b) in src.iter().zip(r.iter_mut()).zip(g.iter_mut()).zip(b.iter_mut()) {
                let v = usize::from(v);
                (*r, *g, *b) = (lut[0][v], lut[1][v], lut[2][v]);
            }
        }
    }
    Ok(())
}
