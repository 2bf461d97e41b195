//! A timm `VisionTransformer` as an init: its `config.json`'s `model_args` as a [`VitConfig`],
//! and its state dict under our names and layouts (the inverse of `export::timm_state_dict`).
//! So ImageNet-supervised weights a user has, or another run's export, can start fine-tuning.

use std::path::Path;

use crate::error::{InitError, Result};
use crate::model::vit::VitConfig;
use crate::train::tensor_file::NamedTensors;

/// The export folder's weights (timm's Hugging Face Hub layout).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The export folder's timm configuration.
pub const TIMM_CONFIG_FILE: &str = "config.json";

/// Largest sizes a timm config may ask for: ViT-g is 1408 wide and 40 deep.
const MAX_DIM: usize = 4096;
const MAX_DEPTH: usize = 64;

/// Whether a run folder's `config.json` is a timm one.
pub fn is_timm_config(config: &serde_json::Value) -> bool {
    config.get("architecture").is_some() && config.get("model_args").is_some()
}

/// The ViT a timm `config.json` describes (its `model_args`; the drop-path rate is the
/// fine-tuning recipe's). Only the ViTs this project builds are accepted: class token, qkv
/// bias, learned positions.
pub fn vit_from_timm(config: &serde_json::Value, path: &Path) -> Result<VitConfig> {
    let bad = |message: String| InitError::Timm {
        path: path.to_path_buf(),
        message,
    };
    let args = &config["model_args"];
    let size = |key: &str, default: Option<usize>, max: usize| -> Result<usize> {
        let v = match args.get(key) {
            Some(v) => v.as_u64().map(|v| v as usize),
            None => default,
        };
        match v {
            Some(v) if v > 0 && v <= max => Ok(v),
            _ => Err(bad(format!("model_args.{key}: {:?} (expected 1..={max})", args.get(key))).into()),
        }
    };
    for (key, want) in [("class_token", true), ("qkv_bias", true)] {
        if args.get(key).and_then(|v| v.as_bool()).is_some_and(|v| v != want) {
            return Err(bad(format!("model_args.{key} must be {want}")).into());
        }
    }
    let mlp_ratio = args.get("mlp_ratio").map_or(Some(4.0), |v| v.as_f64());
    let layer_scale = match args.get("init_values") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_f64().ok_or_else(|| bad(format!("model_args.init_values: {v}")))?),
    };
    let vit = VitConfig::new()
        .with_image_size(size("img_size", Some(224), 4096)?)
        .with_patch_size(size("patch_size", Some(16), 64)?)
        .with_dim(size("embed_dim", None, MAX_DIM)?)
        .with_depth(size("depth", None, MAX_DEPTH)?)
        .with_heads(size("num_heads", None, MAX_DIM)?)
        .with_mlp_ratio(
            mlp_ratio
                .filter(|r| *r > 0.0 && *r <= 16.0)
                .ok_or_else(|| bad("model_args.mlp_ratio".into()))?,
        )
        .with_layer_scale_init(layer_scale);
    vit.validate().map_err(bad)?;
    Ok(vit)
}

/// A timm state dict as our classifier's encoder (`encoder.*`, burn's names and layouts): the
/// classifier head and `fc_norm` are dropped (fine-tuning makes its own), anything else that is
/// not a ViT parameter is an error naming it.
pub fn encoder_from_timm(dict: NamedTensors, path: &Path) -> Result<NamedTensors> {
    let mut out = NamedTensors::new();
    let mut stray = Vec::new();
    for (name, (shape, values)) in dict {
        if name.starts_with("head.") || name.starts_with("fc_norm.") {
            continue;
        }
        let known = ["cls_token", "pos_embed"].contains(&name.as_str())
            || name.starts_with("patch_embed.proj.")
            || name.starts_with("blocks.")
            || name.starts_with("norm.");
        if !known {
            stray.push(name);
            continue;
        }
        let (name, tensor) = from_timm_layout(&name, shape, values);
        out.insert(format!("encoder.{name}"), tensor);
    }
    if !stray.is_empty() {
        return Err(InitError::UnexpectedKeys {
            path: path.to_path_buf(),
            keys: stray,
        }
        .into());
    }
    Ok(out)
}

