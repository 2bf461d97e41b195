//! Backbone state dicts for the frameworks that put a plain ViT in a detector or a segmenter:
//! detectron2's `ViT` (ViTDet, the standard Mask R-CNN backbone) and mmsegmentation's
//! `VisionTransformer` (under UperNet). Neither has layer-scale parameters, and both skip keys
//! they do not know with only a warning, so layer scale is folded into the linear layer before
//! it, exactly: `x + g ⊙ (W a + b) = x + (diag(g) W) a + g ⊙ b`.

use serde::{Deserialize, Serialize};

use crate::train::tensor_file::NamedTensors;

/// The names and layout an export is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// timm's `VisionTransformer` in the Hugging Face Hub folder layout (`config.json`).
    Timm,
    /// detectron2's `ViT` (ViTDet): timm names, `pos_embed` with the class position, no class
    /// token, no final norm, layer scale folded.
    Vitdet,
    /// mmsegmentation's `VisionTransformer` backbone: the names its `vit2mmseg.py` writes
    /// (`layers.N.ln1`, `attn.attn.in_proj_weight`, `ffn.layers.0.0`, ...), layer scale folded.
    Mmseg,
}

impl Layout {
    /// The key the framework's checkpoint loader reads the state dict from, which
    /// `tools/safetensors_to_pth.py` wraps it in.
    pub fn checkpoint_key(self) -> &'static str {
        match self {
            Layout::Timm => "state_dict",
            Layout::Vitdet => "model",
            Layout::Mmseg => "state_dict",
        }
    }
}

/// Multiplies row `o` of each linear layer (PyTorch `[out, in]`) and its bias by `gamma[o]`
/// and drops the `ls1` / `ls2` parameters. A dict without layer scale is returned unchanged.
pub fn fold_layer_scale(mut dict: NamedTensors) -> NamedTensors {
    let gammas: Vec<String> = dict
        .keys()
        .filter(|k| k.ends_with(".ls1.gamma") || k.ends_with(".ls2.gamma"))
        .cloned()
        .collect();
    for key in gammas {
        let (_, gamma) = dict.remove(&key).expect("listed above");
        let linear = if key.ends_with(".ls1.gamma") {
            key.replace(".ls1.gamma", ".attn.proj")
        } else {
            key.replace(".ls2.gamma", ".mlp.fc2")
        };
        if let Some((shape, w)) = dict.get_mut(&format!("{linear}.weight")) {
            let cols = shape[1];
            for (row, g) in w.chunks_exact_mut(cols).zip(&gamma) {
                row.iter_mut().for_each(|v| *v *= g);
            }
        }
        if let Some((_, b)) = dict.get_mut(&format!("{linear}.bias")) {
            b.iter_mut().zip(&gamma).for_each(|(v, g)| *v *= g);
        }
    }
    dict
}

/// detectron2's `ViT` from timm's encoder dict: folded, without `cls_token` and the final
/// `norm` (ViTDet reads the last block's tokens). `pos_embed` keeps the class position:
/// detectron2's `get_abs_pos` drops it when `pretrain_use_cls_token=True`.
pub fn vitdet_dict(timm: NamedTensors) -> NamedTensors {
    fold_layer_scale(timm)
        .into_iter()
        .filter(|(k, _)| {
            k != "cls_token" && !k.starts_with("norm.") && !k.starts_with("fc_norm.") && !k.starts_with("head.")
        })
        .collect()
}

/// mmsegmentation's `VisionTransformer` from timm's encoder dict: folded, then renamed as
/// mmsegmentation's `tools/model_converters/vit2mmseg.py` renames timm's keys.
pub fn mmseg_dict(timm: NamedTensors) -> NamedTensors {
    fold_layer_scale(timm)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("fc_norm.") && !k.starts_with("head."))
        .map(|(k, t)| (mmseg_name(&k), t))
        .collect()
}

/// One timm key under mmsegmentation's name.
fn mmseg_name(k: &str) -> String {
    if let Some(rest) = k.strip_prefix("norm.") {
        return format!("ln1.{rest}");
    }
    if k.starts_with("patch_embed.") {
        return k.replace("proj", "projection");
    }
    let Some(rest) = k.strip_prefix("blocks.") else {
        return k.to_string();
    };
    let renamed = if rest.contains("norm") {
        rest.replace("norm", "ln")
    } else if rest.contains("mlp.fc1") {
        rest.replace("mlp.fc1", "ffn.layers.0.0")
    } else if rest.contains("mlp.fc2") {
        rest.replace("mlp.fc2", "ffn.layers.1")
    } else if rest.contains("attn.qkv.") {
        rest.replace("attn.qkv.", "attn.attn.in_proj_")
    } else {
        rest.replace("attn.proj", "attn.attn.out_proj")
    };
    format!("layers.{renamed}")
}

