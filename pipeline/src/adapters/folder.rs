//! A generic image folder for users' own data: `<root>/<class>/**/*`, or split folders
//! `<root>/{train,val,test}/<class>/**/*`. Files directly under the root (or a split folder) are
//! unlabeled. Classes are the sorted folder names (of `train/` when splits exist).

use std::path::Path;

use super::listing::{subdirs, walk_files, Listing, SourceImage};
use crate::error::Result;

const SPLITS: &[&str] = &["train", "val", "test"];

pub fn list(root: &Path) -> Result<Listing> {
    let top = subdirs(root)?;
    let has_splits = top.iter().any(|d| SPLITS.contains(&d.as_str()));
    let split_dirs: Vec<(&str, String)> = if has_splits {
        SPLITS
            .iter()
            .filter(|s| top.iter().any(|d| d == *s))
            .map(|s| (*s, s.to_string()))
            .collect()
    } else {
        vec![("train", String::new())]
    };
    let class_root = if has_splits {
        root.join(&split_dirs[0].1)
    } else {
        root.to_path_buf()
    };
    let classes = subdirs(&class_root)?;
    let mut listing = Listing::new("folder", classes.clone());
    for (split, dir) in &split_dirs {
        let base = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(dir)
        };
        let prefix = |p: &str| {
            if dir.is_empty() {
                p.to_string()
            } else {
                format!("{dir}/{p}")
            }
        };
        for class in subdirs(&base)? {
            let label = classes.iter().position(|c| *c == class);
            for rel in walk_files(root, &prefix(&class))? {
                match label {
                    Some(l) => listing.images.push(SourceImage::new(split, rel, l as i32)),
                    None => listing.skip(
                        rel,
                        split,
                        format!("unknown class {class:?} (no such folder in {})", split_dirs[0].0),
                    ),
                }
            }
        }
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            if entry.path().is_file() {
                listing.images.push(SourceImage::new(
                    split,
                    super::listing::rel_string(root, &entry.path()),
                    -1,
                ));
            }
        }
    }
    if has_splits {
        // Anything beside the split folders would otherwise vanish.
        for d in top.iter().filter(|d| !SPLITS.contains(&d.as_str())) {
            for rel in walk_files(root, d)? {
                listing.skip(rel, "none", "outside the train/val/test folders");
            }
        }
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if entry.path().is_file() {
                listing.skip(
                    super::listing::rel_string(root, &entry.path()),
                    "none",
                    "outside the train/val/test folders",
                );
            }
        }
    }
    Ok(listing)
}
