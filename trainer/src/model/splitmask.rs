//! SplitMask: the patches are split into subsets A and B (by default a 50% block mask and its
//! complement; on the smallest datasets two disjoint uniform quarters). One shared encoder
//! sees each subset alone; a small decoder gets the encoded subset plus mask tokens at every
//! position that branch did not see and predicts their visual tokens (with halves: the other
//! half, so every patch has a loss). The average-pooled decoder outputs of the two branches are
//! matched with a symmetric InfoNCE, the other images of the batch being the negatives.

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use rand::Rng;

use crate::model::init::{linear, param, trunc_normal};
use crate::model::losses::{info_nce, token_cross_entropy};
use crate::model::masking::draw_split;
use crate::model::objective::{Branches, MethodSpec, MimBatch, MimOutput, Objective, Predicted, Reconstruction, Term};
use crate::model::vit::{
    gather_tokens, layer_norm_module, norm, table_rows, token_linear, Block, BlockConfig, Mode, Vit, VitConfig,
};

#[derive(Config, Debug, PartialEq)]
pub struct SplitMaskConfig {
    /// Decoder blocks (the paper uses 2, of the encoder's width).
    #[config(default = 2)]
    pub decoder_depth: usize,
    /// InfoNCE temperature.
    #[config(default = 0.2)]
    pub temperature: f64,
    /// Weight of the masked-token term in the total loss (0: the "match only" ablation of the
    /// paper's Table 8).
    #[config(default = 1.0)]
    pub mim_weight: f64,
    /// Weight of the InfoNCE term in the total loss (0: "inpaint only", Table 8).
    #[config(default = 1.0)]
    pub contrastive_weight: f64,
}

#[derive(Module, Debug)]
pub struct SplitMask<B: Backend> {
    pub encoder: Vit<B>,
    pub decoder_blocks: Vec<Block<B>>,
    pub decoder_norm: LayerNorm<B>,
    /// `[1, 1, dim]`
    pub mask_token: Param<Tensor<B, 3>>,
    /// `[1, patches, dim]`
    pub decoder_pos: Param<Tensor<B, 3>>,
    /// `[dim, vocab]`
    pub head: Linear<B>,
    #[module(skip)]
    pub temperature: f64,
    #[module(skip)]
    pub mim_weight: f64,
    #[module(skip)]
    pub contrastive_weight: f64,
}

impl<B: Backend> SplitMask<B> {
    pub fn new<R: Rng>(vit: &VitConfig, cfg: &SplitMaskConfig, vocab: usize, rng: &mut R, device: &B::Device) -> Self {
        let d = vit.dim;
        let encoder = vit.init(rng, device);
        let decoder_blocks = (0..cfg.decoder_depth)
            .map(|i| {
                BlockConfig {
                    dim: d,
                    heads: vit.heads,
                    mlp_ratio: vit.mlp_ratio,
                    drop_path: 0.0,
                    layer_scale_init: vit.layer_scale_init,
                    residual_scale: 1.0 / (2.0 * (i + 1) as f64).sqrt(),
                }
                .init(rng, device)
            })
            .collect();
        let n = vit.num_patches();
        SplitMask {
            encoder,
            decoder_blocks,
            decoder_norm: layer_norm_module(d, device),
            mask_token: param(trunc_normal(rng, d, 0.02), [1, 1, d], device),
            decoder_pos: param(trunc_normal(rng, n * d, 0.02), [1, n, d], device),
            head: linear(rng, d, vocab, 1.0, device),
            temperature: cfg.temperature,
            mim_weight: cfg.mim_weight,
            contrastive_weight: cfg.contrastive_weight,
        }
    }
}

