//! What the runs that evaluate as they train (fine-tuning, segmentation) share: their splits,
//! loaded once for every rank, and the loop around the engine (an update, rank 0's evaluation
//! and metrics line, the last step's signal handling, `results.json` at the end).

use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use serde::de::DeserializeOwned;

use crate::data::images::ImageSet;
use crate::data::loader::HostBatch;
use crate::error::Result;
use crate::model::objective::read_scalar;
use crate::train::config::RunConfig;
use crate::train::engine::{Divergence, Engine, Micro, MicroOutput, Setup, Signals, TrainConfig, Update};
use crate::train::optim::layer_decay_scale;
use crate::train::parallel::World;
use crate::train::run_folder::{read_results, record_skipped, TrainState};

/// The splits every rank reads, loaded once, and when the command started.
pub struct Splits {
    pub train: Arc<ImageSet>,
    pub eval: ImageSet,
    /// The train rows held out for the periodic evaluations when `eval` is the test split.
    pub select: Option<ImageSet>,
    pub started: Instant,
}

impl Splits {
    /// The train split less its selection rows (cut to `--limit-images`), the evaluation
    /// split and the selection rows. Each set's skipped rows are recorded when this process
    /// `writes` the run folder, then `keep` trims the set (e.g. to labelled rows).
    pub fn load(run: &RunConfig, writes: bool, started: Instant, mut keep: impl FnMut(&mut ImageSet)) -> Result<Self> {
        let train = ImageSet::load_with(&run.data, "train", &run.loader)?;
        let (mut train, mut select) = run.split_train(train);
        let mut eval = ImageSet::load_with(&run.data, &run.eval_split, &run.loader)?;
        for set in [Some(&mut train), Some(&mut eval), select.as_mut()]
            .into_iter()
            .flatten()
        {
            if writes {
                record_skipped(&run.out, set)?;
            }
            keep(set);
        }
        if let Some(n) = run.limit_images {
            train = train.truncate(n);
        }
        Ok(Splits {
            train: Arc::new(train),
            eval,
            select,
            started,
        })
    }

    /// What the periodic evaluations (and the best score) run on.
    pub fn select(&self) -> &ImageSet {
        self.select.as_ref().unwrap_or(&self.eval)
    }
}

/// Non-finite updates in a row before these runs give up (they have no rollback: their
/// learning rates are small and a diverging recipe needs a lower one, not a retry).
const MAX_BAD_STEPS: u32 = 3;

/// The engine of one rank, with layer-wise learning-rate decay (`decay` per block of an
/// encoder `depth` blocks deep) and [`MAX_BAD_STEPS`].
pub fn start_engine<'a, B, M, C>(
    cfg: &'a C,
    sets: &Splits,
    model: M,
    (depth, decay): (usize, f64),
    (resume, progress): (bool, bool),
    world: World,
    device: &B::Device,
) -> Result<(Engine<'a, B, C>, M)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    C: TrainConfig,
{
    let setup = Setup {
        cfg,
        set: sets.train.clone(),
        resume,
        progress,
        divergence: Divergence::Fail { after: MAX_BAD_STEPS },
        lr_scale: Box::new(move |path: &str| layer_decay_scale(path, depth, decay)),
    };
    Engine::start(setup, model, world, device)
}

/// Which evaluation a step ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalAt {
    None,
    /// On `--eval-images` of the selection split.
    Periodic,
    /// The last step of the schedule: every image of the evaluation split.
    Final,
}

impl EvalAt {
    /// The evaluation after update `step` (0-based) of a run evaluating every `every` updates
    /// and where it stops early.
    fn after<C: TrainConfig>(cfg: &C, step: u64, every: u64) -> EvalAt {
        let s = cfg.schedule();
        match step + 1 {
            n if n == s.total_steps => EvalAt::Final,
            n if n.is_multiple_of(every) || n == s.end() => EvalAt::Periodic,
            _ => EvalAt::None,
        }
    }
}

/// What a run plugs into [`train_with_evals`].
pub trait EvalRun<B: AutodiffBackend, M> {
    type Config: TrainConfig;
    /// The final evaluation's scores.
    type Scores;
    type Results: DeserializeOwned;

    fn config(&self) -> &Self::Config;

    /// Updates between periodic evaluations.
    fn eval_every(&self) -> u64;

    /// One micro-batch's loss (the value its metrics line logs).
    fn loss(&self, model: &M, host: HostBatch, micro: Micro) -> Result<Tensor<B, 1>>;

    /// Rank 0, after `update`: the evaluation due `at` this step and the metrics line on
    /// logged steps. Returns the scores of the final evaluation.
    fn record(
        &self,
        engine: &mut Engine<'_, B, Self::Config>,
        model: &M,
        update: &Update,
        at: EvalAt,
    ) -> Result<Option<Self::Scores>>;

    /// `results.json` of the run whose last step scored `scores`.
    fn write_final(&self, state: &TrainState, scores: Self::Scores) -> Result<Self::Results>;
}

/// One rank's loop until the schedule (or `stop_after`) ends. Returns the results when the
/// schedule is complete, `None` when the run stopped early.
pub fn train_with_evals<B, M, R>(
    run: &R,
    mut engine: Engine<'_, B, R::Config>,
    mut model: M,
) -> Result<Option<R::Results>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    R: EvalRun<B, M>,
{
    let cfg = run.config();
    while !engine.done() {
        let at = EvalAt::after(cfg, engine.state.step, run.eval_every());
        let update;
        (model, update) = engine.update(model, at != EvalAt::None, |m: &M, host, micro: Micro| {
            let loss = run.loss(m, host, micro)?;
            let logged = micro.log.then(|| vec![read_scalar(loss.clone())]);
            Ok(MicroOutput {
                loss,
                logged,
                stats: None,
            })
        })?;
        // These runs fail instead of rolling back, so there is always an update.
        let Some(update) = update else { continue };
        let recorded = match engine.leads() {
            true => run.record(&mut engine, &model, &update, at),
            false => Ok(None),
        };
        // The last step goes on to write results.json: a resumed run would find nothing to do.
        let signals = if at == EvalAt::Final {
            Signals::Defer
        } else {
            Signals::Stop
        };
        let (wrote, scores) = match recorded {
            Ok(s) => (Ok(()), s),
            Err(e) => (Err(e), None),
        };
        engine.end_step(&model, wrote, signals)?;
        if let Some(s) = scores {
            engine.finish();
            return run.write_final(&engine.state, s).map(Some);
        }
    }
    engine.finish();
    if engine.leads() && engine.state.step == cfg.schedule().total_steps {
        // Resumed after the end: the results are already written.
        return read_results(&cfg.run().out).map(Some);
    }
    Ok(None)
}
