//! One split of a prepared dataset in memory: its rows read from the Parquet shards the
//! manifest lists, as encoded bytes (a few tens of KB per image at the prepared size), with
//! optional pre-tokenized targets. Decoding happens per batch, in the loader.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use pipeline::shard::ShardReader;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// One image of a split.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub label: i32,
    pub bytes: Vec<u8>,
    /// The shard it came from, for error messages.
    pub shard: Arc<str>,
    /// Pre-tokenized grids of the canonical view and of its flip ([`ImageSet::attach_tokens`]).
    pub tokens: Option<Box<[Vec<u16>; 2]>>,
}

/// All rows of one split, in manifest order.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub dir: PathBuf,
    pub split: String,
    pub samples: Vec<Sample>,
    pub class_names: Vec<String>,
    /// Rows left out because their shard was damaged and they no longer decode, and one
    /// entry per damaged shard; written to the run folder's `skipped.jsonl`.
    pub skipped: Vec<Skipped>,
}

/// A row (or, with `row: None`, a whole shard's note) that a run left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub split: String,
    pub shard: String,
    /// Row number within the shard.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub row: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    pub reason: String,
}

impl ImageSet {
    /// Reads every shard of `split` listed in `<dir>/manifest.json`.
    ///
    /// Every shard is checked against the manifest first. One that cannot be opened or read
    /// (missing, truncated, not Parquet) is an error naming it, so a run stops before its
    /// first step rather than hours in. One whose sha256 differs (damaged after `prepare`)
    /// still loads, but each of its rows is decoded here and the ones that do not decode are
    /// left out and listed in [`ImageSet::skipped`] (the run folder's `skipped.jsonl`): a
    /// shard from `prepare` decodes by construction, so clean shards need no such pass.
    pub fn load(dir: &Path, split: &str) -> Result<Self> {
        let manifest = pipeline::prepare::load_manifest(dir)?;
        let shards: Vec<_> = manifest.shards.iter().filter(|s| s.split == split).collect();
        if shards.is_empty() {
            return Err(DataError::NoSplit {
                dir: dir.to_path_buf(),
                split: split.to_string(),
                available: manifest.splits.keys().cloned().collect(),
            }
            .into());
        }
        let bar = crate::progress::pass(
            &format!("loading {split}"),
            shards.iter().map(|s| s.rows).sum(),
            "images",
        );
        let per_shard: Vec<Result<(Vec<Sample>, Vec<Skipped>)>> = shards
            .par_iter()
            .map(|s| {
                let shard: Arc<str> = Arc::from(s.file.as_str());
                let path = dir.join(&s.file);
                let unreadable = |row: Option<u64>, reason: String| DataError::Unreadable {
                    path: path.clone(),
                    row,
                    reason,
                };
                let (bytes, sha) = pipeline::shard::file_sha256(&path).map_err(|e| unreadable(None, e.to_string()))?;
                let mut skipped = Vec::new();
                let damaged = sha != s.sha256;
                if damaged {
                    skipped.push(Skipped {
                        split: split.to_string(),
                        shard: s.file.clone(),
                        row: None,
                        id: None,
                        reason: format!(
                            "sha256 {sha} ({bytes} bytes) differs from the manifest's {} ({} bytes): damaged after `pipeline prepare` (which redoes it); its rows were decoded one by one",
                            s.sha256, s.bytes
                        ),
                    });
                }
                let reader = ShardReader::open(&path).map_err(|e| unreadable(None, e.to_string()))?;
                let mut samples = Vec::new();
                for (row, r) in reader.enumerate() {
                    let r = r.map_err(|e| unreadable(Some(row as u64), e.to_string()))?;
                    bar.inc(1);
                    if damaged {
                        if let Err(e) = pipeline::transcode::decode_upright(&r.image) {
                            skipped.push(Skipped {
                                split: split.to_string(),
                                shard: s.file.clone(),
                                row: Some(row as u64),
                                id: Some(r.id),
                                reason: format!("image bytes do not decode: {}", e.0),
                            });
                            continue;
                        }
                    }
                    samples.push(Sample {
                        id: r.id,
                        label: r.label,
                        bytes: r.image,
                        shard: shard.clone(),
                        tokens: None,
                    });
                }
                if (samples.len() + skipped.iter().filter(|k| k.row.is_some()).count()) as u64 != s.rows {
                    return Err(unreadable(
                        None,
                        format!("the manifest lists {} rows", s.rows),
                    )
                    .into());
                }
                Ok((samples, skipped))
            })
            .collect();
        bar.finish_and_clear();
        let mut samples = Vec::new();
        let mut skipped = Vec::new();
        for s in per_shard {
            let (rows, left_out) = s?;
            samples.extend(rows);
            skipped.extend(left_out);
        }
        if !skipped.is_empty() {
            // Every command that reads a split says so, `trainer eval` included; the training
            // loops also list the rows in the run folder.
            let damaged: std::collections::BTreeSet<&str> = skipped.iter().map(|s| s.shard.as_str()).collect();
            eprintln!(
                "warning: {} damaged {split} shard(s) in {} ({}): {} rows that no longer decode are left out",
                damaged.len(),
                dir.display(),
                damaged.into_iter().collect::<Vec<_>>().join(", "),
                skipped.iter().filter(|k| k.row.is_some()).count(),
            );
        }
        Ok(ImageSet {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            samples,
            class_names: manifest.class_names,
            skipped,
        })
    }

