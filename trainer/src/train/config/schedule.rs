//! The optimization schedule: batch, devices, learning rate and its scaling rule, warmup,
//! epochs resolved into updates, and the defaults each command falls back on.

use std::path::Path;

use pipeline::recipe::FinetuneDefaults;
use serde::{Deserialize, Serialize};

use crate::backend::DeviceList;
use crate::error::{ConfigError, Result};
use crate::train::optim::AdamWSettings;
use crate::train::schedule::{LrDecay, LrSchedule};

use ConfigError as E;

use super::*;

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
    #[arg(long, value_parser = finite)]
    pub blr: Option<f64>,
    /// How --blr follows the effective batch: `linear` (BEiT's and the paper's rule) or `sqrt`
    /// (Adam's square-root rule). Default: `sqrt` under `finetune --recipe scaled`, else
    /// `linear`.
    #[arg(long, value_enum)]
    pub lr_scaling: Option<LrScaling>,
    /// Learning rate at the end of the cosine (default: 1e-5 pre-training, 1e-6 fine-tuning,
    /// BEiT's).
    #[arg(long, value_parser = finite)]
    pub min_lr: Option<f64>,
    /// Warmup epochs, converted to updates (default: a 1/30 share of the updates in
    /// pre-training, BEiT's 10 of 300 epochs; the recipe's epochs in fine-tuning).
    #[arg(long, value_parser = finite)]
    pub warmup_epochs: Option<f64>,
    /// Weight decay (default: 0.05, BEiT's and Table 9's; DINO's 0.04).
    #[arg(long, value_parser = finite)]
    pub weight_decay: Option<f64>,
    /// Weight decay at the end of the run, reached on a cosine from --weight-decay (default:
    /// constant; DINO's 0.4).
    #[arg(long, value_parser = finite)]
    pub weight_decay_end: Option<f64>,
    /// Gradient-norm clip; 0 disables it (default: 3 in pre-training as BEiT and DINO, the
    /// recipe's in fine-tuning: none).
    #[arg(long, value_parser = finite)]
    pub clip_grad: Option<f64>,
    /// What --clip-grad bounds (default: the norm of all gradients together; DINO's: each
    /// parameter's).
    #[arg(long, value_enum)]
    pub clip_mode: Option<ClipMode>,
    /// Drop path rate (default: the preset's in pre-training, the recipe's 0.1 in fine-tuning).
    #[arg(long, value_parser = finite)]
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

/// What gradient clipping bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ClipMode {
    /// The norm of all gradients together (BEiT's, MAE's and fine-tuning's).
    #[default]
    Global,
    /// Each parameter's gradient norm on its own (DINO's `clip_gradients`): a layer with a
    /// gradient spike is scaled down without slowing the others.
    PerParameter,
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
    /// Where the weight decay ends on a cosine (`None`: constant).
    pub weight_decay_end: Option<f64>,
    pub clip_grad: f64,
    pub clip_mode: ClipMode,
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
    weight_decay_end: None,
    clip_grad: 3.0,
    clip_mode: ClipMode::Global,
};

/// DINO's ViT recipe: lr 5e-4 at batch 256, warmup 10 of 300 epochs, final lr 1e-6, weight
/// decay 0.04 to 0.4 on a cosine, each parameter's gradient clipped at 3.
pub const DINO_PRETRAIN: ScheduleDefaults = ScheduleDefaults {
    reference_batch: 256,
    blr: 5e-4,
    min_lr: 1e-6,
    weight_decay: 0.04,
    weight_decay_end: Some(0.4),
    clip_mode: ClipMode::PerParameter,
    ..PRETRAIN
};

/// BEiT's final fine-tuning learning rate (Table 9 does not list one).
pub(super) const FINETUNE_MIN_LR: f64 = 1e-6;

/// Fine-tuning defaults from the recipe's Table 9 row.
pub(super) fn finetune_defaults(f: &FinetuneDefaults) -> ScheduleDefaults {
    ScheduleDefaults {
        batch_size: f.batch_size,
        reference_batch: f.batch_size,
        blr: f.lr,
        lr_scaling: LrScaling::Linear,
        min_lr: FINETUNE_MIN_LR,
        warmup: Warmup::Epochs(f.warmup_epochs),
        weight_decay: f.weight_decay,
        weight_decay_end: None,
        clip_grad: f.clip_grad,
        clip_mode: ClipMode::Global,
    }
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
    /// The weight decay at the end of the run, reached on a cosine from `adamw`'s (`None`:
    /// constant; runs before this field had none).
    #[serde(default)]
    pub weight_decay_end: Option<f64>,
    pub clip_grad: Option<f64>,
    /// What `clip_grad` bounds (runs before this field: the global norm).
    #[serde(default)]
    pub clip_mode: ClipMode,
    /// How the learning rate falls after the warmup (runs before this field: a cosine).
    #[serde(default)]
    pub decay: LrDecay,
}

impl Schedule {
    /// The update this invocation stops at.
    pub fn end(&self) -> u64 {
        self.stop_after.map_or(self.total_steps, |s| s.min(self.total_steps))
    }

    /// The weight decay of update `step` (DINO's cosine from `adamw.weight_decay` to
    /// `weight_decay_end`, per update and without warmup).
    pub fn weight_decay(&self, step: u64) -> f64 {
        let start = self.adamw.weight_decay;
        match self.weight_decay_end {
            None => start,
            Some(end) => {
                let t = step as f64 / self.total_steps.max(1) as f64;
                end + (start - end) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
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
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            base: self.lr,
            min: self.min_lr,
            warmup: self.warmup_steps,
            total: self.total_steps,
            decay: self.decay,
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
        if let Some(end) = self.weight_decay_end.filter(|e| !(e.is_finite() && *e >= 0.0)) {
            return Err(E::invalid("weight-decay-end", end, "must be a non-negative number"));
        }
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
            weight_decay_end: self.weight_decay_end.or(defaults.weight_decay_end),
            clip_grad: (clip > 0.0).then_some(clip),
            clip_mode: self.clip_mode.unwrap_or(defaults.clip_mode),
            decay: LrDecay::Cosine,
        })
    }
}

pub(super) fn one_device() -> usize {
    1
}

/// Refuses a global batch (per device x devices) larger than the training set.
pub(super) fn check_batch(batch: usize, devices: usize, train_images: usize, data: &Path) -> Result<(), ConfigError> {
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
