//! The encoder of a finished run, loaded strictly: every encoder parameter must be in the
//! checkpoint with its shape, and every other key must be a head fine-tuning drops (BEiT's mask
//! token and token head, SplitMask's and MAE's decoders; a fine-tuned classifier's head). A
//! fine-tuning run may also start from another fine-tuning run or a timm folder. Fine-tuning,
//! `trainer eval` and the timm export all load through here.

use std::path::Path;

use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{CheckpointError, InitError, Result};
use crate::eval::frozen::{EncoderSource, FrozenEncoder};
use crate::model::classifier::Classifier;
use crate::model::vit::{Vit, VitConfig};
use crate::train::config::{init_paths, load_config, InitKind, InitSource, PretrainConfig};
use crate::train::tensor_file::{load_exactly, load_params, load_tensors, split_optimizer, NamedTensors};
use crate::train::timm_import::encoder_from_timm;

/// A fine-tuned classifier's own parameters, which another fine-tuning run replaces.
const CLASSIFIER_ONLY: [&str; 2] = ["head.", "fc_norm."];

/// A pre-training run's encoder weights (`encoder.*`, prefix kept), checked strictly: every
/// other key must be a pre-training head, and the run's encoder must have `vit`'s shape.
/// `init` is a run folder (its last checkpoint) or a checkpoint file in one.
pub fn pretrained_encoder(init: &Path, vit: &VitConfig) -> Result<(PretrainConfig, NamedTensors)> {
    let (run, file) = init_paths(init);
    let cfg = load_config(&run)?;
    let same_shape = |v: &VitConfig| v.clone().with_drop_path(vit.drop_path);
    if same_shape(&cfg.vit) != *vit {
        return Err(InitError::Architecture {
            run,
            found: describe(&cfg.vit),
            expected: describe(vit),
            preset: cfg.model.clone(),
        }
        .into());
    }
    let encoder = encoder_tensors_dropping(&file, cfg.method.traits().heads)?;
    Ok((cfg, encoder))
}

/// The `encoder.*` tensors of a checkpoint whose other keys all start with one of `heads`.
fn encoder_tensors_dropping(path: &Path, heads: &[&str]) -> Result<NamedTensors> {
    let path = path.to_path_buf();
    let (all, _) = load_tensors(&path)?;
    let (params, _optimizer) = split_optimizer(all);
    let (encoder, rest): (NamedTensors, NamedTensors) =
        params.into_iter().partition(|(k, _)| k.starts_with("encoder."));
    let stray: Vec<String> = rest
        .keys()
        .filter(|k| !heads.iter().any(|p| k.as_str() == *p || k.starts_with(p)))
        .cloned()
        .collect();
    if !stray.is_empty() {
        return Err(InitError::UnexpectedKeys { path, keys: stray }.into());
    }
    Ok(encoder)
}

/// Loads `encoder.*` tensors into the classifier: every encoder parameter must be present with
/// its shape; only `fc_norm` and `head` start fresh.
pub fn load_encoder<B: Backend>(
    model: Classifier<B>,
    encoder: &NamedTensors,
    file: &Path,
    device: &B::Device,
) -> Result<Classifier<B>> {
    load_encoder_with(model, encoder, file, false, device)
}

/// [`load_encoder`], the encoder's final norm allowed to be absent when `absent_norm`.
fn load_encoder_with<B: Backend>(
    model: Classifier<B>,
    encoder: &NamedTensors,
    file: &Path,
    absent_norm: bool,
    device: &B::Device,
) -> Result<Classifier<B>> {
    let fresh = |k: &str| {
        k.starts_with("fc_norm.") || k.starts_with("head.") || (absent_norm && k.starts_with("encoder.norm."))
    };
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

/// The classifier with `init`'s encoder (its own head and `fc_norm` start fresh): a
/// pre-training run's, a fine-tuning run's (supervised transfer to another class count) or a
/// timm folder's, every encoder parameter present with the shape of `vit`.
pub fn init_classifier<B: Backend>(
    model: Classifier<B>,
    init: &InitSource,
    vit: &VitConfig,
    device: &B::Device,
) -> Result<Classifier<B>> {
    let file = init.checkpoint.clone().unwrap_or_else(|| init_paths(&init.run).1);
    let encoder = match init.kind {
        InitKind::Pretrain => pretrained_encoder(&file, vit)?.1,
        InitKind::Finetune => encoder_tensors_dropping(&file, &CLASSIFIER_ONLY)?,
        InitKind::Timm => encoder_from_timm(load_tensors(&file)?.0, &file)?,
    };
    // A timm classifier has no final norm (its `fc_norm` replaces it); the classifier does
    // not use it either.
    let absent_norm = init.kind == InitKind::Timm && !encoder.contains_key("encoder.norm.gamma");
    load_encoder_with(model, &encoder, &file, absent_norm, device)
}

/// A pre-training run's configuration and its encoder with the checkpoint's weights; `init`
/// is a run folder (its last checkpoint) or a checkpoint file in one.
pub fn run_encoder<B: Backend>(init: &Path, device: &B::Device) -> Result<(PretrainConfig, Vit<B>)> {
    let (run, file) = init_paths(init);
    let cfg = load_config(&run)?;
    let stripped: NamedTensors = encoder_tensors_dropping(&file, cfg.method.traits().heads)?
        .into_iter()
        .map(|(k, v)| (k["encoder.".len()..].to_string(), v))
        .collect();
    // The skeleton's values are all replaced.
    let skeleton: Vit<B> = cfg.vit.init(&mut ChaCha8Rng::seed_from_u64(0), device);
    let encoder = load_exactly(skeleton, &stripped, &file, device)?;
    Ok((cfg, encoder))
}

/// A pre-training run's encoder with its provenance, for frozen-encoder evaluation.
pub fn frozen_encoder<B: Backend>(init: &Path, device: &B::Device) -> Result<FrozenEncoder<B>> {
    let (cfg, encoder) = run_encoder(init, device)?;
    Ok(FrozenEncoder {
        model: cfg.model.clone(),
        vit: cfg.vit.clone(),
        encoder,
        pool: cfg.method.traits().pool,
        source: EncoderSource {
            init: cfg.method.name().to_string(),
            run: Some(init.to_path_buf()),
            vocab: cfg.vocab.clone(),
            pretrain_steps: cfg.schedule.total_steps,
            seed: cfg.run.seed,
            pretrain_data: Some(cfg.data_label()),
        },
    })
}

fn describe(v: &VitConfig) -> String {
    format!(
        "{} px / {} px patches, width {}, depth {}, {} heads, mlp x{}, layer scale {:?}, sin-cos pos {}",
        v.image_size, v.patch_size, v.dim, v.depth, v.heads, v.mlp_ratio, v.layer_scale_init, v.sinusoidal_pos
    )
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use crate::model::objective::test_support::tiny_vit;
    use crate::train::tensor_file::named_params;

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
}
