//! Backends chosen at run time. The library is generic over burn's `Backend`; the command line
//! picks a concrete one here, once, and hands a [`BackendTask`] to it. Adding a backend is a
//! cargo feature, a [`DeviceKind`] value and one match arm in [`BackendArgs::run`].

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// The CPU backend (pure Rust, SIMD + rayon).
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend with autodiff, for training.
pub type CpuAutodiff = burn::backend::Autodiff<CpuBackend>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// burn's flex backend (pure Rust, all cores).
    Cpu,
    /// NVIDIA GPU through CubeCL (build with `--features cuda`).
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    /// bfloat16 weights and activations with f32 master weights in the optimizer (burn 0.21
    /// has no autocast).
    Bf16,
}

/// `--device` and `--precision`, shared by every command that computes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct BackendArgs {
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Float type on the GPU (default: bf16 for training and benchmarks, f32 for evaluation);
    /// the CPU always computes in f32.
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

/// Work that runs on whichever training backend the command line picks. Evaluation, which
/// needs no gradients, uses `B::InnerBackend`.
pub trait BackendTask {
    type Output;
    fn run<B: AutodiffBackend>(self, device: &B::Device) -> Self::Output;
}

impl BackendArgs {
    /// Runs `task` on the chosen backend; `precision` applies where `--precision` was not given.
    pub fn run<T: BackendTask>(&self, precision: Precision, task: T) -> Result<T::Output> {
        let precision = self.precision.unwrap_or(precision);
        match (self.device, precision) {
            (DeviceKind::Cpu, _) => Ok(task.run::<CpuAutodiff>(&Default::default())),
            #[cfg(feature = "cuda")]
            (DeviceKind::Cuda, Precision::F32) => {
                use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
                Ok(task.run::<Autodiff<Cuda<f32>>>(&CudaDevice::default()))
            }
            #[cfg(feature = "cuda")]
            (DeviceKind::Cuda, Precision::Bf16) => {
                use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
                Ok(task.run::<Autodiff<Cuda<half::bf16>>>(&CudaDevice::default()))
            }
            #[cfg(not(feature = "cuda"))]
            (DeviceKind::Cuda, _) => Err(crate::error::Error::BackendMissing {
                device: "cuda",
                feature: "cuda",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Name;
    impl BackendTask for Name {
        type Output = String;
        fn run<B: AutodiffBackend>(self, _: &B::Device) -> String {
            std::any::type_name::<B>().to_string()
        }
    }

    #[test]
    fn the_command_line_picks_the_backend() {
        let cpu = BackendArgs {
            device: DeviceKind::Cpu,
            precision: Some(Precision::Bf16),
        };
        let name = cpu.run(Precision::Bf16, Name).unwrap();
        assert!(name.contains("Autodiff") && name.contains("Flex"), "{name}");
        #[cfg(not(feature = "cuda"))]
        {
            let cuda = BackendArgs {
                device: DeviceKind::Cuda,
                precision: None,
            };
            let err = cuda.run(Precision::Bf16, Name).unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
