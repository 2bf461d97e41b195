//! The training engine the pre-training and fine-tuning loops share, as MAE's
//! `engine_pretrain.py` and `engine_finetune.py` share `misc.py`: gradient accumulation over
//! micro-batches, the ranks' agreement and the gradient all-reduce, global-norm clipping, the
//! non-finite guard (failure or rollback), AdamW on the warmup + cosine schedule, the logging
//! window, checkpoints and signals, and the progress bar.
//!
//! A loop supplies what differs: the micro-step (a host batch to a loss and, on logged steps,
//! the values it logs) and what it does after an update (its metrics line, evaluations).
//!
//! ```text
//! let (mut engine, mut model) = Engine::start(setup, model, world, device)?;
//! while !engine.done() {
//!     let update;
//!     (model, update) = engine.update(model, extra_log, |model, host, micro| ...)?;
//!     let Some(update) = update else { continue }; // rolled back
//!     let wrote = /* rank 0: metrics line, evaluations */;
//!     engine.end_step(&model, wrote, Signals::Stop)?;
//! }
//! ```

use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::data::augment::AugmentConfig;
use crate::data::images::ImageSet;
use crate::data::loader::{HostBatch, Loader};
use crate::error::{Error, Result};
use crate::seed::mix;
use crate::train::config::{ClipMode, RunConfig, Schedule};
use crate::train::optim::{accumulate, clip_scale, global_grad_norm, AdamW, LrScale};
use crate::train::parallel::World;
use crate::train::run_folder::{load_checkpoint, save_checkpoint, start_ranks, trim_metrics, MetricsLog, TrainState};
use crate::train::schedule::LrSchedule;

/// What the engine reads from a loop's resolved configuration (also written into checkpoints).
pub trait TrainConfig: Serialize {
    fn run(&self) -> &RunConfig;
    fn schedule(&self) -> &Schedule;
    /// The training views.
    fn augment(&self) -> AugmentConfig;
}

/// What the engine does after `after` non-finite updates in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    /// Stop with [`Error::Diverged`] (fine-tuning: its learning rates are small, and a recipe
    /// that diverges needs a lower one, not a retry).
    Fail { after: u32 },
    /// Go back to the last checkpoint and go on with other batches; stop when there is no
    /// checkpoint or after `after` rollbacks.
    Rollback { after: u32 },
}

/// How a loop sets the engine up.
pub struct Setup<'a, C> {
    pub cfg: &'a C,
    /// The training split (shared by the ranks' loaders).
    pub set: Arc<ImageSet>,
    /// Continue from the run's checkpoint where there is one.
    pub resume: bool,
    /// Draw a progress bar (rank 0).
    pub progress: bool,
    pub divergence: Divergence,
    /// Per-parameter learning-rate factor (layer-wise decay), by parameter path.
    pub lr_scale: Box<LrScale>,
}

/// Where a micro-batch sits in the run.
#[derive(Debug, Clone, Copy)]
pub struct Micro {
    /// Position of the micro-batch in the run (0-based over all updates): what its seeds
    /// (masks, mixing, drop path) derive from.
    pub index: u64,
    /// Whether the loop should return the values it logs (the update's first micro-batch on a
    /// logged step).
    pub log: bool,
}

/// A micro-batch's loss and, when [`Micro::log`], the values the loop logs.
pub struct MicroOutput<B: Backend> {
    pub loss: Tensor<B, 1>,
    pub logged: Option<Vec<f64>>,
    /// Values to average over the update's global batch (every micro-batch of every rank):
    /// what a method's `after_update` reads (DINO's teacher batch mean).
    pub stats: Option<Vec<f64>>,
}

