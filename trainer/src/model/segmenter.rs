//! Semantic segmentation: the ViT encoder, the paper's multi-scale adapter and an UperNet
//! head. The adapter turns the tokens of four blocks into a pyramid at 4x, 2x, 1x and 0.5x the
//! patch grid (strides 4, 8, 16 and 32 for 16 px patches) with transposed convolutions and max
//! pooling, as in XCiT and BEiT's segmentation backbone (ViTDet's simple pyramid does the same
//! from the last block). UperNet (Xiao et al.) fuses the pyramid: pyramid pooling on the
//! coarsest level, a top-down FPN, every level upsampled to the finest and concatenated, a
//! 1x1 classifier, then bilinear upsampling to the input's pixels.

use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, Initializer, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{gelu, log_softmax, relu};
use burn::tensor::module::{adaptive_avg_pool2d, interpolate, max_pool2d};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::model::init::param;
use crate::model::losses::in_f32;
use crate::model::vit::{Mode, Vit, VitConfig};

#[derive(Config, Debug, PartialEq)]
pub struct SegmenterConfig {
    /// The encoder.
    pub vit: VitConfig,
    /// Classes of the label maps (values `0..classes`; anything else is ignored).
    pub classes: usize,
    /// Channels of UperNet's pyramid pooling and FPN (512 in BEiT's ADE20k setting).
    #[config(default = 512)]
    pub channels: usize,
    /// Encoder blocks (0-based) whose tokens feed the pyramid, finest level first (BEiT's
    /// 3, 5, 7, 11 for twelve blocks).
    pub feature_blocks: Vec<usize>,
    /// Output sides of the pyramid pooling module.
    #[config(default = "vec![1, 2, 3, 6]")]
    pub pool_scales: Vec<usize>,
    /// The adapter's and head's normalization.
    #[config(default = "HeadNorm::Batch")]
    pub norm: HeadNorm,
}

/// The normalization of the adapter and the UperNet head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HeadNorm {
    /// Batch norm (mmsegmentation's UperNet): statistics of each device's batch, as PyTorch's
    /// BatchNorm under DDP without SyncBN, so several devices differ from one with their
    /// whole batch.
    #[default]
    Batch,
    /// Group norm (32 groups): per sample, the same on any number of devices.
    Group,
}

impl SegmenterConfig {
    /// BEiT's choice for any depth: the last block of each quarter of the encoder.
    pub fn for_vit(vit: VitConfig, classes: usize) -> Self {
        let d = vit.depth;
        let last = |k: usize| (k * d / 4).max(1) - 1;
        let blocks = vec![last(1), last(2), last(3), last(4)];
        SegmenterConfig::new(vit, classes, blocks)
    }

    pub fn validate(&self) -> Result<(), String> {
        let d = self.vit.depth;
        let b = &self.feature_blocks;
        if b.len() != 4 || b.iter().any(|&x| x >= d) || b.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("feature blocks {b:?}: four of 0..{d}, ascending"));
        }
        if !(1..=255).contains(&self.classes) || self.channels == 0 || self.pool_scales.is_empty() {
            return Err("classes 1..=255, channels and pool scales non-empty".into());
        }
        self.vit.validate()
    }

    /// The segmenter, drawn from `rng` alone (a pure function of the config and seed, as the
    /// encoder): the adapter's transposed convolutions as PyTorch's default, UperNet's
    /// convolutions Kaiming-normal (fan out, mmcv's `ConvModule`), the classifier N(0, 0.01²).
    pub fn init<B: Backend, R: Rng>(&self, rng: &mut R, device: &B::Device) -> Segmenter<B> {
        let (d, c, norm) = (self.vit.dim, self.channels, self.norm);
        let encoder = self.vit.init(rng, device);
        let up = |rng: &mut R| transposed(d, rng, device);
        let up4 = [up(rng), up(rng)];
        let up2 = up(rng);
        let conv_bn = |c_in, c_out, k, rng: &mut R| ConvBn::new(c_in, c_out, k, norm, rng, device);
        let lateral = (0..3).map(|_| conv_bn(d, c, 1, rng)).collect();
        let psp = self.pool_scales.iter().map(|_| conv_bn(d, c, 1, rng)).collect();
        let psp_bottleneck = conv_bn(d + self.pool_scales.len() * c, c, 3, rng);
        let fpn = (0..3).map(|_| conv_bn(c, c, 3, rng)).collect();
        let fpn_bottleneck = conv_bn(4 * c, c, 3, rng);
        let mut classifier = Conv2dConfig::new([c, self.classes], [1, 1])
            .with_initializer(Initializer::Zeros)
            .init(device);
        classifier.weight = param(normal(rng, self.classes * c, 0.01), [self.classes, c, 1, 1], device);
        Segmenter {
            encoder,
            up4,
            up4_norm: Norm2d::new(norm, d, device),
            up2,
            lateral,
            psp,
            psp_bottleneck,
            fpn,
            fpn_bottleneck,
            classifier,
            feature_blocks: self.feature_blocks.clone(),
            pool_scales: self.pool_scales.clone(),
        }
    }
}

