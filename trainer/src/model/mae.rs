//! MAE (He et al. 2021), the masked autoencoder a user compares against first: most patches
//! (75%) are dropped at random and the encoder runs on the visible ones alone; a decoder of its
//! own width and depth gets them back with a mask token at every dropped position (fixed 2-D
//! sin-cos positions) and regresses the dropped patches' pixels, each patch normalized by its
//! own mean and variance (`norm_pix_loss`). The loss is the MSE on the dropped patches only.

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use rand::Rng;

use crate::model::init::{linear, param, trunc_normal};
use crate::model::losses::in_f32;
use crate::model::masking::draw_mask;
use crate::model::objective::{Branch, MethodSpec, MimBatch, MimOutput, Objective, Predicted, Reconstruction, Term};
use crate::model::vit::{
    gather_tokens, layer_norm_module, norm, sincos_pos_embed, table_rows, token_linear, Block, BlockConfig, Mode,
    PatchEmbed, Vit, VitConfig,
};

/// MAE's own options.
#[derive(Config, Debug, PartialEq)]
pub struct MaeConfig {
    /// Decoder blocks (MAE: 8).
    #[config(default = 8)]
    pub decoder_depth: usize,
    /// Decoder width (MAE: 512; a multiple of 4 for its sin-cos positions).
    #[config(default = 512)]
    pub decoder_dim: usize,
    /// Decoder attention heads (MAE: 16).
    #[config(default = 16)]
    pub decoder_heads: usize,
    /// Targets are each patch's pixels normalized by the patch's mean and variance (MAE's
    /// best setting); off, the normalized image's pixels.
    #[config(default = true)]
    pub norm_pix_loss: bool,
}

impl MaeConfig {
    /// MAE's decoder (8 blocks of 512) for encoders of paper width (384 and up); on the CPU
    /// presets 2 blocks of the encoder's width, as SplitMask's decoder.
    pub fn for_vit(vit: &VitConfig) -> Self {
        match vit.dim >= 384 {
            true => MaeConfig::new(),
            false => MaeConfig::new()
                .with_decoder_depth(2)
                .with_decoder_dim(vit.dim)
                .with_decoder_heads(vit.heads),
        }
    }
}

/// MAE's pixel-target variance floor (`1e-6` in its `forward_loss`).
const NORM_PIX_EPS: f64 = 1e-6;

#[derive(Module, Debug)]
pub struct Mae<B: Backend> {
    pub encoder: Vit<B>,
    /// `[dim, decoder_dim]`
    pub decoder_embed: Linear<B>,
    /// `[1, 1, decoder_dim]`
    pub mask_token: Param<Tensor<B, 3>>,
    /// `[1, 1 + patches, decoder_dim]`, fixed sin-cos (not trained), the class token's first.
    pub decoder_pos: Param<Tensor<B, 3>>,
    pub decoder_blocks: Vec<Block<B>>,
    pub decoder_norm: LayerNorm<B>,
    /// `[decoder_dim, 3 * patch * patch]`
    pub decoder_pred: Linear<B>,
    #[module(skip)]
    pub norm_pix_loss: bool,
}

impl<B: Backend> Mae<B> {
    pub fn new<R: Rng>(vit: &VitConfig, cfg: &MaeConfig, rng: &mut R, device: &B::Device) -> Self {
        let dd = cfg.decoder_dim;
        let decoder_blocks = (0..cfg.decoder_depth)
            .map(|_| {
                BlockConfig {
                    dim: dd,
                    heads: cfg.decoder_heads,
                    mlp_ratio: 4.0,
                    drop_path: 0.0,
                    // MAE's decoder is a plain timm block.
                    layer_scale_init: None,
                    residual_scale: 1.0,
                }
                .init(rng, device)
            })
            .collect();
        let pos = sincos_pos_embed::<B>(vit.grid(), dd, device);
        Mae {
            encoder: vit.init(rng, device),
            decoder_embed: linear(rng, vit.dim, dd, 1.0, device),
            mask_token: param(trunc_normal(rng, dd, 0.02), [1, 1, dd], device),
            decoder_pos: Param::from_tensor(pos).set_require_grad(false),
            decoder_blocks,
            decoder_norm: layer_norm_module(dd, device),
            decoder_pred: linear(rng, dd, 3 * vit.patch_size * vit.patch_size, 1.0, device),
            norm_pix_loss: cfg.norm_pix_loss,
        }
    }

