//! Image views shared by the pre-tokenizer and the trainer, so both see the same pixels.
//!
//! The canonical view is the encoder's 224 view of the center crop; the tokenizer's view is
//! its exact 2x2 box downsample to 112, cut into a 14x14 grid of 8x8 patches.

use fast_image_resize as fr;
use image::RgbImage;
use schemas::Preprocessing;

/// Center square crop resized to `size` x `size` (bicubic), i.e. "resize the shorter side to
/// `size`, center crop `size`" in one resampling pass.
pub fn canonical_view(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.min(h) as f64;
    let left = (w as f64 - side) / 2.0;
    let top = (h as f64 - side) / 2.0;
    let src = fr::images::ImageRef::new(w, h, img.as_raw(), fr::PixelType::U8x3).expect("buffer matches dimensions");
    let mut dst = fr::images::Image::new(size, size, fr::PixelType::U8x3);
    let opts = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom))
        .crop(left, top, side, side);
    fr::Resizer::new()
        .resize(&src, &mut dst, &opts)
        .expect("same pixel type");
    RgbImage::from_raw(size, size, dst.into_vec()).expect("buffer matches dimensions")
}

/// Patch vectors of a view of `p.source_view_size` pixels: pixels to [0, 1], 2x2 box mean to
/// `p.view_size`, per-channel normalization, then `grid²` patches of `dim` values, row-major
/// over the grid and (y, x, channel) inside a patch. Appends to `out`.
pub fn patch_vectors(view: &RgbImage, p: &Preprocessing, out: &mut Vec<f32>) {
    let src = p.source_view_size as usize;
    let size = p.view_size as usize;
    assert_eq!(
        view.dimensions(),
        (src as u32, src as u32),
        "tokenizer input must be the {src} view"
    );
    assert_eq!(src, 2 * size, "box2 downsampling halves the view");
    let raw = view.as_raw();
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * 4.0 * p.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| p.mean[c] / p.std[c]);
    let ps = p.patch_size as usize;
    let grid = size / ps;
    out.reserve(grid * grid * ps * ps * 3);
    for gy in 0..grid {
        for gx in 0..grid {
            for y in 0..ps {
                let sy = 2 * (gy * ps + y);
                for x in 0..ps {
                    let sx = 2 * (gx * ps + x);
                    for c in 0..3 {
                        let at = |yy: usize, xx: usize| raw[(yy * src + xx) * 3 + c] as u32;
                        let sum = at(sy, sx) + at(sy, sx + 1) + at(sy + 1, sx) + at(sy + 1, sx + 1);
                        out.push(sum as f32 * scale[c] - shift[c]);
                    }
                }
            }
        }
    }
}

/// Inverse of the normalization, for drawing a patch vector as pixels.
pub fn patch_pixels(v: &[f32], p: &Preprocessing) -> Vec<u8> {
    v.chunks(3)
        .flat_map(|px| (0..3).map(move |c| ((px[c] * p.std[c] + p.mean[c]) * 255.0).round().clamp(0.0, 255.0) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_view_crops_the_center() {
        // Left third red, middle blue, right third green: the center crop is mostly blue.
        let img = RgbImage::from_fn(300, 100, |x, _| match x {
            0..=99 => image::Rgb([255, 0, 0]),
            100..=199 => image::Rgb([0, 0, 255]),
            _ => image::Rgb([0, 255, 0]),
        });
        let v = canonical_view(&img, 224);
        assert_eq!(v.dimensions(), (224, 224));
        assert_eq!(v.get_pixel(112, 112).0, [0, 0, 255]);
        assert_eq!(v.get_pixel(3, 3).0, [0, 0, 255]);
    }

    #[test]
    fn patch_layout_and_box_mean() {
        let p = Preprocessing::paper();
        let view = RgbImage::from_fn(224, 224, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x / 16 + y / 16) * 10) as u8])
        });
        let mut out = Vec::new();
        patch_vectors(&view, &p, &mut out);
        assert_eq!(out.len(), 196 * 192);
        // Patch (gy=1, gx=2), pixel (y=3, x=5), channel 0 = mean of the 2x2 block at (2*(8+3), 2*(16+5)).
        let (gy, gx, y, x, c) = (1, 2, 3, 5, 0);
        let v = out[(gy * 14 + gx) * 192 + (y * 8 + x) * 3 + c];
        let sx = 2 * (gx * 8 + x);
        let expect = ((sx + sx + sx + 1 + sx + 1) as f32 / 4.0 / 255.0 - p.mean[0]) / p.std[0];
        assert!((v - expect).abs() < 1e-5, "{v} {expect}");
    }

    #[test]
    fn patch_pixels_inverts_the_normalization() {
        let p = Preprocessing::paper();
        // Uniform 2x2 blocks, so the box mean is exact and the round trip returns the pixels.
        let view = RgbImage::from_fn(224, 224, |x, y| image::Rgb([(x / 2) as u8, (y / 2) as u8, 7]));
        let mut out = Vec::new();
        patch_vectors(&view, &p, &mut out);
        let px = patch_pixels(&out[192..384], &p); // patch (0, 1): x from 8 to 15
        for y in 0..8 {
            for x in 0..8 {
                assert_eq!(&px[(y * 8 + x) * 3..(y * 8 + x) * 3 + 3], &[(8 + x) as u8, y as u8, 7]);
            }
        }
    }
}
