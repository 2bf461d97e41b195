//! Fused kernels below the model layer: the one place a burn or LibTorch upgrade lands.
//! [`fused`] is what the model calls (attention, layer norm, log-softmax, row argmax), one
//! autodiff node each on LibTorch and burn's own ops elsewhere; `libtorch` holds every FFI
//! call into ATen (`tch` feature).

pub mod fused;
#[cfg(feature = "tch")]
pub mod libtorch;
