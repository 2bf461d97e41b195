//! The semantic segmentation loop (BEiT's ADE20k UperNet fine-tuning): a pre-trained (or
//! random-init) encoder under the multi-scale adapter and UperNet, per-pixel cross-entropy on
//! joint image and label-map views, AdamW with layer-wise decay on a warmup + linear schedule,
//! periodic sliding-window mIoU on the selection split, resumable checkpoints, several devices,
//! and `results.json` at the end. The engine is the fine-tuning loop's.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::data::images::ImageSet;
use crate::data::loader::HostBatch;
use crate::error::{DataError, Result};
use crate::eval::segmentation::{SegScores, SlidePass};
use crate::model::classifier::Classifier;
use crate::model::segmenter::{pixel_cross_entropy, Segmenter};
use crate::model::vit::Mode;
use crate::seed::mix;
use crate::train::config::{InitSource, RunConfig, Schedule, SegmentConfig};
use crate::train::encoder_from_run::init_classifier;
use crate::train::engine::{Engine, Micro, TrainConfig, Update};
use crate::train::eval_loop::{start_engine, train_with_evals, EvalAt, EvalRun, Splits};
use crate::train::parallel::{numbered_params, on_ranks, Cluster, World};
use crate::train::run_folder::{prepare_run_folder, write_results, MetricsLog, TrainState};

/// One line of a segmentation run's metrics.jsonl; the `eval_*` fields on evaluation steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentLine {
    pub step: u64,
    pub epoch: f64,
    /// Pixel cross-entropy of the logged training batch.
    pub seg_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub images_per_s: f64,
    pub data_wait_s: f64,
    pub skipped_steps: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loader_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_miou: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_pixel_accuracy: Option<f64>,
}

/// `results.json` of a segmentation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentResults {
    pub kind: String,
    pub dataset: String,
    pub model: String,
    /// `random`, `beit`, `splitmask`...
    pub init: String,
    pub init_run: Option<PathBuf>,
    pub pretrain_data: Option<String>,
    pub seed: u64,
    pub steps: u64,
    pub eval_split: String,
    /// The final model on every image of the evaluation split.
    pub eval: SegScores,
    pub class_names: Vec<String>,
    /// Best periodic mIoU (possibly on a subset) on `select_split`, and its step.
    pub best_miou: f64,
    pub best_step: u64,
    pub select_split: String,
    pub seconds: f64,
}

impl TrainConfig for SegmentConfig {
    fn run(&self) -> &RunConfig {
        &self.run
    }

    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn augment(&self) -> AugmentConfig {
        self.augment
    }
}

/// Trains (or resumes) as configured, data-parallel over `devices`; writes `results.json`
/// when the schedule ends. Returns `None` when `stop_after` ended the run early.
pub fn segment<B: AutodiffBackend>(
    cfg: &SegmentConfig,
    resume: bool,
    devices: &[B::Device],
    progress: bool,
) -> Result<Option<SegmentResults>> {
    segment_on::<B>(cfg, resume, devices, &Cluster::ONE, progress)
}

/// [`segment`] as one node of a multi-node run: node 0 writes the run folder and the results.
pub fn segment_on<B: AutodiffBackend>(
    cfg: &SegmentConfig,
    resume: bool,
    devices: &[B::Device],
    cluster: &Cluster,
    progress: bool,
) -> Result<Option<SegmentResults>> {
    let writes = cluster.node == 0;
    let _lock = match writes {
        true => Some(prepare_run_folder(&cfg.run.out, cfg, resume)?),
        false => None,
    };
    let started = Instant::now();
    let device = &devices[0];
    let resuming = resume && cfg.run.checkpoint_path().exists();
    let model = initial_model::<B>(cfg, !resuming, device)?;
    let sets = Splits::load(&cfg.run, writes, started, |_| {})?;
    let replicas = vec![numbered_params(model); devices.len()];
    on_ranks::<B, _, _, _>(devices, cluster, replicas, |world, device, model| {
        run(cfg, &sets, model.fork(device), resume, world, device, progress)
    })
}

