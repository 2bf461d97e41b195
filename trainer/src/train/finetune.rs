//! The fine-tuning loop (BEiT's recipe): a pre-trained (or random-init) encoder with a pooled
//! classification head, RandAugment + random-erasing views, mixup / cutmix with label
//! smoothing, AdamW with layer-wise learning-rate decay on a warmup + cosine schedule, periodic
//! top-1 / top-5 on the val split, resumable checkpoints, and `results.json` at the end.
//!
//! Determinism follows the pre-training loop: batch `i` is a function of (seed, i), and the
//! mixing and drop-path draws of step `t` of (seed, t).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::{AutodiffModule, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::data::images::ImageSet;
use crate::data::loader::HostBatch;
use crate::data::mixup::mix_batch;
use crate::error::Result;
use crate::eval::accuracy::{classify, ClassifyResult, Tally};
use crate::eval::features::{head_features, Pass};
use crate::eval::probe::{fit_probe, Features, LinearProbe, ProbeConfig};
use crate::model::classifier::Classifier;
use crate::model::losses::soft_cross_entropy;
use crate::model::vit::Mode;
use crate::seed::mix;
use crate::train::config::{FinetuneConfig, HeadInit, InitSource, RunConfig, Schedule};
use crate::train::encoder_from_run::init_classifier;
use crate::train::engine::{Engine, Micro, TrainConfig, Update};
use crate::train::eval_loop::{start_engine, train_with_evals, EvalAt, EvalRun, Splits};
use crate::train::parallel::{numbered_params, on_ranks, Cluster, World};
use crate::train::run_folder::{
    prepare_run_folder, read_json, write_json, write_results, MetricsLog, TrainState, START_FILE,
};

/// One line of a fine-tuning run's metrics.jsonl; the `eval_*` and `train_top1` fields on
/// evaluation steps (on the evaluation split, and on a spread of train images with the same
/// eval views), so a collapse to one class shows in the prediction histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneLine {
    pub step: u64,
    pub epoch: f64,
    /// Soft-target cross-entropy of the logged training batch.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub images_per_s: f64,
    pub data_wait_s: f64,
    pub skipped_steps: u64,
    /// Most encoded MB the loader's shuffle buffer held so far, when the split is streamed
    /// from its shards (`--cache none`, or `auto` on a split over `--loader-memory-mb`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loader_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default, alias = "val_top1")]
    pub eval_top1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default, alias = "val_top5")]
    pub eval_top5: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default, alias = "val_loss")]
    pub eval_loss: Option<f64>,
    /// Predicted class counts over the evaluated images.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_predictions: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub train_top1: Option<f64>,
}

/// `results.json` of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneResults {
    pub kind: String,
    pub dataset: String,
    pub model: String,
    /// `random`, `beit` or `splitmask`.
    pub init: String,
    pub init_run: Option<PathBuf>,
    pub vocab: Option<PathBuf>,
    /// What the encoder was pre-trained on (the report's Table 1 columns); none for random
    /// init.
    #[serde(default)]
    pub pretrain_data: Option<String>,
    pub seed: u64,
    pub epochs: u64,
    pub steps: u64,
    /// The split evaluated on.
    #[serde(default = "val")]
    pub eval_split: String,
    /// The final model on every image of the evaluation split.
    #[serde(alias = "val")]
    pub eval: ClassifyResult,
    /// Best top-1 among the periodic evaluations (possibly on a subset), on `select_split`.
    pub best_top1: f64,
    pub best_step: u64,
    /// Where the periodic evaluations and `best_top1` ran: the evaluation split, or
    /// `train-holdout` (train rows not trained on) when that is `test`.
    #[serde(default = "val")]
    pub select_split: String,
    pub seconds: f64,
    /// The largest class's share of the evaluation split's labels: what always predicting it
    /// scores.
    #[serde(default)]
    pub majority_share: f64,
    /// The most predicted class's share of the final predictions (1: collapsed to one class).
    #[serde(default)]
    pub top_prediction_share: f64,
    /// LP-FT: the fitted probe's top-1 on every evaluation image, and the model's before its
    /// first update (the two agree: the head is the probe).
    #[serde(default)]
    pub probe_top1: Option<f64>,
    #[serde(default)]
    pub start_top1: Option<f64>,
    /// What the numbers above say went wrong: a collapse, an end below the probe or at the
    /// majority share.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// An LP-FT run before its first update (`start.json`): the fitted probe's own top-1 and the
