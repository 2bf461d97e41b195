//! The pre-training loop: batches from the loader, targets tokenized on the device, masks
//! drawn per step, gradient accumulation, global-norm clipping, AdamW on a warmup + cosine
//! schedule, metrics.jsonl, atomic checkpoints and resume.
//!
//! Determinism: the model is a function of the seed; batch `i` is a function of (seed, i); the
//! masks and the backend RNG (drop path) of update `t` are seeded from (seed, t). A resumed run
//! therefore continues with the same losses as an uninterrupted one.

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
use crate::data::loader::{HostBatch, Loader};
use crate::error::{Error, Result};
use crate::eval::features::{features, Pass};
use crate::eval::knn::{knn, K, TEMPERATURE};
use crate::model::beit::Beit;
use crate::model::masking::{draw_mask, draw_split};
use crate::model::objective::{Masks, Method, MimBatch, Negatives, Objective};
use crate::model::splitmask::SplitMask;
use crate::model::tokenizer::DeviceTokenizer;
use crate::model::vit::{Mode, Vit};
use crate::seed::mix;
use crate::train::config::{PretrainConfig, Targets};
use crate::train::optim::{accumulate, clip_scale, global_grad_norm, AdamW};
use crate::train::parallel::{numbered_params, on_ranks, Cluster, World, WorldGather};
use crate::train::run_folder::{
    end_step, load_checkpoint, prepare_run_folder, read_state, record_skipped, save_model, start_ranks, trim_metrics,
    MetricsLog, TrainState,
};

/// One line of metrics.jsonl. Non-finite values (a diverging step) are written as `null`
/// (JSON has no NaN) and read back as NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    pub epoch: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub mim: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nce: Option<f64>,
    #[serde(deserialize_with = "nan_from_null")]
    pub mim_accuracy: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub lr: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub grad_norm: f64,
    pub images_per_s: f64,
    /// Seconds of the logging window spent waiting for the loader.
    pub data_wait_s: f64,
    pub skipped_steps: u64,
    /// Most encoded MB the loader's shuffle buffer held so far, when the split is streamed
    /// from its shards (`--cache none`, or `auto` on a split over `--loader-memory-mb`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loader_mb: Option<f64>,
    /// k-NN top-1 of the frozen encoder (train bank, val queries), on monitor steps.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub knn_top1: Option<f64>,
}

fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Option::<f64>::deserialize(d).map(|v| v.unwrap_or(f64::NAN))
}

/// Summary of a finished (or stopped) run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub steps: u64,
    pub last: Option<MetricsLine>,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// Runs (or resumes) pre-training as configured, data-parallel over `devices` (one rank
/// each) where there are several. `progress` draws a progress bar.
pub fn pretrain<B: AutodiffBackend>(
    cfg: &PretrainConfig,
    resume: bool,
    devices: &[B::Device],
    progress: bool,
) -> Result<RunSummary> {
    pretrain_on::<B>(cfg, resume, devices, &Cluster::ONE, progress)
}

/// [`pretrain`] as one node of a multi-node run: node 0 writes the run folder, the others
/// only read it (on resume).
pub fn pretrain_on<B: AutodiffBackend>(
    cfg: &PretrainConfig,
    resume: bool,
    devices: &[B::Device],
    cluster: &Cluster,
    progress: bool,
) -> Result<RunSummary> {
    let _lock = match cluster.node {
        0 => Some(prepare_run_folder(&cfg.run.out, cfg, resume)?),
        _ => None,
    };
    let inputs = Inputs::load(cfg, cluster.node == 0)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.run.seed);
    // One model, replicated: every rank starts from the same weights and parameter ids (the
    // all-reduce matches gradients by id).
    let device = &devices[0];
    let n = devices.len();
    match cfg.method {
        Method::Beit => {
            let model = numbered_params(Beit::<B>::new(&cfg.vit, cfg.vocab_size, &mut rng, device));
            on_ranks::<B, _, _, _>(devices, cluster, vec![model; n], |world, device, model| {
                run(cfg, &inputs, model.fork(device), resume, world, device, progress)
            })
        }
        Method::Splitmask => {
            let model = SplitMask::<B>::new(&cfg.vit, &cfg.splitmask, cfg.vocab_size, &mut rng, device);
            let model = numbered_params(model);
            on_ranks::<B, _, _, _>(devices, cluster, vec![model; n], |world, device, model| {
                run(cfg, &inputs, model.fork(device), resume, world, device, progress)
            })
        }
    }
}

/// What every rank reads, loaded once: the vocabulary, the training split (its rows shared by
/// the ranks' loaders) and the k-NN monitor's queries.
struct Inputs {
    vocab: pipeline::vocab::tokenizer::Vocabulary,
    set: Arc<ImageSet>,
    knn_queries: Option<ImageSet>,
}

