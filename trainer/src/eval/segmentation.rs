//! Semantic segmentation scores from a confusion matrix: mIoU (the mean over classes of
//! intersection / union, classes absent from both prediction and ground truth left out, as
//! mmsegmentation's `nanmean`) and pixel accuracy. Pixels labelled with the ignore value, or any
//! value outside the classes, count nowhere.

use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use image::{GrayImage, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::augment::to_chw;
use crate::data::images::ImageSet;
use crate::data::seg_augment::{labels, seg_eval_image};
use crate::error::DataError;
use crate::model::segmenter::{predict, Segmenter};
use crate::model::vit::Mode;

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

/// A sliding-window evaluation (mmsegmentation's `slide` mode): each image at `short_side`,
/// windows of `crop` every `stride` pixels (the last one flush with the border), the logits
/// of overlapping windows averaged, then resized to the stored label map and scored there.
#[derive(Debug, Clone, Copy)]
pub struct SlidePass<'a> {
    pub set: &'a ImageSet,
    pub indices: &'a [usize],
    pub short_side: u32,
    pub crop: u32,
    pub stride: u32,
    pub classes: usize,
    pub reduce_zero_label: bool,
    /// Shown on the progress bar.
    pub what: &'a str,
}

/// Images decoded ahead of the model in a sliding-window pass.
const DECODE_AHEAD: usize = 8;

impl SlidePass<'_> {
    /// mIoU and pixel accuracy of `model` over the pass's images.
    pub fn scores<B: Backend>(&self, model: &Segmenter<B>, device: &B::Device) -> Result<SegScores, DataError> {
        let bar = crate::progress::pass(self.what, self.indices.len() as u64, "images");
        let mut confusion = Confusion::new(self.classes);
        for chunk in self.indices.chunks(DECODE_AHEAD) {
            let bytes = self.set.fetch(chunk)?;
            let decoded: Vec<Result<(RgbImage, GrayImage), DataError>> = chunk
                .par_iter()
                .zip(&bytes)
                .map(|(&i, b)| {
                    let (img, mask) = (self.set.decode(i, b)?, self.set.decode_mask(i, b)?);
                    // Scored at the label map's size: it must be the image's (prepare resizes
                    // both together), which also bounds what the logits are resized to.
                    if img.dimensions() != mask.dimensions() {
                        return Err(self.set.decode_error(
                            i,
                            format!("a {:?} label map for a {:?} image", mask.dimensions(), img.dimensions()),
                        ));
                    }
                    let img = seg_eval_image(&img, self.short_side);
                    Ok((img, labels(mask, self.reduce_zero_label)))
                })
                .collect();
            for d in decoded {
                let (img, mask) = d?;
                let logits = self.slide(model, &img, device);
                let [h, w] = [mask.height() as usize, mask.width() as usize];
                let pred = predict(interpolate(
                    logits,
                    [h, w],
                    InterpolateOptions {
                        mode: InterpolateMode::Bilinear,
                        align_corners: false,
                    },
                ));
                let pred: Vec<u8> = pred
                    .into_data()
                    .iter::<i64>()
                    .map(|c| u8::try_from(c).unwrap_or(u8::MAX))
                    .collect();
                confusion.add(mask.as_raw(), &pred);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        Ok(confusion.scores())
    }

    /// The averaged logits of `img`'s windows.
    ///
    /// # Shapes
    /// - output: `[1, classes, img.height, img.width]`
    fn slide<B: Backend>(&self, model: &Segmenter<B>, img: &RgbImage, device: &B::Device) -> Tensor<B, 4> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let c = self.crop as usize;
        // An image smaller than the crop is padded (with the mean colour: zero once normalized)
        // and the padding's logits dropped.
        let (pw, ph) = (w.max(c), h.max(c));
        let mut chw = Vec::with_capacity(3 * w * h);
        to_chw(img, &mut chw);
        let mut canvas = vec![0f32; 3 * pw * ph];
        for ch in 0..3 {
            for y in 0..h {
                let src = &chw[(ch * h + y) * w..(ch * h + y + 1) * w];
                canvas[(ch * ph + y) * pw..(ch * ph + y) * pw + w].copy_from_slice(src);
            }
        }
        let windows: Vec<(usize, usize)> = starts(ph, c, self.stride as usize)
            .into_iter()
            .flat_map(|y| starts(pw, c, self.stride as usize).into_iter().map(move |x| (x, y)))
            .collect();
        let mut crops = Vec::with_capacity(windows.len() * 3 * c * c);
        for &(x, y) in &windows {
            for ch in 0..3 {
                for row in y..y + c {
                    let at = (ch * ph + row) * pw + x;
                    crops.extend_from_slice(&canvas[at..at + c]);
                }
            }
        }
        let n = windows.len();
        let x = Tensor::<B, 4>::from_data(TensorData::new(crops, [n, 3, c, c]), device);
        let logits = model.forward(x, Mode::Eval); // [windows, classes, crop, crop]
        let k = self.classes;
        let mut sum = Tensor::<B, 4>::zeros([1, k, ph, pw], device);
        let mut count = vec![0f32; ph * pw];
        for (i, &(x, y)) in windows.iter().enumerate() {
            let win = logits.clone().slice([i..i + 1, 0..k, 0..c, 0..c]);
            let at = [0..1, 0..k, y..y + c, x..x + c];
            sum = sum.clone().slice_assign(at.clone(), sum.slice(at) + win);
            for row in y..y + c {
                count[row * pw + x..row * pw + x + c].iter_mut().for_each(|v| *v += 1.0);
            }
        }
        let count = Tensor::<B, 2>::from_data(TensorData::new(count, [ph, pw]), device);
        let mean = sum / count.reshape([1, 1, ph, pw]);
        mean.slice([0..1, 0..k, 0..h, 0..w])
    }
}

/// Window starts along a side of `len` pixels: every `stride`, the last flush with the end
/// (mmsegmentation's grid: `max(len - crop + stride - 1, 0) / stride + 1` windows).
pub fn starts(len: usize, crop: usize, stride: usize) -> Vec<usize> {
    let stride = stride.max(1);
    let n = len.saturating_sub(crop).div_ceil(stride) + 1;
    (0..n).map(|i| (i * stride).min(len.saturating_sub(crop))).collect()
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

    #[test]
    fn sliding_windows_cover_the_image_and_end_flush() {
        // mmsegmentation's grid: h_grids = max(h - crop + stride - 1, 0) // stride + 1.
        assert_eq!(starts(512, 512, 341), vec![0]);
        assert_eq!(starts(683, 512, 341), vec![0, 171]);
        assert_eq!(starts(1000, 512, 341), vec![0, 341, 488]);
        assert_eq!(starts(100, 128, 85), vec![0]);
        for (len, crop, stride) in [(171, 128, 85), (960, 352, 234), (353, 352, 234)] {
            let s = starts(len, crop, stride);
            assert_eq!(*s.last().unwrap() + crop, len, "flush with the end");
            assert!(s.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= stride), "{s:?}");
        }
    }
}
