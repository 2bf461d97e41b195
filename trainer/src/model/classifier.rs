//! The fine-tuning model: the ViT encoder's blocks, mean pooling of the patch tokens, a
//! LayerNorm (`fc_norm`) and a linear head. This is BEiT's mean-pooling classifier and timm's
//! `global_pool='avg'` ViT: `fc_norm` takes the place of the encoder's final norm, which the
//! classifier loads but does not use (so the exported classifier is timm's, weight for weight).

use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use rand::Rng;

use crate::model::init::linear;
use crate::model::vit::{layer_norm_module, mean_patch_tokens, norm, Mode, Vit, VitConfig};

/// BEiT scales the head's trunc-normal(0.02) init by 0.001, so fine-tuning starts near uniform
/// predictions and the first updates do not wreck the pre-trained features.
pub const HEAD_INIT_SCALE: f64 = 0.001;

#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    pub encoder: Vit<B>,
    pub fc_norm: LayerNorm<B>,
    /// `[dim, classes]`
    pub head: Linear<B>,
}

impl<B: Backend> Classifier<B> {
    pub fn new<R: Rng>(vit: &VitConfig, classes: usize, rng: &mut R, device: &B::Device) -> Self {
        Classifier {
            encoder: vit.init(rng, device),
            fc_norm: layer_norm_module(vit.dim, device),
            head: linear(rng, vit.dim, classes, HEAD_INIT_SCALE, device),
        }
    }

    /// Class logits.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - output: `[batch, classes]`
    pub fn forward(&self, images: Tensor<B, 4>, mode: Mode) -> Tensor<B, 2> {
        self.head.forward(self.features(images, mode))
    }

    /// What the head sees: `fc_norm` of the mean-pooled patch tokens of the last block.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - output: `[batch, dim]`
    pub fn features(&self, images: Tensor<B, 4>, mode: Mode) -> Tensor<B, 2> {
        norm(
            &self.fc_norm,
            mean_patch_tokens(self.encoder.forward_unnormed(images, mode)),
        )
    }
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use crate::model::objective::test_support::tiny_vit;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn logits_have_the_class_count() {
        let device = Default::default();
        let vit = tiny_vit();
        let m = Classifier::<TestBackend>::new(&vit, 3, &mut ChaCha8Rng::seed_from_u64(0), &device);
        let x = Tensor::<TestBackend, 4>::zeros([2, 3, vit.image_size, vit.image_size], &device);
        assert_eq!(m.forward(x, Mode::Eval).dims(), [2, 3]);
    }
}
