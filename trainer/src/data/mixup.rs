//! Mixup and CutMix with label smoothing, as timm's `Mixup` in batch mode (the fine-tuning
//! recipe: mixup alpha 0.8, cutmix alpha 1.0, switch probability 0.5, smoothing 0.1). Each
//! image is mixed with the image at the mirrored batch position; the targets become the same
//! mixture of the two smoothed one-hot labels.

use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MixupConfig {
    /// Beta(alpha, alpha) of the mixup weight; 0 disables mixup.
    pub mixup_alpha: f64,
    /// Beta(alpha, alpha) of the kept area under CutMix; 0 disables CutMix.
    pub cutmix_alpha: f64,
    /// Probability of mixing a batch at all.
    pub prob: f64,
    /// Probability of CutMix rather than mixup when both are enabled.
    pub switch_prob: f64,
    pub label_smoothing: f64,
}

impl MixupConfig {
    pub fn enabled(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }
}

/// What happened to a batch (for tests and logs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mixed {
    None,
    Mixup {
        lam: f64,
    },
    /// The pasted box `(top, left, height, width)` and the kept share of the area.
    Cutmix {
        lam: f64,
        bbox: (usize, usize, usize, usize),
    },
}

/// Mixes a `[batch, 3, size, size]` batch in place and returns the `[batch, classes]` soft
/// targets. Needs an even batch (as timm).
pub fn mix_batch<R: Rng>(
    images: &mut [f32],
    labels: &[i64],
    size: usize,
    classes: usize,
    cfg: &MixupConfig,
    rng: &mut R,
) -> (Vec<f32>, Mixed) {
    let b = labels.len();
    let mut mixed = Mixed::None;
    if cfg.enabled() && rng.random_bool(cfg.prob.min(1.0)) {
        let cutmix = match (cfg.mixup_alpha > 0.0, cfg.cutmix_alpha > 0.0) {
            (true, true) => rng.random_bool(cfg.switch_prob),
            (false, true) => true,
            _ => false,
        };
        let alpha = if cutmix { cfg.cutmix_alpha } else { cfg.mixup_alpha };
        let lam = Beta::new(alpha, alpha).expect("alpha > 0").sample(rng);
        let original = images.to_vec();
        let plane = size * size;
        let img = 3 * plane;
        if cutmix {
            let (top, left, h, w) = cutmix_box(size, lam, rng);
            for i in 0..b {
                let j = b - 1 - i;
                for c in 0..3 {
                    for y in top..top + h {
                        let row = i * img + c * plane + y * size;
                        let src = j * img + c * plane + y * size;
                        images[row + left..row + left + w].copy_from_slice(&original[src + left..src + left + w]);
                    }
                }
            }
            // timm's `correct_lam`: the weight is the area actually kept.
            let lam = 1.0 - (h * w) as f64 / plane as f64;
            mixed = Mixed::Cutmix {
                lam,
                bbox: (top, left, h, w),
            };
        } else {
            let l = lam as f32;
            for i in 0..b {
                let j = b - 1 - i;
                for k in 0..img {
                    images[i * img + k] = l * original[i * img + k] + (1.0 - l) * original[j * img + k];
                }
            }
            mixed = Mixed::Mixup { lam };
        }
    }
    let lam = match mixed {
        Mixed::None => 1.0,
        Mixed::Mixup { lam } | Mixed::Cutmix { lam, .. } => lam,
    };
    (soft_targets(labels, classes, cfg.label_smoothing, lam), mixed)
}

/// `lam * smooth(y) + (1 - lam) * smooth(flip(y))`, with smoothing spreading `smoothing` over
/// all classes (timm's `mixup_target`).
pub fn soft_targets(labels: &[i64], classes: usize, smoothing: f64, lam: f64) -> Vec<f32> {
    let b = labels.len();
    let off = smoothing / classes as f64;
    let on = 1.0 - smoothing + off;
    let mut t = vec![0f32; b * classes];
    for i in 0..b {
        let row = &mut t[i * classes..(i + 1) * classes];
        row.fill(off as f32);
        let (a, z) = (labels[i] as usize, labels[b - 1 - i] as usize);
        row[a] += ((on - off) * lam) as f32;
        row[z] += ((on - off) * (1.0 - lam)) as f32;
    }
    t
}

