//! Pre-training configuration: command-line arguments, resolved once (dataset recipe, presets,
//! learning-rate scaling, schedule length) into a `PretrainConfig` that is printed, written to
//! the run folder and never changed afterwards.

use std::path::{Path, PathBuf};

use pipeline::recipe::Recipe;
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::masking::MaskSpec;
use crate::objective::Method;
use crate::optim::AdamWSettings;
use crate::splitmask::SplitMaskConfig;
use crate::vit::VitConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{field} {value:?}: {message}")]
    Invalid {
        field: &'static str,
        value: String,
        message: String,
    },
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    #[error("{path}: {message}")]
    RunFolder { path: PathBuf, message: String },
}

fn invalid(field: &'static str, value: impl ToString, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        message: message.into(),
    }
}

/// `trainer pretrain` arguments; unset ones come from the dataset recipe and the paper.
#[derive(Debug, Clone, clap::Args)]
pub struct PretrainArgs {
    /// Prepared dataset folder (output of `pipeline prepare`).
    #[arg(long)]
    pub data: PathBuf,
    /// Vocabulary file (`pipeline vocab build`).
    #[arg(long)]
    pub vocab: PathBuf,
    #[arg(long, value_enum, default_value = "splitmask")]
    pub method: Method,
    /// ViT preset: tiny, small, base, cpu-tiny, cpu-small.
    #[arg(long, default_value = "small")]
    pub model: String,
    /// Run folder (config, metrics.jsonl, checkpoints).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (starts it if --out holds no run).
    #[arg(long)]
    pub resume: bool,
    /// Recipe folder, for the dataset's default epochs and small-dataset setting.
    #[arg(long, default_value = "datasets")]
    pub recipes: PathBuf,
    /// Micro-batch size per step.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Micro-batches accumulated per update (effective batch = batch_size * accum).
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Epochs (default: the recipe's, i.e. the paper's rule).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Cap on the number of updates (the schedule is fitted to it).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop after this many updates without changing the schedule (resume later).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Learning rate at an effective batch of 2048 (scaled linearly).
    #[arg(long, default_value_t = 1.5e-3)]
    pub blr: f64,
    #[arg(long, default_value_t = 1e-5)]
    pub min_lr: f64,
    /// Warmup epochs (BEiT: 10), converted to updates.
    #[arg(long, default_value_t = 10.0)]
    pub warmup_epochs: f64,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables.
    #[arg(long, default_value_t = 3.0)]
    pub clip_grad: f64,
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
    /// Drop path rate (default: the preset's).
    #[arg(long)]
    pub drop_path: Option<f64>,
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

/// The resolved configuration of a pre-training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub data: PathBuf,
    pub dataset: String,
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
    pub train_images: usize,
    pub batch_size: usize,
    pub accum: usize,
    pub epochs: u64,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    pub stop_after: Option<u64>,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub adamw: AdamWSettings,
    pub clip_grad: Option<f64>,
    pub augment: AugmentConfig,
    pub targets: Targets,
    pub limit_images: Option<usize>,
    pub seed: u64,
    pub prefetch: usize,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub knn_every: u64,
    pub knn_images: usize,
    pub max_bad_steps: u32,
    pub out: PathBuf,
}

pub const CONFIG_FILE: &str = "config.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Targets {
    Device,
    Pretokenized,
}

