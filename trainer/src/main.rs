//! `trainer`: pre-train a ViT with BEiT or SplitMask on a prepared dataset, fine-tune and
//! evaluate it, export it for timm, and report results.
#![warn(clippy::too_many_lines)]

mod commands;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    Pretrain(commands::pretrain::Args),
    /// Fine-tune a pre-trained encoder (or a random-init one) on the dataset's labels.
    Finetune(commands::finetune::Args),
    /// Semantic segmentation: a pre-trained encoder (or a random-init one) under the
    /// multi-scale adapter and UperNet, trained on the dataset's label maps; mIoU by sliding
    /// window.
    Segment(commands::segment::Args),
    /// k-NN and per-layer linear probes of a frozen encoder; writes results.json.
    Eval(commands::eval::Args),
    /// Gather run folders into report.md with tables and PNG plots.
    Report(commands::report::Args),
    /// Write a run as a timm export folder (model.safetensors + timm's config.json): a
    /// pre-training run's encoder or a fine-tuning run's classifier.
    Export(commands::export::Args),
    /// A frozen encoder's class-token and mean-pooled features of every image of a split, as
    /// Parquet parts (resumable).
    Embed(commands::embed::Args),
    /// A PNG grid of eval images, the patches a pre-training run hides and what it predicts
    /// there (vocabulary entries, right/wrong tokens, or MAE's pixels).
    Visualize(commands::visualize::Args),
    /// Time training steps on synthetic data (one JSON line per run on stdout).
    Bench(commands::bench::Args),
    /// Time the pre-training input pipeline alone: shards, decode, crop, flip, normalized
    /// batch (one JSON line on stdout; the flags of `pretrain`).
    BenchLoader(commands::bench_loader::Args),
    /// Compare the device tokenizer's targets, on this device and float type, with the host's
    /// (one JSON line on stdout; fails beyond near-ties).
    BenchTargets(commands::bench_targets::Args),
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
        Command::Pretrain(args) => commands::pretrain::run(args, progress),
        Command::Finetune(args) => commands::finetune::run(args, progress),
        Command::Segment(args) => commands::segment::run(args, progress),
        Command::Eval(args) => commands::eval::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Visualize(args) => commands::visualize::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::BenchLoader(args) => commands::bench_loader::run(args),
        Command::BenchTargets(args) => commands::bench_targets::run(args),
    }
}