/// model's, on every evaluation image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartEval {
    pub probe_top1: f64,
    pub model: ClassifyResult,
}

/// The warnings of a run that ended at `end`, on a split whose largest class holds
/// `majority_share` of the labels, after `start` where LP-FT ran.
pub fn diagnose(end: &ClassifyResult, majority_share: f64, start: Option<&StartEval>) -> Vec<String> {
    let mut warnings = Vec::new();
    let top = end.majority_share();
    // More than halfway from the labels' own imbalance to one class for everything.
    if top > majority_share + 0.5 * (1.0 - majority_share) {
        warnings.push(format!(
            "collapsed: one class takes {:.1}% of the predictions (the largest class is {:.1}% of the labels)",
            100.0 * top,
            100.0 * majority_share
        ));
    }
    if end.top1 <= majority_share {
        warnings.push(format!(
            "top-1 {:.1}% is no better than always predicting the largest class ({:.1}%)",
            100.0 * end.top1,
            100.0 * majority_share
        ));
    }
    if let Some(s) = start.filter(|s| end.top1 < s.probe_top1) {
        warnings.push(format!(
            "top-1 {:.1}% ends below the linear probe it started from ({:.1}%)",
            100.0 * end.top1,
            100.0 * s.probe_top1
        ));
    }
    warnings
}

fn val() -> String {
    "val".into()
}

/// Fine-tunes (or resumes) as configured, data-parallel over `devices` (one rank each) where
/// there are several; writes `results.json` when the schedule ends. Returns `None` when
/// `stop_after` ended the run early.
pub fn finetune<B: AutodiffBackend>(
    cfg: &FinetuneConfig,
    resume: bool,
    devices: &[B::Device],
    progress: bool,
) -> Result<Option<FinetuneResults>> {
    finetune_on::<B>(cfg, resume, devices, &Cluster::ONE, progress)
}

/// [`finetune`] as one node of a multi-node run: node 0 writes the run folder and the results
/// (returned there), the others only read the folder (on resume) and return `None`.
pub fn finetune_on<B: AutodiffBackend>(
    cfg: &FinetuneConfig,
    resume: bool,
    devices: &[B::Device],
    cluster: &Cluster,
    progress: bool,
) -> Result<Option<FinetuneResults>> {
    let writes = cluster.node == 0;
    let _lock = match writes {
        true => Some(prepare_run_folder(&cfg.run.out, cfg, resume)?),
        false => None,
    };
    let started = Instant::now();
    let device = &devices[0];
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.run.seed);
    let mut model = Classifier::<B>::new(&cfg.vit, cfg.classes, &mut rng, device);
    let ckpt = cfg.run.checkpoint_path();
    let resuming = resume && ckpt.exists();
    if let (false, Some(init)) = (resuming, &cfg.init) {
        model = init_classifier(model, init, &cfg.vit, device)?;
    }
    let sets = Splits::load(&cfg.run, writes, started, |set| {
        let dropped = set.keep_labeled(cfg.classes);
        if dropped > 0 {
            bar_println(
                progress,
                format!(
                    "{}: {dropped} unlabeled {} images left out",
                    cfg.run.data.display(),
                    set.split
                ),
            );
        }
    })?;
    if !resuming && cfg.head_init == HeadInit::Probe {
        let probe;
        (model, probe) = probe_head(cfg, model, &sets.train, device)?;
        if writes {
            let start = evaluate_start(cfg, &model, &probe, &sets.eval, device)?;
            write_json(&cfg.run.out.join(START_FILE), &start)?;
        }
    }
    // One model, replicated: the same weights and parameter ids on every rank.
    let replicas = vec![numbered_params(model); devices.len()];
    on_ranks::<B, _, _, _>(devices, cluster, replicas, |world, device, model| {
        run(cfg, &sets, model.fork(device), resume, world, device, progress)
    })
}