impl<B: Backend> Objective<B> for SplitMask<B> {
    type Options = SplitMaskConfig;
    type Masks = Branches<B>;
    const TOKEN_TARGETS: bool = true;
    const HEADS: &'static [&'static str] = &["mask_token", "decoder_pos", "decoder_blocks.", "decoder_norm.", "head."];
    /// Token cross-entropy on the positions each branch did not see, the share predicted
    /// right, and the InfoNCE between the branches.
    const TERMS: &'static [&'static str] = &["mim", "mim_accuracy", "nce"];

    /// Each branch sees half the patches.
    fn paper_mask_count(patches: usize) -> usize {
        patches / 2
    }

    /// Halves (a mask and its complement, blocks or uniform) or uniform quarters; a decoder,
    /// a positive temperature and at least one loss term.
    fn validate(spec: &MethodSpec<'_, SplitMaskConfig>) -> Result<(), String> {
        spec.check_masks(Self::TOKEN_TARGETS)?;
        let (n, k) = (spec.vit.num_patches(), spec.mask_count);
        let o = spec.options;
        if k * 2 != n && k * 4 != n {
            return Err(format!(
                "each branch sees {k} of {n} patches: SplitMask splits into halves or quarters"
            ));
        }
        if k * 4 == n && spec.masking != crate::model::masking::MaskSpec::Uniform {
            return Err("quarter branches are drawn uniformly (masking uniform)".into());
        }
        if o.decoder_depth == 0 || o.temperature.is_nan() || o.temperature <= 0.0 {
            return Err(format!(
                "decoder_depth {} and temperature {} must be positive",
                o.decoder_depth, o.temperature
            ));
        }
        let weights = [o.mim_weight, o.contrastive_weight];
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || weights.iter().all(|w| *w == 0.0) {
            return Err(format!("loss weights {weights:?}: finite, non-negative, not both 0"));
        }
        Ok(())
    }

    fn build<R: Rng>(spec: &MethodSpec<'_, SplitMaskConfig>, rng: &mut R, device: &B::Device) -> Self {
        SplitMask::new(spec.vit, spec.options, spec.vocab_size, rng, device)
    }

    /// Two disjoint visible sets of `mask_count` patches per image (halves or quarters), each
    /// branch predicting the patches it did not see.
    fn draw_masks(
        spec: &MethodSpec<'_, SplitMaskConfig>,
        batch: usize,
        rng: &dyn Fn(usize) -> rand_chacha::ChaCha8Rng,
        device: &B::Device,
    ) -> Branches<B> {
        let g = spec.vit.grid();
        let h: Vec<_> = (0..batch)
            .map(|j| draw_split(&mut rng(j), g, g, spec.mask_count, spec.masking))
            .collect();
        Branches::new(&h, g * g, device)
    }

    fn encoder(&self) -> &Vit<B> {
        &self.encoder
    }

    /// # Shapes
    /// - batch.images: `[batch, 3, height, width]`
    /// - batch.targets: `[batch, patches]`
    /// - masks: two branches, visible sets of `[batch, k]` and hidden ones of
    ///   `[batch, patches - k]`
    fn forward(&self, batch: &MimBatch<B, Branches<B>>, mode: Mode) -> MimOutput<B> {
        let b = batch.images.dims()[0];
        let Decoded { logits, pooled, hidden } = self.decode(batch, mode);
        let [_, h, vocab] = logits.dims();
        let logits = logits.reshape([2 * b * h, vocab]);
        let targets = Tensor::cat(vec![batch.tokens().clone(), batch.tokens().clone()], 0)
            .gather(1, hidden)
            .reshape([2 * b * h]);
        let mim = token_cross_entropy(logits.clone(), targets.clone());
        let d = pooled.dims()[1];
        let za = pooled.clone().slice([0..b, 0..d]);
        let zb = pooled.slice([b..2 * b, 0..d]);
        // With global negatives every rank computes the whole global batch's InfoNCE, in
        // which only its own rows carry gradient. Scaled by the number of ranks (the value
        // kept, the gradient multiplied), the ranks' mean gradient is then the global loss's
        // exactly, the path through other ranks' features included.
        let all_a = batch.negatives.gather(za);
        let all_b = batch.negatives.gather(zb);
        let ranks = all_a.dims()[0] / b;
        let nce = info_nce(all_a, all_b, self.temperature);
        let nce = match ranks {
            1 => nce,
            n => nce.clone() * n as f64 - nce.detach() * (n - 1) as f64,
        };
        let loss = mim.clone() * self.mim_weight + nce.clone() * self.contrastive_weight;
        MimOutput {
            loss,
            terms: vec![Term::Value(mim), Term::accuracy(&logits, &targets), Term::Value(nce)],
            stats: None,
        }
    }

    /// Branch A's prediction of the half it did not see.
    fn reconstruct(&self, batch: &MimBatch<B, Branches<B>>) -> Option<Reconstruction<B>> {
        let b = batch.images.dims()[0];
        let Decoded { logits, hidden, .. } = self.decode(batch, Mode::Eval);
        let [_, h, vocab] = logits.dims();
        Some(Reconstruction {
            hidden: hidden.slice([0..b, 0..h]),
            patches: Predicted::most_likely(logits.slice([0..b, 0..h, 0..vocab])),
        })
    }
}

