//! `pipeline prepare`: list a dataset, plan its shards, transcode every image in parallel into
//! Parquet, and write the manifest.
//!
//! The plan is a pure function of the listing and the settings, so a rerun or another worker
//! of a job array computes the same shards. Each finished shard leaves a part record
//! (`.parts/<shard>.json`, with the plan's hash and the file's sha256); a rerun keeps every
//! shard whose record and checksum still match and redoes the rest. `merge` turns the part
//! records into `manifest.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::adapters::{self, AdapterOptions, Listing, SourceImage};
use crate::error::{IoContext, PipelineError, Result};
use crate::interrupt;
use crate::lock::{FolderLock, LOCK_FILE};
use crate::shard::{file_sha256, write_atomic, write_table, Row, ShardWriter};
use crate::source::read_source;
use crate::transcode::{transcode, transcode_mask, TranscodeSettings};
use schemas::manifest::MANIFEST_FILE;
use schemas::{Manifest, ShardEntry, ShardMetadata, SkippedFile, SplitStats, SCHEMA_VERSION};

pub const CONFIG_FILE: &str = "prepare.json";
const PARTS_DIR: &str = ".parts";
/// Images decoded together; bounds memory to a few of them per core.
const BATCH: usize = 64;

/// A deterministic class-balanced subset of the train split (ImageNet 1% / 10% / ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    /// Share of each class's train images to keep, in (0, 1].
    pub fraction: f64,
    pub seed: u64,
}

/// A held-out evaluation split for layouts that have none (a `folder` dataset without split
/// folders): each labeled train image goes to it when a seeded hash of its id falls below
/// `fraction`. Every class keeps about `fraction` of its images there, and adding files to the
/// folder never moves an existing file between splits (each file's draw is its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holdout {
    /// Share of each class's labeled images held out, in (0, 1).
    pub fraction: f64,
    pub seed: u64,
}

fn default_eval_split() -> String {
    "val".into()
}

/// Everything `prepare` needs, resolved and validated; written to `<out>/prepare.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareConfig {
    pub dataset: String,
    pub adapter: String,
    pub source: PathBuf,
    pub out_dir: PathBuf,
    pub options: AdapterOptions,
    pub transcode: TranscodeSettings,
    pub subset: Option<Subset>,
    /// The split models are evaluated on (the recipe's), recorded in the manifest.
    #[serde(default = "default_eval_split")]
    pub eval_split: String,
    /// Held out as `eval_split` when the layout has no images in it.
    #[serde(default)]
    pub holdout: Option<Holdout>,
    /// Upper bound on a shard's image bytes (planned from the source file sizes).
    pub shard_bytes: u64,
    /// A row group is closed once its buffered size reaches this.
    pub row_group_bytes: usize,
}

impl PrepareConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PipelineError::Invalid(m));
        if !adapters::ADAPTERS.contains(&self.adapter.as_str()) {
            return bad(format!(
                "unknown adapter {:?}; known: {}",
                self.adapter,
                adapters::ADAPTERS.join(", ")
            ));
        }
        if !(1..=100).contains(&self.transcode.quality) {
            return bad(format!("JPEG quality must be 1..=100, got {}", self.transcode.quality));
        }
        if self.transcode.max_short_side == Some(0) {
            return bad("max short side must be > 0".into());
        }
        // The split names shard files, as the recipe's `eval_split` does (`--eval-split ../..`
        // would write shards outside the output folder).
        if !["train", "val", "test"].contains(&self.eval_split.as_str()) {
            return bad(format!(
                "eval split {:?}: expected \"val\" or \"test\"",
                self.eval_split
            ));
        }
        if self.transcode.max_pixels == 0 {
            return bad("max pixels must be > 0".into());
        }
        if let Some(s) = &self.subset {
            if !(s.fraction > 0.0 && s.fraction <= 1.0) {
                return bad(format!("subset fraction must be in (0, 1], got {}", s.fraction));
            }
        }
        if let Some(h) = &self.holdout {
            if !(h.fraction > 0.0 && h.fraction < 1.0) {
                return bad(format!("held-out fraction must be in (0, 1), got {}", h.fraction));
            }
            if self.eval_split == "train" {
                return bad("cannot hold out the train split from itself".into());
            }
        }
        if self.shard_bytes == 0 || self.row_group_bytes == 0 {
            return bad("shard and row-group sizes must be > 0".into());
        }
        Ok(())
    }

    /// The settings that determine the bytes written, as recorded in the manifest.
    pub fn settings_json(&self) -> serde_json::Value {
        serde_json::json!({
            "options": self.options,
            "transcode": self.transcode,
            "subset": self.subset,
            "holdout": self.holdout,
            "shard_bytes": self.shard_bytes,
            "row_group_bytes": self.row_group_bytes,
        })
    }
}

