//! Throughput benchmarks the `bench/` harnesses run beside their PyTorch peers: training steps
//! on synthetic data ([`steps`]), the pre-training input pipeline alone ([`loader`]), and the
//! device tokenizer's agreement with the host's in the run's float type ([`targets`]).

pub mod loader;
pub mod steps;
pub mod targets;

pub use steps::*;
