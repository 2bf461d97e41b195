//! Vision Transformer encoder (pre-norm, fused qkv, layer scale, drop path) with timm's
//! parameter layout, so `export` is a renaming plus transposes of linear weights.
//!
//! The patch embedding is a linear map on flattened `(channel, y, x)` patches: the same
//! function as timm's stride-`p` convolution, whose `[dim, 3, p, p]` weight is this weight's
//! transpose reshaped, and one GEMM instead of a convolution on every backend.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use rand::Rng;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::kernels::fused::{layer_norm, multi_head_attention};
use crate::model::init::{linear, param, trunc_normal};
use crate::model::resize_positions::resize_grid;
use crate::seed::mix;

/// Whether a forward pass trains (drop path active) or evaluates. Drop-path draws come from a
/// host hash of (`seed`, layer, the sample's position in the global batch) rather than the
/// backend's RNG, so a step is reproducible on every backend, and a data-parallel rank holding
/// positions `first..first + b` of the global batch draws what one process with the whole
/// batch draws for those samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    Train {
        /// The step's seed (layers derive theirs from it).
        seed: u64,
        /// Position in the global batch of this batch's first sample.
        first: u64,
        /// How many copies of the batch the rows stack (SplitMask runs both branches of each
        /// sample as one `[2 * batch, ..]` tensor): row `i` of `rows` is copy
        /// `i / (rows / copies)` of sample `first + i % (rows / copies)`.
        copies: u64,
    },
}

impl Mode {
    /// Training on a whole batch held by one process (positions from 0).
    pub fn train(seed: u64) -> Mode {
        Mode::train_at(seed, 0)
    }

    /// Training on the slice of the global batch that starts at position `first`.
    pub fn train_at(seed: u64, first: u64) -> Mode {
        Mode::Train { seed, first, copies: 1 }
    }

    /// The mode of layer `i`: its own seed, derived from the pass's.
    pub fn for_layer(self, i: u64) -> Mode {
        match self {
            Mode::Eval => Mode::Eval,
            Mode::Train { seed, first, copies } => Mode::Train {
                seed: mix(seed, i, 6),
                first,
                copies,
            },
        }
    }

    /// The mode of a pass whose rows stack `copies` copies of the batch.
    pub fn stacked(self, copies: u64) -> Mode {
        match self {
            Mode::Eval => Mode::Eval,
            Mode::Train { seed, first, .. } => Mode::Train { seed, first, copies },
        }
    }
}

/// timm and BEiT use 1e-6 (burn's default is 1e-5).
pub const LN_EPS: f64 = 1e-6;

/// A layer norm of width `dim` with [`LN_EPS`], as every norm of the models is built; run it
/// with [`norm`].
pub fn layer_norm_module<B: Backend>(dim: usize, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(dim).with_epsilon(LN_EPS).init(device)
}

/// `ln` applied to `x` through [`layer_norm`] (one fused kernel each way on LibTorch). burn's
/// `LayerNorm` keeps its epsilon private, so this takes [`LN_EPS`], which every norm built by
/// [`layer_norm_module`] has.
///
/// # Shapes
/// - x, output: `[..., dim]`
pub fn norm<B: Backend, const D: usize>(ln: &LayerNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    layer_norm(x, ln.gamma.val(), ln.beta.as_ref().map(|b| b.val()), LN_EPS)
}

#[derive(Config, Debug, PartialEq)]
pub struct VitConfig {
    /// Side of the square input image in pixels.
    #[config(default = 224)]
    pub image_size: usize,
    /// Side of a square patch in pixels; the token grid is `image_size / patch_size` square.
    #[config(default = 16)]
    pub patch_size: usize,
    /// Embedding width.
    #[config(default = 384)]
    pub dim: usize,
    /// Number of transformer blocks.
    #[config(default = 12)]
    pub depth: usize,
    /// Attention heads (must divide `dim`).
    #[config(default = 6)]
    pub heads: usize,
    /// Hidden width of the MLP as a multiple of `dim`.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Stochastic depth rate of the last block (linearly increasing from 0 over the blocks).
    #[config(default = 0.1)]
    pub drop_path: f64,
    /// Initial value of the per-channel layer scale; `None` disables layer scale.
    #[config(default = "Some(0.1)")]
    pub layer_scale_init: Option<f64>,
    /// Fixed 2-D sin-cos position embeddings instead of learned ones.
    #[config(default = false)]
    pub sinusoidal_pos: bool,
}

