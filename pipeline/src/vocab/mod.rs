//! Visual vocabularies: building the paper's three data-free vocabularies (random projection,
//! random patches, k-means: [`kmeans`] over [`nearest`]-neighbour assignment) and inspecting one
//! over a dataset (usage, perplexity, dead tokens, a PNG of its patches) here; the vocabulary
//! file and the patch tokenizer in [`tokenizer`]; the pre-tokenized token shards in
//! [`token_shards`].

pub mod kmeans;
pub mod nearest;
pub mod token_shards;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use schemas::manifest::MANIFEST_FILE;
use schemas::vocab::{KmeansStats, VOCAB_VERSION};
use schemas::{Manifest, Preprocessing, VocabHeader, VocabKind};

use crate::error::{IoContext, PipelineError, Result};
use crate::prepare::{load_manifest, Worker};
use crate::shard::{file_sha256, write_atomic, ShardReader};
use crate::transcode::decode_upright;
use crate::views::{canonical_view, patch_pixels, patch_vectors};
use crate::vocab::kmeans::{kmeans, normalize_rows, KmeansConfig, KmeansError, KmeansState};
use crate::vocab::tokenizer::Vocabulary;

#[derive(Debug, Clone, PartialEq)]
pub struct VocabConfig {
    pub kind: VocabKind,
    pub size: usize,
    pub seed: u64,
    /// k-means: patches sampled from the train split (the paper: 3M).
    pub sample: usize,
    pub iterations: u32,
    pub progress: bool,
}

impl VocabConfig {
    pub fn paper(kind: VocabKind) -> Self {
        VocabConfig {
            kind,
            size: 8192,
            seed: 0,
            sample: 3_000_000,
            iterations: 25,
            progress: true,
        }
    }

    /// `vocab-<kind>-<size>-s<seed>.safetensors`
    pub fn file_name(&self) -> String {
        format!("vocab-{}-{}-s{}.safetensors", self.kind.name(), self.size, self.seed)
    }
}

/// Where the sampled patches of a vocabulary build are kept, one file per train shard, and
/// which shards this process samples. Job-array workers (`vocab build --num-shards N
/// --shard-index i`) each sample the train shards they own and stop; the build without
/// workers (the merge) reads every shard's file that matches `key` and samples the rest, so
/// its sample, and the vocabulary, are those of one process. A stopped build resumes from the
/// files too.
#[derive(Debug, Clone)]
pub struct PatchStore {
    pub dir: PathBuf,
    /// What the sample is a function of (dataset, kind, size, seed, sample size, draws).
    pub key: String,
    pub worker: Worker,
}

/// The patch store of the vocabulary written to `out`: `<out>.patches/` (removed once the
/// vocabulary is saved).
pub fn patches_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".patches");
    out.with_file_name(name)
}

/// Removes the patch store at `dir` of the dataset in `data`: the files it wrote (one per image
/// shard) and then the folder if nothing else is in it; a file it did not write stays.
pub fn remove_patch_store(dir: &Path, data: &Path) -> Result<()> {
    let manifest = crate::prepare::load_manifest(data)?;
    let store = PatchStore {
        dir: dir.to_path_buf(),
        key: String::new(),
        worker: Worker::ALL,
    };
    for shard in &manifest.shards {
        let file = store.file(shard);
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&file),
            _ => {}
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// The lock of one writer of the dataset in `dir` (`what`: "tokenize", "vocab build"): the
/// folder's own lock, or a worker's of a job array (workers write disjoint files).
pub fn job_lock(dir: &Path, what: &str, worker: Worker) -> Result<crate::lock::FolderLock> {
    use crate::lock::{FolderLock, LOCK_FILE};
    if worker == Worker::ALL {
        return FolderLock::acquire(dir, LOCK_FILE, what);
    }
    let (i, n) = (worker.index, worker.count);
    let name = format!("{LOCK_FILE}-{}-worker-{i}-of-{n}", what.replace(' ', "-"));
    FolderLock::acquire(dir, &name, &format!("{what} worker {i} of {n}"))
}

const PATCHES: &str = "patches";
const PATCHES_KEY: &str = "splitmask.patches";

impl PatchStore {
    fn file(&self, shard: &schemas::ShardEntry) -> PathBuf {
        self.dir.join(format!("{}.safetensors", shard.file))
    }

    /// The shard's patches from an earlier worker or run, if they were sampled for this key
    /// from this version of the shard.
    fn read(&self, shard: &schemas::ShardEntry, d: usize) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.file(shard)).ok()?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
        let key = meta.metadata().as_ref()?.get(PATCHES_KEY)?;
        if *key != format!("{}:{}", self.key, shard.sha256) {
            return None;
        }
        let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
        let t = st.tensor(PATCHES).ok()?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape().get(1) != Some(&d) {
            return None;
        }
        Some(
            t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    fn write(&self, shard: &schemas::ShardEntry, patches: &[f32], d: usize) -> Result<()> {
        let path = self.file(shard);
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        let bytes: Vec<u8> = patches.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bad = |e: safetensors::SafeTensorError| PipelineError::BadField {
            path: path.clone(),
            field: PATCHES.into(),
            message: e.to_string(),
        };
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![patches.len() / d, d], &bytes)
            .map_err(bad)?;
        let meta = [(PATCHES_KEY.to_string(), format!("{}:{}", self.key, shard.sha256))].into();
        let out = safetensors::serialize([(PATCHES, view)], Some(meta)).map_err(bad)?;
        write_atomic(&path, &out)
    }
}

