//! Segmentation on real CamVid frames: a micro ViT with the multi-scale adapter and UperNet
//! overfits four frames, scored by the confusion-matrix mIoU; `trainer segment` runs resume
//! exactly, report, export and start from a pre-trained encoder; two workers follow one.

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use image::imageops::FilterType;
use rand::SeedableRng;
use trainer::data::augment::to_chw;
use trainer::eval::segmentation::Confusion;
use trainer::model::segmenter::{pixel_cross_entropy, predict, Segmenter, SegmenterConfig};
use trainer::model::vit::{Mode, VitConfig};
use trainer::train::config::{SegmentArgs, SegmentConfig};
use trainer::train::segment::{segment, SegmentLine, SegmentResults};
use trainer::CpuAutodiff;

const SIDE: u32 = 64;
const FRAMES: [&str; 4] = ["0001TP_006690", "0001TP_006720", "0001TP_006750", "0001TP_006780"];

/// The centre square of each frame at 64 px (image Catmull-Rom, labels nearest) as a
/// normalized batch and its label maps.
fn frames(root: &std::path::Path) -> (Vec<f32>, Vec<u8>) {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in FRAMES {
        let img = image::open(root.join(format!("train/{f}.jpg"))).unwrap().to_rgb8();
        let map = image::open(root.join(format!("trainannot/{f}.png")))
            .unwrap()
            .to_luma8();
        let (w, h) = img.dimensions();
        let s = w.min(h);
        let (x, y) = ((w - s) / 2, (h - s) / 2);
        let img = image::imageops::crop_imm(&img, x, y, s, s).to_image();
        let map = image::imageops::crop_imm(&map, x, y, s, s).to_image();
        to_chw(
            &image::imageops::resize(&img, SIDE, SIDE, FilterType::CatmullRom),
            &mut pixels,
        );
        labels.extend(image::imageops::resize(&map, SIDE, SIDE, FilterType::Nearest).into_raw());
    }
    (pixels, labels)
}

fn scores(model: &Segmenter<CpuAutodiff>, x: Tensor<CpuAutodiff, 4>, labels: &[u8]) -> (f64, f64) {
    let p: Vec<u8> = predict(model.forward(x, Mode::Eval))
        .into_data()
        .iter::<i64>()
        .map(|v| v as u8)
        .collect();
    let mut c = Confusion::new(11);
    c.add(labels, &p);
    let s = c.scores();
    (s.miou, s.pixel_accuracy)
}

/// 11 classes and the ignore label 11. After 150 full-batch AdamW steps the micro model
/// reproduces the frames it trained on: mIoU above 0.5 and pixel accuracy above 0.85, where
/// it starts below 0.15 (measured: see the assertion messages).
#[test]
fn a_micro_segmenter_overfits_four_camvid_frames() {
    let Some(root) = crate::shared("data/camvid") else {
        return;
    };
    let device = Default::default();
    let (pixels, labels) = frames(&root);
    assert!(labels.iter().all(|&l| l <= 11));
    let n = FRAMES.len();
    let x = Tensor::<CpuAutodiff, 4>::from_data(TensorData::new(pixels, [n, 3, SIDE as usize, SIDE as usize]), &device);
    let targets: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let y =
        Tensor::<CpuAutodiff, 3, Int>::from_data(TensorData::new(targets, [n, SIDE as usize, SIDE as usize]), &device);
    let vit = VitConfig::cpu_tiny()
        .with_dim(64)
        .with_depth(4)
        .with_heads(4)
        .with_drop_path(0.0);
    let cfg = SegmenterConfig::for_vit(vit, 11).with_channels(32);
    let mut model: Segmenter<CpuAutodiff> = cfg.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &device);
    let (start_miou, _) = scores(&model, x.clone(), &labels);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut losses = Vec::new();
    for step in 0..150u64 {
        let mode = Mode::Train {
            seed: step,
            first: 0,
            copies: 1,
        };
        let loss = pixel_cross_entropy(model.forward(x.clone(), mode), y.clone());
        losses.push(loss.clone().into_scalar().to_f64());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(2e-3, model, grads);
    }
    let (miou, acc) = scores(&model, x, &labels);
    eprintln!(
        "segmenter: mIoU {start_miou:.3} -> {miou:.3}, pixel accuracy {acc:.3}, loss {:.3} -> {:.3}",
        losses[0], losses[149]
    );
    assert!(losses[149] < losses[0] * 0.5, "{losses:?}");
    assert!(start_miou < 0.15, "start {start_miou}");
    assert!(miou > 0.5 && acc > 0.85, "mIoU {miou}, pixel accuracy {acc}");
}

