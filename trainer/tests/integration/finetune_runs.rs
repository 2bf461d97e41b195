//! Fine-tuning, evaluation and reports on the small real Imagenette: a pre-trained encoder
//! loads strictly and fine-tunes above chance, resume reproduces an uninterrupted run, probes
//! and k-NN write results.json, the report gathers them with plots; the default recipe
//! ends above its own probe on small sets unlike Imagenette.

use std::path::{Path, PathBuf};

use pipeline::prepare::{prepare, PrepareConfig, Worker};
use pipeline::transcode::TranscodeSettings;
use trainer::model::vit::VitConfig;
use trainer::train::config::{FinetuneArgs, FinetuneConfig, HeadInit, LrScaling, PretrainConfig};
use trainer::train::finetune::{finetune, FinetuneLine, FinetuneResults};
use trainer::train::tensor_file::{load_tensors, save_tensors};
use trainer::CpuAutodiff;

use crate::{args, fixture, run, Fixture};

fn micro_vit() -> VitConfig {
    VitConfig::cpu_tiny().with_dim(64).with_depth(2).with_heads(2)
}

/// A 40-step SplitMask run of the micro ViT in `out`.
fn pretrained(f: &Fixture, out: &Path) -> PretrainConfig {
    let extra = [
        "--model",
        "cpu-tiny",
        "--batch-size",
        "16",
        "--max-steps",
        "40",
        "--epochs",
        "1",
        "--blr",
        "0.2",
        "--warmup-epochs",
        "0.05",
        "--limit-images",
        "640",
    ];
    let mut cfg = args(f, &f.vocab_small, out, &extra).resolve().unwrap();
    cfg.vit = micro_vit();
    run(&cfg, false);
    cfg
}

fn ft_args(f: &Fixture, init: Option<&Path>, out: &Path, extra: &[&str]) -> FinetuneArgs {
    crate::finetune_args(&f.dir, init, out, extra)
}

/// A short fine-tuning recipe for the micro model (the paper's augmentations on).
const SHORT: [&str; 18] = [
    "--recipe",
    "paper",
    "--batch-size",
    "32",
    "--max-steps",
    "60",
    "--epochs",
    "1",
    "--blr",
    "1.6e-2",
    "--warmup-epochs",
    "0.1",
    "--eval-every-epochs",
    "0.25",
    "--eval-images",
    "300",
    "--log-every",
    "5",
];

fn lines(cfg: &FinetuneConfig) -> Vec<FinetuneLine> {
    crate::metrics_lines(&cfg.run.out)
}

fn losses(lines: &[FinetuneLine]) -> Vec<(u64, f64)> {
    lines.iter().map(|l| (l.step, l.loss)).collect()
}

fn ft(cfg: &FinetuneConfig, resume: bool) -> Option<FinetuneResults> {
    finetune::<CpuAutodiff>(cfg, resume, &[Default::default()], false).unwrap()
}

