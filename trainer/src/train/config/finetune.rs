//! `trainer finetune`'s arguments and the resolved fine-tuning configuration (Table 9).

use std::path::{Path, PathBuf};

use pipeline::recipe::FinetuneDefaults;
use serde::{Deserialize, Serialize};

use super::PosEmbed;

use crate::data::augment::AugmentConfig;
use crate::data::mixup::MixupConfig;
use crate::data::randaugment::RandAugmentConfig;
use crate::error::{ConfigError, InitError, Result};
use crate::model::method::Method;
use crate::model::vit::VitConfig;
use crate::train::run_folder::{read_config, CHECKPOINT_FILE, CONFIG_FILE};
use crate::train::timm_import::{is_timm_config, vit_from_timm, WEIGHTS_FILE};

use ConfigError as E;

use super::*;

/// `trainer finetune` arguments: the recipe's Table 9 row, every value overridable.
#[derive(Debug, Clone, clap::Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Where the encoder starts: a pre-training run folder (its last checkpoint) or a
    /// checkpoint file in one (`<run>/best.safetensors`: the encoder at the best k-NN); a
    /// fine-tuning run (supervised transfer: its encoder, the head dropped); or a timm export
    /// folder (`config.json` + `model.safetensors`, as `trainer export` writes and timm
    /// saves). Without it, random init (the from-scratch baseline of the same recipe).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// ViT preset (default: the pre-training run's; `small` for random init).
    #[arg(long)]
    pub model: Option<String>,
    /// Position embeddings of a random-init encoder: learned (default) or fixed 2-D sin-cos; a
    /// pre-trained encoder keeps its own, and naming the other kind is an error.
    #[arg(long, value_enum)]
    pub pos_embed: Option<PosEmbed>,
    /// Layer-wise learning-rate decay; 1 disables it (default: the recipe's).
    #[arg(long, value_parser = finite)]
    pub layer_decay: Option<f64>,
    #[arg(long, value_parser = finite)]
    pub label_smoothing: Option<f64>,
    /// Mixup's Beta alpha (default: the recipe's 0.8).
    #[arg(long, value_parser = finite)]
    pub mixup: Option<f64>,
    /// CutMix's Beta alpha (default: the recipe's 1.0).
    #[arg(long, value_parser = finite)]
    pub cutmix: Option<f64>,
    /// Probability of mixing a batch (timm's 1.0, scaled by `--recipe scaled`).
    #[arg(long, value_parser = finite)]
    pub mixup_prob: Option<f64>,
    /// Probability of CutMix rather than mixup (timm's default).
    #[arg(long, default_value_t = 0.5, value_parser = finite)]
    pub mixup_switch_prob: f64,
    /// RandAugment operations per image (0 disables it; timm's `rand-m*` uses 2).
    #[arg(long, default_value_t = 2)]
    pub randaug_ops: usize,
    #[arg(long, value_parser = finite)]
    pub randaug_magnitude: Option<f64>,
    #[arg(long, value_parser = finite)]
    pub randaug_std: Option<f64>,
    /// Random-erasing probability (BEiT's and DeiT's 0.25, scaled by `--recipe scaled`; Table
    /// 9 has no row for it).
    #[arg(long, value_parser = finite)]
    pub reprob: Option<f64>,
    /// Copies of each drawn image in the same batch (DeiT's repeated augmentation); 1 is off
    /// (default: 3 where the recipe turns it on, else 1).
    #[arg(long)]
    pub repeated_aug: Option<u32>,
    /// Center-crop ratio of the evaluation view (default: the recipe's 0.875).
    #[arg(long, value_parser = finite)]
    pub crop_ratio: Option<f64>,
    /// Color-jitter strength (default: the recipe's 0.4, which timm applies only when
    /// RandAugment is off).
    #[arg(long, value_parser = finite)]
    pub color_jitter: Option<f64>,
    /// Smallest area share of a random-resized crop (default 0.08, Inception's).
    #[arg(long, value_parser = finite)]
    pub crop_scale: Option<f64>,
    /// Where the flags not given come from: `scaled` (Table 9 with its regularization sized to
    /// the run's length, and LP-FT when `--init` names an encoder) or `paper` (Table 9 as the
    /// paper gives it, sized for 300 epochs).
    #[arg(long, value_enum, default_value = "scaled")]
    pub recipe: FinetuneRecipe,
    /// How the classification head starts: `beit` (BEiT's: trunc-normal scaled by 0.001, the
    /// paper's recipe) or `probe` (a linear probe fitted on the frozen encoder's features of
    /// the train images first, then everything fine-tuned: LP-FT). Default: `probe` with
    /// `--init` under `--recipe scaled`, else `beit`.
    #[arg(long, value_enum)]
    pub head_init: Option<HeadInit>,
    /// Evaluate every N epochs (and at the end).
    #[arg(long, default_value_t = 1.0, value_parser = finite)]
    pub eval_every_epochs: f64,
    /// Evaluate on at most this many images during training (all at the end).
    #[arg(long)]
    pub eval_images: Option<usize>,
}