impl Inputs {
    /// `writes`: this process records the rows left out (node 0's).
    fn load(cfg: &PretrainConfig, writes: bool) -> Result<Inputs> {
        let (vocab, _) = pipeline::vocab::tokenizer::Vocabulary::load(&cfg.vocab)?;
        let mut set = ImageSet::load_with(&cfg.run.data, "train", &cfg.run.loader)?;
        if let Some(n) = cfg.run.limit_images {
            set = set.truncate(n);
        }
        if cfg.targets == Targets::Pretokenized {
            set.attach_tokens(&cfg.vocab_sha256)?;
        }
        // The k-NN monitor's bank is the training set itself; its queries the evaluation split.
        let knn_queries = if cfg.knn_every > 0 {
            Some(ImageSet::load_with(
                &cfg.run.data,
                &cfg.run.eval_split,
                &cfg.run.loader,
            )?)
        } else {
            None
        };
        for s in std::iter::once(&set).chain(&knn_queries).filter(|_| writes) {
            record_skipped(&cfg.run.out, s)?;
        }
        Ok(Inputs {
            vocab,
            set: Arc::new(set),
            knn_queries,
        })
    }
}

/// The device batch of a host batch: images, their tokens, and the step's masks, drawn per
/// sample from `mask_seed` and its position in the global batch (from `host.first`).
pub fn device_batch<B: Backend>(
    cfg: &PretrainConfig,
    tokenizer: &DeviceTokenizer<B>,
    host: HostBatch,
    mask_seed: u64,
    device: &B::Device,
) -> MimBatch<B> {
    let (b, s, first) = (host.len(), host.size, host.first);
    let images = Tensor::<B, 4>::from_data(TensorData::new(host.images, [b, 3, s, s]), device);
    let targets = match host.tokens {
        Some(t) => {
            let n = t.len() / b;
            Tensor::from_data(TensorData::new(t, [b, n]), device)
        }
        None => tokenizer.tokens(images.clone()),
    };
    let g = cfg.vit.grid();
    // One generator per sample, keyed by its position in the global batch, so a rank holding
    // positions `first..first + b` draws the masks one process with the whole batch draws.
    let rng = |j: usize| ChaCha8Rng::seed_from_u64(mix(mask_seed, first + j as u64, 0));
    let masks = match cfg.method {
        Method::Beit => {
            let m: Vec<Vec<bool>> = (0..b)
                .map(|j| draw_mask(&mut rng(j), g, g, cfg.mask_count, cfg.masking))
                .collect();
            Masks::masked(&m, device)
        }
        Method::Splitmask => {
            let h: Vec<_> = (0..b)
                .map(|j| draw_split(&mut rng(j), g, g, cfg.mask_count, cfg.masking))
                .collect();
            Masks::split(&h, g * g, device)
        }
    };
    MimBatch {
        images,
        targets,
        masks,
        negatives: Negatives::Local,
    }
}

#[derive(Clone, Copy)]
struct Logged {
    loss: f64,
    mim: f64,
    nce: Option<f64>,
    accuracy: f64,
}

