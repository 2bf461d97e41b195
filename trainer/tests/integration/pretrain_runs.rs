//! Pre-training runs on the small real Imagenette: resume equality, a short run that learns,
//! configuration errors.

use trainer::train::config::PretrainConfig;

use crate::{args, fixture, metrics, micro_vit, prepare_imagenette, pretrain_args, run};

#[test]
fn resumed_run_continues_with_identical_losses() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for method in ["beit", "splitmask", "mae", "dino"] {
        let common = [
            "--method",
            method,
            "--model",
            "cpu-tiny",
            "--batch-size",
            "16",
            "--accum",
            "2",
            "--max-steps",
            "6",
            "--epochs",
            "1",
            "--log-every",
            "1",
            "--warmup-epochs",
            "0.1",
            "--limit-images",
            "256",
        ];
        let resolve = |out: &str, extra: &[&str]| -> PretrainConfig {
            let mut all: Vec<&str> = common.to_vec();
            all.extend_from_slice(extra);
            if method == "dino" {
                // A small head and two local crops keep the test short; the teacher and the
                // centre must come back from the checkpoint for the losses to match.
                all.extend_from_slice(&["--prototypes", "256", "--local-crops", "2"]);
            }
            let mut cfg = args(f, &f.vocab_small, &tmp.path().join(out), &all).resolve().unwrap();
            cfg.vit = micro_vit();
            cfg
        };
        let whole = resolve(&format!("{method}-whole"), &[]);
        run(&whole, false);
        let a = metrics(&whole);
        assert_eq!(a.len(), 6);

        let part = resolve(&format!("{method}-part"), &["--stop-after", "3"]);
        let s = run(&part, false);
        assert_eq!(s.steps, 3);
        assert!(part.run.checkpoint_path().exists());
        // Resuming with a different configuration is refused, naming the field.
        let mut other = part.clone();
        other.schedule.lr *= 2.0;
        let err =
            trainer::train::pretrain::pretrain::<trainer::CpuAutodiff>(&other, true, &[Default::default()], false)
                .unwrap_err();
        assert!(err.to_string().contains("lr"), "{err}");
        // A process killed after its checkpoint may have logged later steps: resuming drops them.
        let mut text = std::fs::read_to_string(part.run.metrics_path()).unwrap();
        let mut orphan = metrics(&part).pop().unwrap();
        orphan.step = 4;
        orphan.loss = 123.0;
        text.push_str(&format!("{}\n", serde_json::to_string(&orphan).unwrap()));
        std::fs::write(part.run.metrics_path(), text).unwrap();
        let mut rest = part.clone();
        rest.schedule.stop_after = None;
        run(&rest, true);
        let b = metrics(&part);
        assert_eq!(b.len(), 6);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.step, y.step);
            assert_eq!(x.lr, y.lr);
            assert!(
                (x.loss - y.loss).abs() < 1e-5,
                "{method} step {}: {} vs {}",
                x.step,
                x.loss,
                y.loss
            );
            assert!((x.grad_norm - y.grad_norm).abs() < 1e-4 * x.grad_norm.max(1.0));
        }
        if method == "splitmask" {
            assert!(a.iter().all(|l| l.term("nce").is_some()));
        }
        // The run folder holds the resolved config, metrics and the checkpoint.
        let written = trainer::train::config::load_config(&whole.run.out).unwrap();
        assert_eq!(written, whole);
    }
}