/// Normalized (unit) vectors of the train-split patches at the given global indices
/// (`image index * grid² + position`, images in the order of the manifest's train shards), in
/// increasing index order. Flat patches (zero vectors) are dropped. Only the picked rows are
/// kept in memory, whatever the dataset size.
pub fn sample_train_patches(dir: &Path, picks: &[usize], p: &Preprocessing, progress: bool) -> Result<Vec<f32>> {
    sample_patches_with(dir, picks, p, progress, None)
}

/// [`sample_train_patches`] through a [`PatchStore`]: shards with a matching file are read
/// from it, the ones this worker owns are sampled and written to it, the others (another
/// worker's) are left out.
pub fn sample_patches_with(
    dir: &Path,
    picks: &[usize],
    p: &Preprocessing,
    progress: bool,
    store: Option<&PatchStore>,
) -> Result<Vec<f32>> {
    let manifest = load_manifest(dir)?;
    let grid2 = p.grid() * p.grid();
    let d = p.dim();
    let mut by_image: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &g in picks {
        by_image.entry(g / grid2).or_default().push(g % grid2);
    }
    by_image.values_mut().for_each(|v| v.sort_unstable());
    let bar = if progress {
        ProgressBar::new(by_image.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("patches {pos}/{len} images [{bar:30}] eta {eta}").expect("valid template"),
    );
    let mut out = Vec::with_capacity(picks.len() * d);
    let flush = |batch: &mut Vec<(Vec<u8>, &Vec<usize>)>, out: &mut Vec<f32>| {
        let rows: Vec<Vec<f32>> = batch
            .par_iter()
            .map(|(bytes, positions)| {
                let mut all = Vec::new();
                if let Ok((img, _)) = decode_upright(bytes) {
                    patch_vectors(&canonical_view(&img, p.source_view_size), p, &mut all);
                }
                let mut picked = Vec::with_capacity(positions.len() * d);
                if !all.is_empty() {
                    for &pos in positions.iter() {
                        picked.extend_from_slice(&all[pos * d..(pos + 1) * d]);
                    }
                }
                picked
            })
            .collect();
        bar.inc(rows.len() as u64);
        for r in rows {
            for row in r.chunks(d).filter(|row| row.iter().any(|&a| a != 0.0)) {
                out.extend_from_slice(row);
            }
        }
        batch.clear();
    };
    let mut first = 0usize;
    for (k, shard) in manifest.shards.iter().enumerate().filter(|(_, s)| s.split == "train") {
        let images = first..first + shard.rows as usize;
        first = images.end;
        let picked_images = by_image.range(images.clone()).count() as u64;
        if let Some(store) = store {
            if let Some(patches) = store.read(shard, d) {
                bar.inc(picked_images);
                out.extend(patches);
                continue;
            }
            if !store.worker.owns(k) {
                continue;
            }
        }
        if let Some(signal) = crate::interrupt::safe_point("patch-shard", k as u64) {
            bar.abandon();
            return Err(PipelineError::Interrupted {
                path: dir.to_path_buf(),
                signal,
                when: format!(
                    "while sampling patches, before {} (sampled shards are kept)",
                    shard.file
                ),
            });
        }
        let mut shard_out = Vec::new();
        let mut batch = Vec::new();
        for (row, r) in ShardReader::open(&dir.join(&shard.file))?.enumerate() {
            let r = r?;
            if let Some(positions) = by_image.get(&(images.start + row)) {
                batch.push((r.image, positions));
                if batch.len() == 256 {
                    flush(&mut batch, &mut shard_out);
                }
            }
        }
        flush(&mut batch, &mut shard_out);
        if let Some(store) = store {
            store.write(shard, &shard_out, d)?;
        }
        out.extend(shard_out);
    }
    bar.finish_and_clear();
    normalize_rows(&mut out, d);
    Ok(out)
}

/// Patches in the train split of the prepared dataset in `dir`.
pub fn train_patch_count(dir: &Path, p: &Preprocessing) -> Result<usize> {
    let m = load_manifest(dir)?;
    Ok(train_images(&m) * p.grid() * p.grid())
}

fn train_images(m: &Manifest) -> usize {
    m.shards
        .iter()
        .filter(|s| s.split == "train")
        .map(|s| s.rows as usize)
        .sum()
}

/// Builds a vocabulary from the prepared dataset in `dir` (random projection needs no data
/// but still records which dataset it was made for).
pub fn build(dir: &Path, cfg: &VocabConfig) -> Result<Vocabulary> {
    build_resumable(dir, cfg, None)
}

/// Where `pipeline vocab build` keeps the k-means state of the vocabulary it writes to `out`
/// (removed once the vocabulary is saved).
pub fn kmeans_state_path(out: &Path) -> std::path::PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".kmeans-state");
    out.with_file_name(name)
}