/// One timm tensor under burn's name and layout: layer norms' `weight`/`bias` are `gamma`/
/// `beta`, linear weights are `[in, out]`, the patch embedding's `[dim, 3, p, p]` convolution
/// is a `[3 * p * p, dim]` linear.
fn from_timm_layout(name: &str, shape: Vec<usize>, values: Vec<f32>) -> (String, (Vec<usize>, Vec<f32>)) {
    let module = name.rsplit_once('.').map_or("", |(m, _)| m);
    let is_norm = module.rsplit('.').next().is_some_and(|last| last.starts_with("norm"));
    let name = match (is_norm, name.rsplit_once('.')) {
        (true, Some((m, "weight"))) => format!("{m}.gamma"),
        (true, Some((m, "bias"))) => format!("{m}.beta"),
        _ => name.to_string(),
    };
    if !name.ends_with(".weight") || shape.len() < 2 {
        return (name, (shape, values));
    }
    // `[out, in...]`: the inputs flattened, then transposed to burn's `[in, out]`.
    let d_out = shape[0];
    let d_in: usize = shape[1..].iter().product();
    (name, (vec![d_in, d_out], transpose(&values, d_out, d_in)))
}

/// `[rows, cols]` row-major to `[cols, rows]`.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timm_names_and_layouts_become_ours() {
        let t = |shape: Vec<usize>| {
            let n = shape.iter().product();
            (shape, (0..n).map(|i| i as f32).collect::<Vec<f32>>())
        };
        let mut dict = NamedTensors::new();
        dict.insert("blocks.0.norm1.weight".into(), t(vec![4]));
        dict.insert("blocks.0.norm1.bias".into(), t(vec![4]));
        dict.insert("blocks.0.attn.qkv.weight".into(), t(vec![12, 4]));
        dict.insert("blocks.0.attn.qkv.bias".into(), t(vec![12]));
        dict.insert("blocks.0.ls1.gamma".into(), t(vec![4]));
        dict.insert("patch_embed.proj.weight".into(), t(vec![4, 3, 2, 2]));
        dict.insert("norm.weight".into(), t(vec![4]));
        dict.insert("head.weight".into(), t(vec![10, 4]));
        dict.insert("fc_norm.weight".into(), t(vec![4]));
        let ours = encoder_from_timm(dict, Path::new("m.safetensors")).unwrap();
        let keys: Vec<&str> = ours.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "encoder.blocks.0.attn.qkv.bias",
                "encoder.blocks.0.attn.qkv.weight",
                "encoder.blocks.0.ls1.gamma",
                "encoder.blocks.0.norm1.beta",
                "encoder.blocks.0.norm1.gamma",
                "encoder.norm.gamma",
                "encoder.patch_embed.proj.weight",
            ]
        );
        let (shape, v) = &ours["encoder.blocks.0.attn.qkv.weight"];
        assert_eq!(shape, &[4, 12]);
        // [out 12, in 4] -> [in 4, out 12]: element (in 1, out 2) was (out 2, in 1) = 2 * 4 + 1.
        assert_eq!(v[12 + 2], 9.0);
        assert_eq!(ours["encoder.patch_embed.proj.weight"].0, [12, 4]);
        let mut bad = NamedTensors::new();
        bad.insert("dist_token".into(), t(vec![1, 1, 4]));
        let err = encoder_from_timm(bad, Path::new("m.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dist_token") && err.contains("m.safetensors"), "{err}");
    }

    #[test]
    fn a_timm_config_gives_the_vit_and_refuses_others() {
        let cfg = serde_json::json!({"architecture": "vit_small_patch16_224", "model_args": {
            "img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4,
            "mlp_ratio": 4.0, "init_values": 0.1, "class_token": true, "qkv_bias": true}});
        assert!(is_timm_config(&cfg));
        let vit = vit_from_timm(&cfg, Path::new("c")).unwrap();
        assert_eq!(vit, VitConfig::cpu_tiny().with_drop_path(vit.drop_path));
        for (key, value) in [
            ("depth", serde_json::json!(100_000)),
            ("embed_dim", serde_json::json!(-1)),
            ("class_token", serde_json::json!(false)),
            ("num_heads", serde_json::json!(3)),
        ] {
            let mut c = cfg.clone();
            c["model_args"][key] = value;
            let err = vit_from_timm(&c, Path::new("c/config.json")).unwrap_err().to_string();
            assert!(err.contains("c/config.json"), "{key}: {err}");
        }
    }
}
