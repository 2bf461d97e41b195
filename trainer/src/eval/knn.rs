//! Weighted k-NN accuracy of frozen features, DINO's protocol: cosine similarity, the k = 20
//! nearest bank features vote with weight exp(sim / 0.07). The pre-training loop runs it every
//! few epochs to catch the overfitting that long schedules show on small datasets (the
//! paper's Fig. 6).

use serde::{Deserialize, Serialize};

use crate::eval::accuracy::TopK;

/// DINO's neighbours and temperature.
pub const K: usize = 20;
pub const TEMPERATURE: f64 = 0.07;

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
    let mut hits = TopK::default();
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
        hits.add(&votes, label as usize);
    }
    let (top1, top5) = hits.rates();
    KnnResult {
        top1,
        top5,
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
