//! Semantic segmentation: the ViT encoder, the paper's multi-scale adapter and an UperNet
//! head. The adapter turns the tokens of four blocks into a pyramid at 4x, 2x, 1x and 0.5x the
//! patch grid (strides 4, 8, 16 and 32 for 16 px patches) with transposed convolutions and max
//! pooling, as in XCiT and BEiT's segmentation backbone (ViTDet's simple pyramid does the same
//! from the last block). UperNet (Xiao et al.) fuses the pyramid: pyramid pooling on the
//! coarsest level, a top-down FPN, every level upsampled to the finest and concatenated, a
//! 1x1 classifier, then bilinear upsampling to the input's pixels.

use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{gelu, log_softmax, relu};
use burn::tensor::module::{adaptive_avg_pool2d, interpolate, max_pool2d};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use rand::Rng;

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

    pub fn init<B: Backend, R: Rng>(&self, rng: &mut R, device: &B::Device) -> Segmenter<B> {
        let (d, c) = (self.vit.dim, self.channels);
        let up = |device| {
            ConvTranspose2dConfig::new([d, d], [2, 2])
                .with_stride([2, 2])
                .init(device)
        };
        Segmenter {
            encoder: self.vit.init(rng, device),
            up4: [up(device), up(device)],
            up4_norm: BatchNormConfig::new(d).init(device),
            up2: up(device),
            lateral: (0..3).map(|_| ConvBn::new(d, c, 1, device)).collect(),
            psp: self.pool_scales.iter().map(|_| ConvBn::new(d, c, 1, device)).collect(),
            psp_bottleneck: ConvBn::new(d + self.pool_scales.len() * c, c, 3, device),
            fpn: (0..3).map(|_| ConvBn::new(c, c, 3, device)).collect(),
            fpn_bottleneck: ConvBn::new(4 * c, c, 3, device),
            classifier: Conv2dConfig::new([c, self.classes], [1, 1]).init(device),
            feature_blocks: self.feature_blocks.clone(),
            pool_scales: self.pool_scales.clone(),
        }
    }
}

/// Convolution, batch norm, ReLU: UperNet's building block.
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    conv: Conv2d<B>,
    norm: BatchNorm<B>,
}

impl<B: Backend> ConvBn<B> {
    fn new(c_in: usize, c_out: usize, kernel: usize, device: &B::Device) -> Self {
        ConvBn {
            conv: Conv2dConfig::new([c_in, c_out], [kernel, kernel])
                .with_padding(PaddingConfig2d::Explicit(
                    kernel / 2,
                    kernel / 2,
                    kernel / 2,
                    kernel / 2,
                ))
                .with_bias(false)
                .init(device),
            norm: BatchNormConfig::new(c_out).init(device),
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
    up4_norm: BatchNorm<B>,
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

/// Mean per-pixel cross-entropy over the labelled pixels, in f32; targets outside
/// `0..classes` (the ignore label) count nowhere.
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
    let count = weight.clone().sum().clamp_min(1.0);
    (picked * weight).sum().neg() / count
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
        let bad = SegmenterConfig { feature_blocks: vec![0, 1, 2, 9], ..micro() };
        assert!(bad.validate().unwrap_err().contains("four of 0..4"));
        let unordered = SegmenterConfig { feature_blocks: vec![3, 2, 1, 0], ..micro() };
        assert!(unordered.validate().unwrap_err().contains("ascending"));
        // Too shallow for four distinct levels: refused, not underflowed.
        let shallow = SegmenterConfig::for_vit(micro().vit.with_depth(2), 5);
        assert!(shallow.validate().is_err());
    }

    #[test]
    fn pixel_cross_entropy_leaves_the_ignore_label_out() {
        let device = Default::default();
        // Two pixels, two classes: logits favour class 0 on both; the second pixel is ignored.
        let logits = Tensor::<TestBackend, 4>::from_data(TensorData::new(vec![2.0f32, 0.0, 0.0, 0.0], [1, 2, 1, 2]), &device);
        let targets = Tensor::<TestBackend, 3, Int>::from_data(TensorData::new(vec![1i64, 255], [1, 1, 2]), &device);
        let loss = pixel_cross_entropy(logits.clone(), targets).into_scalar().to_f64();
        // Pixel 0 has logits (2, 0) and label 1: -log(e^0 / (e^2 + e^0)).
        let want = (2f64.exp() + 1.0).ln();
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
        let labelled = Tensor::<TestBackend, 3, Int>::from_data(TensorData::new(vec![1i64, 1], [1, 1, 2]), &device);
        let both = pixel_cross_entropy(logits, labelled).into_scalar().to_f64();
        assert!((both - (want + 2f64.ln()) / 2.0).abs() < 1e-5, "{both}");
    }
}
