//! `trainer eval`: k-NN and per-layer linear probes of a frozen encoder; writes results.json.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::data::images::LoaderArgs;
use trainer::eval::frozen::{evaluate, EvalResults, EvalSpec, FrozenEncoder};
use trainer::eval::probe::ProbeConfig;
use trainer::model::vit::VitConfig;
use trainer::train::config::{check_split, finite, init_paths, load_config, DEFAULT_SELECT_FRACTION, TEST_SPLIT};
use trainer::train::encoder_from_run::frozen_encoder;
use trainer::train::run_folder::write_results;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    args: EvalArgs,
    #[command(flatten)]
    backend: BackendArgs,
}

/// `trainer eval` arguments: which encoder, which data, how many images.
#[derive(Debug, Clone, clap::Args)]
struct EvalArgs {
    /// Pre-training run folder (results.json goes there unless --out is given), or a
    /// checkpoint in one (`<run>/best.safetensors`).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Evaluate a random-init encoder of this preset instead of a run.
    #[arg(long)]
    random_init: Option<String>,
    /// Prepared dataset (default: the run's).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Folder for results.json (required with --random-init).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Split the probes and k-NN are evaluated on (default: the dataset's).
    #[arg(long)]
    eval_split: Option<String>,
    /// When that split is `test`: the share of the train split held out (class-stratified, the
    /// rows training runs hold out) to choose the best probe layer on.
    #[arg(long, default_value_t = DEFAULT_SELECT_FRACTION, value_parser = finite)]
    select_fraction: f64,
    /// Train images for the k-NN bank and the probes (spread over classes).
    #[arg(long, default_value_t = 10_000)]
    train_images: usize,
    #[arg(long, default_value_t = 10_000)]
    val_images: usize,
    #[arg(long, default_value_t = 100)]
    probe_epochs: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[command(flatten)]
    loader: LoaderArgs,
}

/// Where the evaluated encoder comes from.
enum Encoder {
    Run(PathBuf),
    Random { model: String, vit: VitConfig, seed: u64 },
}

impl EvalArgs {
    /// The encoder, the evaluation and the folder results.json goes to.
    fn resolve(&self) -> Result<(Encoder, EvalSpec, PathBuf)> {
        let (encoder, data, out) = match (&self.run, &self.random_init) {
            (Some(run), None) => {
                let folder = init_paths(run).0;
                let pre = load_config(&folder)?;
                let data = self.data.clone().unwrap_or(pre.run.data);
                let out = self.out.clone().unwrap_or(folder);
                (Encoder::Run(run.clone()), data, out)
            }
            (None, Some(model)) => {
                let vit = VitConfig::named(model).context("--random-init")?;
                let data = self.data.clone().context("--random-init needs --data")?;
                let out = self.out.clone().context("--random-init needs --out")?;
                let random = Encoder::Random {
                    model: model.clone(),
                    vit,
                    seed: self.seed,
                };
                (random, data, out)
            }
            _ => anyhow::bail!("pass exactly one of --run and --random-init"),
        };
        let manifest = pipeline::prepare::load_manifest(&data)?;
        let eval_split = self
            .eval_split
            .clone()
            .unwrap_or_else(|| manifest.eval_split().to_string());
        check_split(&manifest, &eval_split, &data)?;
        if !(self.select_fraction > 0.0 && self.select_fraction <= 0.5) {
            anyhow::bail!("--select-fraction {} must be in (0, 0.5]", self.select_fraction);
        }
        let spec = EvalSpec {
            select_fraction: (eval_split == TEST_SPLIT).then_some(self.select_fraction),
            eval_split,
            data,
            train_images: self.train_images,
            val_images: self.val_images,
            crop_ratio: 0.875,
            batch: self.batch_size,
            probe: ProbeConfig {
                epochs: self.probe_epochs,
                seed: self.seed,
                ..Default::default()
            },
            loader: self.loader.options()?,
        };
        Ok((encoder, spec, out))
    }
}

/// Evaluation needs no gradients: it runs on the backend without autodiff.
struct EvalTask<'a>(&'a Encoder, &'a EvalSpec);
impl BackendTask for EvalTask<'_> {
    type Output = trainer::Result<EvalResults>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        let device = &devices[0];
        let frozen = match self.0 {
            Encoder::Run(run) => frozen_encoder::<B::InnerBackend>(run, device)?,
            Encoder::Random { model, vit, seed } => FrozenEncoder::random(model, vit, *seed, device),
        };
        evaluate(self.1, &frozen, device)
    }
}

pub fn run(Args { args, backend }: Args) -> Result<()> {
    let (encoder, spec, out) = args.resolve()?;
    // Probes run in f32: their features are few and the Adam steps small.
    let r = backend.run(Precision::F32, EvalTask(&encoder, &spec))??;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_results(&out, &r)?;
    println!(
        "{} ({}) on {}: k-NN top-1 {:.2}%, best linear probe {:.2}% (layer {} of {}), last layer {:.2}%; features at {:.0} img/s; {}",
        r.model,
        r.init,
        r.eval_split,
        100.0 * r.knn.top1,
        100.0 * r.best_probe.top1,
        r.best_probe.layer,
        r.probes.len(),
        100.0 * r.probes.last().map_or(0.0, |p| p.top1),
        r.feature_images_per_s.unwrap_or(f64::NAN),
        out.join("results.json").display()
    );
    Ok(())
}
