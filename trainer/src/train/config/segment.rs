//! `trainer segment`'s arguments and the resolved semantic segmentation configuration (the
//! recipe's `[segment]` section: BEiT's ADE20k UperNet fine-tuning).

use pipeline::recipe::SegmentDefaults;
use serde::{Deserialize, Serialize};

use super::*;

use crate::data::augment::AugmentConfig;
use crate::data::seg_augment::{SegAugment, IGNORE};
use crate::error::{ConfigError, Result};
use crate::model::segmenter::{HeadNorm, SegmenterConfig};
use crate::model::vit::VitConfig;
use crate::train::schedule::LrDecay;

use ConfigError as E;

/// `trainer segment` arguments: the recipe's `[segment]` row, every value overridable.
#[derive(Debug, Clone, clap::Args)]
pub struct SegmentArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Where the encoder starts, as `trainer finetune --init` takes it: a pre-training run (or
    /// a checkpoint in one), a fine-tuning run, or a timm folder. Without it, random init.
    #[arg(long)]
    pub init: Option<std::path::PathBuf>,
    /// ViT preset (default: the pre-training run's; `small` for random init).
    #[arg(long)]
    pub model: Option<String>,
    /// Position embeddings of a random-init encoder (a pre-trained one keeps its own).
    #[arg(long, value_enum)]
    pub pos_embed: Option<PosEmbed>,
    /// Side of the square training crop and of the evaluation window (default: the recipe's).
    #[arg(long)]
    pub crop: Option<u32>,
    /// Short side images are brought to for training (before the random rescale) and
    /// evaluation (default: the recipe's).
    #[arg(long)]
    pub short_side: Option<u32>,
    /// Random rescale range, `min,max` (default: the recipe's 0.5,2.0).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    pub rescale: Option<Vec<f64>>,
    /// Sliding-window stride at evaluation (default: the recipe's, 2/3 of the crop).
    #[arg(long)]
    pub stride: Option<u32>,
    /// Layer-wise learning-rate decay; 1 disables it (default: the recipe's).
    #[arg(long, value_parser = finite)]
    pub layer_decay: Option<f64>,
    /// Channels of UperNet's pyramid pooling and FPN (default: the recipe's).
    #[arg(long)]
    pub channels: Option<usize>,
    /// Normalization of the adapter and head: `batch` (mmsegmentation's) or `group` (the same
    /// on any number of devices).
    #[arg(long, value_enum, default_value = "batch")]
    pub head_norm: HeadNorm,
    /// Evaluate every N epochs (and at the end).
    #[arg(long, default_value_t = 1.0, value_parser = finite)]
    pub eval_every_epochs: f64,
    /// Evaluate on at most this many images during training (all at the end).
    #[arg(long)]
    pub eval_images: Option<usize>,
}

/// The resolved configuration of a segmentation run (`config.json`: one flat object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentConfig {
    #[serde(flatten)]
    pub run: RunConfig,
    #[serde(flatten)]
    pub schedule: Schedule,
    /// The label maps' classes, by value.
    pub class_names: Vec<String>,
    /// `None`: random init.
    pub init: Option<InitSource>,
    pub model: String,
    pub segmenter: SegmenterConfig,
    pub layer_decay: f64,
    pub augment: AugmentConfig,
    /// Sliding-window stride at evaluation.
    pub stride: u32,
    pub eval_every: u64,
    pub eval_images: Option<usize>,
}

impl SegmentConfig {
    /// The joint image and label-map view (always set by [`SegmentArgs::resolve`]).
    pub fn seg(&self) -> SegAugment {
        self.augment.segmentation.expect("a segmentation run's views")
    }

    pub fn classes(&self) -> usize {
        self.class_names.len()
    }
}