#[test]
fn finetunes_a_pretrained_encoder_and_resumes_exactly() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pre_dir = tmp.path().join("pre");
    let pre = pretrained(f, &pre_dir);

    // The architecture comes from the pre-training run; another preset is refused.
    let err = ft_args(f, Some(&pre_dir), &tmp.path().join("x"), &["--model", "cpu-small"])
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(err.contains("--model") && err.contains("cpu-small"), "{err}");

    // A pre-trained encoder keeps its own position embeddings; random init takes --pos-embed.
    let err = ft_args(f, Some(&pre_dir), &tmp.path().join("x"), &["--pos-embed", "sincos"])
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--pos-embed") && err.contains("learned position embeddings"),
        "{err}"
    );
    let same = ft_args(f, Some(&pre_dir), &tmp.path().join("x"), &["--pos-embed", "learned"])
        .resolve()
        .unwrap();
    assert!(!same.vit.sinusoidal_pos);
    let random = ft_args(f, None, &tmp.path().join("x"), &["--pos-embed", "sincos"])
        .resolve()
        .unwrap();
    assert!(random.vit.sinusoidal_pos);

    let cfg = ft_args(f, Some(&pre_dir), &tmp.path().join("whole"), &SHORT)
        .resolve()
        .unwrap();
    assert_eq!(cfg.vit, pre.vit.clone().with_drop_path(0.1));
    assert_eq!(cfg.classes, 10);
    let whole = ft(&cfg, false).expect("ran to the end");
    assert_eq!(whole.init, "splitmask");
    assert_eq!(whole.steps, 60);
    assert_eq!(whole.eval.images, 3925, "the final evaluation covers all of val");
    // 60 steps of 32 images: clearly above the 10% of chance on 3925 val images.
    assert!(whole.eval.top1 > 0.15, "top-1 {}", whole.eval.top1);
    eprintln!("fine-tuned micro ViT: {:?}", whole.eval);
    assert!(whole.eval.top5 > whole.eval.top1 && whole.eval.top5 > 0.55);
    let a = lines(&cfg);
    let evals: Vec<&FinetuneLine> = a.iter().filter(|l| l.eval_top1.is_some()).collect();
    // Every 22 steps (a quarter of the 88 steps per epoch), then the final one.
    assert_eq!(evals.len(), 3, "periodic evaluations");
    assert!(a.iter().all(|l| l.loss.is_finite()));
    let on_disk: FinetuneResults =
        serde_json::from_str(&std::fs::read_to_string(cfg.run.out.join("results.json")).unwrap()).unwrap();
    assert_eq!(on_disk, whole);

    // The fine-tuned classifier exports as a timm folder with the dataset's class names.
    let export = tmp.path().join("timm");
    let e = trainer::export::export_run(&cfg.run.out, &export, trainer::export::layouts::Layout::Timm).unwrap();
    assert_eq!((e.num_classes, e.tensors), (10, pre.vit.depth * 14 + 8));
    let timm: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&e.config).unwrap()).unwrap();
    assert_eq!(timm["num_classes"], 10);
    assert_eq!(timm["label_names"][0], "tench, Tinca tinca");
    let (tensors, _) = load_tensors(&e.weights).unwrap();
    assert_eq!(tensors["head.weight"].0, vec![10, pre.vit.dim]);
    assert!(!tensors.contains_key("norm.weight") && tensors.contains_key("fc_norm.weight"));
    // A second export replaces the first; an export into the run folder itself is refused and
    // leaves the run's config.json as it was.
    trainer::export::export_run(&cfg.run.out, &export, trainer::export::layouts::Layout::Timm).unwrap();
    let config = std::fs::read(cfg.run.out.join("config.json")).unwrap();
    let err = trainer::export::export_run(&cfg.run.out, &cfg.run.out, trainer::export::layouts::Layout::Timm)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds a run") && err.contains("checkpoint.safetensors"),
        "{err}"
    );
    assert_eq!(std::fs::read(cfg.run.out.join("config.json")).unwrap(), config);

    backbone_exports_load_in_pytorch(&pre_dir, &tmp.path().join("vitdet"));

    // Stop at 25, resume: the same losses and the same final accuracy.
    let mut extra = SHORT.to_vec();
    extra.extend(["--stop-after", "25"]);
    let part_cfg = ft_args(f, Some(&pre_dir), &tmp.path().join("part"), &extra)
        .resolve()
        .unwrap();
    assert!(ft(&part_cfg, false).is_none());
    let mut resumed_cfg = part_cfg.clone();
    resumed_cfg.schedule.stop_after = None;
    let resumed = ft(&resumed_cfg, true).expect("finished");
    let b = lines(&resumed_cfg);
    crate::assert_same_losses(&losses(&a), &losses(&b), 1e-4);
    assert_eq!(resumed.eval, whole.eval);

    // A checkpoint with a key that is neither encoder nor pre-training head is refused.
    let (mut tensors, meta) = load_tensors(&pre.run.checkpoint_path()).unwrap();
    tensors.insert("projector.weight".into(), (vec![2, 2], vec![0.0; 4]));
    save_tensors(&pre.run.checkpoint_path(), &tensors, Some(meta)).unwrap();
    let bad = ft_args(f, Some(&pre_dir), &tmp.path().join("bad"), &SHORT)
        .resolve()
        .unwrap();
    let err = finetune::<CpuAutodiff>(&bad, false, &[Default::default()], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("projector.weight") && err.contains("checkpoint.safetensors"),
        "{err}"
    );
}

