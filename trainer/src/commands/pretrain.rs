//! `trainer pretrain`: pre-train (or resume) a run.

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::train::config::{PretrainArgs, PretrainConfig};
use trainer::train::parallel::Cluster;
use trainer::train::pretrain::{pretrain_on, RunSummary};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    args: Box<PretrainArgs>,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Configuration, resume, this process's place in the run, progress bar.
struct PretrainTask<'a>(&'a PretrainConfig, bool, &'a Cluster, bool);
impl BackendTask for PretrainTask<'_> {
    type Output = trainer::Result<RunSummary>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        pretrain_on::<B>(self.0, self.1, devices, self.2, self.3)
    }
}

pub fn run(Args { args, backend }: Args, progress: bool) -> Result<()> {
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
        let terms: String = last
            .terms
            .iter()
            .map(|(name, v)| format!(", {name} {:.4}", v.unwrap_or(f64::NAN)))
            .collect();
        println!("last logged step {}: loss {:.4}{terms}", last.step, last.loss);
    }
    Ok(())
}
