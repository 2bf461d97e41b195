//! What every training run takes besides its schedule: the data, the run folder, the recipe,
//! the evaluation split, the seed, logging and checkpoints.

use std::path::{Path, PathBuf};

use pipeline::recipe::Recipe;
use serde::{Deserialize, Serialize};

use crate::data::images::{ImageSet, LoadOptions, LoaderArgs};
use crate::error::{ConfigError, Result};
use crate::train::run_folder::{BEST_FILE, CHECKPOINT_FILE, METRICS_FILE};

use ConfigError as E;

use super::finite;

/// What every training run takes besides its schedule: the data, the run folder, the recipe
/// folder, the evaluation split, the seed and how often to log and checkpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Prepared dataset folder (output of `pipeline prepare`).
    #[arg(long)]
    pub data: PathBuf,
    /// Run folder (config, metrics.jsonl, checkpoints).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (starts it if --out holds no run).
    #[arg(long)]
    pub resume: bool,
    /// A folder of recipes (`<name>.toml`), for the dataset's defaults, instead of the ones
    /// built into this binary (also $SPLITMASK_RECIPES).
    #[arg(long)]
    pub recipes: Option<PathBuf>,
    /// Split to evaluate on (default: the dataset's, recorded in its manifest: `test` for
    /// Cars, Food-101 and DomainNet, `val` otherwise).
    #[arg(long)]
    pub eval_split: Option<String>,
    /// When the evaluation split is `test`: the class-stratified share of the train split held
    /// out (and not trained on) for every choice the run makes (the k-NN monitor's
    /// best.safetensors, the periodic evaluations, the best probe layer), so no model is
    /// selected on the test split. The same rows for every run of a dataset.
    #[arg(long, default_value_t = DEFAULT_SELECT_FRACTION, value_parser = finite)]
    pub select_fraction: f64,
    /// Use only the first N training images (quick runs).
    #[arg(long)]
    pub limit_images: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Batches decoded ahead of the device.
    #[arg(long, default_value_t = 4)]
    pub prefetch: usize,
    #[arg(long, default_value_t = 20)]
    pub log_every: u64,
    /// Updates between checkpoints (the last one is always written).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    #[command(flatten)]
    pub loader: LoaderArgs,
}

/// Where a run reads and writes, and how it logs: the resolved [`RunArgs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub data: PathBuf,
    pub dataset: String,
    /// The split evaluations run on.
    pub eval_split: String,
    /// The share of the train split held out for the run's choices: set when `eval_split` is
    /// `test` (absent from older runs, which selected on their evaluation split).
    #[serde(default)]
    pub select_fraction: Option<f64>,
    /// Train images the run draws from (after `--limit-images` and the held-out share).
    pub train_images: usize,
    pub limit_images: Option<usize>,
    pub seed: u64,
    pub prefetch: usize,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub out: PathBuf,
    /// How splits are read: cached in RAM or streamed, and the loader's memory bound (runs
    /// from before the streaming loader read theirs into RAM: the default).
    #[serde(default)]
    pub loader: LoadOptions,
}

impl RunConfig {
    pub fn checkpoint_path(&self) -> PathBuf {
        self.out.join(CHECKPOINT_FILE)
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.out.join(METRICS_FILE)
    }

    /// The encoder at the best k-NN top-1 so far (pre-training with a k-NN monitor).
    pub fn best_path(&self) -> PathBuf {
        self.out.join(BEST_FILE)
    }
}

impl RunArgs {
    /// Resolves against the manifest; `evaluates` says whether the run needs its evaluation
    /// split (a missing one is then an error naming the splits present).
    pub(super) fn resolve(&self, manifest: &schemas::Manifest, evaluates: bool) -> Result<RunConfig, ConfigError> {
        let eval_split = self
            .eval_split
            .clone()
            .unwrap_or_else(|| manifest.eval_split().to_string());
        if evaluates {
            check_split(manifest, &eval_split, &self.data)?;
        }
        let train = manifest.splits.get("train").map(|s| s.images as usize).unwrap_or(0);
        let select_fraction = (eval_split == TEST_SPLIT).then_some(self.select_fraction);
        if !(self.select_fraction > 0.0 && self.select_fraction <= 0.5) {
            return Err(E::invalid(
                "select-fraction",
                self.select_fraction,
                "must be in (0, 0.5]",
            ));
        }
        // Rows are held out of the whole split, before a --limit-images cut: the same rows for
        // every run of the dataset.
        let held = select_fraction.map_or(0, |f| (train as f64 * f).round() as usize);
        let train = train - held.min(train);
        Ok(RunConfig {
            data: self.data.clone(),
            dataset: manifest.dataset.clone(),
            eval_split,
            select_fraction,
            train_images: self.limit_images.map_or(train, |l| l.min(train)),
            limit_images: self.limit_images,
            seed: self.seed,
            prefetch: self.prefetch,
            log_every: self.log_every.max(1),
            checkpoint_every: self.checkpoint_every.max(1),
            out: self.out.clone(),
            loader: self.loader.options()?,
        })
    }
}

/// The split no choice is made on.
pub const TEST_SPLIT: &str = "test";
/// `--select-fraction`'s default: 5% of the train split (about 2 images per class on Stanford
/// Cars, 37 on Food-101).
pub const DEFAULT_SELECT_FRACTION: f64 = 0.05;

impl RunConfig {
    /// Where the run's choices are made: `train-holdout` when the evaluation split is `test`,
    /// the evaluation split otherwise.
    pub fn select_split(&self) -> String {
        match self.select_fraction {
            Some(_) => "train-holdout".into(),
            None => self.eval_split.clone(),
        }
    }

    /// The train split as the run trains on it, and the rows its choices are made on when they
    /// are held out of it ([`RunConfig::select_fraction`]).
    pub fn split_train(&self, mut train: ImageSet) -> (ImageSet, Option<ImageSet>) {
        let held = self.select_fraction.map(|f| train.hold_out(f));
        (train, held)
    }
}

/// Refuses an evaluation split the dataset has no images in, naming the ones it has.
pub fn check_split(manifest: &schemas::Manifest, split: &str, data: &Path) -> Result<(), ConfigError> {
    match manifest.splits.get(split) {
        Some(s) if s.images > 0 => return Ok(()),
        Some(s) => {
            return Err(E::invalid(
                "eval-split",
                split,
                format!(
                    "the {split:?} split of {} is empty: all {} of its images were skipped (manifest.json lists why; splits with images: {:?})",
                    data.display(),
                    s.skipped,
                    manifest.split_names()
                ),
            ))
        }
        None => {}
    }
    Err(E::invalid(
        "eval-split",
        split,
        format!(
            "{} has no {split:?} split to evaluate on (splits: {:?})",
            data.display(),
            manifest.split_names()
        ),
    ))
}

/// The dataset's recipe, which every training command resolves against.
pub(super) fn recipe(run: &RunArgs, manifest: &schemas::Manifest) -> Result<Recipe> {
    Ok(pipeline::recipe::Recipes::choose(run.recipes.as_deref()).load(&manifest.dataset)?)
}
