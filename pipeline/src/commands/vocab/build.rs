//! `pipeline vocab build`: a vocabulary from a prepared dataset's train split, or one
//! job-array worker's share of its patches.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pipeline::vocab::{self, BuildFiles, VocabConfig};
use schemas::vocab::KmeansStats;
use schemas::VocabKind;

use crate::commands::{ProgressArgs, WorkerArgs};

#[derive(Args)]
pub struct BuildArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value_t = Kind::Kmeans)]
    kind: Kind,
    #[arg(long, default_value_t = 8192)]
    size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// k-means: patches sampled from the train split (the paper: 3,000,000).
    #[arg(long, default_value_t = 3_000_000)]
    sample: usize,
    #[arg(long, default_value_t = 25)]
    iterations: u32,
    /// Output file (default: <data>/vocab-<kind>-<size>-s<seed>.safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    progress: ProgressArgs,
    /// As one worker of a job array: sample the patches of this worker's train shards
    /// into <out>.patches/; then run once without these flags to merge (it reads the
    /// workers' patches and builds the vocabulary).
    #[command(flatten)]
    worker: WorkerArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    RandomProjection,
    RandomPatches,
    Kmeans,
}

impl From<Kind> for VocabKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::RandomProjection => VocabKind::RandomProjection,
            Kind::RandomPatches => VocabKind::RandomPatches,
            Kind::Kmeans => VocabKind::Kmeans,
        }
    }
}

pub fn run(args: BuildArgs) -> Result<ExitCode> {
    let worker = args.worker.worker();
    let cfg = VocabConfig {
        kind: args.kind.into(),
        size: args.size,
        seed: args.seed,
        sample: args.sample,
        iterations: args.iterations,
        progress: args.progress.shown(),
    };
    let data = args.data;
    // One writer of the dataset's folder at a time (each worker of a job array its own).
    let _lock = vocab::job_lock(&data, "vocab build", worker)?;
    let out = args.out.unwrap_or_else(|| data.join(cfg.file_name()));
    let start = Instant::now();
    let state = vocab::kmeans_state_path(&out);
    let patches = vocab::patches_dir(&out);
    let files = BuildFiles {
        kmeans_state: Some(&state),
        patches: Some(&patches),
        worker,
    };
    let Some(v) = vocab::build_with(&data, &cfg, &files)
        .with_context(|| format!("building a vocabulary for {}", data.display()))?
    else {
        println!(
            "worker {}/{} done ({} s); run the same `pipeline vocab build` without --num-shards after all workers (the merge)",
            worker.index,
            worker.count,
            start.elapsed().as_secs()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let sha = v.save(&out)?;
    // The vocabulary is written: what a rerun would have resumed from is no longer needed.
    let _ = std::fs::remove_file(&state);
    vocab::remove_patch_store(&patches, &data)?;
    println!(
        "{} vocabulary: {} x {} in {:.1} s -> {} (sha256 {sha})",
        cfg.kind.name(),
        cfg.size,
        v.header.dim,
        start.elapsed().as_secs_f64(),
        out.display()
    );
    if let Some(k) = &v.header.kmeans {
        print_kmeans_stats(k);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_kmeans_stats(k: &KmeansStats) {
    println!(
        "  k-means over {} patches, {} iterations, {} empty clusters re-seeded",
        k.sample, k.iterations, k.reseeded
    );
    println!(
        "  inertia: {}",
        k.inertia
            .iter()
            .map(|i| format!("{i:.0}"))
            .collect::<Vec<_>>()
            .join(" -> ")
    );
}
