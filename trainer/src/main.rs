//! `trainer`: pre-train a ViT with BEiT or SplitMask on a prepared dataset, fine-tune and
//! evaluate it, export it for timm, and report results.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, Subcommand};
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::bench::{bench_steps, BenchArgs, BenchResult, BenchSpec};
use trainer::data::images::LoaderArgs;
use trainer::eval::frozen::{evaluate, EvalResults, EvalSpec, FrozenEncoder};
use trainer::eval::probe::ProbeConfig;
use trainer::model::vit::VitConfig;
use trainer::train::config::{
    check_split, init_paths, load_config, FinetuneArgs, FinetuneConfig, PretrainArgs, PretrainConfig,
};
use trainer::train::encoder_from_run::frozen_encoder;
use trainer::train::finetune::{finetune_on, FinetuneResults};
use trainer::train::parallel::Cluster;
use trainer::train::pretrain::{pretrain_on, RunSummary};
use trainer::train::run_folder::write_results;

#[derive(Parser)]
#[command(version, about = "BEiT / SplitMask pre-training of Vision Transformers (burn)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Hide the progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Pre-train (or resume) a run.
    Pretrain {
        #[command(flatten)]
        args: Box<PretrainArgs>,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Fine-tune a pre-trained encoder (or a random-init one) on the dataset's labels.
    Finetune {
        #[command(flatten)]
        args: Box<FinetuneArgs>,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// k-NN and per-layer linear probes of a frozen encoder; writes results.json.
    Eval {
        #[command(flatten)]
        args: EvalArgs,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Gather run folders into report.md with tables and PNG plots.
    Report {
        /// Folder whose subfolders are runs.
        #[arg(long)]
        runs: PathBuf,
        /// Output folder (default: --runs).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a run as a timm export folder (model.safetensors + timm's config.json): a
    /// pre-training run's encoder or a fine-tuning run's classifier.
    Export {
        /// Run folder (holds config.json and checkpoint.safetensors), or a checkpoint in one.
        #[arg(long)]
        run: PathBuf,
        /// Only `timm` for now.
        #[arg(long, default_value = "timm")]
        format: String,
        /// Export folder.
        #[arg(long)]
        out: PathBuf,
        /// Also write a reference input and our output on it, features or logits (for
        /// tests/python/timm_check.py).
        #[arg(long)]
        check: Option<PathBuf>,
    },
    /// Time training steps on synthetic data (one JSON line per run on stdout).
    Bench {
        #[command(flatten)]
        args: BenchArgs,
        #[command(flatten)]
        backend: BackendArgs,
    },
}

/// `trainer eval` arguments: which encoder, which data, how many images.
#[derive(Debug, Clone, clap::Args)]
struct EvalArgs {
    /// Pre-training run folder (results.json goes there unless --out is given), or a
    /// checkpoint in one (`<run>/best.safetensors`).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Evaluate a random-init encoder of this preset instead of a run.
    #[arg(long)]
    random_init: Option<String>,
    /// Prepared dataset (default: the run's).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Folder for results.json (required with --random-init).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Split the probes and k-NN are evaluated on (default: the dataset's).
    #[arg(long)]
    eval_split: Option<String>,
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
    #[command(flatten)]
    loader: LoaderArgs,
}

/// Where the evaluated encoder comes from.
enum Encoder {
    Run(PathBuf),
    Random { model: String, vit: VitConfig, seed: u64 },
}

impl EvalArgs {
    /// The encoder, the evaluation and the folder results.json goes to.
    fn resolve(&self) -> Result<(Encoder, EvalSpec, PathBuf)> {
        let (encoder, data, out) = match (&self.run, &self.random_init) {
            (Some(run), None) => {
                let folder = init_paths(run).0;
                let pre = load_config(&folder)?;
                let data = self.data.clone().unwrap_or(pre.run.data);
                let out = self.out.clone().unwrap_or(folder);
                (Encoder::Run(run.clone()), data, out)
            }
            (None, Some(model)) => {
                let vit = VitConfig::named(model).context("--random-init")?;
                let data = self.data.clone().context("--random-init needs --data")?;
                let out = self.out.clone().context("--random-init needs --out")?;
                let random = Encoder::Random {
                    model: model.clone(),
                    vit,
                    seed: self.seed,
                };
                (random, data, out)
            }
            _ => anyhow::bail!("pass exactly one of --run and --random-init"),
        };
        let manifest = pipeline::prepare::load_manifest(&data)?;
        let eval_split = self
            .eval_split
            .clone()
            .unwrap_or_else(|| manifest.eval_split().to_string());
        check_split(&manifest, &eval_split, &data)?;
        let spec = EvalSpec {
            eval_split,
            data,
            train_images: self.train_images,
            val_images: self.val_images,
            crop_ratio: 0.875,
            batch: self.batch_size,
            probe: ProbeConfig {
                epochs: self.probe_epochs,
                seed: self.seed,
                ..Default::default()
            },
            loader: self.loader.options()?,
        };
        Ok((encoder, spec, out))
    }
}

/// Configuration, resume, this process's place in the run, progress bar.
struct PretrainTask<'a>(&'a PretrainConfig, bool, &'a Cluster, bool);
impl BackendTask for PretrainTask<'_> {
    type Output = trainer::Result<RunSummary>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        pretrain_on::<B>(self.0, self.1, devices, self.2, self.3)
    }
}

struct FinetuneTask<'a>(&'a FinetuneConfig, bool, &'a Cluster, bool);
impl BackendTask for FinetuneTask<'_> {
    type Output = trainer::Result<Option<FinetuneResults>>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        finetune_on::<B>(self.0, self.1, devices, self.2, self.3)
    }
}

