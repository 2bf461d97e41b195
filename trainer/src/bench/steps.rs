//! Step throughput on synthetic data, for comparing backends and devices with the PyTorch
//! reference (`bench/gpu/`). A timed step is what a training step does on the device: upload
//! of normalized images, tokenization, forward, backward, global gradient norm, AdamW.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::augment::MultiCrop;
use crate::error::ConfigError;
use crate::model::device_tokenizer::DeviceTokenizer;
use crate::model::dino::DinoConfig;
use crate::model::mae::MaeConfig;
use crate::model::masking::MaskSpec;
use crate::model::method::{with_method, Method, MethodOptions, WithMethod};
use crate::model::objective::{MethodSpec, MimBatch, Negatives, Objective};
use crate::model::vit::{Mode, VitConfig};
use crate::seed::mix;
use crate::train::optim::{clip_scale, global_grad_norm, AdamW, AdamWSettings};

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// `burn`; the command line adds the backend (`burn-tch-cpu-f32`).
    pub impl_name: String,
    pub method: Method,
    pub model: String,
    pub batch: usize,
    pub steps: usize,
    /// The first step (kernel compilation and autotuning on GPUs).
    pub first_step_s: f64,
    pub step_ms: f64,
    pub images_per_s: f64,
    pub final_loss: f64,
}

/// `trainer bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "splitmask")]
    pub method: Method,
    #[arg(long, default_value = "small")]
    pub model: String,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Untimed steps first (kernel compilation and autotuning on GPUs).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Stochastic depth rate of the last block instead of the preset's (the PyTorch reference
    /// has none; `make bench-train` passes 0 so both sides run the same model).
    #[arg(long)]
    pub drop_path: Option<f64>,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
}

impl BenchArgs {
    pub fn resolve(&self) -> Result<BenchSpec, ConfigError> {
        let mut vit = VitConfig::named(&self.model)?;
        if let Some(rate) = self.drop_path {
            vit = vit.with_drop_path(rate);
            vit.validate()
                .map_err(|why| ConfigError::invalid("drop-path", rate.to_string(), why))?;
        }
        Ok(BenchSpec {
            model_name: self.model.clone(),
            vit,
            method: self.method,
            batch: self.batch_size,
            vocab: self.vocab_size,
            warmup: self.warmup,
            steps: self.steps,
        })
    }
}

/// What to time.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub model_name: String,
    pub vit: VitConfig,
    pub method: Method,
    pub batch: usize,
    pub vocab: usize,
    /// Untimed steps first.
    pub warmup: usize,
    pub steps: usize,
}

/// Times `spec.steps` training steps after `spec.warmup` untimed ones.
pub fn bench_steps<B: AutodiffBackend>(spec: &BenchSpec, device: &B::Device) -> BenchResult {
    let options = MethodOptions {
        mae: MaeConfig::for_vit(&spec.vit),
        dino: DinoConfig::for_vit(&spec.vit),
        ..MethodOptions::default()
    };
    with_method::<B, _>(spec.method, &options, Bench { spec, device })
}

/// A benchmark waiting for its method's model type.
struct Bench<'a, B: AutodiffBackend> {
    spec: &'a BenchSpec,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> WithMethod<B> for Bench<'_, B> {
    type Output = BenchResult;

    fn run<M>(self, options: &M::Options) -> BenchResult
    where
        M: Objective<B> + AutodiffModule<B>,
        M::InnerModule: Objective<B::InnerBackend, Options = M::Options>,
    {
        let patches = self.spec.vit.num_patches();
        let method = MethodSpec {
            vit: &self.spec.vit,
            vocab_size: self.spec.vocab,
            masking: MaskSpec::block_for_grid(patches),
            mask_count: M::paper_mask_count(patches),
            steps: (self.spec.warmup + self.spec.steps) as u64,
            options,
        };
        let model = M::build(&method, &mut ChaCha8Rng::seed_from_u64(0), self.device);
        run::<B, M>(model, &method, self.spec, self.device)
    }
}