impl PretrainArgs {
    /// Resolves against the dataset (its manifest and recipe) and the vocabulary.
    pub fn resolve(&self) -> Result<PretrainConfig, ConfigError> {
        let mut vit = VitConfig::preset(&self.model).ok_or_else(|| {
            invalid(
                "model",
                &self.model,
                format!("unknown preset (known: {})", VitConfig::PRESETS.join(", ")),
            )
        })?;
        if let Some(d) = self.drop_path {
            vit = vit.with_drop_path(d);
        }
        vit.validate().map_err(|m| invalid("model", &self.model, m))?;
        let manifest = pipeline::prepare::load_manifest(&self.data)?;
        let (vocab, vocab_sha256) = pipeline::tokenizer::Vocabulary::load(&self.vocab)?;
        let recipe = Recipe::load(&self.recipes, &manifest.dataset).ok();
        let small = recipe.as_ref().is_some_and(|r| r.pretrain.small_dataset);
        let train = manifest.splits.get("train").map(|s| s.images as usize).unwrap_or(0);
        let train_images = self.limit_images.map_or(train, |l| l.min(train));
        if self.batch_size == 0 || self.accum == 0 {
            return Err(invalid(
                "batch-size",
                self.batch_size,
                "batch size and --accum must be positive",
            ));
        }
        if train_images < self.batch_size {
            return Err(invalid(
                "batch-size",
                self.batch_size,
                format!("larger than the {train_images} train images of {}", self.data.display()),
            ));
        }
        let epochs = match (self.epochs, &recipe) {
            (Some(e), _) => e,
            (None, Some(r)) => r.pretrain.epochs as u64,
            (None, None) => pipeline::recipe::paper_epochs(train_images as u64) as u64,
        };
        let steps_per_epoch = (train_images / (self.batch_size * self.accum)).max(1) as u64;
        let mut total_steps = epochs * steps_per_epoch;
        if let Some(m) = self.max_steps {
            total_steps = total_steps.min(m);
        }
        if total_steps == 0 {
            return Err(invalid("epochs", epochs, "the schedule has no updates"));
        }
        let n = vit.num_patches();
        let masking = match self.masking.as_deref() {
            Some("block") => MaskSpec::block_for_grid(n),
            Some("uniform") => MaskSpec::Uniform,
            None if small => MaskSpec::Uniform,
            None => MaskSpec::block_for_grid(n),
            Some(other) => return Err(invalid("masking", other, "expected block or uniform")),
        };
        let ratio = self.mask_ratio.unwrap_or(if small { 0.75 } else { 75.0 / 196.0 });
        if !(0.0..1.0).contains(&ratio) || ratio == 0.0 {
            return Err(invalid("mask-ratio", ratio, "must be in (0, 1)"));
        }
        let mask_count = match self.method {
            Method::Beit => ((n as f64 * ratio).round() as usize).clamp(1, n - 1),
            Method::Splitmask => {
                if self.mask_ratio.is_some_and(|r| r != 0.5) {
                    return Err(invalid("mask-ratio", ratio, "SplitMask always splits 50/50"));
                }
                if n % 2 != 0 {
                    return Err(invalid(
                        "model",
                        &self.model,
                        format!("SplitMask needs an even patch count, got {n}"),
                    ));
                }
                n / 2
            }
        };
        let grid_check = vit.patch_size % vocab.header.preprocessing.patch_size as usize;
        if grid_check != 0 {
            return Err(invalid(
                "vocab",
                self.vocab.display(),
                format!(
                    "{} px token patches do not tile the ViT's {} px patches",
                    vocab.header.preprocessing.patch_size, vit.patch_size
                ),
            ));
        }
        let effective = (self.batch_size * self.accum) as f64;
        let warmup_steps = ((self.warmup_epochs * steps_per_epoch as f64).round() as u64).min(total_steps / 2);
        if !(self.max_crop_scale > 0.08 && self.max_crop_scale <= 1.0) {
            return Err(invalid("max-crop-scale", self.max_crop_scale, "must be in (0.08, 1]"));
        }
        let mut augment = AugmentConfig::pretrain(vit.image_size as u32, self.strong_aug.unwrap_or(small));
        augment.scale.1 = self.max_crop_scale;
        if self.targets == Targets::Pretokenized {
            let p = &vocab.header.preprocessing;
            if vit.image_size != p.source_view_size as usize || vit.grid() != p.grid() {
                return Err(invalid(
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
                ));
            }
            if self.strong_aug == Some(true) {
                return Err(invalid(
                    "targets",
                    "pretokenized",
                    "strong augmentation changes the pixels the grids were computed from",
                ));
            }
            augment.random_crop = false;
            augment.strong = false;
        }
        Ok(PretrainConfig {
            data: self.data.clone(),
            dataset: manifest.dataset.clone(),
            vocab: self.vocab.clone(),
            vocab_sha256,
            vocab_size: vocab.header.size,
            method: self.method,
            model: self.model.clone(),
            vit,
            splitmask: SplitMaskConfig::new(),
            masking,
            mask_count,
            train_images,
            batch_size: self.batch_size,
            accum: self.accum,
            epochs,
            steps_per_epoch,
            total_steps,
            stop_after: self.stop_after,
            lr: self.blr * effective / 2048.0,
            min_lr: self.min_lr,
            warmup_steps,
            adamw: AdamWSettings {
                weight_decay: self.weight_decay,
                ..Default::default()
            },
            clip_grad: (self.clip_grad > 0.0).then_some(self.clip_grad),
            augment,
            targets: self.targets,
            limit_images: self.limit_images,
            seed: self.seed,
            prefetch: self.prefetch,
            log_every: self.log_every.max(1),
            checkpoint_every: self.checkpoint_every.max(1),
            knn_every: self.knn_every,
            knn_images: self.knn_images,
            max_bad_steps: self.max_bad_steps.max(1),
            out: self.out.clone(),
        })
    }
}

