//! Linear probes on frozen features: multinomial logistic regression on standardized
//! features (per-dimension mean and std of the train features, the role of MAE's BatchNorm
//! without affine), trained with full-softmax gradients and Adam on the backend, so the same
//! code probes a ViT-B on a GPU and a CPU preset in tests. The paper's appendix probes every
//! layer; [`crate::eval::features::layer_features`] provides their features in one pass.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::eval::accuracy::TopK;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            epochs: 100,
            batch: 256,
            lr: 1e-2,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// 1-based block index; `depth + 1` is the final norm's output.
    pub layer: usize,
    pub top1: f64,
    pub top5: f64,
    pub train_top1: f64,
    /// Top-1 on the held-out train rows the best layer is chosen on, when the evaluation split
    /// is `test`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_top1: Option<f64>,
}

/// Features `[n, dim]` row-major with their labels.
pub struct Features<'a> {
    pub x: &'a [f32],
    pub y: &'a [i64],
}

/// A trained linear probe: logits = ((x - mean) / std) w + b.
#[derive(Debug, Clone)]
pub struct LinearProbe {
    pub dim: usize,
    pub classes: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// `[dim, classes]` row-major.
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl LinearProbe {
    /// The same map on raw features: `x w' + b'` with the standardization folded in
    /// (`w' = w / std` per row, `b' = b - (mean / std) w`), e.g. to initialize a linear head.
    pub fn folded(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.classes;
        let mut w = self.w.clone();
        let mut b = self.b.clone();
        for d in 0..self.dim {
            for k in 0..c {
                w[d * c + k] /= self.std[d];
                b[k] -= self.mean[d] * w[d * c + k];
            }
        }
        (w, b)
    }

    /// Top-1 and top-5 accuracy on labelled features.
    pub fn accuracy<B: Backend>(&self, f: Features, device: &B::Device) -> (f64, f64) {
        let m = f.y.len();
        if m == 0 {
            return (0.0, 0.0);
        }
        let (w, b) = self.folded();
        let xv = Tensor::<B, 2>::from_data(TensorData::new(f.x.to_vec(), [m, self.dim]), device);
        let wt = Tensor::<B, 2>::from_data(TensorData::new(w, [self.dim, self.classes]), device);
        let bt = Tensor::<B, 1>::from_data(TensorData::new(b, [self.classes]), device);
        let logits: Vec<f32> = (xv.matmul(wt) + bt.unsqueeze::<2>())
            .into_data()
            .iter::<f32>()
            .collect();
        let mut hits = TopK::default();
        for (row, &l) in logits.chunks(self.classes).zip(f.y) {
            hits.add(row, l as usize);
        }
        hits.rates()
    }
}

/// Trains a probe on `train` and returns its accuracy on `val` (top-1, top-5) and on `train`
/// (the tests' shorthand; `trainer eval` scores one fitted probe on several sets).
#[cfg(test)]
fn linear_probe<B: Backend>(
    train: Features,
    val: Features,
    dim: usize,
    classes: usize,
    cfg: &ProbeConfig,
    device: &B::Device,
) -> (f64, f64, f64) {
    let probe = fit_probe::<B>(&train, dim, classes, cfg, device);
    let (top1, top5) = probe.accuracy::<B>(val, device);
    let (train_top1, _) = probe.accuracy::<B>(train, device);
    (top1, top5, train_top1)
}

/// Fits a multinomial logistic regression on standardized `train` features (full-softmax
/// gradients, Adam with a cosine step size, weight decay on `w`).
pub fn fit_probe<B: Backend>(
    train: &Features,
    dim: usize,
    classes: usize,
    cfg: &ProbeConfig,
    device: &B::Device,
) -> LinearProbe {
    let n = train.y.len();
    let (mean, std) = standardizer(train.x, dim);
    let norm = |x: &[f32]| -> Vec<f32> {
        x.chunks(dim)
            .flat_map(|row| row.iter().zip(&mean).zip(&std).map(|((v, m), s)| (v - m) / s))
            .collect()
    };
    let xt = Tensor::<B, 2>::from_data(TensorData::new(norm(train.x), [n, dim]), device);
    let onehot: Vec<f32> = train
        .y
        .iter()
        .flat_map(|&l| (0..classes).map(move |c| (c as i64 == l) as u8 as f32))
        .collect();
    let yt = Tensor::<B, 2>::from_data(TensorData::new(onehot, [n, classes]), device);
    let mut w = Tensor::<B, 2>::zeros([dim, classes], device);
    let mut b = Tensor::<B, 1>::zeros([classes], device);
    let (mut mw, mut vw) = (w.zeros_like(), w.zeros_like());
    let (mut mb, mut vb) = (b.zeros_like(), b.zeros_like());
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let batch = cfg.batch.min(n).max(1);
    let steps_per_epoch = n.div_ceil(batch);
    let total = (cfg.epochs * steps_per_epoch).max(1);
    let mut t = 0i32;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch) {
            let idx = Tensor::<B, 1, Int>::from_data(
                TensorData::new(chunk.iter().map(|&i| i as i64).collect::<Vec<_>>(), [chunk.len()]),
                device,
            );
            let x = xt.clone().select(0, idx.clone()); // [batch, dim]
            let y = yt.clone().select(0, idx); // [batch, classes]
            let p = softmax(x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>(), 1);
            let g = (p - y) / chunk.len() as f64; // d loss / d logits
            let gw = x.transpose().matmul(g.clone()) + w.clone() * cfg.weight_decay;
            let gb = g.sum_dim(0).reshape([classes]);
            t += 1;
            // Cosine decay of the step size over the whole probe.
            let lr = cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total as f64).cos());
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            mw = mw * b1 + gw.clone() * (1.0 - b1);
            vw = vw * b2 + gw.powi_scalar(2) * (1.0 - b2);
            mb = mb * b1 + gb.clone() * (1.0 - b1);
            vb = vb * b2 + gb.powi_scalar(2) * (1.0 - b2);
            w = w - (mw.clone() / c1) / ((vw.clone() / c2).sqrt() + eps) * lr;
            b = b - (mb.clone() / c1) / ((vb.clone() / c2).sqrt() + eps) * lr;
        }
    }
    LinearProbe {
        dim,
        classes,
        mean,
        std,
        w: w.into_data().iter::<f32>().collect(),
        b: b.into_data().iter::<f32>().collect(),
    }
}

