//! Batches of a split: decoded and augmented in parallel (rayon), by a background thread a
//! few batches ahead of the device, and evaluation batches of fixed views.
//!
//! The order is a pure function of (seed, epoch): batch `i` of the run is batch `i % per_epoch`
//! of epoch `i / per_epoch`, so a resumed run starts exactly where the checkpoint stopped.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::augment::{eval_view, random_erase, to_chw, train_view, AugmentConfig};
use crate::data::images::ImageSet;
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
}

impl HostBatch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The sample order of an epoch. With `repeats` > 1 (DeiT's repeated augmentation),
/// `n / repeats` images are drawn and each appears `repeats` times in a row, so its copies
/// (each with its own view) fall in the same batch, as DeiT's sampler puts them in the same
/// global batch.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, repeats: u32) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, epoch, u64::MAX));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    if repeats > 1 {
        let r = repeats as usize;
        order.truncate(n.div_ceil(r));
        let mut repeated: Vec<usize> = order.iter().flat_map(|&i| std::iter::repeat_n(i, r)).collect();
        repeated.truncate(n);
        order = repeated;
    }
    order
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
        // The copies of an image are consecutive: a batch holds them together.
        assert!(r.chunks(3).all(|c| c.iter().all(|&i| i == c[0])), "{r:?}");
        assert_ne!(r, epoch_order(100, 1, 1, 3));
    }
}
