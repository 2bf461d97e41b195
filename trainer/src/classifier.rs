//! The fine-tuning model: the ViT encoder, mean pooling of the patch tokens, a LayerNorm
//! (`fc_norm`) and a linear head (BEiT's classifier), plus the two rules fine-tuning needs from
//! parameter paths: layer-wise learning-rate decay, and strict loading of a pre-trained
//! encoder where only the pre-training heads may be left behind.

use std::path::{Path, PathBuf};

use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use rand::Rng;

use crate::checkpoint::{load_params, load_tensors, split_optimizer, CheckpointError, NamedTensors};
use crate::config::{load_config, ConfigError, PretrainConfig};
use crate::init::linear;
use crate::vit::{Mode, Vit, VitConfig, LN_EPS};

/// BEiT scales the head's trunc-normal(0.02) init by 0.001, so fine-tuning starts near uniform
/// predictions and the first updates do not wreck the pre-trained features.
pub const HEAD_INIT_SCALE: f64 = 0.001;

/// Parameters of the pre-training models that fine-tuning drops (BEiT: mask token and token
/// head; SplitMask: also the decoder). Anything else in a checkpoint must load.
pub const PRETRAIN_ONLY: [&str; 5] = ["mask_token", "decoder_pos", "head.", "decoder_blocks.", "decoder_norm."];

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: keys that are neither encoder parameters nor pre-training heads: {keys:?}")]
    UnexpectedKeys { path: PathBuf, keys: Vec<String> },
    #[error("{run}: the pre-trained encoder is {found}; the fine-tuning model is {expected} (use --model {preset} or the run's sizes)")]
    Architecture {
        run: PathBuf,
        found: String,
        expected: String,
        preset: String,
    },
}

#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    pub encoder: Vit<B>,
    pub fc_norm: LayerNorm<B>,
    /// `[dim, classes]`
    pub head: Linear<B>,
}

impl<B: Backend> Classifier<B> {
    pub fn new<R: Rng>(vit: &VitConfig, classes: usize, rng: &mut R, device: &B::Device) -> Self {
        Classifier {
            encoder: vit.init(rng, device),
            fc_norm: LayerNormConfig::new(vit.dim).with_epsilon(LN_EPS).init(device),
            head: linear(rng, vit.dim, classes, HEAD_INIT_SCALE, device),
        }
    }

    /// Class logits.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    /// - output: `[batch, classes]`
    pub fn forward(&self, images: Tensor<B, 4>, mode: Mode) -> Tensor<B, 2> {
        let h = self.encoder.forward(images, mode);
        let [b, n1, d] = h.dims();
        let pooled = h.slice([0..b, 1..n1, 0..d]).mean_dim(1).reshape([b, d]); // [batch, dim]
        self.head.forward(self.fc_norm.forward(pooled))
    }
}

/// Depth of a parameter for layer-wise decay: 0 for the embeddings, `i + 1` for block `i`,
/// `depth + 1` for the final norms and the head (BEiT's `get_layer_id_for_vit`).
pub fn layer_id(path: &str, depth: usize) -> usize {
    let Some(rest) = path.strip_prefix("encoder.") else {
        return depth + 1;
    };
    if let Some(block) = rest.strip_prefix("blocks.") {
        let i: usize = block.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(depth);
        return i + 1;
    }
    if rest.starts_with("norm.") {
        depth + 1
    } else {
        0
    }
}

/// Learning-rate multiplier `decay^(depth + 1 - layer_id)`: the head trains at the full rate,
/// each block below at `decay` times the one above.
pub fn layer_decay_scale(path: &str, depth: usize, decay: f64) -> f64 {
    decay.powi((depth + 1 - layer_id(path, depth)) as i32)
}

/// A pre-training run's encoder weights (`encoder.*`, prefix kept), checked strictly: every
/// other key must be a pre-training head, and the run's encoder must have `vit`'s shape.
pub fn pretrained_encoder(run: &Path, vit: &VitConfig) -> Result<(PretrainConfig, NamedTensors), InitError> {
    let cfg = load_config(run)?;
    let same_shape = |v: &VitConfig| {
        let mut v = v.clone();
        v.drop_path = vit.drop_path;
        v
    };
    if same_shape(&cfg.vit) != *vit {
        return Err(InitError::Architecture {
            run: run.to_path_buf(),
            found: describe(&cfg.vit),
            expected: describe(vit),
            preset: cfg.model.clone(),
        });
    }
    let path = cfg.checkpoint_path();
    let (all, _) = load_tensors(&path)?;
    let (params, _optimizer) = split_optimizer(all);
    let (encoder, rest): (NamedTensors, NamedTensors) =
        params.into_iter().partition(|(k, _)| k.starts_with("encoder."));
    let stray: Vec<String> = rest
        .keys()
        .filter(|k| !PRETRAIN_ONLY.iter().any(|p| k.as_str() == *p || k.starts_with(p)))
        .cloned()
        .collect();
    if !stray.is_empty() {
        return Err(InitError::UnexpectedKeys { path, keys: stray });
    }
    Ok((cfg, encoder))
}

