//! Data-parallel training (`--devices cpu:N`, burn-collective between in-process flex
//! workers) on the small real Imagenette: 2 workers with batch b follow 1 worker with batch
//! 2b, step by step, in losses and in the final parameters; a resumed 2-worker run continues
//! exactly; rank 0 alone writes the run folder.

use std::path::Path;

use trainer::train::config::{FinetuneConfig, PretrainConfig};
use trainer::train::finetune::{finetune, FinetuneLine};
use trainer::train::pretrain::pretrain;
use trainer::train::tensor_file::load_tensors;
use trainer::CpuAutodiff;

use crate::{args, assert_same_losses, finetune_args, fixture, metrics, metrics_lines, micro_vit, Fixture};

/// The largest difference between two checkpoints' parameters (same names, same shapes).
fn max_param_diff(a: &Path, b: &Path) -> f32 {
    let (ta, _) = load_tensors(a).unwrap();
    let (tb, _) = load_tensors(b).unwrap();
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        tb.keys().collect::<Vec<_>>(),
        "the same tensors"
    );
    ta.iter()
        .flat_map(|(name, (shape, va))| {
            let (shape_b, vb) = &tb[name];
            assert_eq!(shape, shape_b, "{name}");
            va.iter().zip(vb).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

/// A 20-step BEiT run with `batch` per device on `devices` (`None`: one device).
fn beit(f: &Fixture, out: &Path, batch: &str, devices: Option<&str>, stop_after: Option<&str>) -> PretrainConfig {
    let stop = stop_after.map(|s| vec!["--stop-after", s]).unwrap_or_default();
    pre(f, out, "beit", batch, devices, &stop)
}

/// The schedule both kinds of run share: 20 updates of cpu-tiny (the micro ViT is set after
/// resolving) with `batch` per device on `devices` (`None`: one device), logged every step.
fn schedule<'a>(batch: &'a str, devices: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec![
        "--model",
        "cpu-tiny",
        "--batch-size",
        batch,
        "--max-steps",
        "20",
        "--epochs",
        "2",
        "--warmup-epochs",
        "0.2",
        "--log-every",
        "1",
        "--limit-images",
        "320",
    ];
    args.extend(devices.iter().flat_map(|d| ["--devices", d]));
    args
}

/// A 20-step pre-training run of `method` with `batch` per device on `devices`.
fn pre(f: &Fixture, out: &Path, method: &str, batch: &str, devices: Option<&str>, more: &[&str]) -> PretrainConfig {
    let mut extra = schedule(batch, devices);
    extra.extend(["--method", method, "--blr", "0.2", "--checkpoint-every", "5"]);
    extra.extend(more);
    let mut cfg = args(f, &f.vocab_small, out, &extra).resolve().unwrap();
    cfg.vit = micro_vit();
    cfg
}

fn pretrain_on(cfg: &PretrainConfig, workers: usize, resume: bool) -> trainer::Result<()> {
    pretrain::<CpuAutodiff>(cfg, resume, &vec![Default::default(); workers], false).map(|_| ())
}

fn losses(cfg: &PretrainConfig) -> Vec<(u64, f64)> {
    metrics(cfg).iter().map(|l| (l.step, l.loss)).collect()
}

#[test]
fn two_beit_workers_with_batch_b_follow_one_with_batch_2b_and_resume_exactly() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let one = beit(f, &tmp.path().join("one"), "16", None, None);
    let two = beit(f, &tmp.path().join("two"), "8", Some("cpu:2"), None);
    // The same schedule: the effective batch (8 x 2 devices) drives steps and learning rate.
    assert_eq!(two.schedule.devices, 2);
    assert_eq!(two.schedule.effective_batch(), one.schedule.effective_batch());
    assert_eq!(
        (two.schedule.lr, two.schedule.steps_per_epoch),
        (one.schedule.lr, one.schedule.steps_per_epoch)
    );
    pretrain_on(&one, 1, false).unwrap();
    pretrain_on(&two, 2, false).unwrap();
    // Rank 0 alone wrote: one line per step, one checkpoint.
    assert_eq!(metrics(&two).len(), 20);
    assert_same_losses(&losses(&one), &losses(&two), 1e-5);
    let ckpt = |c: &PretrainConfig| c.run.checkpoint_path();
    let diff = max_param_diff(&ckpt(&one), &ckpt(&two));
    eprintln!("BEiT, 20 steps: 1 x 16 against 2 x 8, largest parameter difference {diff:e}");
    // Rounding only: 2e-6 to 1.6e-5 measured (the CPU kernels' summation order varies with the
    // load of a parallel test run); a wrong gradient mean moves parameters by 1e-3 and more.
    assert!(diff < 5e-5, "{diff}");

    // Stopped after 12 updates and resumed: the 2-worker run continues as if uninterrupted.
    let resumed = beit(f, &tmp.path().join("resumed"), "8", Some("cpu:2"), Some("12"));
    pretrain_on(&resumed, 2, false).unwrap();
    assert_eq!(metrics(&resumed).len(), 12);
    let mut rest = beit(f, &tmp.path().join("resumed"), "8", Some("cpu:2"), None);
    rest.run.out = resumed.run.out.clone();
    pretrain_on(&rest, 2, true).unwrap();
    assert_eq!(losses(&two), losses(&rest));
    assert_eq!(max_param_diff(&ckpt(&two), &ckpt(&rest)), 0.0);

    // A worker count other than the run's is refused on resume (the schedule depends on it).
    let other = beit(f, &tmp.path().join("resumed"), "16", None, None);
    let err = pretrain_on(&other, 1, true).unwrap_err().to_string();
    assert!(err.contains("different configuration"), "{err}");
}