impl TrainConfig for FinetuneConfig {
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

/// One rank's fine-tuning loop (the whole run on one device). Rank 0 alone writes metrics,
/// checkpoints and results, draws the progress bar and evaluates.
fn run<B: AutodiffBackend>(
    cfg: &FinetuneConfig,
    sets: &Splits,
    model: Classifier<B>,
    resume: bool,
    world: World,
    device: &B::Device,
    progress: bool,
) -> Result<Option<FinetuneResults>> {
    let decay = (cfg.vit.depth, cfg.layer_decay);
    let (engine, model) = start_engine(cfg, sets, model, decay, (resume, progress), world, device)?;
    train_with_evals(&Evals::new(cfg, sets, device), engine, model)
}

/// Rank 0's evaluations during the run: periodic ones on the selection split (the evaluation
/// split, or held-out train rows when that is `test`), the final one on every evaluation image.
struct Evals<'a, B: AutodiffBackend> {
    cfg: &'a FinetuneConfig,
    sets: &'a Splits,
    device: &'a B::Device,
    /// The selection split's images of periodic evaluations.
    during: Vec<usize>,
    /// Train images whose accuracy (on clean views) is measured beside each evaluation.
    train_probe: Vec<usize>,
    what: String,
}

impl<'a, B: AutodiffBackend> Evals<'a, B> {
    fn new(cfg: &'a FinetuneConfig, sets: &'a Splits, device: &'a B::Device) -> Self {
        let select = sets.select();
        let during = cfg
            .eval_images
            .map_or_else(|| (0..select.samples.len()).collect(), |n| select.spread(n));
        // Train accuracy on clean views of as many train images as the periodic evaluation uses.
        let train_probe = sets.train.spread(during.len().min(TRAIN_PROBE_IMAGES));
        Evals {
            cfg,
            sets,
            device,
            during,
            train_probe,
            what: format!("evaluating {}", cfg.run.select_split()),
        }
    }
}

