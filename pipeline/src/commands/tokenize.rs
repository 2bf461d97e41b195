//! `pipeline tokenize`: the token grids of every image for one vocabulary, or for each one in
//! the dataset folder.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use pipeline::prepare::Worker;
use pipeline::vocab;
use pipeline::vocab::token_shards::tokenize_shards;
use schemas::VocabKind;

use super::{ProgressArgs, WorkerArgs};

#[derive(Args)]
pub struct TokenizeArgs {
    /// Prepared dataset folder.
    #[arg(long)]
    data: PathBuf,
    /// Vocabulary file (default: every vocab-*.safetensors in the dataset folder).
    #[arg(long)]
    vocab: Option<PathBuf>,
    #[command(flatten)]
    progress: ProgressArgs,
    /// As one worker of a job array: then run once without these flags to merge (it keeps
    /// the workers' token shards and records them in the manifest).
    #[command(flatten)]
    worker: WorkerArgs,
}

pub fn run(args: &TokenizeArgs) -> Result<ExitCode> {
    let data = &args.data;
    let worker = args.worker.worker();
    let paths = match &args.vocab {
        Some(p) => vec![p.clone()],
        None => every_vocabulary(data)?,
    };
    for p in paths {
        let start = Instant::now();
        let set = tokenize_shards(data, &p, worker, args.progress.shown())?;
        let rows: u64 = set.shards.iter().map(|s| s.rows).sum();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{}: {rows} images tokenized (view + flip) in {secs:.1} s ({:.0} images/s) -> {}",
            set.vocab,
            rows as f64 / secs.max(1e-9),
            data.join(&set.dir).display()
        );
    }
    if worker != Worker::ALL {
        println!(
            "worker {}/{} done; run `pipeline tokenize --data {}` without --num-shards after all workers (the merge)",
            worker.index,
            worker.count,
            data.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The vocabularies in `data` of every kind, or an error saying how to build one.
fn every_vocabulary(data: &Path) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    for k in [VocabKind::RandomProjection, VocabKind::RandomPatches, VocabKind::Kmeans] {
        all.extend(vocab::find(data, k)?);
    }
    anyhow::ensure!(
        !all.is_empty(),
        "no vocab-*.safetensors in {}; run `pipeline vocab build` first",
        data.display()
    );
    Ok(all)
}
