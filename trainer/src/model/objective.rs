//! What every pre-training method implements ([`Objective`]) and what the methods share: the
//! batch they train on, their kinds of masks and the terms they report. The methods themselves
//! are one file each (`beit.rs`, `splitmask.rs`, `mae.rs`, `dino.rs`); `method.rs` names them.

use std::sync::Arc;

use burn::prelude::*;

use crate::kernels::fused::argmax_rows;
use crate::model::masking::{complement, MaskSpec};
use crate::model::vit::{Mode, Pool, Vit, VitConfig};

/// BEiT's masks: the positions replaced by the mask token (and predicted).
#[derive(Debug, Clone)]
pub struct MaskedPositions<B: Backend> {
    /// `[batch, m]` masked positions, ascending.
    pub index: Tensor<B, 2, Int>,
    /// `[batch, patches, 1]`: 1 at masked positions, 0 elsewhere.
    pub weight: Tensor<B, 3>,
}

impl<B: Backend> MaskedPositions<B> {
    /// From per-sample boolean masks (all with the same count).
    pub fn new(masks: &[Vec<bool>], device: &B::Device) -> Self {
        let n = masks[0].len();
        let index: Vec<i64> = masks
            .iter()
            .flat_map(|m| (0..n).filter(|&i| m[i]).map(|i| i as i64))
            .collect();
        let m = index.len() / masks.len();
        let weight: Vec<f32> = masks.iter().flatten().map(|&b| b as u8 as f32).collect();
        MaskedPositions {
            index: Tensor::from_data(TensorData::new(index, [masks.len(), m]), device),
            weight: Tensor::from_data(TensorData::new(weight, [masks.len(), n, 1]), device),
        }
    }
}

/// What one encoder pass sees and what it predicts: the visible patches (`[batch, k]`) and
/// the complement (`[batch, patches - k]`), both ascending. MAE draws one per image, SplitMask
/// two with disjoint visible sets.
#[derive(Debug, Clone)]
pub struct Branch<B: Backend> {
    pub visible: Tensor<B, 2, Int>,
    pub hidden: Tensor<B, 2, Int>,
}

impl<B: Backend> Branch<B> {
    /// From per-sample visible sets of a grid of `patches` (all of one size).
    pub fn new(visible: &[&[usize]], patches: usize, device: &B::Device) -> Self {
        fn index<B: Backend, S: AsRef<[usize]>>(sets: &[S], device: &B::Device) -> Tensor<B, 2, Int> {
            let k = sets[0].as_ref().len();
            let v: Vec<i64> = sets.iter().flat_map(|s| s.as_ref().iter().map(|&i| i as i64)).collect();
            Tensor::from_data(TensorData::new(v, [sets.len(), k]), device)
        }
        let hidden: Vec<Vec<usize>> = visible.iter().map(|v| complement(v, patches)).collect();
        Branch {
            visible: index(visible, device),
            hidden: index(&hidden, device),
        }
    }
}

/// SplitMask's masks: two branches whose visible sets are disjoint.
#[derive(Debug, Clone)]
pub struct Branches<B: Backend> {
    pub a: Branch<B>,
    pub b: Branch<B>,
}

impl<B: Backend> Branches<B> {
    /// From per-sample visible sets (A, B) of a grid of `patches`.
    pub fn new(branches: &[(Vec<usize>, Vec<usize>)], patches: usize, device: &B::Device) -> Self {
        let a: Vec<&[usize]> = branches.iter().map(|h| h.0.as_slice()).collect();
        let b: Vec<&[usize]> = branches.iter().map(|h| h.1.as_slice()).collect();
        Branches {
            a: Branch::new(&a, patches, device),
            b: Branch::new(&b, patches, device),
        }
    }
}

/// The masks of a method that masks nothing (DINO: its views differ by crop and colour).
#[derive(Debug, Clone, Copy)]
pub struct Unmasked;

/// What every method's masks show the tests and tools that inspect them.
pub trait DrawnMasks<B: Backend>: std::fmt::Debug + Clone + Send {
    /// The positions that define the masks, `[batch, k]` (BEiT: masked; MAE: visible;
    /// SplitMask: branch A's visible; none without masks): equal masks have equal positions.
    fn positions(&self) -> Option<Tensor<B, 2, Int>>;
}

impl<B: Backend> DrawnMasks<B> for MaskedPositions<B> {
    fn positions(&self) -> Option<Tensor<B, 2, Int>> {
        Some(self.index.clone())
    }
}