/// Both branches decoded: branch A's rows first, then branch B's.
struct Decoded<B: Backend> {
    /// `[2 * batch, h, vocab]` token logits of each branch's hidden patches.
    logits: Tensor<B, 3>,
    /// `[2 * batch, dim]` the decoder's output averaged over all patches (InfoNCE's features).
    pooled: Tensor<B, 2>,
    /// `[2 * batch, h]` the positions the logits predict.
    hidden: Tensor<B, 2, Int>,
}

impl<B: Backend> SplitMask<B> {
    /// # Shapes
    /// - batch.images: `[batch, 3, height, width]`
    /// - masks: each branch's visible `[batch, k]` and hidden `[batch, h]` positions
    fn decode(&self, batch: &MimBatch<B, Branches<B>>, mode: Mode) -> Decoded<B> {
        let (a, b_idx) = (&batch.masks.a.visible, &batch.masks.b.visible);
        let (hidden_a, hidden_b) = (&batch.masks.a.hidden, &batch.masks.b.hidden);
        let enc = &self.encoder;
        let [b, k] = a.dims();
        let h = hidden_a.dims()[1];
        let n = k + h;
        let x = enc.embed(batch.images.clone()); // [batch, patches, dim]
        let d = x.dims()[2];
        // Both branches through the shared encoder in one call: [2 * batch, k, dim].
        let branches = Tensor::cat(
            vec![gather_tokens(x.clone(), a.clone()), gather_tokens(x, b_idx.clone())],
            0,
        );
        let z = enc.encode(branches, mode.stacked(2));
        let z = z.slice([0..2 * b, 1..k + 1, 0..d]); // drop the class token: [2 * batch, k, dim]
        let visible = Tensor::cat(vec![a.clone(), b_idx.clone()], 0); // [2 * batch, k]
        let hidden = Tensor::cat(vec![hidden_a.clone(), hidden_b.clone()], 0); // [2 * batch, h]
        let pos = self.decoder_pos.val().reshape([n, d]);
        let vis = z + table_rows(pos.clone(), visible);
        let miss = self.mask_token.val().expand([2 * b, h, d]) + table_rows(pos, hidden.clone());
        // Attention is permutation-equivariant, so visible and predicted tokens need not be put
        // back in grid order: each carries its position embedding.
        let mut z = Tensor::cat(vec![vis, miss], 1); // [2 * batch, patches, dim]
        for (i, block) in self.decoder_blocks.iter().enumerate() {
            z = block.forward(z, mode.stacked(2).for_layer(1000 + i as u64));
        }
        let z = norm(&self.decoder_norm, z);
        let pred = z.clone().slice([0..2 * b, k..n, 0..d]); // [2 * batch, h, dim]
        Decoded {
            logits: token_linear(&self.head, pred),
            pooled: z.mean_dim(1).reshape([2 * b, d]),
            hidden,
        }
    }
}

#[cfg(test)]
impl<B: Backend> SplitMask<B> {
    /// The tests' SplitMask: the tiny test ViT, default settings, seed 0.
    pub(crate) fn tiny(vocab: usize, device: &B::Device) -> Self {
        use rand::SeedableRng;
        let vit = crate::model::objective::test_support::tiny_vit();
        Self::new(
            &vit,
            &SplitMaskConfig::new(),
            vocab,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
            device,
        )
    }
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use crate::model::objective::test_support::{quarter_batch, split_batch as batch, tiny_vit as tiny};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn forward_shapes_and_both_losses() {
        let device = Default::default();
        let model = SplitMask::<TestBackend>::tiny(64, &device);
        assert_eq!(model.decoder_blocks.len(), 2);
        assert_eq!(model.decoder_pos.dims(), [1, 16, 32]);
        let out = model.forward(&batch(3, 64, 1, &device), Mode::Eval);
        let (mim, nce) = (out.term(0) as f32, out.term(2) as f32);
        let loss = out.loss.into_scalar();
        // Untrained: token CE near ln 64, InfoNCE near ln 3 (batch of 3).
        assert!((mim - 64f32.ln()).abs() < 0.5, "{mim}");
        assert!((nce - 3f32.ln()).abs() < 0.5, "{nce}");
        assert!((loss - (mim + nce)).abs() < 1e-5);
    }