/// 150 real SplitMask steps on `B`, with the assertions every backend must pass; returns the
/// logged `(step, loss)`.
fn short_real_splitmask_run<B: burn::tensor::backend::AutodiffBackend>(
    device: B::Device,
    name: &str,
) -> Vec<(u64, f64)> {
    let Some(f) = fixture() else { return Vec::new() };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("splitmask");
    let cfg = args(
        f,
        &f.vocab_full,
        &out,
        &[
            "--method",
            "splitmask",
            "--model",
            "cpu-tiny",
            "--batch-size",
            "16",
            "--max-steps",
            "150",
            "--epochs",
            "100",
            "--blr",
            "0.2",
            "--warmup-epochs",
            "0.2",
            "--log-every",
            "10",
            "--checkpoint-every",
            "1000",
            "--knn-every",
            "150",
            "--knn-images",
            "500",
        ],
    )
    .resolve()
    .unwrap();
    let summary = trainer::train::pretrain::pretrain::<B>(&cfg, false, &[device], false).unwrap();
    let lines = metrics(&cfg);
    let mim_of = |l: &trainer::train::pretrain::MetricsLine| l.term("mim").expect("SplitMask logs mim");
    let last: Vec<f64> = lines.iter().rev().take(3).map(mim_of).collect();
    let mim = last.iter().sum::<f64>() / last.len() as f64;
    let entropy = token_entropy(f, &cfg);
    eprintln!(
        "{name}: 150 SplitMask steps: mim {mim:.3} (ln 8192 = {:.3}, target unigram entropy {entropy:.3}), first {:.3}, {:.1} img/s",
        (8192f64).ln(),
        mim_of(&lines[0]),
        summary.images_per_s
    );
    // 150 steps of batch 16 take the token loss from ln 8192 to the targets' frequency
    // entropy (the plug-in estimate above is biased low by ~0.03 nats); learning the context
    // beyond that takes longer runs (`make pretrain`).
    assert!(mim < (8192f64).ln() - 2.5, "{mim}");
    assert!(
        mim < entropy + 0.1,
        "the model must learn the token frequencies: {mim} vs {entropy}"
    );
    // The two halves' pooled decoder outputs identify their image among the 16 of a batch:
    // InfoNCE well below chance (ln 16).
    let nce: Vec<f64> = lines.iter().rev().take(3).map(|l| l.term("nce").unwrap()).collect();
    let nce = nce.iter().sum::<f64>() / 3.0;
    assert!(nce < 0.6 * 16f64.ln(), "InfoNCE {nce} vs chance {}", 16f64.ln());
    assert!(lines.iter().all(|l| l.term("nce").unwrap().is_finite()));
    // The k-NN monitor ran on the last step: 500 val images against 500 train images.
    let knn = lines.last().unwrap().knn_top1.expect("k-NN logged on the last step");
    eprintln!("{name}: k-NN top-1 after 150 steps: {:.1}% (chance 10%)", 100.0 * knn);
    assert!(knn > 0.15, "{knn}");
    lines.iter().map(|l| (l.step, l.loss)).collect()
}

/// The flex run, shared by the tests that need it.
fn flex_splitmask_losses() -> &'static [(u64, f64)] {
    static LOSSES: std::sync::OnceLock<Vec<(u64, f64)>> = std::sync::OnceLock::new();
    LOSSES.get_or_init(|| short_real_splitmask_run::<trainer::CpuAutodiff>(Default::default(), "flex"))
}

#[test]
fn short_real_splitmask_run_learns_tokens_and_matches_halves() {
    assert!(fixture().is_none() || !flex_splitmask_losses().is_empty());
}

/// The same run on LibTorch's CPU kernels: the same assertions, and the same losses as flex up
/// to float rounding (summation orders differ between the two libraries' kernels, and 150
/// updates compound the differences a little).
#[cfg(feature = "tch")]
#[test]
fn the_same_run_on_libtorch_passes_the_same_checks_with_the_same_losses() {
    let tch = short_real_splitmask_run::<trainer::backend::TchAutodiff>(Default::default(), "tch-cpu");
    let flex = flex_splitmask_losses();
    assert_eq!(tch.len(), flex.len());
    let worst = tch
        .iter()
        .zip(flex)
        .map(|((_, a), (_, b))| (a - b).abs() / b.abs())
        .fold(0.0, f64::max);
    eprintln!(
        "LibTorch against flex: largest relative loss difference {worst:.2e} over {} logged steps",
        tch.len()
    );
    for (i, ((step, a), (_, b))) in tch.iter().zip(flex).enumerate() {
        // The first logged loss is of the same initial weights on the same batch.
        let tol = if i == 0 { 1e-4 } else { 5e-2 * b.abs() };
        assert!((a - b).abs() <= tol, "step {step}: LibTorch {a} vs flex {b}");
    }
}

