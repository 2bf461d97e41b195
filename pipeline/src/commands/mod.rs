//! The subcommands of the `pipeline` binary, one file each, and the argument groups and
//! printing they share.

pub mod coco_json;
pub mod inspect;
pub mod merge;
pub mod prepare;
pub mod recipes;
pub mod tokenize;
pub mod vocab;

use std::process::ExitCode;

use pipeline::prepare::Worker;
use schemas::Manifest;

/// A job array's worker: `prepare`, `tokenize` and `vocab build` split their shards among N
/// workers.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Number of workers of a job array; each writes the shards with index % N == i.
    #[arg(long, default_value_t = 1)]
    pub num_shards: usize,
    /// This worker's index (e.g. $SLURM_ARRAY_TASK_ID).
    #[arg(long, default_value_t = 0)]
    pub shard_index: usize,
}

impl WorkerArgs {
    pub fn worker(&self) -> Worker {
        Worker {
            count: self.num_shards,
            index: self.shard_index,
        }
    }
}

/// `--no-progress`, for the long-running subcommands (logs of batch jobs stay readable).
#[derive(Debug, Clone, clap::Args)]
pub struct ProgressArgs {
    #[arg(long)]
    pub no_progress: bool,
}

impl ProgressArgs {
    pub fn shown(&self) -> bool {
        !self.no_progress
    }
}

/// 2 tells scripts that the run completed but the manifest lists skipped inputs.
pub fn exit_code(m: &Manifest) -> ExitCode {
    if m.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

pub fn print_manifest_summary(m: &Manifest) {
    println!("dataset {} ({} adapter) from {}", m.dataset, m.adapter, m.source);
    for (split, s) in &m.splits {
        println!(
            "  {split:>6}: {:>8} images, {:>6} skipped, {} classes present",
            s.images,
            s.skipped,
            s.per_class.len()
        );
    }
    println!(
        "  shards: {}  ({:.1} MB)",
        m.shards.len(),
        m.shards.iter().map(|s| s.bytes).sum::<u64>() as f64 / 1e6
    );
    if !m.skipped.is_empty() {
        println!("  skipped {} inputs (see manifest.json), e.g.:", m.skipped.len());
        for s in m.skipped.iter().take(5) {
            println!("    {}: {}", s.path, s.reason);
        }
    }
}