impl VitConfig {
    /// ViT-Ti/16 (timm `vit_tiny_patch16_224`).
    pub fn tiny() -> Self {
        Self::new().with_dim(192).with_heads(3)
    }

    /// ViT-S/16 (timm `vit_small_patch16_224`), the paper's main model.
    pub fn small() -> Self {
        Self::new()
    }

    /// ViT-B/16 (timm `vit_base_patch16_224`).
    pub fn base() -> Self {
        Self::new().with_dim(768).with_heads(12)
    }

    /// CPU preset for tests and demos: 64 px images, 8 px patches (an 8x8 grid), 4 blocks of
    /// width 128.
    pub fn cpu_tiny() -> Self {
        Self::new()
            .with_image_size(64)
            .with_patch_size(8)
            .with_dim(128)
            .with_depth(4)
            .with_heads(4)
            .with_drop_path(0.0)
    }

    /// CPU preset for the hour-long experiment: 64 px images, 8 px patches, 6 blocks of 192.
    pub fn cpu_small() -> Self {
        Self::new()
            .with_image_size(64)
            .with_patch_size(8)
            .with_dim(192)
            .with_depth(6)
            .with_heads(3)
            .with_drop_path(0.05)
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "tiny" => Self::tiny(),
            "small" => Self::small(),
            "base" => Self::base(),
            "cpu-tiny" => Self::cpu_tiny(),
            "cpu-small" => Self::cpu_small(),
            _ => return None,
        })
    }

    /// A preset by name, or an error for `--model` listing the known ones.
    pub fn named(name: &str) -> Result<Self, ConfigError> {
        Self::preset(name).ok_or_else(|| {
            ConfigError::invalid(
                "model",
                name,
                format!("unknown preset (known: {})", Self::PRESETS.join(", ")),
            )
        })
    }

    pub const PRESETS: [&'static str; 5] = ["tiny", "small", "base", "cpu-tiny", "cpu-small"];

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Checks the sizes fit together; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        // Far above any published ViT (ViT-22B: width 6144, depth 48): sizes read from a
        // config.json are bounded before a single tensor is allocated.
        let bounds = [
            ("image_size", self.image_size, 8192),
            ("patch_size", self.patch_size, 64),
            ("dim", self.dim, 16384),
            ("depth", self.depth, 256),
        ];
        if let Some((name, v, max)) = bounds.into_iter().find(|(_, v, max)| v > max) {
            return Err(format!("{name} {v} is over {max}"));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 16.0) {
            return Err(format!("mlp_ratio {} is not in (0, 16]", self.mlp_ratio));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return Err(format!("heads {} does not divide dim {}", self.heads, self.dim));
        }
        if self.depth == 0 {
            return Err("depth must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return Err(format!("drop_path {} is not in [0, 1)", self.drop_path));
        }
        Ok(())
    }

    /// Builds the encoder with BEiT/MAE initialization drawn from `rng`.
    pub fn init<B: Backend, R: Rng>(&self, rng: &mut R, device: &B::Device) -> Vit<B> {
        let d = self.dim;
        let n = self.num_patches();
        let patch_dim = 3 * self.patch_size * self.patch_size;
        let pos = if self.sinusoidal_pos {
            Param::from_tensor(sincos_pos_embed::<B>(self.grid(), d, device)).set_require_grad(false)
        } else {
            param(trunc_normal(rng, (n + 1) * d, 0.02), [1, n + 1, d], device)
        };
        let blocks = (0..self.depth)
            .map(|i| {
                let rate = if self.depth > 1 {
                    self.drop_path * i as f64 / (self.depth - 1) as f64
                } else {
                    0.0
                };
                BlockConfig {
                    dim: d,
                    heads: self.heads,
                    mlp_ratio: self.mlp_ratio,
                    drop_path: rate,
                    layer_scale_init: self.layer_scale_init,
                    // BEiT's `fix_init_weight`: residual projections of block i scaled by 1/sqrt(2(i+1)).
                    residual_scale: 1.0 / (2.0 * (i + 1) as f64).sqrt(),
                }
                .init(rng, device)
            })
            .collect();
        Vit {
            patch_embed: PatchEmbed {
                proj: linear(rng, patch_dim, d, 1.0, device),
                patch_size: self.patch_size,
            },
            cls_token: param(trunc_normal(rng, d, 0.02), [1, 1, d], device),
            pos_embed: pos,
            blocks,
            norm: layer_norm_module(d, device),
        }
    }
}

