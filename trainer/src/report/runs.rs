//! Reading the run folders under a directory: each one's results.json (a `trainer eval` or a
//! fine-tuning run), metrics.jsonl curves and steps per epoch.

use std::path::Path;

use crate::error::{Error, ReportError, Result};
use crate::eval::frozen::EvalResults;
use crate::train::finetune::{FinetuneLine, FinetuneResults};
use crate::train::run_folder::{CONFIG_FILE, METRICS_FILE, RESULTS_FILE};
use crate::train::segment::SegmentResults;

pub(super) struct Run {
    pub(super) name: String,
    pub(super) eval: Option<EvalResults>,
    pub(super) finetune: Option<FinetuneResults>,
    pub(super) segment: Option<SegmentResults>,
    /// (step, mim) of a pre-training run.
    pub(super) mim: Vec<(f64, f64)>,
    /// (epoch, k-NN top-1 %) of a pre-training run with a k-NN monitor.
    pub(super) knn: Vec<(f64, f64)>,
    /// (epoch, top-1 %) of a fine-tuning run's periodic evaluations.
    pub(super) val: Vec<(f64, f64)>,
    /// The last periodic evaluation of a fine-tuning run: train top-1 and the share of the
    /// most predicted class.
    pub(super) last_eval: Option<(f64, f64)>,
    /// Updates per epoch, from the run's config.json.
    pub(super) steps_per_epoch: Option<f64>,
    /// The run's config.json, where it parses.
    pub(super) config: Option<serde_json::Value>,
    /// Every number of its metrics.jsonl: (step, field, value).
    pub(super) series: Vec<(u64, String, f64)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::io(path, source)
}

/// Run folders directly under `dir` (and `dir` itself when it is one), by name.
pub(super) fn find_runs(dir: &Path) -> Result<Vec<Run>> {
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
        if let Some(run) = read_run(&d)? {
            runs.push(run);
        }
    }
    bar.finish_and_clear();
    Ok(runs)
}

/// The run in folder `d`, `None` when it holds neither results.json nor metrics.jsonl.
fn read_run(d: &Path) -> Result<Option<Run>> {
    let results = d.join(RESULTS_FILE);
    let metrics = d.join(METRICS_FILE);
    if !results.exists() && !metrics.exists() {
        return Ok(None);
    }
    let mut run = Run {
        name: d
            .file_name()
            .map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into()),
        eval: None,
        finetune: None,
        segment: None,
        mim: Vec::new(),
        knn: Vec::new(),
        val: Vec::new(),
        last_eval: None,
        steps_per_epoch: None,
        config: std::fs::read_to_string(d.join(CONFIG_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()),
        series: Vec::new(),
    };
    run.steps_per_epoch = run.config.as_ref().and_then(|c| c["steps_per_epoch"].as_f64());
    if results.exists() {
        read_results(&mut run, results)?;
    }
    if metrics.exists() {
        read_metrics(&mut run, &metrics)?;
    }
    Ok(Some(run))
}

/// A results.json: a `trainer eval` run's, a fine-tuning run's or a segmentation run's, by
/// its `kind`.
fn read_results(run: &mut Run, results: std::path::PathBuf) -> Result<()> {
    let text = std::fs::read_to_string(&results).map_err(io(&results))?;
    let bad = |e: serde_json::Error| ReportError::BadResults {
        path: results.clone(),
        message: e.to_string(),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
    match v.get("kind").and_then(|k| k.as_str()) {
        Some("eval") => run.eval = Some(serde_json::from_value(v).map_err(bad)?),
        Some("finetune") => run.finetune = Some(serde_json::from_value(v).map_err(bad)?),
        Some("segment") => run.segment = Some(serde_json::from_value(v).map_err(bad)?),
        other => {
            return Err(ReportError::BadResults {
                path: results,
                message: format!("unknown kind {other:?} (expected \"eval\", \"finetune\" or \"segment\")"),
            }
            .into())
        }
    }
    Ok(())
}

/// The curves of a metrics.jsonl: pre-training losses and k-NN, or fine-tuning evaluations
/// (lines that are neither are skipped).
fn read_metrics(run: &mut Run, metrics: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(io(metrics))?;
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if let (Some(step), Some(fields)) = (v["step"].as_u64(), v.as_object()) {
            let numbers = fields.iter().filter(|(k, _)| k.as_str() != "step");
            run.series
                .extend(numbers.filter_map(|(k, x)| x.as_f64().map(|x| (step, k.clone(), x))));
        }
        // A pre-training line: a token method's `mim`, MAE's `mse` or DINO's `dino` (the token
        // loss curve is the token methods' alone: the others are not on its scale).
        if ["mim", "mse", "dino"].iter().any(|t| v.get(t).is_some()) {
            if let (Some(step), Some(mim)) = (v["step"].as_f64(), v["mim"].as_f64()) {
                run.mim.push((step, mim));
            }
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
    Ok(())
}
