//! Food-101: `images/<class>/<id>.jpg` with `meta/classes.txt` and `meta/{train,test}.txt`
//! (`apple_pie/1005649`, no extension).

use std::collections::BTreeMap;
use std::path::Path;

use super::listing::{read_lines, require, Listing, SourceImage};
use crate::error::Result;

pub fn list(root: &Path) -> Result<Listing> {
    let classes_path = require(root.join("meta/classes.txt"), "Food-101 class list")?;
    let class_names: Vec<String> = read_lines(&classes_path)?.into_iter().map(|(_, c)| c).collect();
    let label_of: BTreeMap<&str, i32> = class_names
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as i32))
        .collect();
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    for split in ["train", "test"] {
        let list_path = require(root.join(format!("meta/{split}.txt")), "Food-101 split list")?;
        for (line, entry) in read_lines(&list_path)? {
            let rel = format!("images/{entry}.jpg");
            let class = entry.split('/').next().unwrap_or_default();
            match label_of.get(class) {
                Some(&label) => images.push(SourceImage::new(split, rel, label)),
                None => skipped.push((
                    rel,
                    split,
                    format!(
                        "unknown class {class:?} at {}:{line} (not in meta/classes.txt)",
                        list_path.display()
                    ),
                )),
            }
        }
    }
    let mut listing = Listing::new("food101", class_names.clone());
    listing.images = images;
    for (rel, split, reason) in skipped {
        listing.skip(rel, split, reason);
    }
    listing.skip_unlisted(root, &["images"], "none", "meta/train.txt or meta/test.txt")?;
    Ok(listing)
}
