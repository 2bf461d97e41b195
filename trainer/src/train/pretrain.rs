//! The pre-training loop: batches from the loader, targets tokenized on the device, masks
//! drawn per step, gradient accumulation, global-norm clipping, AdamW on a warmup + cosine
//! schedule, metrics.jsonl, atomic checkpoints and resume.
//!
//! Determinism: the model is a function of the seed; batch `i` is a function of (seed, i); the
//! masks and the backend RNG (drop path) of update `t` are seeded from (seed, t). A resumed run
//! therefore continues with the same losses as an uninterrupted one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::data::images::ImageSet;
use crate::data::loader::HostBatch;
use crate::error::{Result, RunFolderError};
use crate::eval::features::{features, Pass};
use crate::eval::knn::{knn, K, TEMPERATURE};
use crate::model::device_tokenizer::DeviceTokenizer;
use crate::model::method::{with_method, WithMethod};
use crate::model::objective::{read_scalar, MethodSpec, MimBatch, Negatives, Objective};
use crate::model::vit::{Mode, Vit};
use crate::seed::mix;
use crate::train::config::{PretrainConfig, RunConfig, Schedule, Targets};
use crate::train::engine::{Divergence, Engine, MicroOutput, Setup, Signals, TrainConfig, Update};
use crate::train::parallel::{numbered_params, on_ranks, Cluster, World, WorldGather};
use crate::train::run_folder::{prepare_run_folder, read_state, record_skipped, save_model};

/// One line of metrics.jsonl. Non-finite values (a diverging step) are written as `null`
/// (JSON has no NaN) and read back as NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    pub epoch: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub loss: f64,
    /// The method's terms by name (its `Objective::TERMS`: BEiT's `mim` and `mim_accuracy`,
    /// SplitMask's and `nce`, MAE's `mse`), `null` where not finite.
    #[serde(flatten)]
    pub terms: BTreeMap<String, Option<f64>>,
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
    /// k-NN top-1 of the frozen encoder (train bank, queries from the run's selection split:
    /// `config.json`'s `eval_split`, or held-out train rows when that is `test`), on monitor
    /// steps.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub knn_top1: Option<f64>,
}

impl MetricsLine {
    /// Term `name` (NaN where it was not finite); `None` when the method has no such term.
    pub fn term(&self, name: &str) -> Option<f64> {
        self.terms.get(name).map(|v| v.unwrap_or(f64::NAN))
    }
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
    let job = Job {
        cfg,
        inputs: &inputs,
        resume,
        devices,
        cluster,
        progress,
    };
    with_method::<B, _>(cfg.method, &cfg.options, job)
}

/// A pre-training run waiting for its method's model type.
struct Job<'a, B: AutodiffBackend> {
    cfg: &'a PretrainConfig,
    inputs: &'a Inputs,
    resume: bool,
    devices: &'a [B::Device],
    cluster: &'a Cluster,
    progress: bool,
}

impl<B: AutodiffBackend> WithMethod<B> for Job<'_, B> {
    type Output = Result<RunSummary>;

    fn run<M>(self, options: &M::Options) -> Result<RunSummary>
    where
        M: Objective<B> + AutodiffModule<B>,
        M::InnerModule: Objective<B::InnerBackend, Options = M::Options>,
    {
        let Job {
            cfg,
            inputs,
            resume,
            devices,
            cluster,
            progress,
        } = self;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.run.seed);
        // One model, replicated: every rank starts from the same weights and parameter ids (the
        // all-reduce matches gradients by id).
        let model = numbered_params(M::build(&cfg.spec(options), &mut rng, &devices[0]));
        let replicas = vec![model; devices.len()];
        on_ranks::<B, _, _, _>(devices, cluster, replicas, |world, device, model| {
            let rank = Rank {
                cfg,
                inputs,
                options,
                world,
                device,
            };
            rank.train(model.fork(device), resume, progress)
        })
    }
}

impl PretrainConfig {
    /// What the method is built and draws its masks from.
    pub fn spec<'a, O>(&'a self, options: &'a O) -> MethodSpec<'a, O> {
        MethodSpec {
            vit: &self.vit,
            vocab_size: self.vocab_size,
            masking: self.masking,
            mask_count: self.mask_count,
            steps: self.schedule.total_steps,
            options,
        }
    }
}

