//! ADE20k, SceneParsing release (ADEChallengeData2016): `images/{training,validation}/*.jpg` with
//! segmentation maps `annotations/{training,validation}/<stem>.png`. No class labels; the map is
//! carried in the `mask` column and resized with its image.

use std::collections::BTreeSet;
use std::path::Path;

use super::listing::{walk_files, Listing, SourceImage};
use crate::error::{PipelineError, Result};

pub fn list(root: &Path) -> Result<Listing> {
    if !root.join("images").is_dir() {
        return Err(PipelineError::MissingMetadata {
            path: root.join("images"),
            hint: "ADE20k layout needs images/{training,validation}/".into(),
        });
    }
    let mut listing = Listing::new("ade20k", Vec::new());
    for (split, dir) in [("train", "training"), ("val", "validation")] {
        let masks: BTreeSet<String> = walk_files(root, &format!("annotations/{dir}"))?.into_iter().collect();
        let mut used = BTreeSet::new();
        for rel in walk_files(root, &format!("images/{dir}"))? {
            let stem = Path::new(&rel)
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let mask = format!("annotations/{dir}/{stem}.png");
            let mut img = SourceImage::new(split, rel, -1);
            if masks.contains(&mask) {
                used.insert(mask.clone());
                img.mask_rel_path = Some(mask);
            }
            listing.images.push(img);
        }
        for m in masks.difference(&used) {
            listing.skip(m.clone(), split, "segmentation map without an image");
        }
    }
    Ok(listing)
}