/// Real CamVid prepared at a 64 px short side (all 367 train and 101 val frames), with a
/// 256-entry random-patches vocabulary and its token shards; None without shared data.
fn camvid() -> Option<&'static std::path::Path> {
    use pipeline::prepare::{prepare, PrepareConfig, Worker};
    use std::sync::OnceLock;
    static DIR: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("camvid-64");
        let cfg = PrepareConfig {
            dataset: "camvid".into(),
            adapter: "segmentation".into(),
            source: crate::shared("data/camvid")?,
            out_dir: dir.clone(),
            options: Default::default(),
            transcode: pipeline::transcode::TranscodeSettings {
                max_short_side: Some(64),
                ..Default::default()
            },
            subset: None,
            eval_split: "val".into(),
            holdout: None,
            shard_bytes: 256_000_000,
            row_group_bytes: 1_000_000,
        };
        prepare(&cfg, Worker::ALL, false).unwrap();
        let vc = pipeline::vocab::VocabConfig {
            kind: schemas::VocabKind::RandomPatches,
            size: 256,
            seed: 0,
            sample: 0,
            iterations: 0,
            progress: false,
        };
        let vocab = dir.join(vc.file_name());
        if !vocab.exists() {
            pipeline::vocab::build(&dir, &vc).unwrap().save(&vocab).unwrap();
            pipeline::vocab::token_shards::tokenize_dataset(&dir, &vocab, false).unwrap();
        }
        Some(dir)
    })
    .as_deref()
}

/// `trainer segment` arguments for a short cpu-tiny run on `data` in `out`: 64 px crops of
/// frames at a 64 px short side, UperNet with 32 channels, logged every step.
fn seg_args(data: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> SegmentArgs {
    #[rustfmt::skip]
    let mut argv = crate::strings(&[
        "--data", &data.display().to_string(), "--out", &out.display().to_string(),
        "--crop", "64", "--short-side", "64", "--channels", "32", "--blr", "1e-3",
        "--log-every", "1", "--eval-every-epochs", "0.1", "--eval-images", "12",
        "--checkpoint-every", "6",
    ]);
    // Defaults the caller may override.
    for (flag, value) in [("--model", "cpu-tiny"), ("--batch-size", "8"), ("--max-steps", "12")] {
        let given = extra.contains(&flag) || (flag == "--model" && extra.contains(&"--init"));
        if !given {
            argv.extend(crate::strings(&[flag, value]));
        }
    }
    argv.extend(crate::strings(extra));
    crate::parse(&argv)
}

fn seg_losses(cfg: &SegmentConfig) -> Vec<(u64, f64)> {
    crate::metrics_lines::<SegmentLine>(&cfg.run.out)
        .iter()
        .map(|l| (l.step, l.seg_loss))
        .collect()
}

fn seg_run(cfg: &SegmentConfig, workers: usize, resume: bool) -> Option<SegmentResults> {
    segment::<CpuAutodiff>(cfg, resume, &vec![Default::default(); workers], false).unwrap()
}

/// A short run on real CamVid writes its folder (config, metrics with periodic mIoU,
/// checkpoint, results on all 101 val frames); stopped halfway and resumed it reproduces the
/// uninterrupted losses and scores; the report gathers it and its encoder exports to timm's
/// names; a run from a BEiT pre-training run loads that encoder.
#[test]
fn a_camvid_segmentation_run_resumes_exactly_reports_and_exports() {
    let Some(data) = camvid() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let whole_cfg = seg_args(data, &tmp.path().join("whole"), &[]).resolve().unwrap();
    assert_eq!(whole_cfg.classes(), 11, "CamVid's classes.txt");
    assert_eq!((whole_cfg.schedule.total_steps, whole_cfg.stride), (12, 42));
    let whole = seg_run(&whole_cfg, 1, false).expect("finished");
    assert_eq!(
        (whole.kind.as_str(), whole.init.as_str(), whole.steps),
        ("segment", "random", 12)
    );
    assert!(
        whole.eval.pixels > 100 * 64 * 64,
        "every val frame at its stored size: {}",
        whole.eval.pixels
    );
    assert!(
        whole.eval.pixel_accuracy > 0.0 && whole.eval.miou > 0.0,
        "{:?}",
        whole.eval
    );
    let lines = crate::metrics_lines::<SegmentLine>(&whole_cfg.run.out);
    assert_eq!(lines.len(), 12);
    assert!(lines.iter().filter(|l| l.eval_miou.is_some()).count() >= 2);
    assert!(lines[11].seg_loss < lines[0].seg_loss, "{lines:?}");

    // Stop after 6 updates, resume: the same losses and the same final scores.
    let part = seg_args(data, &tmp.path().join("part"), &["--stop-after", "6"])
        .resolve()
        .unwrap();
    assert!(seg_run(&part, 1, false).is_none());
    let mut rest = part.clone();
    rest.schedule.stop_after = None;
    let resumed = seg_run(&rest, 1, true).expect("finished");
    assert_eq!(seg_losses(&whole_cfg), seg_losses(&rest));
    assert_eq!(resumed.eval, whole.eval);

    let export = trainer::export::export_run(
        &whole_cfg.run.out,
        &tmp.path().join("timm"),
        trainer::export::layouts::Layout::Timm,
    )
    .unwrap();
    assert!(
        export
            .keys
            .iter()
            .any(|(k, s)| k == "pos_embed" && s == &vec![1, 65, 128]),
        "{:?}",
        export.keys
    );
    assert!(!export.keys.iter().any(|(k, _)| k.contains("fpn") || k.contains("psp")));

    // From a (4-update) BEiT pre-training run: its encoder, its name in the results.
    let vocab = data.join("vocab-random_patches-256-s0.safetensors");
    let pre_out = tmp.path().join("beit");
    let pre_argv = [
        "--method",
        "beit",
        "--model",
        "cpu-tiny",
        "--batch-size",
        "8",
        "--max-steps",
        "4",
    ];
    // CamVid has no class labels: the k-NN monitor is refused up front, not run into.
    let knn = [pre_argv.as_slice(), &["--knn-every", "2"]].concat();
    let err = crate::pretrain_args(data, &vocab, &pre_out, &knn)
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(err.contains("--knn-every") && err.contains("class labels"), "{err}");
    let pre = crate::pretrain_args(data, &vocab, &pre_out, &pre_argv)
        .resolve()
        .unwrap();
    crate::run(&pre, false);
    let init = seg_args(
        data,
        &tmp.path().join("from-beit"),
        &["--init", &pre_out.display().to_string(), "--max-steps", "2"],
    )
    .resolve()
    .unwrap();
    assert_eq!(init.segmenter.vit, pre.vit.clone().with_drop_path(0.1));
    let done = seg_run(&init, 1, false).expect("finished");
    assert_eq!((done.init.as_str(), done.steps), ("beit", 2));
    assert!(done.pretrain_data.is_some());

    // The report: its segmentation section, and runs.parquet / metrics.parquet as pyarrow,
    // polars and duckdb read them: one row per run folder, one per number of metrics.jsonl.
    let report = trainer::report::write_report(tmp.path(), &tmp.path().join("report")).unwrap();
    let md = std::fs::read_to_string(&report.markdown).unwrap();
    assert!(
        md.contains("## Semantic segmentation") && md.contains("| whole | random |"),
        "{md}"
    );
    assert!(md.contains("| beit |") && md.contains("| random | "), "{md}");
    check_report_frames(
        tmp.path(),
        &tmp.path().join("report"),
        &["beit", "from-beit", "part", "whole"],
    );
}

/// Reads the report's Parquet files with the real clients (`tests/python/report_frames.py`)
/// and checks their row counts against the run folders' own files.
fn check_report_frames(runs: &std::path::Path, report: &std::path::Path, names: &[&str]) {
    let numbers: usize = names
        .iter()
        .map(|n| {
            std::fs::read_to_string(runs.join(n).join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v.as_object()
                        .unwrap()
                        .iter()
                        .filter(|(k, x)| *k != "step" && x.is_number())
                        .count()
                })
                .sum::<usize>()
        })
        .sum();
    let o = std::process::Command::new("python3")
        .arg(crate::workspace().join("tests/python/report_frames.py"))
        .arg(report)
        .output()
        .expect("python3 runs");
    assert!(
        o.status.success(),
        "a reader disagrees (`make python-deps` installs them): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for reader in ["pyarrow", "polars", "duckdb"] {
        assert_eq!(got[reader]["runs"], names.len(), "{reader}: {got}");
        assert_eq!(got[reader]["metrics"], numbers, "{reader}: {got}");
        assert_eq!(got[reader]["names"], serde_json::json!(names), "{reader}");
    }
    let metric_names = got["pyarrow"]["metric_names"].as_array().unwrap();
    for m in ["seg_loss", "eval_miou", "mim", "lr"] {
        assert!(metric_names.iter().any(|x| x == m), "{m} in {metric_names:?}");
    }
}

