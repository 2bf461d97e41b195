//! Training configuration: command-line option groups shared by `trainer pretrain` and
//! `trainer finetune`, resolved once (dataset manifest and recipe, presets, learning-rate
//! scaling, schedule length) into a `PretrainConfig` or `FinetuneConfig` that is printed,
//! written to the run folder and never changed afterwards.

use std::path::{Path, PathBuf};

use pipeline::recipe::Recipe;
use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::data::mixup::MixupConfig;
use crate::data::randaugment::RandAugmentConfig;
use crate::error::{ConfigError, Result};
use crate::model::masking::MaskSpec;
use crate::model::objective::Method;
use crate::model::splitmask::SplitMaskConfig;
use crate::model::vit::VitConfig;
use crate::train::optim::AdamWSettings;
use crate::train::run_folder::{read_config, CHECKPOINT_FILE, METRICS_FILE};
use crate::train::schedule::CosineSchedule;

use ConfigError as E;

/// What every training run takes besides its schedule: the data, the run folder, the recipe
/// folder, the seed and how often to log and checkpoint.
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
    /// Recipe folder, for the dataset's defaults (epochs, small-dataset setting).
    #[arg(long, default_value = "datasets")]
    pub recipes: PathBuf,
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
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The optimization schedule. Unset values take the command's defaults ([`PRETRAIN`],
/// [`FINETUNE`]) or the dataset recipe's.
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    /// Micro-batch size per step (default: 256 in pre-training, 128 in fine-tuning).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Epochs (default: the recipe's; pre-training follows the paper's rule).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Cap on the number of updates (the schedule is fitted to it).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop after this many updates without changing the schedule (resume later).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Base learning rate, scaled linearly with the batch (default: 1.5e-3 at batch 2048 in
    /// pre-training, 1e-3 at batch 256 in fine-tuning).
    #[arg(long)]
    pub blr: Option<f64>,
    /// Learning rate at the end of the cosine (default: 1e-5 pre-training, 1e-6 fine-tuning).
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Warmup epochs, converted to updates (default: 10 in pre-training as BEiT; the recipe's
    /// in fine-tuning).
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables it (default: 3 in pre-training, off in fine-tuning).
    #[arg(long)]
    pub clip_grad: Option<f64>,
    /// Drop path rate (default: the preset's in pre-training, 0.1 in fine-tuning).
    #[arg(long)]
    pub drop_path: Option<f64>,
}

/// A command's schedule defaults, where neither the command line nor the recipe sets a value.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleDefaults {
    pub batch_size: usize,
    /// The batch `blr` is quoted at: lr = blr x effective batch / `reference_batch`.
    pub reference_batch: usize,
    pub blr: f64,
    pub min_lr: f64,
    pub warmup_epochs: f64,
    pub clip_grad: f64,
}

/// BEiT's pre-training: lr 1.5e-3 at batch 2048, 10 warmup epochs, clipping at 3.
pub const PRETRAIN: ScheduleDefaults = ScheduleDefaults {
    batch_size: 256,
    reference_batch: 2048,
    blr: 1.5e-3,
    min_lr: 1e-5,
    warmup_epochs: 10.0,
    clip_grad: 3.0,
};

/// BEiT's fine-tuning: lr 1e-3 at batch 256 (4e-3 at 1024), no clipping.
pub const FINETUNE: ScheduleDefaults = ScheduleDefaults {
    batch_size: 128,
    reference_batch: 256,
    blr: 1e-3,
    min_lr: 1e-6,
    warmup_epochs: 5.0,
    clip_grad: 0.0,
};

/// Where a run reads and writes, and how it logs: the resolved [`RunArgs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub data: PathBuf,
    pub dataset: String,
    /// Train images the run draws from (after `--limit-images`).
    pub train_images: usize,
    pub limit_images: Option<usize>,
    pub seed: u64,
    pub prefetch: usize,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub out: PathBuf,
}

impl RunConfig {
    pub fn checkpoint_path(&self) -> PathBuf {
        self.out.join(CHECKPOINT_FILE)
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.out.join(METRICS_FILE)
    }
}

impl RunArgs {
    fn resolve(&self, manifest: &schemas::Manifest) -> RunConfig {
        let train = manifest.splits.get("train").map(|s| s.images as usize).unwrap_or(0);
        RunConfig {
            data: self.data.clone(),
            dataset: manifest.dataset.clone(),
            train_images: self.limit_images.map_or(train, |l| l.min(train)),
            limit_images: self.limit_images,
            seed: self.seed,
            prefetch: self.prefetch,
            log_every: self.log_every.max(1),
            checkpoint_every: self.checkpoint_every.max(1),
            out: self.out.clone(),
        }
    }
}