    /// The decoder's prediction of the hidden patches' pixels, in `masks.hidden`'s order.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - masks: visible `[batch, k]`, hidden `[batch, m]`
    /// - output: `[batch, m, 3 * patch * patch]`
    pub fn predict(&self, images: Tensor<B, 4>, masks: &Branch<B>, mode: Mode) -> Tensor<B, 3> {
        let Branch { visible, hidden } = masks;
        let [b, k] = visible.dims();
        let n = k + hidden.dims()[1];
        let x = self.encoder.embed(images); // [batch, patches, dim]
        let z = self.encoder.encode(gather_tokens(x, visible.clone()), mode); // [batch, 1 + k, dim]
        let z = token_linear(&self.decoder_embed, z); // [batch, 1 + k, dd]
        let dd = z.dims()[2];
        let pos = self.decoder_pos.val().reshape([n + 1, dd]).slice([1..n + 1, 0..dd]); // [patches, dd]
                                                                                        // The class token's sin-cos position is zero: it is passed on as encoded.
        let cls = z.clone().slice([0..b, 0..1, 0..dd]);
        let vis = z.slice([0..b, 1..k + 1, 0..dd]) + table_rows(pos.clone(), visible.clone());
        let m = n - k;
        let miss = self.mask_token.val().expand([b, m, dd]) + table_rows(pos, hidden.clone());
        // Attention is permutation-equivariant: each token carries its position, so the grid
        // order need not be restored (MAE's unshuffle).
        let mut z = Tensor::cat(vec![cls, vis, miss], 1); // [batch, 1 + patches, dd]
        for (i, block) in self.decoder_blocks.iter().enumerate() {
            z = block.forward(z, mode.for_layer(1000 + i as u64));
        }
        let z = norm(&self.decoder_norm, z).slice([0..b, 1 + k..1 + n, 0..dd]); // [batch, m, dd]
        token_linear(&self.decoder_pred, z)
    }

    /// The hidden patches' pixels, per-patch normalized under `norm_pix_loss`.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - hidden: `[batch, m]`
    /// - output: `[batch, m, 3 * patch * patch]`, in f32 (see `losses`)
    pub fn targets(&self, images: Tensor<B, 4>, hidden: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let t = self.hidden_patches(images, hidden); // [batch, m, 3 p p]
        if !self.norm_pix_loss {
            return t;
        }
        let (mean, std) = patch_stats(t.clone());
        (t - mean) / std
    }

    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - hidden: `[batch, m]`
    /// - output: `[batch, m, 3 * patch * patch]`, in f32
    fn hidden_patches(&self, images: Tensor<B, 4>, hidden: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let p = self.encoder.patch_embed.patch_size;
        in_f32(gather_tokens(PatchEmbed::patchify(images, p), hidden))
    }
}

/// Each patch's mean and its standard deviation as `norm_pix_loss` divides by it (the unbiased
/// variance, as `torch.var`, plus MAE's epsilon).
///
/// # Shapes
/// - patches: `[batch, m, values]`
/// - output: `[batch, m, 1]` each
fn patch_stats<B: Backend>(patches: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let d = patches.dims()[2];
    let mean = patches.clone().mean_dim(2);
    let var = (patches - mean.clone()).powi_scalar(2).sum_dim(2) / (d as f64 - 1.0);
    (mean, (var + NORM_PIX_EPS).sqrt())
}

