//! The report's PNG plots, written next to report.md and linked from it: pre-training loss
//! and k-NN curves, fine-tuning accuracy during training, final accuracy per run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::report::plot::{bar_chart, line_chart, Series};
use crate::report::runs::Run;

/// One series per run with a non-empty curve, `points` picking the curve.
fn series(runs: &[Run], points: impl Fn(&Run) -> &Vec<(f64, f64)>) -> Vec<Series> {
    runs.iter()
        .filter(|r| !points(r).is_empty())
        .map(|r| Series {
            name: r.name.clone(),
            points: points(r).clone(),
        })
        .collect()
}

/// Draws the plots that have data into `out`, links them from `md`; returns their paths.
pub(super) fn write_plots(runs: &[Run], out: &Path, md: &mut String) -> Result<Vec<PathBuf>> {
    let mut plots = Vec::new();
    let bar = crate::progress::pass("plotting", 4, "plots");
    let mut save = |img: image::RgbImage, name: &str, caption: &str| -> Result<()> {
        bar.inc(1);
        let path = out.join(name);
        pipeline::shard::write_png(&path, &img)?;
        let _ = writeln!(md, "![{caption}]({name})\n");
        plots.push(path);
        Ok(())
    };
    let mim = series(runs, |r| &r.mim);
    if !mim.is_empty() {
        let title = "Pre-training: masked token prediction loss";
        let img = line_chart(title, "step", "MIM loss (nats)", &mim);
        save(img, "pretrain_loss.png", "pre-training loss")?;
    }
    let knn = series(runs, |r| &r.knn);
    if !knn.is_empty() {
        let title = "Pre-training: k-NN top-1 of the frozen encoder (the overfitting guard)";
        let img = line_chart(title, "pre-training epoch", "k-NN top-1 %", &knn);
        save(img, "pretrain_knn.png", "k-NN during pre-training")?;
    }
    let val = series(runs, |r| &r.val);
    if !val.is_empty() {
        let img = line_chart("Fine-tuning: top-1 during training", "epoch", "top-1 %", &val);
        save(img, "finetune_val.png", "fine-tuning accuracy")?;
    }
    let bars: Vec<(String, f64)> = runs
        .iter()
        .filter_map(|r| Some((r.name.clone(), 100.0 * r.finetune.as_ref()?.eval.top1)))
        .collect();
    if !bars.is_empty() {
        save(
            bar_chart("Fine-tuned top-1 by run", "top-1 %", &bars),
            "accuracy.png",
            "fine-tuned accuracy",
        )?;
    }
    bar.finish_and_clear();
    Ok(plots)
}
