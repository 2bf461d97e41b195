//! Frozen-encoder evaluation: features of eval views and weighted k-NN classification
//! (DINO's protocol: cosine similarity, k = 20 neighbours voting with weight exp(sim / 0.07)).
//! The pre-training loop runs it every few epochs to catch the overfitting that long
//! schedules show on small datasets (the paper's Fig. 6).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::loader::{eval_batch, DataError, ImageSet};
use crate::vit::{Mode, Vit};

/// Mean-pooled final-norm patch features of the images at `indices` (eval view: resize and
/// center crop `crop_ratio`), L2-normalized. Returns `[n, dim]` row-major and the labels.
pub fn features<B: Backend>(
    encoder: &Vit<B>,
    set: &ImageSet,
    indices: &[usize],
    image_size: usize,
    crop_ratio: f64,
    batch: usize,
    device: &B::Device,
) -> Result<(Vec<f32>, Vec<i64>), DataError> {
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    for chunk in indices.chunks(batch.max(1)) {
        let b = eval_batch(set, chunk, image_size as u32, crop_ratio)?;
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(b.images, [chunk.len(), 3, image_size, image_size]),
            device,
        );
        let h = encoder.forward(x, Mode::Eval);
        let [bs, n1, d] = h.dims();
        let pooled = h.slice([0..bs, 1..n1, 0..d]).mean_dim(1).reshape([bs, d]); // [batch, dim]
        let pooled = crate::losses::l2_normalize(pooled);
        feats.extend(pooled.into_data().iter::<f32>());
        labels.extend(b.labels);
    }
    Ok((feats, labels))
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnResult {
    pub top1: f64,
    pub top5: f64,
    pub k: usize,
    pub queries: usize,
    pub bank: usize,
}

/// Weighted k-NN accuracy of `queries` against a labelled `bank` (both unit rows of `dim`).
pub fn knn(
    bank: &[f32],
    bank_labels: &[i64],
    queries: &[f32],
    query_labels: &[i64],
    dim: usize,
    k: usize,
    temperature: f64,
) -> KnnResult {
    let classes = bank_labels
        .iter()
        .chain(query_labels)
        .copied()
        .max()
        .unwrap_or(0)
        .max(0) as usize
        + 1;
    let nb = bank.len() / dim;
    let k = k.min(nb);
    let (mut top1, mut top5) = (0usize, 0usize);
    for (q, &label) in queries.chunks(dim).zip(query_labels) {
        let mut sims: Vec<(f32, usize)> = bank
            .chunks(dim)
            .enumerate()
            .map(|(i, b)| (q.iter().zip(b).map(|(x, y)| x * y).sum(), i))
            .collect();
        sims.select_nth_unstable_by(k.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
        let mut votes = vec![0f64; classes];
        for &(s, i) in &sims[..k] {
            let l = bank_labels[i];
            if l >= 0 {
                votes[l as usize] += (s as f64 / temperature).exp();
            }
        }
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]).then(a.cmp(&b)));
        top1 += (order[0] as i64 == label) as usize;
        top5 += order.iter().take(5).any(|&c| c as i64 == label) as usize;
    }
    let nq = query_labels.len().max(1) as f64;
    KnnResult {
        top1: top1 as f64 / nq,
        top5: top5 as f64 / nq,
        k,
        queries: query_labels.len(),
        bank: nb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_votes_by_weighted_neighbours() {
        // Class 0 at angles 0, 0.1, 0.2 and class 1 at 1.5, 1.6 on the unit circle. A query at
        // 0.86 rad has a class-1 nearest neighbour (0.64 away, against 0.66) but three class-0
        // neighbours within k = 5.
        let ang = |a: f32| [a.cos(), a.sin()];
        let bank: Vec<f32> = [0.0, 0.1, 0.2, 1.5, 1.6].iter().flat_map(|&a| ang(a)).collect();
        let labels = [0, 0, 0, 1, 1];
        let queries: Vec<f32> = [0.05, 1.55, 0.86].iter().flat_map(|&a| ang(a)).collect();
        let truth = [0, 1, 0];
        // Nearly uniform weights (T = 1): the majority of the 5 wins.
        let r = knn(&bank, &labels, &queries, &truth, 2, 5, 1.0);
        assert_eq!((r.top1, r.top5, r.k, r.bank), (1.0, 1.0, 5, 5));
        // k = 1: the nearest neighbour decides, and is wrong for the third query.
        let r = knn(&bank, &labels, &queries, &truth, 2, 1, 1.0);
        assert!((r.top1 - 2.0 / 3.0).abs() < 1e-9);
        // T = 0.07 weights by exp(sim / T): the two close class-1 points outweigh three farther ones.
        let r = knn(&bank, &labels, &queries, &truth, 2, 5, 0.07);
        assert!((r.top1 - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.top5, 1.0);
    }
}