/// Which part of the shard plan this process writes (a job array's worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub count: usize,
    pub index: usize,
}

impl Worker {
    pub const ALL: Worker = Worker { count: 1, index: 0 };

    /// An index below the count, or an error saying so.
    pub fn check(&self) -> Result<()> {
        if self.count == 0 || self.index >= self.count {
            return Err(PipelineError::Invalid(format!(
                "worker index {} must be below the number of workers {}",
                self.index, self.count
            )));
        }
        Ok(())
    }

    /// Whether output shard `shard` is this worker's.
    pub fn owns(&self, shard: usize) -> bool {
        shard % self.count == self.index
    }
}

/// One output shard of the plan.
#[derive(Debug, Clone)]
pub struct PlannedShard {
    pub file: String,
    pub split: String,
    /// Indices into the listing's images.
    pub images: Vec<usize>,
    pub hash: String,
}

/// Record of a finished shard, written beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Part {
    file: String,
    split: String,
    plan_hash: String,
    rows: u64,
    bytes: u64,
    sha256: String,
    per_class: BTreeMap<String, u64>,
    skipped: Vec<SkippedFile>,
    wall_s: f64,
}

/// What one `prepare` call did.
#[derive(Debug, Clone, Default)]
pub struct PrepareSummary {
    pub written_shards: usize,
    pub resumed_shards: usize,
    pub images: u64,
    pub skipped: u64,
    pub wall_s: f64,
    /// Present when this call also wrote the manifest.
    pub manifest: Option<Manifest>,
}

/// Lists the dataset and applies the subset and the held-out split, as both `prepare` and
/// `merge` must see it.
pub fn list_dataset(cfg: &PrepareConfig) -> Result<Listing> {
    let mut listing = adapters::list(&cfg.adapter, &cfg.source, &cfg.options)?;
    if let Some(subset) = &cfg.subset {
        apply_subset(&mut listing.images, subset);
    }
    if let Some(h) = &cfg.holdout {
        if !listing.images.iter().any(|i| i.split == cfg.eval_split) {
            apply_holdout(&mut listing.images, &cfg.eval_split, h);
            listing.images.sort_by(|a, b| (&a.split, &a.id).cmp(&(&b.split, &b.id)));
        }
    }
    Ok(listing)
}

/// A uniform draw in [0, 1) from sha256(seed, id).
fn unit_hash(seed: u64, id: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes")) as f64 / 2f64.powi(64)
}

/// Moves the labeled train images whose [`unit_hash`] is below `h.fraction` to `split`;
/// returns how many moved.
pub fn apply_holdout(images: &mut [SourceImage], split: &str, h: &Holdout) -> usize {
    let mut moved = 0;
    for img in images.iter_mut().filter(|i| i.split == "train" && i.label >= 0) {
        if unit_hash(h.seed, &img.id) < h.fraction {
            img.split = split.to_string();
            moved += 1;
        }
    }
    moved
}

