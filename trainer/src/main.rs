//! `trainer`: pre-train a ViT with BEiT or SplitMask on a prepared dataset, fine-tune and
//! evaluate it, export it for timm, and report results.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use trainer::bench::{bench_steps, BenchSpec};
use trainer::config::{FinetuneArgs, PretrainArgs};
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
    /// Fine-tune a pre-trained encoder (or a random-init one) on the dataset's labels.
    Finetune {
        #[command(flatten)]
        args: Box<FinetuneArgs>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
        #[arg(long, value_enum, default_value = "bf16")]
        precision: Precision,
        #[arg(long)]
        quiet: bool,
    },
    /// k-NN and per-layer linear probes of a frozen encoder; writes results.json.
    Eval {
        /// Pre-training run folder (results.json goes there unless --out is given).
        #[arg(long)]
        run: Option<std::path::PathBuf>,
        /// Evaluate a random-init encoder of this preset instead of a run.
        #[arg(long)]
        random_init: Option<String>,
        /// Prepared dataset (default: the run's).
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// Folder for results.json (required with --random-init).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Train images for the k-NN bank and the probes (spread over classes).
        #[arg(long, default_value_t = 10_000)]
        train_images: usize,
        #[arg(long, default_value_t = 10_000)]
        val_images: usize,
        #[arg(long, default_value_t = 100)]
        probe_epochs: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 128)]
        batch_size: usize,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
    },
    /// Gather run folders into report.md with tables and PNG plots.
    Report {
        /// Folder whose subfolders are runs.
        #[arg(long)]
        runs: std::path::PathBuf,
        /// Output folder (default: --runs).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
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
        /// Also write a reference input and our features on it (for tests/python/timm_check.py).
        #[arg(long)]
        check: Option<std::path::PathBuf>,
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
        Command::Finetune {
            args,
            device,
            precision,
            quiet,
        } => {
            let cfg = args.resolve().context("resolving the configuration")?;
            eprintln!("{}", serde_json::to_string_pretty(&cfg)?);
            let results = match device {
                DeviceKind::Cpu => {
                    trainer::finetune::finetune::<trainer::CpuAutodiff>(&cfg, args.resume, &Default::default(), !quiet)?
                }
                DeviceKind::Cuda => cuda_finetune(&cfg, args.resume, precision, !quiet)?,
            };
            match results {
                Some(r) => println!(
                    "fine-tuned {} ({}) for {} steps in {:.0} s: val top-1 {:.2}%, top-5 {:.2}% on {} images (best top-1 {:.2}% at step {}); {}",
                    r.model,
                    r.init,
                    r.steps,
                    r.seconds,
                    100.0 * r.val.top1,
                    100.0 * r.val.top5,
                    r.val.images,
                    100.0 * r.best_top1,
                    r.best_step,
                    cfg.out.join("results.json").display()
                ),
                None => println!("stopped before the end of the schedule; continue with --resume"),
            }
        }
        Command::Eval {
            run,
            random_init,
            data,
            out,
            train_images,
            val_images,
            probe_epochs,
            seed,
            batch_size,
            device,
        } => {
            let (model, vit, data, out) = match (&run, &random_init) {
                (Some(run), None) => {
                    let pre = trainer::config::load_config(run)?;
                    let out = out.unwrap_or_else(|| run.clone());
                    (pre.model.clone(), pre.vit.clone(), data.unwrap_or(pre.data), out)
                }
                (None, Some(model)) => {
                    let vit = VitConfig::preset(model).with_context(|| {
                        format!(
                            "--random-init {model:?}: known presets are {}",
                            VitConfig::PRESETS.join(", ")
                        )
                    })?;
                    let data = data.context("--random-init needs --data")?;
                    let out = out.context("--random-init needs --out")?;
                    (model.clone(), vit, data, out)
                }
                _ => anyhow::bail!("pass exactly one of --run and --random-init"),
            };
            let spec = trainer::eval::EvalSpec {
                run,
                model,
                vit,
                data,
                train_images,
                val_images,
                crop_ratio: 0.875,
                batch: batch_size,
                probe: trainer::probe::ProbeConfig {
                    epochs: probe_epochs,
                    seed,
                    ..Default::default()
                },
                seed,
            };
            let r = match device {
                DeviceKind::Cpu => trainer::eval::evaluate::<trainer::CpuBackend>(&spec, &Default::default())?,
                DeviceKind::Cuda => cuda_eval(&spec)?,
            };
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            trainer::run_folder::write_results(&out, &r)?;
            println!(
                "{} ({}): k-NN top-1 {:.2}%, best linear probe {:.2}% (layer {} of {}), last layer {:.2}%; {}",
                r.model,
                r.init,
                100.0 * r.knn.top1,
                100.0 * r.best_probe.top1,
                r.best_probe.layer,
                r.probes.len(),
                100.0 * r.probes.last().map_or(0.0, |p| p.top1),
                out.join("results.json").display()
            );
        }
        Command::Report { runs, out } => {
            let out = out.unwrap_or_else(|| runs.clone());
            let r = trainer::report::write_report(&runs, &out)?;
            println!(
                "wrote {} ({} fine-tuning and {} eval runs, {} plots)",
                r.markdown.display(),
                r.finetune_runs,
                r.eval_runs,
                r.plots.len()
            );
        }
        Command::Export {
            run,
            format,
            out,
            check,
        } => {
            if format != "timm" {
                anyhow::bail!("--format {format:?}: only \"timm\" is supported");
            }
            let n = trainer::export::export_run(&run, &out)?;
            println!("wrote {n} tensors with timm names to {}", out.display());
            if let Some(check) = check {
                trainer::export::write_check(&run, &check)?;
                println!("wrote a reference input and features to {}", check.display());
            }
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

#[cfg(feature = "cuda")]
fn cuda_finetune(
    cfg: &trainer::config::FinetuneConfig,
    resume: bool,
    precision: Precision,
    progress: bool,
) -> Result<Option<trainer::finetune::FinetuneResults>> {
    use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
    use trainer::finetune::finetune;
    let device = CudaDevice::default();
    Ok(match precision {
        Precision::F32 => finetune::<Autodiff<Cuda<f32>>>(cfg, resume, &device, progress)?,
        Precision::Bf16 => finetune::<Autodiff<Cuda<half::bf16>>>(cfg, resume, &device, progress)?,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_finetune(
    _: &trainer::config::FinetuneConfig,
    _: bool,
    _: Precision,
    _: bool,
) -> Result<Option<trainer::finetune::FinetuneResults>> {
    anyhow::bail!("this binary was built without CUDA: cargo build --release -p trainer --features cuda")
}

/// Probes run in f32: their features are few and the Adam steps small.
#[cfg(feature = "cuda")]
fn cuda_eval(spec: &trainer::eval::EvalSpec) -> Result<trainer::eval::EvalResults> {
    use burn::backend::{cuda::CudaDevice, Cuda};
    Ok(trainer::eval::evaluate::<Cuda<f32>>(spec, &CudaDevice::default())?)
}

#[cfg(not(feature = "cuda"))]
fn cuda_eval(_: &trainer::eval::EvalSpec) -> Result<trainer::eval::EvalResults> {
    anyhow::bail!("this binary was built without CUDA: cargo build --release -p trainer --features cuda")
}
