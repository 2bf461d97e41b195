//! Pre-training Vision Transformers with BEiT and SplitMask on burn, then fine-tuning,
//! evaluation (k-NN, linear probes), timm export and reports; generic over the backend:
//! `flex` (CPU) in tests and small runs, CUDA behind the `cuda` feature.
//!
//! Data comes from `pipeline` (shards, image decoding, the vocabulary file), so the trainer
//! tokenizes exactly as the pre-tokenizer does.

pub mod augment;
pub mod beit;
pub mod bench;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod engine;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod init;
pub mod loader;
pub mod losses;
pub mod masking;
pub mod mixup;
pub mod objective;
pub mod optim;
pub mod plot;
pub mod probe;
pub mod randaugment;
pub mod report;
pub mod run_folder;
pub mod splitmask;
pub mod targets;
pub mod vit;

/// The CPU backend (pure Rust, SIMD + rayon).
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend with autodiff, for training.
pub type CpuAutodiff = burn::backend::Autodiff<CpuBackend>;

#[cfg(test)]
pub(crate) type TestBackend = CpuBackend;
#[cfg(test)]
pub(crate) type TestAutodiff = CpuAutodiff;
