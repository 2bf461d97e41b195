//! RandAugment as timm's `rand-m9-mstd0.5-inc1`, the fine-tuning policy of BEiT and the paper:
//! two operations drawn with replacement from fifteen, each applied with probability 0.5 at a
//! magnitude drawn from N(9, 0.5) clipped to [0, 10] ("increasing" variants: a larger
//! magnitude is always a stronger change). Geometric operations fill with timm's mean color.

use image::{Rgb, RgbImage};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// timm's `img_mean` fill for rotations, shears and translations.
const FILL: [u8; 3] = [124, 116, 104];
const LEVEL_DENOM: f64 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandAugmentConfig {
    /// Operations per image.
    pub ops: usize,
    /// Mean magnitude in [0, 10].
    pub magnitude: f64,
    /// Standard deviation of the magnitude, drawn per operation.
    pub magnitude_std: f64,
    /// Probability that a drawn operation is applied.
    pub prob: f64,
}

impl RandAugmentConfig {
    /// `rand-m9-mstd0.5-inc1`.
    pub fn paper() -> Self {
        RandAugmentConfig {
            ops: 2,
            magnitude: 9.0,
            magnitude_std: 0.5,
            prob: 0.5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    Solarize,
    SolarizeAdd,
    Color,
    Contrast,
    Brightness,
    Sharpness,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
}

pub const OPS: [Op; 15] = [
    Op::AutoContrast,
    Op::Equalize,
    Op::Invert,
    Op::Rotate,
    Op::Posterize,
    Op::Solarize,
    Op::SolarizeAdd,
    Op::Color,
    Op::Contrast,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
];

/// Applies the policy to `img` in place.
pub fn rand_augment<R: Rng>(img: &mut RgbImage, cfg: &RandAugmentConfig, rng: &mut R) {
    let normal = Normal::new(cfg.magnitude, cfg.magnitude_std.max(0.0)).expect("finite std");
    for _ in 0..cfg.ops {
        let op = OPS[rng.random_range(0..OPS.len())];
        if !rng.random_bool(cfg.prob.clamp(0.0, 1.0)) {
            continue;
        }
        let m = if cfg.magnitude_std > 0.0 {
            normal.sample(rng)
        } else {
            cfg.magnitude
        }
        .clamp(0.0, LEVEL_DENOM);
        let sign = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
        apply(img, op, m, sign);
    }
}

/// One operation at magnitude `m` (0..10); `sign` flips the direction of signed operations.
pub fn apply(img: &mut RgbImage, op: Op, m: f64, sign: f64) {
    let level = m / LEVEL_DENOM;
    match op {
        Op::AutoContrast => auto_contrast(img),
        Op::Equalize => equalize(img),
        Op::Invert => img.iter_mut().for_each(|v| *v = 255 - *v),
        Op::Rotate => {
            let (w, h) = img.dimensions();
            let a = (sign * level * 30.0).to_radians();
            let (cx, cy) = (w as f64 * 0.5, h as f64 * 0.5);
            // Output pixel -> source pixel: rotate about the center by -angle (PIL's rotate is
            // counter-clockwise for positive angles).
            let (c, s) = (a.cos(), a.sin());
            affine(img, [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy]);
        }
        Op::Posterize => {
            let bits = 4 - (level * 4.0) as u32;
            let mask = !((1u16 << (8 - bits.max(1))) - 1) as u8;
            img.iter_mut().for_each(|v| *v &= mask);
        }
        Op::Solarize => {
            let threshold = 256 - (level * 256.0) as i32;
            img.iter_mut().for_each(|v| {
                if *v as i32 >= threshold {
                    *v = 255 - *v
                }
            });
        }
        Op::SolarizeAdd => {
            let add = (level * 110.0) as u16;
            img.iter_mut().for_each(|v| {
                if *v < 128 {
                    *v = (*v as u16 + add).min(255) as u8
                }
            });
        }
        Op::Color => {
            let f = 1.0 + sign * level * 0.9;
            blend_with(img, f, |p| {
                let g = gray(p);
                [g, g, g]
            });
        }
        Op::Contrast => {
            let f = 1.0 + sign * level * 0.9;
            let n = (img.width() * img.height()).max(1) as f64;
            let mean = (img.pixels().map(|p| gray(&p.0) as f64).sum::<f64>() / n).round() as f32;
            blend_with(img, f, |_| [mean; 3]);
        }
        Op::Brightness => blend_with(img, 1.0 + sign * level * 0.9, |_| [0.0; 3]),
        Op::Sharpness => sharpness(img, 1.0 + sign * level * 0.9),
        Op::ShearX => affine(img, [1.0, sign * level * 0.3, 0.0, 0.0, 1.0, 0.0]),
        Op::ShearY => affine(img, [1.0, 0.0, 0.0, sign * level * 0.3, 1.0, 0.0]),
        Op::TranslateX => {
            let dx = sign * level * 0.45 * img.width() as f64;
            affine(img, [1.0, 0.0, dx, 0.0, 1.0, 0.0]);
        }
        Op::TranslateY => {
            let dy = sign * level * 0.45 * img.height() as f64;
            affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, dy]);
        }
    }
}

