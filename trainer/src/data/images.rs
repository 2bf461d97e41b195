//! One split of a prepared dataset: its row index (id, label, where each row lies in the
//! Parquet shards the manifest lists, its encoded size) and, when the split fits the loader's
//! memory bound or `--cache ram` asks for it, its encoded bytes (a few tens of KB per image at
//! the prepared size), with optional pre-tokenized targets. A split kept on disk is read as it
//! goes: the training loader streams its row groups through a bounded shuffle buffer
//! ([`crate::data::shuffle`]), evaluation passes read one row group at a time. Decoding happens
//! per batch, in the loader.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use image::{GrayImage, RgbImage};
use pipeline::shard::ShardReader;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::shuffle::Group;
use crate::error::{DataError, Result};

/// Whether a split's encoded images are held in RAM (`--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    /// In RAM when the split's shards fit `--loader-memory-mb`, read as it goes otherwise.
    #[default]
    Auto,
    Ram,
    /// Always read from the shards as the epoch goes (bounded memory).
    None,
}

/// How a split is loaded, as resolved into a run's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadOptions {
    pub cache: Cache,
    /// Bound on the encoded image bytes the training loader holds (shuffle buffer, row group
    /// being read, row in hand), in MB. Also sizes the shuffle buffer in RAM, so the batches
    /// do not depend on `cache`.
    pub memory_mb: u64,
    /// Carry each row's label map with its image (semantic segmentation); rows without one
    /// are left out and listed as skipped.
    #[serde(default)]
    pub masks: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            cache: Cache::Auto,
            memory_mb: 1024,
            masks: false,
        }
    }
}

impl LoadOptions {
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mb * 1_000_000
    }
}

/// The loader's flags, shared by every command that reads a split.
#[derive(Debug, Clone, clap::Args)]
pub struct LoaderArgs {
    /// Encoded image bytes the training loader may hold, in MB (its shuffle buffer when the
    /// split is read from the shards; a split whose shards fit is cached in RAM).
    #[arg(long, default_value_t = 1024)]
    pub loader_memory_mb: u64,
    /// auto: cache the split in RAM when its shards fit --loader-memory-mb; ram; none: always
    /// read the shards as the epoch goes.
    #[arg(long, value_enum, default_value = "auto")]
    pub cache: Cache,
}

impl LoaderArgs {
    pub fn options(&self) -> std::result::Result<LoadOptions, crate::error::ConfigError> {
        if self.loader_memory_mb == 0 {
            return Err(crate::error::ConfigError::invalid(
                "loader-memory-mb",
                "0",
                "the loader needs room for at least one row group",
            ));
        }
        Ok(LoadOptions {
            cache: self.cache,
            memory_mb: self.loader_memory_mb,
            masks: false,
        })
    }
}

/// One image of a split.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub label: i32,
    /// The encoded image, when the split is cached in RAM.
    pub bytes: Option<Vec<u8>>,
    /// Encoded size in bytes.
    pub size: u32,
    /// Index of its shard in [`ImageSet::shards`].
    pub shard: u32,
    /// Its row group within the shard, and its row number in the shard.
    pub group: u32,
    pub row: u32,
    /// Pre-tokenized grids of the canonical view and of its flip ([`ImageSet::attach_tokens`]).
    pub tokens: Option<Box<[Vec<u16>; 2]>>,
}

/// The rows of one row group, read by an evaluation pass over a split kept on disk.
#[derive(Debug)]
struct CachedGroup {
    shard: u32,
    group: u32,
    first_row: u32,
    rows: Vec<Vec<u8>>,
}

/// The seed of [`ImageSet::hold_out`]'s hash: fixed, so every run of a comparison holds out
/// the same rows.
const HOLDOUT_SEED: u64 = 0x5e1ec7;

/// The rows of one split, in manifest order.
#[derive(Debug)]
pub struct ImageSet {
    pub dir: PathBuf,
    pub split: String,
    pub samples: Vec<Sample>,
    pub class_names: Vec<String>,
    /// Rows left out because their shard was damaged and they no longer decode, and one
    /// entry per damaged shard; written to the run folder's `skipped.jsonl`.
    pub skipped: Vec<Skipped>,
    /// The split's shard files, relative to `dir`.
    pub shards: Vec<String>,
    pub options: LoadOptions,
    /// Encoded bytes of the largest row group (all its rows).
    pub max_group_bytes: u64,
    /// The row group an evaluation pass read last (streamed splits only).
    last_group: Mutex<Option<CachedGroup>>,
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
    /// [`ImageSet::load_with`] with the default options (cached in RAM when it fits 1 GB).
    pub fn load(dir: &Path, split: &str) -> Result<Self> {
        Self::load_with(dir, split, &LoadOptions::default())
    }

