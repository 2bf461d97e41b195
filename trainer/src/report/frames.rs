//! The report's data as polars frames: `runs.parquet` (one row per run folder: what it is,
//! what trained it, its results) and `metrics.parquet` (every number of every metrics.jsonl in
//! long form: run, step, metric, value), which pandas, polars, duckdb or a notebook open as
//! they are, and the per-group spreads the Markdown tables print.

use std::path::{Path, PathBuf};

use polars::prelude::{self as pl, DataFrame, IntoLazy as _, NamedFrom as _, PolarsResult, Series};

use crate::error::{ReportError, Result};
use crate::report::runs::Run;

/// `kmeans-8192` for `vocab-kmeans-8192-s0.safetensors` (the vocabulary's own seed is left
/// out so it is not mistaken for the run's).
pub(super) fn tokenizer(vocab: &Option<PathBuf>) -> String {
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

/// One row per run.
pub(super) fn runs_frame(runs: &[Run]) -> PolarsResult<DataFrame> {
    let rows: Vec<RunRow> = runs.iter().map(RunRow::of).collect();
    let text = |name: &str, f: fn(&RunRow) -> Option<String>| -> pl::Column {
        Series::new(name.into(), rows.iter().map(f).collect::<Vec<_>>()).into()
    };
    let number = |name: &str, f: fn(&RunRow) -> Option<f64>| -> pl::Column {
        Series::new(name.into(), rows.iter().map(f).collect::<Vec<_>>()).into()
    };
    let count = |name: &str, f: fn(&RunRow) -> Option<u64>| -> pl::Column {
        Series::new(name.into(), rows.iter().map(f).collect::<Vec<_>>()).into()
    };
    DataFrame::new_infer_height(vec![
        text("run", |r| Some(r.run.clone())),
        text("kind", |r| Some(r.kind.to_string())),
        text("method", |r| r.method.clone()),
        text("tokenizer", |r| r.tokenizer.clone()),
        text("model", |r| r.model.clone()),
        text("dataset", |r| r.dataset.clone()),
        text("pretrain_data", |r| r.pretrain_data.clone()),
        count("seed", |r| r.seed),
        count("steps", |r| r.steps),
        text("eval_split", |r| r.eval_split.clone()),
        number("top1", |r| r.top1),
        number("top5", |r| r.top5),
        number("knn_top1", |r| r.knn_top1),
        number("best_probe_top1", |r| r.best_probe_top1),
        number("miou", |r| r.miou),
        number("pixel_accuracy", |r| r.pixel_accuracy),
        number("seconds", |r| r.seconds),
    ])
}

/// Every number of every run's metrics.jsonl: `run`, `step`, `metric`, `value`.
pub(super) fn metrics_frame(runs: &[Run]) -> PolarsResult<DataFrame> {
    let n: usize = runs.iter().map(|r| r.series.len()).sum();
    let (mut run, mut step, mut metric, mut value) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for r in runs {
        for (s, m, v) in &r.series {
            run.push(r.name.as_str());
            step.push(*s);
            metric.push(m.as_str());
            value.push(*v);
        }
    }
    DataFrame::new_infer_height(vec![
        Series::new("run".into(), run).into(),
        Series::new("step".into(), step).into(),
        Series::new("metric".into(), metric).into(),
        Series::new("value".into(), value).into(),
    ])
}

/// Writes `df` as Parquet at `path`, atomically.
pub(super) fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    pl::ParquetWriter::new(&mut bytes)
        .finish(df)
        .map_err(|source| polars_error(path, source))?;
    pipeline::shard::write_atomic(path, &bytes)?;
    Ok(())
}

pub(super) fn polars_error(path: &Path, source: pl::PolarsError) -> crate::error::Error {
    ReportError::Polars {
        what: path.display().to_string(),
        source,
    }
    .into()
}

/// A group's values: how many, their mean, min and max.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Spread {
    pub keys: Vec<String>,
    pub runs: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// The spread of `values` per distinct combination of `keys` (named columns of equal
/// length), sorted by the keys: a polars group-by.
pub(super) fn spreads(keys: &[(&str, Vec<String>)], values: &[f64]) -> PolarsResult<Vec<Spread>> {
    let mut columns: Vec<pl::Column> = keys
        .iter()
        .map(|(name, v)| Series::new((*name).into(), v.as_slice()).into())
        .collect();
    columns.push(Series::new("value".into(), values).into());
    let by: Vec<pl::Expr> = keys.iter().map(|(name, _)| pl::col(*name)).collect();
    let names: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
    let value = || pl::col("value");
    let out = DataFrame::new_infer_height(columns)?
        .lazy()
        .group_by(by)
        .agg([
            pl::len().cast(pl::DataType::UInt64).alias("runs"),
            value().mean().alias("mean"),
            value().min().alias("min"),
            value().max().alias("max"),
        ])
        .sort(names.clone(), Default::default())
        .collect()?;
    let key_columns: Vec<&pl::StringChunked> = names
        .iter()
        .map(|n| out.column(n).and_then(|c| c.str()))
        .collect::<PolarsResult<_>>()?;
    let runs = out.column("runs")?.u64()?;
    let [mean, min, max] = ["mean", "min", "max"].map(|n| out.column(n).and_then(|c| c.f64()));
    let (mean, min, max) = (mean?, min?, max?);
    Ok((0..out.height())
        .map(|i| Spread {
            keys: key_columns
                .iter()
                .map(|c| c.get(i).unwrap_or_default().to_string())
                .collect(),
            runs: runs.get(i).unwrap_or(0) as usize,
            mean: mean.get(i).unwrap_or(f64::NAN),
            min: min.get(i).unwrap_or(f64::NAN),
            max: max.get(i).unwrap_or(f64::NAN),
        })
        .collect())
}