/// 2-D sin-cos position embeddings (MAE's `get_2d_sincos_pos_embed`), zero for the class token.
pub fn sincos_pos_embed<B: Backend>(grid: usize, dim: usize, device: &B::Device) -> Tensor<B, 3> {
    assert!(
        dim.is_multiple_of(4),
        "sin-cos position embeddings need dim divisible by 4"
    );
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64))
        .collect();
    let mut values = vec![0f32; dim];
    // First half encodes the column (MAE's meshgrid puts w first), second half the row.
    for y in 0..grid {
        for x in 0..grid {
            for coord in [x, y] {
                values.extend(omega.iter().map(|w| (coord as f64 * w).sin() as f32));
                values.extend(omega.iter().map(|w| (coord as f64 * w).cos() as f32));
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [1, grid * grid + 1, dim]), device)
}

#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// `[3 * p * p, dim]`, inputs in (channel, y, x) order.
    pub proj: Linear<B>,
    #[module(skip)]
    pub patch_size: usize,
}

impl<B: Backend> PatchEmbed<B> {
    /// Flattened patches in (channel, y, x) order, row-major over the grid.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - output: `[batch, patches, 3 * p * p]`
    pub fn patchify(images: Tensor<B, 4>, p: usize) -> Tensor<B, 3> {
        let [b, c, h, w] = images.dims();
        let (gh, gw) = (h / p, w / p);
        images
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5]) // [batch, gh, gw, c, p, p]
            .reshape([b, gh * gw, c * p * p])
    }

    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - output: `[batch, patches, dim]`
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        token_linear(&self.proj, Self::patchify(images, self.patch_size))
    }
}

/// `linear` on every token, as one `[batch * tokens, d_in]` matrix. burn 0.21 multiplies a 3-D
/// input by the weight broadcast over the batch, and the backward of that forms one weight
/// gradient per sample (`[batch, d_in, d_out]`) and then sums them: batch times the memory and
/// an extra reduction (a fifth of a LibTorch CPU step). On 2-D input the weight gradient is
/// one GEMM, as PyTorch computes it.
///
/// # Shapes
/// - x: `[batch, tokens, d_in]`
/// - output: `[batch, tokens, d_out]`
pub fn token_linear<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, l, d] = x.dims();
    let y = linear.forward(x.reshape([b * l, d])); // [batch * tokens, d_out]
    let d_out = y.dims()[1];
    y.reshape([b, l, d_out])
}

/// One transformer block's settings (the encoder's blocks and SplitMask's decoder blocks).
pub struct BlockConfig {
    pub dim: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    pub drop_path: f64,
    pub layer_scale_init: Option<f64>,
    /// Multiplier of the init std of the residual projections (attn.proj, mlp.fc2).
    pub residual_scale: f64,
}

impl BlockConfig {
    pub fn init<B: Backend, R: Rng>(&self, rng: &mut R, device: &B::Device) -> Block<B> {
        let d = self.dim;
        let hidden = (d as f64 * self.mlp_ratio) as usize;
        let ls = || {
            self.layer_scale_init.map(|v| LayerScale {
                gamma: param(vec![v as f32; d], [d], device),
            })
        };
        Block {
            norm1: layer_norm_module(d, device),
            attn: Attention {
                qkv: linear(rng, d, 3 * d, 1.0, device),
                proj: linear(rng, d, d, self.residual_scale, device),
                heads: self.heads,
            },
            ls1: ls(),
            norm2: layer_norm_module(d, device),
            mlp: Mlp {
                fc1: linear(rng, d, hidden, 1.0, device),
                fc2: linear(rng, hidden, d, self.residual_scale, device),
            },
            ls2: ls(),
            drop_path: self.drop_path,
        }
    }
}

