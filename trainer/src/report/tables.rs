//! The report's Markdown tables: the paper's Table 1 (method x pre-training data), then
//! frozen-encoder evaluations and fine-tuning results, per run and per (initialization,
//! tokenizer) over seeds.

use std::fmt::Write as _;
use std::path::PathBuf;

use polars::prelude::PolarsResult;

use crate::report::frames::{spreads, tokenizer, Spread};
use crate::report::runs::Run;

fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

/// The frozen-encoder section: one row per `trainer eval` run, then the means per
/// initialization. `evals` are runs with eval results.
pub(super) fn write_eval_section(md: &mut String, evals: &[&Run]) -> PolarsResult<()> {
    let _ = writeln!(
        md,
        "## Frozen encoders: k-NN (k=20, T=0.07) and linear probes (val %)\n"
    );
    let _ = writeln!(
        md,
        "| run | init | tokenizer | seed | pre-train steps | eval split | k-NN top-1 | best probe top-1 (layer) | last-layer probe top-1 |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---|---:|---:|---:|");
    for r in evals {
        let e = r.eval.as_ref().expect("filtered");
        let last = e.probes.last().map_or(0.0, |p| p.top1);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
            r.name,
            e.init,
            tokenizer(&e.vocab),
            e.seed,
            e.pretrain_steps,
            e.eval_split,
            pct(e.knn.top1),
            pct(e.best_probe.top1),
            e.best_probe.layer,
            pct(last)
        );
    }
    write_eval_means(md, evals)?;
    md.push('\n');
    Ok(())
}

/// Mean k-NN and best-probe top-1 over seeds per (init, tokenizer).
fn write_eval_means(md: &mut String, evals: &[&Run]) -> PolarsResult<()> {
    let results: Vec<_> = evals.iter().map(|r| r.eval.as_ref().expect("filtered")).collect();
    let keys = [
        ("init", results.iter().map(|e| e.init.clone()).collect()),
        ("tokenizer", results.iter().map(|e| tokenizer(&e.vocab)).collect()),
    ];
    let knn: Vec<f64> = results.iter().map(|e| 100.0 * e.knn.top1).collect();
    let probe: Vec<f64> = results.iter().map(|e| 100.0 * e.best_probe.top1).collect();
    let _ = writeln!(md, "\n### Frozen encoders by initialization (mean over seeds)\n");
    let _ = writeln!(md, "| init | tokenizer | runs | k-NN top-1 | best probe top-1 |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|");
    for (k, p) in spreads(&keys, &knn)?.into_iter().zip(spreads(&keys, &probe)?) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.1} |",
            k.keys[0], k.keys[1], k.runs, k.mean, p.mean
        );
    }
    Ok(())
}

/// The fine-tuning section: one row per fine-tuning run, then the spread per initialization.
/// `fts` are runs with fine-tuning results.
pub(super) fn write_finetune_section(md: &mut String, fts: &[&Run]) -> PolarsResult<()> {
    let _ = writeln!(
        md,
        "## Fine-tuning (%, every image of the evaluation split, center crop)\n"
    );
    let _ = writeln!(
        md,
        "Train top-1 is on clean views of train images; the majority share is the most predicted class's share of the evaluated images (a collapsed model predicts one class).\n"
    );
    let _ = writeln!(
        md,
        "| run | init | tokenizer | seed | steps | epochs | eval split | top-1 | top-5 | best top-1 (step) | train top-1 | majority share | minutes |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in fts {
        let f = r.finetune.as_ref().expect("filtered");
        let train = r.last_eval.map_or_else(|| "-".to_string(), |(t, _)| format!("{t:.1}"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {:.1} |",
            r.name,
            f.init,
            tokenizer(&f.vocab),
            f.seed,
            f.steps,
            r.steps_per_epoch
                .map_or_else(|| "-".to_string(), |s| format!("{:.1}", f.steps as f64 / s)),
            f.eval_split,
            pct(f.eval.top1),
            pct(f.eval.top5),
            pct(f.best_top1),
            f.best_step,
            train,
            pct(f.eval.majority_share()),
            f.seconds / 60.0
        );
    }
    write_finetune_spread(md, fts)?;
    md.push('\n');
    Ok(())
}

/// Mean and spread of the fine-tuned top-1 over seeds per (init, tokenizer).
fn write_finetune_spread(md: &mut String, fts: &[&Run]) -> PolarsResult<()> {
    let results: Vec<_> = fts.iter().map(|r| r.finetune.as_ref().expect("filtered")).collect();
    let keys = [
        ("init", results.iter().map(|f| f.init.clone()).collect()),
        ("tokenizer", results.iter().map(|f| tokenizer(&f.vocab)).collect()),
    ];
    let top1: Vec<f64> = results.iter().map(|f| 100.0 * f.eval.top1).collect();
    let _ = writeln!(md, "\n### Fine-tuning top-1 by initialization\n");
    let _ = writeln!(md, "| init | tokenizer | runs | mean top-1 | min | max |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
    for g in spreads(&keys, &top1)? {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            g.keys[0], g.keys[1], g.runs, g.mean, g.min, g.max
        );
    }
    Ok(())
}

/// The segmentation section (the paper's Table 5 in shape): one row per `trainer segment` run,
/// then mIoU mean [min, max] over seeds per initialization and pre-training data.
pub(super) fn write_segment_section(md: &mut String, segs: &[&Run]) -> PolarsResult<()> {
    let _ = writeln!(
        md,
        "## Semantic segmentation (%, every image of the evaluation split, sliding window)\n"
    );
    let _ = writeln!(
        md,
        "| run | init | pre-training data | seed | steps | eval split | mIoU | pixel accuracy | best mIoU (step) | minutes |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---|---:|---:|---:|---:|");
    let mut cells = Vec::new();
    for r in segs {
        let s = r.segment.as_ref().expect("filtered");
        let data = s.pretrain_data.clone().unwrap_or_else(|| "none".into());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {:.1} |",
            r.name,
            s.init,
            data,
            s.seed,
            s.steps,
            s.eval_split,
            pct(s.eval.miou),
            pct(s.eval.pixel_accuracy),
            pct(s.best_miou),
            s.best_step,
            s.seconds / 60.0
        );
        cells.push((s.init.clone(), data, 100.0 * s.eval.miou));
    }
    md.push('\n');
    write_grid(md, "mIoU % by initialization and pre-training data", &cells)
}