/// `n` draws of N(0, std²).
fn normal<R: Rng>(rng: &mut R, n: usize, std: f64) -> Vec<f32> {
    let dist = rand_distr::Normal::new(0.0, std).expect("a positive std");
    (0..n)
        .map(|_| rand_distr::Distribution::sample(&dist, rng) as f32)
        .collect()
}

/// A 2x2, stride-2 transposed convolution of `d` channels with PyTorch's default draws:
/// weight and bias U(±1/sqrt(fan_in)), fan_in = d x 2 x 2 (computed from the weight's second
/// dimension, as `_calculate_fan_in_and_fan_out` does).
fn transposed<B: Backend, R: Rng>(d: usize, rng: &mut R, device: &B::Device) -> ConvTranspose2d<B> {
    let mut t = ConvTranspose2dConfig::new([d, d], [2, 2])
        .with_stride([2, 2])
        .with_initializer(Initializer::Zeros)
        .init(device);
    let bound = 1.0 / ((d * 4) as f64).sqrt();
    let mut uniform = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect() };
    t.weight = param(uniform(d * d * 4), [d, d, 2, 2], device);
    t.bias = Some(param(uniform(d), [d], device));
    t
}

/// Batch or group norm over the channels of `[batch, channels, h, w]` maps (one of the two
/// fields is set).
#[derive(Module, Debug)]
pub struct Norm2d<B: Backend> {
    batch: Option<BatchNorm<B>>,
    group: Option<GroupNorm<B>>,
}

impl<B: Backend> Norm2d<B> {
    fn new(kind: HeadNorm, channels: usize, device: &B::Device) -> Self {
        match kind {
            HeadNorm::Batch => Norm2d {
                batch: Some(BatchNormConfig::new(channels).init(device)),
                group: None,
            },
            HeadNorm::Group => {
                // 32 groups where the channels divide (mmsegmentation's GN setting), else one.
                let groups = if channels.is_multiple_of(32) { 32 } else { 1 };
                Norm2d {
                    batch: None,
                    group: Some(GroupNormConfig::new(groups, channels).init(device)),
                }
            }
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match (&self.batch, &self.group) {
            (Some(bn), _) => bn.forward(x),
            (None, Some(gn)) => gn.forward(x),
            (None, None) => x,
        }
    }
}

/// Convolution, normalization, ReLU: UperNet's building block.
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    conv: Conv2d<B>,
    norm: Norm2d<B>,
}

