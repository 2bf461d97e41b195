//! `make experiment`'s script (`experiments/run.sh`) end to end in a tiny setting: two
//! methods, one tokenizer, two pre-training fractions at equal updates, two steps each, on a
//! small real folder dataset; its report has Table 1's shape.

use std::path::Path;
use std::process::Command;

use crate::finetune_runs::{prepare_derived, GRAY};

#[test]
fn the_experiment_script_runs_table_1_end_to_end_in_a_tiny_setting() {
    prepare_derived(&GRAY);
    let raw = Path::new(env!("CARGO_TARGET_TMPDIR")).join("derived-gray/raw");
    let trainer = Path::new(env!("CARGO_BIN_EXE_trainer"));
    let pipeline = trainer.with_file_name("pipeline");
    assert!(
        pipeline.is_file(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build -p pipeline`)",
        pipeline.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let exp_dir = tmp.path().join("exp");
    let env = [
        ("EXP", "folder".to_string()),
        ("DATA_DIR", raw.display().to_string()),
        ("EXP_DIR", exp_dir.display().to_string()),
        ("EXP_DATA", tmp.path().join("data").display().to_string()),
        ("EXP_SHORT_SIDE", "72".into()),
        ("EXP_MODEL", "cpu-tiny".into()),
        ("EXP_METHODS", "splitmask mae".into()),
        ("EXP_TOKENIZERS", "random_projection".into()),
        ("EXP_FRACTIONS", "1 0.5".into()),
        ("EXP_VOCAB_SIZE", "64".into()),
        ("EXP_BATCH", "16".into()),
        ("EXP_PRETRAIN_STEPS", "2".into()),
        ("EXP_FINETUNE_STEPS", "2".into()),
        ("EXP_PROBE_IMAGES", "64".into()),
        ("EXP_EVAL_IMAGES", "32".into()),
        ("PIPELINE", pipeline.display().to_string()),
        ("TRAINER", trainer.display().to_string()),
    ];
    let out = Command::new("bash")
        .arg("experiments/run.sh")
        .current_dir(crate::workspace())
        .envs(env)
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    // Every pre-training (2 methods x 2 fractions) was probed and fine-tuned, and random init.
    for run in [
        "splitmask-random_projection",
        "splitmask-random_projection-f0.5",
        "mae",
        "mae-f0.5",
    ] {
        assert!(exp_dir.join(run).join("results.json").is_file(), "{run} probed\n{log}");
        assert!(
            exp_dir.join(format!("ft-{run}")).join("results.json").is_file(),
            "{run} fine-tuned"
        );
    }
    assert!(exp_dir.join("ft-random/results.json").is_file());
    let report = std::fs::read_to_string(exp_dir.join("report.md")).unwrap();
    assert!(report.contains("## Table 1"), "{report}");
    assert!(report.contains("| method | folder | folder 50% | none |"), "{report}");
    for row in ["| mae |", "| splitmask (random_projection-64) |", "| random |"] {
        assert!(report.contains(row), "{row}\n{report}");
    }
}
