//! Backends chosen at run time. The library is generic over burn's `Backend`; the command line
//! picks a concrete one here, once, and hands a [`BackendTask`] to it. Adding a backend is a
//! cargo feature, a [`DeviceKind`] value and one match arm in [`BackendArgs::run`].

use std::str::FromStr;

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

/// What `--devices` names: a device kind and the indices of the devices of that kind
/// (`cpu:N` is N CPU workers sharing the one CPU device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// `cpu` or `cuda`.
    pub kind: String,
    /// Device indices, one rank each, in rank order.
    pub ids: Vec<usize>,
}

impl DeviceList {
    /// Ranks (devices) in the list.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl FromStr for DeviceList {
    type Err = String;

    /// `cpu`, `cpu:N`, `cuda`, `cuda:I,J,..` or `cuda:I,cuda:J,..`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?}: {why} (expected cpu:N, or cuda:0,1,... / cuda:0,cuda:1,...)");
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let ids = match kind {
            "cpu" => {
                let n = if rest.is_empty() {
                    1
                } else {
                    rest.parse::<usize>().map_err(|_| bad("N is not a number"))?
                };
                (0..n).collect()
            }
            "cuda" if rest.is_empty() => vec![0],
            "cuda" => rest
                .split(',')
                .map(|p| p.strip_prefix("cuda:").unwrap_or(p).parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad("a device index is not a number"))?,
            _ => return Err(bad("unknown device kind")),
        };
        if ids.is_empty() {
            return Err(bad("no devices"));
        }
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != ids.len() {
            return Err(bad("a device is listed twice"));
        }
        Ok(DeviceList {
            kind: kind.to_string(),
            ids,
        })
    }
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

/// Work that runs on whichever training backend the command line picks, on one device or
/// (training) on several, one data-parallel rank each. Evaluation, which needs no gradients,
/// uses `B::InnerBackend` on the first device.
pub trait BackendTask {
    type Output;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output;
}

impl BackendArgs {
    /// Runs `task` on one device of the chosen backend; `precision` applies where
    /// `--precision` was not given.
    pub fn run<T: BackendTask>(&self, precision: Precision, task: T) -> Result<T::Output> {
        self.run_on(None, precision, task)
    }

    /// Runs `task` on the devices of `--devices` where given (their kind overrides
    /// `--device`), else on one device of `--device`'s kind.
    pub fn run_on<T: BackendTask>(
        &self,
        devices: Option<&DeviceList>,
        precision: Precision,
        task: T,
    ) -> Result<T::Output> {
        let precision = self.precision.unwrap_or(precision);
        let kind = match devices.map(|d| d.kind.as_str()) {
            None => self.device,
            Some("cuda") => DeviceKind::Cuda,
            Some(_) => DeviceKind::Cpu,
        };
        let ids = devices.map_or_else(|| vec![0], |d| d.ids.clone());
        match (kind, precision) {
            // Every CPU worker shares the one CPU device (and its rayon pool).
            (DeviceKind::Cpu, _) => Ok(task.run::<CpuAutodiff>(&vec![Default::default(); ids.len()])),
            #[cfg(feature = "cuda")]
            (DeviceKind::Cuda, Precision::F32) => {
                use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
                let devices: Vec<_> = ids.iter().map(|&i| CudaDevice::new(i)).collect();
                Ok(task.run::<Autodiff<Cuda<f32>>>(&devices))
            }
            #[cfg(feature = "cuda")]
            (DeviceKind::Cuda, Precision::Bf16) => {
                use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
                let devices: Vec<_> = ids.iter().map(|&i| CudaDevice::new(i)).collect();
                Ok(task.run::<Autodiff<Cuda<half::bf16>>>(&devices))
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
        fn run<B: AutodiffBackend>(self, _: &[B::Device]) -> String {
            std::any::type_name::<B>().to_string()
        }
    }

    #[test]
    fn device_lists_parse_and_bad_ones_are_refused_with_the_input_quoted() {
        let l: DeviceList = "cpu:3".parse().unwrap();
        assert_eq!((l.kind.as_str(), l.ids), ("cpu", vec![0, 1, 2]));
        assert_eq!("cpu".parse::<DeviceList>().unwrap().len(), 1);
        assert_eq!("cuda:0,cuda:2".parse::<DeviceList>().unwrap().ids, vec![0, 2]);
        assert_eq!("cuda:1,3".parse::<DeviceList>().unwrap().ids, vec![1, 3]);
        assert_eq!("cuda".parse::<DeviceList>().unwrap().ids, vec![0]);
        for bad in ["cpu:0", "cpu:x", "tpu:2", "cuda:0,0", "cuda:a"] {
            let err = bad.parse::<DeviceList>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
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
