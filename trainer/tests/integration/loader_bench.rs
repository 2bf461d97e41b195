//! `trainer bench-loader` times the trainer's own loader on the run's training rows: its
//! first batch is `make_batch`'s for the run's seed.

use trainer::data::loader::make_batch;
use trainer::train::pretrain::training_set;

use crate::{args, fixture};

#[test]
fn the_loader_benchmark_times_the_pixels_the_trainer_trains_on() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("unused");
    let flags = ["--model", "cpu-tiny", "--batch-size", "16", "--limit-images", "128"];
    let cfg = args(f, &f.vocab_small, &out, &flags).resolve().unwrap();
    let r = trainer::bench::loader::bench_loader(&cfg, 3).unwrap();
    assert!(r.pixels_match, "{r:?}");
    assert_eq!((r.batch, r.batches, r.size), (16, 3, cfg.augment.size as usize));
    assert!(r.images_per_s > 0.0 && r.first_batch_s > 0.0);
    // The comparison can fail: another seed's first batch has other pixels.
    let set = training_set(&cfg).unwrap().0;
    let a = make_batch(&set, &cfg.augment, 16, cfg.run.seed, 0).unwrap();
    let b = make_batch(&set, &cfg.augment, 16, cfg.run.seed + 1, 0).unwrap();
    assert_ne!(a.images, b.images);

    // The command: one decode thread as asked, one JSON line, nothing written to --out. It runs
    // from a folder with no datasets/, as an installed binary does: the recipe is built in.
    let elsewhere = tempfile::tempdir().unwrap();
    #[rustfmt::skip]
    let argv = [
        "--quiet", "bench-loader",
        "--data", &f.dir.display().to_string(), "--out", &out.display().to_string(),
        "--vocab", &f.vocab_small.display().to_string(), "--model", "cpu-tiny", "--batch-size", "16",
        "--limit-images", "128", "--batches", "2", "--threads", "1",
    ];
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(argv)
        .current_dir(elsewhere.path())
        .env_remove(pipeline::recipe::RECIPES_ENV)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["threads"], 1);
    assert_eq!(line["pixels_match"], true);
    assert!(!out.exists(), "the benchmark writes no run folder");
}
