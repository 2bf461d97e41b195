//! Evaluation: classifier accuracy (top-1 / top-5), and the frozen encoder by weighted k-NN
//! and per-layer linear probes (`trainer eval`). k-NN follows DINO's protocol (cosine
//! similarity, k = 20 neighbours voting with weight exp(sim / 0.07)). The pre-training loop
//! runs it every few epochs to catch the overfitting that long
//! schedules show on small datasets (the paper's Fig. 6).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use burn::tensor::activation::log_softmax;

use crate::classifier::Classifier;
use crate::loader::{eval_batch, DataError, ImageSet};
use crate::probe::{Features, ProbeConfig, ProbeResult};
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
        let (x, batch_labels) = eval_images::<B>(set, chunk, image_size, crop_ratio, device)?;
        let h = encoder.forward(x, Mode::Eval);
        let [bs, n1, d] = h.dims();
        let pooled = h.slice([0..bs, 1..n1, 0..d]).mean_dim(1).reshape([bs, d]); // [batch, dim]
        let pooled = crate::losses::l2_normalize(pooled);
        feats.extend(pooled.into_data().iter::<f32>());
        labels.extend(batch_labels);
    }
    Ok((feats, labels))
}

/// The eval views of the samples at `indices` as a `[n, 3, size, size]` tensor, and their labels.
fn eval_images<B: Backend>(
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

/// Whether `label` has the highest score of `row`, and whether it is among the five highest
/// (ties count in its favour).
pub fn top1_top5(row: &[f32], label: i64) -> (bool, bool) {
    let better = row.iter().filter(|&&v| v > row[label as usize]).count();
    (better == 0, better < 5)
}

/// Accuracy of a classifier on eval views.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassifyResult {
    pub top1: f64,
    pub top5: f64,
    /// Mean cross-entropy (no smoothing).
    pub loss: f64,
    pub images: usize,
}

/// Top-1 / top-5 accuracy and loss of `model` on the images at `indices`.
pub fn classify<B: Backend>(
    model: &Classifier<B>,
    set: &ImageSet,
    indices: &[usize],
    image_size: usize,
    crop_ratio: f64,
    batch: usize,
    device: &B::Device,
) -> Result<ClassifyResult, DataError> {
    let (mut top1, mut top5, mut loss) = (0usize, 0usize, 0f64);
    for chunk in indices.chunks(batch.max(1)) {
        let (x, labels) = eval_images::<B>(set, chunk, image_size, crop_ratio, device)?;
        let logits = model.forward(x, Mode::Eval);
        let classes = logits.dims()[1];
        let logp: Vec<f32> = log_softmax(logits, 1).into_data().iter::<f32>().collect();
        for (row, &label) in logp.chunks(classes).zip(&labels) {
            let (in1, in5) = top1_top5(row, label);
            top1 += in1 as usize;
            top5 += in5 as usize;
            loss -= row[label as usize] as f64;
        }
    }
    let n = indices.len().max(1) as f64;
    Ok(ClassifyResult {
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        loss: loss / n,
        images: indices.len(),
    })
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

/// What `trainer eval` measures: the frozen encoder of a pre-training run (or a random-init
/// one) by weighted k-NN and per-layer linear probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    /// Pre-training run folder; `None` evaluates a random-init encoder of `model`.
    pub run: Option<std::path::PathBuf>,
    pub model: String,
    pub vit: crate::vit::VitConfig,
    pub data: std::path::PathBuf,
    /// Train images for the k-NN bank and probe training (spread over the split).
    pub train_images: usize,
    pub val_images: usize,
    pub crop_ratio: f64,
    pub batch: usize,
    pub probe: ProbeConfig,
    pub seed: u64,
}

/// `results.json` of `trainer eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    pub kind: String,
    pub dataset: String,
    pub model: String,
    /// `random`, `beit` or `splitmask`.
    pub init: String,
    pub run: Option<std::path::PathBuf>,
    pub vocab: Option<std::path::PathBuf>,
    pub pretrain_steps: u64,
    /// The pre-training run's seed (the init seed for random-init encoders).
    #[serde(default)]
    pub seed: u64,
    pub knn: KnnResult,
    /// One probe per block output, then the final norm's.
    pub probes: Vec<ProbeResult>,
    pub best_probe: ProbeResult,
    pub seconds: f64,
}

