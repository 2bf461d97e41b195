//! Training configuration: command-line option groups shared by `trainer pretrain` and
//! `trainer finetune`, resolved once against the dataset (its manifest and recipe: Table 3's
//! epochs, section 5.5's settings for the smallest datasets, Table 9's fine-tuning recipe),
//! presets and learning-rate scaling into a `PretrainConfig` or `FinetuneConfig` that is
//! printed, written to the run folder and never changed afterwards. Every flag overrides the
//! recipe; what neither sets comes from BEiT or timm, named as such below.

use std::path::{Path, PathBuf};

use pipeline::recipe::{FinetuneDefaults, Masking, Recipe};
use serde::{Deserialize, Serialize};

use crate::backend::DeviceList;
use crate::data::augment::AugmentConfig;
use crate::data::images::{LoadOptions, LoaderArgs};
use crate::data::mixup::MixupConfig;
use crate::data::randaugment::RandAugmentConfig;
use crate::error::{ConfigError, Result};
use crate::model::masking::MaskSpec;
use crate::model::objective::Method;
use crate::model::splitmask::SplitMaskConfig;
use crate::model::vit::VitConfig;
use crate::train::optim::AdamWSettings;
use crate::train::parallel::{Cluster, Endpoint, Network};
use crate::train::run_folder::{read_config, BEST_FILE, CHECKPOINT_FILE, METRICS_FILE};
use crate::train::schedule::CosineSchedule;

use ConfigError as E;

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
    /// Recipe folder, for the dataset's defaults.
    #[arg(long, default_value = "datasets")]
    pub recipes: PathBuf,
    /// Split to evaluate on (default: the dataset's, recorded in its manifest: `test` for
    /// Cars, Food-101 and DomainNet, `val` otherwise).
    #[arg(long)]
    pub eval_split: Option<String>,
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

/// The optimization schedule. Unset values come from the recipe (fine-tuning: Table 9) or
/// from BEiT's pre-training recipe ([`PRETRAIN`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    /// Micro-batch size per step (default: 256 in pre-training; the recipe's 1024 in
    /// fine-tuning, which a small device reaches with --accum).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches accumulated per update (effective batch = batch-size x devices x accum).
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Devices to train on, one data-parallel rank each: `cpu:N` (N CPU workers) or
    /// `cuda:0,1,...`; --batch-size is per device (default: one device of --device's kind).
    #[arg(long)]
    pub devices: Option<DeviceList>,
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Epochs (default: the recipe's: Table 3 in pre-training, Table 9 in fine-tuning).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Cap on the number of updates (the schedule is fitted to it).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop after this many updates without changing the schedule (resume later).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Learning rate at the reference batch, scaled to the effective batch by --lr-scaling
    /// (default: 1.5e-3 at 2048 in pre-training as BEiT; the recipe's at 1024 in fine-tuning).
    #[arg(long)]
    pub blr: Option<f64>,
    /// How --blr follows the effective batch: `linear` (BEiT's and the paper's rule) or `sqrt`
    /// (Adam's square-root rule). Default: `sqrt` under `finetune --recipe scaled`, else
    /// `linear`.
    #[arg(long, value_enum)]
    pub lr_scaling: Option<LrScaling>,
    /// Learning rate at the end of the cosine (default: 1e-5 pre-training, 1e-6 fine-tuning,
    /// BEiT's).
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Warmup epochs, converted to updates (default: a 1/30 share of the updates in
    /// pre-training, BEiT's 10 of 300 epochs; the recipe's epochs in fine-tuning).
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Weight decay (default: 0.05, BEiT's and Table 9's).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Global gradient-norm clip; 0 disables it (default: 3 in pre-training as BEiT, the
    /// recipe's in fine-tuning: none).
    #[arg(long)]
    pub clip_grad: Option<f64>,
    /// Drop path rate (default: the preset's in pre-training, the recipe's 0.1 in fine-tuning).
    #[arg(long)]
    pub drop_path: Option<f64>,
}

/// How the learning rate follows the batch: lr = blr x rule(effective batch / reference batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    /// Proportional to the batch (Goyal et al. 2017; BEiT's and the paper's recipes).
    #[default]
    Linear,
    /// Proportional to its square root: the rule that keeps Adam's updates alike across
    /// batch sizes (Malladi et al. 2022). Linear scaling divides Table 9's lr by 32 at batch
    /// 32, and a short fine-tuning run at that rate ends at its linear probe.
    Sqrt,
}

impl LrScaling {
    /// The factor applied to the reference batch's learning rate.
    pub fn factor(self, effective: usize, reference: usize) -> f64 {
        let ratio = effective as f64 / reference as f64;
        match self {
            LrScaling::Linear => ratio,
            LrScaling::Sqrt => ratio.sqrt(),
        }
    }
}

/// How long the warmup is where --warmup-epochs is not given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    Epochs(f64),
    /// A share of the run's updates.
    Share(f64),
}

