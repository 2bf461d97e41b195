//! Trainer integration tests on the real Imagenette in ../shared, prepared small (72 px shorter
//! side, a class-balanced 30% of train) once per test run under target/tmp.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pipeline::adapters::AdapterOptions;
use pipeline::prepare::{prepare, PrepareConfig, Subset, Worker};
use pipeline::transcode::TranscodeSettings;
use pipeline::vocab::tokenizer::Vocabulary;
use pipeline::vocab::VocabConfig;
use schemas::VocabKind;
use trainer::model::vit::VitConfig;
use trainer::train::config::{FinetuneArgs, PretrainArgs, PretrainConfig};
use trainer::train::pretrain::{pretrain, MetricsLine};
use trainer::CpuAutodiff;

mod autodiff_threads;
mod cluster_auth;
mod data_parallel;
mod dino;
mod embed;
mod experiment;
mod faults;
mod finetune_runs;
mod fuzz_targets;
mod layering;
mod layouts;
mod loader_bench;
mod paper_datasets;
mod pretrain_runs;
mod segmentation;
mod targets;
mod visualize;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn shared(rel: &str) -> Option<PathBuf> {
    schemas::shared_data::find(rel)
}

/// A model small enough for several runs per test on 2 cores, with drop path on (so the
/// per-position draws are part of what resumed and data-parallel runs must reproduce).
pub fn micro_vit() -> VitConfig {
    VitConfig::cpu_tiny()
        .with_dim(64)
        .with_depth(2)
        .with_heads(2)
        .with_drop_path(0.1)
}

pub struct Fixture {
    pub dir: PathBuf,
    /// Random-patches vocabulary of 256 entries, with token shards.
    pub vocab_small: PathBuf,
    /// Random-projection vocabulary of 8192 entries (the paper's size and one of its tokenizers).
    pub vocab_full: PathBuf,
}

/// Prepares real Imagenette at 72 px into `dir`: a class-balanced `fraction` of train and of
/// val, in shards and row groups of about the given sizes. None without shared data.
pub fn prepare_imagenette(dir: &Path, fraction: f64, shard_bytes: u64, row_group_bytes: usize) -> Option<()> {
    let cfg = PrepareConfig {
        dataset: "imagenette".into(),
        adapter: "imagenet".into(),
        source: shared("data/imagenette")?,
        out_dir: dir.to_path_buf(),
        options: AdapterOptions {
            synsets: Some(shared("fixtures/imagenet/LOC_synset_mapping.txt")?),
            ..Default::default()
        },
        transcode: TranscodeSettings {
            max_short_side: Some(72),
            ..Default::default()
        },
        subset: Some(Subset { fraction, seed: 0 }),
        eval_split: "val".into(),
        holdout: None,
        shard_bytes,
        row_group_bytes,
    };
    prepare(&cfg, Worker::ALL, false).unwrap();
    Some(())
}

/// Imagenette at 72 px, 30% of train, with two vocabularies; None without shared data.
pub fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("imagenette-72");
        prepare_imagenette(&dir, 0.3, 256_000_000, 64_000_000)?;
        let vocab = |kind: VocabKind, size: usize| {
            let vc = VocabConfig {
                kind,
                size,
                seed: 0,
                sample: 0,
                iterations: 0,
                progress: false,
            };
            let path = dir.join(vc.file_name());
            if !path.exists() {
                pipeline::vocab::build(&dir, &vc).unwrap().save(&path).unwrap();
            }
            path
        };
        let vocab_small = vocab(VocabKind::RandomPatches, 256);
        pipeline::vocab::token_shards::tokenize_dataset(&dir, &vocab_small, false).unwrap();
        let vocab_full = vocab(VocabKind::RandomProjection, 8192);
        Some(Fixture {
            dir,
            vocab_small,
            vocab_full,
        })
    })
    .as_ref()
}

/// `T`'s flags parsed as the CLI would, from `--recipes <the repo's datasets>` and `argv`.
pub fn parse<T: clap::Args>(argv: &[String]) -> T {
    try_parse(argv).unwrap()
}

/// [`parse`], with clap's error where the command line does not parse.
pub fn try_parse<T: clap::Args>(argv: &[String]) -> Result<T, clap::Error> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    let mut all = vec![
        "trainer".to_string(),
        "--recipes".into(),
        workspace().join("datasets").display().to_string(),
    ];
    all.extend(argv.iter().cloned());
    Cli::<T>::try_parse_from(all).map(|c| c.args)
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `trainer pretrain` arguments for a run on `data` in `out`.
pub fn pretrain_args(data: &Path, vocab: &Path, out: &Path, extra: &[&str]) -> PretrainArgs {
    let mut argv = strings(&[
        "--data",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    // MAE and DINO predict no tokens and refuse a vocabulary; the token methods need one.
    if !extra
        .windows(2)
        .any(|w| w == ["--method", "mae"] || w == ["--method", "dino"])
    {
        argv.extend(strings(&["--vocab", &vocab.display().to_string()]));
    }
    argv.extend(strings(extra));
    parse(&argv)
}

/// `trainer finetune` arguments for a run on `data` in `out`, from `init` or random init.
pub fn finetune_args(data: &Path, init: Option<&Path>, out: &Path, extra: &[&str]) -> FinetuneArgs {
    let mut argv = strings(&[
        "--data",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    if let Some(init) = init {
        argv.extend(strings(&["--init", &init.display().to_string()]));
    }
    argv.extend(strings(extra));
    parse(&argv)
}

/// Arguments as the CLI would parse them, for a run in `out`.
pub fn args(f: &Fixture, vocab: &Path, out: &Path, extra: &[&str]) -> PretrainArgs {
    pretrain_args(&f.dir, vocab, out, extra)
}

/// Every line of `<run>/metrics.jsonl` as `T`; a line that does not parse fails the test.
pub fn metrics_lines<T: serde::de::DeserializeOwned>(run: &Path) -> Vec<T> {
    std::fs::read_to_string(run.join(trainer::train::run_folder::METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn metrics(cfg: &PretrainConfig) -> Vec<MetricsLine> {
    metrics_lines(&cfg.run.out)
}

/// Two runs logged the same steps with losses within `tol`: `(step, loss)` per line.
pub fn assert_same_losses(a: &[(u64, f64)], b: &[(u64, f64)], tol: f64) {
    assert_eq!(a.len(), b.len());
    for ((step_a, x), (step_b, y)) in a.iter().zip(b) {
        assert_eq!(step_a, step_b);
        assert!((x - y).abs() < tol, "step {step_a}: {x} vs {y}");
    }
}

pub fn run(cfg: &PretrainConfig, resume: bool) -> trainer::train::pretrain::RunSummary {
    pretrain::<CpuAutodiff>(cfg, resume, &[Default::default()], false).unwrap()
}

pub fn load_vocab(path: &Path) -> Vocabulary {
    Vocabulary::load(path).unwrap().0
}