/// Multi-head self-attention with one fused qkv projection (timm's `Attention`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    #[module(skip)]
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    /// Attention itself is [`multi_head_attention`]: LibTorch's fused kernels where they
    /// apply, burn's ops elsewhere.
    ///
    /// # Shapes
    /// - x: `[batch, tokens, dim]`
    /// - output: `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let out = multi_head_attention(token_linear(&self.qkv, x), self.heads);
        token_linear(&self.proj, out)
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// # Shapes
    /// - x: `[batch, tokens, dim]`
    /// - output: `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        token_linear(&self.fc2, gelu(token_linear(&self.fc1, x)))
    }
}

/// Per-channel residual scale (CaiT / BEiT), timm's `LayerScale`.
#[derive(Module, Debug)]
pub struct LayerScale<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerScale<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x * self.gamma.val().unsqueeze::<3>()
    }
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub ls1: Option<LayerScale<B>>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub ls2: Option<LayerScale<B>>,
    #[module(skip)]
    pub drop_path: f64,
}

impl<B: Backend> Block<B> {
    /// # Shapes
    /// - x: `[batch, tokens, dim]`
    /// - output: `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<B, 3>, mode: Mode) -> Tensor<B, 3> {
        let mut a = self.attn.forward(norm(&self.norm1, x.clone()));
        if let Some(ls) = &self.ls1 {
            a = ls.forward(a);
        }
        let x = x + drop_path(a, self.drop_path, mode, 0);
        let mut m = self.mlp.forward(norm(&self.norm2, x.clone()));
        if let Some(ls) = &self.ls2 {
            m = ls.forward(m);
        }
        x + drop_path(m, self.drop_path, mode, 1)
    }
}

