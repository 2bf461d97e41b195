//! `trainer embed`: a frozen encoder's class-token and mean-pooled features of every image of a
//! split, as Parquet parts (resumable).

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::data::images::ImageSet;
use trainer::export::embed::{embed, EmbedSpec, EmbedSummary};
use trainer::train::config::{finite, init_paths, load_config};
use trainer::train::encoder_from_run::run_encoder;

#[derive(clap::Args)]
pub struct Args {
    /// Pre-training run folder, or a checkpoint in one (`<run>/best.safetensors`).
    #[arg(long)]
    run: PathBuf,
    /// Prepared dataset (default: the run's).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Split to embed (default: the dataset's evaluation split).
    #[arg(long)]
    split: Option<String>,
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

struct Task<'a>(&'a Args, &'a PathBuf, &'a str);
impl BackendTask for Task<'_> {
    type Output = Result<EmbedSummary>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        let Task(a, data, split) = self;
        let device = &devices[0];
        let (cfg, encoder) = run_encoder::<B::InnerBackend>(&a.run, device)?;
        let set = ImageSet::load(data, split)?;
        let spec = EmbedSpec {
            source: a.run.display().to_string(),
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
    let pre = load_config(&init_paths(&args.run).0).context("reading the run's config.json")?;
    let data = args.data.clone().unwrap_or(pre.run.data);
    let manifest = pipeline::prepare::load_manifest(&data)?;
    let split = args
        .split
        .clone()
        .or(manifest.eval_split.clone())
        .unwrap_or_else(|| "val".into());
    let s = args.backend.run(Precision::F32, Task(&args, &data, &split))??;
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