    /// Reads the row index of every shard of `split` listed in `<dir>/manifest.json`, and
    /// their encoded images when the split is cached (`options`).
    ///
    /// Every shard is checked against the manifest first. One that cannot be opened or read
    /// (missing, truncated, not Parquet) is an error naming it, so a run stops before its
    /// first step rather than hours in. One whose sha256 differs (damaged after `prepare`)
    /// still loads, but each of its rows is decoded here and the ones that do not decode are
    /// left out and listed in [`ImageSet::skipped`] (the run folder's `skipped.jsonl`): a
    /// shard from `prepare` decodes by construction, so clean shards need no such pass.
    pub fn load_with(dir: &Path, split: &str, options: &LoadOptions) -> Result<Self> {
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
        let cached = match options.cache {
            Cache::Ram => true,
            Cache::None => false,
            Cache::Auto => shards.iter().map(|s| s.bytes).sum::<u64>() <= options.memory_bytes(),
        };
        let bar = crate::progress::pass(
            &format!("{} {split}", if cached { "loading" } else { "indexing" }),
            shards.iter().map(|s| s.rows).sum(),
            "images",
        );
        let per_shard: Vec<Result<ShardRows>> = shards
            .par_iter()
            .enumerate()
            .map(|(shard_index, s)| index_shard(dir, split, (shard_index, *s), (cached, options.masks), &bar))
            .collect();
        bar.finish_and_clear();
        let mut samples = Vec::new();
        let mut skipped = Vec::new();
        let mut max_group_bytes = 0;
        for s in per_shard {
            let (rows, left_out, group_bytes) = s?;
            samples.extend(rows);
            skipped.extend(left_out);
            max_group_bytes = max_group_bytes.max(group_bytes);
        }
        warn_damaged(dir, split, &skipped);
        Ok(ImageSet {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            samples,
            class_names: manifest.class_names,
            skipped,
            shards: shards.iter().map(|s| s.file.clone()).collect(),
            options: *options,
            max_group_bytes,
            last_group: Mutex::new(None),
        })
    }

    /// Whether the encoded images are in RAM.
    pub fn cached(&self) -> bool {
        self.samples.first().is_none_or(|s| s.bytes.is_some())
    }

