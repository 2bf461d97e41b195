//! Export of a pre-trained encoder as a timm `VisionTransformer` state dict (safetensors):
//! timm names (`norm1.weight` for burn's `norm1.gamma`), PyTorch layouts (linear weights
//! `[out, in]`, the patch embedding as a `[dim, 3, p, p]` convolution). The pre-training heads
//! and decoder are not part of it; timm's classifier `head.*` is left for fine-tuning.

use std::path::Path;

use burn::prelude::*;

use crate::backend::CpuBackend;
use crate::error::Result;
use crate::model::vit::{Mode, Vit};
use crate::train::checkpoint::{named_params, save_tensors, NamedTensors};
use crate::train::pretrained::run_encoder;

/// `[rows, cols]` row-major to `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// The encoder's parameters under timm's names and layouts.
pub fn timm_state_dict<B: Backend>(encoder: &Vit<B>, patch_size: usize) -> NamedTensors {
    named_params(encoder)
        .into_iter()
        .map(|(name, (shape, values))| {
            let name = name.replace(".gamma", ".weight").replace(".beta", ".bias");
            // Layer scale keeps timm's own `ls1.gamma` name.
            let name = name
                .replace(".ls1.weight", ".ls1.gamma")
                .replace(".ls2.weight", ".ls2.gamma");
            if shape.len() == 2 && name.ends_with(".weight") {
                let (d_in, d_out) = (shape[0], shape[1]);
                let values = transpose(&values, d_in, d_out);
                let shape = if name == "patch_embed.proj.weight" {
                    vec![d_out, 3, patch_size, patch_size]
                } else {
                    vec![d_out, d_in]
                };
                (name, (shape, values))
            } else {
                (name, (shape, values))
            }
        })
        .collect()
}

/// Reads a pre-training run's checkpoint and writes its encoder as a timm safetensors file.
/// Returns the number of tensors written.
pub fn export_run(run: &Path, out: &Path) -> Result<usize> {
    let (cfg, vit) = run_encoder::<CpuBackend>(run, &Default::default())?;
    let dict = timm_state_dict(&vit, cfg.vit.patch_size);
    let n = dict.len();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "splitmask.source".to_string(),
        serde_json::json!({
            "method": cfg.method.name(),
            "dataset": cfg.run.dataset,
            "vit": cfg.vit,
        })
        .to_string(),
    );
    save_tensors(out, &dict, Some(meta))?;
    Ok(n)
}

/// Writes a reference pair for checking an export in PyTorch: a seeded `input`
/// `[2, 3, size, size]` (normalized-image scale) and our encoder's `features` on it
/// `[2, 1 + patches, dim]` (timm's `forward_features`). `tests/python/timm_check.py` loads the
/// export into `timm` and compares.
pub fn write_check(run: &Path, out: &Path) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let device = Default::default();
    let (cfg, vit) = run_encoder::<CpuBackend>(run, &device)?;
    let s = cfg.vit.image_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let input: Vec<f32> = (0..2 * 3 * s * s).map(|_| rng.random_range(-2.0..2.0f32)).collect();
    let x = Tensor::<CpuBackend, 4>::from_data(TensorData::new(input.clone(), [2, 3, s, s]), &device);
    let features = vit.forward(x, Mode::Eval);
    let shape = features.dims().to_vec();
    let mut tensors = NamedTensors::new();
    tensors.insert("input".into(), (vec![2, 3, s, s], input));
    tensors.insert("features".into(), (shape, features.into_data().iter::<f32>().collect()));
    save_tensors(out, &tensors, None)
}

/// An encoder of the configured shape whose values are about to be replaced.
#[cfg(test)]
fn skeleton<B: Backend>(cfg: &crate::model::vit::VitConfig, device: &B::Device) -> Vit<B> {
    use rand::SeedableRng;
    cfg.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vit::VitConfig;
    use crate::TestBackend;
    use std::collections::BTreeMap;

    /// timm's state dict names and shapes from `../shared/fixtures/timm`, without the classifier.
    fn timm_keys(model: &str) -> Option<BTreeMap<String, Vec<usize>>> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../shared/fixtures/timm/{model}.keys.json"));
        let text = std::fs::read_to_string(&path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let dict: BTreeMap<String, Vec<usize>> = serde_json::from_value(v["state_dict"].clone()).unwrap();
        Some(dict.into_iter().filter(|(k, _)| !k.starts_with("head.")).collect())
    }

    #[test]
    fn names_and_shapes_match_timm() {
        let device = Default::default();
        for (model, cfg) in [
            ("vit_tiny_patch16_224", VitConfig::tiny()),
            ("vit_small_patch16_224", VitConfig::small()),
            ("vit_base_patch16_224", VitConfig::base()),
        ] {
            let Some(expected) = timm_keys(model) else {
                eprintln!("SKIP: ../shared/fixtures/timm/{model}.keys.json is absent");
                return;
            };
            // timm's ViTs have no layer scale by default.
            let vit: Vit<TestBackend> = skeleton(&cfg.with_layer_scale_init(None), &device);
            let got: BTreeMap<String, Vec<usize>> = timm_state_dict(&vit, 16)
                .into_iter()
                .map(|(k, (s, _))| (k, s))
                .collect();
            assert_eq!(got, expected, "{model}");
        }
    }

    #[test]
    fn weights_are_transposed_to_pytorch_layout() {
        let device = Default::default();
        let cfg = VitConfig::cpu_tiny().with_dim(8).with_depth(1).with_heads(2);
        let vit: Vit<TestBackend> = skeleton(&cfg, &device);
        let ours = named_params(&vit);
        let timm = timm_state_dict(&vit, 8);
        // fc1: ours [in = 8, out = 32]; timm [out, in], so timm[o][i] = ours[i][o].
        let (_, a) = &ours["blocks.0.mlp.fc1.weight"];
        let (shape, b) = &timm["blocks.0.mlp.fc1.weight"];
        assert_eq!(shape, &vec![32, 8]);
        assert_eq!(b[5 * 8 + 3], a[3 * 32 + 5]);
        // Patch embedding: ours [3 * 8 * 8, dim] over (c, y, x); timm conv [dim, 3, 8, 8].
        let (_, a) = &ours["patch_embed.proj.weight"];
        let (shape, b) = &timm["patch_embed.proj.weight"];
        assert_eq!(shape, &vec![8, 3, 8, 8]);
        let (o, c, y, x) = (6, 2, 1, 7);
        assert_eq!(b[((o * 3 + c) * 8 + y) * 8 + x], a[((c * 8 + y) * 8 + x) * 8 + o]);
        assert!(timm.contains_key("blocks.0.ls1.gamma") && timm.contains_key("norm.bias"));
    }
}
