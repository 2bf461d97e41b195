//! What every pre-training method implements ([`Objective`]) and what the methods share: the
//! batch they train on, their masks and the losses they report. The methods themselves are
//! one file each (`beit.rs`, `splitmask.rs`); `method.rs` names them.

use std::sync::Arc;

use burn::prelude::*;

use crate::kernels::fused::argmax_rows;
use crate::model::masking::{complement, MaskSpec};
use crate::model::vit::{Mode, Vit, VitConfig};

/// Masks of one batch as index tensors.
#[derive(Debug, Clone)]
pub enum Masks<B: Backend> {
    /// BEiT: positions replaced by the mask token (and predicted).
    Masked {
        /// `[batch, m]` masked positions, ascending.
        index: Tensor<B, 2, Int>,
        /// `[batch, patches, 1]`: 1 at masked positions, 0 elsewhere.
        weight: Tensor<B, 3>,
    },
    /// SplitMask: the patches each branch's encoder sees (`[batch, k]`, disjoint), and the
    /// positions each branch predicts (`[batch, patches - k]`, the complement of what it saw).
    Split {
        a: Tensor<B, 2, Int>,
        b: Tensor<B, 2, Int>,
        hidden_a: Tensor<B, 2, Int>,
        hidden_b: Tensor<B, 2, Int>,
    },
}

impl<B: Backend> Masks<B> {
    /// From per-sample boolean masks (all with the same count).
    pub fn masked(masks: &[Vec<bool>], device: &B::Device) -> Self {
        let n = masks[0].len();
        let index: Vec<i64> = masks
            .iter()
            .flat_map(|m| (0..n).filter(|&i| m[i]).map(|i| i as i64))
            .collect();
        let m = index.len() / masks.len();
        let weight: Vec<f32> = masks.iter().flatten().map(|&b| b as u8 as f32).collect();
        Masks::Masked {
            index: Tensor::from_data(TensorData::new(index, [masks.len(), m]), device),
            weight: Tensor::from_data(TensorData::new(weight, [masks.len(), n, 1]), device),
        }
    }

    /// From per-sample visible sets (A, B) of a grid of `patches`.
    pub fn split(branches: &[(Vec<usize>, Vec<usize>)], patches: usize, device: &B::Device) -> Self {
        let index = |sets: Vec<&[usize]>| -> Tensor<B, 2, Int> {
            let k = sets[0].len();
            let v: Vec<i64> = sets.iter().flat_map(|s| s.iter().map(|&i| i as i64)).collect();
            Tensor::from_data(TensorData::new(v, [sets.len(), k]), device)
        };
        let hidden: Vec<(Vec<usize>, Vec<usize>)> = branches
            .iter()
            .map(|(a, b)| (complement(a, patches), complement(b, patches)))
            .collect();
        Masks::Split {
            a: index(branches.iter().map(|h| h.0.as_slice()).collect()),
            b: index(branches.iter().map(|h| h.1.as_slice()).collect()),
            hidden_a: index(hidden.iter().map(|h| h.0.as_slice()).collect()),
            hidden_b: index(hidden.iter().map(|h| h.1.as_slice()).collect()),
        }
    }
}

/// One training batch on the device.
#[derive(Debug, Clone)]
pub struct MimBatch<B: Backend> {
    /// `[batch, 3, height, width]`, normalized.
    pub images: Tensor<B, 4>,
    /// `[batch, patches]` visual tokens.
    pub targets: Tensor<B, 2, Int>,
    pub masks: Masks<B>,
    /// Where SplitMask's InfoNCE takes its negatives from.
    pub negatives: Negatives<B>,
}

/// Gathers one rank's rows into the global batch's, for InfoNCE's negatives. Every rank
/// calls it at the same point of its forward pass (it is a collective operation).
pub trait Gather<B: Backend> {
    /// `local` is this rank's `[b, dim]`; returns the global batch's `[ranks * b, dim]`, in
    /// rank order, in which only this rank's rows carry gradient (the others are constants).
    fn gather(&self, local: Tensor<B, 2>) -> Tensor<B, 2>;
}

/// Where InfoNCE's negatives come from.
#[derive(Clone)]
pub enum Negatives<B: Backend> {
    /// The other images of this batch (one device, or each rank's share alone).
    Local,
    /// Every image of the global batch, through a [`Gather`] across the ranks.
    Global(Arc<dyn Gather<B>>),
}

impl<B: Backend> std::fmt::Debug for Negatives<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Negatives::Local => "Local",
            Negatives::Global(_) => "Global",
        })
    }
}

impl<B: Backend> Negatives<B> {
    /// The rows InfoNCE runs over: `local` alone, or the global batch's.
    pub fn gather(&self, local: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Negatives::Local => local,
            Negatives::Global(g) => g.gather(local),
        }
    }
}

/// Losses of one forward pass; scalars stay on the device until logged.
#[derive(Debug, Clone)]
pub struct MimOutput<B: Backend> {
    /// What is minimized.
    pub loss: Tensor<B, 1>,
    /// Token cross-entropy on the predicted positions.
    pub mim: Tensor<B, 1>,
    /// SplitMask's InfoNCE term.
    pub nce: Option<Tensor<B, 1>>,
    /// The token logits (detached) and their targets, for [`MimOutput::accuracy`].
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
}

impl<B: Backend> MimOutput<B> {
    pub fn new(
        loss: Tensor<B, 1>,
        mim: Tensor<B, 1>,
        nce: Option<Tensor<B, 1>>,
        logits: &Tensor<B, 2>,
        targets: &Tensor<B, 1, Int>,
    ) -> Self {
        MimOutput {
            loss,
            mim,
            nce,
            logits: logits.clone().detach(),
            targets: targets.clone(),
        }
    }