impl PretrainConfig {
    pub fn checkpoint_path(&self) -> PathBuf {
        self.out.join(crate::run_folder::CHECKPOINT_FILE)
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.out.join(crate::run_folder::METRICS_FILE)
    }
}

/// The configuration of a pre-training run folder, for commands that read a finished run.
pub fn load_config(run: &Path) -> Result<PretrainConfig, ConfigError> {
    crate::run_folder::read_config(run)
}

/// Reads `<run>/config.json` as `C`.
pub(crate) fn read_json<C: serde::de::DeserializeOwned>(run: &Path) -> Result<C, ConfigError> {
    let path = run.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::RunFolder {
        path: path.clone(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ConfigError::RunFolder {
        path,
        message: e.to_string(),
    })
}

/// `trainer finetune` arguments: BEiT's fine-tuning recipe, per-dataset epochs from the recipe.
#[derive(Debug, Clone, clap::Args)]
pub struct FinetuneArgs {
    /// Prepared dataset folder (its train split trains, its val split evaluates).
    #[arg(long)]
    pub data: PathBuf,
    /// Pre-training run folder whose encoder starts the model; without it, random init (the
    /// from-scratch baseline of the same recipe).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// ViT preset (default: the pre-training run's; `small` for random init).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value = "datasets")]
    pub recipes: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Epochs (default: the recipe's `[finetune]`, else 100).
    #[arg(long)]
    pub epochs: Option<u64>,
    #[arg(long)]
    pub max_steps: Option<u64>,
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Learning rate at batch 256, scaled linearly (BEiT: 4e-3 at 1024).
    #[arg(long, default_value_t = 1e-3)]
    pub blr: f64,
    #[arg(long, default_value_t = 1e-6)]
    pub min_lr: f64,
    /// Warmup epochs (default: the recipe's).
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Layer-wise learning-rate decay; 1 disables it.
    #[arg(long, default_value_t = 0.65)]
    pub layer_decay: f64,
    /// Global gradient-norm clip; 0 (BEiT's fine-tuning default) disables it.
    #[arg(long, default_value_t = 0.0)]
    pub clip_grad: f64,
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
    #[arg(long, default_value_t = 0.1)]
    pub drop_path: f64,
    /// Center-crop ratio of the evaluation view.
    #[arg(long, default_value_t = 0.875)]
    pub crop_ratio: f64,
    /// Evaluate on val every N epochs (and at the end).
    #[arg(long, default_value_t = 1.0)]
    pub eval_every_epochs: f64,
    /// Evaluate on at most this many val images during training (all at the end).
    #[arg(long)]
    pub eval_images: Option<usize>,
    #[arg(long)]
    pub limit_images: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 4)]
    pub prefetch: usize,
    #[arg(long, default_value_t = 20)]
    pub log_every: u64,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
}

/// Where a fine-tuning run's encoder came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitSource {
    pub run: PathBuf,
    pub method: Method,
    pub vocab: PathBuf,
    pub pretrain_steps: u64,
}

/// The resolved configuration of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub data: PathBuf,
    pub dataset: String,
    pub classes: usize,
    /// `None`: random init.
    pub init: Option<InitSource>,
    pub model: String,
    pub vit: VitConfig,
    pub train_images: usize,
    pub batch_size: usize,
    pub epochs: u64,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    pub stop_after: Option<u64>,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub layer_decay: f64,
    pub adamw: AdamWSettings,
    pub clip_grad: Option<f64>,
    pub mixup: crate::mixup::MixupConfig,
    pub augment: AugmentConfig,
    pub crop_ratio: f64,
    pub eval_every: u64,
    pub eval_images: Option<usize>,
    pub limit_images: Option<usize>,
    pub seed: u64,
    pub prefetch: usize,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub out: PathBuf,
}

