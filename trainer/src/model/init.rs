//! Parameter initialization as in BEiT / MAE: truncated normal (std 0.02) for weights and
//! tokens, zero biases, unit norms. Drawn on the host from a seeded RNG so a model is a pure
//! function of its config and seed, on every backend.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// Values of N(0, std²) truncated to ±2 std (timm's `trunc_normal_(std=0.02)` cuts at ±2 in
/// absolute units, which is ±100 std: effectively untruncated; we cut at ±2 std like
/// `jax.nn.initializers.truncated_normal`, a negligible difference at std 0.02).
pub fn trunc_normal<R: Rng>(rng: &mut R, n: usize, std: f64) -> Vec<f32> {
    let normal = Normal::new(0.0, 1.0).expect("valid normal");
    (0..n)
        .map(|_| loop {
            let v: f64 = normal.sample(rng);
            if v.abs() <= 2.0 {
                break (v * std) as f32;
            }
        })
        .collect()
}

pub fn tensor<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

pub fn param<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::from_tensor(tensor(values, shape, device))
}

/// A linear layer with trunc-normal weights (stored `[in, out]`, burn's layout) scaled by
/// `scale`, and a zero bias.
pub fn linear<B: Backend, R: Rng>(rng: &mut R, d_in: usize, d_out: usize, scale: f64, device: &B::Device) -> Linear<B> {
    Linear {
        weight: param(trunc_normal(rng, d_in * d_out, 0.02 * scale), [d_in, d_out], device),
        bias: Some(param(vec![0.0; d_out], [d_out], device)),
    }
}