/// Entropy (nats) of the train targets' token frequencies, from a few augmented batches.
fn token_entropy(f: &crate::Fixture, cfg: &PretrainConfig) -> f64 {
    use burn::prelude::*;
    let set = trainer::data::images::ImageSet::load(&f.dir, "train").unwrap();
    let vocab = crate::load_vocab(cfg.vocab.as_ref().expect("SplitMask has a vocabulary"));
    let device = Default::default();
    let tok =
        trainer::model::device_tokenizer::DeviceTokenizer::<trainer::CpuBackend>::new(&vocab, 8, &device).unwrap();
    let mut counts = vec![0f64; 8192];
    for i in 0..8 {
        let b = trainer::data::loader::make_batch(&set, &cfg.augment, 64, 99, i).unwrap();
        let t = Tensor::<trainer::CpuBackend, 4>::from_data(TensorData::new(b.images, [64, 3, 64, 64]), &device);
        for v in tok.tokens(t).into_data().iter::<i64>() {
            counts[v as usize] += 1.0;
        }
    }
    let n: f64 = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| -(c / n) * (c / n).ln())
        .sum()
}

#[test]
fn divergence_skips_updates_rolls_back_then_stops() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // An absurd learning rate makes the weights overflow within a few updates.
    let mut cfg = args(
        f,
        &f.vocab_small,
        &tmp.path().join("diverge"),
        &[
            "--method",
            "beit",
            "--model",
            "cpu-tiny",
            "--batch-size",
            "8",
            "--max-steps",
            "40",
            "--epochs",
            "10",
            "--blr",
            "1e30",
            "--warmup-epochs",
            "0",
            "--log-every",
            "1",
            "--checkpoint-every",
            "1",
            "--limit-images",
            "64",
        ],
    )
    .resolve()
    .unwrap();
    cfg.vit = micro_vit();
    let err = trainer::train::pretrain::pretrain::<trainer::CpuAutodiff>(&cfg, false, &[Default::default()], false)
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("diverged") && msg.contains("after 3 rollbacks"), "{msg}");
    let lines = metrics(&cfg);
    assert!(lines.last().unwrap().skipped_steps >= 3, "skipped updates are counted");
    // Rolled-back steps were logged once: steps are strictly increasing.
    assert!(lines.windows(2).all(|w| w[0].step < w[1].step));
}

/// The method registry: every `Method` value builds its model, draws its masks and trains on
/// micro data through the one training engine, so a method declared but not wired fails here,
/// not in a user's run.
#[test]
fn every_method_builds_draws_its_masks_and_trains_two_steps() {
    use clap::ValueEnum;
    use trainer::model::method::Method;
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    assert!(Method::value_variants().len() >= 2);
    for method in Method::value_variants() {
        let name = method.name();
        let extra = [
            "--method",
            name,
            "--model",
            "cpu-tiny",
            "--batch-size",
            "8",
            "--max-steps",
            "2",
            "--epochs",
            "1",
            "--log-every",
            "1",
            "--limit-images",
            "32",
        ];
        let mut cfg = args(f, &f.vocab_small, &tmp.path().join(name), &extra)
            .resolve()
            .unwrap();
        cfg.vit = micro_vit();
        let summary =
            trainer::train::pretrain::pretrain::<trainer::CpuAutodiff>(&cfg, false, &[Default::default()], false)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(summary.steps, 2, "{name}");
        let lines = metrics(&cfg);
        assert_eq!(lines.len(), 2, "{name}: one line per step");
        for l in &lines {
            assert!(l.loss.is_finite() && l.loss > 0.0 && l.grad_norm > 0.0, "{name}: {l:?}");
            assert!(!l.terms.is_empty(), "{name}: the method's terms are logged: {l:?}");
            assert!(l.terms.values().all(|v| v.is_some_and(f64::is_finite)), "{name}: {l:?}");
            let accuracy = l.term("mim_accuracy").unwrap_or(0.0);
            assert!((0.0..=1.0).contains(&accuracy), "{name}: {l:?}");
        }
        assert!(cfg.run.checkpoint_path().exists(), "{name}: checkpoint written");
        // Every method's checkpoint gives up its encoder (its own heads are known and dropped).
        let (_, encoder) =
            trainer::train::encoder_from_run::run_encoder::<trainer::CpuBackend>(&cfg.run.out, &Default::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(encoder.blocks.len(), cfg.vit.depth, "{name}");
    }
}

/// A second trainer on a run folder in use is refused, naming the holder, before it writes.
#[test]
fn a_second_trainer_on_a_run_folder_is_refused() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let held = pipeline::lock::FolderLock::acquire(&out, pipeline::lock::LOCK_FILE, "trainer").unwrap();
    let cfg = args(f, &f.vocab_small, &out, &["--max-steps", "2", "--batch-size", "8"])
        .resolve()
        .unwrap();
    let err = trainer::train::pretrain::pretrain::<trainer::CpuAutodiff>(&cfg, true, &[Default::default()], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another process writes this folder") && err.contains("trainer (pid"),
        "{err}"
    );
    assert!(!out.join("config.json").exists());
    drop(held);
    let done =
        trainer::train::pretrain::pretrain::<trainer::CpuAutodiff>(&cfg, true, &[Default::default()], false).unwrap();
    assert_eq!(done.steps, 2);
}

/// A vocabulary file that is not the one the config resolved (rebuilt in between, or another
/// node's copy) is refused: the targets would silently differ.
#[test]
fn a_vocabulary_other_than_the_configs_is_refused() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut cfg = args(f, &f.vocab_small, &out, &["--max-steps", "1", "--batch-size", "8"])
        .resolve()
        .unwrap();
    let recorded = cfg
        .vocab_sha256
        .clone()
        .expect("a token method records its vocabulary's hash");
    cfg.vocab_sha256 = Some("0".repeat(recorded.len()));
    let err = trainer::train::pretrain::pretrain::<trainer::CpuAutodiff>(&cfg, false, &[Default::default()], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the vocabulary changed") && err.contains(&recorded),
        "{err}"
    );
    assert!(!cfg.run.checkpoint_path().exists(), "nothing trained");
}