/// A command's schedule defaults, where the command line sets no value.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleDefaults {
    pub batch_size: usize,
    /// The batch `blr` is quoted at: lr = blr x `lr_scaling`(effective batch / `reference_batch`).
    pub reference_batch: usize,
    pub blr: f64,
    pub lr_scaling: LrScaling,
    pub min_lr: f64,
    pub warmup: Warmup,
    pub weight_decay: f64,
    pub clip_grad: f64,
}

/// BEiT's pre-training: lr 1.5e-3 at batch 2048, warmup 10 of 300 epochs (kept as a share of
/// the updates, so the paper's equal-update schedules of thousands of epochs on small
/// datasets do not warm up in a few dozen steps), clipping at 3, weight decay 0.05.
pub const PRETRAIN: ScheduleDefaults = ScheduleDefaults {
    batch_size: 256,
    reference_batch: 2048,
    blr: 1.5e-3,
    lr_scaling: LrScaling::Linear,
    min_lr: 1e-5,
    warmup: Warmup::Share(10.0 / 300.0),
    weight_decay: 0.05,
    clip_grad: 3.0,
};

/// BEiT's final fine-tuning learning rate (Table 9 does not list one).
const FINETUNE_MIN_LR: f64 = 1e-6;

/// Fine-tuning defaults from the recipe's Table 9 row.
fn finetune_defaults(f: &FinetuneDefaults) -> ScheduleDefaults {
    ScheduleDefaults {
        batch_size: f.batch_size,
        reference_batch: f.batch_size,
        blr: f.lr,
        lr_scaling: LrScaling::Linear,
        min_lr: FINETUNE_MIN_LR,
        warmup: Warmup::Epochs(f.warmup_epochs),
        weight_decay: f.weight_decay,
        clip_grad: f.clip_grad,
    }
}