/// Keeps, per class of the train split, the `round(fraction * n)` images (at least one) with
/// the smallest seeded hash of their id: stable under reordering and nested across fractions.
/// Rounded, not ceiled, so ImageNet's 0.1% is one image per class (Fig. 2's 1,000 images) and
/// its 1% about 13.
pub fn apply_subset(images: &mut Vec<SourceImage>, subset: &Subset) {
    let train: Vec<usize> = (0..images.len()).filter(|&i| images[i].split == "train").collect();
    let items: Vec<(i32, &str)> = train
        .iter()
        .map(|&i| (images[i].label, images[i].id.as_str()))
        .collect();
    let picked = pick_per_class(&items, subset.seed, |n| {
        ((n as f64 * subset.fraction).round() as usize).clamp(1, n)
    });
    let mut keep = vec![true; images.len()];
    for (&i, p) in train.iter().zip(picked) {
        keep[i] = p;
    }
    let mut it = keep.into_iter();
    images.retain(|_| it.next().unwrap());
}

/// Which of `items` (label, id) are picked: per label, the `count(members)` with the smallest
/// sha256(seed, id). Class-stratified, independent of order, and nested as `count` grows.
pub fn pick_per_class(items: &[(i32, &str)], seed: u64, count: impl Fn(usize) -> usize) -> Vec<bool> {
    let key = |id: &str| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(id.as_bytes());
        h.finalize().into()
    };
    let mut by_class: BTreeMap<i32, Vec<([u8; 32], usize)>> = BTreeMap::new();
    for (i, (label, id)) in items.iter().enumerate() {
        by_class.entry(*label).or_default().push((key(id), i));
    }
    let mut picked = vec![false; items.len()];
    for members in by_class.values_mut() {
        members.sort();
        let n = count(members.len()).min(members.len());
        for (_, i) in &members[..n] {
            picked[*i] = true;
        }
    }
    picked
}

/// Cuts each split into shards whose summed source sizes stay under `shard_bytes`.
pub fn plan(listing: &Listing, cfg: &PrepareConfig, sizes: &[u64]) -> Vec<PlannedShard> {
    let settings = cfg.settings_json().to_string();
    let mut by_split: BTreeMap<&str, Vec<Vec<usize>>> = BTreeMap::new();
    for (i, img) in listing.images.iter().enumerate() {
        let shards = by_split.entry(img.split.as_str()).or_default();
        let start_new = match shards.last() {
            None => true,
            Some(cur) => {
                let used: u64 = cur.iter().map(|&j| sizes[j]).sum();
                used + sizes[i] > cfg.shard_bytes
            }
        };
        if start_new {
            shards.push(Vec::new());
        }
        shards.last_mut().unwrap().push(i);
    }
    let mut out = Vec::new();
    for (split, shards) in by_split {
        let n = shards.len();
        for (k, images) in shards.into_iter().enumerate() {
            let mut h = Sha256::new();
            // A new shard schema redoes every shard.
            h.update(SCHEMA_VERSION.to_le_bytes());
            h.update(settings.as_bytes());
            h.update(listing.class_names.join("\n").as_bytes());
            for &i in &images {
                h.update(serde_json::to_vec(&listing.images[i]).expect("serializable"));
                h.update(sizes[i].to_le_bytes());
            }
            out.push(PlannedShard {
                file: format!("{split}-{k:05}-of-{n:05}.parquet"),
                split: split.to_string(),
                images,
                hash: hex::encode(h.finalize()),
            });
        }
    }
    out
}

fn part_path(out: &Path, file: &str) -> PathBuf {
    out.join(PARTS_DIR).join(format!("{file}.json"))
}

fn read_part(out: &Path, file: &str) -> Option<Part> {
    let text = std::fs::read_to_string(part_path(out, file)).ok()?;
    serde_json::from_str(&text).ok()
}

