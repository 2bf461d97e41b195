//! The paper's train/test datasets end to end (Stanford Cars in devkit form, Food-101, DomainNet
//! clipart), each built in its native layout from the real metadata: prepare with the recipe ->
//! pre-train a few steps with the k-NN monitor -> fine-tune -> frozen-encoder eval, all on the
//! `test` split the recipe names; asking for a split the dataset lacks is an error naming the
//! splits it has.

use std::path::Path;

use pipeline::prepare::{prepare, PrepareConfig, Worker};
use pipeline::recipe::Recipe;
use pipeline::transcode::TranscodeSettings;
use pipeline::vocab::VocabConfig;
use schemas::{Manifest, VocabKind};
use trainer::eval::frozen::{evaluate, EvalSpec};
use trainer::eval::probe::ProbeConfig;
use trainer::model::vit::VitConfig;
use trainer::train::encoder_from_run::frozen_encoder;
use trainer::train::finetune::finetune;
use trainer::{CpuAutodiff, CpuBackend};

use crate::{finetune_args, layouts, metrics, pretrain_args, run, workspace};

/// Prepares `source` with the recipe's adapter, options and evaluation split, at 72 px.
fn prepare_recipe(dataset: &str, source: &Path, out: &Path) -> Manifest {
    let recipe = Recipe::load(&workspace().join("datasets"), dataset).unwrap();
    let cfg = PrepareConfig {
        dataset: dataset.into(),
        adapter: recipe.adapter.clone(),
        source: source.to_path_buf(),
        out_dir: out.to_path_buf(),
        options: recipe.options.clone(),
        transcode: TranscodeSettings {
            max_short_side: Some(72),
            ..Default::default()
        },
        subset: None,
        eval_split: recipe.eval_split.clone(),
        holdout: recipe
            .prepare
            .val_fraction
            .map(|fraction| pipeline::prepare::Holdout { fraction, seed: 0 }),
        shard_bytes: 256_000_000,
        row_group_bytes: 64_000_000,
    };
    prepare(&cfg, Worker::ALL, false).unwrap().manifest.unwrap()
}

fn micro_vit() -> VitConfig {
    VitConfig::cpu_tiny().with_dim(64).with_depth(2).with_heads(2)
}