/// How a fine-tuning run's classification head starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HeadInit {
    #[default]
    Beit,
    Probe,
}

/// Where a fine-tuning run's unset flags come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FinetuneRecipe {
    /// Table 9 with mixup, CutMix, RandAugment, random erasing, color jitter and drop path
    /// scaled by the run's share of the recipe's epochs (a few epochs of a 300-epoch stack
    /// leave the model below its own linear probe), the warmup the recipe's share of the run,
    /// the learning rate scaled to the batch by its square root (Adam's rule; linear scaling
    /// leaves a short run at its probe), and LP-FT when a pre-trained encoder starts the run.
    #[default]
    Scaled,
    /// Table 9 as written.
    Paper,
}

/// timm's defaults for the values Table 9 has no row for.
pub(super) const MIXUP_PROB: f64 = 1.0;
pub(super) const REPROB: f64 = 0.25;

/// DeiT's repeated augmentation draws each image three times.
pub(super) const REPEATED_AUG_COPIES: u32 = 3;

/// What trained the encoder a fine-tuning run starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitKind {
    /// A pre-training run of this project.
    #[default]
    Pretrain,
    /// A fine-tuning run of this project (supervised pre-training on its dataset).
    Finetune,
    /// A timm export folder (this project's export, or weights trained elsewhere).
    Timm,
}

/// Where a fine-tuning run's encoder came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitSource {
    pub run: PathBuf,
    /// The checkpoint the encoder was read from (the run's last, its best k-NN one, or a timm
    /// folder's weights).
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    #[serde(default)]
    pub kind: InitKind,
    /// The pre-training method (pre-training runs only).
    pub method: Option<Method>,
    /// The run's vocabulary (token methods only).
    pub vocab: Option<PathBuf>,
    /// Updates that trained the encoder (0 for a timm folder: unknown).
    pub pretrain_steps: u64,
    /// The dataset a supervised encoder was trained on.
    #[serde(default)]
    pub dataset: Option<String>,
    /// What the encoder was trained on, as the report names it (`imagenette 10%`,
    /// `cars (supervised)`, `timm`).
    #[serde(default)]
    pub pretrain_data: Option<String>,
}

impl InitSource {
    /// The name results and reports give this init: the method (`beit`, ...),
    /// `supervised-<dataset>` or `timm`.
    pub fn name(&self) -> String {
        match (self.kind, self.method) {
            (InitKind::Pretrain, Some(m)) => m.name().to_string(),
            (InitKind::Finetune, _) => format!("supervised-{}", self.dataset.as_deref().unwrap_or("?")),
            _ => "timm".to_string(),
        }
    }
}

/// A resolved `--init`: where it came from, the encoder's shape and its preset name.
#[derive(Debug)]
pub struct Init {
    pub source: InitSource,
    pub vit: VitConfig,
    pub model: String,
}