impl<B: Backend> DrawnMasks<B> for Branch<B> {
    fn positions(&self) -> Option<Tensor<B, 2, Int>> {
        Some(self.visible.clone())
    }
}

impl<B: Backend> DrawnMasks<B> for Branches<B> {
    fn positions(&self) -> Option<Tensor<B, 2, Int>> {
        Some(self.a.visible.clone())
    }
}

impl<B: Backend> DrawnMasks<B> for Unmasked {
    fn positions(&self) -> Option<Tensor<B, 2, Int>> {
        None
    }
}

/// One training batch on the device, with method `M`'s masks (`K`, its
/// [`Objective::Masks`]): a method gets the masks its own `draw_masks` made, by type.
#[derive(Debug, Clone)]
pub struct MimBatch<B: Backend, K> {
    /// `[batch, 3, height, width]`, normalized.
    pub images: Tensor<B, 4>,
    /// `[batch, patches]` visual tokens; `None` for methods with pixel targets
    /// ([`Objective::TOKEN_TARGETS`] false).
    pub targets: Option<Tensor<B, 2, Int>>,
    pub masks: K,
    /// Further views of each image, `[batch, 3, side, side]` each (DINO's second global crop,
    /// then its local crops); empty for the masked-image methods.
    pub views: Vec<Tensor<B, 4>>,
    /// The update this batch is part of (0-based), for methods with schedules (DINO's
    /// teacher temperature and frozen last layer).
    pub step: u64,
    /// Where SplitMask's InfoNCE takes its negatives from.
    pub negatives: Negatives<B>,
}

impl<B: Backend, K> MimBatch<B, K> {
    /// The token targets of a token method. The configuration guarantees them (a token
    /// method without a vocabulary is refused when the run is configured).
    pub fn tokens(&self) -> &Tensor<B, 2, Int> {
        self.targets
            .as_ref()
            .expect("a token-target method is configured with a vocabulary")
    }
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

/// One logged term of a forward pass, a scalar on the device until logged.
#[derive(Debug, Clone)]
pub enum Term<B: Backend> {
    Value(Tensor<B, 1>),
    /// Share of rows whose argmax is the target. Computed only when logged: the argmax is a
    /// pass over the whole `[positions, vocab]` logits, and steps log every few updates.
    Accuracy {
        logits: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
    },
}

impl<B: Backend> Term<B> {
    /// An accuracy term over detached logits.
    pub fn accuracy(logits: &Tensor<B, 2>, targets: &Tensor<B, 1, Int>) -> Self {
        Term::Accuracy {
            logits: logits.clone().detach(),
            targets: targets.clone(),
        }
    }

    pub fn value(&self) -> f64 {
        let t = match self {
            Term::Value(t) => t.clone(),
            Term::Accuracy { logits, targets } => argmax_rows(logits.clone()).equal(targets.clone()).float().mean(),
        };
        read_scalar(t)
    }
}

/// A one-element tensor's value as stored: a loss is f32 even on a bf16 backend, whose
/// `into_scalar` would round it to bf16 (steps of 0.0625 at a token loss of 9).
pub fn read_scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data().iter::<f64>().next().expect("a one-element tensor")
}

/// What a forward pass returns: the loss minimized and the method's terms, in the order of
/// its [`Objective::TERMS`].
#[derive(Debug, Clone)]
pub struct MimOutput<B: Backend> {
    pub loss: Tensor<B, 1>,
    pub terms: Vec<Term<B>>,
    /// Values the method wants averaged over the update's global batch (every micro-batch of
    /// every rank) and handed to [`Objective::after_update`]: DINO's teacher batch mean, which
    /// moves its centre.
    pub stats: Option<Tensor<B, 1>>,
}

impl<B: Backend> MimOutput<B> {
    /// Term `i` as a device scalar (for tests and benchmarks; accuracies are computed).
    pub fn term(&self, i: usize) -> f64 {
        self.terms[i].value()
    }

    /// Every term's value, in [`Objective::TERMS`] order.
    pub fn values(&self) -> Vec<f64> {
        self.terms.iter().map(Term::value).collect()
    }
}

/// What a method predicts for the patches it hid from its encoder, for `trainer visualize`.
#[derive(Debug, Clone)]
pub struct Reconstruction<B: Backend> {
    /// `[batch, m]` grid positions predicted, ascending.
    pub hidden: Tensor<B, 2, Int>,
    pub patches: Predicted<B>,
}