/// prepare -> pretrain -> finetune -> eval on the test split of a dataset built by `build`.
fn end_to_end(dataset: &str, build: impl FnOnce(&Path) -> Option<(usize, usize)>) {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    let Some((train, test)) = build(&raw) else { return };
    let data = tmp.path().join("data");
    let m = prepare_recipe(dataset, &raw, &data);
    assert_eq!(m.eval_split(), "test", "{dataset}");
    assert_eq!(m.split_names(), ["test", "train"], "{dataset}");
    assert_eq!(
        (m.splits["train"].images as usize, m.splits["test"].images as usize),
        (train, test),
        "{dataset}: every listed image is a row"
    );
    assert!(
        m.skipped.is_empty(),
        "{dataset}: {:?}",
        &m.skipped[..m.skipped.len().min(3)]
    );
    let vc = VocabConfig {
        kind: VocabKind::RandomProjection,
        size: 256,
        seed: 0,
        sample: 0,
        iterations: 0,
        progress: false,
    };
    let vocab = data.join(vc.file_name());
    pipeline::vocab::build(&data, &vc).unwrap().save(&vocab).unwrap();

    // Pre-training: the recipe's masking (uniform quarters for Cars and clipart), the k-NN
    // monitor against the test split, and the best k-NN encoder kept.
    let pre_dir = tmp.path().join("pre");
    let steps = [
        "--model",
        "cpu-tiny",
        "--batch-size",
        "16",
        "--max-steps",
        "6",
        "--knn-every",
        "3",
    ];
    let mut pre = pretrain_args(&data, &vocab, &pre_dir, &steps).resolve().unwrap();
    pre.vit = micro_vit().with_drop_path(pre.vit.drop_path);
    assert_eq!(pre.run.eval_split, "test");
    // No choice on the test split: the k-NN monitor queries train rows held out of training,
    // class-stratified, the same for every run.
    let mut kept = trainer::data::images::ImageSet::load(&data, "train").unwrap();
    let held = kept.hold_out(0.05);
    assert!(!held.samples.is_empty(), "{dataset}");
    assert!(held.samples.iter().all(|h| kept.samples.iter().all(|k| k.id != h.id)));
    assert_eq!(pre.run.select_fraction, Some(0.05));
    assert_eq!(pre.run.select_split(), "train-holdout");
    run(&pre, false);
    let lines = metrics(&pre);
    let knn: Vec<f64> = lines.iter().filter_map(|l| l.knn_top1).collect();
    assert_eq!(knn.len(), 2, "{dataset}: k-NN at steps 3 and 6");
    assert!(pre.run.best_path().is_file());

    // Fine-tuning from the best k-NN encoder, evaluated on every test image.
    let ft_dir = tmp.path().join("ft");
    let best = pre.run.best_path();
    let short = [
        "--batch-size",
        "16",
        "--max-steps",
        "4",
        "--eval-every-epochs",
        "100",
        "--warmup-epochs",
        "0",
    ];
    let cfg = finetune_args(&data, Some(&best), &ft_dir, &short).resolve().unwrap();
    assert_eq!(cfg.run.eval_split, "test");
    assert_eq!(cfg.init.as_ref().unwrap().checkpoint.as_deref(), Some(best.as_path()));
    let r = finetune::<CpuAutodiff>(&cfg, false, &[Default::default()], false)
        .unwrap()
        .unwrap();
    assert_eq!((r.eval_split.as_str(), r.eval.images), ("test", test), "{dataset}");
    assert_eq!(r.eval.predictions.iter().sum::<u64>() as usize, test);
    // The periodic evaluations (and best_top1) ran on the held-out rows, not on test.
    assert_eq!(r.select_split, "train-holdout");
    let ft_lines: Vec<trainer::train::finetune::FinetuneLine> = crate::metrics_lines(&ft_dir);
    let evaluated: Vec<u64> = ft_lines
        .iter()
        .filter_map(|l| l.eval_predictions.as_ref().map(|p| p.iter().sum()))
        .collect();
    assert!(!evaluated.is_empty());
    assert!(
        evaluated.iter().all(|&n| n as usize == held.samples.len()),
        "{dataset}: {evaluated:?}"
    );

    // Frozen-encoder evaluation: k-NN queries and probe test set are the test split.
    let device = Default::default();
    let frozen = frozen_encoder::<CpuBackend>(&pre_dir, &device).unwrap();
    let spec = EvalSpec {
        data: data.clone(),
        eval_split: "test".into(),
        train_images: 10_000,
        val_images: 10_000,
        crop_ratio: 0.875,
        batch: 64,
        probe: ProbeConfig {
            epochs: 5,
            ..Default::default()
        },
        // Read as it goes: the evaluation passes stream row groups from the shards.
        loader: trainer::data::images::LoadOptions {
            cache: trainer::data::images::Cache::None,
            memory_mb: 1,
            masks: false,
        },
        select_fraction: Some(0.05),
    };
    let e = evaluate(&spec, &frozen, &device).unwrap();
    assert_eq!(
        (e.eval_split.as_str(), e.knn.queries, e.knn.bank),
        ("test", test, kept.samples.len())
    );
    // The best layer is chosen on the held-out rows.
    assert_eq!(e.select_split, "train-holdout");
    assert!(e.probes.iter().all(|p| p.select_top1.is_some()));
    let chosen = e.probes.iter().map(|p| p.select_top1.unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(e.best_probe.select_top1, Some(chosen));

    // A split the dataset does not have is refused, naming the ones it has.
    let err = finetune_args(&data, None, &tmp.path().join("x"), &["--eval-split", "val"])
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--eval-split \"val\"") && err.contains(r#"["test", "train"]"#),
        "{dataset}: {err}"
    );
}

#[test]
fn stanford_cars_devkit_end_to_end_on_test() {
    end_to_end("cars", |root| layouts::cars_devkit(root, 160, 64));
}

#[test]
fn food101_end_to_end_on_test() {
    end_to_end("food101", |root| layouts::food101(root, 16, 6));
}

#[test]
fn domainnet_clipart_end_to_end_on_test() {
    end_to_end("domainnet-clipart", |root| {
        layouts::domainnet(root, "clipart", 10, 16, 6)
    });
}

/// Food-101 with its test photos missing: prepare lists the test split as empty and writes no
/// test shard, and the trainer says the evaluation split is empty (not that it is absent).
#[test]
fn an_empty_eval_split_is_reported_as_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    let Some((_, test)) = layouts::food101(&raw, 4, 2) else {
        return;
    };
    assert_eq!(test, 20, "2 test photos for each of the fixture's 10 classes");
    for line in std::fs::read_to_string(raw.join("meta/test.txt")).unwrap().lines() {
        std::fs::remove_file(raw.join(format!("images/{line}.jpg"))).unwrap();
    }
    let data = tmp.path().join("data");
    let m = prepare_recipe("food101", &raw, &data);
    assert_eq!((m.splits["test"].images, m.splits["test"].skipped), (0, test as u64));
    assert!(m.shards.iter().all(|s| s.split == "train"));
    let err = finetune_args(&data, None, &tmp.path().join("x"), &[])
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"test\" split")
            && err.contains("is empty")
            && err.contains(&format!("all {test} of its images")),
        "{err}"
    );
}
