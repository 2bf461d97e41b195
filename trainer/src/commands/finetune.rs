//! `trainer finetune`: fine-tune a pre-trained encoder (or a random-init one) on the dataset's
//! labels.

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::train::config::{FinetuneArgs, FinetuneConfig};
use trainer::train::finetune::{finetune_on, FinetuneResults};
use trainer::train::parallel::Cluster;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    args: Box<FinetuneArgs>,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Configuration, resume, this process's place in the run, progress bar.
struct FinetuneTask<'a>(&'a FinetuneConfig, bool, &'a Cluster, bool);
impl BackendTask for FinetuneTask<'_> {
    type Output = trainer::Result<Option<FinetuneResults>>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        finetune_on::<B>(self.0, self.1, devices, self.2, self.3)
    }
}

pub fn run(Args { args, backend }: Args, progress: bool) -> Result<()> {
    let cfg = args.resolve().context("resolving the configuration")?;
    let cluster = args.schedule.nodes.resolve()?;
    eprintln!("{}", serde_json::to_string_pretty(&cfg)?);
    let results = backend.run_on(
        args.schedule.devices.as_ref(),
        Precision::Bf16,
        FinetuneTask(&cfg, args.run.resume, &cluster, progress),
    )??;
    let Some(r) = super::results_to_report(results, &cluster, &cfg.run.out, "fine-tuned") else {
        return Ok(());
    };
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!(
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
    );
    Ok(())
}
