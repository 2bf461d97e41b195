//! Batches of a split: decoded and augmented in parallel (rayon), by a background thread a
//! few batches ahead of the device, and evaluation batches of fixed views.
//!
//! The order is a pure function of (seed, epoch) ([`crate::data::shuffle`]): batch `i` of the
//! run is batch `i % per_epoch` of epoch `i / per_epoch`, so a resumed run starts exactly where
//! the checkpoint stopped, whether the split is cached in RAM or streamed from its shards.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::augment::{eval_view, multi_crop_views, random_erase, to_chw, train_view, AugmentConfig};
use crate::data::images::ImageSet;
use crate::data::seg_augment::{labels, seg_train_view};
use crate::data::shuffle::{epoch_plan, Event, Group, Plan};
use crate::error::DataError;
use crate::seed::mix;

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
    /// Position of the first sample in the global batch (a data-parallel rank's offset; 0
    /// for a whole batch), which seeds the per-sample masks and drop path.
    pub first: u64,
    /// Further views of every sample (multi-crop's second global crop, then its local
    /// crops), in that order; empty for single-view training and evaluation.
    pub views: Vec<ViewBatch>,
    /// `[batch, size, size]` label maps aligned with `images` (segmentation); values outside
    /// the classes are ignored.
    pub masks: Option<Vec<u8>>,
}

/// One further view of every sample of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewBatch {
    pub size: usize,
    /// `[batch, 3, size, size]` flattened.
    pub images: Vec<f32>,
}

/// The share of each global batch one data-parallel rank reads: of a global batch of
/// `ranks * b` samples, rank `r` holds positions `r * b..(r + 1) * b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub rank: usize,
    pub ranks: usize,
}

impl Part {
    /// One process reading whole batches.
    pub const WHOLE: Part = Part { rank: 0, ranks: 1 };
}

impl HostBatch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Encoded image bytes a streaming loader holds (its buffer and the row in hand), now and at
/// most so far; what `--loader-memory-mb` bounds.
#[derive(Debug, Default)]
pub struct Meter {
    held: AtomicU64,
    peak: AtomicU64,
}

impl Meter {
    fn set(&self, bytes: u64) {
        self.held.store(bytes, Ordering::Relaxed);
        self.peak.fetch_max(bytes, Ordering::Relaxed);
    }

    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// The shuffle buffer's size: the bound less the largest row, which the reader holds on
/// top of the buffer while a batch takes it (and repeats it).
fn buffer_bytes(set: &ImageSet) -> u64 {
    let largest = set.samples.iter().map(|s| u64::from(s.size)).max().unwrap_or(0);
    set.options.memory_bytes().saturating_sub(largest)
}

/// Distinct rows an epoch draws: `n`, or `n / repeats` with DeiT's repeated augmentation.
fn distinct_rows(n: usize, repeats: u32) -> usize {
    if repeats > 1 {
        n.div_ceil(repeats as usize)
    } else {
        n
    }
}

/// The plan of `epoch` over `set` (see [`epoch_plan`]).
fn plan_of(set: &ImageSet, groups: &[Group], seed: u64, epoch: u64, repeats: u32) -> Plan {
    let take = distinct_rows(set.samples.len(), repeats);
    epoch_plan(groups, &set.sizes(), seed, epoch, buffer_bytes(set), take)
}

/// The sample at each position of an epoch. With `repeats` > 1 (DeiT's repeated
/// augmentation), `n / repeats` images are drawn and each appears `repeats` times in a row,
/// so its copies (each with its own view) fall in the same batch, as DeiT's sampler puts
/// them in the same global batch.
pub fn epoch_order(set: &ImageSet, seed: u64, epoch: u64, repeats: u32) -> Vec<usize> {
    let plan = plan_of(set, &set.groups(), seed, epoch, repeats);
    let r = repeats.max(1) as usize;
    (0..set.samples.len()).map(|p| plan.emits[p / r]).collect()
}

/// One epoch's rows as the loader hands them out: from RAM when the split is cached,
/// otherwise read row group by row group as the plan says, holding only the buffer.
struct EpochRows {
    epoch: u64,
    plan: Plan,
    repeats: usize,
    stream: Option<Stream>,
}

/// The reading side of a streamed epoch.
struct Stream {
    groups: Vec<Group>,
    /// Groups to read: those with a row at or after the first one handed out (a resumed run
    /// skips the groups its earlier steps used up).
    wanted: Vec<bool>,
    cursor: usize,
    emitted: usize,
    pool: HashMap<usize, Vec<u8>>,
    held: u64,
    current: Option<(usize, Vec<u8>)>,
    meter: Arc<Meter>,
}

impl EpochRows {
    /// The rows of `epoch`, to be handed out from position `first` on.
    fn new(
        set: &ImageSet,
        seed: u64,
        epoch: u64,
        repeats: u32,
        first: usize,
        meter: &Arc<Meter>,
    ) -> Result<Self, DataError> {
        let groups = set.groups();
        let plan = plan_of(set, &groups, seed, epoch, repeats);
        let r = repeats.max(1) as usize;
        let stream = if set.cached() {
            None
        } else {
            let budget = buffer_bytes(set);
            if let Some(g) = groups.iter().filter(|g| g.bytes > budget).max_by_key(|g| g.bytes) {
                let s = &set.samples[g.start];
                return Err(DataError::LoaderMemory {
                    dir: set.dir.clone(),
                    split: set.split.clone(),
                    shard: set.shards[s.shard as usize].clone(),
                    group: s.group,
                    group_mb: g.bytes as f64 / 1e6,
                    memory_mb: set.options.memory_mb,
                });
            }
            let first_k = first / r;
            Some(Stream {
                wanted: plan
                    .last_emit(&groups)
                    .iter()
                    .map(|k| k.is_some_and(|k| k >= first_k))
                    .collect(),
                groups,
                cursor: 0,
                emitted: 0,
                pool: HashMap::new(),
                held: 0,
                current: None,
                meter: meter.clone(),
            })
        };
        Ok(EpochRows {
            epoch,
            plan,
            repeats: r,
            stream,
        })
    }