impl<B: AutodiffBackend> EvalRun<B, Classifier<B>> for Evals<'_, B> {
    type Config = FinetuneConfig;
    type Scores = ClassifyResult;
    type Results = FinetuneResults;

    fn config(&self) -> &FinetuneConfig {
        self.cfg
    }

    fn eval_every(&self) -> u64 {
        self.cfg.eval_every
    }

    /// Soft-target cross-entropy on the micro-batch, mixed (Mixup/CutMix) from its own seed.
    fn loss(&self, model: &Classifier<B>, mut host: HostBatch, micro: Micro) -> Result<Tensor<B, 1>> {
        let (cfg, device) = (self.cfg, self.device);
        let (b, size, classes) = (host.len(), cfg.vit.image_size, cfg.classes);
        let mut mix_rng = ChaCha8Rng::seed_from_u64(mix(cfg.run.seed, micro.index, 7));
        let (targets, _) = mix_batch(&mut host.images, &host.labels, size, classes, &cfg.mixup, &mut mix_rng);
        let x = Tensor::<B, 4>::from_data(TensorData::new(host.images, [b, 3, size, size]), device);
        let t = Tensor::<B, 2>::from_data(TensorData::new(targets, [b, classes]), device);
        let logits = model.forward(x, Mode::train_at(mix(cfg.run.seed, micro.index, 4), host.first));
        Ok(soft_cross_entropy(logits, t))
    }

    /// The evaluation due after `update` and the metrics line on logged steps. Returns the
    /// final evaluation (on every image) at the schedule's last step.
    fn record(
        &self,
        engine: &mut Engine<'_, B, FinetuneConfig>,
        model: &Classifier<B>,
        update: &Update,
        at: EvalAt,
    ) -> Result<Option<ClassifyResult>> {
        let (cfg, sets) = (self.cfg, self.sets);
        let classify_on = |frozen: &Classifier<B::InnerBackend>, set: &ImageSet, picks: &[usize], what: &str| {
            classify(frozen, eval_pass(cfg, set, picks, what), engine.device())
        };
        // `eval`: the metrics line's (the selection split's); `last`: every evaluation image,
        // at the end of the schedule.
        let (eval, train_top1, last) = match at {
            EvalAt::None => (None, None, None),
            EvalAt::Periodic | EvalAt::Final => {
                let frozen = model.valid();
                let last = match at {
                    EvalAt::Final => {
                        let all: Vec<usize> = (0..sets.eval.samples.len()).collect();
                        let what = format!("evaluating {}", cfg.run.eval_split);
                        Some(classify_on(&frozen, &sets.eval, &all, &what)?)
                    }
                    _ => None,
                };
                let e = match (&last, &sets.select) {
                    (Some(last), None) => last.clone(),
                    _ => classify_on(&frozen, sets.select(), &self.during, &self.what)?,
                };
                let t = classify_on(&frozen, &sets.train, &self.train_probe, "train accuracy")?;
                (Some(e), Some(t.top1), last)
            }
        };
        if let Some(loss) = update.logged.as_ref().map(|v| v[0]) {
            let window = engine.window();
            let v = eval.as_ref();
            let line = FinetuneLine {
                step: engine.state.step,
                epoch: engine.state.step as f64 / cfg.schedule.steps_per_epoch as f64,
                loss,
                lr: update.lr,
                grad_norm: update.grad_norm,
                images_per_s: window.images_per_s,
                data_wait_s: window.data_wait_s,
                skipped_steps: engine.state.skipped_steps,
                loader_mb: engine.loader_mb(),
                eval_top1: v.map(|v| v.top1),
                eval_top5: v.map(|v| v.top5),
                eval_loss: v.map(|v| v.loss),
                eval_predictions: v.map(|v| v.predictions.clone()),
                train_top1,
            };
            engine.append(&line)?;
            engine.bar().set_message(format!(
                "loss {:.3} {:.0} img/s{}",
                line.loss,
                line.images_per_s,
                v.map(|v| format!(" {} top-1 {:.1}%", cfg.run.select_split(), 100.0 * v.top1))
                    .unwrap_or_default()
            ));
        }
        Ok(last)
    }

    fn write_final(&self, state: &TrainState, e: ClassifyResult) -> Result<FinetuneResults> {
        write_final(self.cfg, self.sets, state, e)
    }
}

/// `results.json` of a run whose last step scored `e` on every evaluation image.
fn write_final(cfg: &FinetuneConfig, sets: &Splits, state: &TrainState, e: ClassifyResult) -> Result<FinetuneResults> {
    let (best_top1, best_step) = best_eval(&cfg.run.metrics_path());
    let held_out = cfg.run.select_fraction.is_some();
    let start_file = cfg.run.out.join(START_FILE);
    let start: Option<StartEval> = start_file.exists().then(|| read_json(&start_file)).transpose()?;
    let majority_share = label_majority_share(&sets.eval, cfg.classes);
    let results = FinetuneResults {
        kind: "finetune".into(),
        dataset: cfg.run.dataset.clone(),
        model: cfg.model.clone(),
        init: cfg.init.as_ref().map_or_else(|| "random".into(), InitSource::name),
        init_run: cfg.init.as_ref().map(|i| i.run.clone()),
        vocab: cfg.init.as_ref().and_then(|i| i.vocab.clone()),
        pretrain_data: cfg.init.as_ref().and_then(|i| i.pretrain_data.clone()),
        seed: cfg.run.seed,
        epochs: cfg.schedule.epochs,
        steps: state.step,
        eval_split: cfg.run.eval_split.clone(),
        // With held-out selection rows the final test number is not a candidate: the best is
        // the selection split's alone.
        best_top1: match held_out {
            true => best_top1,
            false => best_top1.max(e.top1),
        },
        best_step: if held_out || e.top1 < best_top1 {
            best_step
        } else {
            state.step
        },
        select_split: cfg.run.select_split(),
        seconds: sets.started.elapsed().as_secs_f64(),
        majority_share,
        top_prediction_share: e.majority_share(),
        probe_top1: start.as_ref().map(|s| s.probe_top1),
        start_top1: start.as_ref().map(|s| s.model.top1),
        warnings: diagnose(&e, majority_share, start.as_ref()),
        eval: e,
    };
    write_results(&cfg.run.out, &results)?;
    Ok(results)
}