/// timm's `rand_bbox`: a box of side `size * sqrt(1 - lam)` centered uniformly, clipped.
fn cutmix_box<R: Rng>(size: usize, lam: f64, rng: &mut R) -> (usize, usize, usize, usize) {
    let cut = ((1.0 - lam).sqrt() * size as f64) as usize;
    let cy = rng.random_range(0..size) as isize;
    let cx = rng.random_range(0..size) as isize;
    let half = (cut / 2) as isize;
    let clip = |v: isize| v.clamp(0, size as isize) as usize;
    let (y0, y1) = (clip(cy - half), clip(cy + half));
    let (x0, x1) = (clip(cx - half), clip(cx + half));
    (y0, x0, y1 - y0, x1 - x0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const PAPER: MixupConfig = MixupConfig {
        mixup_alpha: 0.8,
        cutmix_alpha: 1.0,
        prob: 1.0,
        switch_prob: 0.5,
        label_smoothing: 0.1,
    };

    #[test]
    fn smoothed_targets_sum_to_one() {
        // Two classes of four, lam 0.75: 0.75 * 0.925 + 0.025 on the first label.
        let t = soft_targets(&[0, 3], 4, 0.1, 0.75);
        let expect_row0 = [0.025 + 0.9 * 0.75, 0.025, 0.025, 0.025 + 0.9 * 0.25];
        for (a, b) in t[..4].iter().zip(expect_row0) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
        assert!((t[4..].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((t[4 + 3] as f64 - (0.025 + 0.9 * 0.75)).abs() < 1e-6);
    }

    #[test]
    fn cutmix_pastes_the_mirrored_image_and_weights_by_area() {
        // Image i is constant i; with cutmix only, the pasted box holds image b-1-i.
        let (b, size) = (4, 16);
        let mut seen = 0;
        for seed in 0..20 {
            let mut images: Vec<f32> = (0..b).flat_map(|i| vec![i as f32; 3 * size * size]).collect();
            let cfg = MixupConfig {
                mixup_alpha: 0.0,
                ..PAPER
            };
            let (t, mixed) = mix_batch(
                &mut images,
                &[0, 1, 2, 3],
                size,
                4,
                &cfg,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            let Mixed::Cutmix { lam, bbox } = mixed else {
                panic!("cutmix only: {mixed:?}")
            };
            let foreign = images[..3 * size * size].iter().filter(|&&v| v == 3.0).count();
            assert_eq!(foreign, 3 * bbox.2 * bbox.3);
            assert!((lam - (1.0 - (bbox.2 * bbox.3) as f64 / (size * size) as f64)).abs() < 1e-12);
            // Image 0's targets: lam on class 0 and 1 - lam on class 3 (plus smoothing).
            assert!((t[0] as f64 - (0.025 + 0.9 * lam)).abs() < 1e-5);
            assert!((t[3] as f64 - (0.025 + 0.9 * (1.0 - lam))).abs() < 1e-5);
            seen += (foreign > 0) as usize;
        }
        assert!(seen > 10);
    }

    #[test]
    fn mixup_blends_pixels_by_lam_and_switches() {
        let (b, size) = (2, 4);
        let (mut mixups, mut cutmixes) = (0, 0);
        for seed in 0..40 {
            let mut images: Vec<f32> = (0..b).flat_map(|i| vec![i as f32 * 10.0; 3 * size * size]).collect();
            let (_, mixed) = mix_batch(
                &mut images,
                &[0, 1],
                size,
                2,
                &PAPER,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            match mixed {
                Mixed::Mixup { lam } => {
                    mixups += 1;
                    // Image 0 = lam * 0 + (1 - lam) * 10.
                    assert!((images[0] as f64 - (1.0 - lam) * 10.0).abs() < 1e-4);
                    assert!((images[3 * size * size] as f64 - lam * 10.0).abs() < 1e-4);
                }
                Mixed::Cutmix { .. } => cutmixes += 1,
                Mixed::None => panic!("prob 1 mixes every batch"),
            }
        }
        assert!(mixups > 8 && cutmixes > 8, "{mixups} {cutmixes}");
    }
}
