//! What an adapter returns (the images its layout lists, the inputs it rules out, side tables)
//! and the layout readers adapters share: required metadata files, text lines, JSON, file
//! walks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, PipelineError, Result};
use schemas::SkippedFile;

/// One image as the dataset's metadata describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceImage {
    /// Stable row id: the path relative to the dataset root, with `/` separators.
    pub id: String,
    pub split: String,
    /// Index into the class names; -1 when unlabeled.
    pub label: i32,
    /// Relative to the dataset root.
    pub rel_path: String,
    pub bbox: Option<[i32; 4]>,
    pub coco_id: Option<i64>,
    pub domain: Option<String>,
    /// Segmentation map, relative to the dataset root (ADE20k).
    pub mask_rel_path: Option<String>,
    /// The image is row `n` of the Parquet file `rel_path` (the Hub layout), not a file.
    pub embedded_row: Option<u64>,
}

impl SourceImage {
    pub fn new(split: &str, rel_path: String, label: i32) -> Self {
        SourceImage {
            id: rel_path.clone(),
            split: split.to_string(),
            label,
            rel_path,
            bbox: None,
            coco_id: None,
            domain: None,
            mask_rel_path: None,
            embedded_row: None,
        }
    }
}

/// A table written beside the shards (COCO annotations), as a ready Arrow batch.
pub struct SideTable {
    pub file: String,
    pub batch: arrow_array::RecordBatch,
    pub metadata: BTreeMap<String, String>,
    /// COCO: `coco_id -> [width, height]` of the original images, the annotations' pixels;
    /// `prepare` rescales the table to the stored images with it (empty: nothing to rescale).
    pub original_sizes: BTreeMap<i64, [u32; 2]>,
}

/// What an adapter found.
pub struct Listing {
    pub adapter: &'static str,
    pub class_names: Vec<String>,
    /// Segmentation: the label maps' classes, value i naming class i (empty elsewhere).
    pub mask_classes: Vec<String>,
    pub images: Vec<SourceImage>,
    /// Inputs the metadata rules out before any decode: unknown class, unlisted file, ...
    pub skipped: Vec<SkippedFile>,
    pub side_tables: Vec<SideTable>,
}

impl Listing {
    pub fn new(adapter: &'static str, class_names: Vec<String>) -> Self {
        Listing {
            adapter,
            class_names,
            mask_classes: Vec::new(),
            images: Vec::new(),
            skipped: Vec::new(),
            side_tables: Vec::new(),
        }
    }

    pub fn skip(&mut self, path: impl Into<String>, split: &str, reason: impl Into<String>) {
        self.skipped.push(SkippedFile {
            path: path.into(),
            split: split.to_string(),
            reason: reason.into(),
        });
    }

    /// Files under `dirs` (relative to `root`) that no metadata entry claims become skips, so a
    /// stray or unlisted image is reported instead of silently dropped.
    pub fn skip_unlisted(&mut self, root: &Path, dirs: &[&str], split: &str, listed_in: &str) -> Result<()> {
        let claimed: BTreeSet<&str> = self
            .images
            .iter()
            .map(|i| i.rel_path.as_str())
            .chain(self.skipped.iter().map(|s| s.path.as_str()))
            .collect();
        let mut unlisted = Vec::new();
        for dir in dirs {
            for rel in walk_files(root, dir)? {
                if !claimed.contains(rel.as_str()) {
                    unlisted.push(rel);
                }
            }
        }
        let reason = format!("not listed in {listed_in}");
        for rel in unlisted {
            self.skip(rel, split, reason.clone());
        }
        Ok(())
    }
}

/// Options a recipe or the command line passes to an adapter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterOptions {
    /// ImageNet: `LOC_synset_mapping.txt` (default: `<root>/LOC_synset_mapping.txt`).
    pub synsets: Option<PathBuf>,
    /// ImageNet: `LOC_val_solution.csv` for a flat `val/` folder.
    pub val_solution: Option<PathBuf>,
    /// DomainNet: `clipart`, `painting`, `sketch`, `real`, `quickdraw`, `infograph`.
    pub domain: Option<String>,
    /// iNaturalist: 2018 or 2019.
    pub year: Option<u32>,
}

/// A metadata file that must exist, with a hint on where it comes from.
pub fn require(path: PathBuf, hint: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(PipelineError::MissingMetadata {
            path,
            hint: hint.to_string(),
        })
    }
}

/// Non-empty lines of a text file with their 1-based line numbers.
pub fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path).at(path)?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .filter(|(_, l)| !l.is_empty())
        .collect())
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let file = std::fs::File::open(path).at(path)?;
    serde_json::from_reader(std::io::BufReader::new(file)).map_err(|source| PipelineError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// All regular files under `root/dir`, as sorted root-relative paths with `/` separators.
/// A missing directory yields nothing.
pub fn walk_files(root: &Path, dir: &str) -> Result<Vec<String>> {
    let base = root.join(dir);
    if !base.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(&base).follow_links(true).sort_by_file_name() {
        let entry = entry.map_err(|e| PipelineError::Io {
            path: e.path().map(Path::to_path_buf).unwrap_or_else(|| base.clone()),
            source: e.into(),
        })?;
        if entry.file_type().is_file() {
            out.push(rel_string(root, entry.path()));
        }
    }
    Ok(out)
}

/// Sorted names of the sub-directories of `dir`.
pub fn subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        if entry.path().is_dir() {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

pub fn rel_string(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
