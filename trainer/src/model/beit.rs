//! BEiT pre-training: masked patches are replaced by a learned mask token inside the encoder,
//! and a linear head predicts the visual tokens of the masked positions.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use rand::Rng;

use crate::model::init::{linear, param, trunc_normal};
use crate::model::losses::token_cross_entropy;
use crate::model::masking::draw_mask;
use crate::model::objective::{
    MaskedPositions, MethodSpec, MimBatch, MimOutput, Objective, Predicted, Reconstruction, Term,
};
use crate::model::vit::{gather_tokens, token_linear, Mode, Vit, VitConfig};

#[derive(Module, Debug)]
pub struct Beit<B: Backend> {
    pub encoder: Vit<B>,
    /// `[1, 1, dim]`
    pub mask_token: Param<Tensor<B, 3>>,
    /// `[dim, vocab]`
    pub head: Linear<B>,
}

impl<B: Backend> Beit<B> {
    pub fn new<R: Rng>(vit: &VitConfig, vocab: usize, rng: &mut R, device: &B::Device) -> Self {
        Beit {
            encoder: vit.init(rng, device),
            mask_token: param(trunc_normal(rng, vit.dim, 0.02), [1, 1, vit.dim], device),
            head: linear(rng, vit.dim, vocab, 1.0, device),
        }
    }
}

impl<B: Backend> Objective<B> for Beit<B> {
    type Options = ();
    type Masks = MaskedPositions<B>;
    const TOKEN_TARGETS: bool = true;
    const HEADS: &'static [&'static str] = &["mask_token", "head."];
    /// Token cross-entropy on the masked positions, and the share predicted right.
    const TERMS: &'static [&'static str] = &["mim", "mim_accuracy"];

    /// BEiT's 40% of the patches.
    fn paper_mask_count(patches: usize) -> usize {
        patches * 2 / 5
    }

    fn validate(spec: &MethodSpec<'_, ()>) -> Result<(), String> {
        spec.check_masks(Self::TOKEN_TARGETS)
    }

    fn build<R: Rng>(spec: &MethodSpec<'_, ()>, rng: &mut R, device: &B::Device) -> Self {
        Beit::new(spec.vit, spec.vocab_size, rng, device)
    }

    /// `mask_count` patches of each image, replaced by the mask token and predicted.
    fn draw_masks(
        spec: &MethodSpec<'_, ()>,
        batch: usize,
        rng: &dyn Fn(usize) -> rand_chacha::ChaCha8Rng,
        device: &B::Device,
    ) -> MaskedPositions<B> {
        let g = spec.vit.grid();
        let m: Vec<Vec<bool>> = (0..batch)
            .map(|j| draw_mask(&mut rng(j), g, g, spec.mask_count, spec.masking))
            .collect();
        MaskedPositions::new(&m, device)
    }

    fn encoder(&self) -> &Vit<B> {
        &self.encoder
    }

    /// # Shapes
    /// - batch.images: `[batch, 3, height, width]`
    /// - batch.targets: `[batch, patches]`
    /// - masks: `[batch, m]` positions and their `[batch, patches, 1]` weights
    fn forward(&self, batch: &MimBatch<B, MaskedPositions<B>>, mode: Mode) -> MimOutput<B> {
        let index = &batch.masks.index;
        let logits = self.masked_logits(batch, mode); // [batch, m, vocab]
        let [b, m, vocab] = logits.dims();
        let logits = logits.reshape([b * m, vocab]);
        let targets = batch.tokens().clone().gather(1, index.clone()).reshape([b * m]);
        let mim = token_cross_entropy(logits.clone(), targets.clone());
        MimOutput {
            loss: mim.clone(),
            terms: vec![Term::Value(mim), Term::accuracy(&logits, &targets)],
            stats: None,
        }
    }

    fn reconstruct(&self, batch: &MimBatch<B, MaskedPositions<B>>) -> Option<Reconstruction<B>> {
        let logits = self.masked_logits(batch, Mode::Eval); // [batch, m, vocab]
        Some(Reconstruction {
            hidden: batch.masks.index.clone(),
            patches: Predicted::most_likely(logits),
        })
    }
}

impl<B: Backend> Beit<B> {
    /// The token logits of the masked positions.
    ///
    /// # Shapes
    /// - batch.images: `[batch, 3, height, width]`
    /// - masks: `[batch, m]` positions and their `[batch, patches, 1]` weights
    /// - output: `[batch, m, vocab]`
    fn masked_logits(&self, batch: &MimBatch<B, MaskedPositions<B>>, mode: Mode) -> Tensor<B, 3> {
        let MaskedPositions { index, weight } = &batch.masks;
        let enc = &self.encoder;
        let x = enc.patch_embed.forward(batch.images.clone()); // [batch, patches, dim]
        let w = weight.clone();
        let x = x * (w.clone().neg() + 1.0) + self.mask_token.val() * w + enc.patch_pos();
        let h = enc.encode(x, mode); // [batch, 1 + patches, dim]
                                     // Patch p is token p + 1 after the class token: gathered straight from the encoder's
                                     // output, no slice (whose backward would zero-fill and copy a whole activation).
        token_linear(&self.head, gather_tokens(h, index.clone() + 1))
    }
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use crate::model::objective::test_support::{beit_batch as batch, tiny_vit as tiny};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn masked_positions_see_only_the_mask_token() {
        // Changing the pixels of a masked patch must not change the loss: the encoder sees the
        // mask token there.
        let device = Default::default();
        let model = Beit::<TestBackend>::new(&tiny(), 64, &mut ChaCha8Rng::seed_from_u64(0), &device);
        let b = batch::<TestBackend>(2, 64, &device);
        let index = &b.masks.index;
        let first: Vec<i64> = index.clone().into_data().iter::<i64>().collect();
        let (gy, gx) = (first[0] as usize / 4, first[0] as usize % 4);
        let before = model.forward(&b, Mode::Eval).loss.into_scalar();
        let mut changed = b.clone();
        let patch = Tensor::<TestBackend, 4>::ones([1, 3, 8, 8], &device) * 5.0;
        changed.images = changed
            .images
            .slice_assign([0..1, 0..3, gy * 8..gy * 8 + 8, gx * 8..gx * 8 + 8], patch);
        let after = model.forward(&changed, Mode::Eval).loss.into_scalar();
        assert!((before - after).abs() < 1e-6, "{before} vs {after}");
        assert!((before - 64f32.ln()).abs() < 0.5);
    }

    #[test]
    fn reconstructed_tokens_score_the_logged_accuracy() {
        let device = Default::default();
        let model = Beit::<TestBackend>::new(&tiny(), 64, &mut ChaCha8Rng::seed_from_u64(0), &device);
        let b = batch::<TestBackend>(3, 64, &device);
        let accuracy = model.forward(&b, Mode::Eval).term(1);
        let rec = model.reconstruct(&b).expect("BEiT predicts tokens");
        assert_eq!(rec.hidden.to_data(), b.masks.index.to_data());
        let Predicted::Tokens(tokens) = rec.patches else {
            panic!("BEiT predicts tokens")
        };
        let targets = b.tokens().clone().gather(1, b.masks.index.clone());
        let share = tokens.equal(targets).float().mean().into_scalar() as f64;
        assert!((share - accuracy).abs() < 1e-6, "{share} vs {accuracy}");
    }
}