/// A manifest whose shard names leave the dataset folder (absolute, `..`) is refused when read,
/// naming the field, before a reader opens or a writer (tokenize, vocab build) replaces them.
#[test]
fn a_manifest_naming_files_outside_its_folder_is_refused() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(f.dir.join("manifest.json")).unwrap();
    for hostile in ["/etc/passwd", "../imagenette-72/train-00000.parquet"] {
        let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
        m["shards"][0]["file"] = hostile.into();
        std::fs::write(tmp.path().join("manifest.json"), m.to_string()).unwrap();
        let err = pipeline::prepare::load_manifest(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("shards[0].file") && err.contains(hostile), "{err}");
    }
}

/// A hand-edited or hostile run config.json (0 heads, a huge width) is refused when read back,
/// naming the file, before a model is built from it.
#[test]
fn a_hostile_run_config_is_refused_before_building() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = args(f, &f.vocab_small, &tmp.path().join("run"), &[]).resolve().unwrap();
    for (field, value, says) in [
        ("heads", 0u64, "heads 0 does not divide"),
        ("dim", 1u64 << 31, "dim 2147483648 is over"),
    ] {
        let mut v = serde_json::to_value(&cfg).unwrap();
        v["vit"][field] = value.into();
        let run = tmp.path().join(field);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("config.json"), v.to_string()).unwrap();
        let err = trainer::train::config::load_config(&run).unwrap_err().to_string();
        assert!(err.contains(says) && err.contains("config.json"), "{field}: {err}");
    }
}

