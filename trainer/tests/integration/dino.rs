//! DINO on the small real Imagenette: a short run that does not collapse, its teacher at
//! least at random init's k-NN.

use trainer::data::images::ImageSet;
use trainer::model::objective::Objective;
use trainer::train::config::ClipMode;
use trainer::train::pretrain::knn_monitor;

use crate::{fixture, metrics, pretrain_args};

#[test]
fn a_short_real_dino_run_does_not_collapse_and_keeps_random_inits_knn() {
    use rand::SeedableRng;
    type B = trainer::CpuAutodiff;
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let steps = "120";
    let cfg = pretrain_args(
        &f.dir,
        &f.vocab_small,
        &tmp.path().join("dino"),
        &[
            "--method",
            "dino",
            "--model",
            "cpu-tiny",
            "--batch-size",
            "32",
            "--max-steps",
            steps,
            "--epochs",
            "100",
            "--blr",
            "0.004",
            "--warmup-epochs",
            "0.5",
            "--local-crops",
            "4",
            "--prototypes",
            "1024",
            "--teacher-momentum",
            "0.99",
            "--teacher-temp",
            "0.04",
            "--log-every",
            "10",
            "--checkpoint-every",
            "1000",
            "--knn-every",
            steps,
            "--knn-images",
            "500",
        ],
    )
    .resolve()
    .unwrap();
    let mc = cfg.augment.multi_crop.expect("DINO trains on multi-crop views");
    assert_eq!(
        (mc.local_crops, mc.local_size),
        (4, 24),
        "96/224 of 64 px in 8 px patches"
    );
    assert_eq!(
        (cfg.schedule.clip_mode, cfg.schedule.clip_grad),
        (ClipMode::PerParameter, Some(3.0)),
        "DINO clips each parameter's gradient at 3"
    );
    trainer::train::pretrain::pretrain::<B>(&cfg, false, &[Default::default()], false).unwrap();
    let lines = metrics(&cfg);
    let last = &lines[lines.len() - 3..];
    let mean = |name: &str| last.iter().map(|l| l.term(name).unwrap()).sum::<f64>() / last.len() as f64;
    let (first, loss) = (lines[0].loss, mean("dino"));
    let (entropy, batch_entropy) = (mean("teacher_entropy"), mean("batch_entropy"));
    let knn = lines.last().unwrap().knn_top1.expect("k-NN on the last step");

    // Random init's k-NN: the run's own initial weights on the same bank and queries.
    let device = Default::default();
    let model = <trainer::model::dino::Dino<B> as Objective<B>>::build(
        &cfg.spec(&cfg.options.dino),
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.run.seed),
        &device,
    );
    let bank = ImageSet::load(&f.dir, "train").unwrap();
    let queries = ImageSet::load(&f.dir, &cfg.run.eval_split).unwrap();
    let random = knn_monitor(&cfg, model.encoder(), &bank, &queries, &device).unwrap();
    eprintln!(
        "DINO, {steps} steps: loss {first:.3} -> {loss:.3}, teacher entropy {entropy:.3} (ln 1024 = {:.3}), \
         batch entropy {batch_entropy:.3}, k-NN {:.1}% (random init {:.1}%)",
        1024f64.ln(),
        100.0 * knn,
        100.0 * random
    );
    assert!(lines.iter().all(|l| l.loss.is_finite()));
    // The student predicts the teacher better than the uniform distribution does.
    assert!(loss < 1024f64.ln() - 0.05, "loss {loss} vs ln 1024");
    // No collapse onto a few prototypes (the batch mean keeps more than e² ~ 7 in use) nor
    // into the uniform distribution (each image's is sharper than uniform).
    assert!(
        batch_entropy > 2.0,
        "batch entropy {batch_entropy}: collapsed onto few prototypes"
    );
    assert!(
        entropy < 1024f64.ln() - 0.1,
        "teacher entropy {entropy}: collapsed to uniform"
    );
    // 120 updates of batch 32 are DINO's first moments (DINO trains for hundreds of thousands):
    // its teacher is at random init's k-NN here, within the 500 queries' noise (about 2
    // points); a teacher the EMA or the centring broke falls below it.
    assert!(knn > random - 0.03, "k-NN {knn} vs random init {random}");
}