    /// The sample at position `p` of the epoch and its encoded image (`p` never decreases
    /// from one call to the next).
    fn at<'s>(&mut self, set: &'s ImageSet, p: usize) -> Result<(usize, Cow<'s, [u8]>), DataError> {
        let k = p / self.repeats;
        let i = self.plan.emits[k];
        let Some(st) = &mut self.stream else {
            let bytes = set.samples[i].bytes.as_deref().expect("a cached set holds every row");
            return Ok((i, Cow::Borrowed(bytes)));
        };
        if st.current.as_ref().is_none_or(|(ck, _)| *ck != k) {
            st.current = None;
            while st.emitted <= k {
                match self.plan.events[st.cursor] {
                    Event::Read(g) if st.wanted[g] => {
                        let group = st.groups[g];
                        for (j, bytes) in set.read_group(&group)?.into_iter().enumerate() {
                            st.held += bytes.len() as u64;
                            st.pool.insert(group.start + j, bytes);
                        }
                    }
                    Event::Read(_) => {}
                    Event::Emit(e) => {
                        let bytes = st.pool.remove(&e);
                        if let Some(b) = &bytes {
                            st.held -= b.len() as u64;
                        }
                        if st.emitted == k {
                            st.current = Some((k, bytes.expect("the plan reads a row's group before handing it out")));
                        }
                        st.emitted += 1;
                    }
                }
                st.cursor += 1;
                st.meter
                    .set(st.held + st.current.as_ref().map_or(0, |c| c.1.len() as u64));
            }
        }
        let (_, bytes) = st.current.as_ref().expect("set above");
        Ok((i, Cow::Owned(bytes.clone())))
    }
}

/// Builds batch `index` of a run: decode and augment its samples in parallel.
pub fn make_batch(
    set: &ImageSet,
    aug: &AugmentConfig,
    batch: usize,
    seed: u64,
    index: u64,
) -> Result<HostBatch, DataError> {
    let per_epoch = (set.samples.len() / batch) as u64;
    let epoch = index / per_epoch;
    let first = (index % per_epoch) as usize * batch;
    let mut rows = EpochRows::new(set, seed, epoch, aug.repeats, first, &Arc::default())?;
    batch_of(set, aug, batch, Part::WHOLE, seed, index, &mut rows)
}