impl SegmentArgs {
    pub fn resolve(&self) -> Result<SegmentConfig> {
        let run = &self.run;
        let manifest = pipeline::prepare::load_manifest(&run.data)?;
        let recipe = recipe(run, &manifest)?;
        let d = recipe.segment.as_ref().ok_or_else(|| {
            E::invalid(
                "data",
                run.data.display(),
                format!(
                    "the {:?} recipe has no [segment] section: not a segmentation set",
                    recipe.name
                ),
            )
        })?;
        let class_names = class_names(&manifest, d, &run.data)?;
        let pre = self.init.as_deref().map(Init::read).transpose()?;
        let (model, vit) = match (&self.model, &pre) {
            (Some(m), None) => (m.clone(), VitConfig::named(m)?),
            (None, None) => ("small".to_string(), VitConfig::small()),
            (_, Some(p)) => (p.model.clone(), p.vit.clone()),
        };
        let vit = match (self.pos_embed, &pre) {
            (Some(p), None) => vit.with_sinusoidal_pos(p.sinusoidal()),
            (Some(p), Some(init)) if p.sinusoidal() != init.vit.sinusoidal_pos => {
                return Err(E::invalid(
                    "pos-embed",
                    format!("{p:?}").to_lowercase(),
                    "the --init encoder keeps its own position embeddings",
                )
                .into())
            }
            _ => vit,
        };
        let mut run_cfg = run.resolve(&manifest, true)?;
        run_cfg.loader.masks = true;
        let s = self.schedule(d, &run_cfg, &run.data)?;
        let drop_path = self.schedule.drop_path.unwrap_or(d.drop_path);
        let vit = vit.with_drop_path(drop_path);
        let seg = self.views(d, vit.patch_size as u32)?;
        let segmenter = SegmenterConfig::for_vit(vit, class_names.len())
            .with_channels(self.channels.unwrap_or(d.channels))
            .with_norm(self.head_norm);
        segmenter.validate().map_err(|m| E::invalid("model", &model, m))?;
        let layer_decay = self.layer_decay.unwrap_or(d.layer_decay);
        if !(layer_decay > 0.0 && layer_decay <= 1.0) {
            return Err(E::invalid("layer-decay", layer_decay, "must be in (0, 1]").into());
        }
        let stride = self.stride.unwrap_or(d.stride * seg.crop / d.crop.max(1)).max(1);
        let eval_every = ((self.eval_every_epochs * s.steps_per_epoch as f64).round() as u64).max(1);
        Ok(SegmentConfig {
            run: run_cfg,
            schedule: s,
            class_names,
            init: pre.map(|p| p.source),
            model,
            segmenter,
            layer_decay,
            augment: AugmentConfig::segment(seg),
            stride,
            eval_every,
            eval_images: self.eval_images,
        })
    }

    /// The recipe's iterations as a schedule (flags override): a linear warmup, then the
    /// linear decay of mmsegmentation's `poly` with power 1.
    fn schedule(&self, d: &SegmentDefaults, run: &RunConfig, data: &std::path::Path) -> Result<Schedule> {
        let defaults = ScheduleDefaults {
            batch_size: d.batch_size,
            reference_batch: d.batch_size,
            blr: d.lr,
            lr_scaling: LrScaling::Linear,
            min_lr: 0.0,
            warmup: Warmup::Share(d.warmup_iterations as f64 / d.iterations.max(1) as f64),
            weight_decay: d.weight_decay,
            weight_decay_end: None,
            clip_grad: 0.0,
            clip_mode: ClipMode::Global,
        };
        let mut args = self.schedule.clone();
        let batch = args.batch_size.unwrap_or(d.batch_size).max(1) * args.accum.max(1);
        let spe = (run.train_images / batch).max(1) as u64;
        if args.epochs.is_none() {
            // The recipe counts iterations; the schedule counts epochs capped by --max-steps.
            args.epochs = Some(d.iterations.div_ceil(spe));
            args.max_steps = Some(args.max_steps.unwrap_or(d.iterations).min(d.iterations));
        }
        let mut s = args.resolve(&defaults, run.train_images, d.iterations.div_ceil(spe), data)?;
        s.decay = LrDecay::Linear;
        Ok(s)
    }

    /// The training views, from the recipe and the flags.
    fn views(&self, d: &SegmentDefaults, patch: u32) -> Result<SegAugment> {
        let crop = self.crop.unwrap_or(d.crop);
        // The adapter max-pools the patch grid by 2: whole, even grids only.
        if crop == 0 || !crop.is_multiple_of(2 * patch) {
            return Err(E::invalid(
                "crop",
                crop,
                format!("a positive multiple of {} (twice the patch)", 2 * patch),
            )
            .into());
        }
        let short_side = self.short_side.unwrap_or(d.short_side);
        if short_side == 0 {
            return Err(E::invalid("short-side", short_side, "must be positive").into());
        }
        let scale = match self.rescale.as_deref() {
            Some([a, b]) => (*a, *b),
            _ => (d.scale_min, d.scale_max),
        };
        if !(scale.0 > 0.0 && scale.0 <= scale.1 && scale.1.is_finite()) {
            return Err(E::invalid("rescale", format!("{},{}", scale.0, scale.1), "0 < min <= max").into());
        }
        Ok(SegAugment {
            crop,
            short_side,
            scale,
            flip: true,
            ignore: IGNORE,
            reduce_zero_label: d.reduce_zero_label,
        })
    }
}

/// The classes of the label maps: the manifest's `mask_classes`, or the recipe's count.
fn class_names(manifest: &schemas::Manifest, d: &SegmentDefaults, data: &std::path::Path) -> Result<Vec<String>> {
    let names = match (manifest.mask_classes.is_empty(), d.classes) {
        (false, _) => manifest.mask_classes.clone(),
        (true, Some(n)) => (1..=n).map(|c| format!("class {c}")).collect(),
        (true, None) => {
            return Err(E::invalid(
                "data",
                data.display(),
                "the manifest names no mask classes and the recipe gives no count",
            )
            .into())
        }
    };
    if names.is_empty() || names.len() >= usize::from(IGNORE) {
        return Err(E::invalid(
            "data",
            data.display(),
            format!("{} classes: 1 to 254 fit 8-bit label maps", names.len()),
        )
        .into());
    }
    Ok(names)
}