    /// Attaches the grids `pipeline tokenize` wrote with the vocabulary of sha256 `vocab_sha`.
    /// Token shards mirror image shards row by row; any disagreement is an error.
    pub fn attach_tokens(&mut self, vocab_sha: &str) -> Result<()> {
        let manifest = pipeline::prepare::load_manifest(&self.dir)?;
        let set = manifest
            .tokens
            .iter()
            .find(|t| t.vocab_sha256 == vocab_sha)
            .ok_or_else(|| DataError::NoTokens {
                dir: self.dir.clone(),
                vocab_sha: vocab_sha.to_string(),
            })?;
        let mut i = 0;
        for shard in manifest.shards.iter().filter(|s| s.split == self.split) {
            let path = self.dir.join(&set.dir).join(&shard.file);
            if !set
                .shards
                .iter()
                .any(|t| t.file == shard.file && t.image_sha256 == shard.sha256)
            {
                return Err(DataError::StaleTokens { path }.into());
            }
            // Rows left out of a damaged image shard keep their token rows: step over them.
            let left_out: std::collections::HashSet<&str> = self
                .skipped
                .iter()
                .filter(|k| k.shard == shard.file)
                .filter_map(|k| k.id.as_deref())
                .collect();
            for row in pipeline::vocab::tokenize::read_token_shard(&path)? {
                if left_out.contains(row.id.as_str()) {
                    continue;
                }
                let Some(s) = self.samples.get_mut(i) else { break };
                if s.id != row.id {
                    return Err(DataError::TokenRow {
                        path,
                        row: i,
                        expected: s.id.clone(),
                        found: row.id,
                    }
                    .into());
                }
                s.tokens = Some(Box::new([row.tokens, row.tokens_flip]));
                i += 1;
            }
        }
        Ok(())
    }

    /// `n` indices spread evenly over the set (manifest order is grouped by class, so a
    /// prefix would miss classes).
    pub fn spread(&self, n: usize) -> Vec<usize> {
        let len = self.samples.len();
        let n = n.min(len);
        (0..n).map(|i| i * len / n).collect()
    }

    /// Only the rows with a class label in `0..classes` (classification needs them; detection
    /// sets and folders with unsorted files have `-1`). Returns how many were dropped.
    pub fn keep_labeled(&mut self, classes: usize) -> usize {
        let before = self.samples.len();
        self.samples.retain(|s| s.label >= 0 && (s.label as usize) < classes);
        before - self.samples.len()
    }

    /// The first `n` samples (tests and quick runs).
    pub fn truncate(mut self, n: usize) -> Self {
        self.samples.truncate(n);
        self
    }

    pub fn decode(&self, i: usize) -> Result<RgbImage, DataError> {
        let s = &self.samples[i];
        pipeline::transcode::decode_upright(&s.bytes)
            .map(|(img, _)| img)
            .map_err(|e| DataError::Decode {
                shard: s.shard.to_string(),
                id: s.id.clone(),
                reason: e.0,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_keeps_labeled_rows_only() {
        let sample = |label| Sample {
            id: format!("{label}"),
            label,
            bytes: Vec::new(),
            shard: Arc::from("s.parquet"),
            tokens: None,
        };
        let mut set = ImageSet {
            dir: PathBuf::from("d"),
            split: "train".into(),
            samples: [0, -1, 2, 1, 3].into_iter().map(sample).collect(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            skipped: Vec::new(),
        };
        assert_eq!(set.keep_labeled(3), 2);
        let ids: Vec<&str> = set.samples.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["0", "2", "1"]);
    }
}
