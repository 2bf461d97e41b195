//! The pre-training input pipeline alone, as `trainer pretrain` runs it: the run's training
//! rows and the trainer's own [`Loader`] (encoded shard bytes, decode, random resized crop
//! and flip, normalized CHW batch, the token grids where attached) on rayon's threads, timed
//! over whole batches. `bench/loader/run.py` runs it beside torchvision's loaders on the same
//! images.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::data::loader::{make_batch, Loader, Part};
use crate::error::Result;
use crate::train::config::PretrainConfig;
use crate::train::pretrain::training_set;

#[derive(Debug, Clone, Serialize)]
pub struct LoaderBench {
    /// Rayon threads decoding and augmenting (the loader's own thread, which gathers the
    /// batch, comes on top).
    pub threads: usize,
    pub batch: usize,
    /// Timed batches, after the first.
    pub batches: u64,
    /// The first batch: spawning the loader and filling its first batch (untimed).
    pub first_batch_s: f64,
    pub images_per_s: f64,
    /// The views' side in pixels.
    pub size: usize,
    /// The loader's first batch equals `make_batch`'s for the run's seed, pixel for pixel and
    /// token for token: what is timed is what the trainer trains on.
    pub pixels_match: bool,
}

/// Times `batches` batches of `cfg`'s loader after its first.
pub fn bench_loader(cfg: &PretrainConfig, batches: u64) -> Result<LoaderBench> {
    let set = Arc::new(training_set(cfg)?.0);
    let (batch, seed) = (cfg.schedule.batch_size, cfg.run.seed);
    let start = Instant::now();
    let mut loader = Loader::spawn(set.clone(), cfg.augment, batch, Part::WHOLE, seed, 0, cfg.run.prefetch)?;
    let first = loader.next_batch()?;
    let first_batch_s = start.elapsed().as_secs_f64();
    let timed = Instant::now();
    for _ in 0..batches {
        loader.next_batch()?;
    }
    let seconds = timed.elapsed().as_secs_f64();
    let again = make_batch(&set, &cfg.augment, batch, seed, 0)?;
    Ok(LoaderBench {
        threads: rayon::current_num_threads(),
        batch,
        batches,
        first_batch_s,
        images_per_s: (batches * batch as u64) as f64 / seconds.max(1e-9),
        size: first.size,
        pixels_match: first.images == again.images && first.tokens == again.tokens,
    })
}