    /// The runs of samples that share a row group, in sample order (what a streaming epoch
    /// reads; see [`crate::data::shuffle::epoch_plan`]).
    pub fn groups(&self) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        for (i, s) in self.samples.iter().enumerate() {
            let same = groups.last().is_some_and(|g| {
                let first = &self.samples[g.start];
                (first.shard, first.group) == (s.shard, s.group)
            });
            if !same {
                groups.push(Group {
                    start: i,
                    len: 0,
                    bytes: 0,
                });
            }
            let g = groups.last_mut().expect("pushed");
            g.len += 1;
            g.bytes += u64::from(s.size);
        }
        groups
    }

    /// Encoded sizes of the samples, in order.
    pub fn sizes(&self) -> Vec<u32> {
        self.samples.iter().map(|s| s.size).collect()
    }

    fn shard_path(&self, shard: u32) -> PathBuf {
        self.dir.join(&self.shards[shard as usize])
    }

    /// Reads row group `group` of shard `shard`: every row's encoded image. Checks the ids of
    /// the set's samples in it, so a shard rewritten since the run loaded it is an error, not
    /// silently other images.
    fn read_row_group(&self, shard: u32, group: u32) -> Result<CachedGroup, DataError> {
        let path = self.shard_path(shard);
        let unreadable = |row: Option<u64>, reason: String| DataError::Unreadable {
            path: path.clone(),
            row,
            reason,
        };
        let reader = ShardReader::open_row_group(&path, group as usize).map_err(|e| unreadable(None, e.to_string()))?;
        let first_row = reader.first_row as u32;
        let (mut ids, mut rows) = (Vec::new(), Vec::new());
        for r in reader {
            let r = r.map_err(|e| unreadable(None, e.to_string()))?;
            ids.push(r.id);
            rows.push(match (self.options.masks, r.mask) {
                (true, Some(mask)) => pack_row(&r.image, &mask),
                // A row without a label map is not in the set; its slot is never read.
                (true, None) => Vec::new(),
                (false, _) => r.image,
            });
        }
        let start = self.samples.partition_point(|s| (s.shard, s.group) < (shard, group));
        for s in self.samples[start..]
            .iter()
            .take_while(|s| (s.shard, s.group) == (shard, group))
        {
            let found = ids.get((s.row - first_row) as usize);
            if found != Some(&s.id) {
                return Err(unreadable(
                    Some(u64::from(s.row)),
                    format!(
                        "holds {found:?} where the run loaded {:?}: the shard changed since the run started",
                        s.id
                    ),
                ));
            }
        }
        Ok(CachedGroup {
            shard,
            group,
            first_row,
            rows,
        })
    }

    /// The encoded images of the samples of `g` (one of [`ImageSet::groups`]), read from
    /// their row group: what a streaming epoch puts into its buffer.
    pub fn read_group(&self, g: &Group) -> Result<Vec<Vec<u8>>, DataError> {
        let first = &self.samples[g.start];
        let mut read = self.read_row_group(first.shard, first.group)?;
        Ok(self.samples[g.start..g.start + g.len]
            .iter()
            .map(|s| std::mem::take(&mut read.rows[(s.row - read.first_row) as usize]))
            .collect())
    }

    /// The encoded images of the samples at `indices`: borrowed when cached, otherwise read
    /// a row group at a time (the last one is kept, so a pass in index order reads each
    /// group once).
    pub fn fetch(&self, indices: &[usize]) -> Result<Vec<Cow<'_, [u8]>>, DataError> {
        let mut last = self.last_group.lock().unwrap_or_else(|e| e.into_inner());
        indices
            .iter()
            .map(|&i| {
                let s = &self.samples[i];
                if let Some(b) = &s.bytes {
                    return Ok(Cow::Borrowed(b.as_slice()));
                }
                if last.as_ref().is_none_or(|g| (g.shard, g.group) != (s.shard, s.group)) {
                    // Drop the previous group before reading the next one.
                    *last = None;
                    *last = Some(self.read_row_group(s.shard, s.group)?);
                }
                let g = last.as_ref().expect("just read");
                Ok(Cow::Owned(g.rows[(s.row - g.first_row) as usize].clone()))
            })
            .collect()
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
            for row in pipeline::vocab::token_shards::read_token_shard(&path)? {
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

    /// Moves a class-stratified `fraction` of the samples (per class `round(fraction * n)`, at
    /// least one where a class has two, never its last) into a set of their own (of the same
    /// split and shards): the rows a run makes its choices on when its evaluation split is the
    /// test split. Deterministic: the same rows for every run and seed of a dataset.
    pub fn hold_out(&mut self, fraction: f64) -> ImageSet {
        let items: Vec<(i32, &str)> = self.samples.iter().map(|s| (s.label, s.id.as_str())).collect();
        let picked = pipeline::prepare::pick_per_class(&items, HOLDOUT_SEED, |n| {
            ((n as f64 * fraction).round() as usize).clamp(1.min(n - 1), n - 1)
        });
        let (mut held, mut kept) = (Vec::new(), Vec::new());
        for (s, p) in std::mem::take(&mut self.samples).into_iter().zip(picked) {
            if p {
                held.push(s)
            } else {
                kept.push(s)
            }
        }
        self.samples = kept;
        ImageSet {
            dir: self.dir.clone(),
            split: self.split.clone(),
            samples: held,
            class_names: self.class_names.clone(),
            skipped: Vec::new(),
            shards: self.shards.clone(),
            options: self.options,
            max_group_bytes: self.max_group_bytes,
            last_group: Mutex::new(None),
        }
    }

    /// The first `n` samples (tests and quick runs).
    pub fn truncate(mut self, n: usize) -> Self {
        self.samples.truncate(n);
        self
    }

    /// Sample `i`, decoded (one row at a time: passes over many use [`ImageSet::fetch`]).
    pub fn image(&self, i: usize) -> Result<RgbImage, DataError> {
        let bytes = self.fetch(&[i])?;
        self.decode(i, &bytes[0])
    }

    /// Decodes sample `i` from its encoded `bytes` (see [`ImageSet::fetch`]).
    pub fn decode(&self, i: usize, bytes: &[u8]) -> Result<RgbImage, DataError> {
        let bytes = match self.options.masks {
            true => unpack_row(bytes).map_err(|e| self.decode_error(i, e))?.0,
            false => bytes,
        };
        pipeline::transcode::decode_upright(bytes)
            .map(|(img, _)| img)
            .map_err(|e| self.decode_error(i, e.0))
    }

    /// Sample `i`'s label map from its encoded `bytes`, where the set carries them
    /// ([`LoadOptions::masks`]): an 8-bit one-channel PNG.
    pub fn decode_mask(&self, i: usize, bytes: &[u8]) -> Result<GrayImage, DataError> {
        if !self.options.masks {
            return Err(self.decode_error(i, "the split was loaded without its label maps".into()));
        }
        let (_, mask) = unpack_row(bytes).map_err(|e| self.decode_error(i, e))?;
        match image::load_from_memory(mask) {
            Ok(image::DynamicImage::ImageLuma8(m)) => Ok(m),
            Ok(other) => Err(self.decode_error(
                i,
                format!("a label map of {:?} pixels, not 8-bit labels", other.color()),
            )),
            Err(e) => Err(self.decode_error(i, format!("label map: {e}"))),
        }
    }

    /// A decode error naming sample `i`'s shard and id.
    pub fn decode_error(&self, i: usize, reason: String) -> DataError {
        DataError::Decode {
            shard: self.shards[self.samples[i].shard as usize].clone(),
            id: self.samples[i].id.clone(),
            reason,
        }
    }
}