/// Evaluation needs no gradients: it runs on the backend without autodiff.
struct EvalTask<'a>(&'a Encoder, &'a EvalSpec);
impl BackendTask for EvalTask<'_> {
    type Output = trainer::Result<EvalResults>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        let device = &devices[0];
        let frozen = match self.0 {
            Encoder::Run(run) => frozen_encoder::<B::InnerBackend>(run, device)?,
            Encoder::Random { model, vit, seed } => FrozenEncoder::random(model, vit, *seed, device),
        };
        evaluate(self.1, &frozen, device)
    }
}

struct BenchTask<'a>(&'a BenchSpec);
impl BackendTask for BenchTask<'_> {
    type Output = BenchResult;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        let device = &devices[0];
        bench_steps::<B>(self.0, device)
    }
}

fn main() -> std::process::ExitCode {
    trainer::backend::keep_freed_memory();
    if let Err(e) = pipeline::interrupt::install() {
        eprintln!("warning: SIGINT/SIGTERM handlers not installed ({e}): a signal stops at once");
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            if let Some(trainer::Error::Interrupted { .. }) = e.downcast_ref() {
                eprintln!("resume with: {}", resume_command());
                return std::process::ExitCode::from(pipeline::interrupt::EXIT_INTERRUPTED as u8);
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// This process's command line with `--resume` (added when missing), quoted for a shell.
fn resume_command() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--resume") {
        args.push("--resume".into());
    }
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    trainer::progress::set_quiet(cli.quiet);
    let progress = !cli.quiet;
    match cli.command {
        Command::Pretrain { args, backend } => {
            let cfg = args.resolve().context("resolving the configuration")?;
            let cluster = args.schedule.nodes.resolve()?;
            eprintln!("{}", serde_json::to_string_pretty(&cfg)?);
            let summary = backend.run_on(
                args.schedule.devices.as_ref(),
                Precision::Bf16,
                PretrainTask(&cfg, args.run.resume, &cluster, progress),
            )??;
            if cluster.node > 0 {
                println!(
                    "node {} of {}: pre-trained {} steps with the other nodes; node 0 wrote {}",
                    cluster.node,
                    cluster.nodes,
                    summary.steps,
                    cfg.run.out.display()
                );
                return Ok(());
            }
            println!(
                "pre-trained {} steps in {:.0} s ({:.1} img/s); run folder {}",
                summary.steps,
                summary.seconds,
                summary.images_per_s,
                cfg.run.out.display()
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
        Command::Finetune { args, backend } => {
            let cfg = args.resolve().context("resolving the configuration")?;
            let cluster = args.schedule.nodes.resolve()?;
            eprintln!("{}", serde_json::to_string_pretty(&cfg)?);
            let results = backend.run_on(
                args.schedule.devices.as_ref(),
                Precision::Bf16,
                FinetuneTask(&cfg, args.run.resume, &cluster, progress),
            )??;
            if cluster.node > 0 {
                println!(
                    "node {} of {}: fine-tuned with the other nodes; node 0 wrote {}",
                    cluster.node,
                    cluster.nodes,
                    cfg.run.out.display()
                );
                return Ok(());
            }
            if let Some(r) = &results {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
            }
            match results {
                Some(r) => println!(
                    "fine-tuned {} ({}) for {} steps in {:.0} s: {} top-1 {:.2}%, top-5 {:.2}% on {} images (best top-1 {:.2}% at step {}{}){}; {}",
                    r.model,
                    r.init,
                    r.steps,
                    r.seconds,
                    r.eval_split,
                    100.0 * r.eval.top1,
                    100.0 * r.eval.top5,
                    r.eval.images,
                    100.0 * r.best_top1,
                    r.best_step,
                    r.probe_top1
                        .map(|p| format!("; linear probe {:.2}%", 100.0 * p))
                        .unwrap_or_default(),
                    if r.warnings.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", r.warnings.join("; "))
                    },
                    cfg.run.out.join("results.json").display()
                ),
                None => println!("stopped before the end of the schedule; continue with --resume"),
            }
        }
        Command::Eval { args, backend } => {
            let (encoder, spec, out) = args.resolve()?;
            // Probes run in f32: their features are few and the Adam steps small.
            let r = backend.run(Precision::F32, EvalTask(&encoder, &spec))??;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            write_results(&out, &r)?;
            println!(
                "{} ({}) on {}: k-NN top-1 {:.2}%, best linear probe {:.2}% (layer {} of {}), last layer {:.2}%; {}",
                r.model,
                r.init,
                r.eval_split,
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
            let e = trainer::export::export_run(&run, &out)?;
            println!(
                "wrote {} ({} tensors with timm names, {}) and {}; load it with timm.create_model(\"local-dir:{}\", pretrained=True)",
                e.weights.display(),
                e.tensors,
                if e.num_classes > 0 {
                    format!("a classifier of {} classes", e.num_classes)
                } else {
                    "the encoder".to_string()
                },
                e.config.display(),
                out.display()
            );
            if let Some(check) = check {
                trainer::export::write_check(&run, &check)?;
                println!("wrote a reference input and our output on it to {}", check.display());
            }
        }
        Command::Bench { args, backend } => {
            let spec = args.resolve()?;
            let mut r = backend.run(Precision::Bf16, BenchTask(&spec))?;
            r.impl_name = format!("burn-{}", backend.describe(None, Precision::Bf16));
            println!("{}", serde_json::to_string(&r)?);
        }
    }
    Ok(())
}
