//! `trainer embed`: a frozen encoder's class-token and mean-pooled features of every image of a
//! split, as Parquet parts (resumable).

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::data::images::ImageSet;
use trainer::export::embed::{embed, EmbedSpec, EmbedSummary};
use trainer::train::config::finite;
use trainer::train::encoder_from_run::run_encoder;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: super::RunSplit,
    /// Folder for the Parquet parts.
    #[arg(long)]
    out: PathBuf,
    /// Tokens after this block (1-based; default: after the final norm).
    #[arg(long)]
    layer: Option<usize>,
    /// Eval view: resize to size / crop-ratio, center crop (default: the model's size).
    #[arg(long)]
    image_size: Option<usize>,
    #[arg(long, default_value_t = 0.875, value_parser = finite)]
    crop_ratio: f64,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

/// The arguments, the run, the dataset and the split.
struct Task<'a>(&'a Args, &'a Path, &'a Path, &'a str);
impl BackendTask for Task<'_> {
    type Output = Result<EmbedSummary>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        let Task(a, run, data, split) = self;
        let device = &devices[0];
        let (cfg, encoder) = run_encoder::<B::InnerBackend>(run, device)?;
        let set = ImageSet::load(data, split)?;
        let spec = EmbedSpec {
            source: run.display().to_string(),
            split: split.to_string(),
            layer: a.layer,
            image_size: a.image_size.unwrap_or(cfg.vit.image_size),
            crop_ratio: a.crop_ratio,
            batch: a.batch_size,
        };
        Ok(embed(&encoder, &set, &spec, &a.out, device)?)
    }
}

pub fn run(args: Args) -> Result<()> {
    let (run, data, split) = args.source.resolve()?;
    let s = args.backend.run(Precision::F32, Task(&args, run, &data, &split))??;
    println!(
        "embedded {} {split} images ({} features per pooling, {} parts, {} kept from an earlier run) into {} at {:.0} img/s",
        s.rows,
        s.dim,
        s.parts,
        s.kept_parts,
        s.out.display(),
        s.images_per_s
    );
    Ok(())
}
