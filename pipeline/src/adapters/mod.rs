//! Adapters read one dataset's official on-disk layout and list its images: where each file is,
//! its split and label, and the source columns worth keeping. They never decode images; that is
//! the prepare step's job, so listing a million-image dataset takes seconds.

use std::path::Path;

use crate::error::{PipelineError, Result};

pub mod ade20k;
pub mod cars;
pub mod coco;
pub mod coco_pixels;
pub mod domainnet;
pub mod folder;
pub mod food101;
pub mod hub_parquet;
pub mod imagenet;
pub mod inat;
pub mod listing;
pub mod segmentation;

pub use listing::{AdapterOptions, Listing, SideTable, SourceImage};

pub const ADAPTERS: &[&str] = &[
    "imagenet",
    "coco",
    "domainnet",
    "inat",
    "stanford_cars",
    "food101",
    "ade20k",
    "folder",
    "segmentation",
    "parquet",
];

/// Lists a dataset with the named adapter.
pub fn list(adapter: &str, root: &Path, opts: &AdapterOptions) -> Result<Listing> {
    if !root.is_dir() {
        return Err(PipelineError::MissingMetadata {
            path: root.to_path_buf(),
            hint: "the dataset root is not a directory".into(),
        });
    }
    let mut listing = match adapter {
        "imagenet" => imagenet::list(root, opts)?,
        "coco" => coco::list(root)?,
        "domainnet" => domainnet::list(root, opts)?,
        "inat" => inat::list(root, opts)?,
        "stanford_cars" => cars::list(root)?,
        "food101" => food101::list(root)?,
        "ade20k" => ade20k::list(root)?,
        "folder" => folder::list(root)?,
        "segmentation" => segmentation::list(root)?,
        "parquet" => hub_parquet::list(root)?,
        other => {
            return Err(PipelineError::Invalid(format!(
                "unknown adapter {other:?}; known: {}",
                ADAPTERS.join(", ")
            )))
        }
    };
    if listing.images.is_empty() {
        return Err(PipelineError::Empty {
            path: root.to_path_buf(),
            hint: format!("the {adapter} adapter found no images in this layout"),
        });
    }
    listing.images.sort_by(|a, b| (&a.split, &a.id).cmp(&(&b.split, &b.id)));
    if let Some(w) = listing
        .images
        .windows(2)
        .find(|w| w[0].id == w[1].id && w[0].split == w[1].split)
    {
        return Err(PipelineError::Invalid(format!(
            "{}: image {:?} is listed twice in split {:?}",
            root.display(),
            w[0].id,
            w[0].split
        )));
    }
    listing.skipped.sort();
    Ok(listing)
}