impl Init {
    /// Reads what `init` names: a pre-training or fine-tuning run (folder, or a checkpoint in
    /// one) or a timm export folder, told apart by its `config.json`.
    pub fn read(init: &Path) -> Result<Init> {
        let (run, checkpoint) = init_paths(init);
        let config: serde_json::Value = read_config(&run)?;
        let unknown = |message: String| InitError::UnknownRun {
            path: run.join(CONFIG_FILE),
            message,
        };
        let mut source = InitSource {
            run: run.clone(),
            checkpoint: Some(checkpoint),
            kind: InitKind::Pretrain,
            method: None,
            vocab: None,
            pretrain_steps: 0,
            dataset: None,
            pretrain_data: None,
        };
        let (vit, model) = if is_timm_config(&config) {
            source.kind = InitKind::Timm;
            if !init.is_file() {
                source.checkpoint = Some(run.join(WEIGHTS_FILE));
            }
            source.pretrain_data = Some("timm".into());
            let model = config["architecture"].as_str().unwrap_or("timm").to_string();
            (vit_from_timm(&config, &run.join(CONFIG_FILE))?, model)
        } else if config.get("method").is_some() {
            let p: PretrainConfig = serde_json::from_value(config).map_err(|e| unknown(e.to_string()))?;
            p.validate()?;
            source.method = Some(p.method);
            source.vocab = p.vocab.clone();
            source.pretrain_steps = p.schedule.total_steps;
            source.pretrain_data = Some(p.data_label());
            (p.vit, p.model)
        } else if config.get("classes").is_some() {
            let f: FinetuneConfig = serde_json::from_value(config).map_err(|e| unknown(e.to_string()))?;
            source.kind = InitKind::Finetune;
            source.pretrain_steps = f.schedule.total_steps;
            source.pretrain_data = Some(format!("{} (supervised)", f.run.dataset));
            source.dataset = Some(f.run.dataset);
            (f.vit, f.model)
        } else {
            return Err(unknown("it has no method, classes or timm architecture".into()).into());
        };
        Ok(Init { source, vit, model })
    }
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
    #[serde(default)]
    pub head_init: HeadInit,
    /// The recipe the unset flags came from (runs before it existed: `paper`).
    #[serde(default = "paper_recipe")]
    pub recipe: FinetuneRecipe,
    /// What the recipe's regularizers were multiplied by: the run's share of the recipe's
    /// epochs under `scaled` (at most 1), 1 under `paper`.
    #[serde(default = "pipeline::recipe::one")]
    pub regularization_scale: f64,
    pub eval_every: u64,
    pub eval_images: Option<usize>,
}

pub(super) fn paper_recipe() -> FinetuneRecipe {
    FinetuneRecipe::Paper
}

/// A run folder and the checkpoint file `--init` names in it.
pub fn init_paths(init: &Path) -> (PathBuf, PathBuf) {
    if init.is_file() {
        let run = init.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        (run, init.to_path_buf())
    } else {
        (init.to_path_buf(), init.join(CHECKPOINT_FILE))
    }
}