/// The segmenter at its start: `--init`'s encoder (loaded strictly, through the classifier's
/// loader) under a fresh adapter and head, or all random.
fn initial_model<B: AutodiffBackend>(cfg: &SegmentConfig, load: bool, device: &B::Device) -> Result<Segmenter<B>> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.run.seed);
    let mut model: Segmenter<B> = cfg.segmenter.init(&mut rng, device);
    if let (true, Some(init)) = (load, &cfg.init) {
        let vit = &cfg.segmenter.vit;
        let shell = Classifier::<B>::new(vit, 2, &mut rng, device);
        model.encoder = init_classifier(shell, init, vit, device)?.encoder;
    }
    Ok(model)
}

/// One rank's loop. Rank 0 alone writes metrics, checkpoints and results and evaluates.
fn run<B: AutodiffBackend>(
    cfg: &SegmentConfig,
    sets: &Splits,
    model: Segmenter<B>,
    resume: bool,
    world: World,
    device: &B::Device,
    progress: bool,
) -> Result<Option<SegmentResults>> {
    let decay = (cfg.segmenter.vit.depth, cfg.layer_decay);
    let (engine, model) = start_engine(cfg, sets, model, decay, (resume, progress), world, device)?;
    let during: Vec<usize> = cfg.eval_images.map_or_else(
        || (0..sets.select().samples.len()).collect(),
        |n| sets.select().spread(n),
    );
    let evals = Evals {
        cfg,
        sets,
        device,
        during,
    };
    train_with_evals(&evals, engine, model)
}

/// Rank 0's evaluations: periodic ones on `during` of the selection split, the final one on
/// every evaluation image.
struct Evals<'a, B: AutodiffBackend> {
    cfg: &'a SegmentConfig,
    sets: &'a Splits,
    device: &'a B::Device,
    during: Vec<usize>,
}

impl<B: AutodiffBackend> EvalRun<B, Segmenter<B>> for Evals<'_, B> {
    type Config = SegmentConfig;
    type Scores = SegScores;
    type Results = SegmentResults;

    fn config(&self) -> &SegmentConfig {
        self.cfg
    }

    fn eval_every(&self) -> u64 {
        self.cfg.eval_every
    }

    fn loss(&self, model: &Segmenter<B>, host: HostBatch, micro: Micro) -> Result<Tensor<B, 1>> {
        micro_loss(self.cfg, model, host, micro.index, self.device)
    }

    fn record(
        &self,
        engine: &mut Engine<'_, B, SegmentConfig>,
        model: &Segmenter<B>,
        update: &Update,
        at: EvalAt,
    ) -> Result<Option<SegScores>> {
        record(self.cfg, self.sets, engine, model, update, at, &self.during)
    }

    fn write_final(&self, state: &TrainState, scores: SegScores) -> Result<SegmentResults> {
        write_final(self.cfg, self.sets, state, scores)
    }
}

/// The pixel cross-entropy of one host batch of joint views.
fn micro_loss<B: AutodiffBackend>(
    cfg: &SegmentConfig,
    model: &Segmenter<B>,
    host: HostBatch,
    index: u64,
    device: &B::Device,
) -> Result<Tensor<B, 1>> {
    let (b, side) = (host.len(), host.size);
    let masks = host.masks.ok_or_else(|| DataError::Decode {
        shard: cfg.run.data.display().to_string(),
        id: format!("batch {}", host.index),
        reason: "the loader gave no label maps".into(),
    })?;
    let targets: Vec<i64> = masks.into_iter().map(i64::from).collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(host.images, [b, 3, side, side]), device);
    let y = Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [b, side, side]), device);
    let logits = model.forward(x, Mode::train_at(mix(cfg.run.seed, index, 4), host.first));
    Ok(pixel_cross_entropy(logits, y))
}

/// A sliding-window pass of `set` at `indices`.
fn slide<'a>(cfg: &SegmentConfig, set: &'a ImageSet, indices: &'a [usize], what: &'a str) -> SlidePass<'a> {
    let seg = cfg.seg();
    SlidePass {
        set,
        indices,
        short_side: seg.short_side,
        crop: seg.crop,
        stride: cfg.stride,
        classes: cfg.classes(),
        reduce_zero_label: seg.reduce_zero_label,
        what,
    }
}