impl FinetuneArgs {
    pub fn resolve(&self) -> Result<FinetuneConfig, ConfigError> {
        let manifest = pipeline::prepare::load_manifest(&self.data)?;
        let pre = match &self.init {
            Some(run) => Some(load_config(run)?),
            None => None,
        };
        // A pre-trained encoder fixes the architecture; --model may only name the same one.
        let preset = |m: &str| {
            VitConfig::preset(m).ok_or_else(|| {
                invalid(
                    "model",
                    m,
                    format!("unknown preset (known: {})", VitConfig::PRESETS.join(", ")),
                )
            })
        };
        let (model, vit) = match (&self.model, &pre) {
            (Some(m), Some(p)) => {
                let v = preset(m)?;
                if v.with_drop_path(p.vit.drop_path) != p.vit {
                    return Err(invalid(
                        "model",
                        m,
                        format!("the pre-training run {} used --model {}", p.out.display(), p.model),
                    ));
                }
                (m.clone(), p.vit.clone())
            }
            (None, Some(p)) => (p.model.clone(), p.vit.clone()),
            (Some(m), None) => (m.clone(), preset(m)?),
            (None, None) => ("small".to_string(), preset("small")?),
        };
        let vit = vit.with_drop_path(self.drop_path);
        vit.validate().map_err(|m| invalid("drop-path", self.drop_path, m))?;
        let classes = manifest.class_names.len();
        if classes < 2 {
            return Err(invalid(
                "data",
                self.data.display(),
                format!("fine-tuning needs class labels; the manifest lists {classes} classes"),
            ));
        }
        if !manifest.splits.contains_key("val") {
            return Err(invalid(
                "data",
                self.data.display(),
                "no val split to evaluate on".to_string(),
            ));
        }
        let recipe = Recipe::load(&self.recipes, &manifest.dataset).ok();
        let defaults = recipe.and_then(|r| r.finetune);
        let train = manifest.splits.get("train").map(|s| s.images as usize).unwrap_or(0);
        let train_images = self.limit_images.map_or(train, |l| l.min(train));
        if self.batch_size < 2 || !self.batch_size.is_multiple_of(2) {
            return Err(invalid(
                "batch-size",
                self.batch_size,
                "mixup pairs images: use an even batch of at least 2",
            ));
        }
        if train_images < self.batch_size {
            return Err(invalid(
                "batch-size",
                self.batch_size,
                format!("larger than the {train_images} train images of {}", self.data.display()),
            ));
        }
        let epochs = self
            .epochs
            .unwrap_or(defaults.as_ref().map_or(100, |d| d.epochs as u64));
        let warmup_epochs = self
            .warmup_epochs
            .unwrap_or(defaults.as_ref().map_or(5.0, |d| d.warmup_epochs));
        let steps_per_epoch = (train_images / self.batch_size).max(1) as u64;
        let mut total_steps = epochs * steps_per_epoch;
        if let Some(m) = self.max_steps {
            total_steps = total_steps.min(m);
        }
        if total_steps == 0 {
            return Err(invalid("epochs", epochs, "the schedule has no updates"));
        }
        if !(self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            return Err(invalid("layer-decay", self.layer_decay, "must be in (0, 1]"));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(invalid("label-smoothing", self.label_smoothing, "must be in [0, 1)"));
        }
        if !(self.crop_ratio > 0.0 && self.crop_ratio <= 1.0) {
            return Err(invalid("crop-ratio", self.crop_ratio, "must be in (0, 1]"));
        }
        if self.mixup < 0.0 || self.cutmix < 0.0 {
            return Err(invalid(
                "mixup",
                self.mixup.min(self.cutmix),
                "Beta parameters must be >= 0",
            ));
        }
        let init = match (&self.init, pre) {
            (Some(run), Some(p)) => Some(InitSource {
                run: run.clone(),
                method: p.method,
                vocab: p.vocab.clone(),
                pretrain_steps: p.total_steps,
            }),
            _ => None,
        };
        let randaugment = (self.randaug_ops > 0).then_some(crate::randaugment::RandAugmentConfig {
            ops: self.randaug_ops,
            magnitude: self.randaug_magnitude,
            magnitude_std: self.randaug_std,
            prob: 0.5,
        });
        let warmup_steps = ((warmup_epochs * steps_per_epoch as f64).round() as u64).min(total_steps / 2);
        let eval_every = ((self.eval_every_epochs * steps_per_epoch as f64).round() as u64).max(1);
        Ok(FinetuneConfig {
            data: self.data.clone(),
            dataset: manifest.dataset.clone(),
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
            train_images,
            batch_size: self.batch_size,
            epochs,
            steps_per_epoch,
            total_steps,
            stop_after: self.stop_after,
            lr: self.blr * self.batch_size as f64 / 256.0,
            min_lr: self.min_lr,
            warmup_steps,
            layer_decay: self.layer_decay,
            adamw: AdamWSettings {
                weight_decay: self.weight_decay,
                ..Default::default()
            },
            clip_grad: (self.clip_grad > 0.0).then_some(self.clip_grad),
            mixup: crate::mixup::MixupConfig {
                mixup_alpha: self.mixup,
                cutmix_alpha: self.cutmix,
                prob: self.mixup_prob,
                switch_prob: self.mixup_switch_prob,
                label_smoothing: self.label_smoothing,
            },
            crop_ratio: self.crop_ratio,
            eval_every,
            eval_images: self.eval_images,
            limit_images: self.limit_images,
            seed: self.seed,
            prefetch: self.prefetch,
            log_every: self.log_every.max(1),
            checkpoint_every: self.checkpoint_every.max(1),
            out: self.out.clone(),
        })
    }
}
