//! Features of a frozen encoder on eval views (resize + center crop): the L2-normalized
//! mean-pooled output of the final norm (k-NN), and the mean-pooled tokens after every block
//! (the per-layer linear probes).

use burn::prelude::*;

use crate::data::images::ImageSet;
use crate::data::loader::eval_batch;
use crate::error::DataError;
use crate::model::classifier::Classifier;
use crate::model::losses::l2_normalize;
use crate::model::vit::{Mode, Pool, Vit};

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

/// What a pass over images needs besides the model: which images, at what size, in what
/// batches, and the name its progress bar shows.
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    pub set: &'a ImageSet,
    pub indices: &'a [usize],
    pub image_size: usize,
    pub crop_ratio: f64,
    pub batch: usize,
    /// Shown on the progress bar ("k-NN bank", "evaluating test").
    pub what: &'a str,
}

impl Pass<'_> {
    /// The eval views of each batch in turn, with their labels, drawing a progress bar.
    pub fn for_each<B: Backend>(
        &self,
        device: &B::Device,
        mut f: impl FnMut(Tensor<B, 4>, Vec<i64>),
    ) -> Result<(), DataError> {
        let bar = crate::progress::pass(self.what, self.indices.len() as u64, "images");
        for chunk in self.indices.chunks(self.batch.max(1)) {
            let (x, labels) = eval_images::<B>(self.set, chunk, self.image_size, self.crop_ratio, device)?;
            f(x, labels);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(())
    }
}

/// Pooled final-norm features of the pass's images, L2-normalized.
/// Returns `[n, dim]` row-major and the labels.
pub fn features<B: Backend>(
    encoder: &Vit<B>,
    pass: Pass,
    pool: Pool,
    device: &B::Device,
) -> Result<(Vec<f32>, Vec<i64>), DataError> {
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    pass.for_each::<B>(device, |x, batch_labels| {
        let pooled = l2_normalize(pool.apply(encoder.forward(x, Mode::Eval)));
        feats.extend(pooled.into_data().iter::<f32>());
        labels.extend(batch_labels);
    })?;
    Ok((feats, labels))
}

/// What a classifier's head sees for each image of the pass (`fc_norm` of the pooled tokens),
/// `[n, dim]` row-major, and the labels.
pub fn head_features<B: Backend>(
    model: &Classifier<B>,
    pass: Pass,
    device: &B::Device,
) -> Result<(Vec<f32>, Vec<i64>), DataError> {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    pass.for_each::<B>(device, |images, labels| {
        x.extend(model.features(images, Mode::Eval).into_data().iter::<f32>());
        y.extend(labels);
    })?;
    Ok((x, y))
}

/// Mean-pooled patch tokens after each block and after the final norm (`depth + 1` layers,
/// each `[n, dim]` row-major, not normalized), and the labels.
pub fn layer_features<B: Backend>(
    encoder: &Vit<B>,
    pass: Pass,
    pool: Pool,
    device: &B::Device,
) -> Result<(Vec<Vec<f32>>, Vec<i64>), DataError> {
    let mut per_layer: Vec<Vec<f32>> = vec![Vec::new(); encoder.blocks.len() + 1];
    let mut labels = Vec::new();
    pass.for_each::<B>(device, |x, batch_labels| {
        for (l, f) in encoder.pooled_layers(x, pool).into_iter().enumerate() {
            per_layer[l].extend(f.into_data().iter::<f32>());
        }
        labels.extend(batch_labels);
    })?;
    Ok((per_layer, labels))
}