/// The key and shape report every export prints: one `name [shape]` line per tensor.
pub fn key_report(keys: &[(String, Vec<usize>)]) -> String {
    keys.iter().map(|(k, shape)| format!("{k} {shape:?}\n")).collect()
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    use burn::prelude::*;
    use rand::{Rng, SeedableRng};

    use crate::export::timm_state_dict;
    use crate::model::vit::{Mode, Vit, VitConfig};
    use crate::train::tensor_file::{load_params, named_params};
    use crate::train::timm_import::encoder_from_timm;

    fn shapes(dict: &NamedTensors) -> BTreeMap<String, Vec<usize>> {
        dict.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect()
    }

    /// A ViT whose layer-scale gammas are random per channel (0.1 everywhere would not catch
    /// a fold along the wrong axis).
    fn scaled_vit(cfg: &VitConfig, device: &burn::tensor::Device<TestBackend>) -> Vit<TestBackend> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let vit: Vit<TestBackend> = cfg.init(&mut rng, device);
        let mut dict = named_params(&vit);
        for (k, (_, v)) in dict.iter_mut() {
            if k.contains(".ls") {
                v.iter_mut().for_each(|x| *x = rng.random_range(0.05..2.0));
            }
        }
        load_params(vit, &dict, &|_| false, Path::new("test"), device).unwrap().0
    }

    /// detectron2's `ViT` without layer scale (timm's block), loading the folded weights, gives
    /// our layer-scaled encoder's tokens: the fold is exact up to float rounding.
    #[test]
    fn folded_layer_scale_gives_the_same_features() {
        let device = Default::default();
        let cfg = VitConfig::cpu_tiny().with_depth(2).with_layer_scale_init(Some(0.1));
        let vit = scaled_vit(&cfg, &device);
        let timm = timm_state_dict(&vit, cfg.patch_size);
        let mut plain = vitdet_dict(timm.clone());
        assert!(plain.keys().all(|k| !k.contains(".ls")), "layer scale is folded away");
        // The class token and final norm, which ViTDet has no use for, to compare whole outputs.
        for k in ["cls_token", "norm.weight", "norm.bias"] {
            plain.insert(k.into(), timm[k].clone());
        }
        let ours: NamedTensors = encoder_from_timm(plain, Path::new("test"))
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k.trim_start_matches("encoder.").to_string(), t))
            .collect();
        let no_ls = cfg.clone().with_layer_scale_init(None);
        let skeleton: Vit<TestBackend> = no_ls.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(9), &device);
        let (folded, unexpected) = load_params(skeleton, &ours, &|_| false, Path::new("test"), &device).unwrap();
        assert!(unexpected.is_empty(), "{unexpected:?}");
        let s = cfg.image_size;
        let x = Tensor::<TestBackend, 4>::random([2, 3, s, s], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let want = vit.forward(x.clone(), Mode::Eval);
        let got = folded.forward(x, Mode::Eval);
        let diff = (want.clone() - got).abs().max().into_scalar().to_f32();
        let scale = want.abs().max().into_scalar().to_f32();
        assert!(diff <= 1e-5 * scale.max(1.0), "max difference {diff} (features up to {scale})");
        // And the control: dropping layer scale instead of folding it changes the features.
        let dropped: NamedTensors = encoder_from_timm(
            timm.into_iter().filter(|(k, _)| !k.contains(".ls")).collect(),
            Path::new("test"),
        )
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k.trim_start_matches("encoder.").to_string(), t))
        .collect();
        let skeleton: Vit<TestBackend> = no_ls.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(9), &device);
        let wrong = load_params(skeleton, &dropped, &|_| false, Path::new("test"), &device).unwrap().0;
        let x = Tensor::<TestBackend, 4>::random([2, 3, s, s], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let off = (vit.forward(x.clone(), Mode::Eval) - wrong.forward(x, Mode::Eval))
            .abs()
            .max()
            .into_scalar()
            .to_f32();
        assert!(off > 1e-2, "an unfolded export would be caught: {off}");
    }

    /// What detectron2's `ViT(embed_dim, depth, num_heads, mlp_ratio=4, qkv_bias=True,
    /// use_abs_pos=True, use_rel_pos=False, pretrain_img_size=224, pretrain_use_cls_token=True)`
    /// declares (detectron2/modeling/backbone/vit.py: `PatchEmbed.proj`, `pos_embed`
    /// `[1, num_patches + 1, dim]`, and per block `norm1`, `attn.qkv`, `attn.proj`, `norm2`,
    /// timm's `Mlp` `fc1` / `fc2`; no class token, no final norm).
    fn detectron2_vit_keys(dim: usize, depth: usize, patch: usize, image: usize) -> BTreeMap<String, Vec<usize>> {
        let n = (image / patch).pow(2);
        let mut k = BTreeMap::new();
        k.insert("patch_embed.proj.weight".to_string(), vec![dim, 3, patch, patch]);
        k.insert("patch_embed.proj.bias".to_string(), vec![dim]);
        k.insert("pos_embed".to_string(), vec![1, n + 1, dim]);
        for i in 0..depth {
            let b = |s: &str| format!("blocks.{i}.{s}");
            for norm in ["norm1", "norm2"] {
                k.insert(b(&format!("{norm}.weight")), vec![dim]);
                k.insert(b(&format!("{norm}.bias")), vec![dim]);
            }
            k.insert(b("attn.qkv.weight"), vec![3 * dim, dim]);
            k.insert(b("attn.qkv.bias"), vec![3 * dim]);
            k.insert(b("attn.proj.weight"), vec![dim, dim]);
            k.insert(b("attn.proj.bias"), vec![dim]);
            k.insert(b("mlp.fc1.weight"), vec![4 * dim, dim]);
            k.insert(b("mlp.fc1.bias"), vec![4 * dim]);
            k.insert(b("mlp.fc2.weight"), vec![dim, 4 * dim]);
            k.insert(b("mlp.fc2.bias"), vec![dim]);
        }
        k
    }

    #[test]
    fn vitdet_keys_and_shapes_equal_detectron2s_vit() {
        let device = Default::default();
        for cfg in [VitConfig::small(), VitConfig::base()] {
            let vit: Vit<TestBackend> = cfg.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &device);
            let got = shapes(&vitdet_dict(timm_state_dict(&vit, cfg.patch_size)));
            assert_eq!(got, detectron2_vit_keys(cfg.dim, cfg.depth, cfg.patch_size, cfg.image_size));
        }
    }

    /// mmsegmentation's `VisionTransformer(embed_dims, num_layers, num_heads, mlp_ratio=4,
    /// qkv_bias=True, with_cls_token=True, final_norm=True)`: `patch_embed.projection`,
    /// `cls_token`, `pos_embed`, per layer `ln1`, `attn.attn` (an `nn.MultiheadAttention`:
    /// `in_proj_weight` `[3 * dim, dim]`, `out_proj`), `ln2`, `ffn.layers.0.0`, `ffn.layers.1`;
    /// the final norm as `ln1`.
    #[test]
    fn mmseg_keys_and_shapes_equal_mmsegs_vision_transformer() {
        let device = Default::default();
        let cfg = VitConfig::small();
        let vit: Vit<TestBackend> = cfg.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &device);
        let timm = timm_state_dict(&vit, 16);
        let got = shapes(&mmseg_dict(timm.clone()));
        let (d, h) = (384, 1536);
        let mut want = BTreeMap::new();
        want.insert("patch_embed.projection.weight".to_string(), vec![d, 3, 16, 16]);
        want.insert("patch_embed.projection.bias".to_string(), vec![d]);
        want.insert("cls_token".to_string(), vec![1, 1, d]);
        want.insert("pos_embed".to_string(), vec![1, 197, d]);
        want.insert("ln1.weight".to_string(), vec![d]);
        want.insert("ln1.bias".to_string(), vec![d]);
        for i in 0..12 {
            let l = |s: &str| format!("layers.{i}.{s}");
            for (k, s) in [
                ("ln1.weight", vec![d]),
                ("ln1.bias", vec![d]),
                ("attn.attn.in_proj_weight", vec![3 * d, d]),
                ("attn.attn.in_proj_bias", vec![3 * d]),
                ("attn.attn.out_proj.weight", vec![d, d]),
                ("attn.attn.out_proj.bias", vec![d]),
                ("ln2.weight", vec![d]),
                ("ln2.bias", vec![d]),
                ("ffn.layers.0.0.weight", vec![h, d]),
                ("ffn.layers.0.0.bias", vec![h]),
                ("ffn.layers.1.weight", vec![d, h]),
                ("ffn.layers.1.bias", vec![d]),
            ] {
                want.insert(l(k), s);
            }
        }
        assert_eq!(got, want);
        // Same values as the ViTDet export where the tensors are the same.
        let det = vitdet_dict(timm);
        assert_eq!(mmseg_dict(timm_state_dict(&vit, 16))["layers.3.attn.attn.out_proj.weight"].1, det["blocks.3.attn.proj.weight"].1);
    }
}
