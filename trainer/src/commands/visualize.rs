//! `trainer visualize`: what a pre-training run predicts for the patches it hides, as a PNG.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::report::reconstructions::{visualize, Drawing, VisualizeSpec, VisualizeSummary};
use trainer::train::config::{finite, init_paths, load_config};

#[derive(clap::Args)]
pub struct Args {
    /// Pre-training run folder, or a checkpoint in one.
    #[arg(long)]
    run: PathBuf,
    /// Prepared dataset (default: the run's).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Split the images come from (default: the dataset's evaluation split).
    #[arg(long)]
    split: Option<String>,
    /// The PNG written.
    #[arg(long)]
    out: PathBuf,
    /// Images, spread evenly over the split (a row each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    images: u32,
    /// Each image pixel drawn as zoom x zoom.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    zoom: u32,
    /// Seed the masks are drawn from.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Eval view: resize to size / crop-ratio, center crop.
    #[arg(long, default_value_t = 1.0, value_parser = finite)]
    crop_ratio: f64,
    #[command(flatten)]
    backend: BackendArgs,
}

struct Task<'a>(&'a Args, &'a PathBuf, &'a str);
impl BackendTask for Task<'_> {
    type Output = Result<VisualizeSummary>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        let Task(a, data, split) = self;
        let spec = VisualizeSpec {
            images: a.images as usize,
            zoom: a.zoom,
            mask_seed: a.seed,
            crop_ratio: a.crop_ratio,
        };
        Ok(visualize::<B>(&a.run, data, split, &spec, &a.out, &devices[0])?)
    }
}

pub fn run(args: Args) -> Result<()> {
    let pre = load_config(&init_paths(&args.run).0).context("reading the run's config.json")?;
    let data = args.data.clone().unwrap_or(pre.run.data);
    let manifest = pipeline::prepare::load_manifest(&data)?;
    let split = args
        .split
        .clone()
        .or(manifest.eval_split.clone())
        .unwrap_or_else(|| "val".into());
    let s = args.backend.run(Precision::F32, Task(&args, &data, &split))??;
    let drawn = match s.drawing {
        Drawing::Entries => "predicted tokens drawn as their vocabulary entries",
        Drawing::Correctness => "predicted tokens green where right, red where wrong",
        Drawing::Pixels => "predicted pixels",
    };
    let accuracy = s
        .accuracy
        .map(|a| format!("; {:.1}% of hidden patches predicted right", 100.0 * a))
        .unwrap_or_default();
    println!(
        "drew {} {split} images with {} hidden patches each ({drawn}{accuracy}) into {} ({} x {} px)",
        s.images,
        s.hidden,
        s.out.display(),
        s.width,
        s.height
    );
    Ok(())
}
