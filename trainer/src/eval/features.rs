//! Features of a frozen encoder on eval views (resize + center crop): the L2-normalized
//! mean-pooled output of the final norm (k-NN), and the mean-pooled tokens after every block
//! (the per-layer linear probes).

use burn::prelude::*;

use crate::data::images::ImageSet;
use crate::data::loader::eval_batch;
use crate::error::DataError;
use crate::model::losses::l2_normalize;
use crate::model::vit::{mean_patch_tokens, Mode, Vit};

/// The eval views of the samples at `indices` as a `[n, 3, size, size]` tensor, and their labels.
pub fn eval_images<B: Backend>(
    set: &ImageSet,
    indices: &[usize],
    size: usize,
    crop_ratio: f64,
    device: &B::Device,
) -> Result<(Tensor<B, 4>, Vec<i64>), DataError> {
    let b = eval_batch(set, indices, size as u32, crop_ratio)?;
    let x = Tensor::from_data(TensorData::new(b.images, [indices.len(), 3, size, size]), device);
    Ok((x, b.labels))
}

/// Mean-pooled final-norm patch features of the images at `indices`, L2-normalized.
/// Returns `[n, dim]` row-major and the labels.
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
        let (x, batch_labels) = eval_images::<B>(set, chunk, image_size, crop_ratio, device)?;
        let pooled = l2_normalize(mean_patch_tokens(encoder.forward(x, Mode::Eval)));
        feats.extend(pooled.into_data().iter::<f32>());
        labels.extend(batch_labels);
    }
    Ok((feats, labels))
}

/// Mean-pooled patch tokens after each block and after the final norm (`depth + 1` layers,
/// each `[n, dim]` row-major, not normalized), and the labels.
pub fn layer_features<B: Backend>(
    encoder: &Vit<B>,
    set: &ImageSet,
    indices: &[usize],
    image_size: usize,
    crop_ratio: f64,
    batch: usize,
    device: &B::Device,
) -> Result<(Vec<Vec<f32>>, Vec<i64>), DataError> {
    let mut per_layer: Vec<Vec<f32>> = vec![Vec::new(); encoder.blocks.len() + 1];
    let mut labels = Vec::new();
    for chunk in indices.chunks(batch.max(1)) {
        let (x, batch_labels) = eval_images::<B>(set, chunk, image_size, crop_ratio, device)?;
        for (l, f) in encoder.pooled_layers(x).into_iter().enumerate() {
            per_layer[l].extend(f.into_data().iter::<f32>());
        }
        labels.extend(batch_labels);
    }
    Ok((per_layer, labels))
}
