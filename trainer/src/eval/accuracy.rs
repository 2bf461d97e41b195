//! Classification accuracy: one top-k rule shared by the classifier's evaluation, the linear
//! probes and the k-NN vote, and top-1 / top-5 of a classifier on eval views.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::eval::features::Pass;
use crate::model::classifier::Classifier;
use crate::model::vit::Mode;

/// How many classes rank above `label` in `scores`: those with a higher score, and those with
/// an equal score and a lower index (ties never count in the label's favour, so a constant
/// prediction scores the share of class 0, not 100%).
pub fn rank<T: PartialOrd>(scores: &[T], label: usize) -> usize {
    let own = &scores[label];
    scores
        .iter()
        .enumerate()
        .filter(|(c, s)| *s > own || (*s == own && *c < label))
        .count()
}

/// Top-1 and top-5 hit counts over a set of predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TopK {
    pub top1: usize,
    pub top5: usize,
    pub count: usize,
}

impl TopK {
    /// Counts one prediction of `label` from `scores`.
    pub fn add<T: PartialOrd>(&mut self, scores: &[T], label: usize) {
        let r = rank(scores, label);
        self.top1 += (r == 0) as usize;
        self.top5 += (r < 5) as usize;
        self.count += 1;
    }

    /// (top-1, top-5) as shares; 0 for an empty set.
    pub fn rates(&self) -> (f64, f64) {
        let n = self.count.max(1) as f64;
        (self.top1 as f64 / n, self.top5 as f64 / n)
    }
}

/// Accuracy of a classifier on eval views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyResult {
    pub top1: f64,
    pub top5: f64,
    /// Mean cross-entropy (no smoothing).
    pub loss: f64,
    pub images: usize,
    /// How often each class was predicted (a collapsed model predicts one class).
    #[serde(default)]
    pub predictions: Vec<u64>,
}

impl ClassifyResult {
    /// The share of the images given the most predicted class.
    pub fn majority_share(&self) -> f64 {
        let top = self.predictions.iter().copied().max().unwrap_or(0);
        top as f64 / self.images.max(1) as f64
    }
}

/// Top-1 / top-5 accuracy and loss of `model` on the images at `indices`.
pub fn classify<B: Backend>(
    model: &Classifier<B>,
    pass: Pass,
    device: &B::Device,
) -> Result<ClassifyResult, DataError> {
    let mut tally = Tally::default();
    pass.for_each::<B>(device, |x, labels| tally.add(model.forward(x, Mode::Eval), &labels))?;
    Ok(tally.result())
}

/// [`ClassifyResult`] accumulated over batches of logits.
#[derive(Debug, Default)]
pub struct Tally {
    hits: TopK,
    loss: f64,
    predictions: Vec<u64>,
}

impl Tally {
    /// Counts the predictions of `logits` (`[batch, classes]`) against `labels`.
    pub fn add<B: Backend>(&mut self, logits: Tensor<B, 2>, labels: &[i64]) {
        let classes = logits.dims()[1];
        self.predictions.resize(classes, 0);
        let logp: Vec<f32> = log_softmax(logits, 1).into_data().iter::<f32>().collect();
        for (row, &label) in logp.chunks(classes).zip(labels) {
            self.hits.add(row, label as usize);
            self.loss -= row[label as usize] as f64;
            // The first of the highest scores, the same tie rule as `rank`.
            let best = (0..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b });
            self.predictions[best] += 1;
        }
    }

    pub fn result(self) -> ClassifyResult {
        let (top1, top5) = self.hits.rates();
        let images = self.hits.count;
        ClassifyResult {
            top1,
            top5,
            loss: self.loss / images.max(1) as f64,
            images,
            predictions: self.predictions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_counts_better_classes_and_breaks_ties_by_index() {
        let s = [0.1f32, 0.7, 0.2, 0.7, 0.0, 0.0, 0.0];
        assert_eq!(rank(&s, 1), 0);
        assert_eq!(rank(&s, 3), 1, "a tie with a lower index ranks above");
        assert_eq!(rank(&s, 2), 2);
        assert_eq!(rank(&s, 6), 6);
        let mut k = TopK::default();
        for label in [1, 3, 2, 6] {
            k.add(&s, label);
        }
        assert_eq!((k.top1, k.top5, k.count), (1, 3, 4));
        assert_eq!(k.rates(), (0.25, 0.75));
        // A constant prediction is right only for class 0.
        let flat = [0.5f64; 4];
        assert_eq!((rank(&flat, 0), rank(&flat, 3)), (0, 3));
    }
}
