//! ImageNet (ILSVRC-2012 CLS-LOC) layout, also Imagenette and other ImageNet subsets:
//! `train/<wnid>/*.JPEG`; `val/` either in class folders or flat with `LOC_val_solution.csv`;
//! class names from `LOC_synset_mapping.txt`; an optional unlabeled `test/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::listing::{read_lines, require, subdirs, walk_files, AdapterOptions, Listing, SourceImage};
use crate::error::{PipelineError, Result};

const SYNSETS: &str = "LOC_synset_mapping.txt";
const VAL_SOLUTION: &str = "LOC_val_solution.csv";

/// `n01440764 tench, Tinca tinca` -> (wnid, name) in file order.
pub fn read_synsets(path: &Path) -> Result<Vec<(String, String)>> {
    read_lines(path)?
        .into_iter()
        .map(|(line, text)| match text.split_once(' ') {
            Some((wnid, name)) if wnid.starts_with('n') => Ok((wnid.to_string(), name.trim().to_string())),
            _ => Err(PipelineError::BadLine {
                path: path.to_path_buf(),
                line,
                message: "expected '<wnid> <name>'".into(),
                text,
            }),
        })
        .collect()
}

/// Resolves the data root: the plain layout, or the Kaggle `ILSVRC/Data/CLS-LOC` nesting.
fn data_root(root: &Path) -> PathBuf {
    let nested = root.join("ILSVRC/Data/CLS-LOC");
    if nested.join("train").is_dir() {
        nested
    } else {
        root.to_path_buf()
    }
}

pub fn list(root: &Path, opts: &AdapterOptions) -> Result<Listing> {
    let data = data_root(root);
    let train_dir = data.join("train");
    if !train_dir.is_dir() {
        return Err(PipelineError::MissingMetadata {
            path: train_dir,
            hint: "ImageNet layout needs train/<wnid>/ class folders".into(),
        });
    }
    let synsets_path = opts.synsets.clone().unwrap_or_else(|| root.join(SYNSETS));
    let names: BTreeMap<String, String> = if opts.synsets.is_some() || synsets_path.is_file() {
        read_synsets(&require(
            synsets_path.clone(),
            "ImageNet class names (LOC_synset_mapping.txt)",
        )?)?
        .into_iter()
        .collect()
    } else {
        BTreeMap::new()
    };
    let synsets_name = synsets_path.display().to_string();
    // Classes are the train folders: all 1000 for ImageNet, the subset for Imagenette. Sorted
    // wnids give ImageNet's standard label order.
    let wnids: Vec<String> = subdirs(&train_dir)?
        .into_iter()
        .filter(|w| names.is_empty() || names.contains_key(w))
        .collect();
    let class_names: Vec<String> = wnids
        .iter()
        .map(|w| names.get(w).cloned().unwrap_or_else(|| w.clone()))
        .collect();
    let label_of: BTreeMap<&str, i32> = wnids.iter().enumerate().map(|(i, w)| (w.as_str(), i as i32)).collect();
    let mut listing = Listing::new("imagenet", class_names);
    let prefix = super::listing::rel_string(root, &data);
    let rel = |p: &str| {
        if prefix.is_empty() {
            p.to_string()
        } else {
            format!("{prefix}/{p}")
        }
    };

    for wnid in subdirs(&train_dir)? {
        let files = walk_files(&data, &format!("train/{wnid}"))?;
        match label_of.get(wnid.as_str()) {
            Some(&label) => listing
                .images
                .extend(files.into_iter().map(|f| SourceImage::new("train", rel(&f), label))),
            None => {
                for f in files {
                    listing.skip(
                        rel(&f),
                        "train",
                        format!("unknown class {wnid:?} (not in {synsets_name})"),
                    );
                }
            }
        }
    }

    let val_dir = data.join("val");
    if val_dir.is_dir() {
        let class_dirs = subdirs(&val_dir)?;
        if !class_dirs.is_empty() {
            for wnid in class_dirs {
                for f in walk_files(&data, &format!("val/{wnid}"))? {
                    match label_of.get(wnid.as_str()) {
                        Some(&label) => listing.images.push(SourceImage::new("val", rel(&f), label)),
                        None => listing.skip(
                            rel(&f),
                            "val",
                            format!("unknown class {wnid:?} (no train/{wnid} folder)"),
                        ),
                    }
                }
            }
        } else {
            list_flat_val(root, &data, opts, &label_of, &mut listing, &rel)?;
        }
    }
    for f in walk_files(&data, "test")? {
        listing.images.push(SourceImage::new("test", rel(&f), -1));
    }
    Ok(listing)
}

/// Flat `val/*.JPEG` labeled by `LOC_val_solution.csv` (`ImageId,PredictionString`, where the
/// prediction string starts with the wnid).
fn list_flat_val(
    root: &Path,
    data: &Path,
    opts: &AdapterOptions,
    label_of: &BTreeMap<&str, i32>,
    listing: &mut Listing,
    rel: &dyn Fn(&str) -> String,
) -> Result<()> {
    let csv_path = opts.val_solution.clone().unwrap_or_else(|| {
        [root.join(VAL_SOLUTION), data.join(VAL_SOLUTION)]
            .into_iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| root.join(VAL_SOLUTION))
    });
    let csv_path = require(csv_path, "a flat val/ folder needs LOC_val_solution.csv for its labels")?;
    let mut reader = csv::Reader::from_path(&csv_path).map_err(|source| PipelineError::Csv {
        path: csv_path.clone(),
        source,
    })?;
    let mut wnid_of = BTreeMap::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|source| PipelineError::Csv {
            path: csv_path.clone(),
            source,
        })?;
        let line = i + 2;
        let (Some(image_id), Some(pred)) = (row.get(0), row.get(1)) else {
            return Err(PipelineError::BadLine {
                path: csv_path.clone(),
                line,
                message: "expected ImageId,PredictionString".into(),
                text: row.iter().collect::<Vec<_>>().join(","),
            });
        };
        let wnid = pred.split_whitespace().next().unwrap_or_default().to_string();
        wnid_of.insert(image_id.to_string(), wnid);
    }
    let csv_name = csv_path.display().to_string();
    let mut seen = std::collections::BTreeSet::new();
    for f in walk_files(data, "val")? {
        let stem = Path::new(&f)
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        seen.insert(stem.clone());
        match wnid_of.get(&stem) {
            None => listing.skip(rel(&f), "val", format!("no label for {stem:?} in {csv_name}")),
            Some(wnid) => match label_of.get(wnid.as_str()) {
                Some(&label) => listing.images.push(SourceImage::new("val", rel(&f), label)),
                None => listing.skip(rel(&f), "val", format!("unknown class {wnid:?} in {csv_name}")),
            },
        }
    }
    for id in wnid_of.keys().filter(|id| !seen.contains(*id)) {
        listing.skip(
            rel(&format!("val/{id}.JPEG")),
            "val",
            format!("listed in {csv_name} but the image is missing"),
        );
    }
    Ok(())
}
