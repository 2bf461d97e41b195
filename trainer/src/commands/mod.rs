//! The `trainer` subcommands, one module each: its clap arguments and what it runs and prints.
//! Part of the binary, not of the library: they compose the library's steps and report errors
//! with `anyhow`.

pub mod bench;
pub mod bench_loader;
pub mod bench_targets;
pub mod embed;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod pretrain;
pub mod report;
pub mod segment;
pub mod visualize;

/// The results a training command reports, or `None` after printing why this process has
/// none: node 0 reports for a multi-node run, and a run stopped early has none yet.
fn results_to_report<R>(
    results: Option<R>,
    cluster: &trainer::train::parallel::Cluster,
    out: &std::path::Path,
    trained: &str,
) -> Option<R> {
    if cluster.node > 0 {
        println!(
            "node {} of {}: {trained} with the other nodes; node 0 wrote {}",
            cluster.node,
            cluster.nodes,
            out.display()
        );
        return None;
    }
    if results.is_none() {
        println!("stopped before the end of the schedule; continue with --resume");
    }
    results
}

/// A finished pre-training run and the split of a dataset to read with it.
#[derive(clap::Args)]
pub struct RunSplit {
    /// Pre-training run folder, or a checkpoint in one (`<run>/best.safetensors`).
    #[arg(long)]
    run: std::path::PathBuf,
    /// Prepared dataset (default: the run's).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Split to read (default: the dataset's evaluation split).
    #[arg(long)]
    split: Option<String>,
}

impl RunSplit {
    /// The run, the dataset folder and the split, the defaults filled in from the run's
    /// config.json and the dataset's manifest.
    fn resolve(&self) -> anyhow::Result<(&std::path::Path, std::path::PathBuf, String)> {
        use anyhow::Context;
        let run = trainer::train::config::init_paths(&self.run).0;
        let pre = trainer::train::config::load_config(&run).context("reading the run's config.json")?;
        let data = self.data.clone().unwrap_or(pre.run.data);
        let manifest = pipeline::prepare::load_manifest(&data)?;
        let split = self
            .split
            .clone()
            .or(manifest.eval_split)
            .unwrap_or_else(|| "val".into());
        Ok((&self.run, data, split))
    }
}