/// ITU-R 601 luma, PIL's `L` conversion.
fn gray(p: &[u8; 3]) -> f32 {
    (p[0] as f32 * 299.0 + p[1] as f32 * 587.0 + p[2] as f32 * 114.0) / 1000.0
}

/// PIL's `ImageEnhance`: `degenerate + f * (img - degenerate)`, clamped.
fn blend_with(img: &mut RgbImage, f: f64, degenerate: impl Fn(&[u8; 3]) -> [f32; 3]) {
    let f = f as f32;
    for p in img.pixels_mut() {
        let d = degenerate(&p.0);
        for (v, d) in p.0.iter_mut().zip(d) {
            *v = (d + f * (*v as f32 - d)).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Per channel, stretch [min, max] to [0, 255].
fn auto_contrast(img: &mut RgbImage) {
    for c in 0..3 {
        let (lo, hi) = img
            .pixels()
            .fold((255u8, 0u8), |(lo, hi), p| (lo.min(p.0[c]), hi.max(p.0[c])));
        if hi <= lo {
            continue;
        }
        let scale = 255.0 / (hi - lo) as f32;
        for p in img.pixels_mut() {
            p.0[c] = ((p.0[c] - lo) as f32 * scale).round().min(255.0) as u8;
        }
    }
}

/// Per-channel histogram equalization (PIL's `ImageOps.equalize`).
fn equalize(img: &mut RgbImage) {
    for c in 0..3 {
        let mut hist = [0usize; 256];
        img.pixels().for_each(|p| hist[p.0[c] as usize] += 1);
        let nonzero: Vec<usize> = hist.iter().copied().filter(|&h| h > 0).collect();
        if nonzero.len() <= 1 {
            continue;
        }
        let step = (nonzero.iter().sum::<usize>() - nonzero[nonzero.len() - 1]) / 255;
        if step == 0 {
            continue;
        }
        let mut lut = [0u8; 256];
        let mut acc = step / 2;
        for (i, h) in hist.iter().enumerate() {
            lut[i] = (acc / step).min(255) as u8;
            acc += h;
        }
        img.pixels_mut().for_each(|p| p.0[c] = lut[p.0[c] as usize]);
    }
}

/// PIL's `SHARPEN`-style smoothing kernel blend; the border keeps its pixels.
fn sharpness(img: &mut RgbImage, f: f64) {
    let (w, h) = img.dimensions();
    if w < 3 || h < 3 {
        return;
    }
    let src = img.clone();
    let f = f as f32;
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for c in 0..3 {
                let mut acc = 0f32;
                for dy in 0..3 {
                    for dx in 0..3 {
                        let k = if dx == 1 && dy == 1 { 5.0 } else { 1.0 };
                        acc += k * src.get_pixel(x + dx - 1, y + dy - 1).0[c] as f32;
                    }
                }
                let blurred = (acc / 13.0).round();
                let v = src.get_pixel(x, y).0[c] as f32;
                img.get_pixel_mut(x, y).0[c] = (blurred + f * (v - blurred)).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// PIL's `Image.transform(AFFINE)`: output pixel (x, y) samples the source at
/// `(a x + b y + c, d x + e y + f)` (bilinear, pixel centers), `FILL` outside.
fn affine(img: &mut RgbImage, [a, b, c, d, e, f]: [f64; 6]) {
    let src = img.clone();
    let (w, h) = src.dimensions();
    let at = |x: i64, y: i64| -> [f32; 3] {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            FILL.map(|v| v as f32)
        } else {
            src.get_pixel(x as u32, y as u32).0.map(|v| v as f32)
        }
    };
    for (x, y, p) in img.enumerate_pixels_mut() {
        let (ox, oy) = (x as f64 + 0.5, y as f64 + 0.5);
        let sx = a * ox + b * oy + c - 0.5;
        let sy = d * ox + e * oy + f - 0.5;
        if sx <= -1.0 || sy <= -1.0 || sx >= w as f64 || sy >= h as f64 {
            *p = Rgb(FILL);
            continue;
        }
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let (p00, p10, p01, p11) = (at(x0, y0), at(x0 + 1, y0), at(x0, y0 + 1), at(x0 + 1, y0 + 1));
        for ch in 0..3 {
            let top = p00[ch] + fx * (p10[ch] - p00[ch]);
            let bottom = p01[ch] + fx * (p11[ch] - p01[ch]);
            p.0[ch] = (top + fy * (bottom - top)).round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(16, 16, |x, y| Rgb([(x * 12 + 40) as u8, (y * 12 + 30) as u8, 90]))
    }

    #[test]
    fn zero_magnitude_signed_ops_are_identities() {
        for op in [
            Op::Rotate,
            Op::Color,
            Op::Contrast,
            Op::Brightness,
            Op::ShearX,
            Op::ShearY,
            Op::TranslateX,
            Op::TranslateY,
            Op::Solarize,
            Op::SolarizeAdd,
        ] {
            let mut img = gradient();
            apply(&mut img, op, 0.0, 1.0);
            assert_eq!(img, gradient(), "{op:?}");
        }
    }

    #[test]
    fn operations_do_what_they_say() {
        // Translating right by 0.45 * 16 = 7.2 px moves column 0's value to column 7 and fills
        // the left columns with the mean color.
        let mut img = gradient();
        apply(&mut img, Op::TranslateX, 10.0, -1.0);
        assert_eq!(img.get_pixel(0, 5).0, FILL);
        let moved = img.get_pixel(8, 5).0[0] as i32;
        assert!((moved - 50).abs() <= 1, "{moved}");
        // Invert twice is the identity; brightness at -9 darkens.
        let mut img = gradient();
        apply(&mut img, Op::Invert, 9.0, 1.0);
        assert_eq!(img.get_pixel(0, 0).0, [215, 225, 165]);
        apply(&mut img, Op::Invert, 9.0, 1.0);
        assert_eq!(img, gradient());
        let mut dark = gradient();
        apply(&mut dark, Op::Brightness, 9.0, -1.0);
        assert!(dark.get_pixel(15, 15).0[0] < gradient().get_pixel(15, 15).0[0] / 2);
        // Auto-contrast stretches each channel to the full range.
        let mut img = gradient();
        apply(&mut img, Op::AutoContrast, 0.0, 1.0);
        let reds: Vec<u8> = img.pixels().map(|p| p.0[0]).collect();
        assert_eq!((reds.iter().min(), reds.iter().max()), (Some(&0), Some(&255)));
        // Posterize at 9 keeps one bit; equalize spreads a two-level channel to the extremes.
        let mut img = gradient();
        apply(&mut img, Op::Posterize, 9.0, 1.0);
        assert!(img.pixels().all(|p| p.0.iter().all(|&v| v == 0 || v == 128)));
        let mut two = RgbImage::from_fn(32, 32, |x, _| Rgb([if x < 16 { 100 } else { 110 }; 3]));
        apply(&mut two, Op::Equalize, 0.0, 1.0);
        assert_eq!((two.get_pixel(0, 0).0[0], two.get_pixel(31, 0).0[0]), (0, 255));
    }

    #[test]
    fn policy_is_seeded() {
        let run = |seed| {
            let mut img = gradient();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..4 {
                rand_augment(&mut img, &RandAugmentConfig::paper(), &mut rng);
            }
            img
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
