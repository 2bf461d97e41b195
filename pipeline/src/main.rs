//! `pipeline`: prepare datasets into Parquet shards, merge job-array parts, inspect results.
//!
//! Exit status: 0 when every input became a row, 2 when the run completed but some inputs were
//! skipped (they are listed in the manifest with reasons), 1 on error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use pipeline::adapters::AdapterOptions;
use pipeline::inspect;
use pipeline::prepare::{self, Holdout, PrepareConfig, Subset, Worker};
use pipeline::recipe::Recipe;
use pipeline::transcode::{ResizeFilter, TranscodeSettings};
use pipeline::vocab::tokenizer::Vocabulary;
use pipeline::vocab::{self, VocabConfig};
use schemas::{Manifest, VocabKind};

#[derive(Parser)]
#[command(
    name = "pipeline",
    version,
    about = "Image datasets -> Parquet shards for splitmask-rs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare a dataset (resumes an interrupted run in the same output folder).
    Prepare(PrepareArgs),
    /// Write the manifest from the parts of a multi-worker prepare.
    Merge {
        /// The output folder the workers wrote to.
        out: PathBuf,
    },
    /// Verify checksums and counts, print the class histogram, draw a contact sheet.
    Inspect {
        dir: PathBuf,
        /// Contact-sheet PNG (default: <dir>/contact_sheet.png).
        #[arg(long)]
        sheet: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        per_class: usize,
        #[arg(long, default_value_t = 20)]
        max_classes: usize,
    },
    /// Build or inspect a visual vocabulary.
    #[command(subcommand)]
    Vocab(VocabCommand),
    /// Write the token grids of every image (canonical view and its flip) for a vocabulary.
    Tokenize {
        /// Prepared dataset folder.
        #[arg(long)]
        data: PathBuf,
        /// Vocabulary file (default: every vocab-*.safetensors in the dataset folder).
        #[arg(long)]
        vocab: Option<PathBuf>,
        #[arg(long)]
        no_progress: bool,
        /// As one worker of a job array: then run once without these flags to merge (it keeps
        /// the workers' token shards and records them in the manifest).
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// List the dataset recipes: evaluation split, pre-training epochs and fine-tuning recipe.
    Recipes {
        #[arg(long, default_value = "datasets")]
        recipes: PathBuf,
        /// Every resolved field of every recipe as one JSON object (for scripts).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum VocabCommand {
    /// Build a vocabulary from a prepared dataset's train split.
    Build {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum, default_value_t = Kind::Kmeans)]
        kind: Kind,
        #[arg(long, default_value_t = 8192)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// k-means: patches sampled from the train split (the paper: 3,000,000).
        #[arg(long, default_value_t = 3_000_000)]
        sample: usize,
        #[arg(long, default_value_t = 25)]
        iterations: u32,
        /// Output file (default: <data>/vocab-<kind>-<size>-s<seed>.safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        no_progress: bool,
        /// As one worker of a job array: sample the patches of this worker's train shards
        /// into <out>.patches/; then run once without these flags to merge (it reads the
        /// workers' patches and builds the vocabulary).
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// Token usage over a split, perplexity, dead tokens, and a PNG of the vocabulary.
    Inspect {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        vocab: PathBuf,
        /// Split to tokenize (default: the dataset's evaluation split).
        #[arg(long)]
        split: Option<String>,
        #[arg(long, default_value_t = 2000)]
        images: usize,
        /// PNG of the entries (default: the vocabulary's path with .png).
        #[arg(long)]
        png: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    RandomProjection,
    RandomPatches,
    Kmeans,
}

impl From<Kind> for VocabKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::RandomProjection => VocabKind::RandomProjection,
            Kind::RandomPatches => VocabKind::RandomPatches,
            Kind::Kmeans => VocabKind::Kmeans,
        }
    }
}