#[test]
fn two_splitmask_workers_with_global_negatives_follow_one_with_batch_2b() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let one = pre(f, &tmp.path().join("one"), "splitmask", "16", None, &[]);
    let global = pre(f, &tmp.path().join("global"), "splitmask", "8", Some("cpu:2"), &[]);
    let local = pre(
        f,
        &tmp.path().join("local"),
        "splitmask",
        "8",
        Some("cpu:2"),
        &["--local-negatives"],
    );
    assert!(global.global_negatives && !local.global_negatives);
    for c in [&one, &global, &local] {
        pretrain_on(c, c.schedule.devices, false).unwrap();
    }
    let ckpt = |c: &PretrainConfig| c.run.checkpoint_path();
    let diff = max_param_diff(&ckpt(&one), &ckpt(&global));
    let (m_one, m_global, m_local) = (metrics(&one), metrics(&global), metrics(&local));
    let nce = |l: &trainer::train::pretrain::MetricsLine| l.term("nce").expect("SplitMask logs InfoNCE");
    eprintln!(
        "SplitMask, 20 steps, 1 x 16 against 2 x 8 with global negatives: step-1 InfoNCE {:.6} vs {:.6} (local negatives {:.6}), largest parameter difference {diff:e}",
        nce(&m_one[0]),
        nce(&m_global[0]),
        nce(&m_local[0])
    );
    // Every rank's pairs meet the 16 images' negatives, and the gradient is the global
    // loss's: the same losses, InfoNCE included, and the same parameters.
    let terms = |m: &[trainer::train::pretrain::MetricsLine]| -> Vec<(u64, f64)> {
        m.iter()
            .flat_map(|l| [(l.step, l.term("mim").unwrap()), (l.step, nce(l))])
            .collect()
    };
    assert_same_losses(&terms(&m_one), &terms(&m_global), 1e-5);
    // (Rounding differs more than BEiT's: the scaled loss adds an operation, and Adam
    // magnifies the differences of near-zero gradients: 3.9e-5 measured.)
    assert!(diff < 1e-4, "{diff}");
    // With each share's 8 images as negatives, InfoNCE is another number from the first step.
    assert!((nce(&m_one[0]) - nce(&m_local[0])).abs() > 1e-3);
}

