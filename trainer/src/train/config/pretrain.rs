//! `trainer pretrain`'s arguments and the resolved pre-training configuration.

use std::path::{Path, PathBuf};

use pipeline::recipe::{Masking, PretrainDefaults};
use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::error::{ConfigError, Result};
use crate::model::masking::MaskSpec;
use crate::model::method::{Method, MethodOptions};
use crate::model::splitmask::SplitMaskConfig;
use crate::model::vit::VitConfig;
use crate::train::run_folder::read_config;

use ConfigError as E;

use super::*;

pub(super) fn global_negatives() -> bool {
    true
}

/// SplitMask's terms (the paper's Table 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectiveArg {
    /// Masked-token prediction and InfoNCE (SplitMask).
    Full,
    /// Split + inpaint: masked-token prediction only.
    Inpaint,
    /// Split + match: InfoNCE only.
    Match,
}

/// BEiT's 75 of 196 masked patches, for grids of any size.
pub const BEIT_MASK_RATIO: f64 = 75.0 / 196.0;
/// BEiT's pre-training color jitter (brightness, contrast, saturation); SplitMask's default
/// views are crop + flip only (section 5.5).
pub const BEIT_COLOR_JITTER: f64 = 0.4;

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
    /// BEiT's masked share (default: the recipe's; BEiT's 75 of 196 patches, 75% on the
    /// smallest datasets).
    #[arg(long)]
    pub mask_ratio: Option<f64>,
    /// SplitMask: the share of the patches each branch's encoder sees, 0.5 (a mask and its
    /// complement) or 0.25 (disjoint uniform quarters; default: the recipe's).
    #[arg(long)]
    pub split_visible: Option<f64>,
    /// Default: the recipe's (uniform on the smallest datasets, blocks otherwise).
    #[arg(long, value_enum)]
    pub masking: Option<Masking>,
    /// SplitMask's loss terms: both, or one of the Table 8 ablations.
    #[arg(long, value_enum, default_value = "full")]
    pub objective: ObjectiveArg,
    /// Strong augmentation on/off (default: the recipe's: on for the smallest datasets).
    #[arg(long)]
    pub strong_aug: Option<bool>,
    /// Color-jitter strength on every view (default: 0.4 for BEiT as BEiT, 0 for SplitMask).
    #[arg(long)]
    pub color_jitter: Option<f64>,
    /// Where targets come from: `device` tokenizes each augmented view on the device;
    /// `pretokenized` reads `pipeline tokenize`'s grids (canonical view and flip, so no crops
    /// and no strong augmentation).
    #[arg(long, value_enum, default_value = "device")]
    pub targets: Targets,
    /// Upper bound of the random-resized-crop area (default: the recipe's; ADE20k: 0.25).
    #[arg(long)]
    pub max_crop_scale: Option<f64>,
    /// k-NN accuracy of the frozen encoder every N updates (0: off), with train images as the
    /// bank and the evaluation split as queries; the encoder at the best one is kept as
    /// best.safetensors.
    #[arg(long, default_value_t = 0)]
    pub knn_every: u64,
    /// SplitMask on several devices: InfoNCE's negatives from each rank's own share instead
    /// of the whole global batch.
    #[arg(long)]
    pub local_negatives: bool,
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
    /// Each method's own options (SplitMask's under `splitmask`).
    #[serde(flatten)]
    pub options: MethodOptions,
    pub masking: MaskSpec,
    /// BEiT: masked patches per image. SplitMask: patches each branch sees.
    pub mask_count: usize,
    pub augment: AugmentConfig,
    pub targets: Targets,
    /// SplitMask on several devices: InfoNCE's negatives from the whole global batch (false:
    /// each rank's share).
    #[serde(default = "global_negatives")]
    pub global_negatives: bool,
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
        let recipe = recipe(run, &manifest)?;
        let p = &recipe.pretrain;
        let run_cfg = run.resolve(&manifest, self.knn_every > 0)?;
        // The paper's rule follows the prepared train split, not a --limit-images cut.
        let prepared = manifest.splits.get("train").map_or(0, |s| s.images);
        let s = sched.resolve(&PRETRAIN, run_cfg.train_images, p.epochs_for(prepared), &run.data)?;
        let n = vit.num_patches();
        let masking = match self.masking.unwrap_or(p.masking) {
            Masking::Block => MaskSpec::block_for_grid(n),
            Masking::Uniform => MaskSpec::Uniform,
        };
        let (mask_count, splitmask) = self.method_options(p, n, masking)?;
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
        let augment = self.augment(p, &vit, &vocab.header.preprocessing)?;
        Ok(PretrainConfig {
            run: run_cfg,
            schedule: s,
            vocab: self.vocab.clone(),
            vocab_sha256,
            vocab_size: vocab.header.size,
            method: self.method,
            model: self.model.clone(),
            vit,
            options: MethodOptions { splitmask },
            masking,
            mask_count,
            augment,
            targets: self.targets,
            global_negatives: !self.local_negatives,
            knn_every: self.knn_every,
            knn_images: self.knn_images,
            max_bad_steps: self.max_bad_steps.max(1),
        })
    }
    /// The mask count (BEiT: masked patches; SplitMask: patches each branch sees) and
    /// SplitMask's options, checked against the method: a flag of the other method is an error.
    fn method_options(&self, p: &PretrainDefaults, n: usize, masking: MaskSpec) -> Result<(usize, SplitMaskConfig)> {
        Ok(match self.method {
            Method::Beit => {
                if self.split_visible.is_some() || self.objective != ObjectiveArg::Full {
                    return Err(E::invalid("method", "beit", "--split-visible and --objective are SplitMask's").into());
                }
                let ratio = self.mask_ratio.or(p.beit_mask_ratio).unwrap_or(BEIT_MASK_RATIO);
                if !(ratio > 0.0 && ratio < 1.0) {
                    return Err(E::invalid("mask-ratio", ratio, "must be in (0, 1)").into());
                }
                (
                    ((n as f64 * ratio).round() as usize).clamp(1, n - 1),
                    SplitMaskConfig::new(),
                )
            }
            Method::Splitmask => {
                if let Some(r) = self.mask_ratio {
                    return Err(E::invalid(
                        "mask-ratio",
                        r,
                        "is BEiT's; SplitMask splits 50/50 or into quarters (--split-visible 0.5 or 0.25)",
                    )
                    .into());
                }
                let share = self.split_visible.unwrap_or(p.split_visible);
                let visible = n as f64 * share;
                if !(share == 0.5 || share == 0.25) || visible.fract() != 0.0 {
                    return Err(E::invalid(
                        "split-visible",
                        share,
                        format!("expected 0.5 or 0.25 of the {n} patches of --model {}", self.model),
                    )
                    .into());
                }
                if share < 0.5 && masking != MaskSpec::Uniform {
                    return Err(E::invalid(
                        "split-visible",
                        share,
                        "quarter branches are drawn uniformly (--masking uniform)",
                    )
                    .into());
                }
                let (mim, nce) = match self.objective {
                    ObjectiveArg::Full => (1.0, 1.0),
                    ObjectiveArg::Inpaint => (1.0, 0.0),
                    ObjectiveArg::Match => (0.0, 1.0),
                };
                let cfg = SplitMaskConfig::new().with_mim_weight(mim).with_contrastive_weight(nce);
                (visible as usize, cfg)
            }
        })
    }

    /// The training views: the recipe's crop and strength, the method's colour jitter, and no
    /// pixel change at all where the targets were computed from the stored pixels.
    fn augment(&self, p: &PretrainDefaults, vit: &VitConfig, pp: &schemas::Preprocessing) -> Result<AugmentConfig> {
        let max_crop = self.max_crop_scale.unwrap_or(p.max_crop_scale);
        if !(max_crop > 0.08 && max_crop <= 1.0) {
            return Err(E::invalid("max-crop-scale", max_crop, "must be in (0.08, 1]").into());
        }
        let strong = self.strong_aug.unwrap_or(p.strong_augmentation);
        let mut augment = AugmentConfig::pretrain(vit.image_size as u32, strong);
        augment.scale.1 = max_crop;
        augment.color_jitter = self.color_jitter.unwrap_or(match self.method {
            Method::Beit => BEIT_COLOR_JITTER,
            Method::Splitmask => 0.0,
        });
        if !(0.0..1.0).contains(&augment.color_jitter) {
            return Err(E::invalid("color-jitter", augment.color_jitter, "must be in [0, 1)").into());
        }
        if self.targets == Targets::Pretokenized {
            if vit.image_size != pp.source_view_size as usize || vit.grid() != pp.grid() {
                return Err(E::invalid(
                    "targets",
                    "pretokenized",
                    format!(
                        "the grids were computed for {} px views and a {}x{} grid; --model {} has {} px and {}x{}",
                        pp.source_view_size,
                        pp.grid(),
                        pp.grid(),
                        self.model,
                        vit.image_size,
                        vit.grid(),
                        vit.grid()
                    ),
                )
                .into());
            }
            if self.strong_aug == Some(true) || self.color_jitter.is_some_and(|j| j > 0.0) {
                return Err(E::invalid(
                    "targets",
                    "pretokenized",
                    "strong augmentation and color jitter change the pixels the grids were computed from",
                )
                .into());
            }
            augment.random_crop = false;
            augment.strong = false;
            augment.color_jitter = 0.0;
        }
        Ok(augment)
    }
}

/// The configuration of a pre-training run folder, for commands that read a finished run.
pub fn load_config(run: &Path) -> Result<PretrainConfig> {
    read_config(run)
}
