//! `trainer segment`: semantic segmentation fine-tuning of a pre-trained (or random-init)
//! encoder on the dataset's label maps.

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::train::config::{SegmentArgs, SegmentConfig};
use trainer::train::parallel::Cluster;
use trainer::train::segment::{segment_on, SegmentResults};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    args: Box<SegmentArgs>,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Configuration, resume, this process's place in the run, progress bar.
struct SegmentTask<'a>(&'a SegmentConfig, bool, &'a Cluster, bool);
impl BackendTask for SegmentTask<'_> {
    type Output = trainer::Result<Option<SegmentResults>>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        segment_on::<B>(self.0, self.1, devices, self.2, self.3)
    }
}

pub fn run(Args { args, backend }: Args, progress: bool) -> Result<()> {
    let cfg = args.resolve().context("resolving the configuration")?;
    let cluster = args.schedule.nodes.resolve()?;
    eprintln!("{}", serde_json::to_string_pretty(&cfg)?);
    let results = backend.run_on(
        args.schedule.devices.as_ref(),
        Precision::Bf16,
        SegmentTask(&cfg, args.run.resume, &cluster, progress),
    )??;
    let Some(r) = super::results_to_report(results, &cluster, &cfg.run.out, "trained") else {
        return Ok(());
    };
    println!(
        "segmented with {} ({}) for {} steps in {:.0} s: {} mIoU {:.2}%, pixel accuracy {:.2}% over {} pixels (best mIoU {:.2}% at step {} on {}); {}",
        r.model,
        r.init,
        r.steps,
        r.seconds,
        r.eval_split,
        100.0 * r.eval.miou,
        100.0 * r.eval.pixel_accuracy,
        r.eval.pixels,
        100.0 * r.best_miou,
        r.best_step,
        r.select_split,
        cfg.run.out.join("results.json").display()
    );
    Ok(())
}
