//! Image views for training and evaluation: random resized crop, horizontal flip, the paper's
//! strong augmentation for small datasets (color jitter, grayscale, gaussian blur,
//! solarization), the eval view (resize + center crop), and normalization to CHW floats.
//!
//! Every random choice comes from the RNG passed in, which the loader seeds per sample from
//! (seed, epoch, position): a sample's view does not depend on thread scheduling.

use fast_image_resize as fr;
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::randaugment::{rand_augment, RandAugmentConfig};
use crate::data::seg_augment::SegAugment;

/// ImageNet normalization, shared with the tokenizer (`schemas::Preprocessing::paper`).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Output side in pixels.
    pub size: u32,
    /// Share of the image area a crop covers, `[min, max]` (0.08-1 by default; the paper caps
    /// crops at 0.25 for ADE20k).
    pub scale: (f64, f64),
    /// Aspect-ratio range of crops.
    pub ratio: (f64, f64),
    pub flip: bool,
    /// Random resized crops; `false` takes the canonical view (shorter side to `size`, center
    /// crop), the view that `pipeline tokenize` pre-tokenized.
    pub random_crop: bool,
    /// Color jitter, grayscale, blur and solarization (the paper's small-dataset setting).
    pub strong: bool,
    /// Brightness, contrast and saturation jitter of this strength on every view (BEiT's
    /// pre-training augmentation: 0.4); 0 is off.
    #[serde(default)]
    pub color_jitter: f64,
    /// RandAugment after the crop and flip (fine-tuning).
    #[serde(default)]
    pub randaugment: Option<RandAugmentConfig>,
    /// Probability of timm's random erasing (one box of normal noise on the normalized view).
    #[serde(default)]
    pub erase_prob: f64,
    /// Repeated augmentation: each image drawn for an epoch appears this many times with
    /// different views (DeiT's sampler); 0 or 1 is off.
    #[serde(default)]
    pub repeats: u32,
    /// DINO's multi-crop views in place of the single view above (whose `size`, `ratio` and
    /// `flip` they share).
    #[serde(default)]
    pub multi_crop: Option<MultiCrop>,
    /// Semantic segmentation's joint image and label-map view in place of the views above
    /// (`size` is its crop).
    #[serde(default)]
    pub segmentation: Option<SegAugment>,
}

/// DINO's multi-crop: two global crops at the model's size and `local_crops` small ones, each
/// with its own flip and colour (DINO's `DataAugmentationDINO`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MultiCrop {
    /// Share of the image area a global crop covers (DINO: 0.4-1).
    pub global_scale: (f64, f64),
    pub local_crops: usize,
    /// Side of a local crop in pixels (DINO: 96 of 224, rounded to whole patches).
    pub local_size: u32,
    /// Share of the image area a local crop covers (DINO: 0.05-0.4).
    pub local_scale: (f64, f64),
}

impl MultiCrop {
    /// DINO's crops for a model of `size` px and `patch` px patches: local crops of 96/224 of
    /// the side, in whole patches (at least one).
    pub fn dino(size: u32, patch: u32, local_crops: usize) -> Self {
        let local = (f64::from(size) * 96.0 / 224.0 / f64::from(patch)).round().max(1.0) as u32;
        MultiCrop {
            global_scale: (0.4, 1.0),
            local_crops,
            local_size: local * patch,
            local_scale: (0.05, 0.4),
        }
    }

    /// The side of every view [`multi_crop_views`] draws, in its order: the two global crops
    /// at `size`, then the local ones.
    pub fn view_sizes(&self, size: u32) -> Vec<u32> {
        let locals = std::iter::repeat_n(self.local_size, self.local_crops);
        [size, size].into_iter().chain(locals).collect()
    }
}

/// What [`photometric`] draws: the probabilities of blur and solarization (the rest are
/// fixed), and the blur's pixel scale.
#[derive(Debug, Clone, Copy)]
struct Photometric {
    blur: f64,
    solarize: f64,
    /// Blur sigmas are drawn for 224 px views and scaled by this.
    sigma_scale: f32,
}

