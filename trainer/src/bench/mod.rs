//! Throughput benchmarks the `bench/` harnesses run beside their PyTorch peers: training steps
//! on synthetic data ([`steps`]) and the pre-training input pipeline alone ([`loader`]).

pub mod loader;
pub mod steps;

pub use steps::*;