#[test]
fn bad_configuration_is_an_error_naming_the_field() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let err = |extra: &[&str]| {
        args(f, &f.vocab_small, tmp.path(), extra)
            .resolve()
            .unwrap_err()
            .to_string()
    };
    assert!(err(&["--model", "huge"]).contains("--model \"huge\": unknown preset"));
    assert!(err(&["--batch-size", "100000"]).contains("--batch-size"));
    assert!(err(&["--method", "splitmask", "--mask-ratio", "0.4"]).contains("50/50"));
    // An unknown masking is refused while parsing, naming the choices.
    let (data, vocab) = (f.dir.display().to_string(), f.vocab_small.display().to_string());
    let argv = crate::strings(&["--data", &data, "--vocab", &vocab, "--masking", "diagonal"]);
    let masking = crate::try_parse::<trainer::train::config::PretrainArgs>(&argv)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        masking.contains("--masking") && masking.contains("block, uniform"),
        "{masking}"
    );
    assert!(err(&["--loader-memory-mb", "0"]).contains("--loader-memory-mb \"0\""));
    assert!(err(&["--select-fraction", "0.9"]).contains("--select-fraction"));
    // A flag of another method is refused, naming its owner.
    for method in ["beit", "splitmask"] {
        let e = err(&["--method", method, "--norm-pix-loss", "false"]);
        assert!(e.contains("--norm-pix-loss are MAE's"), "{e}");
    }
    assert!(err(&["--method", "beit", "--split-visible", "0.5"]).contains("SplitMask's"));
    // The token methods need a vocabulary; MAE predicts pixels and refuses one.
    let resolve = |argv: &[&str]| {
        crate::parse::<trainer::train::config::PretrainArgs>(&crate::strings(argv))
            .resolve()
            .unwrap_err()
            .to_string()
    };
    let out = tmp.path().display().to_string();
    let no_vocab = resolve(&["--data", &data, "--out", &out, "--method", "beit"]);
    assert!(no_vocab.contains("--vocab is required"), "{no_vocab}");
    let mae_vocab = resolve(&["--data", &data, "--out", &out, "--method", "mae", "--vocab", &vocab]);
    assert!(mae_vocab.contains("takes no vocabulary"), "{mae_vocab}");
    // A hand-edited config.json is validated by the method when a command reads it back.
    let mut cfg = args(
        f,
        &f.vocab_small,
        &tmp.path().join("edited"),
        &["--method", "splitmask"],
    )
    .resolve()
    .unwrap();
    cfg.mask_count += 1;
    let edited = cfg.validate().unwrap_err().to_string();
    assert!(edited.contains("halves or quarters"), "{edited}");
    std::fs::create_dir_all(&cfg.run.out).unwrap();
    std::fs::write(cfg.run.out.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let read = trainer::train::config::load_config(&cfg.run.out)
        .unwrap_err()
        .to_string();
    assert!(read.contains("halves or quarters"), "{read}");
    let mut mae = args(f, &f.vocab_small, tmp.path(), &["--method", "mae"])
        .resolve()
        .unwrap();
    assert!(mae.vocab.is_none() && mae.vit.sinusoidal_pos);
    // --pos-embed picks the table for any method, and MAE's default can be overridden.
    let sincos = args(f, &f.vocab_small, tmp.path(), &["--pos-embed", "sincos"])
        .resolve()
        .unwrap();
    assert!(sincos.vit.sinusoidal_pos);
    let plain = args(f, &f.vocab_small, tmp.path(), &[]).resolve().unwrap();
    assert!(!plain.vit.sinusoidal_pos);
    let learned_mae = args(
        f,
        &f.vocab_small,
        tmp.path(),
        &["--method", "mae", "--pos-embed", "learned"],
    )
    .resolve()
    .unwrap();
    assert!(!learned_mae.vit.sinusoidal_pos);
    assert_eq!(mae.mask_count, mae.vit.num_patches() * 3 / 4);
    mae.options.mae.decoder_dim = 30;
    assert!(mae.validate().unwrap_err().to_string().contains("divisible"));
}

#[test]
fn best_knn_checkpoint_is_the_encoder_at_the_best_logged_knn() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = args(
        f,
        &f.vocab_small,
        &tmp.path().join("best"),
        &[
            "--model",
            "cpu-tiny",
            "--batch-size",
            "16",
            "--max-steps",
            "24",
            "--blr",
            "0.5",
            "--warmup-epochs",
            "0",
            "--knn-every",
            "4",
            "--knn-images",
            "200",
        ],
    )
    .resolve()
    .unwrap();
    cfg.vit = micro_vit();
    run(&cfg, false);
    let logged: Vec<(u64, f64)> = metrics(&cfg)
        .iter()
        .filter_map(|l| l.knn_top1.map(|k| (l.step, k)))
        .collect();
    assert_eq!(logged.len(), 6);
    eprintln!("k-NN top-1 by step: {logged:?}");
    // The first of the best logged scores.
    let (best_step, best) = logged
        .iter()
        .copied()
        .fold((0, f64::MIN), |b, (s, k)| if k > b.1 { (s, k) } else { b });
    let state = trainer::train::run_folder::read_state(&cfg.run.best_path()).unwrap();
    assert_eq!(state.best_knn, Some((best, best_step)), "{logged:?}");
    assert_eq!(state.step, best_step);
    // The file holds that encoder: its k-NN, measured again, is the logged best.
    let device = Default::default();
    let frozen =
        trainer::train::encoder_from_run::frozen_encoder::<trainer::CpuBackend>(&cfg.run.best_path(), &device).unwrap();
    let bank = trainer::data::images::ImageSet::load(&f.dir, "train").unwrap();
    let queries = trainer::data::images::ImageSet::load(&f.dir, "val").unwrap();
    let features = |set: &trainer::data::images::ImageSet| {
        let indices = set.spread(200);
        let pass = trainer::eval::features::Pass {
            set,
            indices: &indices,
            image_size: 64,
            crop_ratio: 0.875,
            batch: 16,
            what: "k-NN",
        };
        trainer::eval::features::features(&frozen.encoder, pass, frozen.pool, &device).unwrap()
    };
    let ((bf, bl), (qf, ql)) = (features(&bank), features(&queries));
    let again = trainer::eval::knn::knn(&bf, &bl, &qf, &ql, cfg.vit.dim, 20, 0.07).top1;
    assert!((again - best).abs() < 1e-9, "{again} vs {best}");
    // The last checkpoint is still the end of the run.
    let last = trainer::train::run_folder::read_state(&cfg.run.checkpoint_path()).unwrap();
    assert_eq!(last.step, 24);
}

