//! `pipeline prepare`: a dataset's recipe and the command line's overrides to shards and a
//! manifest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use pipeline::adapters::AdapterOptions;
use pipeline::prepare::{self, Holdout, PrepareConfig, PrepareSummary, Subset};
use pipeline::recipe::Recipes;
use pipeline::transcode::{ResizeFilter, TranscodeSettings};

use super::{exit_code, print_manifest_summary, ProgressArgs, WorkerArgs};

#[derive(Args)]
pub struct PrepareArgs {
    /// Recipe name from the recipes folder (imagenette, cars, coco, ...).
    #[arg(long)]
    dataset: String,
    /// A folder of recipes (`<name>.toml`) to use instead of the ones built into this binary
    /// (also $SPLITMASK_RECIPES).
    #[arg(long)]
    recipes: Option<PathBuf>,
    /// Raw dataset root (default: the recipe's data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output folder (default: data/<dataset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Shorter-side bound in pixels; 0 keeps the source size (default: the recipe's).
    #[arg(long)]
    max_short_side: Option<u32>,
    #[arg(long)]
    quality: Option<u8>,
    /// Largest image decoded, in pixels (width x height, read before decoding); larger ones
    /// are skipped with the reason. Shard readers decode within the default.
    #[arg(long, default_value_t = pipeline::transcode::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    #[arg(long, value_enum, default_value_t = ResizeFilter::Bicubic)]
    filter: ResizeFilter,
    /// Crop to the bounding box (Stanford Cars).
    #[arg(long)]
    crop_bbox: bool,
    /// Keep this class-balanced share of the train split, rounded per class and at least one
    /// image (ImageNet: 0.01 keeps 13 per class, 0.001 one per class, Fig. 2's 0.1%).
    #[arg(long)]
    fraction: Option<f64>,
    /// Split models are evaluated on (default: the recipe's `eval_split`).
    #[arg(long)]
    eval_split: Option<String>,
    /// When the layout has no evaluation split (a folder without split folders): hold out this
    /// share of each class's images as one (default: the recipe's `val_fraction`).
    #[arg(long)]
    val_fraction: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Target shard size in MB.
    #[arg(long, default_value_t = 256)]
    shard_mb: u64,
    #[arg(long, default_value_t = 64)]
    row_group_mb: usize,
    #[command(flatten)]
    worker: WorkerArgs,
    /// Override adapter options.
    #[arg(long)]
    synsets: Option<PathBuf>,
    #[arg(long)]
    domain: Option<String>,
    #[arg(long)]
    year: Option<u32>,
    #[command(flatten)]
    progress: ProgressArgs,
}

pub fn run(args: &PrepareArgs) -> Result<ExitCode> {
    let cfg = resolve(args)?;
    println!("{}", serde_json::to_string_pretty(&cfg)?);
    let s = prepare::prepare(&cfg, args.worker.worker(), args.progress.shown())
        .with_context(|| format!("preparing {} from {}", cfg.dataset, cfg.source.display()))?;
    print_throughput(&s);
    match s.manifest {
        Some(m) => {
            print_manifest_summary(&m);
            println!("manifest: {}", cfg.out_dir.join("manifest.json").display());
            Ok(exit_code(&m))
        }
        None => {
            println!(
                "worker {}/{} done; run `pipeline merge {}` after all workers",
                args.worker.shard_index,
                args.worker.num_shards,
                cfg.out_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The recipe's settings, each overridden by its flag where given.
fn resolve(a: &PrepareArgs) -> Result<PrepareConfig> {
    let recipe = Recipes::choose(a.recipes.as_deref()).load(&a.dataset)?;
    let options = AdapterOptions {
        synsets: a.synsets.clone().or(recipe.options.synsets.clone()),
        val_solution: recipe.options.val_solution.clone(),
        domain: a.domain.clone().or(recipe.options.domain.clone()),
        year: a.year.or(recipe.options.year),
    };
    let short = a.max_short_side.unwrap_or(recipe.prepare.max_short_side);
    let fraction = a.fraction.or(recipe.prepare.subset_fraction);
    let cfg = PrepareConfig {
        dataset: recipe.name.clone(),
        adapter: recipe.adapter.clone(),
        source: a.data_dir.clone().unwrap_or(recipe.data_dir.clone()),
        out_dir: a.out.clone().unwrap_or_else(|| Path::new("data").join(&recipe.name)),
        options,
        transcode: TranscodeSettings {
            max_short_side: (short > 0).then_some(short),
            quality: a.quality.unwrap_or(recipe.prepare.quality),
            filter: a.filter,
            crop_to_bbox: a.crop_bbox || recipe.prepare.crop_to_bbox,
            max_pixels: a.max_pixels,
        },
        subset: fraction.map(|fraction| Subset {
            fraction,
            seed: a.seed.unwrap_or(recipe.prepare.subset_seed),
        }),
        eval_split: a.eval_split.clone().unwrap_or(recipe.eval_split.clone()),
        holdout: a.val_fraction.or(recipe.prepare.val_fraction).map(|fraction| Holdout {
            fraction,
            seed: a.seed.unwrap_or(recipe.prepare.subset_seed),
        }),
        shard_bytes: a.shard_mb * 1_000_000,
        row_group_bytes: a.row_group_mb * 1_000_000,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn print_throughput(s: &PrepareSummary) {
    println!(
        "wrote {} shards ({} kept from an earlier run), {} images in {:.1} s ({:.0} images/s), {} skipped",
        s.written_shards,
        s.resumed_shards,
        s.images,
        s.wall_s,
        s.images as f64 / s.wall_s.max(1e-9),
        s.skipped
    );
}