/// One rank's training loop (the whole run on one device). Rank 0 alone writes metrics,
/// checkpoints and the best model, draws the progress bar and runs the k-NN monitor.
fn run<B, M>(
    cfg: &PretrainConfig,
    inputs: &Inputs,
    model: M,
    resume: bool,
    world: World,
    device: &B::Device,
    progress: bool,
) -> Result<RunSummary>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B>,
    M::InnerModule: Objective<B::InnerBackend>,
{
    let lead = world.leads();
    let tokenizer = DeviceTokenizer::<B>::new(&inputs.vocab, cfg.vit.patch_size, device)?;
    let set = &inputs.set;
    let schedule = cfg.schedule.cosine();
    let mut opt = AdamW::<B>::new(cfg.schedule.adamw);
    let mut model = model;
    let mut state = TrainState::new();
    let ckpt = cfg.run.checkpoint_path();
    let metrics_path = cfg.run.metrics_path();
    let resumed;
    (model, resumed) = start_ranks(&ckpt, cfg, model, &mut opt, resume, &world, device)?;
    if let Some(resumed) = resumed {
        state = resumed;
        if lead {
            trim_metrics(&metrics_path, state.step)?;
            // best.safetensors may be newer than the checkpoint; its score is the one to beat.
            let best = cfg.run.best_path();
            if best.exists() {
                state.best_knn = read_state(&best)?.best_knn;
            }
        }
    }
    let end = cfg.schedule.end();
    let accum = cfg.schedule.accum as u64;
    let spawn = |seed: u64, step: u64| {
        let batch = cfg.schedule.batch_size;
        Loader::spawn(
            set.clone(),
            cfg.augment,
            batch,
            world.part(),
            seed,
            step * accum,
            cfg.run.prefetch,
        )
    };
    let mut loader = spawn(cfg.run.seed, state.step)?;
    let gather =
        (world.ranks > 1 && cfg.global_negatives).then(|| Arc::new(WorldGather::<B>::new(world, device.clone())));
    let negatives = match &gather {
        Some(g) => Negatives::Global(g.clone()),
        None => Negatives::Local,
    };
    let mut metrics = lead.then(|| MetricsLog::open(&metrics_path)).transpose()?;
    let bar = crate::progress::steps(progress && lead, cfg.schedule.total_steps, state.step);
    let started = Instant::now();
    let (mut window_start, mut window_images, mut window_wait) = (Instant::now(), 0usize, 0.0f64);
    let mut bad_in_row = 0u32;
    let mut last_line = None;
    let mut images_done = 0usize;
    while state.step < end {
        let step = state.step;
        let knn_now = inputs.knn_queries.is_some() && ((step + 1).is_multiple_of(cfg.knn_every) || step + 1 == end);
        let log_now = (step + 1).is_multiple_of(cfg.run.log_every) || step + 1 == end || knn_now;
        // This rank's micro-batches: their summed gradients, the first one's logged values.
        let local = (|| -> Result<(GradientsParams, Option<Logged>, u64)> {
            let mut grads: Option<GradientsParams> = None;
            let mut logged = None;
            let mut epoch = 0;
            for micro in 0..accum {
                let t0 = Instant::now();
                let host = loader.next_batch()?;
                window_wait += t0.elapsed().as_secs_f64();
                epoch = host.epoch;
                let index = step * accum + micro;
                debug_assert_eq!(host.index, index);
                // The ranks run in lockstep: each update covers every rank's share.
                let images = host.len() * world.ranks;
                let first = host.first;
                let mut batch = device_batch::<B>(cfg, &tokenizer, host, mix(cfg.run.seed, index, 2), device);
                batch.negatives = negatives.clone();
                let out = model.forward(&batch, Mode::train_at(mix(cfg.run.seed, index, 4), first));
                if let Some(g) = &gather {
                    g.failure()?;
                }
                if log_now && micro == 0 {
                    logged = Some(Logged {
                        loss: out.loss.clone().into_scalar().elem::<f64>(),
                        mim: out.mim.clone().into_scalar().elem::<f64>(),
                        nce: out.nce.clone().map(|t| t.into_scalar().elem::<f64>()),
                        accuracy: out.accuracy().into_scalar().elem::<f64>(),
                    });
                }
                let g = GradientsParams::from_grads(out.loss.backward(), &model);
                grads = Some(match grads {
                    Some(acc) => accumulate::<B, M>(&model, acc, g),
                    None => g,
                });
                window_images += images;
                images_done += images;
            }
            Ok((grads.expect("accum >= 1"), logged, epoch))
        })();
        let (grads, logged, epoch) = world.agree::<B::InnerBackend, _>(local, device)?;
        // Every rank now holds the same mean gradient, so the guard below decides alike.
        let mut grads = world.mean_grads::<B>(grads)?;
        let logged = match logged {
            Some(l) => Some(l.mean_over::<B::InnerBackend>(&world, device)?),
            None => None,
        };
        let k = accum as f64;
        let norm = global_grad_norm::<B, M>(&model, &grads) / k;
        let lr = schedule.lr(step);
        if norm.is_finite() {
            let scale = clip_scale(norm, cfg.schedule.clip_grad) / k;
            model = opt.step(model, &mut grads, lr, scale, &|_| 1.0);
            state.optimizer_steps += 1;
            bad_in_row = 0;
        } else {
            state.skipped_steps += 1;
            bad_in_row += 1;
            if bad_in_row >= cfg.max_bad_steps {
                let rollbacks = state.rollbacks + 1;
                // Without a checkpoint, or when rolling back keeps ending here, stop.
                if !ckpt.exists() || rollbacks > cfg.max_bad_steps as u64 {
                    return Err(Error::Diverged {
                        step,
                        bad: bad_in_row,
                        rollbacks: state.rollbacks,
                    });
                }
                let (skipped, best) = (state.skipped_steps, state.best_knn);
                (model, state) = load_checkpoint(&ckpt, model, &mut opt, device)?;
                if lead {
                    trim_metrics(&metrics_path, state.step)?;
                    metrics = Some(MetricsLog::open(&metrics_path)?);
                }
                state.skipped_steps = skipped;
                state.best_knn = best;
                state.rollbacks = rollbacks;
                bar.println(format!(
                    "{bad_in_row} non-finite updates in a row at step {step}: rolled back to step {}",
                    state.step
                ));
                // The rolled-back steps see other batches (the loader's seed changes; masks and
                // drop paths keep their per-step seeds).
                bad_in_row = 0;
                drop(loader);
                loader = spawn(mix(cfg.run.seed, rollbacks, 3), state.step)?;
                continue;
            }
        }
        state.step += 1;
        bar.inc(1);
        // Rank 0's writes of this step; an error is held for `end_step`, where the ranks agree.
        let wrote = match metrics.as_mut() {
            None => Ok(()),
            Some(metrics) => (|| -> Result<()> {
                let knn_top1 = match (&inputs.knn_queries, knn_now) {
                    (Some(queries), true) => Some(knn_monitor(cfg, model.valid().encoder(), set, queries, device)?),
                    _ => None,
                };
                if let Some(l) = logged {
                    let secs = window_start.elapsed().as_secs_f64();
                    let per_epoch = cfg.schedule.steps_per_epoch.max(1);
                    let line = MetricsLine {
                        step: state.step,
                        epoch: epoch as f64 + (step % per_epoch) as f64 / cfg.schedule.steps_per_epoch as f64,
                        loss: l.loss,
                        mim: l.mim,
                        nce: l.nce,
                        mim_accuracy: l.accuracy,
                        lr,
                        grad_norm: norm,
                        images_per_s: window_images as f64 / secs.max(1e-9),
                        data_wait_s: window_wait,
                        skipped_steps: state.skipped_steps,
                        loader_mb: (!set.cached()).then(|| loader.meter().peak_bytes() as f64 / 1e6),
                        knn_top1,
                    };
                    metrics.append(&line)?;
                    bar.set_message(format!(
                        "loss {:.3} mim {:.3}{} acc {:.3} {:.0} img/s{}",
                        line.loss,
                        line.mim,
                        line.nce.map(|n| format!(" nce {n:.3}")).unwrap_or_default(),
                        line.mim_accuracy,
                        line.images_per_s,
                        line.knn_top1
                            .map(|k| format!(" knn {:.1}%", 100.0 * k))
                            .unwrap_or_default()
                    ));
                    last_line = Some(line);
                }
                if let Some(top1) = knn_top1 {
                    // The overfitting guard of long schedules (the paper's Fig. 6): keep the
                    // model at the best k-NN so far, beside the last checkpoint.
                    if state.best_knn.is_none_or(|(best, _)| top1 > best) {
                        state.best_knn = Some((top1, state.step));
                        save_model(&cfg.run.best_path(), cfg, &model, &state)?;
                    }
                }
                Ok(())
            })(),
        };
        if logged.is_some() {
            (window_start, window_images, window_wait) = (Instant::now(), 0, 0.0);
        }
        let due = state.step.is_multiple_of(cfg.run.checkpoint_every) || state.step == end;
        end_step(
            &ckpt,
            cfg,
            &model,
            &opt,
            &state,
            (due, state.step < end),
            wrote,
            &world,
            device,
        )
        .inspect_err(|_| bar.abandon())?;
    }
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    Ok(RunSummary {
        steps: state.step,
        last: last_line,
        seconds,
        images_per_s: images_done as f64 / seconds.max(1e-9),
    })
}

