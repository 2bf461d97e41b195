//! The fine-tuning loop (BEiT's recipe): a pre-trained (or random-init) encoder with a pooled
//! classification head, RandAugment + random-erasing views, mixup / cutmix with label
//! smoothing, AdamW with layer-wise learning-rate decay on a warmup + cosine schedule, periodic
//! top-1 / top-5 on the val split, resumable checkpoints, and `results.json` at the end.
//!
//! Determinism follows the pre-training loop: batch `i` is a function of (seed, i), and the
//! mixing and drop-path draws of step `t` of (seed, t).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::images::ImageSet;
use crate::data::loader::Loader;
use crate::data::mixup::mix_batch;
use crate::error::{Error, Result};
use crate::eval::accuracy::{classify, ClassifyResult};
use crate::model::classifier::Classifier;
use crate::model::losses::soft_cross_entropy;
use crate::model::vit::Mode;
use crate::seed::mix;
use crate::train::config::FinetuneConfig;
use crate::train::optim::{clip_scale, global_grad_norm, layer_decay_scale, AdamW};
use crate::train::pretrained::{load_encoder, pretrained_encoder};
use crate::train::run_folder::{
    load_checkpoint, prepare_run_folder, read_results, save_checkpoint, trim_metrics, write_results, MetricsLog,
    TrainState,
};

/// Non-finite updates in a row before fine-tuning gives up (it has no rollback: its
/// learning rates are small and a diverging recipe needs a lower one, not a retry).
const MAX_BAD_STEPS: u32 = 3;

/// One line of a fine-tuning run's metrics.jsonl; the `val_*` fields on evaluation steps.
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
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_top1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_top5: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
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
    pub seed: u64,
    pub epochs: u64,
    pub steps: u64,
    /// The final model on every val image.
    pub val: ClassifyResult,
    /// Best top-1 among the periodic evaluations (possibly on a val subset).
    pub best_top1: f64,
    pub best_step: u64,
    pub seconds: f64,
}

