//! Visual-token targets computed on the device from the encoder's own input, with the
//! pipeline's vocabulary file: box-mean the normalized view down to the tokenizer's view (2x2
//! for 16 px ViT patches and 8 px token patches: 224 -> 112), cut 8x8 patches in the pipeline's
//! (y, x, channel) order, one matmul with the unit entries, argmax. Because normalization is
//! per-channel affine, the box mean of the normalized view equals the pipeline's normalized
//! box mean, so the tokens agree with `pipeline tokenize` up to float rounding of near-ties.
//!
//! The scores and the argmax run in f32 whatever the training precision, as under PyTorch's
//! autocast: scored in bf16 (8 bits of mantissa), 2% of Imagenette's targets move with an
//! 8192-entry vocabulary. [`DeviceTokenizer::upload`] tokenizes the host's f32 pixels before
//! the encoder's copy is rounded to the backend's float type.

use burn::prelude::*;
use burn::tensor::module::avg_pool2d;
use burn::tensor::{DType, Element};
use pipeline::vocab::tokenizer::Vocabulary;
use schemas::Preprocessing;

use crate::error::TokenizerError;
use crate::kernels::fused::argmax_rows;

#[derive(Debug, Clone)]
pub struct DeviceTokenizer<B: Backend> {
    /// `[dim, vocab]`: the entries as columns, in f32.
    entries: Tensor<B, 2>,
    /// Token patch side (8 in the paper).
    patch: usize,
    /// Encoder pixels per tokenizer pixel along a side.
    factor: usize,
    pub vocab_size: usize,
}

impl<B: Backend> DeviceTokenizer<B> {
    /// A tokenizer whose token grid matches a ViT with `vit_patch` px patches.
    pub fn new(vocab: &Vocabulary, vit_patch: usize, device: &B::Device) -> Result<Self, TokenizerError> {
        let p = &vocab.header.preprocessing;
        let token_patch = p.patch_size as usize;
        if !vit_patch.is_multiple_of(token_patch) {
            return Err(TokenizerError::PatchMismatch { vit_patch, token_patch });
        }
        let paper = Preprocessing::paper();
        if p.mean != paper.mean || p.std != paper.std {
            return Err(TokenizerError::Normalization {
                vocab: p.mean,
                trainer: paper.mean,
            });
        }
        let (v, d) = (vocab.header.size, vocab.header.dim);
        let data = TensorData::new(vocab.embeddings.clone(), [v, d]);
        let entries = Tensor::<B, 2>::from_data(data, (device, DType::F32)).transpose();
        Ok(DeviceTokenizer {
            entries,
            patch: token_patch,
            factor: vit_patch / token_patch,
            vocab_size: v,
        })
    }

    /// Tokenizer patch vectors of normalized encoder views.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - output: `[batch, patches, patch * patch * 3]`
    pub fn patch_vectors(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = images.dims();
        let f = self.factor;
        let (h2, w2) = (h / f, w / f);
        // The f x f box mean as one pooling kernel (two strided reductions cost half the
        // tokenizer's time on LibTorch's CPU).
        let small = if f == 1 {
            images
        } else {
            avg_pool2d(images, [f, f], [f, f], [0, 0], false, false) // [batch, 3, h / f, w / f]
        };
        let p = self.patch;
        let (gh, gw) = (h2 / p, w2 / p);
        small
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 3, 5, 1]) // [batch, gh, gw, y, x, channel]
            .reshape([b, gh * gw, p * p * c])
    }

    /// The encoder's view of a host batch of normalized f32 pixels in the backend's float type,
    /// and its tokens, scored on the f32 pixels.
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, size, size]`, row-major
    /// - output: `[batch, 3, size, size]` and `[batch, patches]`
    pub fn upload(
        &self,
        pixels: Vec<f32>,
        [b, size]: [usize; 2],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 2, Int>) {
        let exact = Tensor::<B, 4>::from_data(TensorData::new(pixels, [b, 3, size, size]), (device, DType::F32));
        let tokens = self.tokens(exact.clone());
        (exact.cast(<B::FloatElem as Element>::dtype()), tokens)
    }

    /// Tokens of a batch of views, scored in f32 (a view in a narrower type is widened first).
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`, normalized
    /// - output: `[batch, patches]`
    pub fn tokens(&self, images: Tensor<B, 4>) -> Tensor<B, 2, Int> {
        let v = self.patch_vectors(images.cast(DType::F32));
        let [b, n, d] = v.dims();
        // One [batch * patches, d] x [d, vocab] GEMM rather than a batch-broadcast matmul.
        let scores = v.reshape([b * n, d]).matmul(self.entries.clone()); // [batch * patches, vocab]
        argmax_rows(scores).reshape([b, n])
    }
}