/// Stochastic depth: drops the whole residual branch of a sample with probability `rate`,
/// scaling kept ones by 1 / (1 - rate). `branch` tells a block's two branches apart; each
/// row's draw is a function of its sample's global position (see [`Mode`]).
pub fn drop_path<B: Backend>(x: Tensor<B, 3>, rate: f64, mode: Mode, branch: u64) -> Tensor<B, 3> {
    let Mode::Train { seed, first, copies } = mode else {
        return x;
    };
    if rate == 0.0 {
        return x;
    }
    let keep = 1.0 - rate;
    let [rows, _, _] = x.dims();
    let per_copy = (rows as u64 / copies.max(1)).max(1);
    let seed = mix(seed, branch, 5);
    let mask: Vec<f32> = (0..rows as u64)
        .map(|i| {
            let (copy, sample) = (i / per_copy, first + i % per_copy);
            // The top 53 bits of the hash as a uniform in [0, 1).
            let u = (mix(seed, sample, copy) >> 11) as f64 / (1u64 << 53) as f64;
            if u < keep {
                1.0 / keep as f32
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::<B, 3>::from_data(TensorData::new(mask, [rows, 1, 1]), &x.device());
    x * mask
}

/// The encoder. Parameter names mirror timm's `VisionTransformer`.
#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    pub patch_embed: PatchEmbed<B>,
    /// `[1, 1, dim]`
    pub cls_token: Param<Tensor<B, 3>>,
    /// `[1, 1 + patches, dim]`, the class token's position first (timm layout).
    pub pos_embed: Param<Tensor<B, 3>>,
    pub blocks: Vec<Block<B>>,
    pub norm: LayerNorm<B>,
}

impl<B: Backend> Vit<B> {
    pub fn dim(&self) -> usize {
        self.cls_token.dims()[2]
    }

    /// Position embeddings of the patches (without the class token's).
    ///
    /// # Shapes
    /// - output: `[1, patches, dim]`
    pub fn patch_pos(&self) -> Tensor<B, 3> {
        let [_, n1, d] = self.pos_embed.dims();
        self.pos_embed.val().slice([0..1, 1..n1, 0..d])
    }

    /// Patch embeddings plus their position embeddings. Square images of another size than
    /// the model's (DINO's local crops) get the position embeddings resized to their grid.
    ///
    /// # Shapes
    /// - images: `[batch, 3, side, side]`
    /// - output: `[batch, (side / patch)², dim]`
    pub fn embed(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let side = images.dims()[2] / self.patch_embed.patch_size;
        let x = self.patch_embed.forward(images);
        let [_, n, d] = self.patch_pos().dims();
        let grid = (n as f64).sqrt().round() as usize;
        if side == grid {
            return x + self.patch_pos();
        }
        let pos = resize_grid(self.patch_pos().reshape([n, d]), grid, side); // [side², dim]
        x + pos.unsqueeze_dim(0)
    }

    /// Prepends the class token and runs the blocks and the final norm on any set of
    /// position-embedded patch tokens (all of them, a masked-out version, or a subset).
    ///
    /// # Shapes
    /// - tokens: `[batch, n, dim]`
    /// - output: `[batch, 1 + n, dim]`
    pub fn encode(&self, tokens: Tensor<B, 3>, mode: Mode) -> Tensor<B, 3> {
        norm(&self.norm, self.blocks_forward(tokens, mode))
    }

    /// The class token, with its position embedding, before the (embedded) patch tokens.
    ///
    /// # Shapes
    /// - tokens: `[batch, n, dim]`
    /// - output: `[batch, 1 + n, dim]`
    fn with_class_token(&self, tokens: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, _, d] = tokens.dims();
        let cls = self.cls_token.val() + self.pos_embed.val().slice([0..1, 0..1, 0..d]);
        Tensor::cat(vec![cls.expand([b, 1, d]), tokens], 1)
    }

    /// [`Vit::encode`] without the final norm.
    ///
    /// # Shapes
    /// - tokens: `[batch, n, dim]`
    /// - output: `[batch, 1 + n, dim]`
    fn blocks_forward(&self, tokens: Tensor<B, 3>, mode: Mode) -> Tensor<B, 3> {
        let mut x = self.with_class_token(tokens);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, mode.for_layer(i as u64));
        }
        x
    }

    /// The last block's tokens of whole images, before the final norm: what BEiT's
    /// mean-pooling classifier (and timm's `global_pool='avg'`) pools, its `fc_norm` taking
    /// the final norm's place.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - output: `[batch, 1 + patches, dim]`
    pub fn forward_unnormed(&self, images: Tensor<B, 4>, mode: Mode) -> Tensor<B, 3> {
        self.blocks_forward(self.embed(images), mode)
    }

    /// Features of whole images.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - output: `[batch, 1 + patches, dim]`
    pub fn forward(&self, images: Tensor<B, 4>, mode: Mode) -> Tensor<B, 3> {
        self.encode(self.embed(images), mode)
    }

    /// All tokens after block `layer` (1-based), or after the final norm for `None`.
    ///
    /// # Shapes
    /// - images: `[batch, 3, side, side]`
    /// - output: `[batch, 1 + patches, dim]`
    pub fn tokens_at(&self, images: Tensor<B, 4>, layer: Option<usize>) -> Tensor<B, 3> {
        let Some(layer) = layer else {
            return self.forward(images, Mode::Eval);
        };
        let mut x = self.with_class_token(self.embed(images));
        for (i, block) in self.blocks.iter().enumerate().take(layer) {
            x = block.forward(x, Mode::Eval.for_layer(i as u64));
        }
        x
    }

    /// The patch tokens (the class token dropped) after each of `blocks` (0-based, ascending):
    /// the multi-scale features of dense heads. Blocks after the last one asked for are not run.
    ///
    /// # Shapes
    /// - images: `[batch, 3, side, side]`
    /// - output: `blocks.len()` x `[batch, patches, dim]`
    pub fn block_tokens(&self, images: Tensor<B, 4>, blocks: &[usize], mode: Mode) -> Vec<Tensor<B, 3>> {
        let tokens = self.embed(images);
        let [b, n, d] = tokens.dims();
        let mut x = self.with_class_token(tokens);
        let last = blocks.iter().copied().max().map_or(0, |m| m + 1);
        let mut out = Vec::with_capacity(blocks.len());
        for (i, block) in self.blocks.iter().enumerate().take(last) {
            x = block.forward(x, mode.for_layer(i as u64));
            if blocks.contains(&i) {
                out.push(x.clone().slice([0..b, 1..1 + n, 0..d]));
            }
        }
        out
    }

    /// The pooled tokens after each block, and after the final norm (the paper's per-layer
    /// linear probes): `depth + 1` entries.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - output: `depth + 1` x `[batch, dim]`
    pub fn pooled_layers(&self, images: Tensor<B, 4>, pool: Pool) -> Vec<Tensor<B, 2>> {
        let mut x = self.with_class_token(self.embed(images));
        let mut out = Vec::with_capacity(self.blocks.len() + 1);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, Mode::Eval.for_layer(i as u64));
            out.push(pool.apply(x.clone()));
        }
        out.push(pool.apply(norm(&self.norm, x)));
        out
    }
}