/// Loads `encoder.*` tensors into the classifier: every encoder parameter must be present with
/// its shape; only `fc_norm` and `head` start fresh.
pub fn load_encoder<B: Backend>(
    model: Classifier<B>,
    encoder: &NamedTensors,
    file: &Path,
    device: &B::Device,
) -> Result<Classifier<B>, InitError> {
    let fresh = |k: &str| k.starts_with("fc_norm.") || k.starts_with("head.");
    let (model, unexpected) = load_params(model, encoder, &fresh, file, device)?;
    if !unexpected.is_empty() {
        return Err(CheckpointError::Unexpected {
            path: file.to_path_buf(),
            unexpected,
        }
        .into());
    }
    Ok(model)
}

fn describe(v: &VitConfig) -> String {
    format!(
        "{} px / {} px patches, width {}, depth {}, {} heads, mlp x{}, layer scale {:?}, sin-cos pos {}",
        v.image_size, v.patch_size, v.dim, v.depth, v.heads, v.mlp_ratio, v.layer_scale_init, v.sinusoidal_pos
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::named_params;
    use crate::objective::test_support::tiny_vit;
    use crate::TestBackend;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn layer_decay_follows_depth() {
        let d = 4;
        let s = |p: &str| layer_decay_scale(p, d, 0.5);
        assert_eq!(s("head.weight"), 1.0);
        assert_eq!(s("fc_norm.gamma"), 1.0);
        assert_eq!(s("encoder.norm.gamma"), 1.0);
        assert_eq!(s("encoder.blocks.3.attn.qkv.weight"), 0.5);
        assert_eq!(s("encoder.blocks.0.mlp.fc1.bias"), 0.5f64.powi(4));
        for p in [
            "encoder.cls_token",
            "encoder.pos_embed",
            "encoder.patch_embed.proj.weight",
        ] {
            assert_eq!(s(p), 0.5f64.powi(5), "{p}");
        }
        // Block 10 of 12 is not block 1.
        assert_eq!(layer_id("encoder.blocks.10.norm1.beta", 12), 11);
    }

    #[test]
    fn encoder_loads_strictly() {
        let device = Default::default();
        let vit = tiny_vit();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let source = Classifier::<TestBackend>::new(&vit, 5, &mut rng, &device);
        let encoder: NamedTensors = named_params(&source)
            .into_iter()
            .filter(|(k, _)| k.starts_with("encoder."))
            .collect();
        let fresh = || Classifier::<TestBackend>::new(&vit, 7, &mut ChaCha8Rng::seed_from_u64(1), &device);
        let file = Path::new("pretrained.safetensors");
        let loaded = load_encoder(fresh(), &encoder, file, &device).unwrap();
        let got = named_params(&loaded);
        assert_eq!(got["encoder.pos_embed"], encoder["encoder.pos_embed"]);
        assert_eq!(got["head.weight"].0, vec![vit.dim, 7]);
        // A missing encoder parameter is an error naming it.
        let mut missing = encoder.clone();
        missing.remove("encoder.blocks.0.attn.proj.bias");
        let err = load_encoder(fresh(), &missing, file, &device).unwrap_err().to_string();
        assert!(
            err.contains("encoder.blocks.0.attn.proj.bias") && err.contains("pretrained.safetensors"),
            "{err}"
        );
        // So is an encoder key the model lacks.
        let mut extra = encoder.clone();
        extra.insert("encoder.blocks.9.ls1.gamma".into(), (vec![vit.dim], vec![0.0; vit.dim]));
        let err = load_encoder(fresh(), &extra, file, &device).unwrap_err().to_string();
        assert!(err.contains("encoder.blocks.9.ls1.gamma"), "{err}");
    }

    #[test]
    fn logits_have_the_class_count() {
        let device = Default::default();
        let vit = tiny_vit();
        let m = Classifier::<TestBackend>::new(&vit, 3, &mut ChaCha8Rng::seed_from_u64(0), &device);
        let x = Tensor::<TestBackend, 4>::zeros([2, 3, vit.image_size, vit.image_size], &device);
        assert_eq!(m.forward(x, Mode::Eval).dims(), [2, 3]);
    }
}
