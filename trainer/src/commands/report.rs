//! `trainer report`: gather run folders into report.md with tables and PNG plots.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Folder whose subfolders are runs.
    #[arg(long)]
    runs: PathBuf,
    /// Output folder (default: --runs).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(Args { runs, out }: Args) -> Result<()> {
    let out = out.unwrap_or_else(|| runs.clone());
    let started = std::time::Instant::now();
    let r = trainer::report::write_report(&runs, &out)?;
    println!(
        "wrote {}, {} and {} ({} fine-tuning and {} eval runs, {} plots) in {:.2} s",
        r.markdown.display(),
        r.runs_parquet.display(),
        r.metrics_parquet.display(),
        r.finetune_runs,
        r.eval_runs,
        r.plots.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