/// A split several times larger than --loader-memory-mb, in small row groups: streamed from
/// its shards, pre-training gives the cached run's losses and k-NN, resumes mid-epoch to the
/// same, and its shuffle buffer stays under the bound (bytes held, as metrics.jsonl logs).
#[test]
fn a_streamed_run_matches_the_cached_one_within_its_memory_bound() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("imagenette-small-groups");
    prepare_imagenette(&data, 0.12, 1_000_000, 100_000).unwrap();
    let manifest = pipeline::prepare::load_manifest(&data).unwrap();
    let train_bytes: u64 = manifest
        .shards
        .iter()
        .filter(|s| s.split == "train")
        .map(|s| s.bytes)
        .sum();
    assert!(
        train_bytes > 3_000_000,
        "the train split ({train_bytes} bytes) is several times the 1 MB bound"
    );
    let resolve = |out: &str, extra: &[&str]| -> PretrainConfig {
        let mut all = vec![
            "--method",
            "beit",
            "--model",
            "cpu-tiny",
            "--batch-size",
            "16",
            "--max-steps",
            "6",
            "--log-every",
            "1",
            "--warmup-epochs",
            "0.1",
            "--knn-every",
            "3",
            "--knn-images",
            "64",
            "--loader-memory-mb",
            "1",
        ];
        all.extend_from_slice(extra);
        let mut cfg = pretrain_args(&data, &f.vocab_small, &tmp.path().join(out), &all)
            .resolve()
            .unwrap();
        cfg.vit = micro_vit();
        cfg
    };
    let cached = resolve("cached", &["--cache", "ram"]);
    run(&cached, false);
    let streamed = resolve("streamed", &["--cache", "none"]);
    run(&streamed, false);
    let (a, b) = (metrics(&cached), metrics(&streamed));
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss, x.knn_top1), (y.step, y.loss, y.knn_top1));
        assert!(x.loader_mb.is_none(), "a cached split holds no buffer");
        let held = y.loader_mb.expect("a streamed split logs its buffer");
        assert!(
            held > 0.0 && held <= 1.0,
            "step {}: {held} MB held against a 1 MB bound",
            y.step
        );
    }
    // Stopped after 3 of the epoch's steps and resumed: the same sequence continues.
    let part = resolve("part", &["--cache", "none", "--stop-after", "3"]);
    run(&part, false);
    let mut rest = part.clone();
    rest.schedule.stop_after = None;
    run(&rest, true);
    let c = metrics(&part);
    assert_eq!(c.len(), 6);
    for (x, y) in b.iter().zip(&c) {
        assert_eq!((x.step, x.loss, x.knn_top1), (y.step, y.loss, y.knn_top1));
    }
}

