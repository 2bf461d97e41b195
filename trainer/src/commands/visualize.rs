//! `trainer visualize`: what a pre-training run predicts for the patches it hides, as a PNG.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::report::reconstructions::{visualize, Drawing, VisualizeSpec, VisualizeSummary};
use trainer::train::config::finite;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: super::RunSplit,
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

/// The arguments, the run, the dataset and the split.
struct Task<'a>(&'a Args, &'a Path, &'a Path, &'a str);
impl BackendTask for Task<'_> {
    type Output = Result<VisualizeSummary>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        let Task(a, run, data, split) = self;
        let spec = VisualizeSpec {
            images: a.images as usize,
            zoom: a.zoom,
            mask_seed: a.seed,
            crop_ratio: a.crop_ratio,
        };
        Ok(visualize::<B>(run, data, split, &spec, &a.out, &devices[0])?)
    }
}

pub fn run(args: Args) -> Result<()> {
    let (run, data, split) = args.source.resolve()?;
    let s = args.backend.run(Precision::F32, Task(&args, run, &data, &split))??;
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