/// A segmentation row as the loader carries it: the label map travels in one buffer with its
/// image (`[image length: u32 LE][image][label map]`), so the streaming loader's buffer, its
/// memory bound and the RAM cache count both without a second path through them.
fn pack_row(image: &[u8], mask: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(4 + image.len() + mask.len());
    row.extend((image.len() as u32).to_le_bytes());
    row.extend_from_slice(image);
    row.extend_from_slice(mask);
    row
}

/// The image and label map of a [`pack_row`] buffer.
fn unpack_row(row: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let Some((len, rest)) = row.split_first_chunk::<4>() else {
        return Err(format!("a {}-byte row holds no image and label map", row.len()));
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return Err(format!("an image of {len} bytes in a {}-byte row", row.len()));
    }
    Ok(rest.split_at(len))
}

/// One shard's rows, the rows left out and its largest row group's encoded bytes.
type ShardRows = (Vec<Sample>, Vec<Skipped>, u64);

/// Indexes shard `s` (number `shard_index` of the split), keeping its encoded images when
/// `cached`. A shard whose sha256 differs from the manifest's has each row decoded, and the
/// rows that do not decode are left out (listed as skipped).
fn index_shard(
    dir: &Path,
    split: &str,
    (shard_index, s): (usize, &schemas::ShardEntry),
    (cached, masks): (bool, bool),
    bar: &indicatif::ProgressBar,
) -> Result<ShardRows> {
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
    // Row group boundaries, so a streaming reader can fetch a row's group alone.
    let group_rows = ShardReader::row_group_rows(&path).map_err(|e| unreadable(None, e.to_string()))?;
    let mut group_ends = group_rows.iter().scan(0u64, |end, &n| {
        *end += n;
        Some(*end)
    });
    let mut group_end = group_ends.next().unwrap_or(0);
    let (mut group, mut group_bytes, mut max_group_bytes) = (0u32, 0u64, 0u64);
    let reader = ShardReader::open(&path).map_err(|e| unreadable(None, e.to_string()))?;
    let mut samples = Vec::new();
    for (row, r) in reader.enumerate() {
        let r = r.map_err(|e| unreadable(Some(row as u64), e.to_string()))?;
        bar.inc(1);
        while row as u64 >= group_end {
            max_group_bytes = max_group_bytes.max(group_bytes);
            (group, group_bytes) = (group + 1, 0);
            group_end = group_ends.next().unwrap_or(u64::MAX);
        }
        let image = match (masks, &r.mask) {
            (false, _) => r.image,
            (true, Some(mask)) => pack_row(&r.image, mask),
            (true, None) => {
                skipped.push(Skipped {
                    split: split.to_string(),
                    shard: s.file.clone(),
                    row: Some(row as u64),
                    id: Some(r.id),
                    reason: "no label map (the mask column is null)".into(),
                });
                continue;
            }
        };
        group_bytes += image.len() as u64;
        if damaged {
            let encoded = if masks {
                unpack_row(&image).map(|p| p.0).unwrap_or(&[])
            } else {
                &image
            };
            if let Err(e) = pipeline::transcode::decode_upright(encoded) {
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
            size: image.len() as u32,
            bytes: cached.then_some(image),
            shard: shard_index as u32,
            group,
            row: row as u32,
            tokens: None,
        });
    }
    max_group_bytes = max_group_bytes.max(group_bytes);
    if (samples.len() + skipped.iter().filter(|k| k.row.is_some()).count()) as u64 != s.rows {
        return Err(unreadable(None, format!("the manifest lists {} rows", s.rows)).into());
    }
    Ok((samples, skipped, max_group_bytes))
}