impl AugmentConfig {
    pub fn pretrain(size: u32, strong: bool) -> Self {
        AugmentConfig {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
            random_crop: true,
            strong,
            color_jitter: 0.0,
            randaugment: None,
            erase_prob: 0.0,
            repeats: 1,
            multi_crop: None,
            segmentation: None,
        }
    }

    /// Segmentation's training views: `seg`'s rescale, crop and flip of the image and its
    /// label map, nothing else.
    pub fn segment(seg: SegAugment) -> Self {
        AugmentConfig {
            segmentation: Some(seg),
            ..Self::pretrain(seg.crop, false)
        }
    }

    /// The fine-tuning views of BEiT / DeiT: random resized crop, flip, RandAugment, random
    /// erasing.
    pub fn finetune(size: u32, randaugment: Option<RandAugmentConfig>, erase_prob: f64, repeats: u32) -> Self {
        AugmentConfig {
            randaugment,
            erase_prob,
            repeats,
            ..Self::pretrain(size, false)
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a crop of random area and
/// log-uniform aspect ratio, then a center crop with the ratio clamped. Returns (left, top,
/// width, height).
pub fn crop_box<R: Rng>(rng: &mut R, w: u32, h: u32, scale: (f64, f64), ratio: (f64, f64)) -> (u32, u32, u32, u32) {
    let area = (w * h) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(lr0..=lr1).exp();
        let cw = (target * aspect).sqrt().round() as u32;
        let ch = (target / aspect).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let left = rng.random_range(0..=w - cw);
            let top = rng.random_range(0..=h - ch);
            return (left, top, cw, ch);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, ((w as f64 / ratio.0).round() as u32).min(h))
    } else if in_ratio > ratio.1 {
        (((h as f64 * ratio.1).round() as u32).min(w), h)
    } else {
        (w, h)
    };
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// Resamples a crop of `img` to `size` x `size` (Catmull-Rom, as the pipeline's views).
pub fn resize_crop(img: &RgbImage, crop: (f64, f64, f64, f64), size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let src = fr::images::ImageRef::new(w, h, img.as_raw(), fr::PixelType::U8x3).expect("buffer matches dimensions");
    let mut dst = fr::images::Image::new(size, size, fr::PixelType::U8x3);
    let opts = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom))
        .crop(crop.0, crop.1, crop.2, crop.3);
    fr::Resizer::new()
        .resize(&src, &mut dst, &opts)
        .expect("same pixel type");
    RgbImage::from_raw(size, size, dst.into_vec()).expect("buffer matches dimensions")
}

/// A training view (random resized crop or the canonical view, flip, optional strong
/// augmentation) and whether it was flipped.
pub fn train_view<R: Rng>(img: &RgbImage, cfg: &AugmentConfig, rng: &mut R) -> (RgbImage, bool) {
    let mut view = if cfg.random_crop {
        let (w, h) = img.dimensions();
        let (l, t, cw, ch) = crop_box(rng, w, h, cfg.scale, cfg.ratio);
        resize_crop(img, (l as f64, t as f64, cw as f64, ch as f64), cfg.size)
    } else {
        pipeline::views::canonical_view(img, cfg.size)
    };
    let flipped = cfg.flip && rng.random_bool(0.5);
    if flipped {
        image::imageops::flip_horizontal_in_place(&mut view);
    }
    if cfg.color_jitter > 0.0 {
        let j = cfg.color_jitter as f32;
        let mut px = to_unit(&view);
        color_jitter(&mut px, [j, j, j, 0.0], rng);
        from_unit(&mut view, &px);
    }
    if cfg.strong {
        strong_augment(&mut view, rng);
    }
    if let Some(ra) = &cfg.randaugment {
        rand_augment(&mut view, ra, rng);
    }
    (view, flipped)
}