#[test]
fn a_global_batch_split_across_ranks_draws_the_same_masks_losses_and_gradients() {
    // What data parallelism rests on: ranks holding positions 0..4 and 4..8 of a global batch
    // of 8 draw the masks and drop-path decisions one process with all 8 draws, so the mean of
    // their losses and of their gradients (what an all-reduce of the mean gives) is the whole
    // batch's.
    use trainer::data::images::ImageSet;
    use trainer::data::loader::make_batch;
    use trainer::model::beit::Beit;
    use trainer::model::device_tokenizer::DeviceTokenizer;
    use trainer::model::dino::Dino;
    use trainer::model::mae::Mae;
    use trainer::model::method::Method;
    use trainer::model::splitmask::SplitMask;
    use trainer::CpuAutodiff as B;

    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let device = Default::default();
    let set = ImageSet::load(&f.dir, "train").unwrap();
    let (vocab, _) = pipeline::vocab::tokenizer::Vocabulary::load(&f.vocab_small).unwrap();
    for method in ["beit", "splitmask", "mae", "dino"] {
        let dino = if method == "dino" {
            vec!["--prototypes", "256", "--local-crops", "2"]
        } else {
            vec![]
        };
        let cfg = pretrain_args(
            &f.dir,
            &f.vocab_small,
            &tmp.path().join(method),
            &[
                "--method",
                method,
                "--model",
                "cpu-tiny",
                "--batch-size",
                "8",
                "--drop-path",
                "0.2",
            ]
            .into_iter()
            .chain(dino)
            .collect::<Vec<_>>(),
        )
        .resolve()
        .unwrap();
        assert!(cfg.vit.drop_path > 0.0, "the test must exercise drop path");
        let tokenizer = DeviceTokenizer::<B>::new(&vocab, cfg.vit.patch_size, &device).unwrap();
        let host = make_batch(&set, &cfg.augment, 8, 5, 3).unwrap();
        // InfoNCE's negatives are each rank's own samples (global negatives gather them), so
        // for SplitMask the token loss alone is compared.
        let t = &tokenizer;
        match cfg.method {
            Method::Beit => ranks_match_the_whole::<Beit<B>>(&cfg, &(), t, host, false, |m| &m.encoder),
            Method::Splitmask => {
                ranks_match_the_whole::<SplitMask<B>>(&cfg, &cfg.options.splitmask, t, host, true, |m| &m.encoder)
            }
            Method::Mae => ranks_match_the_whole::<Mae<B>>(&cfg, &cfg.options.mae, t, host, false, |m| &m.encoder),
            // The student trains (the teacher, DINO's encoder, follows it after the update).
            Method::Dino => ranks_match_the_whole::<Dino<B>>(&cfg, &cfg.options.dino, t, host, false, |m| &m.student),
        }
    }
}

