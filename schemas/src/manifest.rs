//! `manifest.json`: the description of one prepared dataset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub pipeline_version: String,
    /// Recipe name (`imagenette`, `cars`, ...).
    pub dataset: String,
    /// Adapter that read the layout (`imagenet`, `stanford_cars`, ...).
    pub adapter: String,
    /// Raw dataset root as given on the command line.
    pub source: String,
    /// Every setting that changes the bytes written, as resolved for this run.
    pub settings: serde_json::Value,
    pub class_names: Vec<String>,
    /// Segmentation datasets: the classes of the `mask` column's values, value i naming class
    /// i; any other value is the ignore label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask_classes: Vec<String>,
    /// Per split: image counts and per-class counts.
    pub splits: BTreeMap<String, SplitStats>,
    /// The split models are evaluated on (the recipe's `eval_split`); manifests written before
    /// it was recorded evaluate on `val`.
    #[serde(default)]
    pub eval_split: Option<String>,
    pub shards: Vec<ShardEntry>,
    /// Side tables (COCO annotations), relative file name -> sha256.
    #[serde(default)]
    pub side_tables: Vec<ShardEntry>,
    pub skipped: Vec<SkippedFile>,
    /// Seconds spent by the run(s) that wrote the shards.
    pub wall_time_s: f64,
    /// Pre-tokenized targets, one set per vocabulary.
    #[serde(default)]
    pub tokens: Vec<TokenSet>,
}

/// Token grids of every image under one vocabulary, in shards aligned with the image shards
/// (same ids, same order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSet {
    /// Vocabulary file, relative to the dataset folder.
    pub vocab: String,
    pub vocab_sha256: String,
    /// Folder of the token shards, relative to the dataset folder.
    pub dir: String,
    pub shards: Vec<TokenShard>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenShard {
    /// Relative to the token folder; equal to the image shard's name.
    pub file: String,
    /// sha256 of the image shard the tokens were computed from.
    pub image_sha256: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitStats {
    pub images: u64,
    pub skipped: u64,
    /// Label -> count (labels as strings so the JSON stays an object; `-1` = unlabeled).
    pub per_class: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name relative to the dataset folder.
    pub file: String,
    pub split: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// An input that did not become a row, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SkippedFile {
    pub path: String,
    pub split: String,
    pub reason: String,
}

/// Whether `rel`, joined to a folder, stays inside it: relative, non-empty, made of plain
/// names only (no `..`, no root, no drive prefix; not `.` either, which no writer produces).
pub fn stays_inside(rel: &str) -> bool {
    !rel.is_empty()
        && std::path::Path::new(rel)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

impl Manifest {
    /// The first path the manifest names that would leave the dataset folder, as (field, value):
    /// a hostile manifest must not make a reader open, or a writer replace, a file elsewhere.
    /// Split names are file-name parts too, so they are held to the same rule.
    pub fn escaping_path(&self) -> Option<(String, String)> {
        let files = self.shards.iter().enumerate().flat_map(|(i, s)| {
            [
                (format!("shards[{i}].file"), &s.file),
                (format!("shards[{i}].split"), &s.split),
            ]
        });
        let side = (self.side_tables.iter().enumerate()).map(|(i, s)| (format!("side_tables[{i}].file"), &s.file));
        let tokens = self.tokens.iter().enumerate().flat_map(|(i, t)| {
            let own = [
                (format!("tokens[{i}].vocab"), &t.vocab),
                (format!("tokens[{i}].dir"), &t.dir),
            ];
            let shards =
                (t.shards.iter().enumerate()).map(move |(j, s)| (format!("tokens[{i}].shards[{j}].file"), &s.file));
            own.into_iter().chain(shards)
        });
        let splits = self.splits.keys().map(|k| ("splits".to_string(), k));
        files
            .chain(side)
            .chain(tokens)
            .chain(splits)
            .find(|(_, v)| !stays_inside(v))
            .map(|(field, v)| (field, v.clone()))
    }

    /// Token sets still valid for the current image shards: every image shard has a token
    /// shard computed from exactly its bytes.
    pub fn valid_token_sets(&self) -> Vec<TokenSet> {
        self.tokens
            .iter()
            .filter(|t| {
                self.shards.len() == t.shards.len()
                    && self.shards.iter().all(|s| {
                        t.shards
                            .iter()
                            .any(|ts| ts.file == s.file && ts.image_sha256 == s.sha256)
                    })
            })
            .cloned()
            .collect()
    }

    /// The split models are evaluated on.
    pub fn eval_split(&self) -> &str {
        self.eval_split.as_deref().unwrap_or("val")
    }

    /// The splits that hold images, for messages about a missing one.
    pub fn split_names(&self) -> Vec<String> {
        self.splits
            .iter()
            .filter(|(_, s)| s.images > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn total_images(&self) -> u64 {
        self.splits.values().map(|s| s.images).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(shard: &str) -> Manifest {
        let entry = |file: &str| ShardEntry {
            file: file.into(),
            split: "train".into(),
            rows: 1,
            bytes: 1,
            sha256: String::new(),
        };
        Manifest {
            schema_version: 1,
            pipeline_version: String::new(),
            dataset: "d".into(),
            adapter: "folder".into(),
            source: "/anywhere/is/fine".into(),
            settings: serde_json::Value::Null,
            class_names: vec![],
            mask_classes: vec![],
            splits: BTreeMap::from([("train".to_string(), SplitStats::default())]),
            eval_split: None,
            shards: vec![entry("train-00000.parquet"), entry(shard)],
            side_tables: vec![],
            skipped: vec![],
            wall_time_s: 0.0,
            tokens: vec![],
        }
    }

    #[test]
    fn manifest_paths_must_stay_inside_the_dataset_folder() {
        for ok in ["train-00001.parquet", "sub/train-00001.parquet"] {
            assert_eq!(manifest(ok).escaping_path(), None, "{ok}");
        }
        for bad in ["/etc/passwd", "../other/train.parquet", "sub/../../x", "", "..", "./x"] {
            assert_eq!(
                manifest(bad).escaping_path(),
                Some(("shards[1].file".to_string(), bad.to_string())),
                "{bad}"
            );
        }
        let mut m = manifest("ok.parquet");
        m.splits.insert("../val".into(), SplitStats::default());
        assert_eq!(m.escaping_path(), Some(("splits".into(), "../val".into())));
        let mut m = manifest("ok.parquet");
        m.tokens.push(TokenSet {
            vocab: "v.safetensors".into(),
            vocab_sha256: String::new(),
            dir: "/tmp/elsewhere".into(),
            shards: vec![],
        });
        assert_eq!(
            m.escaping_path(),
            Some(("tokens[0].dir".into(), "/tmp/elsewhere".into()))
        );
    }
}