impl FinetuneArgs {
    pub fn resolve(&self) -> Result<FinetuneConfig> {
        let (run, sched) = (&self.run, &self.schedule);
        let manifest = pipeline::prepare::load_manifest(&run.data)?;
        let pre = match &self.init {
            Some(init) => Some(Init::read(init)?),
            None => None,
        };
        let (model, vit) = self.architecture(pre.as_ref())?;
        let vit = self.positions(vit, pre.as_ref())?;
        let classes = manifest.class_names.len();
        if classes < 2 {
            return Err(E::invalid(
                "data",
                run.data.display(),
                format!("fine-tuning needs class labels; the manifest lists {classes} classes"),
            )
            .into());
        }
        let recipe = recipe(run, &manifest)?;
        let f = recipe.finetune.as_ref().ok_or_else(|| {
            E::invalid(
                "data",
                run.data.display(),
                format!("the {:?} recipe has no [finetune] section", recipe.name),
            )
        })?;
        let run_cfg = run.resolve(&manifest, true)?;
        let batch = sched.batch_size.unwrap_or(f.batch_size);
        if batch < 2 || !batch.is_multiple_of(2) {
            return Err(E::invalid(
                "batch-size",
                batch,
                "mixup pairs images: use an even batch of at least 2",
            )
            .into());
        }
        let s = sched.resolve(
            &self.schedule_defaults(f),
            run_cfg.train_images,
            f.epochs as u64,
            &run.data,
        )?;
        let scale = match self.recipe {
            FinetuneRecipe::Paper => 1.0,
            FinetuneRecipe::Scaled => regularization_scale(&s, f.epochs),
        };
        let drop_path = sched.drop_path.unwrap_or(f.drop_path * scale);
        let vit = vit.with_drop_path(drop_path);
        vit.validate().map_err(|m| E::invalid("drop-path", drop_path, m))?;
        let layer_decay = self.layer_decay.unwrap_or(f.layer_decay);
        if !(layer_decay > 0.0 && layer_decay <= 1.0) {
            return Err(E::invalid("layer-decay", layer_decay, "must be in (0, 1]").into());
        }
        let crop_ratio = self.crop_ratio.unwrap_or(f.crop_ratio);
        if !(crop_ratio > 0.0 && crop_ratio <= 1.0) {
            return Err(E::invalid("crop-ratio", crop_ratio, "must be in (0, 1]").into());
        }
        let init = pre.map(|p| p.source);
        let head_init = self.head_init.unwrap_or(match (self.recipe, &init) {
            (FinetuneRecipe::Scaled, Some(_)) => HeadInit::Probe,
            _ => HeadInit::Beit,
        });
        let eval_every = ((self.eval_every_epochs * s.steps_per_epoch as f64).round() as u64).max(1);
        Ok(FinetuneConfig {
            run: run_cfg,
            schedule: s,
            classes,
            init,
            model,
            augment: self.augment(f, vit.image_size as u32, scale)?,
            vit,
            layer_decay,
            mixup: self.mixup(f, scale)?,
            crop_ratio,
            head_init,
            recipe: self.recipe,
            regularization_scale: scale,
            eval_every,
            eval_images: self.eval_images,
        })
    }

    /// The model preset and its ViT: a pre-trained encoder fixes the architecture, and
    /// `--model` may only name the same one.
    fn architecture(&self, pre: Option<&Init>) -> Result<(String, VitConfig)> {
        Ok(match (&self.model, pre) {
            (Some(m), Some(p)) => {
                let v = VitConfig::named(m)?;
                // MAE's encoders keep their fixed sin-cos positions and DINO's go without layer
                // scale under any preset name.
                if v.with_drop_path(p.vit.drop_path)
                    .with_sinusoidal_pos(p.vit.sinusoidal_pos)
                    .with_layer_scale_init(p.vit.layer_scale_init)
                    != p.vit
                {
                    return Err(E::invalid(
                        "model",
                        m,
                        format!("the --init run {} used --model {}", p.source.run.display(), p.model),
                    )
                    .into());
                }
                (m.clone(), p.vit.clone())
            }
            (None, Some(p)) => (p.model.clone(), p.vit.clone()),
            (Some(m), None) => (m.clone(), VitConfig::named(m)?),
            (None, None) => ("small".to_string(), VitConfig::small()),
        })
    }

    /// `--pos-embed` applied to a random-init encoder, checked against a pre-trained one.
    fn positions(&self, vit: VitConfig, pre: Option<&Init>) -> Result<VitConfig> {
        match (self.pos_embed, pre) {
            (None, _) => Ok(vit),
            (Some(p), None) => Ok(vit.with_sinusoidal_pos(p.sinusoidal())),
            (Some(p), Some(init)) if p.sinusoidal() == init.vit.sinusoidal_pos => Ok(vit),
            (Some(p), Some(init)) => Err(E::invalid(
                "pos-embed",
                format!("{p:?}").to_lowercase(),
                format!(
                    "the --init run {} has {} position embeddings; drop --pos-embed to keep them",
                    init.source.run.display(),
                    if init.vit.sinusoidal_pos { "sincos" } else { "learned" }
                ),
            )
            .into()),
        }
    }