/// [`build`], with the k-means state kept in `state` after every iteration: a stopped build
/// (a signal, a crash) run again continues from the last iteration it finished.
pub fn build_resumable(dir: &Path, cfg: &VocabConfig, state: Option<&Path>) -> Result<Vocabulary> {
    let files = BuildFiles {
        kmeans_state: state,
        patches: None,
        worker: Worker::ALL,
    };
    Ok(build_with(dir, cfg, &files)?.expect("a single process builds the vocabulary"))
}

/// What a build keeps beside its output, and which worker of a job array runs it.
#[derive(Debug, Clone, Copy)]
pub struct BuildFiles<'a> {
    /// The k-means state, rewritten after every iteration ([`kmeans_state_path`]).
    pub kmeans_state: Option<&'a Path>,
    /// The sampled patches, one file per train shard ([`patches_dir`], [`PatchStore`]).
    pub patches: Option<&'a Path>,
    pub worker: Worker,
}

/// [`build_resumable`] with a patch store: a job-array worker samples its train shards into
/// it and returns `None`; the build without workers returns the vocabulary.
pub fn build_with(dir: &Path, cfg: &VocabConfig, files: &BuildFiles) -> Result<Option<Vocabulary>> {
    files.worker.check()?;
    let p = Preprocessing::paper();
    let d = p.dim();
    let manifest_sha = file_sha256(&dir.join(MANIFEST_FILE)).ok().map(|(_, s)| s);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    if cfg.size == 0 || cfg.size > u16::MAX as usize + 1 {
        return Err(PipelineError::Invalid(format!(
            "vocabulary size must be 1..=65536, got {}",
            cfg.size
        )));
    }
    let mut kmeans_stats = None;
    let embeddings = match cfg.kind {
        // Random projection samples nothing: a worker has nothing to do.
        VocabKind::RandomProjection if files.worker != Worker::ALL => return Ok(None),
        VocabKind::RandomProjection => random_projection(cfg.size, d, &mut rng),
        VocabKind::RandomPatches | VocabKind::Kmeans => {
            let source = PatchSource {
                dir,
                cfg,
                files,
                p: &p,
                manifest_sha: manifest_sha.as_deref(),
            };
            let x = source.sample(&mut rng)?;
            if files.worker != Worker::ALL {
                return Ok(None);
            }
            if cfg.kind == VocabKind::RandomPatches {
                source.random_patches(x, &mut rng)?
            } else {
                let (centroids, stats) = source.kmeans(&x)?;
                kmeans_stats = Some(stats);
                centroids
            }
        }
    };
    Ok(Some(Vocabulary {
        header: VocabHeader {
            version: VOCAB_VERSION,
            kind: cfg.kind,
            seed: cfg.seed,
            size: cfg.size,
            dim: d,
            preprocessing: p,
            source_manifest_sha256: manifest_sha,
            kmeans: kmeans_stats,
        },
        embeddings,
    }))
}

/// `size` random unit rows of dimension `d`.
fn random_projection(size: usize, d: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut e: Vec<f32> = (0..size * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    normalize_rows(&mut e, d);
    e
}

/// The train patches a random-patches or k-means build starts from, and what the files it
/// keeps on the way are keyed by.
struct PatchSource<'a> {
    dir: &'a Path,
    cfg: &'a VocabConfig,
    files: &'a BuildFiles<'a>,
    p: &'a Preprocessing,
    manifest_sha: Option<&'a str>,
}