/// Says on stderr which shards of `split` were damaged and how many rows were left out
/// (every command that reads a split; the training loops also list them in the run folder).
fn warn_damaged(dir: &Path, split: &str, skipped: &[Skipped]) {
    if !skipped.is_empty() {
        let damaged: std::collections::BTreeSet<&str> = skipped.iter().map(|s| s.shard.as_str()).collect();
        eprintln!(
            "warning: {} damaged {split} shard(s) in {} ({}): {} rows that no longer decode are left out",
            damaged.len(),
            dir.display(),
            damaged.into_iter().collect::<Vec<_>>().join(", "),
            skipped.iter().filter(|k| k.row.is_some()).count(),
        );
    }
}

#[cfg(test)]
/// Small prepared splits for the data layer's unit tests: real JPEGs (noise of varied
/// detail, so sizes differ) in shards cut into small row groups, with their manifest.
pub(crate) mod fixture {
    use std::path::Path;

    use image::{codecs::jpeg::JpegEncoder, RgbImage};
    use pipeline::shard::{Row, ShardWriter};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use schemas::manifest::{Manifest, ShardEntry, SplitStats};
    use schemas::shard::ShardMetadata;

    /// Writes `rows` train images (labels `i % 3`) in `shards` shards of row groups of about
    /// `row_group_bytes`, and `manifest.json`.
    pub fn write_split(dir: &Path, rows: usize, shards: usize, row_group_bytes: usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(rows as u64);
        let meta = ShardMetadata {
            schema_version: schemas::SCHEMA_VERSION,
            dataset: "t".into(),
            split: "train".into(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
        };
        let mut entries = Vec::new();
        let per = rows.div_ceil(shards);
        for k in 0..shards {
            let file = format!("train-{k:05}-of-{shards:05}.parquet");
            let mut w = ShardWriter::create(&dir.join(&file), &meta, row_group_bytes).unwrap();
            let batch: Vec<Row> = (k * per..((k + 1) * per).min(rows))
                .map(|i| {
                    let side = rng.random_range(16..40u32);
                    let img = RgbImage::from_fn(side, side, |_, _| image::Rgb(rng.random()));
                    let mut image = Vec::new();
                    JpegEncoder::new_with_quality(&mut image, 90)
                        .encode_image(&img)
                        .unwrap();
                    Row {
                        id: format!("img{i:04}"),
                        split: "train".into(),
                        label: (i % 3) as i32,
                        image,
                        path: format!("{i}.jpg"),
                        width: side as i32,
                        height: side as i32,
                        bbox: None,
                        coco_id: None,
                        domain: None,
                        mask: None,
                        mask_path: None,
                    }
                })
                .collect();
            // The writer closes a row group between writes, once it holds row_group_bytes.
            for chunk in batch.chunks(4) {
                w.write(chunk).unwrap();
            }
            let (n, bytes, sha256) = w.finish().unwrap();
            entries.push(ShardEntry {
                file,
                split: "train".into(),
                rows: n,
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            schema_version: schemas::SCHEMA_VERSION,
            pipeline_version: "test".into(),
            dataset: "t".into(),
            adapter: "folder".into(),
            source: "memory".into(),
            settings: serde_json::json!({}),
            class_names: meta.class_names.clone(),
            mask_classes: Vec::new(),
            splits: [(
                "train".to_string(),
                SplitStats {
                    images: rows as u64,
                    ..Default::default()
                },
            )]
            .into(),
            eval_split: None,
            shards: entries,
            side_tables: Vec::new(),
            skipped: Vec::new(),
            wall_time_s: 0.0,
            tokens: Vec::new(),
        };
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
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
            bytes: None,
            size: 0,
            shard: 0,
            group: 0,
            row: 0,
            tokens: None,
        };
        let mut set = ImageSet {
            dir: PathBuf::from("d"),
            split: "train".into(),
            samples: [0, -1, 2, 1, 3].into_iter().map(sample).collect(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            skipped: Vec::new(),
            shards: vec!["s.parquet".into()],
            options: LoadOptions::default(),
            max_group_bytes: 0,
            last_group: Mutex::new(None),
        };
        assert_eq!(set.keep_labeled(3), 2);
        let ids: Vec<&str> = set.samples.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["0", "2", "1"]);
    }

    #[test]
    fn held_out_rows_are_stratified_disjoint_and_the_same_every_time() {
        let dir = tempfile::tempdir().unwrap();
        fixture::write_split(dir.path(), 120, 2, 8_000);
        let mut train = ImageSet::load(dir.path(), "train").unwrap();
        let held = train.hold_out(0.1);
        // 40 images per class: 4 of each held out, 36 left to train on.
        for c in 0..3 {
            assert_eq!(held.samples.iter().filter(|s| s.label == c).count(), 4);
            assert_eq!(train.samples.iter().filter(|s| s.label == c).count(), 36);
        }
        assert!(held.samples.iter().all(|h| train.samples.iter().all(|t| t.id != h.id)));
        // The held-out rows still read: they keep their shard positions.
        let bytes = held.fetch(&[0]).unwrap();
        assert!(held.decode(0, &bytes[0]).is_ok());
        let mut again = ImageSet::load(dir.path(), "train").unwrap();
        let ids = |s: &ImageSet| -> Vec<String> { s.samples.iter().map(|x| x.id.clone()).collect() };
        assert_eq!(ids(&again.hold_out(0.1)), ids(&held));
        // Never a class's last image.
        let mut tiny = ImageSet::load(dir.path(), "train").unwrap().truncate(4);
        tiny.hold_out(0.5);
        assert!(
            (0..3).all(|c| tiny.samples.iter().any(|s| s.label == c)),
            "every class keeps a row"
        );
    }

    #[test]
    fn a_split_on_disk_reads_the_same_bytes_as_one_in_ram() {
        let dir = tempfile::tempdir().unwrap();
        fixture::write_split(dir.path(), 120, 3, 8_000);
        let ram = ImageSet::load_with(
            dir.path(),
            "train",
            &LoadOptions {
                cache: Cache::Ram,
                memory_mb: 1,
                masks: false,
            },
        )
        .unwrap();
        let disk = ImageSet::load_with(
            dir.path(),
            "train",
            &LoadOptions {
                cache: Cache::None,
                memory_mb: 1,
                masks: false,
            },
        )
        .unwrap();
        assert!(ram.cached() && !disk.cached());
        // Auto caches a split whose shards fit the bound.
        assert!(ImageSet::load(dir.path(), "train").unwrap().cached());
        let groups = disk.groups();
        assert!(groups.len() > 6, "small row groups: {}", groups.len());
        assert_eq!(groups.iter().map(|g| g.len).sum::<usize>(), 120);
        assert_eq!(disk.sizes(), ram.sizes());
        assert!(disk.max_group_bytes >= groups.iter().map(|g| g.bytes).max().unwrap());
        let all: Vec<usize> = (0..120).collect();
        let (a, b) = (ram.fetch(&all).unwrap(), disk.fetch(&all).unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| x == y));
        for g in &groups {
            let read = disk.read_group(g).unwrap();
            assert_eq!(read.len(), g.len);
            assert!(read
                .iter()
                .enumerate()
                .all(|(k, r)| r.as_slice() == a[g.start + k].as_ref()));
        }
        // Rows left out of the set are skipped inside their group, and the rest still match.
        let mut labeled = ImageSet::load_with(dir.path(), "train", &disk.options).unwrap();
        labeled.samples.retain(|s| s.label != 1);
        let picks: Vec<usize> = (0..labeled.samples.len()).step_by(3).collect();
        for (k, bytes) in picks.iter().zip(labeled.fetch(&picks).unwrap()) {
            let id = &labeled.samples[*k].id;
            let i = ram.samples.iter().position(|s| &s.id == id).unwrap();
            assert_eq!(bytes.as_ref(), a[i].as_ref());
        }
        // A shard rewritten under a running set is an error naming it, not other images.
        let running = ImageSet::load_with(dir.path(), "train", &disk.options).unwrap();
        fixture::write_split(dir.path(), 121, 3, 8_000);
        let err = running.fetch(&[119]).unwrap_err().to_string();
        assert!(
            err.contains(&running.shards[2]) && err.contains("the shard changed"),
            "{err}"
        );
    }
}