impl<B: Backend> Objective<B> for Mae<B> {
    type Options = MaeConfig;
    type Masks = Branch<B>;
    const TOKEN_TARGETS: bool = false;
    const HEADS: &'static [&'static str] = &[
        "decoder_embed.",
        "mask_token",
        "decoder_pos",
        "decoder_blocks.",
        "decoder_norm.",
        "decoder_pred.",
    ];
    /// The pixel MSE on the hidden patches.
    const TERMS: &'static [&'static str] = &["mse"];

    /// MAE's 75% of the patches dropped.
    fn paper_mask_count(patches: usize) -> usize {
        patches * 3 / 4
    }

    fn validate(spec: &MethodSpec<'_, MaeConfig>) -> Result<(), String> {
        spec.check_masks(Self::TOKEN_TARGETS)?;
        let o = spec.options;
        if o.decoder_depth == 0 || o.decoder_heads == 0 || !o.decoder_dim.is_multiple_of(4 * o.decoder_heads) {
            return Err(format!(
                "decoder of {} blocks, width {}, {} heads: at least one block, and a width divisible by 4 x heads",
                o.decoder_depth, o.decoder_dim, o.decoder_heads
            ));
        }
        Ok(())
    }

    fn build<R: Rng>(spec: &MethodSpec<'_, MaeConfig>, rng: &mut R, device: &B::Device) -> Self {
        Mae::new(spec.vit, spec.options, rng, device)
    }

    /// `mask_count` patches of each image dropped (uniformly at random unless the run asks
    /// for blocks); the rest are visible.
    fn draw_masks(
        spec: &MethodSpec<'_, MaeConfig>,
        batch: usize,
        rng: &dyn Fn(usize) -> rand_chacha::ChaCha8Rng,
        device: &B::Device,
    ) -> Branch<B> {
        let g = spec.vit.grid();
        let visible: Vec<Vec<usize>> = (0..batch)
            .map(|j| {
                let dropped = draw_mask(&mut rng(j), g, g, spec.mask_count, spec.masking);
                (0..g * g).filter(|&i| !dropped[i]).collect()
            })
            .collect();
        let sets: Vec<&[usize]> = visible.iter().map(Vec::as_slice).collect();
        Branch::new(&sets, g * g, device)
    }

    fn encoder(&self) -> &Vit<B> {
        &self.encoder
    }

    /// # Shapes
    /// - batch.images: `[batch, 3, height, width]`
    /// - masks: visible `[batch, k]`, hidden `[batch, patches - k]`
    fn forward(&self, batch: &MimBatch<B, Branch<B>>, mode: Mode) -> MimOutput<B> {
        let pred = self.predict(batch.images.clone(), &batch.masks, mode);
        let target = self.targets(batch.images.clone(), batch.masks.hidden.clone());
        let mse = (in_f32(pred) - target).powi_scalar(2).mean(); // in f32 (see `losses`)
        MimOutput {
            loss: mse.clone(),
            terms: vec![Term::Value(mse)],
            stats: None,
        }
    }

    /// The decoder's pixels, put back in each patch's own brightness and contrast under
    /// `norm_pix_loss` (as MAE's visualization does).
    fn reconstruct(&self, batch: &MimBatch<B, Branch<B>>) -> Option<Reconstruction<B>> {
        let hidden = batch.masks.hidden.clone();
        let pred = in_f32(self.predict(batch.images.clone(), &batch.masks, Mode::Eval));
        let pixels = match self.norm_pix_loss {
            false => pred,
            true => {
                let (mean, std) = patch_stats(self.hidden_patches(batch.images.clone(), hidden.clone()));
                pred * std + mean
            }
        };
        Some(Reconstruction {
            hidden,
            patches: Predicted::Pixels(pixels),
        })
    }
}