/// A schedule in updates: the resolved [`ScheduleArgs`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Micro-batch size per step.
    pub batch_size: usize,
    /// Micro-batches accumulated per update.
    pub accum: usize,
    pub epochs: u64,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    /// Updates after which this invocation stops (the schedule is unchanged; resume later).
    pub stop_after: Option<u64>,
    /// Peak learning rate, already scaled to the effective batch.
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub adamw: AdamWSettings,
    pub clip_grad: Option<f64>,
}

impl Schedule {
    /// The update this invocation stops at.
    pub fn end(&self) -> u64 {
        self.stop_after.map_or(self.total_steps, |s| s.min(self.total_steps))
    }

    /// The learning-rate schedule.
    pub fn cosine(&self) -> CosineSchedule {
        CosineSchedule {
            base: self.lr,
            min: self.min_lr,
            warmup: self.warmup_steps,
            total: self.total_steps,
        }
    }
}

impl ScheduleArgs {
    /// The schedule of `train_images` at `accum` micro-batches per update; `epochs` and
    /// `warmup_epochs` are the recipe's where the command line gives none.
    pub fn resolve(
        &self,
        defaults: &ScheduleDefaults,
        train_images: usize,
        accum: usize,
        epochs: u64,
        warmup_epochs: f64,
    ) -> Result<Schedule, ConfigError> {
        let batch_size = self.batch_size.unwrap_or(defaults.batch_size);
        let epochs = self.epochs.unwrap_or(epochs);
        let effective = batch_size * accum;
        let steps_per_epoch = (train_images / effective).max(1) as u64;
        let mut total_steps = epochs * steps_per_epoch;
        if let Some(m) = self.max_steps {
            total_steps = total_steps.min(m);
        }
        if total_steps == 0 {
            return Err(E::invalid("epochs", epochs, "the schedule has no updates"));
        }
        let warmup_epochs = self.warmup_epochs.unwrap_or(warmup_epochs);
        let warmup_steps = ((warmup_epochs * steps_per_epoch as f64).round() as u64).min(total_steps / 2);
        let clip = self.clip_grad.unwrap_or(defaults.clip_grad);
        Ok(Schedule {
            batch_size,
            accum,
            epochs,
            steps_per_epoch,
            total_steps,
            stop_after: self.stop_after,
            lr: self.blr.unwrap_or(defaults.blr) * effective as f64 / defaults.reference_batch as f64,
            min_lr: self.min_lr.unwrap_or(defaults.min_lr),
            warmup_steps,
            adamw: AdamWSettings {
                weight_decay: self.weight_decay,
                ..Default::default()
            },
            clip_grad: (clip > 0.0).then_some(clip),
        })
    }
}

/// Refuses a batch larger than the training set.
fn check_batch(batch: usize, train_images: usize, data: &Path) -> Result<(), ConfigError> {
    if train_images < batch {
        return Err(E::invalid(
            "batch-size",
            batch,
            format!("larger than the {train_images} train images of {}", data.display()),
        ));
    }
    Ok(())
}

/// `trainer pretrain` arguments; unset ones come from the dataset recipe and the paper.
#[derive(Debug, Clone, clap::Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Vocabulary file (`pipeline vocab build`).
    #[arg(long)]
    pub vocab: PathBuf,
    #[arg(long, value_enum, default_value = "splitmask")]
    pub method: Method,
    /// ViT preset: tiny, small, base, cpu-tiny, cpu-small.
    #[arg(long, default_value = "small")]
    pub model: String,
    /// Micro-batches accumulated per update (effective batch = batch_size * accum).
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Share of patches masked for BEiT (default 75 of 196 as BEiT; 0.75 on small datasets).
    /// SplitMask always splits 50/50 (uniformly on small datasets, in blocks otherwise).
    #[arg(long)]
    pub mask_ratio: Option<f64>,
    /// block | uniform (default: uniform for small datasets, block otherwise).
    #[arg(long)]
    pub masking: Option<String>,
    /// Strong augmentation on/off (default: on for small datasets).
    #[arg(long)]
    pub strong_aug: Option<bool>,
    /// Where targets come from: `device` tokenizes each augmented view on the device;
    /// `pretokenized` reads `pipeline tokenize`'s grids (canonical view and flip, so no crops
    /// and no strong augmentation).
    #[arg(long, value_enum, default_value = "device")]
    pub targets: Targets,
    /// Upper bound of the random-resized-crop area (the paper uses 0.25 for ADE20k).
    #[arg(long, default_value_t = 1.0)]
    pub max_crop_scale: f64,
    /// k-NN accuracy of the frozen encoder every N updates (0: off), with train images as the
    /// bank and val images as queries.
    #[arg(long, default_value_t = 0)]
    pub knn_every: u64,
    /// Images of each split used by the k-NN monitor.
    #[arg(long, default_value_t = 2000)]
    pub knn_images: usize,
    /// Non-finite updates in a row before rolling back to the last checkpoint.
    #[arg(long, default_value_t = 3)]
    pub max_bad_steps: u32,
}