/// The paper's Table 1 in shape: one row per method (and tokenizer), one column per
/// pre-training data (`imagenette`, `imagenette 10%`, `coco`...), each cell the fine-tuned
/// top-1 mean and range over seeds, then the same for the best probe. Random init has no
/// pre-training data: its column is `none`.
pub(super) fn write_table1(md: &mut String, evals: &[&Run], fts: &[&Run]) -> PolarsResult<()> {
    let row = |init: &str, vocab: &Option<PathBuf>| match tokenizer(vocab).as_str() {
        "-" => init.to_string(),
        t => format!("{init} ({t})"),
    };
    let column = |data: &Option<String>| data.clone().unwrap_or_else(|| "none".into());
    let finetuned: Vec<(String, String, f64)> = fts
        .iter()
        .filter_map(|r| r.finetune.as_ref())
        .map(|f| (row(&f.init, &f.vocab), column(&f.pretrain_data), 100.0 * f.eval.top1))
        .collect();
    let probed: Vec<(String, String, f64)> = evals
        .iter()
        .filter_map(|r| r.eval.as_ref())
        .map(|e| {
            (
                row(&e.init, &e.vocab),
                column(&e.pretrain_data),
                100.0 * e.best_probe.top1,
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "## Table 1: method x pre-training data (mean [min, max] over seeds)\n"
    );
    for (what, cells) in [
        ("Fine-tuned top-1 %", &finetuned),
        ("Best linear probe top-1 %", &probed),
    ] {
        if !cells.is_empty() {
            write_grid(md, what, cells)?;
        }
    }
    Ok(())
}

/// One Table 1 grid: `cells` are (row, column, value) with repeats over seeds.
fn write_grid(md: &mut String, what: &str, cells: &[(String, String, f64)]) -> PolarsResult<()> {
    let keys = [
        ("row", cells.iter().map(|c| c.0.clone()).collect()),
        ("column", cells.iter().map(|c| c.1.clone()).collect()),
    ];
    let values: Vec<f64> = cells.iter().map(|c| c.2).collect();
    let groups = spreads(&keys, &values)?;
    let mut header: Vec<&str> = groups.iter().map(|g| g.keys[1].as_str()).collect();
    header.sort();
    header.dedup();
    let _ = writeln!(md, "{what}\n");
    let _ = writeln!(md, "| method | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(header.len()));
    // Groups come sorted by row, then column.
    for row in groups.chunk_by(|a, b| a.keys[0] == b.keys[0]) {
        let cells: Vec<String> = header
            .iter()
            .map(|c| {
                row.iter()
                    .find(|g| g.keys[1] == *c)
                    .map_or_else(|| "-".to_string(), spread)
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", row[0].keys[0], cells.join(" | "));
    }
    md.push('\n');
    Ok(())
}

/// `mean [min, max]`, or the value alone for one run.
fn spread(g: &Spread) -> String {
    match g.runs {
        1 => format!("{:.1}", g.mean),
        _ => format!("{:.1} [{:.1}, {:.1}]", g.mean, g.min, g.max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_names_drop_the_vocabulary_seed() {
        let t = |p: &str| tokenizer(&Some(PathBuf::from(p)));
        assert_eq!(t("data/x/vocab-kmeans-8192-s0.safetensors"), "kmeans-8192");
        assert_eq!(
            t("vocab-random_projection-1024-s12.safetensors"),
            "random_projection-1024"
        );
        assert_eq!(t("my-vocab-sx.safetensors"), "my-vocab-sx");
        assert_eq!(tokenizer(&None), "-");
    }

    #[test]
    fn table_1_puts_methods_in_rows_and_pre_training_data_in_columns() {
        let cells = [
            ("splitmask".to_string(), "imagenette".to_string(), 40.0),
            ("splitmask".to_string(), "imagenette".to_string(), 42.0),
            ("splitmask".to_string(), "imagenette 10%".to_string(), 35.0),
            ("random".to_string(), "none".to_string(), 20.0),
        ];
        let mut md = String::new();
        write_grid(&mut md, "top-1", &cells).unwrap();
        assert!(md.contains("| method | imagenette | imagenette 10% | none |"), "{md}");
        assert!(md.contains("| random | - | - | 20.0 |"), "{md}");
        assert!(md.contains("| splitmask | 41.0 [40.0, 42.0] | 35.0 | - |"), "{md}");
    }
}