/// A finished shard is kept when its record matches the plan and the file its checksum.
fn is_done(out: &Path, shard: &PlannedShard) -> bool {
    match read_part(out, &shard.file) {
        Some(p) if p.plan_hash == shard.hash && p.rows == 0 => !out.join(&shard.file).exists(),
        Some(p) if p.plan_hash == shard.hash => {
            matches!(file_sha256(&out.join(&shard.file)), Ok((bytes, sha)) if bytes == p.bytes && sha == p.sha256)
        }
        _ => false,
    }
}

fn source_sizes(cfg: &PrepareConfig, listing: &Listing) -> Vec<u64> {
    // Images inside a Parquet file share its size: each counts for its share of it.
    let mut per_file: BTreeMap<&str, u64> = BTreeMap::new();
    for img in listing.images.iter().filter(|i| i.embedded_row.is_some()) {
        *per_file.entry(img.rel_path.as_str()).or_default() += 1;
    }
    listing
        .images
        .par_iter()
        .map(|img| {
            let path = crate::source::inside(&cfg.source, &img.rel_path);
            let len = path.ok().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
            match img.embedded_row {
                Some(_) => len / per_file.get(img.rel_path.as_str()).copied().unwrap_or(1).max(1),
                None => len,
            }
        })
        .collect()
}

fn process_image(cfg: &PrepareConfig, img: &SourceImage) -> std::result::Result<Row, String> {
    let raw = match img.embedded_row {
        Some(row) => adapters::hub_parquet::read_embedded(&cfg.source, &img.rel_path, row)?,
        None => read_source(&cfg.source, &img.rel_path)?,
    };
    let t = transcode(&raw, img.bbox, &cfg.transcode).map_err(|e| e.0)?;
    let (mask, mask_path) = match &img.mask_rel_path {
        Some(rel) => {
            let mraw = read_source(&cfg.source, rel).map_err(|e| format!("segmentation map {rel}: {e}"))?;
            (
                Some(transcode_mask(&mraw, t.width, t.height).map_err(|e| e.0)?),
                Some(rel.clone()),
            )
        }
        None => (None, None),
    };
    Ok(Row {
        id: img.id.clone(),
        split: img.split.clone(),
        label: img.label,
        image: t.bytes,
        path: img.rel_path.clone(),
        width: t.width as i32,
        height: t.height as i32,
        bbox: img.bbox,
        coco_id: img.coco_id,
        domain: img.domain.clone(),
        mask,
        mask_path,
    })
}

fn write_shard(cfg: &PrepareConfig, listing: &Listing, shard: &PlannedShard, bar: &ProgressBar) -> Result<Part> {
    let start = Instant::now();
    let meta = ShardMetadata {
        schema_version: SCHEMA_VERSION,
        dataset: cfg.dataset.clone(),
        split: shard.split.clone(),
        class_names: listing.class_names.clone(),
    };
    let dest = cfg.out_dir.join(&shard.file);
    let mut writer = ShardWriter::create(&dest, &meta, cfg.row_group_bytes)?;
    let mut per_class = BTreeMap::new();
    let mut skipped = Vec::new();
    let decode = |chunk: &[usize]| -> Vec<std::result::Result<Row, String>> {
        chunk
            .par_iter()
            .map(|&i| process_image(cfg, &listing.images[i]))
            .collect()
    };
    // Writing batch k (Arrow build, Parquet encode, hashing) overlaps decoding batch k+1.
    let mut chunks = shard.images.chunks(BATCH);
    let mut pending = chunks.next().map(|c| (c, decode(c)));
    while let Some((chunk, results)) = pending.take() {
        if let Some(signal) = interrupt::requested() {
            // The writer's temp file goes with it; the shard is redone by the next run.
            return Err(PipelineError::Interrupted {
                path: dest,
                signal,
                when: "before the shard was complete".into(),
            });
        }
        let mut rows = Vec::with_capacity(chunk.len());
        for (&i, r) in chunk.iter().zip(results) {
            let img = &listing.images[i];
            match r {
                Ok(row) => {
                    *per_class.entry(row.label.to_string()).or_insert(0) += 1;
                    rows.push(row);
                }
                Err(reason) => skipped.push(SkippedFile {
                    path: img.rel_path.clone(),
                    split: img.split.clone(),
                    reason,
                }),
            }
        }
        let next = chunks.next();
        let (written, decoded) = rayon::join(|| writer.write(&rows), || next.map(|c| (c, decode(c))));
        written?;
        pending = decoded;
        bar.inc(chunk.len() as u64);
    }
    let (rows, mut bytes, mut sha256) = writer.finish()?;
    if rows == 0 {
        // Every image of the shard was skipped (e.g. Cars' test images absent): no file, so no
        // reader meets an empty shard; the manifest lists the split with 0 images and its skips.
        std::fs::remove_file(&dest).at(&dest)?;
        (bytes, sha256) = (0, String::new());
    }
    let part = Part {
        file: shard.file.clone(),
        split: shard.split.clone(),
        plan_hash: shard.hash.clone(),
        rows,
        bytes,
        sha256,
        per_class,
        skipped,
        wall_s: start.elapsed().as_secs_f64(),
    };
    let path = part_path(&cfg.out_dir, &shard.file);
    write_atomic(&path, &serde_json::to_vec_pretty(&part).expect("serializable"))?;
    Ok(part)
}