/// The resolved configuration of a pre-training run (`config.json`: one flat object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    #[serde(flatten)]
    pub run: RunConfig,
    #[serde(flatten)]
    pub schedule: Schedule,
    pub vocab: PathBuf,
    pub vocab_sha256: String,
    pub vocab_size: usize,
    pub method: Method,
    pub model: String,
    pub vit: VitConfig,
    pub splitmask: SplitMaskConfig,
    pub masking: MaskSpec,
    /// Masked patches per image (BEiT) or half the grid (SplitMask).
    pub mask_count: usize,
    pub augment: AugmentConfig,
    pub targets: Targets,
    pub knn_every: u64,
    pub knn_images: usize,
    pub max_bad_steps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Targets {
    Device,
    Pretokenized,
}

impl PretrainArgs {
    /// Resolves against the dataset (its manifest and recipe) and the vocabulary.
    pub fn resolve(&self) -> Result<PretrainConfig> {
        let (run, sched) = (&self.run, &self.schedule);
        let mut vit = VitConfig::named(&self.model)?;
        if let Some(d) = sched.drop_path {
            vit = vit.with_drop_path(d);
        }
        vit.validate().map_err(|m| E::invalid("model", &self.model, m))?;
        let manifest = pipeline::prepare::load_manifest(&run.data)?;
        let (vocab, vocab_sha256) = pipeline::vocab::tokenizer::Vocabulary::load(&self.vocab)?;
        let recipe = Recipe::load(&run.recipes, &manifest.dataset).ok();
        let small = recipe.as_ref().is_some_and(|r| r.pretrain.small_dataset);
        let run_cfg = run.resolve(&manifest);
        let train_images = run_cfg.train_images;
        let batch = sched.batch_size.unwrap_or(PRETRAIN.batch_size);
        if batch == 0 || self.accum == 0 {
            return Err(E::invalid("batch-size", batch, "batch size and --accum must be positive").into());
        }
        check_batch(batch, train_images, &run.data)?;
        let epochs = match &recipe {
            Some(r) => r.pretrain.epochs as u64,
            None => pipeline::recipe::paper_epochs(train_images as u64) as u64,
        };
        let s = sched.resolve(&PRETRAIN, train_images, self.accum, epochs, PRETRAIN.warmup_epochs)?;
        let n = vit.num_patches();
        let masking = match self.masking.as_deref() {
            Some("block") => MaskSpec::block_for_grid(n),
            Some("uniform") => MaskSpec::Uniform,
            None if small => MaskSpec::Uniform,
            None => MaskSpec::block_for_grid(n),
            Some(other) => return Err(E::invalid("masking", other, "expected block or uniform").into()),
        };
        let ratio = self.mask_ratio.unwrap_or(if small { 0.75 } else { 75.0 / 196.0 });
        if !(0.0..1.0).contains(&ratio) || ratio == 0.0 {
            return Err(E::invalid("mask-ratio", ratio, "must be in (0, 1)").into());
        }
        let mask_count = match self.method {
            Method::Beit => ((n as f64 * ratio).round() as usize).clamp(1, n - 1),
            Method::Splitmask => {
                if self.mask_ratio.is_some_and(|r| r != 0.5) {
                    return Err(E::invalid("mask-ratio", ratio, "SplitMask always splits 50/50").into());
                }
                if n % 2 != 0 {
                    return Err(E::invalid(
                        "model",
                        &self.model,
                        format!("SplitMask needs an even patch count, got {n}"),
                    )
                    .into());
                }
                n / 2
            }
        };
        let grid_check = vit.patch_size % vocab.header.preprocessing.patch_size as usize;
        if grid_check != 0 {
            return Err(E::invalid(
                "vocab",
                self.vocab.display(),
                format!(
                    "{} px token patches do not tile the ViT's {} px patches",
                    vocab.header.preprocessing.patch_size, vit.patch_size
                ),
            )
            .into());
        }
        if !(self.max_crop_scale > 0.08 && self.max_crop_scale <= 1.0) {
            return Err(E::invalid("max-crop-scale", self.max_crop_scale, "must be in (0.08, 1]").into());
        }
        let mut augment = AugmentConfig::pretrain(vit.image_size as u32, self.strong_aug.unwrap_or(small));
        augment.scale.1 = self.max_crop_scale;
        if self.targets == Targets::Pretokenized {
            let p = &vocab.header.preprocessing;
            if vit.image_size != p.source_view_size as usize || vit.grid() != p.grid() {
                return Err(E::invalid(
                    "targets",
                    "pretokenized",
                    format!(
                        "the grids were computed for {} px views and a {}x{} grid; --model {} has {} px and {}x{}",
                        p.source_view_size,
                        p.grid(),
                        p.grid(),
                        self.model,
                        vit.image_size,
                        vit.grid(),
                        vit.grid()
                    ),
                )
                .into());
            }
            if self.strong_aug == Some(true) {
                return Err(E::invalid(
                    "targets",
                    "pretokenized",
                    "strong augmentation changes the pixels the grids were computed from",
                )
                .into());
            }
            augment.random_crop = false;
            augment.strong = false;
        }
        Ok(PretrainConfig {
            run: run_cfg,
            schedule: s,
            vocab: self.vocab.clone(),
            vocab_sha256,
            vocab_size: vocab.header.size,
            method: self.method,
            model: self.model.clone(),
            vit,
            splitmask: SplitMaskConfig::new(),
            masking,
            mask_count,
            augment,
            targets: self.targets,
            knn_every: self.knn_every,
            knn_images: self.knn_images,
            max_bad_steps: self.max_bad_steps.max(1),
        })
    }
}