/// The content predicted at [`Reconstruction::hidden`].
#[derive(Debug, Clone)]
pub enum Predicted<B: Backend> {
    /// `[batch, m]` vocabulary entries, the most likely of each position.
    Tokens(Tensor<B, 2, Int>),
    /// `[batch, m, 3 * patch * patch]` pixels in the encoder's input normalization, laid out
    /// as `PatchEmbed::patchify`'s, any per-patch normalization of the loss undone.
    Pixels(Tensor<B, 3>),
}

impl<B: Backend> Predicted<B> {
    /// The most likely entry of each position's logits (`[batch, m, vocab]`).
    pub fn most_likely(logits: Tensor<B, 3>) -> Self {
        let [b, m, v] = logits.dims();
        Predicted::Tokens(argmax_rows(logits.reshape([b * m, v])).reshape([b, m]))
    }
}

/// What a method is built and draws its masks from: the part of the resolved pre-training
/// configuration every method reads, and the method's own options.
#[derive(Debug)]
pub struct MethodSpec<'a, O> {
    pub vit: &'a VitConfig,
    /// Entries of the vocabulary (0: none, for methods with pixel targets).
    pub vocab_size: usize,
    pub masking: MaskSpec,
    /// BEiT and MAE: masked patches per image. SplitMask: patches each branch sees.
    pub mask_count: usize,
    /// Updates in the run, for methods with schedules (DINO's teacher momentum).
    pub steps: u64,
    pub options: &'a O,
}

impl<O> MethodSpec<'_, O> {
    /// Checks shared by the methods that mask patches: `mask_count` leaves patches on both
    /// sides, and a token method has a vocabulary.
    pub fn check_masks(&self, token_targets: bool) -> Result<(), String> {
        let n = self.vit.num_patches();
        if self.mask_count == 0 || self.mask_count >= n {
            return Err(format!(
                "mask_count {} is not in 1..{n} (the model's patches)",
                self.mask_count
            ));
        }
        if token_targets && self.vocab_size < 2 {
            return Err(format!(
                "a vocabulary of {} entries: this method predicts tokens",
                self.vocab_size
            ));
        }
        Ok(())
    }
}

/// A pre-training method: its model, the masks it draws, its loss and the terms it logs. A new
/// method is a file implementing this and an arm of `method::Method`.
pub trait Objective<B: Backend>: Module<B> + Sized {
    /// The method's own options (recorded in the run's config.json).
    type Options: std::fmt::Debug + Send + Sync;

    /// What [`Objective::draw_masks`] draws and [`Objective::forward`] reads: a method gets
    /// the masks of its own kind, by type.
    type Masks: DrawnMasks<B>;

    /// Whether the batch carries visual tokens (BEiT, SplitMask) or the method predicts pixels
    /// (MAE): a pixel method needs no vocabulary and its batches are not tokenized.
    const TOKEN_TARGETS: bool;