#[test]
fn two_dino_workers_follow_one_with_batch_2b_in_losses_centre_and_teacher() {
    // DINO's centre moves toward the teacher's mean over the global batch: with 2 workers the
    // engine averages the ranks' means, so the centre, the losses and the teacher (the EMA of
    // the student) follow one worker with the whole batch.
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dino = |out: &str, batch: &str, devices: Option<&str>| {
        let mut extra = schedule(batch, devices);
        extra.extend([
            "--method",
            "dino",
            "--blr",
            "0.01",
            "--prototypes",
            "256",
            "--local-crops",
            "2",
            "--teacher-momentum",
            "0.9",
        ]);
        let mut cfg = args(f, &f.vocab_small, &tmp.path().join(out), &extra)
            .resolve()
            .unwrap();
        cfg.vit = micro_vit();
        cfg
    };
    let (one, two) = (dino("one", "16", None), dino("two", "8", Some("cpu:2")));
    pretrain_on(&one, 1, false).unwrap();
    pretrain_on(&two, 2, false).unwrap();
    let terms = |c: &PretrainConfig| -> Vec<(u64, f64)> {
        metrics(c)
            .iter()
            // (`batch_entropy` is each rank's own batch's: not a mean over the ranks.)
            .flat_map(|l| [(l.step, l.loss), (l.step, l.term("teacher_entropy").unwrap())])
            .collect()
    };
    // Rounding only: the teacher's temperature (0.04) magnifies the summation-order
    // differences of the two runs' kernels 25-fold (1.2e-5 seen); a centre left per rank
    // moves the losses by 1e-2 and more.
    assert_same_losses(&terms(&one), &terms(&two), 1e-4);
    let (ta, _) = load_tensors(&one.run.checkpoint_path()).unwrap();
    let (tb, _) = load_tensors(&two.run.checkpoint_path()).unwrap();
    let largest = |prefix: &str| -> f32 {
        ta.iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .flat_map(|(name, (_, va))| va.iter().zip(&tb[name].1).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f32::max)
    };
    let (center, teacher) = (largest("center"), largest("encoder."));
    let moved = ta["center"].1.iter().map(|v| v.abs()).fold(0.0, f32::max);
    eprintln!("DINO, 20 steps, 1 x 16 against 2 x 8: centre difference {center:e} (centre up to {moved:.3}), teacher {teacher:e}");
    assert!(moved > 1e-3, "the centre moved from zero: {moved}");
    assert!(center < 1e-5 * moved.max(1.0), "{center}");
    assert!(teacher < 1e-4, "{teacher}");
}

#[test]
fn two_finetuning_workers_with_batch_b_follow_one_with_batch_2b() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Mixup and CutMix pair images within a rank's share, so they are off here (as DeiT's
    // per-rank mixup, 2 x b cannot reproduce 1 x 2b with them on).
    let run = |name: &str, batch: &str, devices: Option<&str>| -> FinetuneConfig {
        let mut extra = schedule(batch, devices);
        #[rustfmt::skip]
        extra.extend([
            "--blr", "1.6e-2", "--mixup", "0", "--cutmix", "0", "--eval-every-epochs", "1",
            "--eval-images", "100",
        ]);
        let mut cfg = finetune_args(&f.dir, None, &tmp.path().join(name), &extra)
            .resolve()
            .unwrap();
        cfg.vit = micro_vit();
        let workers = cfg.schedule.devices;
        finetune::<CpuAutodiff>(&cfg, false, &vec![Default::default(); workers], false).unwrap();
        cfg
    };
    let one = run("one", "16", None);
    let two = run("two", "8", Some("cpu:2"));
    let losses = |c: &FinetuneConfig| -> Vec<(u64, f64)> {
        metrics_lines::<FinetuneLine>(&c.run.out)
            .iter()
            .map(|l| (l.step, l.loss))
            .collect()
    };
    assert_same_losses(&losses(&one), &losses(&two), 1e-5);
    let diff = max_param_diff(&one.run.checkpoint_path(), &two.run.checkpoint_path());
    eprintln!("fine-tuning, 20 steps: 1 x 16 against 2 x 8, largest parameter difference {diff:e}");
    assert!(diff < 1e-5, "{diff}");
    // Rank 0 evaluated and wrote the results.
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(two.run.out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["steps"], 20);
}
