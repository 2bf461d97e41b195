//! Backends chosen at run time. The library is generic over burn's `Backend`; the command line
//! picks a concrete one here, once, and hands a [`BackendTask`] to it. Adding a backend is a
//! cargo feature, a [`Kernels`] or [`DeviceKind`] value and one match arm in [`BackendArgs::run_on`].

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

/// Tells glibc's malloc to keep freed memory for reuse instead of returning it to the kernel.
///
/// A training step allocates and frees the same few hundred activation and gradient buffers
/// every time. By default glibc serves the large ones with fresh `mmap`s and trims the heap
/// top after frees, so each step pays page faults and page zeroing for memory it just gave
/// back: 17% of a LibTorch CPU step's time (perf, cpu-tiny SplitMask), 25% lower throughput.
/// Buffers up to 32 MiB (glibc's largest threshold) now come from the heap, which is never
/// trimmed; the process keeps its peak footprint, as PyTorch's caching allocators do on GPUs.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; called once before the work starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Asks Linux to back a large fresh buffer with 2 MiB pages, before it is first written.
///
/// A batch of 64 views at 224 px is 38.5 MB, above malloc's largest mmap threshold, so each
/// batch is mapped afresh; faulting it in 4 KiB at a time (and unmapping it after) took a fifth
/// of the loader's time on one core (perf, `trainer bench-loader`). Advice only: where
/// transparent huge pages are off the pages stay small, and the contents are never changed.
pub fn advise_huge_pages(buf: &mut [f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buf);
        let (from, to) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if to > from {
            // SAFETY: [from, to) lies inside `buf`, borrowed mutably for the call; madvise with
            // MADV_HUGEPAGE changes how the kernel backs those pages, not what they hold.
            unsafe {
                libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// The CPU backend of LibTorch (build with `--features tch`).
#[cfg(feature = "tch")]
pub type TchBackend = burn::backend::LibTorch<f32>;
/// LibTorch with autodiff, for training.
#[cfg(feature = "tch")]
pub type TchAutodiff = burn::backend::Autodiff<TchBackend>;

/// Whose kernels compute, on whichever `--device`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// burn's own: flex on the CPU, CubeCL on CUDA.
    #[default]
    Native,
    /// LibTorch's (PyTorch's C++ library), on the CPU or CUDA; build with `--features tch`.
    #[value(alias = "libtorch")]
    Tch,
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

/// `--device`, `--backend` and `--precision`, shared by every command that computes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct BackendArgs {
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Whose kernels: burn's own (`native`) or LibTorch's (`tch`).
    #[arg(long, value_enum, default_value = "native")]
    pub backend: Kernels,
    /// Float type (default: bf16 on a GPU for training and benchmarks, f32 for evaluation and on
    /// the CPU); flex computes in f32 only, LibTorch on the CPU takes an explicit bf16.
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
    /// Runs `task` on one device of the chosen backend; `precision` applies on a GPU where
    /// `--precision` was not given.
    pub fn run<T: BackendTask>(&self, precision: Precision, task: T) -> Result<T::Output> {
        self.run_on(None, precision, task)
    }

    /// The device kind of `--devices` where given (it overrides `--device`), else `--device`'s.
    fn kind(&self, devices: Option<&DeviceList>) -> DeviceKind {
        match devices.map(|d| d.kind.as_str()) {
            None => self.device,
            Some("cuda") => DeviceKind::Cuda,
            Some(_) => DeviceKind::Cpu,
        }
    }

    /// The float type the run computes in: `--precision` where given; else `default` on a GPU
    /// and f32 on the CPU.
    pub fn precision(&self, devices: Option<&DeviceList>, default: Precision) -> Precision {
        match (self.kind(devices), self.backend, self.precision) {
            // flex has no bf16 matmul kernels worth the name.
            (DeviceKind::Cpu, Kernels::Native, _) => Precision::F32,
            (_, _, Some(p)) => p,
            (DeviceKind::Cpu, _, None) => Precision::F32,
            (DeviceKind::Cuda, _, None) => default,
        }
    }

    /// What computes, for logs and benchmark tables: `flex`, `cubecl-cuda`, `tch-cpu` or
    /// `tch-cuda`, with the float type.
    pub fn describe(&self, devices: Option<&DeviceList>, default: Precision) -> String {
        let name = match (self.backend, self.kind(devices)) {
            (Kernels::Native, DeviceKind::Cpu) => "flex",
            (Kernels::Native, DeviceKind::Cuda) => "cubecl-cuda",
            (Kernels::Tch, DeviceKind::Cpu) => "tch-cpu",
            (Kernels::Tch, DeviceKind::Cuda) => "tch-cuda",
        };
        let p = match self.precision(devices, default) {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        };
        format!("{name}-{p}")
    }

    /// Runs `task` on the devices of `--devices` where given (their kind overrides
    /// `--device`), else on one device of `--device`'s kind.
    pub fn run_on<T: BackendTask>(
        &self,
        devices: Option<&DeviceList>,
        precision: Precision,
        task: T,
    ) -> Result<T::Output> {
        let kind = self.kind(devices);
        let precision = self.precision(devices, precision);
        let ids = devices.map_or_else(|| vec![0], |d| d.ids.clone());
        match (self.backend, kind, precision) {
            // Every CPU worker shares the one CPU device (and its rayon pool).
            (Kernels::Native, DeviceKind::Cpu, _) => Ok(task.run::<CpuAutodiff>(&vec![Default::default(); ids.len()])),
            #[cfg(feature = "cuda")]
            (Kernels::Native, DeviceKind::Cuda, Precision::F32) => {
                use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
                let devices: Vec<_> = ids.iter().map(|&i| CudaDevice::new(i)).collect();
                Ok(task.run::<Autodiff<Cuda<f32>>>(&devices))
            }
            #[cfg(feature = "cuda")]
            (Kernels::Native, DeviceKind::Cuda, Precision::Bf16) => {
                use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
                let devices: Vec<_> = ids.iter().map(|&i| CudaDevice::new(i)).collect();
                Ok(task.run::<Autodiff<Cuda<half::bf16>>>(&devices))
            }
            #[cfg(not(feature = "cuda"))]
            (Kernels::Native, DeviceKind::Cuda, _) => Err(crate::error::Error::BackendMissing {
                what: "--device cuda",
                feature: "cuda",
            }),
            #[cfg(feature = "tch")]
            (Kernels::Tch, kind, precision) => {
                use burn::backend::libtorch::LibTorchDevice;
                use burn::backend::{Autodiff, LibTorch};
                let devices: Vec<_> = match kind {
                    DeviceKind::Cpu => vec![LibTorchDevice::Cpu; ids.len()],
                    DeviceKind::Cuda => ids.iter().map(|&i| LibTorchDevice::Cuda(i)).collect(),
                };
                Ok(match precision {
                    Precision::F32 => task.run::<Autodiff<LibTorch<f32>>>(&devices),
                    Precision::Bf16 => task.run::<Autodiff<LibTorch<half::bf16>>>(&devices),
                })
            }
            #[cfg(not(feature = "tch"))]
            (Kernels::Tch, _, _) => Err(crate::error::Error::BackendMissing {
                what: "--backend tch",
                feature: "tch",
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
        let args = |device, backend, precision| BackendArgs {
            device,
            backend,
            precision,
        };
        let cpu = args(DeviceKind::Cpu, Kernels::Native, Some(Precision::Bf16));
        let name = cpu.run(Precision::Bf16, Name).unwrap();
        assert!(name.contains("Autodiff") && name.contains("Flex"), "{name}");
        assert_eq!(cpu.describe(None, Precision::Bf16), "flex-f32");
        let gpu = args(DeviceKind::Cpu, Kernels::Native, None);
        assert_eq!(
            gpu.describe(Some(&"cuda:0,1".parse().unwrap()), Precision::Bf16),
            "cubecl-cuda-bf16"
        );
        #[cfg(not(feature = "cuda"))]
        {
            let err = gpu.run_on(Some(&"cuda:0".parse().unwrap()), Precision::Bf16, Name);
            let err = err.unwrap_err().to_string();
            assert!(
                err.contains("--device cuda") && err.contains("--features cuda"),
                "{err}"
            );
        }
        let tch = args(DeviceKind::Cpu, Kernels::Tch, None);
        assert_eq!(tch.describe(None, Precision::Bf16), "tch-cpu-f32");
        let tch_bf16 = args(DeviceKind::Cpu, Kernels::Tch, Some(Precision::Bf16));
        assert_eq!(tch_bf16.describe(None, Precision::F32), "tch-cpu-bf16");
        #[cfg(feature = "tch")]
        {
            let name = tch.run(Precision::Bf16, Name).unwrap();
            assert!(
                name.contains("Autodiff") && name.contains("LibTorch") && !name.contains("bf16"),
                "{name}"
            );
            let name = tch_bf16.run(Precision::F32, Name).unwrap();
            assert!(name.contains("LibTorch<half::bfloat::bf16>"), "{name}");
        }
        #[cfg(not(feature = "tch"))]
        {
            let err = tch.run(Precision::Bf16, Name).unwrap_err().to_string();
            assert!(err.contains("--backend tch") && err.contains("--features tch"), "{err}");
        }
    }
}
