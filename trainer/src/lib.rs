//! Pre-training Vision Transformers with BEiT and SplitMask on burn, then fine-tuning,
//! evaluation (k-NN, linear probes), timm export and reports; generic over the backend:
//! `flex` (CPU) in tests and small runs, LibTorch (CPU and CUDA) behind the `tch` feature, CubeCL
//! CUDA behind the `cuda` feature.
//!
//! Data comes from `pipeline` (shards, image decoding, the vocabulary file), so the trainer
//! tokenizes exactly as the pre-tokenizer does.
//!
//! # Layers
//! Modules import only from their own layer or the layers below it (checked by the
//! `layering` integration test, which also refuses import loops):
//!
//! | layer | modules | what lives there |
//! |---|---|---|
//! | 0 | [`error`], [`seed`], [`progress`], [`backend`], [`kernels`] | the crate's error type, derived seeds, progress bars, backend choice, fused kernels (burn's autodiff glue and LibTorch's FFI) |
//! | 1 | [`model`] | what a forward pass needs: ViT, init, BEiT, SplitMask, masks, losses, the device tokenizer, the classifier |
//! | 2 | [`data`] | a split's rows in memory, views and augmentation, RandAugment, mixup, the batch loader |
//! | 3 | [`eval`] | measuring a model on data: top-k accuracy, features, k-NN, linear probes, frozen-encoder evaluation |
//! | 4 | [`train`] | optimizer and schedule, checkpoints, the run folder, configuration, the pre-training and fine-tuning loops |
//! | 5 | [`report`], [`export`], [`bench`] | outputs: reports and plots, timm export, step benchmarks |
//!
//! Evaluation sits below training because the loops evaluate (the k-NN monitor, periodic
//! fine-tuning accuracy); loading a finished run's encoder is the run folder's business
//! (`train::encoder_from_run`), so `trainer eval` composes the two.

#![warn(clippy::too_many_lines)]

/// A test module once per backend of the build, with the same assertions: on flex, and with
/// the `tch` feature also on LibTorch's CPU backend. The body names the backend `TestBackend`
/// (`TestAutodiff` with autodiff); it expands to modules `tests_flex` and `tests_tch`.
#[cfg(test)]
macro_rules! backend_tests {
    (@on $name:ident, $backend:ty, $autodiff:ty; $($body:tt)*) => {
        mod $name {
            #[allow(dead_code)]
            type TestBackend = $backend;
            #[allow(dead_code)]
            type TestAutodiff = $autodiff;
            $($body)*
        }
    };
    ($($body:tt)*) => {
        backend_tests!(@on tests_flex, crate::backend::CpuBackend, crate::backend::CpuAutodiff; $($body)*);
        #[cfg(feature = "tch")]
        backend_tests!(@on tests_tch, crate::backend::TchBackend, crate::backend::TchAutodiff; $($body)*);
    };
}

pub mod backend;
pub mod error;
pub mod kernels;
pub mod progress;
pub mod seed;

pub mod model;

pub mod data;

pub mod eval;

pub mod train;

pub mod bench;
pub mod export;
pub mod report;

pub use backend::{CpuAutodiff, CpuBackend};
pub use error::{Error, Result};
