//! `trainer export`: write a run as a timm export folder (model.safetensors + timm's
//! config.json).

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Run folder (holds config.json and checkpoint.safetensors), or a checkpoint in one.
    #[arg(long)]
    run: PathBuf,
    /// Only `timm` for now.
    #[arg(long, default_value = "timm")]
    format: String,
    /// Export folder.
    #[arg(long)]
    out: PathBuf,
    /// Also write a reference input and our output on it, features or logits (for
    /// tests/python/timm_check.py).
    #[arg(long)]
    check: Option<PathBuf>,
}

pub fn run(
    Args {
        run,
        format,
        out,
        check,
    }: Args,
) -> Result<()> {
    if format != "timm" {
        anyhow::bail!("--format {format:?}: only \"timm\" is supported");
    }
    let e = trainer::export::export_run(&run, &out)?;
    println!(
        "wrote {} ({} tensors with timm names, {}) and {}; load it with timm.create_model(\"local-dir:{}\", pretrained=True)",
        e.weights.display(),
        e.tensors,
        if e.num_classes > 0 {
            format!("a classifier of {} classes", e.num_classes)
        } else {
            "the encoder".to_string()
        },
        e.config.display(),
        out.display()
    );
    if let Some(check) = check {
        trainer::export::write_check(&run, &check)?;
        println!("wrote a reference input and our output on it to {}", check.display());
    }
    Ok(())
}