/// Two workers with batch 4 follow one with batch 8 in losses and parameters. Group norm in
/// the head: batch norm's statistics are each device's own batch (DDP without SyncBN).
#[test]
fn two_segmentation_workers_with_batch_b_follow_one_with_batch_2b() {
    let Some(data) = camvid() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = |name: &str, batch: &str, devices: &[&str]| {
        let mut extra = vec!["--head-norm", "group", "--batch-size", batch, "--max-steps", "8"];
        extra.extend(devices);
        seg_args(data, &tmp.path().join(name), &extra).resolve().unwrap()
    };
    let one = cfg("one", "8", &[]);
    let two = cfg("two", "4", &["--devices", "cpu:2"]);
    assert_eq!(two.schedule.effective_batch(), one.schedule.effective_batch());
    seg_run(&one, 1, false).unwrap();
    seg_run(&two, 2, false).unwrap();
    crate::assert_same_losses(&seg_losses(&one), &seg_losses(&two), 1e-5);
    let (a, _) = trainer::train::tensor_file::load_tensors(&one.run.checkpoint_path()).unwrap();
    let (b, _) = trainer::train::tensor_file::load_tensors(&two.run.checkpoint_path()).unwrap();
    let diff = a
        .iter()
        .flat_map(|(k, (_, va))| va.iter().zip(&b[k].1).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    eprintln!("segmentation, 8 steps: 1 x 8 against 2 x 4, largest parameter difference {diff:e}");
    assert!(diff < 5e-5, "{diff}");
}