/// How a frozen encoder's tokens become one feature per image for k-NN and probes: the mean of
/// the patch tokens (BEiT's, for the masked-image methods, whose losses are on the patches) or
/// the class token (DINO's, whose loss is on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    #[default]
    MeanPatches,
    ClassToken,
}

impl Pool {
    /// # Shapes
    /// - tokens: `[batch, 1 + patches, dim]`
    /// - output: `[batch, dim]`
    pub fn apply<B: Backend>(self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        match self {
            Pool::MeanPatches => mean_patch_tokens(tokens),
            Pool::ClassToken => {
                let [b, _, d] = tokens.dims();
                tokens.slice([0..b, 0..1, 0..d]).reshape([b, d])
            }
        }
    }
}

/// The mean of the patch tokens, the class token left out (the pooling of BEiT's classifier,
/// of the k-NN features and of the linear probes).
///
/// # Shapes
/// - tokens: `[batch, 1 + patches, dim]`
/// - output: `[batch, dim]`
pub fn mean_patch_tokens<B: Backend>(tokens: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, n1, d] = tokens.dims();
    tokens.slice([0..b, 1..n1, 0..d]).mean_dim(1).reshape([b, d])
}

/// Rows of a table per sample: `out[i, j] = table[index[i, j]]`. For position embeddings
/// (`[patches, dim]`): its gradient is added into a table-sized tensor, where gathering from
/// the table expanded over the batch would fill and scatter into a batch-sized one.
///
/// # Shapes
/// - table: `[n, dim]`
/// - index: `[batch, k]` positions into `n`
/// - output: `[batch, k, dim]`
pub fn table_rows<B: Backend>(table: Tensor<B, 2>, index: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let [b, k] = index.dims();
    let d = table.dims()[1];
    table.select(0, index.reshape([b * k])).reshape([b, k, d])
}

