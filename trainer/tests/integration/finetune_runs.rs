//! Fine-tuning, evaluation and reports on the small real Imagenette: a pre-trained encoder
//! loads strictly and fine-tunes above chance, resume reproduces an uninterrupted run, probes
//! and k-NN write results.json, and the report gathers them with plots.

use std::path::Path;

use trainer::model::vit::VitConfig;
use trainer::train::checkpoint::{load_tensors, save_tensors};
use trainer::train::config::{FinetuneArgs, FinetuneConfig, PretrainConfig};
use trainer::train::finetune::{finetune, FinetuneLine, FinetuneResults};
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
const SHORT: [&str; 16] = [
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
    let e = trainer::export::export_run(&cfg.run.out, &export).unwrap();
    assert_eq!((e.num_classes, e.tensors), (10, pre.vit.depth * 14 + 8));
    let timm: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&e.config).unwrap()).unwrap();
    assert_eq!(timm["num_classes"], 10);
    assert_eq!(timm["label_names"][0], "tench, Tinca tinca");
    let (tensors, _) = load_tensors(&e.weights).unwrap();
    assert_eq!(tensors["head.weight"].0, vec![10, pre.vit.dim]);
    assert!(!tensors.contains_key("norm.weight") && tensors.contains_key("fc_norm.weight"));

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

/// The experiment's fine-tuning at CPU scale (`experiments/run.sh`): LP-FT, and none of the
/// regularizers that Table 9 sizes for 300 epochs.
const CPU_SCALE: [&str; 10] = [
    "--head-init",
    "probe",
    "--mixup",
    "0",
    "--cutmix",
    "0",
    "--randaug-ops",
    "0",
    "--reprob",
    "0",
];

#[test]
fn finetuning_ends_above_its_own_linear_probe_without_collapsing() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pre_dir = tmp.path().join("pre");
    let pre = pretrained(f, &pre_dir);
    let device = Default::default();
    let spec = trainer::eval::frozen::EvalSpec {
        data: f.dir.clone(),
        eval_split: "val".into(),
        train_images: 2000,
        val_images: 3925,
        crop_ratio: 0.875,
        batch: 200,
        probe: trainer::eval::probe::ProbeConfig {
            epochs: 50,
            ..Default::default()
        },
        loader: Default::default(),
    };
    let encoder = trainer::train::pretrained::frozen_encoder::<trainer::CpuBackend>(&pre_dir, &device).unwrap();
    let probed = trainer::eval::frozen::evaluate(&spec, &encoder, &device).unwrap();

    let mut extra = SHORT.to_vec();
    extra.extend(CPU_SCALE);
    // 120 steps of 32: 1.35 epochs of the 2,840 train images.
    let at = extra.iter().position(|a| *a == "--max-steps").unwrap();
    extra[at + 1] = "120";
    let cfg = ft_args(f, Some(&pre_dir), &tmp.path().join("ft"), &extra)
        .resolve()
        .unwrap();
    assert_eq!(cfg.vit, pre.vit.clone().with_drop_path(0.1));
    let done = ft(&cfg, false).expect("ran to the end");
    eprintln!(
        "micro ViT: best probe {:?}, fine-tuned {:?}",
        probed.best_probe, done.eval
    );
    assert_eq!(done.eval.images, 3925);
    assert!(
        done.eval.top1 > probed.best_probe.top1,
        "fine-tuned top-1 {} is not above the best linear probe {:?}",
        done.eval.top1,
        probed.best_probe
    );
    // Every evaluation predicts many classes, and the final one beats the majority share.
    let evals: Vec<FinetuneLine> = lines(&cfg).into_iter().filter(|l| l.eval_top1.is_some()).collect();
    assert!(evals.len() >= 2);
    for l in &evals {
        let counts = l.eval_predictions.as_ref().expect("prediction histogram");
        let total: u64 = counts.iter().sum();
        let majority = *counts.iter().max().unwrap() as f64 / total as f64;
        assert!(
            majority < 0.5,
            "step {}: one class takes {majority:.2} of predictions",
            l.step
        );
        assert!(
            counts.iter().filter(|&&c| c > 0).count() >= 8,
            "step {}: {counts:?}",
            l.step
        );
        assert!(
            l.train_top1.is_some_and(|t| t > 0.1),
            "step {}: {:?}",
            l.step,
            l.train_top1
        );
    }
    // Imagenette's largest val class is 10.5% of it.
    assert!(done.eval.top1 > 0.2, "{:?}", done.eval);
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
    };
    let device = Default::default();
    let run_encoder = trainer::train::pretrained::frozen_encoder::<trainer::CpuBackend>(&pre_dir, &device).unwrap();
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
