//! `trainer report`: gathers the run folders under a directory (pre-training, `trainer eval`,
//! fine-tuning and segmentation runs) into `report.md` with the results tables, and PNG plots of the
//! pre-training losses, the fine-tuning val accuracy and the final accuracy per initialization.

mod figures;
pub mod plot;
mod runs;
mod tables;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, ReportError, Result};
use crate::report::figures::write_plots;
use crate::report::runs::{find_runs, Run};
use crate::report::tables::{write_eval_section, write_finetune_section, write_segment_section, write_table1};

/// The written files.
#[derive(Debug, Clone)]
pub struct Report {
    pub markdown: PathBuf,
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
    if !evals.is_empty() || !fts.is_empty() {
        write_table1(&mut md, &evals, &fts);
    }
    if !evals.is_empty() {
        write_eval_section(&mut md, &evals);
    }
    if !fts.is_empty() {
        write_finetune_section(&mut md, &fts);
    }
    let segs: Vec<&Run> = runs.iter().filter(|r| r.segment.is_some()).collect();
    if !segs.is_empty() {
        write_segment_section(&mut md, &segs);
    }
    let plots = write_plots(&runs, out, &mut md)?;
    let markdown = out.join("report.md");
    pipeline::shard::write_atomic(&markdown, md.as_bytes())?;
    Ok(Report {
        markdown,
        plots,
        finetune_runs: fts.len(),
        eval_runs: evals.len(),
    })
}