/// The configuration of a pre-training run folder, for commands that read a finished run.
pub fn load_config(run: &Path) -> Result<PretrainConfig> {
    read_config(run)
}

/// `trainer finetune` arguments: BEiT's fine-tuning recipe, per-dataset epochs from the recipe.
#[derive(Debug, Clone, clap::Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Pre-training run folder whose encoder starts the model; without it, random init (the
    /// from-scratch baseline of the same recipe).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// ViT preset (default: the pre-training run's; `small` for random init).
    #[arg(long)]
    pub model: Option<String>,
    /// Layer-wise learning-rate decay; 1 disables it.
    #[arg(long, default_value_t = 0.65)]
    pub layer_decay: f64,
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    #[arg(long, default_value_t = 0.8)]
    pub mixup: f64,
    #[arg(long, default_value_t = 1.0)]
    pub cutmix: f64,
    /// Probability of mixing a batch.
    #[arg(long, default_value_t = 1.0)]
    pub mixup_prob: f64,
    #[arg(long, default_value_t = 0.5)]
    pub mixup_switch_prob: f64,
    /// RandAugment operations per image (0 disables it).
    #[arg(long, default_value_t = 2)]
    pub randaug_ops: usize,
    #[arg(long, default_value_t = 9.0)]
    pub randaug_magnitude: f64,
    #[arg(long, default_value_t = 0.5)]
    pub randaug_std: f64,
    /// Random-erasing probability.
    #[arg(long, default_value_t = 0.25)]
    pub reprob: f64,
    /// Repeated augmentation (copies of each drawn image per epoch); 1 is off.
    #[arg(long, default_value_t = 1)]
    pub repeated_aug: u32,
    /// Center-crop ratio of the evaluation view.
    #[arg(long, default_value_t = 0.875)]
    pub crop_ratio: f64,
    /// Evaluate on val every N epochs (and at the end).
    #[arg(long, default_value_t = 1.0)]
    pub eval_every_epochs: f64,
    /// Evaluate on at most this many val images during training (all at the end).
    #[arg(long)]
    pub eval_images: Option<usize>,
}

/// Fine-tuning's drop path when --drop-path is not given (BEiT's ViT-S/B recipe).
const FINETUNE_DROP_PATH: f64 = 0.1;
/// Fine-tuning epochs of a dataset whose recipe has no `[finetune]` section.
const FINETUNE_EPOCHS: u64 = 100;

/// Where a fine-tuning run's encoder came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitSource {
    pub run: PathBuf,
    pub method: Method,
    pub vocab: PathBuf,
    pub pretrain_steps: u64,
}

/// The resolved configuration of a fine-tuning run (`config.json`: one flat object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    #[serde(flatten)]
    pub run: RunConfig,
    #[serde(flatten)]
    pub schedule: Schedule,
    pub classes: usize,
    /// `None`: random init.
    pub init: Option<InitSource>,
    pub model: String,
    pub vit: VitConfig,
    pub layer_decay: f64,
    pub mixup: MixupConfig,
    pub augment: AugmentConfig,
    pub crop_ratio: f64,
    pub eval_every: u64,
    pub eval_images: Option<usize>,
}