#[cfg(test)]
impl<B: Backend> Mae<B> {
    /// The tests' MAE: the tiny test ViT with a 2-block decoder of width 16, seed 0.
    pub(crate) fn tiny(norm_pix: bool, device: &B::Device) -> Self {
        use rand::SeedableRng;
        let cfg = MaeConfig::new()
            .with_decoder_depth(2)
            .with_decoder_dim(16)
            .with_decoder_heads(2)
            .with_norm_pix_loss(norm_pix);
        let vit = crate::model::objective::test_support::tiny_vit();
        Self::new(&vit, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0), device)
    }
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use crate::model::objective::test_support::mae_batch as batch;

    fn tiny<B: Backend>(norm_pix: bool, device: &B::Device) -> Mae<B> {
        Mae::tiny(norm_pix, device)
    }

    fn values<const D: usize>(t: Tensor<TestBackend, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    #[test]
    fn the_loss_is_the_mse_of_the_hidden_patches_normalized_targets() {
        // By hand: the patches of each image in (channel, y, x) order, normalized by their own
        // mean and unbiased variance, compared with the prediction at the hidden positions only.
        let device = Default::default();
        for norm_pix in [true, false] {
            let model = tiny::<TestBackend>(norm_pix, &device);
            let b = batch::<TestBackend>(2, &device);
            let pred = values(model.predict(b.images.clone(), &b.masks, Mode::Eval));
            let pixels = values(b.images.clone());
            let hidden: Vec<i64> = b.masks.hidden.clone().into_data().convert::<i64>().to_vec().unwrap();
            let mut sum = 0.0f64;
            for (row, &h) in hidden.iter().enumerate() {
                let (img, gy, gx) = (row / 12, h as usize / 4, h as usize % 4);
                let mut patch = Vec::new();
                for c in 0..3 {
                    for y in 0..8 {
                        for x in 0..8 {
                            patch.push(pixels[((img * 3 + c) * 32 + gy * 8 + y) * 32 + gx * 8 + x] as f64);
                        }
                    }
                }
                if norm_pix {
                    let mean = patch.iter().sum::<f64>() / 192.0;
                    let var = patch.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 191.0;
                    patch.iter_mut().for_each(|v| *v = (*v - mean) / (var + 1e-6).sqrt());
                }
                sum += patch.iter().zip(&pred[row * 192..(row + 1) * 192]).map(|(t, p)| (t - *p as f64).powi(2)).sum::<f64>();
            }
            let want = sum / (hidden.len() * 192) as f64;
            let got = model.forward(&b, Mode::Eval).loss.into_scalar() as f64;
            assert!((got - want).abs() < 1e-4 * want.max(1.0), "norm_pix {norm_pix}: {got} vs {want}");
        }
    }

    #[test]
    fn dropped_pixels_do_not_reach_the_prediction() {
        // The encoder sees the visible patches alone: repainting a dropped patch changes its
        // target but not one predicted value.
        let device = Default::default();
        let model = tiny::<TestBackend>(true, &device);
        let b = batch::<TestBackend>(2, &device);
        let h: i64 = b.masks.hidden.clone().slice([0..1, 0..1]).into_scalar().elem();
        let (gy, gx) = (h as usize / 4, h as usize % 4);
        let before = values(model.predict(b.images.clone(), &b.masks, Mode::Eval));
        let patch = Tensor::<TestBackend, 4>::ones([1, 3, 8, 8], &device) * 5.0;
        let images = b.images.clone().slice_assign([0..1, 0..3, gy * 8..gy * 8 + 8, gx * 8..gx * 8 + 8], patch);
        let after = values(model.predict(images.clone(), &b.masks, Mode::Eval));
        assert_eq!(before, after, "dropped pixels leak into the prediction");
        let moved = values(model.targets(images, b.masks.hidden.clone()));
        assert_ne!(moved, values(model.targets(b.images.clone(), b.masks.hidden.clone())));
    }

    #[test]
    fn three_quarters_dropped_and_the_rest_visible() {
        let device = Default::default();
        let b = batch::<TestBackend>(3, &device);
        assert_eq!((b.masks.visible.dims(), b.masks.hidden.dims()), ([3, 4], [3, 12]));
        let rows = |t: &Tensor<TestBackend, 2, Int>| -> Vec<i64> { t.clone().into_data().convert::<i64>().to_vec().unwrap() };
        let (v, h) = (rows(&b.masks.visible), rows(&b.masks.hidden));
        for i in 0..3 {
            let mut all: Vec<i64> = v[i * 4..(i + 1) * 4].iter().chain(&h[i * 12..(i + 1) * 12]).copied().collect();
            all.sort();
            assert_eq!(all, (0..16).collect::<Vec<i64>>(), "image {i}: a partition of the grid");
        }
        assert_eq!(Mae::<TestBackend>::paper_mask_count(196), 147);
    }

    #[test]
    fn the_reconstruction_scored_as_the_loss_scores_is_the_loss() {
        // Pixels put back in each patch's brightness and contrast, then normalized again as
        // the targets are: the loss's MSE. Without norm_pix_loss they are the prediction.
        let device = Default::default();
        let b = batch::<TestBackend>(2, &device);
        for norm_pix in [false, true] {
            let model = Mae::<TestBackend>::tiny(norm_pix, &device);
            let mse = model.forward(&b, Mode::Eval).term(0) as f32;
            let rec = model.reconstruct(&b).expect("MAE predicts pixels");
            assert_eq!(rec.hidden.to_data(), b.masks.hidden.to_data());
            let Predicted::Pixels(px) = rec.patches else {
                panic!("MAE predicts pixels")
            };
            let t = model.hidden_patches(b.images.clone(), b.masks.hidden.clone());
            let scored = match norm_pix {
                false => px,
                true => {
                    let (mean, std) = patch_stats(t.clone());
                    (px - mean) / std
                }
            };
            let target = model.targets(b.images.clone(), b.masks.hidden.clone());
            let again = (scored - target).powi_scalar(2).mean().into_scalar();
            assert!((again - mse).abs() <= 1e-5 * mse, "norm_pix {norm_pix}: {again} vs {mse}");
        }
    }
}
