//! `trainer export`: write a run as a timm export folder (model.safetensors + timm's
//! config.json), or its backbone for detectron2 (ViTDet) or mmsegmentation.

use std::path::PathBuf;

use anyhow::Result;
use trainer::export::layouts::{key_report, Layout};

#[derive(clap::Args)]
pub struct Args {
    /// Run folder (holds config.json and checkpoint.safetensors), or a checkpoint in one.
    #[arg(long)]
    run: PathBuf,
    /// Whose names and layout: timm's Hub folder, detectron2's ViT (ViTDet) or
    /// mmsegmentation's VisionTransformer backbone (layer scale folded for both).
    #[arg(long, value_enum, alias = "format", default_value = "timm")]
    layout: Layout,
    /// Export folder.
    #[arg(long)]
    out: PathBuf,
    /// Also write a reference input and our output on it, features or logits (for
    /// tests/python/timm_check.py; timm layout only).
    #[arg(long)]
    check: Option<PathBuf>,
}

pub fn run(
    Args {
        run,
        layout,
        out,
        check,
    }: Args,
) -> Result<()> {
    if check.is_some() && layout != Layout::Timm {
        anyhow::bail!("--check compares against timm: use it with --layout timm");
    }
    let e = trainer::export::export_run(&run, &out, layout)?;
    print!("{}", key_report(&e.keys));
    let what = if e.num_classes > 0 {
        format!("a classifier of {} classes", e.num_classes)
    } else {
        "the encoder".to_string()
    };
    match layout {
        Layout::Timm => println!(
            "wrote {} ({} tensors with timm names, {what}) and {}; load it with timm.create_model(\"local-dir:{}\", pretrained=True)",
            e.weights.display(),
            e.tensors,
            e.config.display(),
            out.display()
        ),
        _ => println!(
            "wrote {} ({} tensors, {layout:?} layout, layer scale folded) and {}; for PyTorch's format: \
             python tools/safetensors_to_pth.py {} {}/model.pth --key {} (detectron2: load it with \
             ?matching_heuristics=True, see docs/dense.md)",
            e.weights.display(),
            e.tensors,
            e.config.display(),
            e.weights.display(),
            out.display(),
            layout.checkpoint_key()
        ),
    }
    if let Some(check) = check {
        trainer::export::write_check(&run, &check)?;
        println!("wrote a reference input and our output on it to {}", check.display());
    }
    Ok(())
}