/// An update the engine made.
#[derive(Debug, Clone)]
pub struct Update {
    /// 0-based index of the update (the state's step is one past it).
    pub step: u64,
    pub lr: f64,
    /// Global gradient norm before clipping (NaN or infinite on a skipped update).
    pub grad_norm: f64,
    /// The loader's epoch at the update's last micro-batch.
    pub epoch: u64,
    /// The logged values of the first micro-batch, each the mean over the ranks (on logged
    /// steps).
    pub logged: Option<Vec<f64>>,
    /// The micro-batches' [`MicroOutput::stats`], averaged over the micro-batches and ranks.
    pub stats: Option<Vec<f64>>,
}

/// Throughput since the last logged step.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub images_per_s: f64,
    /// Seconds spent waiting for the loader.
    pub data_wait_s: f64,
}

/// Whether a signal caught by the end of a step stops the run there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signals {
    /// Stop after the checkpoint (the run resumes from it).
    Stop,
    /// Not yet: the loop has work left after this step (the results of the last one).
    Defer,
}

/// How much a finished (or stopped) loop did.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub steps: u64,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// One rank's training engine. Rank 0 alone writes metrics and checkpoints and draws the bar.
pub struct Engine<'a, B: AutodiffBackend, C> {
    cfg: &'a C,
    set: Arc<ImageSet>,
    world: World,
    device: B::Device,
    opt: AdamW<B>,
    lr_scale: Box<LrScale>,
    schedule: LrSchedule,
    divergence: Divergence,
    /// Training progress, checkpointed with the model; loops keep their own records in it
    /// (the best k-NN).
    pub state: TrainState,
    resumed: bool,
    loader: Loader,
    metrics: Option<MetricsLog>,
    bar: ProgressBar,
    window: WindowCounter,
    logged_last: bool,
    bad_in_row: u32,
    images_done: usize,
    started: Instant,
}

#[derive(Debug, Clone, Copy)]
struct WindowCounter {
    start: Instant,
    images: usize,
    wait_s: f64,
}

impl WindowCounter {
    fn new() -> Self {
        WindowCounter {
            start: Instant::now(),
            images: 0,
            wait_s: 0.0,
        }
    }
}

impl<'a, B: AutodiffBackend, C: TrainConfig> Engine<'a, B, C> {
    /// Starts every rank from the run's checkpoint (with `resume`) or from `model`, opens the
    /// metrics log (trimmed to the checkpoint's step) and the loader at the state's step.
    pub fn start<M: AutodiffModule<B>>(
        setup: Setup<'a, C>,
        model: M,
        world: World,
        device: &B::Device,
    ) -> Result<(Self, M)> {
        let cfg = setup.cfg;
        let run = cfg.run();
        let mut opt = AdamW::<B>::new(cfg.schedule().adamw);
        if cfg.schedule().clip_mode == ClipMode::PerParameter {
            opt.clip_each = cfg.schedule().clip_grad;
        }
        let (model, resumed) = start_ranks(
            &run.checkpoint_path(),
            cfg,
            model,
            &mut opt,
            setup.resume,
            &world,
            device,
        )?;
        let state = resumed.unwrap_or_default();
        let lead = world.leads();
        if lead && resumed.is_some() {
            trim_metrics(&run.metrics_path(), state.step)?;
        }
        let loader = spawn_loader(cfg, &setup.set, &world, run.seed, state.step)?;
        let engine = Engine {
            cfg,
            set: setup.set,
            device: device.clone(),
            opt,
            lr_scale: setup.lr_scale,
            schedule: cfg.schedule().lr_schedule(),
            divergence: setup.divergence,
            state,
            resumed: resumed.is_some(),
            loader,
            metrics: lead.then(|| MetricsLog::open(&run.metrics_path())).transpose()?,
            bar: crate::progress::steps(setup.progress && lead, cfg.schedule().total_steps, state.step),
            world,
            window: WindowCounter::new(),
            logged_last: false,
            bad_in_row: 0,
            images_done: 0,
            started: Instant::now(),
        };
        Ok((engine, model))
    }

