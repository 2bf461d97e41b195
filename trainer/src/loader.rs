//! Training data: the rows of one split of a prepared dataset, read from its Parquet shards
//! into RAM as encoded bytes (a few tens of KB per image at the prepared size), decoded and
//! augmented by a pool of threads a few batches ahead of the device.
//!
//! The order is a pure function of (seed, epoch): batch `i` of the run is batch `i % per_epoch`
//! of epoch `i / per_epoch`, so a resumed run starts exactly where the checkpoint stopped.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use image::RgbImage;
use pipeline::shard::ShardReader;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::augment::{eval_view, random_erase, to_chw, train_view, AugmentConfig};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    #[error("{dir}: the manifest lists no {split:?} shards (splits: {available:?})")]
    NoSplit {
        dir: PathBuf,
        split: String,
        available: Vec<String>,
    },
    #[error("{shard}: row {id:?} does not decode: {reason}")]
    Decode { shard: String, id: String, reason: String },
    #[error("{dir}: no pre-tokenized targets for the vocabulary with sha256 {vocab_sha} (run `pipeline tokenize`)")]
    NoTokens { dir: PathBuf, vocab_sha: String },
    #[error(
        "{path}: token shard missing or computed from another version of its image shard (rerun `pipeline tokenize`)"
    )]
    StaleTokens { path: PathBuf },
    #[error("{path}: row {row} has id {found:?}, the image shard has {expected:?}")]
    TokenRow {
        path: PathBuf,
        row: usize,
        expected: String,
        found: String,
    },
    #[error("{dir}: split {split:?} has {rows} images, fewer than one batch of {batch}")]
    TooSmall {
        dir: PathBuf,
        split: String,
        rows: usize,
        batch: usize,
    },
}

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
}

impl ImageSet {
    /// Reads every shard of `split` listed in `<dir>/manifest.json`.
    pub fn load(dir: &Path, split: &str) -> Result<Self, DataError> {
        let manifest = pipeline::prepare::load_manifest(dir)?;
        let shards: Vec<_> = manifest.shards.iter().filter(|s| s.split == split).collect();
        if shards.is_empty() {
            return Err(DataError::NoSplit {
                dir: dir.to_path_buf(),
                split: split.to_string(),
                available: manifest.splits.keys().cloned().collect(),
            });
        }
        let per_shard: Vec<Result<Vec<Sample>, DataError>> = shards
            .par_iter()
            .map(|s| {
                let shard: Arc<str> = Arc::from(s.file.as_str());
                ShardReader::open(&dir.join(&s.file))?
                    .map(|row| {
                        let row = row?;
                        Ok(Sample {
                            id: row.id,
                            label: row.label,
                            bytes: row.image,
                            shard: shard.clone(),
                            tokens: None,
                        })
                    })
                    .collect()
            })
            .collect();
        let mut samples = Vec::new();
        for s in per_shard {
            samples.extend(s?);
        }
        Ok(ImageSet {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            samples,
            class_names: manifest.class_names,
        })
    }

    /// Attaches the grids `pipeline tokenize` wrote with the vocabulary of sha256 `vocab_sha`.
    /// Token shards mirror image shards row by row; any disagreement is an error.
    pub fn attach_tokens(&mut self, vocab_sha: &str) -> Result<(), DataError> {
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
                return Err(DataError::StaleTokens { path });
            }
            for row in pipeline::tokenize::read_token_shard(&path)? {
                let Some(s) = self.samples.get_mut(i) else { break };
                if s.id != row.id {
                    return Err(DataError::TokenRow {
                        path,
                        row: i,
                        expected: s.id.clone(),
                        found: row.id,
                    });
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

/// A batch on the host: normalized CHW views and labels.
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// Position of the batch in the run (0-based over all epochs).
    pub index: u64,
    pub epoch: u64,
    /// `[batch, 3, size, size]` flattened.
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// `[batch, grid²]` pre-tokenized targets, when the set has them attached.
    pub tokens: Option<Vec<i64>>,
    pub size: usize,
}

impl HostBatch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The sample order of an epoch. With `repeats` > 1 (repeated augmentation), `n / repeats`
/// images are drawn and each appears `repeats` times, spread over the epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, repeats: u32) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, epoch, u64::MAX));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    if repeats > 1 {
        let r = repeats as usize;
        order.truncate(n.div_ceil(r));
        let mut repeated: Vec<usize> = order.iter().flat_map(|&i| std::iter::repeat_n(i, r)).collect();
        repeated.shuffle(&mut rng);
        repeated.truncate(n);
        order = repeated;
    }
    order
}