impl TrainConfig for PretrainConfig {
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

/// What every rank reads, loaded once: the vocabulary, the training split (its rows shared by
/// the ranks' loaders) and the k-NN monitor's queries.
struct Inputs {
    vocab: Option<pipeline::vocab::tokenizer::Vocabulary>,
    set: Arc<ImageSet>,
    knn_queries: Option<ImageSet>,
}

impl Inputs {
    /// `writes`: this process records the rows left out (node 0's).
    fn load(cfg: &PretrainConfig, writes: bool) -> Result<Inputs> {
        let vocab = run_vocabulary(cfg)?;
        let (set, held) = training_set(cfg)?;
        // The k-NN monitor's bank is the training set itself; its queries the selection rows
        // (the held-out train rows when the evaluation split is the test split).
        let knn_queries = match (cfg.knn_every > 0, held) {
            (false, _) => None,
            (true, Some(held)) => Some(held),
            (true, None) => Some(ImageSet::load_with(
                &cfg.run.data,
                &cfg.run.eval_split,
                &cfg.run.loader,
            )?),
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

/// The rows a run trains on (the train split less the selection rows, cut to
/// `--limit-images`, with the token grids attached for pre-tokenized targets), and the
/// selection rows held out, if any.
pub fn training_set(cfg: &PretrainConfig) -> Result<(ImageSet, Option<ImageSet>)> {
    let train = ImageSet::load_with(&cfg.run.data, "train", &cfg.run.loader)?;
    let (mut set, held) = cfg.run.split_train(train);
    if let Some(n) = cfg.run.limit_images {
        set = set.truncate(n);
    }
    if let (Targets::Pretokenized, Some(sha)) = (cfg.targets, &cfg.vocab_sha256) {
        set.attach_tokens(sha)?;
    }
    Ok((set, held))
}

/// The run's vocabulary (`None` for pixel and view methods), refused if the file changed since
/// the run's config.json was written.
pub fn run_vocabulary(cfg: &PretrainConfig) -> Result<Option<pipeline::vocab::tokenizer::Vocabulary>> {
    cfg.vocab
        .as_deref()
        .map(|path| same_vocabulary(path, cfg.vocab_sha256.as_deref()))
        .transpose()
}

/// The vocabulary at `path`, refused if it is not the one the run's config resolved (`sha`):
/// a file rebuilt between the runs of one folder would silently change the targets.
fn same_vocabulary(path: &Path, sha: Option<&str>) -> Result<pipeline::vocab::tokenizer::Vocabulary> {
    let (vocab, found) = pipeline::vocab::tokenizer::Vocabulary::load(path)?;
    match sha {
        Some(sha) if sha != found => Err(RunFolderError {
            path: path.to_path_buf(),
            message: format!(
                "the vocabulary changed since this run's config.json was written (sha256 {found}, \
                 recorded {sha}); start a new run folder to train against it"
            ),
        }
        .into()),
        _ => Ok(vocab),
    }
}

/// Method `M`'s device batch of a host batch, part of update `step`: the images and further
/// views, their tokens when `M` predicts tokens (from the shards, or the device tokenizer),
/// and the step's masks, drawn per sample from `mask_seed` and its position in the global
/// batch (from `host.first`).
pub fn device_batch<B: Backend, M: Objective<B>>(
    spec: &MethodSpec<'_, M::Options>,
    tokenizer: Option<&DeviceTokenizer<B>>,
    host: HostBatch,
    (step, mask_seed): (u64, u64),
    device: &B::Device,
) -> MimBatch<B, M::Masks> {
    let (b, s, first) = (host.len(), host.size, host.first);
    let upload = |pixels| Tensor::<B, 4>::from_data(TensorData::new(pixels, [b, 3, s, s]), device);
    let (images, targets) = match (M::TOKEN_TARGETS, host.tokens, tokenizer) {
        (true, Some(t), _) => {
            let n = t.len() / b;
            (
                upload(host.images),
                Some(Tensor::from_data(TensorData::new(t, [b, n]), device)),
            )
        }
        (true, None, Some(tokenizer)) => {
            let (images, tokens) = tokenizer.upload(host.images, [b, s], device);
            (images, Some(tokens))
        }
        _ => (upload(host.images), None),
    };
    // One generator per sample, keyed by its position in the global batch, so a rank holding
    // positions `first..first + b` draws the masks one process with the whole batch draws.
    let rng = |j: usize| ChaCha8Rng::seed_from_u64(mix(mask_seed, first + j as u64, 0));
    let views = host
        .views
        .into_iter()
        .map(|v| Tensor::from_data(TensorData::new(v.images, [b, 3, v.size, v.size]), device))
        .collect();
    MimBatch {
        images,
        targets,
        masks: M::draw_masks(spec, b, &rng, device),
        views,
        step,
        negatives: Negatives::Local,
    }
}

/// One rank of a pre-training run.
struct Rank<'a, B: AutodiffBackend, O> {
    cfg: &'a PretrainConfig,
    inputs: &'a Inputs,
    options: &'a O,
    world: World,
    device: &'a B::Device,
}

impl<B: AutodiffBackend, O: std::fmt::Debug> Rank<'_, B, O> {
    /// This rank's training loop (the whole run on one device). Rank 0 alone writes metrics,
    /// checkpoints and the best model, draws the progress bar and runs the k-NN monitor.
    fn train<M>(&self, model: M, resume: bool, progress: bool) -> Result<RunSummary>
    where
        M: AutodiffModule<B> + Objective<B, Options = O>,
        M::InnerModule: Objective<B::InnerBackend>,
    {
        let (cfg, device) = (self.cfg, self.device);
        let tokenizer = match &self.inputs.vocab {
            Some(vocab) => Some(DeviceTokenizer::<B>::new(vocab, cfg.vit.patch_size, device)?),
            None => None,
        };
        let setup = Setup {
            cfg,
            set: self.inputs.set.clone(),
            resume,
            progress,
            divergence: Divergence::Rollback {
                after: cfg.max_bad_steps,
            },
            lr_scale: Box::new(|_| 1.0),
        };
        let (mut engine, mut model) = Engine::start(setup, model, self.world, device)?;
        if engine.resumed() && engine.leads() && cfg.run.best_path().exists() {
            // best.safetensors may be newer than the checkpoint; its score is the one to beat.
            engine.state.best_knn = read_state(&cfg.run.best_path())?.best_knn;
        }
        let gather = (self.world.ranks > 1 && cfg.global_negatives)
            .then(|| Arc::new(WorldGather::<B>::new(self.world, device.clone())));
        let negatives = match &gather {
            Some(g) => Negatives::Global(g.clone()),
            None => Negatives::Local,
        };
        let spec = cfg.spec(self.options);
        let mut last_line = None;
        while !engine.done() {
            let step = engine.state.step;
            let end = cfg.schedule.end();
            let knn_now =
                self.inputs.knn_queries.is_some() && ((step + 1).is_multiple_of(cfg.knn_every) || step + 1 == end);
            let update;
            (model, update) = engine.update(model, knn_now, |model: &M, host, micro| {
                let first = host.first;
                let seed = mix(cfg.run.seed, micro.index, 2);
                let mut batch = device_batch::<B, M>(&spec, tokenizer.as_ref(), host, (step, seed), device);
                batch.negatives = negatives.clone();
                let out = model.forward(&batch, Mode::train_at(mix(cfg.run.seed, micro.index, 4), first));
                if let Some(g) = &gather {
                    g.failure()?;
                }
                let logged = micro.log.then(|| {
                    let mut v = vec![read_scalar(out.loss.clone())];
                    v.extend(out.values());
                    v
                });
                let stats = out.stats.map(|t| {
                    let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().expect("converted to f32");
                    v.into_iter().map(f64::from).collect()
                });
                Ok(MicroOutput {
                    loss: out.loss,
                    logged,
                    stats,
                })
            })?;
            // None: rolled back to the checkpoint.
            let Some(update) = update else { continue };
            if update.grad_norm.is_finite() {
                // A skipped (non-finite) update left the student as it was.
                model = model.after_update(update.step, update.stats.as_deref());
            }
            let wrote = match engine.leads() {
                true => self.record(&mut engine, &model, &update, knn_now).map(|line| {
                    last_line = line.or(last_line.take());
                }),
                false => Ok(()),
            };
            engine.end_step(&model, wrote, Signals::Stop)?;
        }
        let done = engine.finish();
        Ok(RunSummary {
            steps: done.steps,
            last: last_line,
            seconds: done.seconds,
            images_per_s: done.images_per_s,
        })
    }

    /// Rank 0's writes after an update: the k-NN monitor (and best.safetensors) when due, the
    /// metrics line on logged steps. Returns the line written.
    fn record<M>(
        &self,
        engine: &mut Engine<'_, B, PretrainConfig>,
        model: &M,
        update: &Update,
        knn_now: bool,
    ) -> Result<Option<MetricsLine>>
    where
        M: AutodiffModule<B> + Objective<B>,
        M::InnerModule: Objective<B::InnerBackend>,
    {
        let cfg = self.cfg;
        let knn_top1 = match (&self.inputs.knn_queries, knn_now) {
            (Some(queries), true) => Some(knn_monitor(
                cfg,
                model.valid().encoder(),
                &self.inputs.set,
                queries,
                self.device,
            )?),
            _ => None,
        };
        let line = match &update.logged {
            Some(values) => {
                let line = self.metrics_line(engine, update, M::TERMS, values, knn_top1);
                engine.append(&line)?;
                engine.bar().set_message(line.progress_message());
                Some(line)
            }
            None => None,
        };
        if let Some(top1) = knn_top1 {
            // The overfitting guard of long schedules (the paper's Fig. 6): keep the model at
            // the best k-NN so far, beside the last checkpoint.
            let state = &mut engine.state;
            if state.best_knn.is_none_or(|(best, _)| top1 > best) {
                state.best_knn = Some((top1, state.step));
                save_model(&cfg.run.best_path(), cfg, model, state)?;
            }
        }
        Ok(line)
    }

    fn metrics_line(
        &self,
        engine: &Engine<'_, B, PretrainConfig>,
        update: &Update,
        names: &[&str],
        values: &[f64],
        knn_top1: Option<f64>,
    ) -> MetricsLine {
        // `values`: the loss, then the method's terms in `names`' order (what each rank's
        // micro-steps logged, averaged by the engine).
        let per_epoch = self.cfg.schedule.steps_per_epoch;
        let window = engine.window();
        MetricsLine {
            step: engine.state.step,
            epoch: update.epoch as f64 + (update.step % per_epoch.max(1)) as f64 / per_epoch as f64,
            loss: values[0],
            terms: names
                .iter()
                .zip(&values[1..])
                .map(|(n, v)| (n.to_string(), Some(*v)))
                .collect(),
            lr: update.lr,
            grad_norm: update.grad_norm,
            images_per_s: window.images_per_s,
            data_wait_s: window.data_wait_s,
            skipped_steps: engine.state.skipped_steps,
            loader_mb: engine.loader_mb(),
            knn_top1,
        }
    }
}

impl MetricsLine {
    fn progress_message(&self) -> String {
        let terms: String = self
            .terms
            .iter()
            .map(|(name, v)| format!(" {name} {:.3}", v.unwrap_or(f64::NAN)))
            .collect();
        format!(
            "loss {:.3}{terms} {:.0} img/s{}",
            self.loss,
            self.images_per_s,
            self.knn_top1
                .map(|k| format!(" knn {:.1}%", 100.0 * k))
                .unwrap_or_default()
        )
    }
}

/// k-NN top-1 of the frozen encoder: `knn_images` train images (spread over the set) vote
/// for as many val images (eval views, 0.875 center crop).
pub fn knn_monitor<B: Backend>(
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
        features(encoder, pass, cfg.method.traits().pool, device)
    };
    let (bf, bl) = features(bank, "k-NN bank")?;
    let (qf, ql) = features(queries, "k-NN queries")?;
    Ok(knn(&bf, &bl, &qf, &ql, cfg.vit.dim, K, TEMPERATURE).top1)
}
