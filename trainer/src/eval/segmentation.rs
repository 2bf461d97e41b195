//! Semantic segmentation scores from a confusion matrix: mIoU (the mean over classes of
//! intersection / union, classes absent from both prediction and ground truth left out, as
//! mmsegmentation's `nanmean`) and pixel accuracy. Pixels labelled with the ignore value, or any
//! value outside the classes, count nowhere.

use serde::{Deserialize, Serialize};

/// `classes x classes` counts: row = ground truth, column = prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub classes: usize,
    pub counts: Vec<u64>,
    /// Per ground-truth class: pixels predicted as no class at all.
    pub missed: Vec<u64>,
}

/// What a segmentation evaluation reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegScores {
    pub miou: f64,
    pub pixel_accuracy: f64,
    /// Per class; `None` where the class is in neither the ground truth nor the prediction.
    pub iou: Vec<Option<f64>>,
    /// Pixels scored (the ignore label left out).
    pub pixels: u64,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
            missed: vec![0; classes],
        }
    }

    /// Adds a label map and its prediction (same length); targets outside `0..classes` (the
    /// ignore label) are skipped, a prediction outside it is a miss of its pixel's class.
    pub fn add(&mut self, target: &[u8], prediction: &[u8]) {
        assert_eq!(target.len(), prediction.len(), "a prediction per pixel");
        let n = self.classes;
        for (&t, &p) in target.iter().zip(prediction) {
            let (t, p) = (t as usize, p as usize);
            if t >= n {
                continue;
            }
            if p < n {
                self.counts[t * n + p] += 1;
            } else {
                self.missed[t] += 1;
            }
        }
    }

    pub fn merge(&mut self, other: &Confusion) {
        assert_eq!(self.classes, other.classes);
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
        self.missed.iter_mut().zip(&other.missed).for_each(|(a, b)| *a += b);
    }

    pub fn scores(&self) -> SegScores {
        let n = self.classes;
        let at = |t: usize, p: usize| self.counts[t * n + p];
        let pixels: u64 = self.counts.iter().chain(&self.missed).sum();
        let correct: u64 = (0..n).map(|c| at(c, c)).sum();
        let iou: Vec<Option<f64>> = (0..n)
            .map(|c| {
                let truth: u64 = (0..n).map(|p| at(c, p)).sum::<u64>() + self.missed[c];
                let predicted: u64 = (0..n).map(|t| at(t, c)).sum();
                let union = truth + predicted - at(c, c);
                (union > 0).then(|| at(c, c) as f64 / union as f64)
            })
            .collect();
        let present: Vec<f64> = iou.iter().flatten().copied().collect();
        SegScores {
            miou: if present.is_empty() {
                0.0
            } else {
                present.iter().sum::<f64>() / present.len() as f64
            },
            pixel_accuracy: if pixels == 0 {
                0.0
            } else {
                correct as f64 / pixels as f64
            },
            iou,
            pixels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes and the ignore label 255, worked by hand:
    /// truth   0 0 0 1 1 2 255 255
    /// predict 0 0 1 1 2 2 0   1
    /// class 0: tp 2, truth 3, predicted 2 -> 2 / 3; class 1: tp 1, truth 2, predicted 2 -> 1 / 3;
    /// class 2: tp 1, truth 1, predicted 2 -> 1 / 2. mIoU = (2/3 + 1/3 + 1/2) / 3 = 0.5;
    /// pixel accuracy 4 / 6.
    #[test]
    fn miou_and_pixel_accuracy_equal_a_hand_computation() {
        let mut c = Confusion::new(3);
        c.add(&[0, 0, 0, 1, 1, 2, 255, 255], &[0, 0, 1, 1, 2, 2, 0, 1]);
        let s = c.scores();
        assert_eq!(s.pixels, 6);
        assert!((s.pixel_accuracy - 4.0 / 6.0).abs() < 1e-12);
        let want = [2.0 / 3.0, 1.0 / 3.0, 0.5];
        for (got, want) in s.iou.iter().zip(want) {
            assert!((got.unwrap() - want).abs() < 1e-12, "{got:?} vs {want}");
        }
        assert!((s.miou - 0.5).abs() < 1e-12);
        // A class in neither truth nor prediction is left out of the mean.
        let mut d = Confusion::new(4);
        d.add(&[0, 0, 0, 1, 1, 2, 255, 255], &[0, 0, 1, 1, 2, 2, 0, 1]);
        assert_eq!(d.scores().iou[3], None);
        assert!((d.scores().miou - 0.5).abs() < 1e-12);
        // Merging two halves equals adding the whole.
        let (mut a, mut b) = (Confusion::new(3), Confusion::new(3));
        a.add(&[0, 0, 0, 1], &[0, 0, 1, 1]);
        b.add(&[1, 2, 255, 255], &[2, 2, 0, 1]);
        a.merge(&b);
        assert_eq!(a, c);
    }
}