    /// Whether the schedule (or `--stop-after`) has ended.
    pub fn done(&self) -> bool {
        self.state.step >= self.cfg.schedule().end()
    }

    /// Whether this run continues from a checkpoint.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Whether this rank writes the run folder (rank 0).
    pub fn leads(&self) -> bool {
        self.world.leads()
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// Whether update `step` is logged whatever the loop adds (every `log_every` and the last).
    pub fn logs(&self, step: u64) -> bool {
        (step + 1).is_multiple_of(self.cfg.run().log_every) || step + 1 == self.cfg.schedule().end()
    }

    /// One update: `micro` on each of this rank's micro-batches, the summed gradients averaged
    /// over the ranks, clipped, and applied by AdamW at the schedule's learning rate; a
    /// non-finite gradient skips the update. `log` asks for logged values beyond
    /// [`Engine::logs`]. Returns `None` where the update rolled the run back to its checkpoint
    /// (the loop goes on from the restored step).
    pub fn update<M, F>(&mut self, model: M, log: bool, mut micro: F) -> Result<(M, Option<Update>)>
    where
        M: AutodiffModule<B>,
        F: FnMut(&M, HostBatch, Micro) -> Result<MicroOutput<B>>,
    {
        let step = self.state.step;
        let log = log || self.logs(step);
        let local = self.micro_batches(&model, step, log, &mut micro);
        let (grads, logged, epoch, stats) = self.world.agree::<B::InnerBackend, _>(local, &self.device)?;
        // Every rank now holds the same mean gradient, so the guard below decides alike.
        let mut grads = self.world.mean_grads::<B>(grads)?;
        let logged = match logged {
            Some(values) => Some(self.world.mean::<B::InnerBackend>(&values, &self.device)?),
            None => None,
        };
        let stats = match stats {
            Some(values) => Some(self.world.mean::<B::InnerBackend>(&values, &self.device)?),
            None => None,
        };
        let k = self.cfg.schedule().accum as f64;
        let grad_norm = global_grad_norm::<B, M>(&model, &grads) / k;
        let lr = self.schedule.lr(step);
        let model = if grad_norm.is_finite() {
            let clip = match self.opt.clip_each {
                Some(_) => None,
                None => self.cfg.schedule().clip_grad,
            };
            let scale = clip_scale(grad_norm, clip) / k;
            self.bad_in_row = 0;
            self.state.optimizer_steps += 1;
            self.opt.settings.weight_decay = self.cfg.schedule().weight_decay(step);
            self.opt.step(model, &mut grads, lr, scale, &self.lr_scale)
        } else {
            match self.non_finite(model, step)? {
                Guarded::Kept(model) => model,
                Guarded::RolledBack(model) => return Ok((model, None)),
            }
        };
        self.state.step += 1;
        self.bar.inc(1);
        self.logged_last = logged.is_some();
        let update = Update {
            step,
            lr,
            grad_norm,
            epoch,
            logged,
            stats,
        };
        Ok((model, Some(update)))
    }

    /// This rank's micro-batches of update `step`: their summed gradients, the first one's
    /// logged values, the last one's epoch and the mean of their stats.
    fn micro_batches<M, F>(&mut self, model: &M, step: u64, log: bool, micro: &mut F) -> Result<MicroBatches>
    where
        M: AutodiffModule<B>,
        F: FnMut(&M, HostBatch, Micro) -> Result<MicroOutput<B>>,
    {
        let accum = self.cfg.schedule().accum as u64;
        let (mut grads, mut logged, mut epoch) = (None::<GradientsParams>, None, 0);
        let mut stats: Option<Vec<f64>> = None;
        for m in 0..accum {
            let t0 = Instant::now();
            let host = self.loader.next_batch()?;
            self.window.wait_s += t0.elapsed().as_secs_f64();
            let index = step * accum + m;
            debug_assert_eq!(host.index, index);
            epoch = host.epoch;
            // The ranks run in lockstep: each update covers every rank's share.
            let images = host.len() * self.world.ranks;
            let out = micro(
                model,
                host,
                Micro {
                    index,
                    log: log && m == 0,
                },
            )?;
            logged = logged.or(out.logged);
            if let Some(s) = out.stats {
                let sum = stats.get_or_insert_with(|| vec![0.0; s.len()]);
                sum.iter_mut().zip(&s).for_each(|(a, v)| *a += v / accum as f64);
            }
            let g = GradientsParams::from_grads(out.loss.backward(), model);
            grads = Some(match grads {
                Some(acc) => accumulate::<B, M>(model, acc, g),
                None => g,
            });
            self.window.images += images;
            self.images_done += images;
        }
        Ok((grads.expect("accum >= 1"), logged, epoch, stats))
    }

    /// A skipped update: counted, and after too many in a row a failure or a rollback.
    fn non_finite<M: AutodiffModule<B>>(&mut self, model: M, step: u64) -> Result<Guarded<M>> {
        self.state.skipped_steps += 1;
        self.bad_in_row += 1;
        let bad = self.bad_in_row;
        match self.divergence {
            Divergence::Fail { after } if bad >= after => Err(Error::Diverged {
                step,
                bad,
                rollbacks: 0,
            }),
            Divergence::Rollback { after } if bad >= after => {
                self.roll_back(model, step, after).map(Guarded::RolledBack)
            }
            _ => Ok(Guarded::Kept(model)),
        }
    }

    /// Restores the last checkpoint, keeping the counts of skipped updates and rollbacks and
    /// the best k-NN; the restored steps then see other batches (the loader's seed changes;
    /// masks and drop paths keep their per-step seeds).
    fn roll_back<M: AutodiffModule<B>>(&mut self, model: M, step: u64, most: u32) -> Result<M> {
        let run = self.cfg.run();
        let ckpt = run.checkpoint_path();
        let rollbacks = self.state.rollbacks + 1;
        // Without a checkpoint, or when rolling back keeps ending here, stop.
        if !ckpt.exists() || rollbacks > u64::from(most) {
            return Err(Error::Diverged {
                step,
                bad: self.bad_in_row,
                rollbacks: self.state.rollbacks,
            });
        }
        let kept = self.state;
        let (model, state) = load_checkpoint(&ckpt, model, &mut self.opt, &self.device)?;
        self.state = TrainState {
            skipped_steps: kept.skipped_steps,
            best_knn: kept.best_knn,
            rollbacks,
            ..state
        };
        if self.metrics.is_some() {
            trim_metrics(&run.metrics_path(), state.step)?;
            self.metrics = Some(MetricsLog::open(&run.metrics_path())?);
        }
        self.bar.println(format!(
            "{} non-finite updates in a row at step {step}: rolled back to step {}",
            self.bad_in_row, state.step
        ));
        self.bad_in_row = 0;
        self.bar.set_position(state.step);
        self.loader = spawn_loader(
            self.cfg,
            &self.set,
            &self.world,
            mix(run.seed, rollbacks, 3),
            state.step,
        )?;
        Ok(model)
    }

    /// Throughput since the last logged step.
    pub fn window(&self) -> Window {
        let secs = self.window.start.elapsed().as_secs_f64();
        Window {
            images_per_s: self.window.images as f64 / secs.max(1e-9),
            data_wait_s: self.window.wait_s,
        }
    }

    /// Most encoded MB the loader's shuffle buffer held so far, where the split is streamed.
    pub fn loader_mb(&self) -> Option<f64> {
        (!self.set.cached()).then(|| self.loader.meter().peak_bytes() as f64 / 1e6)
    }

    /// Appends a line to metrics.jsonl (rank 0; the other ranks write nothing).
    pub fn append<T: Serialize>(&mut self, line: &T) -> Result<()> {
        match self.metrics.as_mut() {
            Some(metrics) => metrics.append(line),
            None => Ok(()),
        }
    }

    /// The end of every step, on every rank. The first rank of each process polls for a stop
    /// signal (under [`Signals::Stop`]); rank 0, the only one that writes, writes the
    /// checkpoint when due (every `checkpoint_every` and at the end) or when a signal asked the
    /// run to stop; `wrote` is what its other writes of the step (metrics, best model) came to.
    /// With several ranks they then agree, so all go on or all stop at this step: on a stop
    /// every rank returns [`Error::Interrupted`] (the command exits saying how to resume, on
    /// every node) after rank 0 has written the checkpoint; on a failed write rank 0 returns
    /// its error, the others [`Error::PeerFailed`].
    pub fn end_step<M: AutodiffModule<B>>(&mut self, model: &M, wrote: Result<()>, signals: Signals) -> Result<()> {
        if self.logged_last {
            self.window = WindowCounter::new();
        }
        let step = self.state.step;
        let end = self.cfg.schedule().end();
        let due = step.is_multiple_of(self.cfg.run().checkpoint_every) || step == end;
        let may_stop = signals == Signals::Stop && step < end;
        self.checkpoint_and_signals(model, wrote, due, may_stop)
            .inspect_err(|_| self.bar.abandon())
    }

    fn checkpoint_and_signals<M: AutodiffModule<B>>(
        &self,
        model: &M,
        wrote: Result<()>,
        due: bool,
        may_stop: bool,
    ) -> Result<()> {
        let (world, state, path) = (&self.world, &self.state, self.cfg.run().checkpoint_path());
        let polled = match world.polls_signals() && may_stop {
            true => pipeline::interrupt::safe_point("step", state.step),
            false => None,
        };
        let save = || save_checkpoint(&path, self.cfg, model, &self.opt, state);
        let mut wrote = match world.leads() && (due || polled.is_some()) {
            true => wrote.and_then(|()| save()),
            false => wrote,
        };
        let mut stop = polled;
        if world.ranks > 1 {
            let flag = |b: bool| f64::from(u8::from(b));
            let any = world.sum::<B::InnerBackend>(&[flag(wrote.is_err()), flag(polled.is_some())], &self.device)?;
            if any[0] > 0.0 && !world.leads() {
                return Err(Error::PeerFailed { rank: world.rank });
            }
            if any[1] > 0.0 && stop.is_none() {
                // Another process (or rank) caught the signal: rank 0 writes the checkpoint now.
                if world.leads() && !due {
                    wrote = wrote.and_then(|()| save());
                }
                stop = Some("a signal to another rank's process");
            }
        }
        wrote?;
        match stop {
            Some(signal) => Err(Error::Interrupted {
                signal,
                step: state.step,
                checkpoint: path,
            }),
            None => Ok(()),
        }
    }

    /// Closes the progress bar; what the loop did since it started.
    pub fn finish(&self) -> Finished {
        self.bar.finish();
        let seconds = self.started.elapsed().as_secs_f64();
        Finished {
            steps: self.state.step,
            seconds,
            images_per_s: self.images_done as f64 / seconds.max(1e-9),
        }
    }
}

/// A rank's micro-batches of one update: summed gradients, logged values, epoch, mean stats.
type MicroBatches = (GradientsParams, Option<Vec<f64>>, u64, Option<Vec<f64>>);

/// The model after the non-finite guard.
enum Guarded<M> {
    Kept(M),
    RolledBack(M),
}

/// This rank's loader from update `step` on, its batches drawn from `seed`.
fn spawn_loader<C: TrainConfig>(cfg: &C, set: &Arc<ImageSet>, world: &World, seed: u64, step: u64) -> Result<Loader> {
    let s = cfg.schedule();
    Ok(Loader::spawn(
        set.clone(),
        cfg.augment(),
        s.batch_size,
        world.part(),
        seed,
        step * s.accum as u64,
        cfg.run().prefetch,
    )?)
}
