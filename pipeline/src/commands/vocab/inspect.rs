//! `pipeline vocab inspect`: how a vocabulary's entries are used over a split, and a PNG of
//! them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use pipeline::prepare;
use pipeline::vocab::tokenizer::Vocabulary;
use pipeline::vocab::{self, UsageReport};

#[derive(Args)]
pub struct VocabInspectArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    vocab: PathBuf,
    /// Split to tokenize (default: the dataset's evaluation split).
    #[arg(long)]
    split: Option<String>,
    #[arg(long, default_value_t = 2000)]
    images: usize,
    /// PNG of the entries (default: the vocabulary's path with .png).
    #[arg(long)]
    png: Option<PathBuf>,
}

pub fn run(args: VocabInspectArgs) -> Result<ExitCode> {
    let VocabInspectArgs {
        data,
        vocab: path,
        split,
        images,
        png,
    } = args;
    let (v, sha) = Vocabulary::load(&path)?;
    let split = match split {
        Some(s) => s,
        None => prepare::load_manifest(&data)?.eval_split().to_string(),
    };
    let r = vocab::usage(&data, &v, &split, images)?;
    println!(
        "{} ({} entries, sha256 {sha}) over {} {split} images:",
        path.display(),
        v.header.size,
        r.images
    );
    print_usage(&r, v.header.size);
    let png = png.unwrap_or_else(|| path.with_extension("png"));
    vocab::draw(&v, &png, 128, 2)?;
    println!("  entries drawn: {}", png.display());
    let hist = png.with_extension("usage.json");
    write_usage_json(&hist, &path, &sha, &split, &r)?;
    println!("  usage histogram: {}", hist.display());
    Ok(ExitCode::SUCCESS)
}

/// The share of entries used and the eight most used ones.
fn print_usage(r: &UsageReport, size: usize) {
    let used = r.counts.iter().filter(|&&c| c > 0).count();
    println!(
        "  used entries {used} ({:.1}%), dead {:.1}%, perplexity {:.0}",
        100.0 * used as f64 / size as f64,
        100.0 * r.dead_share,
        r.perplexity
    );
    let mut top: Vec<(usize, u64)> = r.counts.iter().copied().enumerate().collect();
    top.sort_by_key(|&(i, c)| (std::cmp::Reverse(c), i));
    let total: u64 = r.counts.iter().sum();
    println!(
        "  most used: {}",
        top.iter()
            .take(8)
            .map(|(i, c)| format!("{i} ({:.2}%)", 100.0 * *c as f64 / total.max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn write_usage_json(hist: &Path, vocab: &Path, sha: &str, split: &str, r: &UsageReport) -> Result<()> {
    let json = serde_json::json!({
        "vocab": vocab, "vocab_sha256": sha, "split": split, "images": r.images,
        "perplexity": r.perplexity, "dead_share": r.dead_share, "counts": r.counts,
    });
    pipeline::shard::write_atomic(hist, serde_json::to_string(&json)?.as_bytes())?;
    Ok(())
}
