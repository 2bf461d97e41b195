//! `trainer report`: gathers the run folders under a directory (pre-training, `trainer eval`,
//! fine-tuning and segmentation runs) into `report.md` with the results tables (grouped by
//! polars), the same data as `runs.parquet` (one row per run) and `metrics.parquet` (every
//! metrics.jsonl number in long form), and PNG plots of the pre-training losses, the
//! fine-tuning val accuracy and the final accuracy per initialization.

mod figures;
mod frames;
pub mod plot;
pub mod reconstructions;
mod runs;
mod tables;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, ReportError, Result};
use crate::report::figures::write_plots;
use crate::report::frames::{metrics_frame, polars_error, runs_frame, write_parquet};
use crate::report::runs::{find_runs, Run};
use crate::report::tables::{write_eval_section, write_finetune_section, write_segment_section, write_table1};

/// The written files.
#[derive(Debug, Clone)]
pub struct Report {
    pub markdown: PathBuf,
    /// One row per run folder.
    pub runs_parquet: PathBuf,
    /// Every metrics.jsonl number in long form (run, step, metric, value).
    pub metrics_parquet: PathBuf,
    pub plots: Vec<PathBuf>,
    pub finetune_runs: usize,
    pub eval_runs: usize,
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
    std::fs::create_dir_all(out).map_err(|source| Error::io(out, source))?;
    let mut md = String::new();
    let _ = writeln!(md, "# Results: `{}`\n", runs_dir.display());
    let evals: Vec<&Run> = runs.iter().filter(|r| r.eval.is_some()).collect();
    let fts: Vec<&Run> = runs.iter().filter(|r| r.finetune.is_some()).collect();
    let segs: Vec<&Run> = runs.iter().filter(|r| r.segment.is_some()).collect();
    let markdown = out.join("report.md");
    let tables = |md: &mut String| -> polars::prelude::PolarsResult<()> {
        if !evals.is_empty() || !fts.is_empty() {
            write_table1(md, &evals, &fts)?;
        }
        if !evals.is_empty() {
            write_eval_section(md, &evals)?;
        }
        if !fts.is_empty() {
            write_finetune_section(md, &fts)?;
        }
        if !segs.is_empty() {
            write_segment_section(md, &segs)?;
        }
        Ok(())
    };
    tables(&mut md).map_err(|e| polars_error(&markdown, e))?;
    let runs_parquet = out.join("runs.parquet");
    let metrics_parquet = out.join("metrics.parquet");
    let mut frame = runs_frame(&runs).map_err(|e| polars_error(&runs_parquet, e))?;
    write_parquet(&mut frame, &runs_parquet)?;
    let mut frame = metrics_frame(&runs).map_err(|e| polars_error(&metrics_parquet, e))?;
    write_parquet(&mut frame, &metrics_parquet)?;
    let plots = write_plots(&runs, out, &mut md)?;
    pipeline::shard::write_atomic(&markdown, md.as_bytes())?;
    Ok(Report {
        markdown,
        runs_parquet,
        metrics_parquet,
        plots,
        finetune_runs: fts.len(),
        eval_runs: evals.len(),
    })
}