    /// Table 9's schedule; under `--recipe scaled` with sqrt lr scaling and the warmup as a
    /// share of the run.
    fn schedule_defaults(&self, f: &FinetuneDefaults) -> ScheduleDefaults {
        let mut defaults = finetune_defaults(f);
        if self.recipe == FinetuneRecipe::Scaled {
            defaults.lr_scaling = LrScaling::Sqrt;
            if f.epochs > 0 {
                // Table 9's warmup is a share of its run (60 of 300 epochs): keep the share.
                defaults.warmup = Warmup::Share(f.warmup_epochs / f.epochs as f64);
            }
        }
        defaults
    }

    /// The training views: the recipe's augmentations, their strength times `scale`.
    fn augment(&self, f: &FinetuneDefaults, size: u32, scale: f64) -> Result<AugmentConfig> {
        let magnitude_std = self.randaug_std.unwrap_or(f.randaug_std);
        if magnitude_std < 0.0 {
            return Err(E::invalid("randaug-std", magnitude_std, "must be >= 0").into());
        }
        let randaugment = (self.randaug_ops > 0).then_some(RandAugmentConfig {
            ops: self.randaug_ops,
            magnitude: self.randaug_magnitude.unwrap_or(f.randaug_magnitude),
            magnitude_std,
            prob: RandAugmentConfig::paper().prob * scale,
        });
        let repeats = self
            .repeated_aug
            .unwrap_or(if f.repeated_aug { REPEATED_AUG_COPIES } else { 1 })
            .max(1);
        let reprob = self.reprob.unwrap_or(REPROB * scale);
        if !(0.0..=1.0).contains(&reprob) {
            return Err(E::invalid("reprob", reprob, "must be in [0, 1]").into());
        }
        let mut augment = AugmentConfig::finetune(size, randaugment, reprob, repeats);
        // timm's create_transform: color jitter only where no auto-augment policy runs.
        if randaugment.is_none() {
            augment.color_jitter = self.color_jitter.unwrap_or(f.color_jitter * scale);
        }
        let crop_scale = self.crop_scale.unwrap_or(augment.scale.0);
        if !(crop_scale > 0.0 && crop_scale <= 1.0) {
            return Err(E::invalid("crop-scale", crop_scale, "must be in (0, 1]").into());
        }
        augment.scale.0 = crop_scale;
        Ok(augment)
    }

    /// Mixup and CutMix as the recipe gives them, applied to a `scale` share of the batches.
    fn mixup(&self, f: &FinetuneDefaults, scale: f64) -> Result<MixupConfig> {
        let label_smoothing = self.label_smoothing.unwrap_or(f.label_smoothing);
        if !(0.0..1.0).contains(&label_smoothing) {
            return Err(E::invalid("label-smoothing", label_smoothing, "must be in [0, 1)").into());
        }
        let (mixup, cutmix) = (self.mixup.unwrap_or(f.mixup), self.cutmix.unwrap_or(f.cutmix));
        if mixup < 0.0 || cutmix < 0.0 {
            return Err(E::invalid("mixup", mixup.min(cutmix), "Beta parameters must be >= 0").into());
        }
        let prob = self.mixup_prob.unwrap_or(MIXUP_PROB * scale);
        if !(0.0..=1.0).contains(&prob) {
            return Err(E::invalid("mixup-prob", prob, "must be in [0, 1]").into());
        }
        if !(0.0..=1.0).contains(&self.mixup_switch_prob) {
            return Err(E::invalid("mixup-switch-prob", self.mixup_switch_prob, "must be in [0, 1]").into());
        }
        Ok(MixupConfig {
            mixup_alpha: mixup,
            cutmix_alpha: cutmix,
            prob,
            switch_prob: self.mixup_switch_prob,
            label_smoothing,
        })
    }
}

/// The run's share of the recipe's `epochs`, at most 1: how much of Table 9's regularization
/// a run of this length gets (the stack is sized for 300 epochs; at a few epochs it keeps the
/// model from fitting at all).
pub fn regularization_scale(s: &Schedule, epochs: u32) -> f64 {
    let run = s.total_steps as f64 / s.steps_per_epoch.max(1) as f64;
    (run / f64::from(epochs.max(1))).min(1.0)
}