/// Evaluates the encoder described by `spec`.
pub fn evaluate<B: Backend>(spec: &EvalSpec, device: &B::Device) -> Result<EvalResults, crate::engine::TrainError> {
    use rand::SeedableRng;
    let started = std::time::Instant::now();
    let mut encoder: Vit<B> = spec
        .vit
        .init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed), device);
    let (init, vocab, steps, seed) = match &spec.run {
        Some(run) => {
            let (pre, tensors) = crate::classifier::pretrained_encoder(run, &spec.vit)?;
            let stripped: crate::checkpoint::NamedTensors = tensors
                .into_iter()
                .map(|(k, v)| (k["encoder.".len()..].to_string(), v))
                .collect();
            let file = pre.checkpoint_path();
            let (loaded, unexpected) = crate::checkpoint::load_params(encoder, &stripped, &|_| false, &file, device)?;
            if !unexpected.is_empty() {
                return Err(crate::checkpoint::CheckpointError::Unexpected { path: file, unexpected }.into());
            }
            encoder = loaded;
            let method = match pre.method {
                crate::objective::Method::Beit => "beit",
                crate::objective::Method::Splitmask => "splitmask",
            };
            (method.to_string(), Some(pre.vocab.clone()), pre.total_steps, pre.seed)
        }
        None => ("random".to_string(), None, 0, spec.seed),
    };
    let mut train = ImageSet::load(&spec.data, "train")?;
    let mut val = ImageSet::load(&spec.data, "val")?;
    let classes = train.class_names.len().max(1);
    train.keep_labeled(classes);
    val.keep_labeled(classes);
    let layer_features = |set: &ImageSet, n: usize| -> Result<(Vec<Vec<f32>>, Vec<i64>), DataError> {
        let picks = set.spread(n);
        let mut per_layer: Vec<Vec<f32>> = vec![Vec::new(); spec.vit.depth + 1];
        let mut labels = Vec::new();
        for chunk in picks.chunks(spec.batch.max(1)) {
            let (x, batch_labels) = eval_images::<B>(set, chunk, spec.vit.image_size, spec.crop_ratio, device)?;
            for (l, f) in encoder.pooled_layers(x).into_iter().enumerate() {
                per_layer[l].extend(f.into_data().iter::<f32>());
            }
            labels.extend(batch_labels);
        }
        Ok((per_layer, labels))
    };
    let (train_f, train_y) = layer_features(&train, spec.train_images)?;
    let (val_f, val_y) = layer_features(&val, spec.val_images)?;
    let dim = spec.vit.dim;
    // k-NN on the final (normed) layer, L2-normalized as in `features`.
    let unit = |x: &[f32]| -> Vec<f32> {
        x.chunks(dim)
            .flat_map(|r| {
                let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                r.iter().map(move |v| v / n)
            })
            .collect()
    };
    let last = spec.vit.depth;
    let knn_result = knn(
        &unit(&train_f[last]),
        &train_y,
        &unit(&val_f[last]),
        &val_y,
        dim,
        20,
        0.07,
    );
    let probes: Vec<ProbeResult> = (0..=last)
        .map(|l| {
            let (top1, top5, train_top1) = crate::probe::linear_probe::<B>(
                Features {
                    x: &train_f[l],
                    y: &train_y,
                },
                Features {
                    x: &val_f[l],
                    y: &val_y,
                },
                dim,
                classes,
                &spec.probe,
                device,
            );
            ProbeResult {
                layer: l + 1,
                top1,
                top5,
                train_top1,
            }
        })
        .collect();
    let best_probe = *probes
        .iter()
        .max_by(|a, b| a.top1.total_cmp(&b.top1))
        .expect("depth >= 1");
    let manifest = pipeline::prepare::load_manifest(&spec.data)?;
    Ok(EvalResults {
        kind: "eval".into(),
        dataset: manifest.dataset,
        model: spec.model.clone(),
        init,
        run: spec.run.clone(),
        vocab,
        pretrain_steps: steps,
        seed,
        knn: knn_result,
        probes,
        best_probe,
        seconds: started.elapsed().as_secs_f64(),
    })
}