/// A small real set unlike Imagenette, built from its photos: a few of its classes, imbalanced,
/// in another look.
pub(crate) struct Derived {
    name: &'static str,
    /// (synset, train images, val images), the largest class first.
    classes: &'static [(&'static str, usize, usize)],
    look: fn(&image::RgbImage) -> image::RgbImage,
}

/// Grayscale photos of four classes, half of them in the largest.
pub(crate) const GRAY: Derived = Derived {
    name: "gray",
    classes: &[
        ("n02102040", 400, 200),
        ("n03028079", 200, 100),
        ("n03417042", 100, 50),
        ("n03888257", 50, 25),
    ],
    look: grayscale,
};

/// Edge maps (dark strokes on white, like sketches) of five other classes.
pub(crate) const EDGES: Derived = Derived {
    name: "edges",
    classes: &[
        ("n01440764", 300, 180),
        ("n02979186", 200, 120),
        ("n03000684", 130, 80),
        ("n03394916", 80, 50),
        ("n03425413", 50, 30),
    ],
    look: edges,
};

fn grayscale(img: &image::RgbImage) -> image::RgbImage {
    image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(img.clone()).to_luma8()).to_rgb8()
}

/// Sobel gradient magnitude of the luma, inverted.
fn edges(img: &image::RgbImage) -> image::RgbImage {
    let luma = image::DynamicImage::ImageRgb8(img.clone()).to_luma8();
    let (w, h) = luma.dimensions();
    let at =
        |x: i64, y: i64| luma.get_pixel(x.clamp(0, w as i64 - 1) as u32, y.clamp(0, h as i64 - 1) as u32)[0] as f32;
    image::RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as i64, y as i64);
        let gx = at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1)
            - at(x - 1, y - 1)
            - 2.0 * at(x - 1, y)
            - at(x - 1, y + 1);
        let gy = at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1)
            - at(x - 1, y - 1)
            - 2.0 * at(x, y - 1)
            - at(x + 1, y - 1);
        let v = 255.0 - (gx.hypot(gy) * 0.5).min(255.0);
        image::Rgb([v as u8; 3])
    })
}

/// `set`'s images as a `folder` layout (`<root>/{train,val}/<class>/*.jpg`, 72 px shorter side),
/// prepared into shards. Panics without ../shared: the test must not pass without its data.
pub(crate) fn prepare_derived(set: &Derived) -> PathBuf {
    // Tests run in parallel and share the prepared folder: one prepares it at a time (the others
    // find it done).
    static PREPARING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = PREPARING.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("derived-{}", set.name));
    let (raw, data) = (root.join("raw"), root.join("data"));
    let imagenette = crate::shared("data/imagenette").expect("../shared/data/imagenette is needed");
    let done = raw.join(".complete");
    if !done.exists() {
        for (split, pick) in [("train", 1), ("val", 2)] {
            for class in set.classes {
                let take = if pick == 1 { class.1 } else { class.2 };
                let mut files: Vec<PathBuf> = std::fs::read_dir(imagenette.join(split).join(class.0))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                files.sort();
                assert!(files.len() >= take, "{} {split}: {} images", class.0, files.len());
                let out = raw.join(split).join(class.0);
                std::fs::create_dir_all(&out).unwrap();
                for file in &files[..take] {
                    let img = image::open(file).unwrap().to_rgb8();
                    let short = img.width().min(img.height()) as f64;
                    let (w, h) = (
                        (img.width() as f64 * 72.0 / short).round(),
                        (img.height() as f64 * 72.0 / short).round(),
                    );
                    let small =
                        image::imageops::resize(&img, w as u32, h as u32, image::imageops::FilterType::Triangle);
                    let name = file.file_stem().unwrap().to_string_lossy().into_owned() + ".jpg";
                    (set.look)(&small).save(out.join(name)).unwrap();
                }
            }
        }
        std::fs::write(&done, b"").unwrap();
    }
    let cfg = PrepareConfig {
        dataset: "folder".into(),
        adapter: "folder".into(),
        source: raw,
        out_dir: data.clone(),
        options: Default::default(),
        transcode: TranscodeSettings {
            max_short_side: Some(72),
            ..Default::default()
        },
        subset: None,
        eval_split: "val".into(),
        holdout: None,
        shard_bytes: 256_000_000,
        row_group_bytes: 64_000_000,
    };
    prepare(&cfg, Worker::ALL, false).unwrap();
    data
}