/// Writes this worker's shards (skipping finished ones) and, for a single worker, the manifest.
pub fn prepare(cfg: &PrepareConfig, worker: Worker, progress: bool) -> Result<PrepareSummary> {
    cfg.validate()?;
    worker.check()?;
    let start = Instant::now();
    std::fs::create_dir_all(&cfg.out_dir).at(&cfg.out_dir)?;
    // Workers of a job array write the same folder, each its own shards: one lock per worker.
    let _lock = if worker == Worker::ALL {
        FolderLock::acquire(&cfg.out_dir, LOCK_FILE, "prepare")?
    } else {
        FolderLock::acquire(
            &cfg.out_dir,
            &format!("{LOCK_FILE}-worker-{}-of-{}", worker.index, worker.count),
            &format!("prepare worker {} of {}", worker.index, worker.count),
        )?
    };
    std::fs::create_dir_all(cfg.out_dir.join(PARTS_DIR)).at(&cfg.out_dir)?;
    let config_path = cfg.out_dir.join(CONFIG_FILE);
    if let Ok(text) = std::fs::read_to_string(&config_path) {
        if let Ok(old) = serde_json::from_str::<PrepareConfig>(&text) {
            if old.settings_json() != cfg.settings_json() || old.adapter != cfg.adapter {
                eprintln!(
                    "note: settings changed since the last run in {}; affected shards are redone",
                    cfg.out_dir.display()
                );
            }
        }
    }
    write_atomic(&config_path, &serde_json::to_vec_pretty(cfg).expect("serializable"))?;

    let listing = list_dataset(cfg)?;
    let sizes = source_sizes(cfg, &listing);
    let plan = plan(&listing, cfg, &sizes);
    let mine: Vec<&PlannedShard> = plan
        .iter()
        .enumerate()
        .filter(|(k, _)| worker.owns(*k))
        .map(|(_, s)| s)
        .collect();
    let (done, todo): (Vec<&PlannedShard>, Vec<&PlannedShard>) =
        mine.into_iter().partition(|s| is_done(&cfg.out_dir, s));

    let total: u64 = todo.iter().map(|s| s.images.len() as u64).sum();
    let bar = if progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} images  {per_sec}  eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{} {} shards", cfg.dataset, todo.len()));
    let mut summary = PrepareSummary {
        resumed_shards: done.len(),
        ..Default::default()
    };
    let todo_count = todo.len();
    for shard in todo {
        let part = write_shard(cfg, &listing, shard, &bar)?;
        summary.written_shards += 1;
        summary.images += part.rows;
        summary.skipped += part.skipped.len() as u64;
        if let Some(signal) = interrupt::safe_point("shard", summary.written_shards as u64) {
            if summary.written_shards < todo_count {
                bar.abandon();
                return Err(PipelineError::Interrupted {
                    path: cfg.out_dir.clone(),
                    signal,
                    when: format!(
                        "after {} of the {todo_count} shards left to write (each finished shard is kept)",
                        summary.written_shards
                    ),
                });
            }
        }
    }
    bar.finish_and_clear();
    summary.wall_s = start.elapsed().as_secs_f64();
    if worker.count == 1 {
        summary.manifest = Some(merge_listing(cfg, &listing, &plan)?);
    }
    Ok(summary)
}

