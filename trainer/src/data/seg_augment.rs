//! Segmentation views: for training, the image and its label map scaled, cropped and flipped
//! together (mmsegmentation's ADE20k pipeline: the short side brought to a scale, a random
//! rescale of it, a random crop padded with the ignore label where the image is smaller than
//! the crop, a horizontal flip); for evaluation, the image at that scale. The image is
//! resampled with Catmull-Rom, the label map with nearest neighbour: labels must not blend.

use fast_image_resize as fr;
use image::{GrayImage, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The ignore label of padding (and of ADE20k's "other" after `reduce_zero_label`): any value
/// outside the classes counts nowhere, this one by convention.
pub const IGNORE: u8 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SegAugment {
    /// Side of the square crop in pixels.
    pub crop: u32,
    /// Short side the image is brought to before the random rescale, and for evaluation.
    pub short_side: u32,
    /// Range of the random rescale around `short_side` (mmsegmentation's `ratio_range`).
    pub scale: (f64, f64),
    pub flip: bool,
    /// What padding is labelled.
    pub ignore: u8,
    /// Label 0 means "other": it is ignored and the classes shift down by one (ADE20k).
    #[serde(default)]
    pub reduce_zero_label: bool,
}

/// A stored label map as training and evaluation read it: with `reduce_zero_label`, 0 becomes
/// [`IGNORE`] and every other value one less.
pub fn labels(mut mask: GrayImage, reduce_zero_label: bool) -> GrayImage {
    if reduce_zero_label {
        mask.iter_mut().for_each(|v| *v = if *v == 0 { IGNORE } else { *v - 1 });
    }
    mask
}

/// The evaluation image: its short side brought to `short_side`, the aspect ratio kept.
pub fn seg_eval_image(img: &RgbImage, short_side: u32) -> RgbImage {
    let to = scaled(
        img.dimensions(),
        f64::from(short_side) / f64::from(img.width().min(img.height())),
    );
    let raw = resize(img.as_raw(), img.dimensions(), to, fr::PixelType::U8x3);
    RgbImage::from_raw(to.0, to.1, raw).expect("resize keeps the buffer's size")
}

/// `(w, h)` times `s`, at least one pixel each.
fn scaled((w, h): (u32, u32), s: f64) -> (u32, u32) {
    (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    )
}

/// A training view of an image and its label map, aligned pixel for pixel; a label map of
/// another size than its image, or an empty rescale range, is the error's reason.
pub fn seg_train_view<R: Rng>(
    img: &RgbImage,
    mask: &GrayImage,
    cfg: &SegAugment,
    rng: &mut R,
) -> Result<(RgbImage, GrayImage), String> {
    if img.dimensions() != mask.dimensions() {
        return Err(format!(
            "a {:?} label map for a {:?} image",
            mask.dimensions(),
            img.dimensions()
        ));
    }
    if !(cfg.scale.0 > 0.0 && cfg.scale.0 <= cfg.scale.1) || cfg.crop == 0 || cfg.short_side == 0 {
        return Err(format!(
            "rescale range {:?}, crop {} and short side {}",
            cfg.scale, cfg.crop, cfg.short_side
        ));
    }
    let (w, h) = img.dimensions();
    let s = rng.random_range(cfg.scale.0..=cfg.scale.1) * f64::from(cfg.short_side) / f64::from(w.min(h));
    let (sw, sh) = scaled((w, h), s);
    let img = resize(img.as_raw(), (w, h), (sw, sh), fr::PixelType::U8x3);
    let mask = resize(mask.as_raw(), (w, h), (sw, sh), fr::PixelType::U8);
    let c = cfg.crop;
    let left = rng.random_range(0..=sw.saturating_sub(c));
    let top = rng.random_range(0..=sh.saturating_sub(c));
    let flip = cfg.flip && rng.random_bool(0.5);
    let mut out_img = RgbImage::new(c, c);
    let mut out_mask = GrayImage::from_pixel(c, c, image::Luma([cfg.ignore]));
    for y in 0..c.min(sh - top) {
        for x in 0..c.min(sw - left) {
            let (sx, sy) = ((left + x) as usize, (top + y) as usize);
            let dx = if flip { c.min(sw - left) - 1 - x } else { x };
            let i = sy * sw as usize + sx;
            out_img.put_pixel(dx, y, image::Rgb([img[3 * i], img[3 * i + 1], img[3 * i + 2]]));
            out_mask.put_pixel(dx, y, image::Luma([mask[i]]));
        }
    }
    Ok((out_img, out_mask))
}

/// Resamples a packed buffer: RGB with Catmull-Rom, a one-channel label map with nearest
/// neighbour.
fn resize(src: &[u8], from: (u32, u32), to: (u32, u32), pixel: fr::PixelType) -> Vec<u8> {
    if from == to {
        return src.to_vec();
    }
    let src = fr::images::ImageRef::new(from.0, from.1, src, pixel).expect("buffer matches dimensions");
    let mut dst = fr::images::Image::new(to.0, to.1, pixel);
    let alg = match pixel {
        fr::PixelType::U8 => fr::ResizeAlg::Nearest,
        _ => fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
    };
    fr::Resizer::new()
        .resize(&src, &mut dst, &fr::ResizeOptions::new().resize_alg(alg))
        .expect("same pixel type");
    dst.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A frame of 48 px blocks whose label is a function of its colour (red = 20 x class), so
    /// alignment can be read off any view.
    fn blocks() -> (RgbImage, GrayImage) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let classes: Vec<u8> = (0..8 * 6).map(|_| rng.random_range(0..10)).collect();
        let class = |x: u32, y: u32| classes[(y / 48 * 8 + x / 48) as usize];
        let img = RgbImage::from_fn(384, 288, |x, y| image::Rgb([20 * class(x, y), 90, 40]));
        let mask = GrayImage::from_fn(384, 288, |x, y| image::Luma([class(x, y)]));
        (img, mask)
    }

    fn agreement(img: &RgbImage, mask: &GrayImage, ignore: u8) -> (f64, usize) {
        let (mut same, mut labelled) = (0, 0);
        for (p, m) in img.pixels().zip(mask.pixels()) {
            if m.0[0] == ignore {
                continue;
            }
            labelled += 1;
            same += usize::from((p.0[0] as f64 / 20.0).round() as u8 == m.0[0]);
        }
        (same as f64 / labelled.max(1) as f64, labelled)
    }

    #[test]
    fn image_and_label_map_stay_aligned() {
        let (img, mask) = blocks();
        let cfg = SegAugment {
            crop: 256,
            short_side: 288,
            scale: (0.5, 2.0),
            flip: true,
            ignore: 255,
            reduce_zero_label: false,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut flips = 0;
        for _ in 0..20 {
            let (v, m) = seg_train_view(&img, &mask, &cfg, &mut rng).unwrap();
            assert_eq!((v.dimensions(), m.dimensions()), ((256, 256), (256, 256)));
            let (share, labelled) = agreement(&v, &m, 255);
            assert!(labelled > 0 && share > 0.85, "aligned: {share}");
            // Labels never blend: every value is a class or the padding's ignore.
            assert!(m.pixels().all(|p| p.0[0] < 10 || p.0[0] == 255));
            // The control: the same view with only the label map flipped disagrees.
            let mirrored = image::imageops::flip_horizontal(&m);
            let (wrong, _) = agreement(&v, &mirrored, 255);
            flips += usize::from(wrong < 0.6);
        }
        assert!(flips >= 15, "a misaligned map is caught: {flips} of 20");
        // A rescale below the crop pads with the ignore label.
        let small = SegAugment {
            scale: (0.5, 0.5),
            ..cfg
        };
        let (_, m) = seg_train_view(&img, &mask, &small, &mut rng).unwrap();
        assert_eq!(m.get_pixel(255, 255).0[0], 255);
        assert_eq!(m.pixels().filter(|p| p.0[0] != 255).count(), 192 * 144);
        // ADE20k's labels: "other" is ignored, the classes shift down.
        let reduced = labels(GrayImage::from_raw(3, 1, vec![0, 1, 150]).unwrap(), true);
        assert_eq!(reduced.as_raw(), &vec![255, 0, 149]);
        assert_eq!(seg_eval_image(&img, 144).dimensions(), (192, 144));
        let wrong = GrayImage::new(10, 10);
        assert!(seg_train_view(&img, &wrong, &cfg, &mut rng)
            .unwrap_err()
            .contains("label map"));
    }
}