fn run<B: AutodiffBackend, M: AutodiffModule<B> + Objective<B>>(
    mut model: M,
    method_spec: &MethodSpec<'_, M::Options>,
    spec: &BenchSpec,
    device: &B::Device,
) -> BenchResult {
    let BenchSpec {
        model_name,
        vit,
        method,
        batch,
        vocab,
        warmup,
        steps,
    } = spec.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let s = vit.image_size;
    let vocabulary = random_vocabulary(&vit, vocab, &mut rng);
    let tokenizer = DeviceTokenizer::<B>::new(&vocabulary, vit.patch_size, device).expect("8 px tokens");
    let images: Vec<f32> = (0..batch * 3 * s * s).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    // DINO's multi-crop beside `images`: a second global crop and 8 local ones.
    let view_sizes: Vec<usize> = match method {
        Method::Dino => {
            let sizes = MultiCrop::dino(s as u32, vit.patch_size as u32, 8).view_sizes(s as u32);
            sizes.into_iter().skip(1).map(|v| v as usize).collect()
        }
        _ => Vec::new(),
    };
    let mut opt = AdamW::<B>::new(AdamWSettings::default());
    let (mut first, mut timed_start, mut loss) = (0.0, Instant::now(), 0.0);
    for step in 0..warmup + steps {
        if step == warmup {
            timed_start = Instant::now();
        }
        let t0 = Instant::now();
        let x = Tensor::<B, 4>::from_data(TensorData::new(images.clone(), [batch, 3, s, s]), device);
        let targets = M::TOKEN_TARGETS.then(|| tokenizer.tokens(x.clone()));
        let mask_seed: u64 = rng.random();
        let masks = M::draw_masks(
            method_spec,
            batch,
            &|j| ChaCha8Rng::seed_from_u64(mix(mask_seed, j as u64, 0)),
            device,
        );
        let views = view_sizes
            .iter()
            .map(|&v| {
                Tensor::<B, 4>::from_data(
                    TensorData::new(images[..batch * 3 * v * v].to_vec(), [batch, 3, v, v]),
                    device,
                )
            })
            .collect();
        let b = MimBatch {
            images: x,
            targets,
            masks,
            views,
            step: step as u64,
            negatives: Negatives::Local,
        };
        let out = model.forward(&b, Mode::train(step as u64));
        let l = out.loss.clone();
        let mut grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let norm = global_grad_norm::<B, M>(&model, &grads);
        model = opt.step(model, &mut grads, 1e-4, clip_scale(norm, Some(3.0)), &|_| 1.0);
        let stats = out.stats.map(|t| {
            t.into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .expect("converted to f64")
        });
        model = model.after_update(step as u64, stats.as_deref());
        if step == 0 || step + 1 == warmup + steps {
            loss = l.into_scalar().elem::<f64>();
        }
        if step == 0 {
            first = t0.elapsed().as_secs_f64();
        }
    }
    let secs = timed_start.elapsed().as_secs_f64();
    BenchResult {
        impl_name: "burn".into(),
        method,
        model: model_name,
        batch,
        steps,
        first_step_s: first,
        step_ms: secs * 1e3 / steps.max(1) as f64,
        images_per_s: (batch * steps) as f64 / secs,
        final_loss: loss,
    }
}

/// A random-projection vocabulary of `size` entries with the reference's tokenizer geometry:
/// patches of half the ViT patch side on the 2x box-mean view (the paper's 8x8 patches of the
/// 112 view for 16 px ViTs; 4x4 of the 32 view for the 64 px CPU presets, where training on
/// prepared data would tokenize 8x8 patches of the 64 view, four times the tokenizer GEMM).
fn random_vocabulary(vit: &VitConfig, size: usize, rng: &mut ChaCha8Rng) -> pipeline::vocab::tokenizer::Vocabulary {
    let (s, t) = (vit.image_size, vit.patch_size / 2);
    let d = 3 * t * t;
    let mut e: Vec<f32> = (0..size * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    pipeline::vocab::kmeans::normalize_rows(&mut e, d);
    pipeline::vocab::tokenizer::Vocabulary {
        header: schemas::VocabHeader {
            version: schemas::vocab::VOCAB_VERSION,
            kind: schemas::VocabKind::RandomProjection,
            seed: 0,
            size,
            dim: d,
            preprocessing: schemas::Preprocessing {
                view_size: (s / 2) as u32,
                patch_size: t as u32,
                source_view_size: s as u32,
                ..schemas::Preprocessing::paper()
            },
            source_manifest_sha256: None,
            kmeans: None,
        },
        embeddings: e,
    }
}