/// LP-FT: fits a linear probe on the frozen encoder's head features (`fc_norm` of the pooled
/// tokens, clean eval views of up to [`PROBE_IMAGES`] train images) and makes it the head.
fn probe_head<B: AutodiffBackend>(
    cfg: &FinetuneConfig,
    mut model: Classifier<B>,
    train: &ImageSet,
    device: &B::Device,
) -> Result<(Classifier<B>, LinearProbe)> {
    let picks = train.spread(PROBE_IMAGES);
    let (x, y) = head_features(
        &model.valid(),
        eval_pass(cfg, train, &picks, "LP-FT head features"),
        device,
    )?;
    let probe_cfg = ProbeConfig {
        seed: cfg.run.seed,
        ..Default::default()
    };
    let probe = fit_probe::<B::InnerBackend>(&Features { x: &x, y: &y }, cfg.vit.dim, cfg.classes, &probe_cfg, device);
    let (w, b) = probe.folded();
    model.head.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(w, [cfg.vit.dim, cfg.classes]),
        device,
    ));
    model.head.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [cfg.classes]),
        device,
    )));
    Ok((model, probe))
}

/// What an LP-FT run scores before its first update: its probe on the frozen encoder's head
/// features, and the model with that probe as its head, on every image of `eval`. One pass:
/// the model's logits are its head on the same features.
fn evaluate_start<B: AutodiffBackend>(
    cfg: &FinetuneConfig,
    model: &Classifier<B>,
    probe: &LinearProbe,
    eval: &ImageSet,
    device: &B::Device,
) -> Result<StartEval> {
    let frozen = model.valid();
    let all: Vec<usize> = (0..eval.samples.len()).collect();
    let (x, y) = head_features(
        &frozen,
        eval_pass(cfg, eval, &all, "evaluating before the first update"),
        device,
    )?;
    let (probe_top1, _) = probe.accuracy::<B::InnerBackend>(Features { x: &x, y: &y }, device);
    let dim = cfg.vit.dim;
    let mut tally = Tally::default();
    for (rows, labels) in x
        .chunks(dim * cfg.schedule.batch_size)
        .zip(y.chunks(cfg.schedule.batch_size))
    {
        let features = Tensor::from_data(TensorData::new(rows.to_vec(), [labels.len(), dim]), device);
        tally.add(frozen.head.forward(features), labels);
    }
    Ok(StartEval {
        probe_top1,
        model: tally.result(),
    })
}

/// The eval views of `set` at `indices`.
fn eval_pass<'a>(cfg: &FinetuneConfig, set: &'a ImageSet, indices: &'a [usize], what: &'a str) -> Pass<'a> {
    Pass {
        set,
        indices,
        image_size: cfg.vit.image_size,
        crop_ratio: cfg.crop_ratio,
        batch: cfg.schedule.batch_size,
        what,
    }
}

/// The largest class's share of `set`'s labels.
fn label_majority_share(set: &ImageSet, classes: usize) -> f64 {
    let mut counts = vec![0u64; classes];
    for s in &set.samples {
        if let Some(c) = usize::try_from(s.label).ok().and_then(|l| counts.get_mut(l)) {
            *c += 1;
        }
    }
    counts.iter().copied().max().unwrap_or(0) as f64 / set.samples.len().max(1) as f64
}

/// Train images an LP-FT head is fitted on (a spread over the set).
const PROBE_IMAGES: usize = 10_000;

/// At most this many train images measure train accuracy at each evaluation.
const TRAIN_PROBE_IMAGES: usize = 1000;

fn bar_println(progress: bool, line: String) {
    if progress {
        eprintln!("{line}");
    }
}

/// The best periodic top-1 in metrics.jsonl and its step (0, 0 when none).
fn best_eval(path: &std::path::Path) -> (f64, u64) {
    MetricsLog::read::<FinetuneLine>(path)
        .into_iter()
        .filter_map(|l| l.eval_top1.map(|t| (t, l.step)))
        .fold((0.0, 0), |best, (t, s)| if t > best.0 { (t, s) } else { best })
}