/// DINO's views of an image: two global crops (the first always blurred, the second blurred
/// with probability 0.1 and solarized with 0.2) and `local_crops` local ones (blurred with
/// probability 0.5), each flipped and colour-jittered on its own.
pub fn multi_crop_views<R: Rng>(img: &RgbImage, cfg: &AugmentConfig, mc: &MultiCrop, rng: &mut R) -> Vec<RgbImage> {
    let (w, h) = img.dimensions();
    let sigma_scale = cfg.size as f32 / 224.0;
    let mut view = |size: u32, scale: (f64, f64), blur: f64, solarize: f64| {
        let (l, t, cw, ch) = crop_box(rng, w, h, scale, cfg.ratio);
        let mut v = resize_crop(img, (l as f64, t as f64, cw as f64, ch as f64), size);
        if cfg.flip && rng.random_bool(0.5) {
            image::imageops::flip_horizontal_in_place(&mut v);
        }
        let p = Photometric {
            blur,
            solarize,
            sigma_scale,
        };
        photometric(&mut v, rng, p);
        v
    };
    let mut views = vec![
        view(cfg.size, mc.global_scale, 1.0, 0.0),
        view(cfg.size, mc.global_scale, 0.1, 0.2),
    ];
    views.extend((0..mc.local_crops).map(|_| view(mc.local_size, mc.local_scale, 0.5, 0.0)));
    views
}

/// Evaluation view: resize so the center crop of `crop_ratio` of the shorter side becomes
/// `size` (timm's `crop_pct`, 0.875 in the paper), i.e. one resampling of that center square.
pub fn eval_view(img: &RgbImage, size: u32, crop_ratio: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.min(h) as f64 * crop_ratio;
    resize_crop(
        img,
        ((w as f64 - side) / 2.0, (h as f64 - side) / 2.0, side, side),
        size,
    )
}

fn to_unit(view: &RgbImage) -> Vec<f32> {
    view.as_raw().iter().map(|&v| v as f32 / 255.0).collect()
}

fn from_unit(view: &mut RgbImage, px: &[f32]) {
    for (o, v) in view.iter_mut().zip(px) {
        *o = (v * 255.0).round().clamp(0.0, 255.0) as u8;
    }
}