/// `part`'s share (`batch` samples) of global batch `index`, from its epoch's rows (the
/// loader keeps them for the epoch).
fn batch_of(
    set: &ImageSet,
    aug: &AugmentConfig,
    batch: usize,
    part: Part,
    seed: u64,
    index: u64,
    rows: &mut EpochRows,
) -> Result<HostBatch, DataError> {
    let global = batch * part.ranks;
    let per_epoch = (set.samples.len() / global) as u64;
    let epoch = index / per_epoch;
    debug_assert_eq!(epoch, rows.epoch);
    let first = part.rank * batch;
    let start = (index % per_epoch) as usize * global + first;
    let picks: Vec<(usize, Cow<[u8]>)> = (start..start + batch)
        .map(|p| rows.at(set, p))
        .collect::<Result<_, _>>()?;
    // A sample's views (normalized CHW; the first is `images`'), label, tokens and label map.
    type View = (Vec<Vec<f32>>, i64, Option<Vec<i64>>, Option<Vec<u8>>);
    let n = set.samples.len();
    let views: Vec<Result<View, DataError>> = picks
        .par_iter()
        .enumerate()
        .map(|(k, (i, bytes))| {
            let i = *i;
            let img = set.decode(i, bytes)?;
            // Repeated copies of an image need their own views: seed by position then.
            let view_seed = if aug.repeats > 1 {
                mix(seed, epoch, (n + start + k) as u64)
            } else {
                mix(seed, epoch, i as u64)
            };
            let mut rng = ChaCha8Rng::seed_from_u64(view_seed);
            let label = set.samples[i].label as i64;
            if let Some(seg) = &aug.segmentation {
                let mask = labels(set.decode_mask(i, bytes)?, seg.reduce_zero_label);
                let (view, mask) = seg_train_view(&img, &mask, seg, &mut rng).map_err(|r| set.decode_error(i, r))?;
                return Ok((vec![chw_of(&view)], label, None, Some(mask.into_raw())));
            }
            if let Some(mc) = &aug.multi_crop {
                let views = multi_crop_views(&img, aug, mc, &mut rng);
                let chws = views.iter().map(chw_of).collect();
                return Ok((chws, label, None, None));
            }
            let (view, flipped) = train_view(&img, aug, &mut rng);
            let mut chw = chw_of(&view);
            random_erase(&mut chw, aug.size as usize, aug.erase_prob, &mut rng);
            let s = &set.samples[i];
            let tokens = s
                .tokens
                .as_ref()
                .map(|t| t[flipped as usize].iter().map(|&v| v as i64).collect());
            Ok((vec![chw], s.label as i64, tokens, None))
        })
        .collect();
    let views: Vec<View> = views.into_iter().collect::<Result<_, _>>()?;
    let labels = views.iter().map(|v| v.1).collect();
    let tokens = views
        .iter()
        .map(|v| v.2.as_deref())
        .collect::<Option<Vec<_>>>()
        .map(|t| t.concat());
    let masks = views
        .iter()
        .map(|v| v.3.as_deref())
        .collect::<Option<Vec<_>>>()
        .map(|m| m.concat());
    let view_count = views.first().map_or(0, |v| v.0.len());
    let per_view: Vec<Vec<f32>> = (0..view_count)
        .map(|k| concat(&views.iter().map(|v| v.0[k].as_slice()).collect::<Vec<_>>()))
        .collect();
    let mut per_view = per_view.into_iter();
    let images = per_view.next().unwrap_or_default();
    // The extra views' sides are the multi-crop's (the first view is `images`).
    let sides = aug
        .multi_crop
        .as_ref()
        .map(|mc| mc.view_sizes(aug.size))
        .unwrap_or_default();
    let views = per_view
        .zip(sides.into_iter().skip(1))
        .map(|(images, side)| ViewBatch {
            size: side as usize,
            images,
        })
        .collect();
    Ok(HostBatch {
        index,
        epoch,
        images,
        labels,
        tokens,
        size: aug.size as usize,
        first: first as u64,
        views,
        masks,
    })
}

/// Equal-length `parts` end to end, copied in parallel (a serial gather on the loader's thread
/// held back every decode thread: 2 cores decoded at 1.2x of one).
fn concat(parts: &[&[f32]]) -> Vec<f32> {
    let len = parts.first().map_or(0, |p| p.len());
    let mut out = vec![0f32; len * parts.len()];
    crate::backend::advise_huge_pages(&mut out);
    if len > 0 {
        out.par_chunks_mut(len)
            .zip(parts.par_iter())
            .for_each(|(dst, src)| dst.copy_from_slice(src));
    }
    out
}

/// Normalized CHW floats of a view.
fn chw_of(view: &image::RgbImage) -> Vec<f32> {
    let mut chw = Vec::new();
    to_chw(view, &mut chw);
    chw
}