/// What a user runs first (`--init`, a batch size and a step budget) on sets unlike Imagenette:
/// LP-FT by default, and before its first update the model scores its probe on the same
/// images; it ends above that probe on average over two seeds (never below it) and above the
/// majority share, and
/// `results.json` says what the end means against the probe and the labels.
#[test]
fn default_finetuning_ends_above_its_probe_and_the_majority_on_sets_unlike_imagenette() {
    let f = fixture().expect("../shared is needed");
    let tmp = tempfile::tempdir().unwrap();
    let pre_dir = tmp.path().join("pre");
    pretrained(f, &pre_dir);
    for set in [&GRAY, &EDGES] {
        let data = prepare_derived(set);
        let mut gains = Vec::new();
        for seed in ["0", "1"] {
            let out = tmp.path().join(format!("{}-{seed}", set.name));
            // Evaluating once, at the end, changes nothing in the training and saves a third.
            let argv = [
                "--batch-size",
                "32",
                "--max-steps",
                DEFAULT_STEPS,
                "--seed",
                seed,
                "--eval-every-epochs",
                "100",
            ];
            let cfg = crate::finetune_args(&data, Some(&pre_dir), &out, &argv)
                .resolve()
                .unwrap();
            assert_eq!(cfg.head_init, HeadInit::Probe);
            let done = ft(&cfg, false).expect("ran to the end");
            let logged = lines(&cfg);
            let evals: Vec<f64> = logged.iter().filter_map(|l| l.eval_top1).collect();
            let max_norm = logged.iter().map(|l| l.grad_norm).fold(0.0, f64::max);
            eprintln!(
                "{} seed {seed}: majority {:.3}, probe {:?}, start {:?}, evals {evals:.3?}, end {:.3}, top prediction share {:.3}, max grad norm {max_norm:.1}, warnings {:?}",
                set.name, done.majority_share, done.probe_top1, done.start_top1, done.eval.top1,
                done.top_prediction_share, done.warnings
            );
            check_start_and_diagnosis(set, &cfg, &done);
            let probe = done.probe_top1.unwrap();
            // Per seed never below the probe; above it on average over the seeds (below). The
            // micro ViT's margin on the grayscale set is a few images of 375 (55.7 -> 56.3 on
            // seed 1), and the CPU kernels' summation order under a loaded test run moves the
            // probe by as much.
            assert!(
                done.eval.top1 >= probe,
                "{} seed {seed}: ended at {} below its probe {probe}",
                set.name,
                done.eval.top1
            );
            gains.push(done.eval.top1 - probe);
            assert!(
                done.eval.top1 > done.majority_share,
                "{} seed {seed}: at the majority",
                set.name
            );
        }
        let mean = gains.iter().sum::<f64>() / gains.len() as f64;
        assert!(
            mean > 0.0,
            "{}: no gain over the probe on average ({gains:?})",
            set.name
        );
    }
}

/// The defaults' budget in the test above: about 13 epochs of the larger set at batch 32. With
/// the learning rate scaled linearly to the batch (the paper's rule), 3 of its 4 runs end below
/// their probe and one at it.
const DEFAULT_STEPS: &str = "300";

/// LP-FT's start is its probe on the same images, and the warnings are the diagnosis of the
/// results, no more and no less.
fn check_start_and_diagnosis(set: &Derived, cfg: &FinetuneConfig, done: &FinetuneResults) {
    let (start, probe) = (done.start_top1.unwrap(), done.probe_top1.unwrap());
    assert!(
        (start - probe).abs() <= 1.0 / done.eval.images as f64 + 1e-9,
        "{start} vs {probe}"
    );
    let labels: usize = set.classes.iter().map(|c| c.2).sum();
    assert_eq!(done.eval.images, labels);
    let majority = set.classes[0].2 as f64 / labels as f64;
    assert!((done.majority_share - majority).abs() < 1e-9);
    assert_eq!(done.top_prediction_share, done.eval.majority_share());
    let start_file: trainer::train::finetune::StartEval =
        trainer::train::run_folder::read_json(&cfg.run.out.join(trainer::train::run_folder::START_FILE)).unwrap();
    assert_eq!(start_file.model.top1, start);
    let start_eval = trainer::train::finetune::StartEval {
        probe_top1: probe,
        model: start_file.model,
    };
    assert_eq!(
        done.warnings,
        trainer::train::finetune::diagnose(&done.eval, majority, Some(&start_eval))
    );
}