/// Rank 0's evaluation due after `update` (periodic on the selection split, final on every
/// evaluation image) and the metrics line on logged steps. Returns the final scores at the
/// schedule's last step.
fn record<B: AutodiffBackend>(
    cfg: &SegmentConfig,
    sets: &Splits,
    engine: &mut Engine<'_, B, SegmentConfig>,
    model: &Segmenter<B>,
    update: &Update,
    at: EvalAt,
    during: &[usize],
) -> Result<Option<SegScores>> {
    let last = at == EvalAt::Final;
    let (eval, final_scores) = match at {
        EvalAt::None => (None, None),
        EvalAt::Periodic | EvalAt::Final => {
            let frozen = model.valid();
            let device = engine.device();
            let all: Vec<usize> = (0..sets.eval.samples.len()).collect();
            let what = format!("evaluating {}", cfg.run.eval_split);
            let fin = match last {
                true => Some(slide(cfg, &sets.eval, &all, &what).scores(&frozen, device)?),
                false => None,
            };
            let e = match (&fin, &sets.select) {
                (Some(f), None) => f.clone(),
                _ => {
                    let what = format!("evaluating {}", cfg.run.select_split());
                    slide(cfg, sets.select(), during, &what).scores(&frozen, device)?
                }
            };
            (Some(e), fin)
        }
    };
    if let Some(loss) = update.logged.as_ref().map(|v| v[0]) {
        let window = engine.window();
        let line = SegmentLine {
            step: engine.state.step,
            epoch: engine.state.step as f64 / cfg.schedule.steps_per_epoch as f64,
            seg_loss: loss,
            lr: update.lr,
            grad_norm: update.grad_norm,
            images_per_s: window.images_per_s,
            data_wait_s: window.data_wait_s,
            skipped_steps: engine.state.skipped_steps,
            loader_mb: engine.loader_mb(),
            eval_miou: eval.as_ref().map(|e| e.miou),
            eval_pixel_accuracy: eval.as_ref().map(|e| e.pixel_accuracy),
        };
        engine.append(&line)?;
        engine.bar().set_message(format!(
            "loss {:.3} {:.0} img/s{}",
            loss,
            line.images_per_s,
            eval.as_ref()
                .map(|e| format!(" {} mIoU {:.1}%", cfg.run.select_split(), 100.0 * e.miou))
                .unwrap_or_default()
        ));
    }
    Ok(final_scores)
}

/// `results.json` of a run whose last step scored `e` on every evaluation image.
fn write_final(cfg: &SegmentConfig, sets: &Splits, state: &TrainState, e: SegScores) -> Result<SegmentResults> {
    let (best, best_step) = MetricsLog::read::<SegmentLine>(&cfg.run.metrics_path())
        .into_iter()
        .filter_map(|l| l.eval_miou.map(|m| (m, l.step)))
        .fold((0.0, 0), |b, (m, s)| if m > b.0 { (m, s) } else { b });
    let held_out = cfg.run.select_fraction.is_some();
    let (best_miou, best_step) = match held_out || e.miou < best {
        true => (best, best_step),
        false => (e.miou, state.step),
    };
    let results = SegmentResults {
        kind: "segment".into(),
        dataset: cfg.run.dataset.clone(),
        model: cfg.model.clone(),
        init: cfg.init.as_ref().map_or_else(|| "random".into(), InitSource::name),
        init_run: cfg.init.as_ref().map(|i| i.run.clone()),
        pretrain_data: cfg.init.as_ref().and_then(|i| i.pretrain_data.clone()),
        seed: cfg.run.seed,
        steps: state.step,
        eval_split: cfg.run.eval_split.clone(),
        eval: e,
        class_names: cfg.class_names.clone(),
        best_miou,
        best_step,
        select_split: cfg.run.select_split(),
        seconds: sets.started.elapsed().as_secs_f64(),
    };
    write_results(&cfg.run.out, &results)?;
    Ok(results)
}