/// Reads the config a prepare run left in `out_dir`.
pub fn load_config(out_dir: &Path) -> Result<PrepareConfig> {
    let path = out_dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).at(&path)?;
    serde_json::from_str(&text).map_err(|source| PipelineError::Json { path, source })
}

/// Gathers every worker's part records into `manifest.json`.
pub fn merge(out_dir: &Path) -> Result<Manifest> {
    let _lock = FolderLock::acquire(out_dir, LOCK_FILE, "prepare merge")?;
    let cfg = load_config(out_dir)?;
    let listing = list_dataset(&cfg)?;
    let sizes = source_sizes(&cfg, &listing);
    let plan = plan(&listing, &cfg, &sizes);
    merge_listing(&cfg, &listing, &plan)
}

/// A side table as written: COCO's annotations scaled to the images the split's shards store
/// (see `adapters::coco_pixels`); any other table as listed.
fn in_stored_pixels(
    out: &Path,
    t: &crate::adapters::SideTable,
    shards: &[ShardEntry],
) -> Result<(arrow_array::RecordBatch, BTreeMap<String, String>)> {
    use crate::adapters::coco_pixels::{stored_sizes, to_stored_pixels};
    let mut metadata = t.metadata.clone();
    if t.original_sizes.is_empty() {
        return Ok((t.batch.clone(), metadata));
    }
    let split = t.file.trim_start_matches("annotations-").trim_end_matches(".parquet");
    let mut stored = BTreeMap::new();
    for s in shards.iter().filter(|s| s.split == split) {
        stored.extend(stored_sizes(&out.join(&s.file))?);
    }
    let (batch, dropped) = to_stored_pixels(&t.batch, &t.original_sizes, &stored, &out.join(&t.file))?;
    metadata.insert(
        "coordinates".into(),
        "stored image pixels (width, height columns)".into(),
    );
    metadata.insert("annotations_of_unstored_images".into(), dropped.unstored.to_string());
    metadata.insert("annotations_of_rotated_images".into(), dropped.rotated.to_string());
    Ok((batch, metadata))
}