/// Selects tokens per sample.
///
/// # Shapes
/// - x: `[batch, n, dim]`
/// - index: `[batch, k]` positions into `n`
/// - output: `[batch, k, dim]`
pub fn gather_tokens<B: Backend>(x: Tensor<B, 3>, index: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let [b, _, d] = x.dims();
    let [_, k] = index.dims();
    let index = index.unsqueeze_dim::<3>(2).expand([b, k, d]);
    x.gather(1, index)
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use burn::tensor::Distribution;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn drop_path_draws_by_global_position() {
        // A rank holding positions 4..8 of an 8-sample global batch drops what one process with
        // all 8 drops for them, also when the rows stack two copies (SplitMask's branches).
        let device = Default::default();
        let rows = |n: usize| Tensor::<TestBackend, 3>::ones([n, 2, 3], &device);
        let kept = |t: Tensor<TestBackend, 3>| -> Vec<f32> {
            let [n, _, _] = t.dims();
            t.slice([0..n, 0..1, 0..1]).into_data().to_vec().unwrap()
        };
        let mode = Mode::train(9).for_layer(2);
        let whole = kept(drop_path(rows(8), 0.5, mode, 1));
        let head = kept(drop_path(rows(4), 0.5, mode, 1));
        let tail = kept(drop_path(rows(4), 0.5, Mode::train_at(9, 4).for_layer(2), 1));
        assert_eq!([head, tail].concat(), whole);
        assert!(whole.contains(&0.0) && whole.contains(&2.0), "{whole:?}");
        assert_ne!(whole, kept(drop_path(rows(8), 0.5, mode, 0)), "branches draw apart");

        let two = kept(drop_path(rows(16), 0.5, mode.stacked(2), 1));
        let part = kept(drop_path(rows(8), 0.5, Mode::train_at(9, 4).for_layer(2).stacked(2), 1));
        assert_eq!(
            &two[..8],
            whole.as_slice(),
            "the first copy draws as the unstacked rows"
        );
        assert_eq!([&two[4..8], &two[12..16]].concat(), part);
        assert_ne!(&two[..8], &two[8..], "the copies draw apart");
    }

    #[test]
    fn patchify_orders_channel_y_x() {
        let device = Default::default();
        // Pixel value encodes (c, y, x).
        let values: Vec<f32> = (0..2 * 3 * 4 * 4).map(|i| i as f32).collect();
        let img = Tensor::<TestBackend, 4>::from_data(TensorData::new(values, [2, 3, 4, 4]), &device);
        let p = PatchEmbed::patchify(img, 2);
        assert_eq!(p.dims(), [2, 4, 12]);
        let v: Vec<f32> = p.into_data().to_vec().unwrap();
        // Sample 1, patch (gy=1, gx=0) -> index 2; element (c=2, y=1, x=0).
        let got = v[(4 + 2) * 12 + 2 * 4 + 2];
        let expect = (48 + 2 * 16 + (2 + 1) * 4) as f32;
        assert_eq!(got, expect);
    }

    #[test]
    fn presets_are_valid_and_shapes_flow() {
        for name in VitConfig::PRESETS {
            VitConfig::preset(name).unwrap().validate().unwrap();
        }
        let cfg = VitConfig::cpu_tiny().with_depth(2).with_dim(32).with_heads(2);
        let device = Default::default();
        let vit: Vit<TestBackend> = cfg.init(&mut ChaCha8Rng::seed_from_u64(0), &device);
        let img = Tensor::<TestBackend, 4>::random([3, 3, 64, 64], Distribution::Default, &device);
        let out = vit.forward(img, Mode::Eval);
        assert_eq!(out.dims(), [3, 65, 32]);
        assert_eq!(
            VitConfig::small().with_image_size(60).validate().unwrap_err(),
            "image_size 60 is not a multiple of patch_size 16"
        );
        // A hostile config.json is refused before anything is built.
        let hostile = [
            (VitConfig::small().with_heads(0), "heads 0 does not divide dim 384"),
            (VitConfig::small().with_dim(1 << 30), "dim 1073741824 is over 16384"),
            (VitConfig::small().with_image_size(1 << 20), "image_size 1048576 is over 8192"),
            (VitConfig::small().with_mlp_ratio(f64::NAN), "mlp_ratio NaN is not in (0, 16]"),
            (VitConfig::small().with_patch_size(0), "image_size 224 is not a multiple of patch_size 0"),
        ];
        for (cfg, says) in hostile {
            assert_eq!(cfg.validate().unwrap_err(), says);
        }
    }

    #[test]
    fn vit_small_has_timm_parameter_count() {
        // timm vit_small_patch16_224 without the 1000-way head: 22,050,664 - (384 * 1000 + 1000)
        // = 21,665,664; layer scale adds 2 * 384 per block.
        let device = Default::default();
        let vit: Vit<TestBackend> = VitConfig::small()
            .with_layer_scale_init(None)
            .init(&mut ChaCha8Rng::seed_from_u64(0), &device);
        assert_eq!(vit.num_params(), 21_665_664);
    }

    #[test]
    fn attention_is_permutation_equivariant() {
        // The SplitMask decoder relies on this: token order does not matter, only positions.
        let device = Default::default();
        let cfg = VitConfig::cpu_tiny().with_depth(1).with_dim(16).with_heads(2);
        let vit: Vit<TestBackend> = cfg.init(&mut ChaCha8Rng::seed_from_u64(1), &device);
        let x = Tensor::<TestBackend, 3>::random([1, 5, 16], Distribution::Default, &device);
        let perm = Tensor::<TestBackend, 1, Int>::from_data(TensorData::new(vec![3i64, 0, 4, 1, 2], [5]), &device);
        let y = vit.blocks[0].forward(x.clone(), Mode::Eval).select(1, perm.clone());
        let y2 = vit.blocks[0].forward(x.select(1, perm), Mode::Eval);
        y.into_data()
            .assert_approx_eq::<f32>(&y2.into_data(), burn::tensor::Tolerance::default());
    }
}