#[derive(Args)]
struct PrepareArgs {
    /// Recipe name from the recipes folder (imagenette, cars, coco, ...).
    #[arg(long)]
    dataset: String,
    #[arg(long, default_value = "datasets")]
    recipes: PathBuf,
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
    #[arg(long, value_enum, default_value_t = ResizeFilter::Bicubic)]
    filter: ResizeFilter,
    /// Crop to the bounding box (Stanford Cars).
    #[arg(long)]
    crop_bbox: bool,
    /// Keep this class-balanced share of the train split (e.g. 0.01 for ImageNet 1%).
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
    #[arg(long)]
    no_progress: bool,
}

fn resolve(a: &PrepareArgs) -> Result<PrepareConfig> {
    let recipe = Recipe::load(&a.recipes, &a.dataset)?;
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

fn print_manifest_summary(m: &Manifest) {
    println!("dataset {} ({} adapter) from {}", m.dataset, m.adapter, m.source);
    for (split, s) in &m.splits {
        println!(
            "  {split:>6}: {:>8} images, {:>6} skipped, {} classes present",
            s.images,
            s.skipped,
            s.per_class.len()
        );
    }
    println!(
        "  shards: {}  ({:.1} MB)",
        m.shards.len(),
        m.shards.iter().map(|s| s.bytes).sum::<u64>() as f64 / 1e6
    );
    if !m.skipped.is_empty() {
        println!("  skipped {} inputs (see manifest.json), e.g.:", m.skipped.len());
        for s in m.skipped.iter().take(5) {
            println!("    {}: {}", s.path, s.reason);
        }
    }
}

/// A job array's worker: `prepare`, `tokenize` and `vocab build` split their shards among N
/// workers.
#[derive(Debug, Clone, clap::Args)]
struct WorkerArgs {
    /// Number of workers of a job array; each writes the shards with index % N == i.
    #[arg(long, default_value_t = 1)]
    num_shards: usize,
    /// This worker's index (e.g. $SLURM_ARRAY_TASK_ID).
    #[arg(long, default_value_t = 0)]
    shard_index: usize,
}

impl WorkerArgs {
    fn worker(&self) -> Worker {
        Worker {
            count: self.num_shards,
            index: self.shard_index,
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Prepare(args) => {
            let cfg = resolve(&args)?;
            println!("{}", serde_json::to_string_pretty(&cfg)?);
            let s = prepare::prepare(&cfg, args.worker.worker(), !args.no_progress)
                .with_context(|| format!("preparing {} from {}", cfg.dataset, cfg.source.display()))?;
            println!(
                "wrote {} shards ({} kept from an earlier run), {} images in {:.1} s ({:.0} images/s), {} skipped",
                s.written_shards,
                s.resumed_shards,
                s.images,
                s.wall_s,
                s.images as f64 / s.wall_s.max(1e-9),
                s.skipped
            );
            match s.manifest {
                Some(m) => {
                    print_manifest_summary(&m);
                    println!("manifest: {}", cfg.out_dir.join("manifest.json").display());
                    Ok(if m.skipped.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(2)
                    })
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
        Command::Merge { out } => {
            let m = prepare::merge(&out)?;
            print_manifest_summary(&m);
            Ok(if m.skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Inspect {
            dir,
            sheet,
            per_class,
            max_classes,
        } => {
            let (m, report) = inspect::verify(&dir)?;
            print_manifest_summary(&m);
            println!("checksums: {}/{} shards verified", report.shards_ok, m.shards.len());
            for (split, hist) in &report.histogram {
                println!("  {split} class histogram (label: rows):");
                for (label, n) in hist {
                    let name = usize::try_from(*label)
                        .ok()
                        .and_then(|l| m.class_names.get(l))
                        .map_or("unlabeled", |s| s);
                    println!("    {label:>5} {n:>8}  {name}");
                }
            }
            let sheet = sheet.unwrap_or_else(|| dir.join("contact_sheet.png"));
            inspect::contact_sheet(&dir, &m, &sheet, per_class, max_classes)?;
            println!("contact sheet: {}", sheet.display());
            if report.problems.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                for p in &report.problems {
                    eprintln!("problem: {p}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Vocab(VocabCommand::Build {
            data,
            kind,
            size,
            seed,
            sample,
            iterations,
            out,
            no_progress,
            worker,
        }) => {
            let worker = worker.worker();
            let cfg = VocabConfig {
                kind: kind.into(),
                size,
                seed,
                sample,
                iterations,
                progress: !no_progress,
            };
            let out = out.unwrap_or_else(|| data.join(cfg.file_name()));
            let start = std::time::Instant::now();
            let state = vocab::kmeans_state_path(&out);
            let patches = vocab::patches_dir(&out);
            let files = vocab::BuildFiles {
                kmeans_state: Some(&state),
                patches: Some(&patches),
                worker,
            };
            let Some(v) = vocab::build_with(&data, &cfg, &files)
                .with_context(|| format!("building a vocabulary for {}", data.display()))?
            else {
                println!(
                    "worker {}/{} done ({} s); run the same `pipeline vocab build` without --num-shards after all workers (the merge)",
                    worker.index,
                    worker.count,
                    start.elapsed().as_secs()
                );
                return Ok(ExitCode::SUCCESS);
            };
            let sha = v.save(&out)?;
            let _ = std::fs::remove_file(&state);
            let _ = std::fs::remove_dir_all(&patches);
            println!(
                "{} vocabulary: {} x {} in {:.1} s -> {} (sha256 {sha})",
                cfg.kind.name(),
                size,
                v.header.dim,
                start.elapsed().as_secs_f64(),
                out.display()
            );
            if let Some(k) = &v.header.kmeans {
                println!(
                    "  k-means over {} patches, {} iterations, {} empty clusters re-seeded",
                    k.sample, k.iterations, k.reseeded
                );
                println!(
                    "  inertia: {}",
                    k.inertia
                        .iter()
                        .map(|i| format!("{i:.0}"))
                        .collect::<Vec<_>>()
                        .join(" -> ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Vocab(VocabCommand::Inspect {
            data,
            vocab: path,
            split,
            images,
            png,
        }) => {
            let (v, sha) = Vocabulary::load(&path)?;
            let split = match split {
                Some(s) => s,
                None => prepare::load_manifest(&data)?.eval_split().to_string(),
            };
            let r = vocab::usage(&data, &v, &split, images)?;
            let used = r.counts.iter().filter(|&&c| c > 0).count();
            println!(
                "{} ({} entries, sha256 {sha}) over {} {split} images:",
                path.display(),
                v.header.size,
                r.images
            );
            println!(
                "  used entries {used} ({:.1}%), dead {:.1}%, perplexity {:.0}",
                100.0 * used as f64 / v.header.size as f64,
                100.0 * r.dead_share,
                r.perplexity
            );
            let mut top: Vec<(usize, u64)> = r.counts.iter().copied().enumerate().collect();
            top.sort_by_key(|&(i, c)| (std::cmp::Reverse(c), i));
            let total: u64 = r.counts.iter().sum();
            println!(
                "  most used: {}",
                top.iter()
                    .take(8)
                    .map(|(i, c)| format!("{i} ({:.2}%)", 100.0 * *c as f64 / total.max(1) as f64))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let png = png.unwrap_or_else(|| path.with_extension("png"));
            vocab::draw(&v, &png, 128, 2)?;
            println!("  entries drawn: {}", png.display());
            let hist = png.with_extension("usage.json");
            let json = serde_json::json!({
                "vocab": path, "vocab_sha256": sha, "split": split, "images": r.images,
                "perplexity": r.perplexity, "dead_share": r.dead_share, "counts": r.counts,
            });
            pipeline::shard::write_atomic(&hist, serde_json::to_string(&json)?.as_bytes())?;
            println!("  usage histogram: {}", hist.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokenize {
            data,
            vocab: path,
            no_progress,
            worker,
        } => {
            let worker = worker.worker();
            let paths = match path {
                Some(p) => vec![p],
                None => {
                    let mut all = Vec::new();
                    for k in [VocabKind::RandomProjection, VocabKind::RandomPatches, VocabKind::Kmeans] {
                        all.extend(vocab::find(&data, k)?);
                    }
                    anyhow::ensure!(
                        !all.is_empty(),
                        "no vocab-*.safetensors in {}; run `pipeline vocab build` first",
                        data.display()
                    );
                    all
                }
            };
            for p in paths {
                let start = std::time::Instant::now();
                let set = pipeline::vocab::tokenize::tokenize_shards(&data, &p, worker, !no_progress)?;
                let rows: u64 = set.shards.iter().map(|s| s.rows).sum();
                let secs = start.elapsed().as_secs_f64();
                println!(
                    "{}: {rows} images tokenized (view + flip) in {secs:.1} s ({:.0} images/s) -> {}",
                    set.vocab,
                    rows as f64 / secs.max(1e-9),
                    data.join(&set.dir).display()
                );
            }
            if worker != Worker::ALL {
                println!(
                    "worker {}/{} done; run `pipeline tokenize --data {}` without --num-shards after all workers (the merge)",
                    worker.index,
                    worker.count,
                    data.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Recipes { recipes, json } => {
            let all = Recipe::names(&recipes)?
                .iter()
                .map(|name| Recipe::load(&recipes, name))
                .collect::<pipeline::Result<Vec<_>>>()?;
            if json {
                let map: serde_json::Map<String, serde_json::Value> = all
                    .iter()
                    .map(|r| (r.name.clone(), serde_json::to_value(r).expect("serializable")))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&map)?);
                return Ok(ExitCode::SUCCESS);
            }
            for r in &all {
                let p = &r.pretrain;
                let epochs = match p.epochs {
                    pipeline::recipe::Epochs::Fixed(e) => format!("{e}"),
                    pipeline::recipe::Epochs::Rule(_) => match p.max_epochs {
                        Some(m) => format!("rule<={m}"),
                        None => "rule".to_string(),
                    },
                };
                println!(
                    "{:<20} {:<14} eval {:<4}  {}",
                    r.name, r.adapter, r.eval_split, r.description
                );
                println!(
                    "    pre-train: {epochs} epochs, {:?} masking, SplitMask sees {}%, BEiT masks {}, strong aug {}, crops <= {}",
                    p.masking,
                    100.0 * p.split_visible,
                    p.beit_mask_ratio.map_or("75/196".to_string(), |m| format!("{}%", 100.0 * m)),
                    p.strong_augmentation,
                    p.max_crop_scale
                );
                match &r.finetune {
                    Some(f) => println!(
                        "    fine-tune: {} epochs, batch {}, lr {:e}, layer decay {}, warmup {}, repeated aug {}, RandAugment {}/{}, wd {}, smoothing {}, drop path {}, mixup {}, cutmix {}, clip {}, test crop {}",
                        f.epochs,
                        f.batch_size,
                        f.lr,
                        f.layer_decay,
                        f.warmup_epochs,
                        f.repeated_aug,
                        f.randaug_magnitude,
                        f.randaug_std,
                        f.weight_decay,
                        f.label_smoothing,
                        f.drop_path,
                        f.mixup,
                        f.cutmix,
                        f.clip_grad,
                        f.crop_ratio
                    ),
                    None => println!("    fine-tune: - (no classification labels)"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    if let Err(e) = pipeline::interrupt::install() {
        eprintln!("warning: SIGINT/SIGTERM handlers not installed ({e}): a signal stops at once");
    }
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(pipeline::PipelineError::Interrupted { .. }) = e.downcast_ref() {
                return ExitCode::from(pipeline::interrupt::EXIT_INTERRUPTED as u8);
            }
            ExitCode::FAILURE
        }
    }
}