impl PatchSource<'_> {
    /// The sampled patches ([n, d]); a job-array worker's share when `files.worker` is one.
    fn sample(&self, rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
        let (dir, cfg) = (self.dir, self.cfg);
        let total = train_patch_count(dir, self.p)?;
        let want = if cfg.kind == VocabKind::Kmeans {
            cfg.sample.min(total)
        } else {
            cfg.size
        };
        // A few extra draws replace patches of zero norm (flat at the mean color).
        let extra = if cfg.kind == VocabKind::RandomPatches {
            (want / 50).max(16)
        } else {
            0
        };
        let draws = (want + extra).min(total);
        if draws < cfg.size {
            return Err(PipelineError::Invalid(format!(
                "{}: the train split has {total} patches, fewer than the {} entries asked for",
                dir.display(),
                cfg.size
            )));
        }
        let mut picks: Vec<usize> = sample(rng, total, draws).into_vec();
        picks.sort_unstable();
        let store = self.files.patches.map(|dir| PatchStore {
            dir: dir.to_path_buf(),
            key: format!(
                "{}:{}:{}:{}:{}:{draws}",
                self.manifest_sha.unwrap_or("-"),
                cfg.kind.name(),
                cfg.size,
                cfg.seed,
                cfg.sample
            ),
            worker: self.files.worker,
        });
        sample_patches_with(dir, &picks, self.p, cfg.progress, store.as_ref())
    }

    /// `cfg.size` of the sampled patches `x`.
    fn random_patches(&self, x: Vec<f32>, rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
        let (size, d) = (self.cfg.size, self.p.dim());
        if x.len() < size * d {
            return Err(PipelineError::Invalid(format!(
                "{}: too few non-flat patches",
                self.dir.display()
            )));
        }
        // The extra draws are dropped at random, not from the end, to stay uniform.
        let keep = sample(rng, x.len() / d, size).into_vec();
        Ok(keep.iter().flat_map(|&i| x[i * d..(i + 1) * d].to_vec()).collect())
    }

    /// The k-means centroids of the sampled patches `x`, resumable from `files.kmeans_state`.
    fn kmeans(&self, x: &[f32]) -> Result<(Vec<f32>, KmeansStats)> {
        let (dir, cfg, state) = (self.dir, self.cfg, self.files.kmeans_state);
        let mut kc = KmeansConfig::new(cfg.size, cfg.iterations, cfg.seed);
        kc.progress = cfg.progress;
        // The points are a function of the dataset (its manifest) and these settings.
        kc.state = state.map(|path| KmeansState {
            path: path.to_path_buf(),
            key: format!(
                "{}:{}:{}:{}:{}",
                self.manifest_sha.unwrap_or("-"),
                cfg.size,
                cfg.seed,
                cfg.sample,
                x.len()
            ),
        });
        let r = kmeans(x, self.p.dim(), &kc).map_err(|e| match e {
            KmeansError::Interrupted { signal, iteration, of } => PipelineError::Interrupted {
                path: dir.to_path_buf(),
                signal,
                when: format!(
                    "at k-means iteration {iteration} of {of}, before the vocabulary was written{}",
                    if state.is_some() {
                        " (a rerun continues from this iteration)"
                    } else {
                        ""
                    }
                ),
            },
            e => PipelineError::Invalid(format!("{}: {e}", dir.display())),
        })?;
        let stats = KmeansStats {
            sample: r.points as u64,
            iterations: cfg.iterations,
            inertia: r.inertia,
            reseeded: r.reseeded,
        };
        Ok((r.centroids, stats))
    }
}

#[derive(Debug, Clone)]
pub struct UsageReport {
    pub images: usize,
    pub counts: Vec<u64>,
    /// exp(entropy) of the token distribution, in [1, V].
    pub perplexity: f64,
    pub dead_share: f64,
}

impl UsageReport {
    pub fn from_counts(counts: Vec<u64>, images: usize) -> Self {
        let total: u64 = counts.iter().sum();
        let entropy: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total as f64;
                -p * p.ln()
            })
            .sum();
        let dead = counts.iter().filter(|&&c| c == 0).count();
        UsageReport {
            images,
            perplexity: entropy.exp(),
            dead_share: dead as f64 / counts.len() as f64,
            counts,
        }
    }
}