/// The masks, loss, first term, statistics (DINO's teacher mean, which moves its centre) and
/// the patch-embedding gradient of the trained encoder (`trained`) of method `M` on `host`
/// equal the mean of its two halves', each drawn at its global positions.
fn ranks_match_the_whole<M: trainer::model::objective::Objective<trainer::CpuAutodiff>>(
    cfg: &PretrainConfig,
    options: &M::Options,
    tokenizer: &trainer::model::device_tokenizer::DeviceTokenizer<trainer::CpuAutodiff>,
    host: trainer::data::loader::HostBatch,
    token_loss_only: bool,
    trained: fn(&M) -> &trainer::model::vit::Vit<trainer::CpuAutodiff>,
) {
    use rand::SeedableRng;
    use trainer::data::loader::HostBatch;
    use trainer::model::objective::DrawnMasks;
    use trainer::train::pretrain::device_batch;
    type B = trainer::CpuAutodiff;
    let device = Default::default();
    let method = cfg.method.name();
    let (n, px) = (host.len() / 2, host.images.len() / host.len());
    let part = |r: std::ops::Range<usize>| HostBatch {
        images: host.images[r.start * px..r.end * px].to_vec(),
        labels: host.labels[r.clone()].to_vec(),
        tokens: None,
        first: r.start as u64,
        views: host
            .views
            .iter()
            .map(|v| {
                let vpx = v.images.len() / host.len();
                trainer::data::loader::ViewBatch {
                    size: v.size,
                    images: v.images[r.start * vpx..r.end * vpx].to_vec(),
                }
            })
            .collect(),
        ..host.clone()
    };
    let (lo, hi) = (part(0..n), part(n..2 * n));
    let spec = cfg.spec(options);
    let batch = |h: HostBatch| device_batch::<B, M>(&spec, Some(tokenizer), h, (0, 17), &device);
    let ranks = [batch(lo), batch(hi)];
    let whole = batch(host);
    let positions = |m: &M::Masks| -> Vec<i32> {
        m.positions()
            .map(|p| p.into_data().convert::<i32>().to_vec().unwrap())
            .unwrap_or_default()
    };
    let rank_masks: Vec<i32> = ranks.iter().flat_map(|b| positions(&b.masks)).collect();
    assert_eq!(
        positions(&whole.masks),
        rank_masks,
        "{method}: masks by global position"
    );

    let model = M::build(&spec, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &device);
    let weight = &trained(&model).patch_embed.proj.weight;
    let stats = |b: &Batch<M>, mode| {
        let s = model.forward(b, mode).stats;
        s.map(|t| t.into_data().to_vec::<f32>().unwrap())
    };
    let (whole_stats, lo_stats, hi_stats) = (
        stats(&whole, trainer::model::vit::Mode::train(23)),
        stats(&ranks[0], trainer::model::vit::Mode::train_at(23, 0)),
        stats(&ranks[1], trainer::model::vit::Mode::train_at(23, 4)),
    );
    assert_eq!(
        whole_stats.is_some(),
        method == "dino",
        "{method}: only DINO has statistics"
    );
    if let (Some(w), Some(lo), Some(hi)) = (whole_stats, lo_stats, hi_stats) {
        for (i, ((a, b), c)) in w.iter().zip(&lo).zip(&hi).enumerate() {
            assert!(
                (a - (b + c) / 2.0).abs() <= 1e-5 * a.abs().max(1.0),
                "{method} statistic {i}: {a} vs {b}, {c}"
            );
        }
    }
    let (whole_out, parts) = shares_and_whole(&model, weight, &whole, &ranks, token_loss_only);
    let close = |a: f32, b: f32, what: &str| assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{what}: {a} vs {b}");
    close(whole_out.0, (parts[0].0 + parts[1].0) / 2.0, &format!("{method} loss"));
    close(
        whole_out.1,
        (parts[0].1 + parts[1].1) / 2.0,
        &format!("{method} first term"),
    );
    let mean: Vec<f32> = parts[0].2.iter().zip(&parts[1].2).map(|(a, b)| (a + b) / 2.0).collect();
    for (i, (a, b)) in whole_out.2.iter().zip(&mean).enumerate() {
        close(*a, *b, &format!("{method} patch-embedding gradient {i}"));
    }
}

/// (loss, token loss, gradient of `weight`) of one training step on the whole batch and on
/// each rank's share, with the step's drop path drawn at each share's global position. The
/// loss differentiated is the token loss alone when `token_loss_only`.
type StepOut = (f32, f32, Vec<f32>);
type Batch<M> = trainer::model::objective::MimBatch<
    trainer::CpuAutodiff,
    <M as trainer::model::objective::Objective<trainer::CpuAutodiff>>::Masks,
>;
fn shares_and_whole<M: trainer::model::objective::Objective<trainer::CpuAutodiff>>(
    model: &M,
    weight: &burn::module::Param<burn::tensor::Tensor<trainer::CpuAutodiff, 2>>,
    whole: &Batch<M>,
    ranks: &[Batch<M>; 2],
    token_loss_only: bool,
) -> (StepOut, [StepOut; 2]) {
    use trainer::model::objective::Term;
    use trainer::model::vit::Mode;
    let step = |b: &Batch<M>, mode: Mode| {
        let out = model.forward(b, mode);
        let first = match &out.terms[0] {
            Term::Value(t) => t.clone(),
            Term::Accuracy { .. } => panic!("every method's first term is a loss"),
        };
        let loss = if token_loss_only { first.clone() } else { out.loss };
        let (value, term) = (loss.clone().into_scalar(), first.into_scalar());
        let grads = loss.backward();
        let g = weight.grad(&grads).expect("the weight has a gradient");
        (value, term, g.into_data().to_vec().unwrap())
    };
    (
        step(whole, Mode::train(23)),
        [
            step(&ranks[0], Mode::train_at(23, 0)),
            step(&ranks[1], Mode::train_at(23, 4)),
        ],
    )
}