/// What `runs.parquet` says of one run: from its results.json where it has one, else from its
/// config.json (a pre-training run).
struct RunRow {
    run: String,
    kind: &'static str,
    method: Option<String>,
    tokenizer: Option<String>,
    model: Option<String>,
    dataset: Option<String>,
    pretrain_data: Option<String>,
    seed: Option<u64>,
    steps: Option<u64>,
    eval_split: Option<String>,
    top1: Option<f64>,
    top5: Option<f64>,
    knn_top1: Option<f64>,
    best_probe_top1: Option<f64>,
    miou: Option<f64>,
    pixel_accuracy: Option<f64>,
    seconds: Option<f64>,
}

impl RunRow {
    fn of(r: &Run) -> RunRow {
        let config = |key: &str| r.config.as_ref().and_then(|c| c.get(key)).cloned();
        let text = |key: &str| config(key).and_then(|v| v.as_str().map(str::to_string));
        let mut row = RunRow {
            run: r.name.clone(),
            kind: "pretrain",
            method: text("method"),
            tokenizer: text("vocab").map(|v| tokenizer(&Some(v.into()))),
            model: text("model"),
            dataset: text("dataset"),
            pretrain_data: None,
            seed: config("seed").and_then(|v| v.as_u64()),
            steps: config("total_steps").and_then(|v| v.as_u64()),
            eval_split: text("eval_split"),
            top1: None,
            top5: None,
            knn_top1: None,
            best_probe_top1: None,
            miou: None,
            pixel_accuracy: None,
            seconds: None,
        };
        if let Some(e) = &r.eval {
            row = RunRow {
                kind: "eval",
                method: Some(e.init.clone()),
                tokenizer: Some(tokenizer(&e.vocab)),
                model: Some(e.model.clone()),
                dataset: Some(e.dataset.clone()),
                pretrain_data: e.pretrain_data.clone(),
                seed: Some(e.seed),
                steps: Some(e.pretrain_steps),
                eval_split: Some(e.eval_split.clone()),
                knn_top1: Some(e.knn.top1),
                best_probe_top1: Some(e.best_probe.top1),
                seconds: Some(e.seconds),
                ..row
            };
        } else if let Some(f) = &r.finetune {
            row = RunRow {
                kind: "finetune",
                method: Some(f.init.clone()),
                tokenizer: Some(tokenizer(&f.vocab)),
                model: Some(f.model.clone()),
                dataset: Some(f.dataset.clone()),
                pretrain_data: f.pretrain_data.clone(),
                seed: Some(f.seed),
                steps: Some(f.steps),
                eval_split: Some(f.eval_split.clone()),
                top1: Some(f.eval.top1),
                top5: Some(f.eval.top5),
                seconds: Some(f.seconds),
                ..row
            };
        } else if let Some(s) = &r.segment {
            row = RunRow {
                kind: "segment",
                method: Some(s.init.clone()),
                tokenizer: None,
                model: Some(s.model.clone()),
                dataset: Some(s.dataset.clone()),
                pretrain_data: s.pretrain_data.clone(),
                seed: Some(s.seed),
                steps: Some(s.steps),
                eval_split: Some(s.eval_split.clone()),
                miou: Some(s.eval.miou),
                pixel_accuracy: Some(s.eval.pixel_accuracy),
                seconds: Some(s.seconds),
                ..row
            };
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_group_sort_and_summarize() {
        let keys = [
            (
                "init",
                ["splitmask", "beit", "splitmask", "beit", "random"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            (
                "data",
                ["a", "a", "a", "b", "none"].iter().map(|s| s.to_string()).collect(),
            ),
        ];
        let s = spreads(&keys, &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let got: Vec<(Vec<String>, usize, f64, f64, f64)> =
            s.into_iter().map(|s| (s.keys, s.runs, s.mean, s.min, s.max)).collect();
        let k = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
        assert_eq!(
            got,
            vec![
                (k("beit", "a"), 1, 2.0, 2.0, 2.0),
                (k("beit", "b"), 1, 4.0, 4.0, 4.0),
                (k("random", "none"), 1, 5.0, 5.0, 5.0),
                (k("splitmask", "a"), 2, 2.0, 1.0, 3.0),
            ]
        );
    }
}