/// Where a run reads and writes, and how it logs: the resolved [`RunArgs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub data: PathBuf,
    pub dataset: String,
    /// The split evaluations run on.
    pub eval_split: String,
    /// Train images the run draws from (after `--limit-images`).
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
    fn resolve(&self, manifest: &schemas::Manifest, evaluates: bool) -> Result<RunConfig, ConfigError> {
        let eval_split = self
            .eval_split
            .clone()
            .unwrap_or_else(|| manifest.eval_split().to_string());
        if evaluates {
            check_split(manifest, &eval_split, &self.data)?;
        }
        let train = manifest.splits.get("train").map(|s| s.images as usize).unwrap_or(0);
        Ok(RunConfig {
            data: self.data.clone(),
            dataset: manifest.dataset.clone(),
            eval_split,
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

/// A schedule in updates: the resolved [`ScheduleArgs`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Micro-batch size per step.
    pub batch_size: usize,
    /// Micro-batches accumulated per update.
    pub accum: usize,
    /// Data-parallel ranks, each with `batch_size` per micro-batch.
    #[serde(default = "one_device")]
    pub devices: usize,
    pub epochs: u64,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    /// Updates after which this invocation stops (the schedule is unchanged; resume later).
    pub stop_after: Option<u64>,
    /// Peak learning rate, already scaled to the effective batch.
    pub lr: f64,
    /// How `lr` was scaled from the reference batch (runs before this field: linear).
    #[serde(default)]
    pub lr_scaling: LrScaling,
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

    /// Images per update, over all ranks.
    pub fn effective_batch(&self) -> usize {
        self.batch_size * self.devices * self.accum
    }

    /// Images per micro-batch, over all ranks (the loader's global batch).
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.devices
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
    /// The schedule of `train_images` images for `epochs` (the recipe's where the command
    /// line gives none).
    pub fn resolve(
        &self,
        defaults: &ScheduleDefaults,
        train_images: usize,
        epochs: u64,
        data: &Path,
    ) -> Result<Schedule, ConfigError> {
        let batch_size = self.batch_size.unwrap_or(defaults.batch_size);
        if batch_size == 0 || self.accum == 0 {
            return Err(E::invalid(
                "batch-size",
                batch_size,
                "batch size and --accum must be positive",
            ));
        }
        // Every node runs the same --devices; ranks are node-major (see `Cluster`).
        let devices = self.devices.as_ref().map_or(1, DeviceList::len) * self.nodes.num_nodes;
        check_batch(batch_size, devices, train_images, data)?;
        let epochs = self.epochs.unwrap_or(epochs);
        let effective = batch_size * devices * self.accum;
        let steps_per_epoch = (train_images / effective).max(1) as u64;
        let mut total_steps = epochs * steps_per_epoch;
        if let Some(m) = self.max_steps {
            total_steps = total_steps.min(m);
        }
        if total_steps == 0 {
            return Err(E::invalid("epochs", epochs, "the schedule has no updates"));
        }
        let warmup = match (self.warmup_epochs, defaults.warmup) {
            (Some(e), _) | (None, Warmup::Epochs(e)) => e * steps_per_epoch as f64,
            (None, Warmup::Share(s)) => s * total_steps as f64,
        };
        let warmup_steps = (warmup.round() as u64).min(total_steps / 2);
        let clip = self.clip_grad.unwrap_or(defaults.clip_grad);
        let lr_scaling = self.lr_scaling.unwrap_or(defaults.lr_scaling);
        Ok(Schedule {
            batch_size,
            accum: self.accum,
            devices,
            epochs,
            steps_per_epoch,
            total_steps,
            stop_after: self.stop_after,
            lr: self.blr.unwrap_or(defaults.blr) * lr_scaling.factor(effective, defaults.reference_batch),
            lr_scaling,
            min_lr: self.min_lr.unwrap_or(defaults.min_lr),
            warmup_steps,
            adamw: AdamWSettings {
                weight_decay: self.weight_decay.unwrap_or(defaults.weight_decay),
                ..Default::default()
            },
            clip_grad: (clip > 0.0).then_some(clip),
        })
    }
}

/// Several machines (`--num-nodes`), one process each: burn-collective's multi-node mode.
/// Node 0 hosts the collective's orchestrator on `--master`'s port and its first device's
/// rank alone writes the run folder, which every node reads on `--resume` (shared storage).
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Processes (machines) in the run, each training on its own --devices (the same count).
    #[arg(long, default_value_t = 1)]
    pub num_nodes: usize,
    /// This process's index, 0..num-nodes (Slurm: $SLURM_NODEID).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// HOST:PORT of node 0, where the orchestrator listens (needed with --num-nodes > 1).
    #[arg(long)]
    pub master: Option<String>,
    /// HOST:PORT other nodes reach this one at, for its tensor service (default: the master's
    /// host, at the master's port + 1 + node rank; give it where nodes are separate machines).
    #[arg(long)]
    pub node_address: Option<String>,
}

impl NodeArgs {
    /// This process's place in the run: one machine without --num-nodes.
    pub fn resolve(&self) -> Result<Cluster, ConfigError> {
        let (nodes, node) = (self.num_nodes, self.node_rank);
        if nodes == 0 {
            return Err(E::invalid("num-nodes", nodes, "a run needs at least one node"));
        }
        if node >= nodes {
            return Err(E::invalid(
                "node-rank",
                node,
                format!("nodes are numbered 0..{nodes} (--num-nodes {nodes})"),
            ));
        }
        if nodes == 1 {
            return Ok(Cluster::ONE);
        }
        let master = self
            .master
            .as_deref()
            .ok_or_else(|| E::invalid("num-nodes", nodes, "several nodes need --master HOST:PORT (node 0's)"))?;
        let master = Endpoint::parse(master).map_err(|m| E::invalid("master", master, m))?;
        let address = match &self.node_address {
            Some(a) => Endpoint::parse(a).map_err(|m| E::invalid("node-address", a, m))?,
            None => Endpoint {
                host: master.host.clone(),
                port: master
                    .port
                    .checked_add(1 + node as u16)
                    .ok_or_else(|| E::invalid("master", &master, "no port left above it for the nodes"))?,
            },
        };
        Ok(Cluster {
            nodes,
            node,
            network: Some(Network { master, address }),
        })
    }
}

fn global_negatives() -> bool {
    true
}

fn one_device() -> usize {
    1
}

/// Refuses a global batch (per device x devices) larger than the training set.
fn check_batch(batch: usize, devices: usize, train_images: usize, data: &Path) -> Result<(), ConfigError> {
    if train_images < batch * devices {
        let on = if devices > 1 {
            format!(" x {devices} devices")
        } else {
            String::new()
        };
        return Err(E::invalid(
            "batch-size",
            batch,
            format!(
                "{batch}{on} is larger than the {train_images} train images of {}",
                data.display()
            ),
        ));
    }
    Ok(())
}

/// The dataset's recipe, which every training command resolves against.
fn recipe(run: &RunArgs, manifest: &schemas::Manifest) -> Result<Recipe> {
    Ok(Recipe::load(&run.recipes, &manifest.dataset)?)
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
    /// block | uniform (default: the recipe's: uniform on the smallest datasets, blocks
    /// otherwise).
    #[arg(long)]
    pub masking: Option<String>,
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
    pub splitmask: SplitMaskConfig,
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
        let masking = match self.masking.as_deref() {
            None => p.masking,
            Some("block") => Masking::Block,
            Some("uniform") => Masking::Uniform,
            Some(other) => return Err(E::invalid("masking", other, "expected block or uniform").into()),
        };
        let masking = match masking {
            Masking::Block => MaskSpec::block_for_grid(n),
            Masking::Uniform => MaskSpec::Uniform,
        };
        let (mask_count, splitmask) = match self.method {
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
            let pp = &vocab.header.preprocessing;
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
        Ok(PretrainConfig {
            run: run_cfg,
            schedule: s,
            vocab: self.vocab.clone(),
            vocab_sha256,
            vocab_size: vocab.header.size,
            method: self.method,
            model: self.model.clone(),
            vit,
            splitmask,
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
}

/// The configuration of a pre-training run folder, for commands that read a finished run.
pub fn load_config(run: &Path) -> Result<PretrainConfig> {
    read_config(run)
}

/// `trainer finetune` arguments: the recipe's Table 9 row, every value overridable.
#[derive(Debug, Clone, clap::Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Pre-training run folder whose encoder starts the model (its last checkpoint), or a
    /// checkpoint file in one (`<run>/best.safetensors`: the encoder at the best k-NN);
    /// without it, random init (the from-scratch baseline of the same recipe).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// ViT preset (default: the pre-training run's; `small` for random init).
    #[arg(long)]
    pub model: Option<String>,
    /// Layer-wise learning-rate decay; 1 disables it (default: the recipe's).
    #[arg(long)]
    pub layer_decay: Option<f64>,
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Mixup's Beta alpha (default: the recipe's 0.8).
    #[arg(long)]
    pub mixup: Option<f64>,
    /// CutMix's Beta alpha (default: the recipe's 1.0).
    #[arg(long)]
    pub cutmix: Option<f64>,
    /// Probability of mixing a batch (timm's 1.0, scaled by `--recipe scaled`).
    #[arg(long)]
    pub mixup_prob: Option<f64>,
    /// Probability of CutMix rather than mixup (timm's default).
    #[arg(long, default_value_t = 0.5)]
    pub mixup_switch_prob: f64,
    /// RandAugment operations per image (0 disables it; timm's `rand-m*` uses 2).
    #[arg(long, default_value_t = 2)]
    pub randaug_ops: usize,
    #[arg(long)]
    pub randaug_magnitude: Option<f64>,
    #[arg(long)]
    pub randaug_std: Option<f64>,
    /// Random-erasing probability (BEiT's and DeiT's 0.25, scaled by `--recipe scaled`; Table
    /// 9 has no row for it).
    #[arg(long)]
    pub reprob: Option<f64>,
    /// Copies of each drawn image in the same batch (DeiT's repeated augmentation); 1 is off
    /// (default: 3 where the recipe turns it on, else 1).
    #[arg(long)]
    pub repeated_aug: Option<u32>,
    /// Center-crop ratio of the evaluation view (default: the recipe's 0.875).
    #[arg(long)]
    pub crop_ratio: Option<f64>,
    /// Color-jitter strength (default: the recipe's 0.4, which timm applies only when
    /// RandAugment is off).
    #[arg(long)]
    pub color_jitter: Option<f64>,
    /// Smallest area share of a random-resized crop (default 0.08, Inception's).
    #[arg(long)]
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
    #[arg(long, default_value_t = 1.0)]
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
const MIXUP_PROB: f64 = 1.0;
const REPROB: f64 = 0.25;

/// DeiT's repeated augmentation draws each image three times.
const REPEATED_AUG_COPIES: u32 = 3;

/// Where a fine-tuning run's encoder came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitSource {
    pub run: PathBuf,
    /// The checkpoint the encoder was read from (the run's last, or its best k-NN one).
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
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
    #[serde(default)]
    pub head_init: HeadInit,
    /// The recipe the unset flags came from (runs before it existed: `paper`).
    #[serde(default = "paper_recipe")]
    pub recipe: FinetuneRecipe,
    /// What the recipe's regularizers were multiplied by: the run's share of the recipe's
    /// epochs under `scaled` (at most 1), 1 under `paper`.
    #[serde(default = "one")]
    pub regularization_scale: f64,
    pub eval_every: u64,
    pub eval_images: Option<usize>,
}

fn paper_recipe() -> FinetuneRecipe {
    FinetuneRecipe::Paper
}

fn one() -> f64 {
    1.0
}

/// A pre-training run folder and the checkpoint file `--init` names in it.
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
            Some(init) => Some(load_config(&init_paths(init).0)?),
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
        let mut defaults = finetune_defaults(f);
        if self.recipe == FinetuneRecipe::Scaled {
            defaults.lr_scaling = LrScaling::Sqrt;
            if f.epochs > 0 {
                // Table 9's warmup is a share of its run (60 of 300 epochs): keep the share.
                defaults.warmup = Warmup::Share(f.warmup_epochs / f.epochs as f64);
            }
        }
        let s = sched.resolve(&defaults, run_cfg.train_images, f.epochs as u64, &run.data)?;
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
        let init = match (&self.init, pre) {
            (Some(init), Some(p)) => {
                let (run, checkpoint) = init_paths(init);
                Some(InitSource {
                    run,
                    checkpoint: Some(checkpoint),
                    method: p.method,
                    vocab: p.vocab.clone(),
                    pretrain_steps: p.schedule.total_steps,
                })
            }
            _ => None,
        };
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

    /// The training views: the recipe's augmentations, their strength times `scale`.
    fn augment(&self, f: &FinetuneDefaults, size: u32, scale: f64) -> Result<AugmentConfig> {
        let randaugment = (self.randaug_ops > 0).then_some(RandAugmentConfig {
            ops: self.randaug_ops,
            magnitude: self.randaug_magnitude.unwrap_or(f.randaug_magnitude),
            magnitude_std: self.randaug_std.unwrap_or(f.randaug_std),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lr_rules_agree_at_the_reference_batch_and_part_below_it() {
        for rule in [LrScaling::Linear, LrScaling::Sqrt] {
            assert_eq!(rule.factor(1024, 1024), 1.0);
        }
        assert_eq!(LrScaling::Linear.factor(32, 1024), 1.0 / 32.0);
        assert!((LrScaling::Sqrt.factor(32, 1024) - 32f64.sqrt().recip()).abs() < 1e-15);
        assert_eq!(LrScaling::Sqrt.factor(4096, 1024), 2.0);
        // Runs written before the rule was recorded scaled linearly.
        assert_eq!(LrScaling::default(), LrScaling::Linear);
    }

    #[test]
    fn endpoints_parse_and_node_options_resolve_to_a_place_in_the_run() {
        let e = Endpoint::parse("ws://node-a:29500").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("node-a", 29500));
        assert_eq!(e.to_string(), "node-a:29500");
        for bad in ["node-a", "node-a:http", ":29500", "a:70000"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let args = |nodes, rank, master: Option<&str>| NodeArgs {
            num_nodes: nodes,
            node_rank: rank,
            master: master.map(str::to_string),
            node_address: None,
        };
        assert_eq!(args(1, 0, None).resolve().unwrap(), Cluster::ONE);
        let c = args(3, 2, Some("127.0.0.1:4000")).resolve().unwrap();
        let net = c.network.unwrap();
        assert_eq!((c.nodes, c.node, net.address.port), (3, 2, 4003));
        let err = args(2, 0, None).resolve().unwrap_err().to_string();
        assert!(err.contains("--master"), "{err}");
        let err = args(2, 2, Some("a:1")).resolve().unwrap_err().to_string();
        assert!(err.contains("--node-rank \"2\""), "{err}");
    }
}