fn gray(p: &[f32]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// torchvision's `ColorJitter(brightness, contrast, saturation, hue)` on interleaved RGB in
/// [0, 1]: each factor uniform in `[1 - s, 1 + s]` (the hue's shift in `[-h, h]` turns), the
/// four applied in a random order; a strength of 0 leaves its operation out, as torchvision does.
pub fn color_jitter<R: Rng>(px: &mut [f32], strengths: [f32; 4], rng: &mut R) {
    let mut order = [0usize, 1, 2, 3];
    for i in (1..4).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    // Scale factors around 1; the hue's shift around 0.
    let centres = [1.0, 1.0, 1.0, 0.0];
    let [fb, fc, fs, fh] = std::array::from_fn(|i| match strengths[i] > 0.0 {
        true => rng.random_range(centres[i] - strengths[i]..=centres[i] + strengths[i]),
        false => centres[i],
    });
    for op in order.into_iter().filter(|&op| strengths[op] > 0.0) {
        match op {
            0 => px.iter_mut().for_each(|v| *v = (*v * fb).clamp(0.0, 1.0)),
            1 => {
                let mean = px.chunks(3).map(gray).sum::<f32>() / (px.len() / 3).max(1) as f32;
                px.iter_mut()
                    .for_each(|v| *v = ((*v - mean) * fc + mean).clamp(0.0, 1.0));
            }
            2 => {
                for p in px.chunks_mut(3) {
                    let g = gray(p);
                    p.iter_mut().for_each(|v| *v = ((*v - g) * fs + g).clamp(0.0, 1.0));
                }
            }
            _ => px.chunks_mut(3).for_each(|p| shift_hue(p, fh)),
        }
    }
}

/// torchvision's `adjust_hue` on one RGB pixel: through HSV, the hue turned by `shift`.
fn shift_hue(p: &mut [f32], shift: f32) {
    let (r, g, b) = (p[0], p[1], p[2]);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let chroma = max - min;
    if chroma <= 0.0 {
        return; // gray: no hue to turn
    }
    let (rc, gc, bc) = ((max - r) / chroma, (max - g) / chroma, (max - b) / chroma);
    let sector = if max == r {
        bc - gc
    } else if max == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    let hue = (sector / 6.0 + shift).rem_euclid(1.0);
    let (sat, v) = (chroma / max, max);
    let i = (hue * 6.0).floor();
    let f = hue * 6.0 - i;
    let low = (v * (1.0 - sat)).clamp(0.0, 1.0);
    let falling = (v * (1.0 - sat * f)).clamp(0.0, 1.0);
    let rising = (v * (1.0 - sat * (1.0 - f))).clamp(0.0, 1.0);
    let rgb = match i as i32 % 6 {
        0 => [v, rising, low],
        1 => [falling, v, low],
        2 => [low, v, rising],
        3 => [low, falling, v],
        4 => [rising, low, v],
        _ => [v, low, falling],
    };
    p.copy_from_slice(&rgb);
}

/// BYOL/DINO-style strong augmentation in place: color jitter (p 0.8: brightness and
/// contrast 0.4, saturation 0.2, hue 0.1), grayscale (p 0.2), gaussian blur (p 0.5, sigma
/// 0.1-2 in units of 224 px views), solarization (p 0.2).
pub fn strong_augment<R: Rng>(view: &mut RgbImage, rng: &mut R) {
    let sigma_scale = view.width() as f32 / 224.0;
    let p = Photometric {
        blur: 0.5,
        solarize: 0.2,
        sigma_scale,
    };
    photometric(view, rng, p);
}

/// Colour jitter (p 0.8), grayscale (p 0.2), then blur and solarization with `p`'s
/// probabilities.
fn photometric<R: Rng>(view: &mut RgbImage, rng: &mut R, p: Photometric) {
    let mut px = to_unit(view);
    if rng.random_bool(0.8) {
        color_jitter(&mut px, [0.4, 0.4, 0.2, 0.1], rng);
    }
    if rng.random_bool(0.2) {
        for p in px.chunks_mut(3) {
            let g = gray(p);
            p.fill(g);
        }
    }
    let (w, h) = view.dimensions();
    if rng.random_bool(p.blur) {
        let sigma = rng.random_range(0.1..=2.0f32) * p.sigma_scale;
        gaussian_blur(&mut px, w as usize, h as usize, sigma);
    }
    if rng.random_bool(p.solarize) {
        px.iter_mut().for_each(|v| {
            if *v >= 0.5 {
                *v = 1.0 - *v
            }
        });
    }
    from_unit(view, &px);
}

/// Separable gaussian blur of an interleaved RGB float image (edges clamped).
fn gaussian_blur(px: &mut [f32], w: usize, h: usize, sigma: f32) {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let mut tmp = vec![0f32; px.len()];
    let pass = |src: &[f32], dst: &mut [f32], horizontal: bool| {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let mut acc = 0.0;
                    for (k, wk) in kernel.iter().enumerate() {
                        let o = k as isize - radius;
                        let (sx, sy) = if horizontal {
                            ((x as isize + o).clamp(0, w as isize - 1) as usize, y)
                        } else {
                            (x, (y as isize + o).clamp(0, h as isize - 1) as usize)
                        };
                        acc += wk * src[(sy * w + sx) * 3 + c];
                    }
                    dst[(y * w + x) * 3 + c] = acc;
                }
            }
        }
    };
    pass(px, &mut tmp, true);
    pass(&tmp, px, false);
}

/// timm's `RandomErasing` (mode `pixel`, one box) on a normalized `[3, size, size]` view: with
/// probability `prob`, a box of 2%-33% of the area and aspect 0.3-3.3 becomes N(0, 1) noise.
pub fn random_erase<R: Rng>(chw: &mut [f32], size: usize, prob: f64, rng: &mut R) {
    if prob <= 0.0 || !rng.random_bool(prob.min(1.0)) {
        return;
    }
    let area = (size * size) as f64;
    let (lr0, lr1) = ((0.3f64).ln(), (1.0 / 0.3f64).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.02..1.0 / 3.0);
        let aspect = rng.random_range(lr0..lr1).exp();
        let h = (target * aspect).sqrt().round() as usize;
        let w = (target / aspect).sqrt().round() as usize;
        if w == 0 || h == 0 || w >= size || h >= size {
            continue;
        }
        let top = rng.random_range(0..=size - h);
        let left = rng.random_range(0..=size - w);
        let normal = rand_distr::StandardNormal;
        for c in 0..3 {
            for y in top..top + h {
                for x in left..left + w {
                    chw[(c * size + y) * size + x] = rng.sample::<f32, _>(normal);
                }
            }
        }
        return;
    }
}

