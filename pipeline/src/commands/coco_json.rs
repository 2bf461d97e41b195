//! `pipeline coco-json`: a prepared COCO split as a detection dataset (json + images) whose
//! annotations line up with the stored images.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct CocoJsonArgs {
    /// A prepared COCO dataset folder.
    data: PathBuf,
    #[arg(long, default_value = "val")]
    split: String,
    /// Where `annotations/instances_<split>.json` and `<split>/` go.
    #[arg(long)]
    out: PathBuf,
    /// Write the json only, not the images.
    #[arg(long)]
    no_images: bool,
}

pub fn run(a: &CocoJsonArgs) -> Result<()> {
    let e = pipeline::coco_json::write_coco(&a.data, &a.split, &a.out, !a.no_images)?;
    println!(
        "wrote {}: {} images, {} annotations, {} categories, in the stored images' pixels{}",
        e.json.display(),
        e.images,
        e.annotations,
        e.categories,
        e.image_dir
            .map(|d| format!("; images in {}", d.display()))
            .unwrap_or_default()
    );
    Ok(())
}