fn merge_listing(cfg: &PrepareConfig, listing: &Listing, plan: &[PlannedShard]) -> Result<Manifest> {
    let out = &cfg.out_dir;
    let mut splits: BTreeMap<String, SplitStats> = BTreeMap::new();
    let mut shards = Vec::new();
    let mut skipped = listing.skipped.clone();
    let mut wall = 0.0;
    let mut missing = Vec::new();
    for shard in plan {
        let part = match read_part(out, &shard.file) {
            Some(p) if p.plan_hash == shard.hash && (p.rows == 0 || out.join(&shard.file).is_file()) => p,
            _ => {
                missing.push(shard.file.clone());
                continue;
            }
        };
        let stats = splits.entry(part.split.clone()).or_default();
        stats.images += part.rows;
        for (label, n) in &part.per_class {
            *stats.per_class.entry(label.clone()).or_insert(0) += n;
        }
        wall += part.wall_s;
        skipped.extend(part.skipped.iter().cloned());
        if part.rows == 0 {
            continue;
        }
        shards.push(ShardEntry {
            file: part.file,
            split: part.split,
            rows: part.rows,
            bytes: part.bytes,
            sha256: part.sha256,
        });
    }
    if !missing.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "{}: {} of {} shards are not finished ({}); run the remaining workers, then merge",
            out.display(),
            missing.len(),
            plan.len(),
            missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    skipped.sort();
    for s in &skipped {
        splits.entry(s.split.clone()).or_default().skipped += 1;
    }
    let mut side_tables = Vec::new();
    for t in &listing.side_tables {
        let (batch, metadata) = in_stored_pixels(out, t, &shards)?;
        let kv = metadata
            .iter()
            .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.clone(), v.clone()))
            .collect();
        let (bytes, sha256) = write_table(&out.join(&t.file), &batch, kv)?;
        side_tables.push(ShardEntry {
            file: t.file.clone(),
            split: t
                .file
                .trim_start_matches("annotations-")
                .trim_end_matches(".parquet")
                .to_string(),
            rows: batch.num_rows() as u64,
            bytes,
            sha256,
        });
    }
    let mut manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        pipeline_version: env!("CARGO_PKG_VERSION").to_string(),
        dataset: cfg.dataset.clone(),
        adapter: listing.adapter.to_string(),
        source: cfg.source.display().to_string(),
        settings: cfg.settings_json(),
        class_names: listing.class_names.clone(),
        mask_classes: listing.mask_classes.clone(),
        splits,
        eval_split: Some(cfg.eval_split.clone()),
        shards,
        side_tables,
        skipped,
        wall_time_s: wall,
        tokens: Vec::new(),
    };
    // Token sets of an earlier run survive while the image shards they were computed from do.
    if let Ok(old) = load_manifest(out) {
        manifest.tokens = Manifest {
            tokens: old.tokens,
            ..manifest.clone()
        }
        .valid_token_sets();
    }
    let path = out.join(MANIFEST_FILE);
    write_atomic(&path, &serde_json::to_vec_pretty(&manifest).expect("serializable"))?;
    Ok(manifest)
}

/// Reads `<dir>/manifest.json`.
pub fn load_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).at(&path)?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|source| PipelineError::Json {
        path: path.clone(),
        source,
    })?;
    PipelineError::check_schema_version(&path, manifest.schema_version)?;
    if let Some((field, value)) = manifest.escaping_path() {
        return Err(PipelineError::BadField {
            path,
            field,
            message: format!("{value:?} is not a relative path inside the dataset folder"),
        });
    }
    Ok(manifest)
}

#[cfg(test)]
mod subset_tests {
    use super::*;

    /// ImageNet-sized classes (1,300 train images each, 3 classes) and some val images.
    fn imagenet_like() -> Vec<SourceImage> {
        let mut v: Vec<SourceImage> = (0..3 * 1300)
            .map(|i| SourceImage::new("train", format!("c{}/{i}.JPEG", i % 3), i % 3))
            .collect();
        v.extend((0..30).map(|i| SourceImage::new("val", format!("val/{i}.JPEG"), i % 3)));
        v
    }

    fn per_class(fraction: f64) -> Vec<usize> {
        let mut images = imagenet_like();
        apply_subset(&mut images, &Subset { fraction, seed: 0 });
        assert_eq!(images.iter().filter(|i| i.split == "val").count(), 30, "val untouched");
        (0..3)
            .map(|c| images.iter().filter(|i| i.split == "train" && i.label == c).count())
            .collect()
    }

    #[test]
    fn the_paper_fractions_keep_one_thirteen_and_all_images_per_class() {
        // Fig. 2: ImageNet 0.1% is 1,000 images, one per class; 1% is about 13 per class.
        assert_eq!(per_class(0.001), vec![1, 1, 1]);
        assert_eq!(per_class(0.01), vec![13, 13, 13]);
        assert_eq!(per_class(0.1), vec![130, 130, 130]);
        assert_eq!(per_class(1.0), vec![1300, 1300, 1300]);
        // A fraction too small for a class still keeps one image of it.
        assert_eq!(per_class(1e-5), vec![1, 1, 1]);
    }
}
