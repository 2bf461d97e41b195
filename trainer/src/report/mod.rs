//! `trainer report`: gathers the run folders under a directory (pre-training, `trainer eval`
//! and fine-tuning runs) into `report.md` with the results tables, and PNG plots of the
//! pre-training losses, the fine-tuning val accuracy and the final accuracy per initialization.

pub mod plot;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, ReportError, Result};
use crate::eval::frozen::EvalResults;
use crate::report::plot::{bar_chart, line_chart, Series};
use crate::train::finetune::{FinetuneLine, FinetuneResults};
use crate::train::run_folder::{CONFIG_FILE, METRICS_FILE, RESULTS_FILE};

/// The written files.
#[derive(Debug, Clone)]
pub struct Report {
    pub markdown: PathBuf,
    pub plots: Vec<PathBuf>,
    pub finetune_runs: usize,
    pub eval_runs: usize,
}

struct Run {
    name: String,
    eval: Option<EvalResults>,
    finetune: Option<FinetuneResults>,
    /// (step, mim) of a pre-training run.
    mim: Vec<(f64, f64)>,
    /// (epoch, k-NN top-1 %) of a pre-training run with a k-NN monitor.
    knn: Vec<(f64, f64)>,
    /// (epoch, top-1 %) of a fine-tuning run's periodic evaluations.
    val: Vec<(f64, f64)>,
    /// The last periodic evaluation of a fine-tuning run: train top-1 and the share of the
    /// most predicted class.
    last_eval: Option<(f64, f64)>,
    /// Updates per epoch, from the run's config.json.
    steps_per_epoch: Option<f64>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::io(path, source)
}

/// Run folders directly under `dir` (and `dir` itself when it is one), by name.
fn find_runs(dir: &Path) -> Result<Vec<Run>> {
    let mut dirs = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        if e.file_type().map_err(io(dir))?.is_dir() {
            dirs.push(e.path());
        }
    }
    dirs.sort();
    let bar = crate::progress::pass("reading runs", dirs.len() as u64, "folders");
    let mut runs = Vec::new();
    for d in dirs {
        bar.inc(1);
        let results = d.join(RESULTS_FILE);
        let metrics = d.join(METRICS_FILE);
        if !results.exists() && !metrics.exists() {
            continue;
        }
        let mut run = Run {
            name: d
                .file_name()
                .map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into()),
            eval: None,
            finetune: None,
            mim: Vec::new(),
            knn: Vec::new(),
            val: Vec::new(),
            last_eval: None,
            steps_per_epoch: std::fs::read_to_string(d.join(CONFIG_FILE))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|c| c["steps_per_epoch"].as_f64()),
        };
        if results.exists() {
            let text = std::fs::read_to_string(&results).map_err(io(&results))?;
            let bad = |e: serde_json::Error| ReportError::BadResults {
                path: results.clone(),
                message: e.to_string(),
            };
            let v: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
            match v.get("kind").and_then(|k| k.as_str()) {
                Some("eval") => run.eval = Some(serde_json::from_value(v).map_err(bad)?),
                Some("finetune") => run.finetune = Some(serde_json::from_value(v).map_err(bad)?),
                other => {
                    return Err(ReportError::BadResults {
                        path: results,
                        message: format!("unknown kind {other:?} (expected \"eval\" or \"finetune\")"),
                    }
                    .into())
                }
            }
        }
        if metrics.exists() {
            let text = std::fs::read_to_string(&metrics).map_err(io(&metrics))?;
            for l in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                    continue;
                };
                if let (Some(step), Some(mim)) = (v["step"].as_f64(), v["mim"].as_f64()) {
                    run.mim.push((step, mim));
                    if let (Some(epoch), Some(knn)) = (v["epoch"].as_f64(), v["knn_top1"].as_f64()) {
                        run.knn.push((epoch, 100.0 * knn));
                    }
                } else if let Ok(f) = serde_json::from_value::<FinetuneLine>(v) {
                    if let Some(t) = f.eval_top1 {
                        run.val.push((f.epoch, 100.0 * t));
                    }
                    if let (Some(train), Some(p)) = (f.train_top1, &f.eval_predictions) {
                        let total: u64 = p.iter().sum();
                        let top = p.iter().copied().max().unwrap_or(0);
                        run.last_eval = Some((100.0 * train, 100.0 * top as f64 / total.max(1) as f64));
                    }
                }
            }
        }
        runs.push(run);
    }
    bar.finish_and_clear();
    Ok(runs)
}