    #[test]
    fn quarter_branches_predict_the_three_quarters_they_did_not_see() {
        // 4 of 16 patches visible per branch: each branch's loss covers its 12 hidden patches,
        // so changing the target of a patch hidden from both branches moves the loss, and the
        // pixels of a patch neither branch sees do not reach the encoder.
        let device = Default::default();
        let model = SplitMask::<TestBackend>::tiny(64, &device);
        let b = quarter_batch::<TestBackend>(2, 64, 3, &device);
        let (a, bb) = (&b.masks.a.visible, &b.masks.b.visible);
        let (hidden_a, hidden_b) = (&b.masks.a.hidden, &b.masks.b.hidden);
        assert_eq!((a.dims(), bb.dims()), ([2, 4], [2, 4]));
        assert_eq!((hidden_a.dims(), hidden_b.dims()), ([2, 12], [2, 12]));
        let out = model.forward(&b, Mode::Eval);
        let mim = out.term(0) as f32;
        assert!((mim - 64f32.ln()).abs() < 0.5, "{mim}");
        // A patch of sample 0 that neither branch sees.
        let seen: Vec<i64> = a
            .clone()
            .slice([0..1, 0..4])
            .into_data()
            .iter::<i64>()
            .chain(bb.clone().slice([0..1, 0..4]).into_data().iter::<i64>())
            .collect();
        let unseen = (0..16).find(|i| !seen.contains(i)).unwrap() as usize;
        let (gy, gx) = (unseen / 4, unseen % 4);
        let mut pixels = b.clone();
        let patch = Tensor::<TestBackend, 4>::ones([1, 3, 8, 8], &device) * 5.0;
        pixels.images = pixels
            .images
            .slice_assign([0..1, 0..3, gy * 8..gy * 8 + 8, gx * 8..gx * 8 + 8], patch);
        let after = model.forward(&pixels, Mode::Eval).loss.into_scalar();
        let before = out.loss.into_scalar();
        assert!((before - after).abs() < 1e-6, "unseen pixels leak: {before} vs {after}");
        let mut target = b.clone();
        let old: i64 = b.tokens().clone().slice([0..1, unseen..unseen + 1]).into_scalar().elem();
        let t = Tensor::<TestBackend, 2, Int>::from_data(TensorData::new(vec![(old + 1) % 64], [1, 1]), &device);
        target.targets = Some(b.tokens().clone().slice_assign([0..1, unseen..unseen + 1], t));
        let moved = model.forward(&target, Mode::Eval).term(0) as f32;
        assert!((moved - mim).abs() > 1e-6, "hidden patches carry a loss");
    }

    #[test]
    fn table_8_ablations_drop_one_term() {
        let device = Default::default();
        let b = batch::<TestBackend>(3, 64, 1, &device);
        for (mim_weight, nce_weight) in [(1.0, 0.0), (0.0, 1.0)] {
            let cfg = SplitMaskConfig::new()
                .with_mim_weight(mim_weight)
                .with_contrastive_weight(nce_weight);
            let model = SplitMask::<TestBackend>::new(&tiny(), &cfg, 64, &mut ChaCha8Rng::seed_from_u64(0), &device);
            let out = model.forward(&b, Mode::Eval);
            let (mim, nce) = (out.term(0) as f32, out.term(2) as f32);
            let loss = out.loss.into_scalar();
            let want = mim_weight as f32 * mim + nce_weight as f32 * nce;
            assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
        }
    }

    #[test]
    fn the_reconstruction_is_branch_a_predicting_its_hidden_half() {
        let device = Default::default();
        let model = SplitMask::<TestBackend>::tiny(64, &device);
        let b = batch::<TestBackend>(3, 64, 1, &device);
        let rec = model.reconstruct(&b).expect("SplitMask predicts tokens");
        assert_eq!(rec.hidden.to_data(), b.masks.a.hidden.to_data());
        let Predicted::Tokens(tokens) = rec.patches else {
            panic!("SplitMask predicts tokens")
        };
        assert_eq!(tokens.dims(), b.masks.a.hidden.dims());
        let logits = model.decode(&b, Mode::Eval).logits; // branch A's rows first
        let [_, h, v] = logits.dims();
        let first = logits.slice([0..1, 0..1, 0..v]).reshape([v]).into_data().to_vec::<f32>().unwrap();
        let best = (0..v).max_by(|&i, &j| first[i].total_cmp(&first[j])).unwrap();
        assert_eq!(tokens.slice([0..1, 0..1]).into_scalar() as usize, best);
        assert!(h > 0);
    }
}