/// Per-dimension mean and standard deviation (floored) of row-major `[n, dim]` features.
fn standardizer(x: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / dim).max(1) as f64;
    let mut mean = vec![0f64; dim];
    let mut sq = vec![0f64; dim];
    for row in x.chunks(dim) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(s, m)| ((s / n - m * m).max(0.0).sqrt() + 1e-6) as f32)
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use rand::Rng;

    /// Three gaussian classes in 8 dimensions, separable along different axes (on a large
    /// offset that standardization must remove), plus a label-free noise set.
    fn blobs(n: usize, seed: u64, signal: f32) -> (Vec<f32>, Vec<i64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let c = (i % 3) as i64;
            for j in 0..8 {
                let centre = if j == c as usize { signal } else { 0.0 };
                x.push(100.0 + centre + rng.random_range(-1.0..1.0f32));
            }
            y.push(c);
        }
        (x, y)
    }

    #[test]
    fn probe_separates_separable_classes_and_not_noise() {
        let device = Default::default();
        let cfg = ProbeConfig {
            epochs: 30,
            batch: 64,
            ..Default::default()
        };
        let (tx, ty) = blobs(300, 1, 3.0);
        let (vx, vy) = blobs(150, 2, 3.0);
        let (top1, top5, train) = linear_probe::<TestBackend>(
            Features { x: &tx, y: &ty },
            Features { x: &vx, y: &vy },
            8,
            3,
            &cfg,
            &device,
        );
        assert!(top1 > 0.97 && train > 0.97, "{top1} {train}");
        assert_eq!(top5, 1.0);
        // Without signal the probe is at chance on val.
        let (tx, ty) = blobs(300, 3, 0.0);
        let (vx, vy) = blobs(300, 4, 0.0);
        let (top1, _, _) = linear_probe::<TestBackend>(
            Features { x: &tx, y: &ty },
            Features { x: &vx, y: &vy },
            8,
            3,
            &cfg,
            &device,
        );
        assert!((0.2..0.47).contains(&top1), "{top1}");
    }

    #[test]
    fn folded_probe_scores_raw_features_as_the_standardized_one() {
        let device = Default::default();
        let cfg = ProbeConfig {
            epochs: 10,
            batch: 64,
            ..Default::default()
        };
        let (x, y) = blobs(120, 5, 2.0);
        let p = fit_probe::<TestBackend>(&Features { x: &x, y: &y }, 8, 3, &cfg, &device);
        let (w, b) = p.folded();
        for row in x.chunks(8).take(5) {
            for k in 0..3 {
                let standardized: f32 = (0..8)
                    .map(|d| (row[d] - p.mean[d]) / p.std[d] * p.w[d * 3 + k])
                    .sum::<f32>()
                    + p.b[k];
                let folded: f32 = (0..8).map(|d| row[d] * w[d * 3 + k]).sum::<f32>() + b[k];
                assert!(
                    (standardized - folded).abs() < 1e-2 * standardized.abs().max(1.0),
                    "{standardized} vs {folded}"
                );
            }
        }
    }
}