/// Eval views (resize + center crop) of the samples at `indices`, for k-NN / probes / eval.
pub fn eval_batch(set: &ImageSet, indices: &[usize], size: u32, crop_ratio: f64) -> Result<HostBatch, DataError> {
    let bytes = set.fetch(indices)?;
    let views: Vec<Result<(Vec<f32>, i64), DataError>> = indices
        .par_iter()
        .zip(&bytes)
        .map(|(&i, bytes)| {
            let view = eval_view(&set.decode(i, bytes)?, size, crop_ratio);
            Ok((chw_of(&view), set.samples[i].label as i64))
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
        first: 0,
        views: Vec::new(),
        masks: None,
    })
}

/// Batches `start..` prepared by a background thread, `prefetch` ahead of the consumer.
pub struct Loader {
    rx: Receiver<Result<HostBatch, DataError>>,
    handle: Option<JoinHandle<()>>,
    meter: Arc<Meter>,
}

impl Loader {
    /// `part`'s shares (`batch` samples each) of the global batches `start..`.
    pub fn spawn(
        set: Arc<ImageSet>,
        aug: AugmentConfig,
        batch: usize,
        part: Part,
        seed: u64,
        start: u64,
        prefetch: usize,
    ) -> Result<Self, DataError> {
        let global = batch * part.ranks;
        if set.samples.len() < global {
            return Err(DataError::TooSmall {
                dir: set.dir.clone(),
                split: set.split.clone(),
                rows: set.samples.len(),
                batch: global,
            });
        }
        let per_epoch = (set.samples.len() / global) as u64;
        let meter = Arc::new(Meter::default());
        // The first epoch's rows here, so a bound too small for a row group fails the call.
        let first = EpochRows::new(
            &set,
            seed,
            start / per_epoch,
            aug.repeats,
            (start % per_epoch) as usize * global,
            &meter,
        )?;
        let (tx, rx) = sync_channel(prefetch.max(1));
        let thread_meter = meter.clone();
        let handle = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                let mut rows = first;
                for index in start.. {
                    let epoch = index / per_epoch;
                    if rows.epoch != epoch {
                        // The previous epoch's buffer goes before the next one fills.
                        rows.stream = None;
                        match EpochRows::new(&set, seed, epoch, aug.repeats, 0, &thread_meter) {
                            Ok(r) => rows = r,
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                break;
                            }
                        }
                    }
                    let b = batch_of(&set, &aug, batch, part, seed, index, &mut rows);
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
            meter,
        })
    }

    /// The next batch (blocks until the loader has it).
    pub fn next_batch(&mut self) -> Result<HostBatch, DataError> {
        self.rx.recv().expect("loader thread ended without an error")
    }

    /// Encoded bytes the loader holds (a streamed split's buffer; 0 for a cached one).
    pub fn meter(&self) -> &Meter {
        &self.meter
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
    use crate::data::images::{fixture, Cache, LoadOptions};

    fn load(dir: &std::path::Path, cache: Cache, memory_mb: u64) -> Arc<ImageSet> {
        Arc::new(
            ImageSet::load_with(
                dir,
                "train",
                &LoadOptions {
                    cache,
                    memory_mb,
                    masks: false,
                },
            )
            .unwrap(),
        )
    }

    fn aug(repeats: u32) -> AugmentConfig {
        AugmentConfig {
            repeats,
            ..AugmentConfig::pretrain(16, false)
        }
    }

    /// The batches `start..start + n` of a loader, as (labels, images).
    fn batches(set: &Arc<ImageSet>, a: &AugmentConfig, start: u64, n: u64) -> (Vec<HostBatch>, u64) {
        let mut loader = Loader::spawn(set.clone(), *a, 8, Part::WHOLE, 11, start, 2).unwrap();
        let out = (0..n).map(|_| loader.next_batch().unwrap()).collect();
        (out, loader.meter().peak_bytes())
    }

    #[test]
    fn the_ranks_shares_of_a_global_batch_make_the_whole_batch() {
        // Two ranks reading 4 samples each of every global batch of 8 get, side by side,
        // the batch of 8 one process reads: the same rows, views and order, cached or
        // streamed, across an epoch boundary and with repeated augmentation.
        let dir = tempfile::tempdir().unwrap();
        fixture::write_split(dir.path(), 120, 2, 8_000);
        for set in [load(dir.path(), Cache::Ram, 1), load(dir.path(), Cache::None, 1)] {
            for a in [aug(1), aug(3)] {
                let start = 13; // 15 batches of 8 per epoch: 13..17 crosses into epoch 1.
                let (whole, _) = batches(&set, &a, start, 4);
                let mut ranks: Vec<Loader> = (0..2)
                    .map(|rank| Loader::spawn(set.clone(), a, 4, Part { rank, ranks: 2 }, 11, start, 2).unwrap())
                    .collect();
                for w in &whole {
                    let parts: Vec<HostBatch> = ranks.iter_mut().map(|l| l.next_batch().unwrap()).collect();
                    assert_eq!((parts[0].first, parts[1].first), (0, 4));
                    assert_eq!((parts[0].index, parts[1].epoch), (w.index, w.epoch));
                    assert_eq!([parts[0].labels.clone(), parts[1].labels.clone()].concat(), w.labels);
                    assert!(
                        [parts[0].images.clone(), parts[1].images.clone()].concat() == w.images,
                        "batch {}: the shares' views differ from the whole batch's",
                        w.index
                    );
                }
            }
        }
    }

    #[test]
    fn a_streamed_split_gives_the_cached_batches_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        // 1,200 images of a few KB in row groups of ~8 KB: several MB against a 1 MB bound.
        fixture::write_split(dir.path(), 1200, 4, 8_000);
        let ram = load(dir.path(), Cache::Ram, 1);
        let disk = load(dir.path(), Cache::None, 1);
        let total: u64 = ram.sizes().iter().map(|&s| u64::from(s)).sum();
        assert!(
            total > 2 * ram.options.memory_bytes(),
            "the split ({total} bytes) outgrows the bound"
        );
        let per_epoch = 1200 / 8;
        // One epoch and a bit: every row once per epoch, the same batches either way.
        let (a, _) = batches(&ram, &aug(1), 0, per_epoch + 3);
        let (b, peak) = batches(&disk, &aug(1), 0, per_epoch + 3);
        assert!(peak > 0 && peak <= disk.options.memory_bytes(), "peak {peak}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.index, &x.labels, &x.images), (y.index, &y.labels, &y.images));
        }
        let order = epoch_order(&disk, 11, 0, 1);
        let mut seen = order[..per_epoch as usize * 8].to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), per_epoch as usize * 8, "no row twice in an epoch");
        assert_ne!(order, epoch_order(&disk, 12, 0, 1));
        assert_ne!(order, epoch_order(&disk, 11, 1, 1));
        // Resuming mid-epoch continues the same sequence (and reads less).
        let (c, _) = batches(&disk, &aug(1), 97, 10);
        for (x, y) in b[97..].iter().zip(&c) {
            assert_eq!((x.index, &x.images), (y.index, &y.images));
        }
        // make_batch is the same function of (seed, index).
        let m = make_batch(&disk, &aug(1), 8, 11, 120).unwrap();
        assert_eq!(m.images, b[120].images);
        // A bound below one row group is refused up front, naming the shard.
        let mut tiny = ImageSet::load_with(dir.path(), "train", &disk.options).unwrap();
        tiny.options.memory_mb = 0;
        let err = Loader::spawn(Arc::new(tiny), aug(1), 8, Part::WHOLE, 0, 0, 1)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--loader-memory-mb") && err.contains("train-0000"),
            "{err}"
        );
    }

    #[test]
    fn repeated_copies_stay_together_streamed_or_cached() {
        let dir = tempfile::tempdir().unwrap();
        fixture::write_split(dir.path(), 100, 2, 4_000);
        let set = load(dir.path(), Cache::None, 1);
        let r = epoch_order(&set, 1, 0, 3);
        assert_eq!(r.len(), 100);
        let mut counts = std::collections::HashMap::new();
        r.iter().for_each(|&i| *counts.entry(i).or_insert(0) += 1);
        assert_eq!(counts.len(), 34);
        assert!(counts.values().all(|&c| (1..=3).contains(&c)));
        // The copies of an image are consecutive: a batch holds them together.
        assert!(r.chunks(3).all(|c| c.iter().all(|&i| i == c[0])), "{r:?}");
        assert_ne!(r, epoch_order(&set, 1, 1, 3));
        let (a, _) = batches(&set, &aug(3), 0, 12);
        let (b, _) = batches(&load(dir.path(), Cache::Ram, 1), &aug(3), 0, 12);
        let (c, _) = batches(&set, &aug(3), 5, 7);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.images, y.images);
        }
        for (x, y) in a[5..].iter().zip(&c) {
            assert_eq!(x.images, y.images);
        }
    }
}