/// A well-spread seed for (seed, a, b) (splitmix64 finalizer over a simple combination).
pub fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        .wrapping_add(a.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(b.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Builds batch `index` of a run: decode and augment its samples in parallel.
pub fn make_batch(
    set: &ImageSet,
    aug: &AugmentConfig,
    batch: usize,
    seed: u64,
    index: u64,
) -> Result<HostBatch, DataError> {
    let epoch = index / (set.samples.len() / batch) as u64;
    batch_in_order(
        set,
        aug,
        batch,
        seed,
        index,
        &epoch_order(set.samples.len(), seed, epoch, aug.repeats),
    )
}

/// [`make_batch`] with the epoch's order already drawn (the loader keeps it for the epoch).
fn batch_in_order(
    set: &ImageSet,
    aug: &AugmentConfig,
    batch: usize,
    seed: u64,
    index: u64,
    order: &[usize],
) -> Result<HostBatch, DataError> {
    let per_epoch = (set.samples.len() / batch) as u64;
    let epoch = index / per_epoch;
    let j = (index % per_epoch) as usize;
    let picks = &order[j * batch..(j + 1) * batch];
    type View = (Vec<f32>, i64, Option<Vec<i64>>);
    let n = set.samples.len();
    let views: Vec<Result<View, DataError>> = picks
        .par_iter()
        .enumerate()
        .map(|(k, &i)| {
            let img = set.decode(i)?;
            // Repeated copies of an image need their own views: seed by position then.
            let view_seed = if aug.repeats > 1 {
                mix(seed, epoch, (n + j * batch + k) as u64)
            } else {
                mix(seed, epoch, i as u64)
            };
            let mut rng = ChaCha8Rng::seed_from_u64(view_seed);
            let (view, flipped) = train_view(&img, aug, &mut rng);
            let mut chw = Vec::new();
            to_chw(&view, &mut chw);
            random_erase(&mut chw, aug.size as usize, aug.erase_prob, &mut rng);
            let s = &set.samples[i];
            let tokens = s
                .tokens
                .as_ref()
                .map(|t| t[flipped as usize].iter().map(|&v| v as i64).collect());
            Ok((chw, s.label as i64, tokens))
        })
        .collect();
    let mut images = Vec::with_capacity(batch * 3 * (aug.size * aug.size) as usize);
    let mut labels = Vec::with_capacity(batch);
    let mut tokens: Option<Vec<i64>> = None;
    for v in views {
        let (chw, label, t) = v?;
        images.extend(chw);
        labels.push(label);
        if let Some(t) = t {
            tokens.get_or_insert_with(Vec::new).extend(t);
        }
    }
    Ok(HostBatch {
        index,
        epoch,
        images,
        labels,
        tokens,
        size: aug.size as usize,
    })
}

/// Eval views (resize + center crop) of the samples at `indices`, for k-NN / probes / eval.
pub fn eval_batch(set: &ImageSet, indices: &[usize], size: u32, crop_ratio: f64) -> Result<HostBatch, DataError> {
    let views: Vec<Result<(Vec<f32>, i64), DataError>> = indices
        .par_iter()
        .map(|&i| {
            let view = eval_view(&set.decode(i)?, size, crop_ratio);
            let mut chw = Vec::new();
            to_chw(&view, &mut chw);
            Ok((chw, set.samples[i].label as i64))
        })
        .collect();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for v in views {
        let (chw, label) = v?;
        images.extend(chw);
        labels.push(label);
    }
    Ok(HostBatch {
        index: indices.first().copied().unwrap_or(0) as u64,
        epoch: 0,
        images,
        labels,
        tokens: None,
        size: size as usize,
    })
}

/// Batches `start..` prepared by a background thread, `prefetch` ahead of the consumer.
pub struct Loader {
    rx: Receiver<Result<HostBatch, DataError>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    pub fn spawn(
        set: Arc<ImageSet>,
        aug: AugmentConfig,
        batch: usize,
        seed: u64,
        start: u64,
        prefetch: usize,
    ) -> Result<Self, DataError> {
        if set.samples.len() < batch {
            return Err(DataError::TooSmall {
                dir: set.dir.clone(),
                split: set.split.clone(),
                rows: set.samples.len(),
                batch,
            });
        }
        let (tx, rx) = sync_channel(prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                let per_epoch = (set.samples.len() / batch) as u64;
                let mut order: Option<(u64, Vec<usize>)> = None;
                for index in start.. {
                    let epoch = index / per_epoch;
                    if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                        order = Some((epoch, epoch_order(set.samples.len(), seed, epoch, aug.repeats)));
                    }
                    let b = batch_in_order(&set, &aug, batch, seed, index, &order.as_ref().unwrap().1);
                    let failed = b.is_err();
                    if tx.send(b).is_err() || failed {
                        break;
                    }
                }
            })
            .expect("spawn loader thread");
        Ok(Loader {
            rx,
            handle: Some(handle),
        })
    }

    /// The next batch (blocks until the loader has it).
    pub fn next_batch(&mut self) -> Result<HostBatch, DataError> {
        self.rx.recv().expect("loader thread ended without an error")
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the sender, then wait for it so no decode outlives the run.
        let (_, dummy) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, dummy));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
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
        };
        assert_eq!(set.keep_labeled(3), 2);
        let ids: Vec<&str> = set.samples.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["0", "2", "1"]);
    }

    #[test]
    fn epoch_orders_are_permutations_that_differ() {
        let a = epoch_order(100, 1, 0, 1);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(a, epoch_order(100, 1, 1, 1));
        assert_eq!(a, epoch_order(100, 1, 0, 1));
        // Repeated augmentation: 34 images, three times each, cut to 100 positions.
        let r = epoch_order(100, 1, 0, 3);
        assert_eq!(r.len(), 100);
        let mut counts = std::collections::HashMap::new();
        r.iter().for_each(|&i| *counts.entry(i).or_insert(0) += 1);
        // The two cut positions take one or two images below three copies.
        assert!((33..=34).contains(&counts.len()));
        assert!(counts.values().all(|&c| (1..=3).contains(&c)));
        assert!(counts.values().filter(|&&c| c == 3).count() >= 32);
    }
}