    /// The names of the terms [`Objective::forward`] returns, in order: metrics.jsonl's
    /// columns beside `loss`.
    const TERMS: &'static [&'static str];

    /// How the frozen encoder's tokens are pooled for k-NN and probes: the patch tokens' mean,
    /// or the class token where the method's loss is on it (DINO).
    const POOL: Pool = Pool::MeanPatches;

    /// Name prefixes of the parameters only pre-training uses (heads, decoders, a teacher's
    /// companions): fine-tuning drops them and refuses any other key beside `encoder.*`.
    const HEADS: &'static [&'static str];

    /// The paper's `mask_count` for a grid of `patches` (benchmarks; runs take the recipe's).
    fn paper_mask_count(patches: usize) -> usize;

    /// Whether `spec` is a configuration this method can train: run on every resolved and
    /// every read-back config.json, so a hand-edited one is refused with its reason.
    fn validate(spec: &MethodSpec<'_, Self::Options>) -> Result<(), String>;

    /// The model, its weights drawn from `rng`.
    fn build<R: rand::Rng>(spec: &MethodSpec<'_, Self::Options>, rng: &mut R, device: &B::Device) -> Self;

    /// The masks of a batch of `batch` images, sample `j`'s drawn from `rng(j)` alone, so a
    /// rank holding some positions of the global batch draws what one process would.
    fn draw_masks(
        spec: &MethodSpec<'_, Self::Options>,
        batch: usize,
        rng: &dyn Fn(usize) -> rand_chacha::ChaCha8Rng,
        device: &B::Device,
    ) -> Self::Masks;

    /// The encoder being pre-trained (what is evaluated and exported).
    fn encoder(&self) -> &Vit<B>;

    fn forward(&self, batch: &MimBatch<B, Self::Masks>, mode: Mode) -> MimOutput<B>;

    /// The prediction for the patches hidden by `batch`'s masks (the first branch's where
    /// there are two), at evaluation; `None` where the method predicts no patch content.
    fn reconstruct(&self, batch: &MimBatch<B, Self::Masks>) -> Option<Reconstruction<B>> {
        let _ = batch;
        None
    }

    /// What the method does to its own weights after each applied optimizer update, on every rank
    /// alike (so the replicas stay equal): nothing for the masked-image methods; a
    /// joint-embedding method moves its teacher towards the student here. `step` is the update
    /// just made (0-based), for momentum schedules; `stats` the update's mean of the
    /// [`MimOutput::stats`] its forward passes returned.
    fn after_update(self, step: u64, stats: Option<&[f64]>) -> Self {
        let _ = (step, stats);
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

    fn tokens<B: Backend>(b: usize, vocab: usize, device: &B::Device) -> Tensor<B, 2, Int> {
        Tensor::<B, 2>::random([b, 16], Distribution::Uniform(0.0, vocab as f64), device).int()
    }

    /// Random 32 px images and tokens with uniform BEiT masks of 6 of the 16 patches.
    pub fn beit_batch<B: Backend>(b: usize, vocab: usize, device: &B::Device) -> MimBatch<B, MaskedPositions<B>> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        B::seed(device, 3);
        let masks: Vec<_> = (0..b)
            .map(|_| draw_mask(&mut rng, 4, 4, 6, MaskSpec::Uniform))
            .collect();
        MimBatch {
            images: Tensor::random([b, 3, 32, 32], Distribution::Normal(0.0, 1.0), device),
            targets: Some(tokens(b, vocab, device)),
            masks: MaskedPositions::new(&masks, device),
            views: Vec::new(),
            step: 0,
            negatives: Negatives::Local,
        }
    }

    /// Random 32 px images and tokens with block split masks (8 patches per half).
    pub fn split_batch<B: Backend>(b: usize, vocab: usize, seed: u64, device: &B::Device) -> MimBatch<B, Branches<B>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        B::seed(device, seed);
        let halves: Vec<_> = (0..b)
            .map(|_| draw_split(&mut rng, 4, 4, 8, MaskSpec::block_for_grid(16)))
            .collect();
        MimBatch {
            images: Tensor::random([b, 3, 32, 32], Distribution::Normal(0.0, 1.0), device),
            targets: Some(tokens(b, vocab, device)),
            masks: Branches::new(&halves, 16, device),
            views: Vec::new(),
            step: 0,
            negatives: Negatives::Local,
        }
    }

    /// Random 32 px images and tokens with quarter branches (4 of 16 patches each, uniform).
    pub fn quarter_batch<B: Backend>(
        b: usize,
        vocab: usize,
        seed: u64,
        device: &B::Device,
    ) -> MimBatch<B, Branches<B>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        B::seed(device, seed);
        let branches: Vec<_> = (0..b)
            .map(|_| draw_split(&mut rng, 4, 4, 4, MaskSpec::Uniform))
            .collect();
        MimBatch {
            images: Tensor::random([b, 3, 32, 32], Distribution::Normal(0.0, 1.0), device),
            targets: Some(tokens(b, vocab, device)),
            masks: Branches::new(&branches, 16, device),
            views: Vec::new(),
            step: 0,
            negatives: Negatives::Local,
        }
    }

    /// Random 32 px images (no tokens) with MAE's masks: 12 of the 16 patches dropped, uniformly.
    pub fn mae_batch<B: Backend>(b: usize, device: &B::Device) -> MimBatch<B, Branch<B>> {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        B::seed(device, 5);
        let visible: Vec<Vec<usize>> = (0..b)
            .map(|_| {
                let dropped = draw_mask(&mut rng, 4, 4, 12, MaskSpec::Uniform);
                (0..16).filter(|&i| !dropped[i]).collect()
            })
            .collect();
        let sets: Vec<&[usize]> = visible.iter().map(Vec::as_slice).collect();
        MimBatch {
            images: Tensor::random([b, 3, 32, 32], Distribution::Normal(0.0, 1.0), device),
            targets: None,
            masks: Branch::new(&sets, 16, device),
            views: Vec::new(),
            step: 0,
            negatives: Negatives::Local,
        }
    }
}
