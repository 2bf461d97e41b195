//! `make experiment`'s script (`experiments/run.sh`) end to end in a tiny setting: two
//! methods, one tokenizer, two pre-training fractions at equal updates, two steps each, on a
//! small real folder dataset; then pre-training on another dataset with supervised transfer
//! from it. Its report has Table 1's shape.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::finetune_runs::{prepare_derived, EDGES, GRAY};

/// Runs the script from the workspace with the tiny sizes and `extra` settings.
fn experiment(raw: &Path, tmp: &Path, exp_dir: &Path, extra: &[(&str, String)]) -> (Output, String) {
    let trainer = Path::new(env!("CARGO_BIN_EXE_trainer"));
    let pipeline = trainer.with_file_name("pipeline");
    assert!(
        pipeline.is_file(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build -p pipeline`)",
        pipeline.display()
    );
    let env = [
        ("EXP", "folder".to_string()),
        ("DATA_DIR", raw.display().to_string()),
        ("EXP_DIR", exp_dir.display().to_string()),
        ("EXP_DATA", tmp.join("data").display().to_string()),
        ("EXP_SHORT_SIDE", "72".into()),
        ("EXP_MODEL", "cpu-tiny".into()),
        ("EXP_TOKENIZERS", "random_projection".into()),
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
        .envs(extra.iter().cloned())
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, log)
}

fn raw(set: &crate::finetune_runs::Derived) -> PathBuf {
    let data = prepare_derived(set);
    data.parent().unwrap().join("raw")
}

#[test]
fn the_experiment_script_runs_table_1_end_to_end_in_a_tiny_setting() {
    let (gray, edges) = (raw(&GRAY), raw(&EDGES));
    let tmp = tempfile::tempdir().unwrap();
    let exp_dir = tmp.path().join("exp");
    let fractions = [
        ("EXP_METHODS", "splitmask dino".to_string()),
        ("EXP_FRACTIONS", "1 0.5".to_string()),
    ];
    let (out, log) = experiment(&gray, tmp.path(), &exp_dir, &fractions);
    assert!(out.status.success(), "{log}");
    // Every pre-training (2 methods x 2 fractions) was probed and fine-tuned, and random init.
    for run in [
        "splitmask-random_projection",
        "splitmask-random_projection-f0.5",
        "dino",
        "dino-f0.5",
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
    for row in ["| dino |", "| splitmask (random_projection-64) |", "| random |"] {
        assert!(report.contains(row), "{row}\n{report}");
    }

    // Pre-training on another dataset (the edge maps), and supervised transfer from it.
    let source_dir = tmp.path().join("from-edges");
    let source = [
        ("EXP_METHODS", "mae".to_string()),
        ("EXP_SOURCE", "folder".to_string()),
        ("EXP_SOURCE_DIR", edges.display().to_string()),
        ("EXP_SOURCE_DATA", tmp.path().join("edges").display().to_string()),
    ];
    let (out, log) = experiment(&gray, tmp.path(), &source_dir, &source);
    assert!(out.status.success(), "{log}");
    let results = |run: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(source_dir.join(run).join("results.json")).unwrap()).unwrap()
    };
    let ft = results("ft-supervised-folder");
    assert_eq!(ft["init"], "supervised-folder", "{ft}");
    assert_eq!(ft["pretrain_data"], "folder (supervised)");
    assert_eq!(
        ft["eval"]["predictions"].as_array().unwrap().len(),
        4,
        "the target's 4 classes"
    );
    assert!(results("ft-mae-folder")["init_run"]
        .as_str()
        .unwrap()
        .ends_with("mae-folder"));
    let report = std::fs::read_to_string(source_dir.join("report.md")).unwrap();
    assert!(report.contains("| supervised-folder |"), "{report}");
}