/// Normalized CHW floats of a view, appended to `out`.
pub fn to_chw(view: &RgbImage, out: &mut Vec<f32>) {
    // Each channel's 256 normalized values, computed as the per-pixel formula computes them
    // (the same floats): two divisions per value cost a fifth of the loader's time.
    static LUT: std::sync::LazyLock<[[f32; 256]; 3]> = std::sync::LazyLock::new(|| {
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - MEAN[c]) / STD[c]))
    });
    let raw = view.as_raw();
    out.reserve(raw.len());
    for (c, lut) in LUT.iter().enumerate() {
        out.extend(raw[c..].iter().step_by(3).map(|&v| lut[v as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn multi_crop_gives_two_global_and_the_local_crops_at_their_sizes() {
        let mc = MultiCrop::dino(224, 16, 8);
        assert_eq!(
            (mc.local_size, mc.global_scale, mc.local_scale),
            (96, (0.4, 1.0), (0.05, 0.4))
        );
        // 96/224 of 64 px is 27.4: 3 whole 8 px patches.
        assert_eq!(MultiCrop::dino(64, 8, 6).local_size, 24);
        let img = RgbImage::from_fn(120, 90, |x, y| image::Rgb([x as u8, y as u8, (x + y) as u8]));
        let cfg = AugmentConfig {
            multi_crop: Some(MultiCrop::dino(64, 8, 6)),
            ..AugmentConfig::pretrain(64, false)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let views = multi_crop_views(&img, &cfg, cfg.multi_crop.as_ref().unwrap(), &mut rng);
        let sides: Vec<(u32, u32)> = views.iter().map(|v| v.dimensions()).collect();
        assert_eq!(sides, [[(64, 64); 2].as_slice(), &[(24, 24); 6]].concat());
        assert_ne!(views[0], views[1], "the global crops differ");
        let again = multi_crop_views(
            &img,
            &cfg,
            cfg.multi_crop.as_ref().unwrap(),
            &mut ChaCha8Rng::seed_from_u64(3),
        );
        assert_eq!(views, again, "a function of the seed");
    }

    #[test]
    fn crops_stay_inside_and_respect_scale() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for (w, h) in [(256, 256), (300, 120), (64, 500)] {
            for _ in 0..500 {
                let (l, t, cw, ch) = crop_box(&mut rng, w, h, (0.08, 0.25), (0.75, 4.0 / 3.0));
                assert!(l + cw <= w && t + ch <= h && cw > 0 && ch > 0);
                let share = (cw * ch) as f64 / (w * h) as f64;
                // The fallback center crop can exceed the cap on extreme aspect ratios only.
                if (w, h) == (256, 256) {
                    assert!((0.06..=0.27).contains(&share), "{share}");
                }
            }
        }
    }

    #[test]
    fn eval_view_of_a_centered_square_is_the_square() {
        // A 100x100 white square centered in a 200x200 black image; crop ratio 0.5 keeps only it.
        let img = RgbImage::from_fn(200, 200, |x, y| {
            let inside = (50..150).contains(&x) && (50..150).contains(&y);
            image::Rgb(if inside { [255; 3] } else { [0; 3] })
        });
        let v = eval_view(&img, 32, 0.5);
        // The resampling kernel reaches one source pixel past the crop: skip a 1 px border.
        let inner = v
            .enumerate_pixels()
            .filter(|(x, y, _)| (1..31).contains(x) && (1..31).contains(y));
        assert!(
            inner.clone().all(|(_, _, p)| p.0[0] > 250),
            "only the white square is left"
        );
        assert_eq!(inner.count(), 30 * 30);
    }

    #[test]
    fn strong_augmentation_is_seeded_and_changes_pixels() {
        let img = RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 100]));
        let run = |seed| {
            let mut v = img.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..3 {
                strong_augment(&mut v, &mut rng);
            }
            v
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), img);
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn color_jitter_stays_in_range_and_keeps_gray_gray() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut changed = 0;
        for _ in 0..50 {
            // A gray ramp stays gray (saturation has nothing to act on); values stay in [0, 1].
            let mut px: Vec<f32> = (0..30).flat_map(|i| [i as f32 / 29.0; 3]).collect();
            let before = px.clone();
            color_jitter(&mut px, [0.4, 0.4, 0.4, 0.1], &mut rng);
            assert!(px.iter().all(|v| (0.0..=1.0).contains(v)));
            assert!(px
                .chunks(3)
                .all(|p| (p[0] - p[1]).abs() < 1e-6 && (p[1] - p[2]).abs() < 1e-6));
            changed += (px != before) as usize;
        }
        assert!(changed > 45, "{changed}");
        // Strength 0 leaves the pixels alone.
        let mut px = vec![0.2f32, 0.5, 0.9];
        color_jitter(&mut px, [0.0; 4], &mut rng);
        assert_eq!(px, vec![0.2, 0.5, 0.9]);
    }

    /// Values by hand through torchvision's `_rgb2hsv` / `_hsv2rgb` formulas.
    #[test]
    fn hue_shift_turns_the_colour_wheel() {
        let turned = |rgb: [f32; 3], shift: f32| {
            let mut p = rgb;
            shift_hue(&mut p, shift);
            p
        };
        let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(turned([1.0, 0.0, 0.0], 1.0 / 3.0), [0.0, 1.0, 0.0]));
        assert!(close(turned([0.8, 0.4, 0.2], 0.1), [0.8, 0.76, 0.2]));
        assert!(close(turned([0.1, 0.5, 0.9], -0.1), [0.1, 0.9, 0.82]));
        for rgb in [[0.3, 0.6, 0.2], [0.9, 0.1, 0.5], [0.25, 0.25, 0.25]] {
            assert!(close(turned(rgb, 0.0), rgb), "{rgb:?}");
            assert!(close(turned(rgb, 1.0), rgb), "a whole turn: {rgb:?}");
        }
    }

    #[test]
    fn blur_keeps_constants_and_mass() {
        let mut flat = vec![0.3f32; 8 * 8 * 3];
        gaussian_blur(&mut flat, 8, 8, 1.5);
        assert!(flat.iter().all(|v| (v - 0.3).abs() < 1e-6));
        let mut dot = vec![0f32; 9 * 9 * 3];
        dot[(4 * 9 + 4) * 3] = 1.0;
        gaussian_blur(&mut dot, 9, 9, 1.0);
        let sum: f32 = dot.iter().step_by(3).sum();
        assert!((sum - 1.0).abs() < 1e-3 && dot[(4 * 9 + 4) * 3] < 0.5);
    }

    #[test]
    fn random_erasing_replaces_one_box() {
        let size = 32;
        let mut erased = 0;
        for seed in 0..50 {
            let mut chw = vec![7.0f32; 3 * size * size];
            random_erase(&mut chw, size, 0.5, &mut ChaCha8Rng::seed_from_u64(seed));
            let changed: Vec<usize> = (0..size * size).filter(|&i| chw[i] != 7.0).collect();
            if changed.is_empty() {
                continue;
            }
            erased += 1;
            // The changed pixels form a filled rectangle of 2%-34% of the view, in every channel.
            let (xs, ys): (Vec<usize>, Vec<usize>) = changed.iter().map(|&i| (i % size, i / size)).unzip();
            let w = xs.iter().max().unwrap() - xs.iter().min().unwrap() + 1;
            let h = ys.iter().max().unwrap() - ys.iter().min().unwrap() + 1;
            assert_eq!(w * h, changed.len());
            let share = changed.len() as f64 / (size * size) as f64;
            assert!((0.015..0.35).contains(&share), "{share}");
            assert!(changed.iter().all(|&i| chw[2 * size * size + i] != 7.0));
        }
        // Probability 0.5 over 50 seeds.
        assert!((10..40).contains(&erased), "{erased}");
    }

    #[test]
    fn chw_normalization() {
        let v = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 128]));
        let mut out = Vec::new();
        to_chw(&v, &mut out);
        assert_eq!(out.len(), 6);
        assert!((out[0] - (1.0 - MEAN[0]) / STD[0]).abs() < 1e-6);
        assert!((out[2] - (0.0 - MEAN[1]) / STD[1]).abs() < 1e-6);
    }
}
