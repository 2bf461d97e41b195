//! `trainer pretrain`'s arguments and the resolved pre-training configuration.

use std::path::{Path, PathBuf};

use pipeline::recipe::{Masking, PretrainDefaults};
use serde::{Deserialize, Serialize};

use super::PosEmbed;

use crate::data::augment::{AugmentConfig, MultiCrop};
use crate::error::{ConfigError, Result};
use crate::model::dino::DinoConfig;
use crate::model::mae::MaeConfig;
use crate::model::masking::MaskSpec;
use crate::model::method::{self, Method, MethodOptions};
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
/// MAE's dropped share.
pub const MAE_MASK_RATIO: f64 = 0.75;
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
    /// Vocabulary file (`pipeline vocab build`): the targets of the token methods (BEiT,
    /// SplitMask); MAE predicts pixels and takes none.
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "splitmask")]
    pub method: Method,
    /// ViT preset: tiny, small, base, cpu-tiny, cpu-small.
    #[arg(long, default_value = "small")]
    pub model: String,
    /// Position embeddings: learned, or fixed 2-D sin-cos (default: sincos for MAE, learned
    /// otherwise).
    #[arg(long, value_enum)]
    pub pos_embed: Option<PosEmbed>,
    /// BEiT's masked share (default: the recipe's; BEiT's 75 of 196 patches, 75% on the
    /// smallest datasets) or MAE's dropped share (default 0.75).
    #[arg(long, value_parser = finite)]
    pub mask_ratio: Option<f64>,
    /// MAE: regress per-patch normalized pixels (MAE's `norm_pix_loss`; default true).
    #[arg(long)]
    pub norm_pix_loss: Option<bool>,
    /// DINO: local crops per image (default 8; DINO's multi-crop).
    #[arg(long)]
    pub local_crops: Option<usize>,
    /// DINO: prototypes of the head's last layer (default: 65,536, DINO's; 4,096 on the CPU
    /// presets).
    #[arg(long)]
    pub prototypes: Option<usize>,
    /// DINO: the teacher's momentum at the start, rising to 1 on a cosine (default 0.996,
    /// DINO's at batch 1024 over 300 epochs; a run of a few hundred updates needs a lower one
    /// for its teacher to move).
    #[arg(long, value_parser = finite)]
    pub teacher_momentum: Option<f64>,
    /// DINO: the teacher's temperature after its warm-up from 0.04 over the first 10% of the
    /// updates (default 0.04, DINO's, no warm-up; its 300-epoch ViT-S recipe warms up to 0.07).
    /// Lower sharpens more, DINO's advice against a collapse to the uniform distribution.
    #[arg(long, value_parser = finite)]
    pub teacher_temp: Option<f64>,
    /// SplitMask: the share of the patches each branch's encoder sees, 0.5 (a mask and its
    /// complement) or 0.25 (disjoint uniform quarters; default: the recipe's).
    #[arg(long, value_parser = finite)]
    pub split_visible: Option<f64>,
    /// Default: the recipe's (uniform on the smallest datasets, blocks otherwise); MAE's
    /// random masking for MAE.
    #[arg(long, value_enum)]
    pub masking: Option<Masking>,
    /// SplitMask's loss terms: both, or one of the Table 8 ablations.
    #[arg(long, value_enum, default_value = "full")]
    pub objective: ObjectiveArg,
    /// Strong augmentation on/off (default: the recipe's: on for the smallest datasets).
    #[arg(long)]
    pub strong_aug: Option<bool>,
    /// Color-jitter strength on every view (default: 0.4 for BEiT as BEiT, 0 for SplitMask
    /// and MAE).
    #[arg(long, value_parser = finite)]
    pub color_jitter: Option<f64>,
    /// Where targets come from: `device` tokenizes each augmented view on the device;
    /// `pretokenized` reads `pipeline tokenize`'s grids (canonical view and flip, so no crops
    /// and no strong augmentation).
    #[arg(long, value_enum, default_value = "device")]
    pub targets: Targets,
    /// Upper bound of the random-resized-crop area (default: the recipe's; ADE20k: 0.25).
    #[arg(long, value_parser = finite)]
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
    /// The token methods' vocabulary (none for MAE and DINO).
    pub vocab: Option<PathBuf>,
    pub vocab_sha256: Option<String>,
    /// Entries of the vocabulary (0: none).
    pub vocab_size: usize,
    pub method: Method,
    pub model: String,
    pub vit: VitConfig,
    /// Each method's own options (SplitMask's under `splitmask`, MAE's under `mae`, DINO's
    /// under `dino`).
    #[serde(flatten)]
    pub options: MethodOptions,
    pub masking: MaskSpec,
    /// BEiT and MAE: masked patches per image. SplitMask: patches each branch sees.
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
        match self.method {
            // MAE's fixed 2-D sin-cos positions.
            Method::Mae => vit = vit.with_sinusoidal_pos(true),
            // DINO's ViT has no layer scale; BEiT's 0.1 leaves the class token of a new model
            // nearly the same for every image, and centring then flattens the teacher's
            // distribution to uniform, which the student learns (a collapse).
            Method::Dino => vit = vit.with_layer_scale_init(None),
            _ => {}
        }
        if let Some(p) = self.pos_embed {
            vit = vit.with_sinusoidal_pos(p.sinusoidal());
        }
        vit.validate().map_err(|m| E::invalid("model", &self.model, m))?;
        let manifest = pipeline::prepare::load_manifest(&run.data)?;
        let vocab = self.vocabulary(&vit)?;
        let recipe = recipe(run, &manifest)?;
        let p = &recipe.pretrain;
        if self.knn_every > 0 && manifest.class_names.len() < 2 {
            // k-NN votes for class labels: a segmentation or unlabeled set has none.
            return Err(E::invalid(
                "knn-every",
                self.knn_every,
                format!(
                    "the k-NN monitor needs class labels and {} lists {} classes: drop --knn-every",
                    run.data.display(),
                    manifest.class_names.len()
                ),
            )
            .into());
        }
        let run_cfg = run.resolve(&manifest, self.knn_every > 0)?;
        // The paper's rule follows the prepared train split, not a --limit-images cut.
        let prepared = manifest.splits.get("train").map_or(0, |s| s.images);
        let defaults = match self.method {
            Method::Dino => &DINO_PRETRAIN,
            _ => &PRETRAIN,
        };
        let s = sched.resolve(defaults, run_cfg.train_images, p.epochs_for(prepared), &run.data)?;
        let n = vit.num_patches();
        let default_masking = match self.method {
            Method::Mae => Masking::Uniform,
            _ => p.masking,
        };
        let masking = match self.masking.unwrap_or(default_masking) {
            Masking::Block => MaskSpec::block_for_grid(n),
            Masking::Uniform => MaskSpec::Uniform,
        };
        let (mask_count, options) = self.method_options(p, &vit, masking)?;
        let pp = vocab.as_ref().map(|v| &v.0.header.preprocessing);
        let augment = self.augment(p, &vit, pp)?;
        let cfg = PretrainConfig {
            run: run_cfg,
            schedule: s,
            vocab: self.vocab.clone(),
            vocab_size: vocab.as_ref().map_or(0, |v| v.0.header.size),
            vocab_sha256: vocab.map(|v| v.1),
            method: self.method,
            model: self.model.clone(),
            vit,
            options,
            masking,
            mask_count,
            augment,
            targets: self.targets,
            global_negatives: !self.local_negatives,
            knn_every: self.knn_every,
            knn_images: self.knn_images,
            max_bad_steps: self.max_bad_steps.max(1),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The vocabulary and its hash, for the token methods: required by them, refused by the
    /// others (MAE, DINO), its token patches tiling the ViT's.
    fn vocabulary(&self, vit: &VitConfig) -> Result<Option<(pipeline::vocab::tokenizer::Vocabulary, String)>> {
        let m = self.method;
        let path = match (&self.vocab, m.traits().token_targets) {
            (Some(path), false) => {
                return Err(E::invalid(
                    "vocab",
                    path.display(),
                    format!("{} predicts no visual tokens and takes no vocabulary", m.name()),
                )
                .into())
            }
            (None, false) => return Ok(None),
            (None, true) => {
                return Err(E::invalid(
                    "vocab",
                    "(none)",
                    format!("{} predicts visual tokens: --vocab is required", m.name()),
                )
                .into())
            }
            (Some(path), _) => path,
        };
        let (vocab, sha) = pipeline::vocab::tokenizer::Vocabulary::load(path)?;
        let token_patch = vocab.header.preprocessing.patch_size as usize;
        if !vit.patch_size.is_multiple_of(token_patch) {
            return Err(E::invalid(
                "vocab",
                path.display(),
                format!(
                    "{token_patch} px token patches do not tile the ViT's {} px patches",
                    vit.patch_size
                ),
            )
            .into());
        }
        Ok(Some((vocab, sha)))
    }

    /// The mask count (BEiT and MAE: masked patches; SplitMask: patches each branch sees) and
    /// the method's options from its flags: a flag of another method is an error. The method
    /// validates the result ([`PretrainConfig::validate`]).
    fn method_options(
        &self,
        p: &PretrainDefaults,
        vit: &VitConfig,
        masking: MaskSpec,
    ) -> Result<(usize, MethodOptions)> {
        let n = vit.num_patches();
        let mut options = MethodOptions::default();
        let foreign = |flags: &str, owner: &str| -> Result<(usize, MethodOptions)> {
            Err(E::invalid("method", self.method.name(), format!("{flags} are {owner}'s")).into())
        };
        let split_flags = self.split_visible.is_some() || self.objective != ObjectiveArg::Full;
        let ratio_count = |ratio: f64| -> Result<usize> {
            if !(ratio > 0.0 && ratio < 1.0) {
                return Err(E::invalid("mask-ratio", ratio, "must be in (0, 1)").into());
            }
            Ok(((n as f64 * ratio).round() as usize).clamp(1, n - 1))
        };
        let count = match self.method {
            Method::Beit | Method::Mae if split_flags => {
                return foreign("--split-visible and --objective", "SplitMask")
            }
            Method::Beit | Method::Splitmask | Method::Dino if self.norm_pix_loss.is_some() => {
                return foreign("--norm-pix-loss", "MAE")
            }
            Method::Beit | Method::Splitmask | Method::Mae
                if self.local_crops.is_some()
                    || self.prototypes.is_some()
                    || self.teacher_momentum.is_some()
                    || self.teacher_temp.is_some() =>
            {
                return foreign("--local-crops, --prototypes and --teacher-*", "DINO")
            }
            Method::Dino if split_flags => return foreign("--split-visible and --objective", "SplitMask"),
            Method::Dino if self.mask_ratio.is_some() || self.masking.is_some() => {
                return foreign("--mask-ratio and --masking", "the masked-image methods")
            }
            Method::Dino => {
                let base = DinoConfig::for_vit(vit);
                options.dino = base
                    .clone()
                    .with_prototypes(self.prototypes.unwrap_or(base.prototypes))
                    .with_momentum_teacher(self.teacher_momentum.unwrap_or(base.momentum_teacher));
                if let Some(t) = self.teacher_temp {
                    options.dino = options
                        .dino
                        .with_teacher_temp(t)
                        .with_warmup_teacher_temp(base.warmup_teacher_temp.min(t));
                }
                0
            }
            Method::Beit => ratio_count(self.mask_ratio.or(p.beit_mask_ratio).unwrap_or(BEIT_MASK_RATIO))?,
            Method::Mae => {
                options.mae = MaeConfig::for_vit(vit).with_norm_pix_loss(self.norm_pix_loss.unwrap_or(true));
                ratio_count(self.mask_ratio.unwrap_or(MAE_MASK_RATIO))?
            }
            Method::Splitmask => {
                if let Some(r) = self.mask_ratio {
                    return Err(E::invalid(
                        "mask-ratio",
                        r,
                        "is BEiT's and MAE's; SplitMask splits 50/50 or into quarters (--split-visible 0.5 or 0.25)",
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
                options.splitmask = SplitMaskConfig::new().with_mim_weight(mim).with_contrastive_weight(nce);
                visible as usize
            }
        };
        Ok((count, options))
    }

    /// The training views: the recipe's crop and strength, the method's colour jitter, and no
    /// pixel change at all where the targets were computed from the stored pixels.
    fn augment(
        &self,
        p: &PretrainDefaults,
        vit: &VitConfig,
        pp: Option<&schemas::Preprocessing>,
    ) -> Result<AugmentConfig> {
        let max_crop = self.max_crop_scale.unwrap_or(p.max_crop_scale);
        if !(max_crop > 0.08 && max_crop <= 1.0) {
            return Err(E::invalid("max-crop-scale", max_crop, "must be in (0.08, 1]").into());
        }
        let strong = self.strong_aug.unwrap_or(p.strong_augmentation);
        let mut augment = AugmentConfig::pretrain(vit.image_size as u32, strong);
        augment.scale.1 = max_crop;
        if self.method == Method::Dino {
            return self.multi_crop(augment, vit, max_crop);
        }
        augment.color_jitter = self.color_jitter.unwrap_or(match self.method {
            Method::Beit => BEIT_COLOR_JITTER,
            // SplitMask's section 5.5; MAE's crop and flip.
            _ => 0.0,
        });
        if !(0.0..1.0).contains(&augment.color_jitter) {
            return Err(E::invalid("color-jitter", augment.color_jitter, "must be in [0, 1)").into());
        }
        if self.targets == Targets::Pretokenized {
            let Some(pp) = pp else {
                return Err(E::invalid("targets", "pretokenized", "only the token methods have token grids").into());
            };
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

impl PretrainArgs {
    /// DINO's views: multi-crop, each crop with DINO's own colour, blur and solarization (in
    /// place of the single view's strong augmentation and jitter); the global crops' area
    /// range scaled by the recipe's crop cap (DINO's 0.4-1 when there is none).
    fn multi_crop(&self, mut augment: AugmentConfig, vit: &VitConfig, max_crop: f64) -> Result<AugmentConfig> {
        if self.strong_aug.is_some() || self.color_jitter.is_some() {
            return Err(E::invalid(
                "method",
                "dino",
                "--strong-aug and --color-jitter are the single-view methods' (DINO's crops bring their own)",
            )
            .into());
        }
        let mut mc = MultiCrop::dino(
            vit.image_size as u32,
            vit.patch_size as u32,
            self.local_crops.unwrap_or(8),
        );
        mc.global_scale = (mc.global_scale.0 * max_crop, max_crop);
        augment.strong = false;
        augment.multi_crop = Some(mc);
        Ok(augment)
    }
}

impl PretrainConfig {
    /// What the run pre-trained on, as reports name it: the dataset, and its share when it
    /// was prepared as a subset (`--fraction`): `imagenette 10%`.
    pub fn data_label(&self) -> String {
        let fraction = pipeline::prepare::load_manifest(&self.run.data)
            .ok()
            .and_then(|m| m.settings["subset"]["fraction"].as_f64());
        match fraction {
            // Rounded to 0.01%: 0.1 is `10%`, not `10.000000000000002%`.
            Some(f) if f < 1.0 => format!("{} {}%", self.run.dataset, (f * 1e4).round() / 1e2),
            _ => self.run.dataset.clone(),
        }
    }

    /// The method's own checks ([`method::validate`]) of this configuration.
    pub fn validate(&self) -> Result<()> {
        // Also run on every read-back config.json: sizes are bounded before a model is built.
        self.vit.validate().map_err(|m| E::invalid("model", &self.model, m))?;
        method::validate(self.method, &self.spec(&self.options))
            .map_err(|m| E::invalid("method", self.method.name(), m))?;
        let p = self.vit.patch_size as u32;
        match (self.method, &self.augment.multi_crop) {
            (Method::Dino, Some(mc)) if mc.local_size == 0 || !mc.local_size.is_multiple_of(p) => Err(E::invalid(
                "augment",
                mc.local_size,
                format!("local crops must be whole {p} px patches"),
            )
            .into()),
            (Method::Dino, Some(_)) => Ok(()),
            (Method::Dino, None) => Err(E::invalid("augment", "single view", "DINO trains on multi-crop views").into()),
            (m, Some(_)) => Err(E::invalid("augment", "multi-crop", format!("{} trains on one view", m.name())).into()),
            (_, None) => Ok(()),
        }
    }
}

/// The configuration of a pre-training run folder, for commands that read a finished run:
/// validated as a resolved one is, since the file may have been edited.
pub fn load_config(run: &Path) -> Result<PretrainConfig> {
    let cfg: PretrainConfig = read_config(run)?;
    cfg.validate().map_err(|e| crate::error::RunFolderError {
        path: run.join(crate::train::run_folder::CONFIG_FILE),
        message: e.to_string(),
    })?;
    Ok(cfg)
}
