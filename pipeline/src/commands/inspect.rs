//! `pipeline inspect`: checksums and counts of a prepared dataset, its class histogram and a
//! contact sheet.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use pipeline::inspect::{self, InspectReport};
use schemas::Manifest;

use super::print_manifest_summary;

#[derive(Args)]
pub struct InspectArgs {
    dir: PathBuf,
    /// Contact-sheet PNG (default: <dir>/contact_sheet.png).
    #[arg(long)]
    sheet: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    per_class: usize,
    #[arg(long, default_value_t = 20)]
    max_classes: usize,
}

pub fn run(args: InspectArgs) -> Result<ExitCode> {
    let InspectArgs {
        dir,
        sheet,
        per_class,
        max_classes,
    } = args;
    let (m, report) = inspect::verify(&dir)?;
    print_manifest_summary(&m);
    println!("checksums: {}/{} shards verified", report.shards_ok, m.shards.len());
    print_histograms(&m, &report);
    let sheet = sheet.unwrap_or_else(|| dir.join("contact_sheet.png"));
    inspect::contact_sheet(&dir, &m, &sheet, per_class, max_classes)?;
    println!("contact sheet: {}", sheet.display());
    if report.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &report.problems {
            eprintln!("problem: {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn print_histograms(m: &Manifest, report: &InspectReport) {
    for (split, hist) in &report.histogram {
        println!("  {split} class histogram (label: rows):");
        for (label, n) in hist {
            let name = usize::try_from(*label)
                .ok()
                .and_then(|l| m.class_names.get(l))
                .map_or("unlabeled", |s| s);
            println!("    {label:>5} {n:>8}  {name}");
        }
    }
}