/// `--recipe paper` is Table 9 as written; the default scales its regularizers to the run and
/// its learning rate to the batch by the square root.
#[test]
fn the_scaled_recipe_sizes_table_9_to_the_run_and_paper_keeps_it() {
    let f = fixture().expect("../shared is needed");
    let tmp = tempfile::tempdir().unwrap();
    let pre_dir = tmp.path().join("pre");
    pretrained(f, &pre_dir);
    let resolve = |extra: &[&str]| {
        ft_args(f, Some(&pre_dir), &tmp.path().join("ft"), extra)
            .resolve()
            .unwrap()
    };
    let paper = resolve(&["--recipe", "paper", "--batch-size", "32", "--max-steps", "200"]);
    assert_eq!(paper.regularization_scale, 1.0);
    assert_eq!(paper.head_init, HeadInit::Beit);
    assert_eq!(
        (paper.mixup.prob, paper.augment.erase_prob, paper.vit.drop_path),
        (1.0, 0.25, 0.1)
    );
    assert_eq!(paper.augment.randaugment.unwrap().prob, 0.5);
    // 200 steps of 32 over 2,840 images: 2.27 of the recipe's 300 epochs.
    let scaled = resolve(&["--batch-size", "32", "--max-steps", "200"]);
    let r = 200.0 / 88.0 / 300.0;
    assert!((scaled.regularization_scale - r).abs() < 1e-12);
    assert_eq!(scaled.head_init, HeadInit::Probe);
    assert!((scaled.mixup.prob - r).abs() < 1e-12 && (scaled.vit.drop_path - 0.1 * r).abs() < 1e-12);
    assert!((scaled.augment.erase_prob - 0.25 * r).abs() < 1e-12);
    assert!((scaled.augment.randaugment.unwrap().prob - 0.5 * r).abs() < 1e-12);
    // Table 9's warmup is 60 of its 300 epochs: a fifth of the run.
    assert_eq!((paper.schedule.warmup_steps, scaled.schedule.warmup_steps), (100, 40));
    // Table 9's 4e-3 at batch 1024, scaled to 32 linearly as written, by the square root here.
    assert_eq!(paper.schedule.lr_scaling, LrScaling::Linear);
    assert!((paper.schedule.lr - 4e-3 / 32.0).abs() < 1e-15);
    assert!((scaled.schedule.lr - 4e-3 / 32f64.sqrt()).abs() < 1e-15);
    // A value given on the command line is taken as given.
    let given = resolve(&[
        "--batch-size",
        "32",
        "--max-steps",
        "200",
        "--reprob",
        "0.3",
        "--drop-path",
        "0.2",
    ]);
    assert_eq!((given.augment.erase_prob, given.vit.drop_path), (0.3, 0.2));
    // Out-of-range values are refused naming the flag; NaN and the infinities do not parse.
    for (flag, value) in [("--mixup-switch-prob", "5"), ("--randaug-std", "-1")] {
        let arg = format!("{flag}={value}");
        let err = ft_args(f, Some(&pre_dir), &tmp.path().join("bad"), &[&arg])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
    for (flag, value) in [("--mixup", "nan"), ("--randaug-std", "inf"), ("--blr", "infinity")] {
        let argv: Vec<String> = ["--data", "d", "--out", "o", flag, value]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let Err(err) = crate::try_parse::<FinetuneArgs>(&argv) else {
            panic!("{flag} {value} refused")
        };
        let err = err.to_string();
        assert!(
            err.contains(flag) && err.contains("not a finite number"),
            "{flag} {value}: {err}"
        );
    }
    // At the recipe's full length the two agree, but for the learning rate's rule.
    let full = resolve(&["--batch-size", "32", "--head-init", "beit"]);
    let full_paper = resolve(&["--batch-size", "32", "--recipe", "paper"]);
    assert_eq!(full.regularization_scale, 1.0);
    assert_eq!(
        (full.mixup, full.augment, full.vit),
        (full_paper.mixup, full_paper.augment, full_paper.vit)
    );
    let linear = resolve(&["--batch-size", "32", "--head-init", "beit", "--lr-scaling", "linear"]);
    assert_eq!(linear.schedule, full_paper.schedule);
}

#[test]
fn eval_writes_probes_and_knn_and_report_gathers_runs() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let pre_dir = runs.join("splitmask");
    let pre = pretrained(f, &pre_dir);
    let spec = trainer::eval::frozen::EvalSpec {
        data: f.dir.clone(),
        eval_split: "val".into(),
        train_images: 400,
        val_images: 300,
        crop_ratio: 0.875,
        batch: 100,
        probe: trainer::eval::probe::ProbeConfig {
            epochs: 30,
            ..Default::default()
        },
        loader: Default::default(),
        select_fraction: None,
    };
    let device = Default::default();
    let run_encoder =
        trainer::train::encoder_from_run::frozen_encoder::<trainer::CpuBackend>(&pre_dir, &device).unwrap();
    let random_encoder =
        trainer::eval::frozen::FrozenEncoder::<trainer::CpuBackend>::random("micro", &pre.vit, 0, &device);
    let trained = trainer::eval::frozen::evaluate(&spec, &run_encoder, &device).unwrap();
    let random = trainer::eval::frozen::evaluate(&spec, &random_encoder, &device).unwrap();
    for r in [&trained, &random] {
        assert_eq!(r.probes.len(), 3, "two blocks and the final norm");
        assert_eq!((r.knn.bank, r.knn.queries), (400, 300));
        // Even random features separate Imagenette's classes somewhat; chance is 10%.
        assert!(r.best_probe.top1 > 0.12, "{:?}", r.best_probe);
        assert!(r
            .probes
            .iter()
            .all(|p| (0.0..=1.0).contains(&p.top1) && p.top5 >= p.top1));
    }
    assert_eq!((trained.init.as_str(), random.init.as_str()), ("splitmask", "random"));
    assert_eq!(trained.pretrain_steps, 40);
    // Different encoders, different features.
    assert_ne!(trained.probes, random.probes);
    trainer::train::run_folder::write_results(&pre_dir, &trained).unwrap();
    let random_dir = runs.join("random");
    std::fs::create_dir_all(&random_dir).unwrap();
    trainer::train::run_folder::write_results(&random_dir, &random).unwrap();

    let out = tmp.path().join("report");
    let report = trainer::report::write_report(&runs, &out).unwrap();
    assert_eq!((report.eval_runs, report.finetune_runs), (2, 0));
    let md = std::fs::read_to_string(&report.markdown).unwrap();
    assert!(
        md.contains("| splitmask | splitmask |") && md.contains("| random | random |"),
        "{md}"
    );
    assert!(md.contains(&format!("{:.1}", 100.0 * trained.knn.top1)));
    // The pre-training run's loss curve is plotted and decodes as a PNG.
    assert_eq!(report.plots.len(), 1);
    let png = image::open(&report.plots[0]).unwrap();
    assert_eq!((png.width(), png.height()), (900, 520));
    // An unknown results kind is an error naming the file.
    std::fs::write(random_dir.join("results.json"), r#"{"kind": "mystery"}"#).unwrap();
    let err = trainer::report::write_report(&runs, &out).unwrap_err().to_string();
    assert!(err.contains("random/results.json") && err.contains("mystery"), "{err}");
}

/// Supervised transfer (the paper's "Supervised IMNet" rows at small scale): a classifier
/// fine-tuned on one dataset starts fine-tuning on another with another class count, from its
/// run folder and from its timm export. Every encoder tensor arrives unchanged; the head is new.
#[test]
fn a_finetuned_encoder_and_its_timm_export_start_another_dataset() {
    use trainer::model::classifier::Classifier;
    use trainer::train::config::InitKind;
    use trainer::train::encoder_from_run::init_classifier;
    use trainer::train::tensor_file::{named_params, split_optimizer};
    let tmp = tempfile::tempdir().unwrap();
    let (gray, edges) = (prepare_derived(&GRAY), prepare_derived(&EDGES));
    let quick = [
        "--batch-size",
        "16",
        "--max-steps",
        "2",
        "--eval-every-epochs",
        "100",
        "--eval-images",
        "32",
    ];
    let source = tmp.path().join("gray");
    let mut a = crate::finetune_args(&gray, None, &source, &[&quick[..], &["--model", "cpu-tiny"]].concat())
        .resolve()
        .unwrap();
    a.vit = micro_vit();
    assert_eq!(ft(&a, false).unwrap().eval.predictions.len(), 4);
    let timm = tmp.path().join("gray-timm");
    trainer::export::export_run(&source, &timm, trainer::export::layouts::Layout::Timm).unwrap();
    let (trained, _) = split_optimizer(load_tensors(&a.run.checkpoint_path()).unwrap().0);
    for (init, kind, name) in [
        (&source, InitKind::Finetune, "supervised-folder"),
        (&timm, InitKind::Timm, "timm"),
    ] {
        let out = tmp.path().join(format!("edges-from-{name}"));
        let b = crate::finetune_args(&edges, Some(init), &out, &quick)
            .resolve()
            .unwrap();
        let source = b.init.as_ref().unwrap();
        assert_eq!((source.kind, source.name().as_str()), (kind, name));
        assert_eq!((b.classes, b.vit.dim, b.vit.depth), (5, a.vit.dim, a.vit.depth));
        let device = Default::default();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(9);
        let fresh = Classifier::<trainer::CpuBackend>::new(&b.vit, 5, &mut rng, &device);
        let model = init_classifier(fresh, source, &b.vit, &device).unwrap();
        let loaded = named_params(&model.encoder);
        for (k, (shape, values)) in &loaded {
            if k.starts_with("norm.") && kind == InitKind::Timm {
                continue; // a timm classifier has no final norm; fine-tuning does not use it
            }
            let (s, v) = &trained[&format!("encoder.{k}")];
            assert_eq!((shape, values), (s, v), "{name}: encoder.{k} arrives unchanged");
        }
        assert_eq!(
            model.head.weight.dims(),
            [b.vit.dim, 5],
            "{name}: a new head for 5 classes"
        );
        let r = ft(&b, false).unwrap();
        assert_eq!((r.init.as_str(), r.eval.predictions.len()), (name, 5));
    }
}

/// `trainer export --layout vitdet` prints its key report and writes the backbone with layer
/// scale folded; `tools/safetensors_to_pth.py` wraps it as detectron2's checkpointer reads it
/// (`{"model": state_dict}`), and PyTorch reads back every tensor with our values.
fn backbone_exports_load_in_pytorch(run: &std::path::Path, out: &std::path::Path) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["--quiet", "export", "--layout", "vitdet", "--run"])
        .arg(run)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(report.contains("blocks.0.attn.proj.weight ["), "{report}");
    assert!(
        !report.contains("ls1") && !report.contains("cls_token") && !report.contains("\nnorm."),
        "{report}"
    );
    let (ours, _) = load_tensors(&out.join("model.safetensors")).unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("export.json")).unwrap()).unwrap();
    assert_eq!(meta["checkpoint_key"], "model");
    assert_eq!(meta["layer_scale_folded"], true);
    assert_eq!(meta["keys"].as_object().unwrap().len(), ours.len());

    let python = crate::workspace().join(".venv/bin/python");
    if !python.exists() {
        assert!(
            !schemas::shared_data::required(),
            "make venv: {} is missing",
            python.display()
        );
        eprintln!("skipping the PyTorch half: no {}", python.display());
        return;
    }
    let pth = out.join("model.pth");
    let tool = crate::workspace().join("tools/safetensors_to_pth.py");
    let o = std::process::Command::new(&python)
        .arg(&tool)
        .arg(out.join("model.safetensors"))
        .arg(&pth)
        .args(["--key", "model"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = "import json, sys, torch\n\
                  sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True)['model']\n\
                  print(json.dumps({k: [list(v.shape), float(v.double().sum())] for k, v in sd.items()}))";
    let o = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&pth)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: std::collections::BTreeMap<String, (Vec<usize>, f64)> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(theirs.len(), ours.len());
    for (k, (shape, values)) in &ours {
        let (s, sum) = &theirs[k];
        let want: f64 = values.iter().map(|&v| v as f64).sum();
        assert_eq!(s, shape, "{k}");
        assert!((sum - want).abs() <= 1e-6 * (1.0 + want.abs()), "{k}: {sum} vs {want}");
    }
}
