//! Frozen-encoder evaluation (`trainer eval`): weighted k-NN on the final layer and a linear
//! probe on every layer's mean-pooled tokens, train images against the evaluation split.

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::images::{ImageSet, LoadOptions};
use crate::error::Result;
use crate::eval::features::{layer_features, Pass};
use crate::eval::knn::{knn, KnnResult};
use crate::eval::probe::{fit_probe, Features, ProbeConfig, ProbeResult};
use crate::model::vit::{Pool, Vit, VitConfig};

/// How to evaluate: which data, how many images, the probes' training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    pub data: PathBuf,
    /// The split evaluated on (queries of the k-NN, test set of the probes).
    pub eval_split: String,
    /// Train images for the k-NN bank and probe training (spread over the split).
    pub train_images: usize,
    pub val_images: usize,
    pub crop_ratio: f64,
    pub batch: usize,
    pub probe: ProbeConfig,
    pub loader: LoadOptions,
    /// When `eval_split` is the test split: the share of the train split held out to choose
    /// the best probe layer on (not in the probes' training rows).
    #[serde(default)]
    pub select_fraction: Option<f64>,
}

/// Where an evaluated encoder came from (recorded in `results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderSource {
    /// `random`, `beit` or `splitmask`.
    pub init: String,
    pub run: Option<PathBuf>,
    pub vocab: Option<PathBuf>,
    pub pretrain_steps: u64,
    /// The pre-training run's seed (the init seed for random-init encoders).
    pub seed: u64,
    /// What the encoder was pre-trained on: the dataset, and its share where a subset
    /// (`imagenette 10%`); none for random init.
    pub pretrain_data: Option<String>,
}

/// An encoder to evaluate, with its preset name and provenance.
#[derive(Debug)]
pub struct FrozenEncoder<B: Backend> {
    pub model: String,
    pub vit: VitConfig,
    pub encoder: Vit<B>,
    /// How its tokens are pooled into features (its method's).
    pub pool: Pool,
    pub source: EncoderSource,
}

impl<B: Backend> FrozenEncoder<B> {
    /// An untrained encoder of `vit` drawn from `seed` (the random-init baseline).
    pub fn random(model: &str, vit: &VitConfig, seed: u64, device: &B::Device) -> Self {
        FrozenEncoder {
            model: model.to_string(),
            vit: vit.clone(),
            encoder: vit.init(&mut ChaCha8Rng::seed_from_u64(seed), device),
            pool: Pool::MeanPatches,
            source: EncoderSource {
                init: "random".into(),
                run: None,
                vocab: None,
                pretrain_steps: 0,
                seed,
                pretrain_data: None,
            },
        }
    }
}

/// `results.json` of `trainer eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    pub kind: String,
    pub dataset: String,
    pub model: String,
    /// `random`, `beit` or `splitmask`.
    pub init: String,
    pub run: Option<PathBuf>,
    pub vocab: Option<PathBuf>,
    pub pretrain_steps: u64,
    /// The pre-training run's seed (the init seed for random-init encoders).
    #[serde(default)]
    pub seed: u64,
    /// The split evaluated on.
    #[serde(default = "val")]
    pub eval_split: String,
    /// What the encoder was pre-trained on (the report's Table 1 columns).
    #[serde(default)]
    pub pretrain_data: Option<String>,
    pub knn: KnnResult,
    /// One probe per block output, then the final norm's.
    pub probes: Vec<ProbeResult>,
    /// The probe of the layer with the best top-1 on `select_split`.
    pub best_probe: ProbeResult,
    /// Where the best layer was chosen: the evaluation split, or `train-holdout` when that is
    /// `test`.
    #[serde(default = "val")]
    pub select_split: String,
    pub seconds: f64,
    /// Images per second of the feature passes (every layer of every image evaluated).
    #[serde(default)]
    pub feature_images_per_s: Option<f64>,
}

fn val() -> String {
    "val".into()
}