impl FinetuneArgs {
    pub fn resolve(&self) -> Result<FinetuneConfig> {
        let (run, sched) = (&self.run, &self.schedule);
        let manifest = pipeline::prepare::load_manifest(&run.data)?;
        let pre = match &self.init {
            Some(run) => Some(load_config(run)?),
            None => None,
        };
        // A pre-trained encoder fixes the architecture; --model may only name the same one.
        let (model, vit) = match (&self.model, &pre) {
            (Some(m), Some(p)) => {
                let v = VitConfig::named(m)?;
                if v.with_drop_path(p.vit.drop_path) != p.vit {
                    return Err(E::invalid(
                        "model",
                        m,
                        format!("the pre-training run {} used --model {}", p.run.out.display(), p.model),
                    )
                    .into());
                }
                (m.clone(), p.vit.clone())
            }
            (None, Some(p)) => (p.model.clone(), p.vit.clone()),
            (Some(m), None) => (m.clone(), VitConfig::named(m)?),
            (None, None) => ("small".to_string(), VitConfig::small()),
        };
        let drop_path = sched.drop_path.unwrap_or(FINETUNE_DROP_PATH);
        let vit = vit.with_drop_path(drop_path);
        vit.validate().map_err(|m| E::invalid("drop-path", drop_path, m))?;
        let classes = manifest.class_names.len();
        if classes < 2 {
            return Err(E::invalid(
                "data",
                run.data.display(),
                format!("fine-tuning needs class labels; the manifest lists {classes} classes"),
            )
            .into());
        }
        if !manifest.splits.contains_key("val") {
            return Err(E::invalid("data", run.data.display(), "no val split to evaluate on".to_string()).into());
        }
        let recipe = Recipe::load(&run.recipes, &manifest.dataset).ok();
        let defaults = recipe.and_then(|r| r.finetune);
        let run_cfg = run.resolve(&manifest);
        let train_images = run_cfg.train_images;
        let batch = sched.batch_size.unwrap_or(FINETUNE.batch_size);
        if batch < 2 || !batch.is_multiple_of(2) {
            return Err(E::invalid(
                "batch-size",
                batch,
                "mixup pairs images: use an even batch of at least 2",
            )
            .into());
        }
        check_batch(batch, train_images, &run.data)?;
        let s = sched.resolve(
            &FINETUNE,
            train_images,
            1,
            defaults.as_ref().map_or(FINETUNE_EPOCHS, |d| d.epochs as u64),
            defaults.as_ref().map_or(FINETUNE.warmup_epochs, |d| d.warmup_epochs),
        )?;
        if !(self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            return Err(E::invalid("layer-decay", self.layer_decay, "must be in (0, 1]").into());
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(E::invalid("label-smoothing", self.label_smoothing, "must be in [0, 1)").into());
        }
        if !(self.crop_ratio > 0.0 && self.crop_ratio <= 1.0) {
            return Err(E::invalid("crop-ratio", self.crop_ratio, "must be in (0, 1]").into());
        }
        if self.mixup < 0.0 || self.cutmix < 0.0 {
            return Err(E::invalid("mixup", self.mixup.min(self.cutmix), "Beta parameters must be >= 0").into());
        }
        let init = match (&self.init, pre) {
            (Some(run), Some(p)) => Some(InitSource {
                run: run.clone(),
                method: p.method,
                vocab: p.vocab.clone(),
                pretrain_steps: p.schedule.total_steps,
            }),
            _ => None,
        };
        let randaugment = (self.randaug_ops > 0).then_some(RandAugmentConfig {
            ops: self.randaug_ops,
            magnitude: self.randaug_magnitude,
            magnitude_std: self.randaug_std,
            prob: 0.5,
        });
        let eval_every = ((self.eval_every_epochs * s.steps_per_epoch as f64).round() as u64).max(1);
        Ok(FinetuneConfig {
            run: run_cfg,
            schedule: s,
            classes,
            init,
            model,
            augment: AugmentConfig::finetune(
                vit.image_size as u32,
                randaugment,
                self.reprob,
                self.repeated_aug.max(1),
            ),
            vit,
            layer_decay: self.layer_decay,
            mixup: MixupConfig {
                mixup_alpha: self.mixup,
                cutmix_alpha: self.cutmix,
                prob: self.mixup_prob,
                switch_prob: self.mixup_switch_prob,
                label_smoothing: self.label_smoothing,
            },
            crop_ratio: self.crop_ratio,
            eval_every,
            eval_images: self.eval_images,
        })
    }
}