/// Token usage over up to `max_images` images of `split` (canonical views).
pub fn usage(dir: &Path, vocab: &Vocabulary, split: &str, max_images: usize) -> Result<UsageReport> {
    let manifest = load_manifest(dir)?;
    let mut counts = vec![0u64; vocab.header.size];
    let mut images = 0;
    'outer: for shard in manifest.shards.iter().filter(|s| s.split == split) {
        let mut reader = ShardReader::open(&dir.join(&shard.file))?;
        loop {
            let batch: Vec<Vec<u8>> = reader
                .by_ref()
                .take(256)
                .map(|r| r.map(|r| r.image))
                .collect::<Result<_>>()?;
            if batch.is_empty() {
                break;
            }
            let views: Vec<RgbImage> = batch
                .par_iter()
                .filter_map(|b| decode_upright(b).ok())
                .map(|(img, _)| canonical_view(&img, vocab.header.preprocessing.source_view_size))
                .collect();
            for t in vocab.tokenize_views(&views) {
                counts[t as usize] += 1;
            }
            images += views.len();
            if images >= max_images {
                break 'outer;
            }
        }
    }
    Ok(UsageReport::from_counts(counts, images))
}

/// Draws every entry as its 8x8 patch, `cols` per row, each scaled up `zoom` times; writes a
/// PNG. Entries are unit directions: they are drawn at the norm of a typical normalized patch
/// (RMS 1 per value, i.e. sqrt(dim)), so a flat entry shows its color and an edge its contrast.
pub fn draw(vocab: &Vocabulary, out: &Path, cols: usize, zoom: u32) -> Result<PathBuf> {
    let p = &vocab.header.preprocessing;
    let ps = p.patch_size;
    let cell = ps * zoom + 1;
    let rows = vocab.header.size.div_ceil(cols);
    let mut sheet = RgbImage::from_pixel(cols as u32 * cell, rows as u32 * cell, image::Rgb([255, 255, 255]));
    for i in 0..vocab.header.size {
        let px = entry_pixels(vocab, i);
        let (cx, cy) = ((i % cols) as u32 * cell, (i / cols) as u32 * cell);
        for y in 0..ps * zoom {
            for x in 0..ps * zoom {
                let k = (((y / zoom) * ps + x / zoom) * 3) as usize;
                sheet.put_pixel(cx + x, cy + y, image::Rgb([px[k], px[k + 1], px[k + 2]]));
            }
        }
    }
    crate::shard::write_png(out, &sheet)?;
    Ok(out.to_path_buf())
}

/// Entry `i` as the RGB pixels of its patch (row-major, `patch_size`² x 3), stretched to the
/// full range: entries are unit directions, so only their pattern and colour balance show.
pub fn entry_pixels(vocab: &Vocabulary, i: usize) -> Vec<u8> {
    let p = &vocab.header.preprocessing;
    let e = &vocab.embeddings[i * vocab.header.dim..(i + 1) * vocab.header.dim];
    let (lo, hi) = e.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let span = (hi - lo).max(1e-6);
    let stretched: Vec<f32> = e
        .iter()
        .enumerate()
        .map(|(j, &v)| ((v - lo) / span - p.mean[j % 3]) / p.std[j % 3])
        .collect();
    patch_pixels(&stretched, p)
}

/// Reads the vocabulary file a dataset folder holds for `kind`, if any.
pub fn find(dir: &Path, kind: VocabKind) -> Result<Vec<PathBuf>> {
    let prefix = format!("vocab-{}-", kind.name());
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".safetensors"))
        })
        .collect();
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_projection_is_deterministic_per_seed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |seed| VocabConfig {
            size: 128,
            seed,
            progress: false,
            ..VocabConfig::paper(VocabKind::RandomProjection)
        };
        let a = build(dir.path(), &cfg(5)).unwrap();
        assert_eq!(a, build(dir.path(), &cfg(5)).unwrap());
        assert_ne!(a.embeddings, build(dir.path(), &cfg(6)).unwrap().embeddings);
        for row in a.embeddings.chunks(a.header.dim) {
            let n: f32 = row.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4);
        }
        assert_eq!(cfg(5).file_name(), "vocab-random_projection-128-s5.safetensors");
    }

    #[test]
    fn usage_statistics() {
        let r = UsageReport::from_counts(vec![5, 5, 0, 0], 1);
        assert!((r.perplexity - 2.0).abs() < 1e-9);
        assert_eq!(r.dead_share, 0.5);
        let r = UsageReport::from_counts(vec![1; 8], 1);
        assert!((r.perplexity - 8.0).abs() < 1e-9);
    }
}