/// k-NN and per-layer probes of `frozen` on `spec.data`.
pub fn evaluate<B: Backend>(spec: &EvalSpec, frozen: &FrozenEncoder<B>, device: &B::Device) -> Result<EvalResults> {
    let started = Instant::now();
    let mut train = ImageSet::load_with(&spec.data, "train", &spec.loader)?;
    let mut select = spec.select_fraction.map(|f| train.hold_out(f));
    let mut val = ImageSet::load_with(&spec.data, &spec.eval_split, &spec.loader)?;
    let classes = train.class_names.len().max(1);
    for set in [Some(&mut train), Some(&mut val), select.as_mut()]
        .into_iter()
        .flatten()
    {
        set.keep_labeled(classes);
    }
    let vit = &frozen.vit;
    let layers = |set: &ImageSet, n: usize, what: &str| {
        let indices = set.spread(n);
        let pass = Pass {
            set,
            indices: &indices,
            image_size: vit.image_size,
            crop_ratio: spec.crop_ratio,
            batch: spec.batch,
            what,
        };
        layer_features(&frozen.encoder, pass, frozen.pool, device)
    };
    let features_started = Instant::now();
    let (train_f, train_y) = layers(&train, spec.train_images, "train features")?;
    let (val_f, val_y) = layers(&val, spec.val_images, &format!("{} features", spec.eval_split))?;
    let select_f = match &select {
        Some(set) => Some(layers(set, spec.val_images, "held-out train features")?),
        None => None,
    };
    let featured = train_y.len() + val_y.len() + select_f.as_ref().map_or(0, |(_, y)| y.len());
    let feature_images_per_s = Some(featured as f64 / features_started.elapsed().as_secs_f64().max(1e-9));
    let dim = vit.dim;
    // k-NN on the final (normed) layer, L2-normalized as the monitor's features.
    let last = vit.depth;
    let unit = |x: &[f32]| {
        let mut x = x.to_vec();
        pipeline::vocab::kmeans::normalize_rows(&mut x, dim);
        x
    };
    let knn_result = knn(
        &unit(&train_f[last]),
        &train_y,
        &unit(&val_f[last]),
        &val_y,
        dim,
        crate::eval::knn::K,
        crate::eval::knn::TEMPERATURE,
    );
    let probes = layer_probes::<B>(
        spec,
        (&train_f, &train_y),
        (&val_f, &val_y),
        select_f.as_ref().map(|(f, y)| (f.as_slice(), y.as_slice())),
        classes,
        dim,
        device,
    );
    // The layer is a choice: made on the held-out rows when the evaluation split is `test`.
    let best_probe = *probes
        .iter()
        .max_by(|a, b| {
            a.select_top1
                .unwrap_or(a.top1)
                .total_cmp(&b.select_top1.unwrap_or(b.top1))
        })
        .expect("depth >= 1");
    let manifest = pipeline::prepare::load_manifest(&spec.data)?;
    let s = &frozen.source;
    Ok(EvalResults {
        kind: "eval".into(),
        dataset: manifest.dataset,
        model: frozen.model.clone(),
        init: s.init.clone(),
        run: s.run.clone(),
        vocab: s.vocab.clone(),
        pretrain_steps: s.pretrain_steps,
        seed: s.seed,
        eval_split: spec.eval_split.clone(),
        pretrain_data: s.pretrain_data.clone(),
        knn: knn_result,
        probes,
        best_probe,
        select_split: match select {
            Some(_) => "train-holdout".into(),
            None => spec.eval_split.clone(),
        },
        seconds: started.elapsed().as_secs_f64(),
        feature_images_per_s,
    })
}

/// Per-layer features (`depth + 1` layers) and their labels.
type Layers<'a> = (&'a [Vec<f32>], &'a [i64]);

/// One linear probe per layer, fitted on `train` and scored on the evaluation split, its own
/// train rows and, when given, the held-out rows the best layer is chosen on.
fn layer_probes<B: Backend>(
    spec: &EvalSpec,
    (train_f, train_y): Layers,
    (val_f, val_y): Layers,
    select: Option<Layers>,
    classes: usize,
    dim: usize,
    device: &B::Device,
) -> Vec<ProbeResult> {
    let bar = crate::progress::pass("linear probes", train_f.len() as u64, "layers");
    let probes = (0..train_f.len())
        .map(|l| {
            bar.inc(1);
            let train = Features {
                x: &train_f[l],
                y: train_y,
            };
            let probe = fit_probe::<B>(&train, dim, classes, &spec.probe, device);
            let (top1, top5) = probe.accuracy::<B>(Features { x: &val_f[l], y: val_y }, device);
            let select_top1 = select.map(|(x, y)| probe.accuracy::<B>(Features { x: &x[l], y }, device).0);
            ProbeResult {
                layer: l + 1,
                top1,
                top5,
                train_top1: probe.accuracy::<B>(train, device).0,
                select_top1,
            }
        })
        .collect();
    bar.finish_and_clear();
    probes
}