/// Fine-tunes (or resumes) as configured; writes `results.json` when the schedule ends.
/// Returns `None` when `stop_after` ended the run early.
pub fn finetune<B: AutodiffBackend>(
    cfg: &FinetuneConfig,
    resume: bool,
    device: &B::Device,
    progress: bool,
) -> Result<Option<FinetuneResults>> {
    prepare_run_folder(&cfg.run.out, cfg, resume)?;
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.run.seed);
    let mut model = Classifier::<B>::new(&cfg.vit, cfg.classes, &mut rng, device);
    let ckpt = cfg.run.checkpoint_path();
    let metrics_path = cfg.run.metrics_path();
    let mut opt = AdamW::<B>::new(cfg.schedule.adamw);
    let mut state = TrainState {
        step: 0,
        optimizer_steps: 0,
        skipped_steps: 0,
        rollbacks: 0,
    };
    if resume && ckpt.exists() {
        (model, state) = load_checkpoint(&ckpt, model, &mut opt, device)?;
        trim_metrics(&metrics_path, state.step)?;
    } else if let Some(init) = &cfg.init {
        let (pre, encoder) = pretrained_encoder(&init.run, &cfg.vit)?;
        model = load_encoder(model, &encoder, &pre.run.checkpoint_path(), device)?;
    }
    let mut train = ImageSet::load(&cfg.run.data, "train")?;
    let mut val = ImageSet::load(&cfg.run.data, "val")?;
    for set in [&mut train, &mut val] {
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
    }
    if let Some(n) = cfg.run.limit_images {
        train = train.truncate(n);
    }
    let val_during = cfg
        .eval_images
        .map_or_else(|| (0..val.samples.len()).collect(), |n| val.spread(n));
    let schedule = cfg.schedule.cosine();
    let depth = cfg.vit.depth;
    let decay = cfg.layer_decay;
    let lr_scale = move |path: &str| layer_decay_scale(path, depth, decay);
    let end = cfg.schedule.end();
    let mut loader = Loader::spawn(
        Arc::new(train),
        cfg.augment,
        cfg.schedule.batch_size,
        cfg.run.seed,
        state.step,
        cfg.run.prefetch,
    )?;
    let mut metrics = MetricsLog::open(&metrics_path)?;
    let bar = crate::progress::steps(progress, cfg.schedule.total_steps, state.step);
    let (mut window_start, mut window_images, mut window_wait) = (Instant::now(), 0usize, 0.0f64);
    let mut bad_in_row = 0u32;
    let size = cfg.vit.image_size;
    while state.step < end {
        let step = state.step;
        let t0 = Instant::now();
        let mut host = loader.next_batch()?;
        window_wait += t0.elapsed().as_secs_f64();
        let b = host.len();
        let mut mix_rng = ChaCha8Rng::seed_from_u64(mix(cfg.run.seed, step, 7));
        let (targets, _) = mix_batch(
            &mut host.images,
            &host.labels,
            size,
            cfg.classes,
            &cfg.mixup,
            &mut mix_rng,
        );
        let x = Tensor::<B, 4>::from_data(TensorData::new(host.images, [b, 3, size, size]), device);
        let t = Tensor::<B, 2>::from_data(TensorData::new(targets, [b, cfg.classes]), device);
        let logits = model.forward(
            x,
            Mode::Train {
                seed: mix(cfg.run.seed, step, 4),
            },
        );
        let loss = soft_cross_entropy(logits, t);
        let done = step + 1 == cfg.schedule.total_steps;
        let eval_now = !done && ((step + 1).is_multiple_of(cfg.eval_every) || step + 1 == end);
        let log_now = (step + 1).is_multiple_of(cfg.run.log_every) || step + 1 == end || eval_now || done;
        let loss_value = log_now.then(|| loss.clone().into_scalar().elem::<f64>());
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = global_grad_norm::<B, _>(&model, &grads);
        let lr = schedule.lr(step);
        if norm.is_finite() {
            model = opt.step(
                model,
                &mut grads,
                lr,
                clip_scale(norm, cfg.schedule.clip_grad),
                &lr_scale,
            );
            state.optimizer_steps += 1;
            bad_in_row = 0;
        } else {
            state.skipped_steps += 1;
            bad_in_row += 1;
            if bad_in_row >= MAX_BAD_STEPS {
                return Err(Error::Diverged {
                    step,
                    bad: bad_in_row,
                    rollbacks: 0,
                });
            }
        }
        state.step += 1;
        window_images += b;
        bar.inc(1);
        // Periodic evaluations may use a val subset; the final one uses every val image.
        let val_result = if done {
            let all: Vec<usize> = (0..val.samples.len()).collect();
            Some(classify(
                &model.valid(),
                &val,
                &all,
                size,
                cfg.crop_ratio,
                cfg.schedule.batch_size,
                device,
            )?)
        } else if eval_now {
            Some(classify(
                &model.valid(),
                &val,
                &val_during,
                size,
                cfg.crop_ratio,
                cfg.schedule.batch_size,
                device,
            )?)
        } else {
            None
        };
        if let Some(loss) = loss_value {
            let secs = window_start.elapsed().as_secs_f64();
            let v = val_result;
            let line = FinetuneLine {
                step: state.step,
                epoch: state.step as f64 / cfg.schedule.steps_per_epoch as f64,
                loss,
                lr,
                grad_norm: norm,
                images_per_s: window_images as f64 / secs.max(1e-9),
                data_wait_s: window_wait,
                skipped_steps: state.skipped_steps,
                val_top1: v.map(|v| v.top1),
                val_top5: v.map(|v| v.top5),
                val_loss: v.map(|v| v.loss),
            };
            metrics.append(&line)?;
            bar.set_message(format!(
                "loss {:.3} {:.0} img/s{}",
                line.loss,
                line.images_per_s,
                v.map(|v| format!(" val top-1 {:.1}%", 100.0 * v.top1))
                    .unwrap_or_default()
            ));
            (window_start, window_images, window_wait) = (Instant::now(), 0, 0.0);
        }
        if state.step.is_multiple_of(cfg.run.checkpoint_every) || state.step == end {
            save_checkpoint(&ckpt, cfg, &model, &opt, &state)?;
        }
        if let (true, Some(val)) = (done, val_result) {
            bar.finish();
            let (best_top1, best_step) = best_eval(&metrics_path);
            let results = FinetuneResults {
                kind: "finetune".into(),
                dataset: cfg.run.dataset.clone(),
                model: cfg.model.clone(),
                init: cfg.init.as_ref().map_or("random", |i| i.method.name()).into(),
                init_run: cfg.init.as_ref().map(|i| i.run.clone()),
                vocab: cfg.init.as_ref().map(|i| i.vocab.clone()),
                seed: cfg.run.seed,
                epochs: cfg.schedule.epochs,
                steps: state.step,
                val,
                best_top1: best_top1.max(val.top1),
                best_step: if val.top1 >= best_top1 { state.step } else { best_step },
                seconds: started.elapsed().as_secs_f64(),
            };
            write_results(&cfg.run.out, &results)?;
            return Ok(Some(results));
        }
    }
    bar.finish();
    if state.step == cfg.schedule.total_steps {
        // Resumed after the end: the results are already written.
        return read_results(&cfg.run.out).map(Some);
    }
    Ok(None)
}

fn bar_println(progress: bool, line: String) {
    if progress {
        eprintln!("{line}");
    }
}

/// The best periodic val top-1 in metrics.jsonl and its step (0, 0 when none).
fn best_eval(path: &std::path::Path) -> (f64, u64) {
    MetricsLog::read::<FinetuneLine>(path)
        .into_iter()
        .filter_map(|l| l.val_top1.map(|t| (t, l.step)))
        .fold((0.0, 0), |best, (t, s)| if t > best.0 { (t, s) } else { best })
}