/// `kmeans-8192` for `vocab-kmeans-8192-s0.safetensors` (the vocabulary's own seed is left
/// out so it is not mistaken for the run's).
fn tokenizer(vocab: &Option<PathBuf>) -> String {
    let Some(stem) = vocab.as_ref().and_then(|v| v.file_stem()) else {
        return "-".to_string();
    };
    let stem = stem.to_string_lossy();
    let stem = stem.trim_start_matches("vocab-");
    match stem.rsplit_once("-s") {
        Some((name, seed)) if !seed.is_empty() && seed.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
        _ => stem.to_string(),
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

/// Writes `report.md` and the plots into `out`.
pub fn write_report(runs_dir: &Path, out: &Path) -> Result<Report> {
    let runs = find_runs(runs_dir)?;
    if runs.is_empty() {
        return Err(ReportError::Empty {
            dir: runs_dir.to_path_buf(),
        }
        .into());
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut md = String::new();
    let _ = writeln!(md, "# Results: `{}`\n", runs_dir.display());
    let evals: Vec<&Run> = runs.iter().filter(|r| r.eval.is_some()).collect();
    let fts: Vec<&Run> = runs.iter().filter(|r| r.finetune.is_some()).collect();
    if !evals.is_empty() {
        let _ = writeln!(
            md,
            "## Frozen encoders: k-NN (k=20, T=0.07) and linear probes (val %)\n"
        );
        let _ = writeln!(
            md,
            "| run | init | tokenizer | seed | pre-train steps | eval split | k-NN top-1 | best probe top-1 (layer) | last-layer probe top-1 |"
        );
        let _ = writeln!(md, "|---|---|---|---:|---:|---|---:|---:|---:|");
        for r in &evals {
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
        let mut groups: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
        for r in &evals {
            let e = r.eval.as_ref().expect("filtered");
            groups
                .entry((e.init.clone(), tokenizer(&e.vocab)))
                .or_default()
                .push((100.0 * e.knn.top1, 100.0 * e.best_probe.top1));
        }
        let _ = writeln!(md, "\n### Frozen encoders by initialization (mean over seeds)\n");
        let _ = writeln!(md, "| init | tokenizer | runs | k-NN top-1 | best probe top-1 |");
        let _ = writeln!(md, "|---|---|---:|---:|---:|");
        for ((init, tok), v) in &groups {
            let n = v.len() as f64;
            let knn = v.iter().map(|x| x.0).sum::<f64>() / n;
            let probe = v.iter().map(|x| x.1).sum::<f64>() / n;
            let _ = writeln!(md, "| {init} | {tok} | {} | {knn:.1} | {probe:.1} |", v.len());
        }
        md.push('\n');
    }
    if !fts.is_empty() {
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
        for r in &fts {
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
        // Mean and spread over seeds per (init, tokenizer).
        let mut groups: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        for r in &fts {
            let f = r.finetune.as_ref().expect("filtered");
            groups
                .entry((f.init.clone(), tokenizer(&f.vocab)))
                .or_default()
                .push(100.0 * f.eval.top1);
        }
        let _ = writeln!(md, "\n### Fine-tuning top-1 by initialization\n");
        let _ = writeln!(md, "| init | tokenizer | runs | mean top-1 | min | max |");
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
        for ((init, tok), v) in &groups {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let _ = writeln!(md, "| {init} | {tok} | {} | {mean:.1} | {lo:.1} | {hi:.1} |", v.len());
        }
        md.push('\n');
    }
    let mut plots = Vec::new();
    let bar = crate::progress::pass("plotting", 4, "plots");
    let mut save = |img: image::RgbImage, name: &str, md: &mut String, caption: &str| -> Result<()> {
        bar.inc(1);
        let path = out.join(name);
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| Error::io(&path, std::io::Error::other(e.to_string())))?;
        pipeline::shard::write_atomic(&path, &bytes)?;
        let _ = writeln!(md, "![{caption}]({name})\n");
        plots.push(path);
        Ok(())
    };
    let mim: Vec<Series> = runs
        .iter()
        .filter(|r| !r.mim.is_empty())
        .map(|r| Series {
            name: r.name.clone(),
            points: r.mim.clone(),
        })
        .collect();
    if !mim.is_empty() {
        save(
            line_chart(
                "Pre-training: masked token prediction loss",
                "step",
                "MIM loss (nats)",
                &mim,
            ),
            "pretrain_loss.png",
            &mut md,
            "pre-training loss",
        )?;
    }
    let knn: Vec<Series> = runs
        .iter()
        .filter(|r| !r.knn.is_empty())
        .map(|r| Series {
            name: r.name.clone(),
            points: r.knn.clone(),
        })
        .collect();
    if !knn.is_empty() {
        save(
            line_chart(
                "Pre-training: k-NN top-1 of the frozen encoder (the overfitting guard)",
                "pre-training epoch",
                "k-NN top-1 %",
                &knn,
            ),
            "pretrain_knn.png",
            &mut md,
            "k-NN during pre-training",
        )?;
    }
    let val: Vec<Series> = runs
        .iter()
        .filter(|r| !r.val.is_empty())
        .map(|r| Series {
            name: r.name.clone(),
            points: r.val.clone(),
        })
        .collect();
    if !val.is_empty() {
        save(
            line_chart("Fine-tuning: top-1 during training", "epoch", "top-1 %", &val),
            "finetune_val.png",
            &mut md,
            "fine-tuning accuracy",
        )?;
    }
    if !fts.is_empty() {
        let bars: Vec<(String, f64)> = fts
            .iter()
            .map(|r| {
                let f = r.finetune.as_ref().expect("filtered");
                (r.name.clone(), 100.0 * f.eval.top1)
            })
            .collect();
        save(
            bar_chart("Fine-tuned top-1 by run", "top-1 %", &bars),
            "accuracy.png",
            &mut md,
            "fine-tuned accuracy",
        )?;
    }
    bar.finish_and_clear();
    let markdown = out.join("report.md");
    pipeline::shard::write_atomic(&markdown, md.as_bytes())?;
    Ok(Report {
        markdown,
        plots,
        finetune_runs: fts.len(),
        eval_runs: evals.len(),
    })
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
}