impl Logged {
    /// The mean over the ranks of each logged value (the global batch's, as the ranks' shares
    /// are equal).
    fn mean_over<B: Backend>(self, world: &World, device: &B::Device) -> Result<Logged> {
        if world.ranks == 1 {
            return Ok(self);
        }
        let m = world.mean::<B>(&[self.loss, self.mim, self.nce.unwrap_or(0.0), self.accuracy], device)?;
        Ok(Logged {
            loss: m[0],
            mim: m[1],
            nce: self.nce.map(|_| m[2]),
            accuracy: m[3],
        })
    }
}

/// k-NN top-1 of the frozen encoder: `knn_images` train images (spread over the set) vote
/// for as many val images (eval views, 0.875 center crop).
fn knn_monitor<B: Backend>(
    cfg: &PretrainConfig,
    encoder: &Vit<B>,
    bank: &ImageSet,
    queries: &ImageSet,
    device: &B::Device,
) -> Result<f64> {
    let features = |set: &ImageSet, what: &str| {
        let indices = set.spread(cfg.knn_images);
        let pass = Pass {
            set,
            indices: &indices,
            image_size: cfg.vit.image_size,
            crop_ratio: 0.875,
            batch: cfg.schedule.batch_size,
            what,
        };
        features(encoder, pass, device)
    };
    let (bf, bl) = features(bank, "k-NN bank")?;
    let (qf, ql) = features(queries, "k-NN queries")?;
    Ok(knn(&bf, &bl, &qf, &ql, cfg.vit.dim, K, TEMPERATURE).top1)
}