    /// Share of predicted positions whose argmax is the target token. Computed when asked:
    /// the loops log it every few steps, and the argmax is a pass over the whole
    /// `[positions, vocab]` logits.
    pub fn accuracy(&self) -> Tensor<B, 1> {
        let pred = argmax_rows(self.logits.clone());
        pred.equal(self.targets.clone()).float().mean()
    }
}

/// What a method is built and draws its masks from: the part of the resolved pre-training
/// configuration every method reads, and the method's own options.
#[derive(Debug)]
pub struct MethodSpec<'a, O> {
    pub vit: &'a VitConfig,
    pub vocab_size: usize,
    pub masking: MaskSpec,
    /// BEiT: masked patches per image. SplitMask: patches each branch sees.
    pub mask_count: usize,
    pub options: &'a O,
}

/// A pre-training method: its model, the masks it draws and its loss. A new method is a file
/// implementing this and an arm of `method::Method`.
pub trait Objective<B: Backend>: Module<B> + Sized {
    /// The method's own options (recorded in the run's config.json).
    type Options: std::fmt::Debug + Send + Sync;

    /// The paper's `mask_count` for a grid of `patches` (benchmarks; runs take the recipe's).
    fn paper_mask_count(patches: usize) -> usize;

    /// The model, its weights drawn from `rng`.
    fn build<R: rand::Rng>(spec: &MethodSpec<'_, Self::Options>, rng: &mut R, device: &B::Device) -> Self;

    /// The masks of a batch of `batch` images, sample `j`'s drawn from `rng(j)` alone, so a
    /// rank holding some positions of the global batch draws what one process would.
    fn draw_masks(
        spec: &MethodSpec<'_, Self::Options>,
        batch: usize,
        rng: &dyn Fn(usize) -> rand_chacha::ChaCha8Rng,
        device: &B::Device,
    ) -> Masks<B>;

    /// The encoder being pre-trained (what is evaluated and exported).
    fn encoder(&self) -> &Vit<B>;

    fn forward(&self, batch: &MimBatch<B>, mode: Mode) -> MimOutput<B>;

    /// What the method does to its own weights after each applied optimizer update, on every rank
    /// alike (so the replicas stay equal): nothing for BEiT and SplitMask; a joint-embedding
    /// method moves its teacher towards the student here. `step` is the update just made
    /// (0-based), for momentum schedules.
    fn after_update(self, step: u64) -> Self {
        let _ = step;
        self
    }
}

/// What the model tests (here and in `train`) share: a ViT small enough for many CPU steps
/// and random batches with BEiT or SplitMask masks.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::model::masking::{draw_mask, draw_split, MaskSpec};
    use crate::model::vit::VitConfig;
    use burn::tensor::Distribution;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// 32 px images, 8 px patches (a 4x4 grid), 2 blocks of width 32, no drop path.
    pub fn tiny_vit() -> VitConfig {
        VitConfig::cpu_tiny()
            .with_image_size(32)
            .with_dim(32)
            .with_depth(2)
            .with_heads(2)
            .with_drop_path(0.0)
    }

    /// Random 32 px images and tokens with uniform BEiT masks of 6 of the 16 patches.
    pub fn beit_batch<B: Backend>(b: usize, vocab: usize, device: &B::Device) -> MimBatch<B> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        B::seed(device, 3);
        let masks: Vec<_> = (0..b)
            .map(|_| draw_mask(&mut rng, 4, 4, 6, MaskSpec::Uniform))
            .collect();
        MimBatch {
            images: Tensor::random([b, 3, 32, 32], Distribution::Normal(0.0, 1.0), device),
            targets: Tensor::<B, 2>::random([b, 16], Distribution::Uniform(0.0, vocab as f64), device).int(),
            masks: Masks::masked(&masks, device),
            negatives: Negatives::Local,
        }
    }

    /// Random 32 px images and tokens with block split masks (8 patches per half).
    pub fn split_batch<B: Backend>(b: usize, vocab: usize, seed: u64, device: &B::Device) -> MimBatch<B> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        B::seed(device, seed);
        let halves: Vec<_> = (0..b)
            .map(|_| draw_split(&mut rng, 4, 4, 8, MaskSpec::block_for_grid(16)))
            .collect();
        MimBatch {
            images: Tensor::random([b, 3, 32, 32], Distribution::Normal(0.0, 1.0), device),
            targets: Tensor::<B, 2>::random([b, 16], Distribution::Uniform(0.0, vocab as f64), device).int(),
            masks: Masks::split(&halves, 16, device),
            negatives: Negatives::Local,
        }
    }

    /// Random 32 px images and tokens with quarter branches (4 of 16 patches each, uniform).
    pub fn quarter_batch<B: Backend>(b: usize, vocab: usize, seed: u64, device: &B::Device) -> MimBatch<B> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        B::seed(device, seed);
        let branches: Vec<_> = (0..b)
            .map(|_| draw_split(&mut rng, 4, 4, 4, MaskSpec::Uniform))
            .collect();
        MimBatch {
            images: Tensor::random([b, 3, 32, 32], Distribution::Normal(0.0, 1.0), device),
            targets: Tensor::<B, 2>::random([b, 16], Distribution::Uniform(0.0, vocab as f64), device).int(),
            masks: Masks::split(&branches, 16, device),
            negatives: Negatives::Local,
        }
    }
}
