//! Semantic segmentation in the layout CamVid is published in (SegNet's tutorial), which is
//! also the generic layout for users' own data: `classes.txt` (one class name per line, the
//! label PNGs' values 0..n-1 in order; any other value is the ignore label), and per split a
//! `<split>.txt` of `image label` pairs relative to the root (`train/0001TP_006690.jpg
//! trainannot/0001TP_006690.png`). Images carry no class label (-1); their label map goes to
//! the `mask` column, resized with the image by nearest neighbour.

use std::collections::BTreeSet;
use std::path::Path;

use super::listing::{read_lines, require, Listing, SourceImage};
use crate::error::{PipelineError, Result};

/// Splits read when their list exists (`train.txt` is required).
const SPLITS: [&str; 3] = ["train", "val", "test"];

pub fn list(root: &Path) -> Result<Listing> {
    let classes = require(
        root.join("classes.txt"),
        "segmentation layout needs classes.txt (one class per line)",
    )?;
    let mask_classes: Vec<String> = read_lines(&classes)?.into_iter().map(|(_, c)| c).collect();
    if mask_classes.len() > 255 {
        return Err(PipelineError::BadField {
            path: classes,
            field: "lines".into(),
            message: format!("{} classes do not fit 8-bit label maps", mask_classes.len()),
        });
    }
    require(
        root.join("train.txt"),
        "segmentation layout needs train.txt (`image label` per line)",
    )?;
    let mut listing = Listing::new("segmentation", Vec::new());
    listing.mask_classes = mask_classes;
    for split in SPLITS {
        let path = root.join(format!("{split}.txt"));
        if !path.is_file() {
            continue;
        }
        let mut seen = BTreeSet::new();
        for (line, text) in read_lines(&path)? {
            let bad = |message: String| PipelineError::BadLine {
                path: path.clone(),
                line,
                message,
                text: text.clone(),
            };
            let mut parts = text.split_whitespace();
            let (Some(image), Some(label), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected `image label`".into()));
            };
            if let Some(p) = [image, label].into_iter().find(|p| !schemas::manifest::stays_inside(p)) {
                return Err(bad(format!("{p:?} is not a relative path inside the dataset folder")));
            }
            if !seen.insert(image.to_string()) {
                return Err(bad(format!("{image} is listed twice")));
            }
            if !root.join(label).is_file() {
                listing.skip(
                    image,
                    split,
                    format!("label map {label} not found ({}:{line})", path.display()),
                );
                continue;
            }
            let mut img = SourceImage::new(split, image.to_string(), -1);
            img.mask_rel_path = Some(label.to_string());
            listing.images.push(img);
        }
    }
    Ok(listing)
}