impl<B: Backend> ConvBn<B> {
    fn new<R: Rng>(c_in: usize, c_out: usize, kernel: usize, norm: HeadNorm, rng: &mut R, device: &B::Device) -> Self {
        let mut conv = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_padding(PaddingConfig2d::Explicit(
                kernel / 2,
                kernel / 2,
                kernel / 2,
                kernel / 2,
            ))
            .with_bias(false)
            .with_initializer(Initializer::Zeros)
            .init(device);
        let std = (2.0 / (c_out * kernel * kernel) as f64).sqrt();
        let n = c_out * c_in * kernel * kernel;
        conv.weight = param(normal(rng, n, std), [c_out, c_in, kernel, kernel], device);
        ConvBn {
            conv,
            norm: Norm2d::new(norm, c_out, device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        relu(self.norm.forward(self.conv.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct Segmenter<B: Backend> {
    pub encoder: Vit<B>,
    /// To 4x the patch grid: transposed convolution, batch norm, GELU, transposed convolution.
    up4: [ConvTranspose2d<B>; 2],
    up4_norm: Norm2d<B>,
    /// To 2x the patch grid.
    up2: ConvTranspose2d<B>,
    /// 1x1 convolutions of the three finer levels to UperNet's channels.
    lateral: Vec<ConvBn<B>>,
    /// Pyramid pooling on the coarsest level: one 1x1 convolution per pooling scale.
    psp: Vec<ConvBn<B>>,
    psp_bottleneck: ConvBn<B>,
    fpn: Vec<ConvBn<B>>,
    fpn_bottleneck: ConvBn<B>,
    classifier: Conv2d<B>,
    feature_blocks: Vec<usize>,
    pool_scales: Vec<usize>,
}

/// Bilinear resizing with half-pixel centres (`align_corners=False`, as mmsegmentation's).
fn resize<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    interpolate(
        x,
        size,
        InterpolateOptions {
            mode: InterpolateMode::Bilinear,
            align_corners: false,
        },
    )
}

impl<B: Backend> Segmenter<B> {
    /// Per-pixel class logits.
    ///
    /// # Shapes
    /// - images: `[batch, 3, side, side]`, `side` a multiple of the patch
    /// - output: `[batch, classes, side, side]`
    pub fn forward(&self, images: Tensor<B, 4>, mode: Mode) -> Tensor<B, 4> {
        let [_, _, h, w] = images.dims();
        let levels = self.pyramid(images, mode);
        resize(self.head(levels), [h, w])
    }

    /// The four pyramid levels, finest first.
    ///
    /// # Shapes
    /// - output: `[batch, dim, 4g, 4g]`, `[batch, dim, 2g, 2g]`, `[batch, dim, g, g]`,
    ///   `[batch, dim, g/2, g/2]` for a `g` x `g` patch grid
    fn pyramid(&self, images: Tensor<B, 4>, mode: Mode) -> Vec<Tensor<B, 4>> {
        let maps: Vec<Tensor<B, 4>> = self
            .encoder
            .block_tokens(images, &self.feature_blocks, mode)
            .into_iter()
            .map(|t| {
                let [b, n, d] = t.dims();
                let g = (n as f64).sqrt().round() as usize;
                t.swap_dims(1, 2).reshape([b, d, g, g]) // [batch, dim, grid, grid]
            })
            .collect();
        let [m0, m1, m2, m3]: [Tensor<B, 4>; 4] = maps.try_into().expect("four feature blocks");
        let f0 = self.up4[1].forward(gelu(self.up4_norm.forward(self.up4[0].forward(m0))));
        let f3 = max_pool2d(m3, [2, 2], [2, 2], [0, 0], [1, 1], false);
        vec![f0, self.up2.forward(m1), m2, f3]
    }

    /// UperNet on the pyramid: logits at the finest level's resolution.
    fn head(&self, levels: Vec<Tensor<B, 4>>) -> Tensor<B, 4> {
        let coarsest = levels[3].clone();
        let [_, _, ch, cw] = coarsest.dims();
        let mut pooled = vec![coarsest.clone()];
        for (conv, &s) in self.psp.iter().zip(&self.pool_scales) {
            pooled.push(resize(
                conv.forward(adaptive_avg_pool2d(coarsest.clone(), [s, s])),
                [ch, cw],
            ));
        }
        let mut lat: Vec<Tensor<B, 4>> = levels[..3]
            .iter()
            .zip(&self.lateral)
            .map(|(x, l)| l.forward(x.clone()))
            .collect();
        lat.push(self.psp_bottleneck.forward(Tensor::cat(pooled, 1)));
        for i in (1..4).rev() {
            let [_, _, h, w] = lat[i - 1].dims();
            lat[i - 1] = lat[i - 1].clone() + resize(lat[i].clone(), [h, w]);
        }
        let [_, _, h, w] = lat[0].dims();
        let mut outs: Vec<Tensor<B, 4>> = (0..3)
            .map(|i| resize(self.fpn[i].forward(lat[i].clone()), [h, w]))
            .collect();
        outs.push(resize(lat[3].clone(), [h, w]));
        self.classifier
            .forward(self.fpn_bottleneck.forward(Tensor::cat(outs, 1)))
    }
}

/// Per-pixel cross-entropy in f32, averaged over every pixel with the ignored ones (targets
/// outside `0..classes`) contributing zero: mmsegmentation's default (`avg_non_ignore=False`).
/// Each sample weighs the same whatever its padding, so data-parallel ranks averaging their
/// losses give the loss of their whole batch.
///
/// # Shapes
/// - logits: `[batch, classes, h, w]`
/// - targets: `[batch, h, w]`
/// - output: `[1]`
pub fn pixel_cross_entropy<B: Backend>(logits: Tensor<B, 4>, targets: Tensor<B, 3, Int>) -> Tensor<B, 1> {
    let [b, c, h, w] = logits.dims();
    let logits = in_f32(logits).swap_dims(1, 2).swap_dims(2, 3).reshape([b * h * w, c]); // [pixels, classes]
    let targets = targets.reshape([b * h * w]);
    let valid = targets
        .clone()
        .lower_elem(c as i64)
        .bool_and(targets.clone().greater_equal_elem(0));
    let safe = targets.mask_fill(valid.clone().bool_not(), 0);
    let picked = log_softmax(logits, 1)
        .gather(1, safe.unsqueeze_dim(1))
        .reshape([b * h * w]); // [pixels]
    let weight = valid.float();
    (picked * weight).sum().neg() / (b * h * w) as f64
}

/// The most likely class of every pixel.
///
/// # Shapes
/// - logits: `[batch, classes, h, w]`
/// - output: `[batch, h, w]`
pub fn predict<B: Backend>(logits: Tensor<B, 4>) -> Tensor<B, 3, Int> {
    logits.argmax(1).squeeze_dim(1)
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use rand::SeedableRng;

    fn micro() -> SegmenterConfig {
        let vit = VitConfig::cpu_tiny().with_dim(32).with_depth(4).with_heads(2);
        SegmenterConfig::for_vit(vit, 5).with_channels(16)
    }

    #[test]
    fn logits_cover_every_pixel_at_any_square_size() {
        let device = Default::default();
        let cfg = micro();
        assert_eq!(cfg.feature_blocks, vec![0, 1, 2, 3]);
        cfg.validate().unwrap();
        let m: Segmenter<TestBackend> = cfg.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &device);
        // The model's own 64 px and a larger crop (positions resized to its grid).
        for side in [64, 96] {
            let x = Tensor::<TestBackend, 4>::random([2, 3, side, side], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            assert_eq!(m.forward(x, Mode::Eval).dims(), [2, 5, side, side]);
        }
        // A pure function of the config and the seed: the same draws, head included.
        let again: Segmenter<TestBackend> = cfg.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &device);
        let x = Tensor::<TestBackend, 4>::random([1, 3, 64, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let (a, b) = (m.forward(x.clone(), Mode::Eval), again.forward(x, Mode::Eval));
        assert_eq!(a.into_data(), b.into_data());
        let bad = SegmenterConfig { feature_blocks: vec![0, 1, 2, 9], ..micro() };
        assert!(bad.validate().unwrap_err().contains("four of 0..4"));
        let unordered = SegmenterConfig { feature_blocks: vec![3, 2, 1, 0], ..micro() };
        assert!(unordered.validate().unwrap_err().contains("ascending"));
        // Too shallow for four distinct levels: refused, not underflowed.
        let shallow = SegmenterConfig::for_vit(micro().vit.with_depth(2), 5);
        assert!(shallow.validate().is_err());
    }

    #[test]
    fn pixel_cross_entropy_gives_the_ignore_label_no_loss() {
        let device = Default::default();
        // Two pixels, two classes: logits favour class 0 on both; the second pixel is ignored.
        let logits = Tensor::<TestBackend, 4>::from_data(TensorData::new(vec![2.0f32, 0.0, 0.0, 0.0], [1, 2, 1, 2]), &device);
        let targets = Tensor::<TestBackend, 3, Int>::from_data(TensorData::new(vec![1i64, 255], [1, 1, 2]), &device);
        let loss = pixel_cross_entropy(logits.clone(), targets).into_scalar().to_f64();
        // Pixel 0 has logits (2, 0) and label 1: -log(e^0 / (e^2 + e^0)); the ignored pixel
        // adds zero to the mean over both.
        let want = (2f64.exp() + 1.0).ln() / 2.0;
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
        let labelled = Tensor::<TestBackend, 3, Int>::from_data(TensorData::new(vec![1i64, 1], [1, 1, 2]), &device);
        let both = pixel_cross_entropy(logits, labelled).into_scalar().to_f64();
        assert!((both - (2.0 * want + 2f64.ln()) / 2.0).abs() < 1e-5, "{both}");
    }
}
