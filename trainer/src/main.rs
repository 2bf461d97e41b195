//! `trainer`: pre-train a ViT with BEiT or SplitMask on a prepared dataset.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use trainer::bench::{bench_steps, BenchSpec};
use trainer::config::PretrainArgs;
use trainer::engine::pretrain;
use trainer::objective::Method;
use trainer::vit::VitConfig;

#[derive(Parser)]
#[command(version, about = "BEiT / SplitMask pre-training of Vision Transformers (burn)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DeviceKind {
    /// burn's flex backend (pure Rust, all cores).
    Cpu,
    /// NVIDIA GPU through CubeCL (build with `--features cuda`).
    Cuda,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Precision {
    F32,
    /// bfloat16 weights, activations and optimizer state (burn 0.21 has no autocast).
    Bf16,
}

#[derive(Subcommand)]
enum Command {
    /// Pre-train (or resume) a run.
    Pretrain {
        #[command(flatten)]
        args: Box<PretrainArgs>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
        /// Float type on the GPU (the CPU always trains in f32).
        #[arg(long, value_enum, default_value = "bf16")]
        precision: Precision,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Write a run's pre-trained encoder as a timm ViT state dict (safetensors).
    Export {
        /// Run folder (holds config.json and checkpoint.safetensors).
        #[arg(long)]
        run: std::path::PathBuf,
        /// Only `timm` for now.
        #[arg(long, default_value = "timm")]
        format: String,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Time training steps on synthetic data (one JSON line per run on stdout).
    Bench {
        #[arg(long, value_enum, default_value = "splitmask")]
        method: Method,
        #[arg(long, default_value = "small")]
        model: String,
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        #[arg(long, default_value_t = 8192)]
        vocab_size: usize,
        /// Untimed steps first (kernel compilation and autotuning on GPUs).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
        #[arg(long, value_enum, default_value = "bf16")]
        precision: Precision,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Pretrain {
            args,
            device,
            precision,
            quiet,
        } => {
            let cfg = args.resolve().context("resolving the configuration")?;
            eprintln!("{}", serde_json::to_string_pretty(&cfg)?);
            let summary = match device {
                DeviceKind::Cpu => {
                    let _ = precision;
                    pretrain::<trainer::CpuAutodiff>(&cfg, args.resume, &Default::default(), !quiet)?
                }
                DeviceKind::Cuda => cuda_pretrain(&cfg, args.resume, precision, !quiet)?,
            };
            println!(
                "pre-trained {} steps in {:.0} s ({:.1} img/s); run folder {}",
                summary.steps,
                summary.seconds,
                summary.images_per_s,
                cfg.out.display()
            );
            if let Some(last) = summary.last {
                println!(
                    "last logged step {}: loss {:.4}, mim {:.4}{}, token accuracy {:.3}",
                    last.step,
                    last.loss,
                    last.mim,
                    last.nce.map(|n| format!(", infonce {n:.4}")).unwrap_or_default(),
                    last.mim_accuracy
                );
            }
        }
        Command::Export { run, format, out } => {
            if format != "timm" {
                anyhow::bail!("--format {format:?}: only \"timm\" is supported");
            }
            let n = trainer::export::export_run(&run, &out)?;
            println!("wrote {n} tensors with timm names to {}", out.display());
        }
        Command::Bench {
            method,
            model,
            batch_size,
            vocab_size,
            warmup,
            steps,
            device,
            precision,
        } => {
            let vit = VitConfig::preset(&model)
                .with_context(|| format!("--model {model:?}: known presets are {}", VitConfig::PRESETS.join(", ")))?;
            let spec = BenchSpec {
                model_name: model,
                vit,
                method,
                batch: batch_size,
                vocab: vocab_size,
                warmup,
                steps,
            };
            let r = match device {
                DeviceKind::Cpu => bench_steps::<trainer::CpuAutodiff>(&spec, &Default::default()),
                DeviceKind::Cuda => cuda_bench(&spec, precision)?,
            };
            println!("{}", serde_json::to_string(&r)?);
        }
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn cuda_bench(spec: &BenchSpec, precision: Precision) -> Result<trainer::bench::BenchResult> {
    use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
    let device = CudaDevice::default();
    Ok(match precision {
        Precision::F32 => bench_steps::<Autodiff<Cuda<f32>>>(spec, &device),
        Precision::Bf16 => bench_steps::<Autodiff<Cuda<half::bf16>>>(spec, &device),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_bench(_: &BenchSpec, _: Precision) -> Result<trainer::bench::BenchResult> {
    anyhow::bail!("this binary was built without CUDA: cargo build --release -p trainer --features cuda")
}

#[cfg(feature = "cuda")]
fn cuda_pretrain(
    cfg: &trainer::config::PretrainConfig,
    resume: bool,
    precision: Precision,
    progress: bool,
) -> Result<trainer::engine::RunSummary> {
    use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
    let device = CudaDevice::default();
    Ok(match precision {
        Precision::F32 => pretrain::<Autodiff<Cuda<f32>>>(cfg, resume, &device, progress)?,
        Precision::Bf16 => pretrain::<Autodiff<Cuda<half::bf16>>>(cfg, resume, &device, progress)?,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_pretrain(
    _: &trainer::config::PretrainConfig,
    _: bool,
    _: Precision,
    _: bool,
) -> Result<trainer::engine::RunSummary> {
    anyhow::bail!("this binary was built without CUDA: cargo build --release -p trainer --features cuda")
}
