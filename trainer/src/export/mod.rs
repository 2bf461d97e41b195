//! Export of a run as a timm `VisionTransformer` folder (`model.safetensors` + timm's
//! `config.json`, the Hugging Face Hub layout): timm names (`norm1.weight` for burn's
//! `norm1.gamma`), PyTorch layouts (linear weights `[out, in]`, the patch embedding as a
//! `[dim, 3, p, p]` convolution). A pre-training run exports its encoder (the pre-training
//! heads and decoder are not part of it); a fine-tuning run exports the whole classifier.
//! [`layouts`] writes the backbone for detectron2 (ViTDet) and mmsegmentation instead;
//! [`embed`] a frozen encoder's features of a whole split.

pub mod embed;
pub mod layouts;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::backend::CpuBackend;
use crate::data::augment::{MEAN, STD};
use crate::error::{Error, Result, RunFolderError};
use crate::model::classifier::Classifier;
use crate::model::segmenter::Segmenter;
use crate::model::vit::{Mode, Vit, VitConfig};
use crate::train::config::{init_paths, FinetuneConfig, SegmentConfig};
use crate::train::encoder_from_run::run_encoder;
use crate::train::run_folder::{read_config, CONFIG_FILE};
use crate::train::tensor_file::{load_checkpoint_params, named_params, save_tensors, NamedTensors};
use crate::train::timm_import::transpose;
use layouts::Layout;

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

/// The files of an export folder: timm's Hugging Face Hub layout, which
/// `timm.create_model("local-dir:<folder>", pretrained=True)` loads as it is.
pub use crate::train::timm_import::{TIMM_CONFIG_FILE, WEIGHTS_FILE};

/// What [`export_run`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportSummary {
    pub weights: PathBuf,
    pub config: PathBuf,
    pub tensors: usize,
    /// 0 for a pre-trained encoder; the head's classes for a fine-tuned classifier.
    pub num_classes: usize,
    /// The timm architecture `config.json` names (its `model_args` set the shape).
    pub architecture: String,
    pub layout: Layout,
    /// Every tensor written, with its shape, in key order.
    pub keys: Vec<(String, Vec<usize>)>,
}

/// A finished run's model, as timm holds it.
enum Exported<B: Backend> {
    /// A pre-training run: the encoder with its final norm (timm's `global_pool='token'`
    /// model without a head; `forward_features` equals ours).
    Encoder { vit: Box<Vit<B>>, cfg: VitConfig },
    /// A fine-tuning run: the classifier (timm's `global_pool='avg'` model: blocks, mean of
    /// the patch tokens, `fc_norm`, `head`).
    Classifier {
        model: Box<Classifier<B>>,
        cfg: VitConfig,
        class_names: Vec<String>,
    },
}

/// More classes than any classification set has (ImageNet-21k: 21,841; iNat: 10,000).
const MAX_CLASSES: usize = 1 << 20;

fn load_run<B: Backend>(run: &Path, device: &B::Device) -> Result<Exported<B>> {
    let (folder, file) = init_paths(run);
    let raw: serde_json::Value = read_config(&folder)?;
    if raw.get("segmenter").is_some() {
        return segmentation_encoder(&folder, &file, device);
    }
    if raw.get("classes").is_none() {
        let (cfg, vit) = run_encoder::<B>(run, device)?;
        return Ok(Exported::Encoder {
            vit: Box::new(vit),
            cfg: cfg.vit,
        });
    }
    let cfg: FinetuneConfig = read_config(&folder)?;
    // A hand-edited or hostile config.json: checked before the model is built from it.
    let config_err = |message: String| RunFolderError {
        path: folder.join(CONFIG_FILE),
        message,
    };
    cfg.vit.validate().map_err(|m| config_err(format!("vit: {m}")))?;
    if !(1..=MAX_CLASSES).contains(&cfg.classes) {
        return Err(config_err(format!("classes {}: 1..={MAX_CLASSES}", cfg.classes)).into());
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let skeleton = Classifier::<B>::new(&cfg.vit, cfg.classes, &mut rng, device);
    let model = load_checkpoint_params(skeleton, &file, device)?;
    // The names travel with the export when the dataset is at hand; timm then labels outputs.
    let class_names = pipeline::prepare::load_manifest(&cfg.run.data)
        .map(|m| m.class_names)
        .unwrap_or_default();
    Ok(Exported::Classifier {
        model: Box::new(model),
        cfg: cfg.vit,
        class_names,
    })
}

/// A segmentation run's encoder (the adapter and UperNet head have no timm counterpart),
/// its checkpoint loaded strictly.
fn segmentation_encoder<B: Backend>(folder: &Path, file: &Path, device: &B::Device) -> Result<Exported<B>> {
    let cfg: SegmentConfig = read_config(folder)?;
    cfg.segmenter.validate().map_err(|message| RunFolderError {
        path: folder.join(CONFIG_FILE),
        message,
    })?;
    let skeleton: Segmenter<B> = cfg
        .segmenter
        .init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0), device);
    let model = load_checkpoint_params(skeleton, file, device)?;
    Ok(Exported::Encoder {
        vit: Box::new(model.encoder),
        cfg: cfg.segmenter.vit,
    })
}

/// A fine-tuned classifier under timm's names: the encoder's blocks (its final norm, which
/// the classifier does not use, left out), `fc_norm` and `head` (`[classes, dim]`).
pub fn timm_classifier_dict<B: Backend>(model: &Classifier<B>, patch_size: usize) -> NamedTensors {
    let mut dict: NamedTensors = timm_state_dict(&model.encoder, patch_size)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("norm."))
        .collect();
    for (name, t) in named_params(&model.fc_norm) {
        dict.insert(
            format!("fc_norm.{}", name.replace("gamma", "weight").replace("beta", "bias")),
            t,
        );
    }
    for (name, (shape, values)) in named_params(&model.head) {
        let t = if name == "weight" {
            let (dim, classes) = (shape[0], shape[1]);
            (vec![classes, dim], transpose(&values, dim, classes))
        } else {
            (shape, values)
        };
        dict.insert(format!("head.{name}"), t);
    }
    dict
}

/// The timm architecture whose defaults are closest (`config.json`'s `model_args` give the
/// exact shape either way, so any ViT preset exports).
fn timm_architecture(v: &VitConfig) -> String {
    let family = match (v.dim, v.depth, v.heads) {
        (768, 12, 12) => "base",
        (384, 12, 6) => "small",
        _ => "tiny",
    };
    format!("vit_{family}_patch16_224")
}

/// timm's `config.json`: architecture, the constructor arguments of this exact ViT, and the
/// `pretrained_cfg` (input size, mean / std, crop, classifier) its data pipeline resolves.
pub fn timm_config(v: &VitConfig, num_classes: usize, class_names: &[String]) -> serde_json::Value {
    let classifier = num_classes > 0;
    let s = v.image_size;
    let mut cfg = serde_json::json!({
        "architecture": timm_architecture(v),
        "num_classes": num_classes,
        "num_features": v.dim,
        "global_pool": if classifier { "avg" } else { "token" },
        "model_args": {
            "img_size": s,
            "patch_size": v.patch_size,
            "embed_dim": v.dim,
            "depth": v.depth,
            "num_heads": v.heads,
            "mlp_ratio": v.mlp_ratio,
            "qkv_bias": true,
            "init_values": v.layer_scale_init,
            "class_token": true,
            "global_pool": if classifier { "avg" } else { "token" },
            "fc_norm": classifier,
            "num_classes": num_classes,
        },
        "pretrained_cfg": {
            "tag": "splitmask",
            "custom_load": false,
            "input_size": [3, s, s],
            "fixed_input_size": true,
            "interpolation": "bicubic",
            "crop_pct": 0.875,
            "crop_mode": "center",
            "mean": MEAN.map(rounded),
            "std": STD.map(rounded),
            "num_classes": num_classes,
            "pool_size": null,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    });
    if classifier && class_names.len() == num_classes {
        cfg["label_names"] = serde_json::json!(class_names);
    }
    cfg
}

/// An f32 constant as the decimal it was written as (0.485, not 0.48500001430511475).
fn rounded(v: f32) -> f64 {
    (v as f64 * 1e6).round() / 1e6
}

/// Writes a run's model in `layout`: for timm an export folder (`model.safetensors` +
/// `config.json`) holding a pre-training run's encoder or a fine-tuning run's whole
/// classifier; for a detection or segmentation framework the encoder's backbone
/// (`model.safetensors` + `export.json`). `run` is a run folder or a checkpoint in one
/// (`<run>/best.safetensors`).
pub fn export_run(run: &Path, out: &Path, layout: Layout) -> Result<ExportSummary> {
    let bar = crate::progress::pass("export", 3, "steps");
    let device = Default::default();
    let exported = load_run::<CpuBackend>(run, &device)?;
    bar.inc(1);
    let (dict, vit, num_classes, names) = match (&exported, layout) {
        (Exported::Encoder { vit, cfg }, Layout::Timm) => (timm_state_dict(vit, cfg.patch_size), cfg, 0, Vec::new()),
        (
            Exported::Classifier {
                model,
                cfg,
                class_names,
            },
            Layout::Timm,
        ) => (
            timm_classifier_dict(model, cfg.patch_size),
            cfg,
            model.head.weight.dims()[1],
            class_names.clone(),
        ),
        (Exported::Encoder { vit, cfg }, _) => (backbone_dict(vit, cfg, layout), cfg, 0, Vec::new()),
        (Exported::Classifier { model, cfg, .. }, _) => {
            (backbone_dict(&model.encoder, cfg, layout), cfg, 0, Vec::new())
        }
    };
    refuse_run_folder(out)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "splitmask.source".to_string(),
        serde_json::json!({"run": run, "vit": vit, "num_classes": num_classes, "layout": layout}).to_string(),
    );
    let weights = out.join(WEIGHTS_FILE);
    save_tensors(&weights, &dict, Some(meta))?;
    bar.inc(1);
    let (config, text) = match layout {
        Layout::Timm => (out.join(TIMM_CONFIG_FILE), timm_config(vit, num_classes, &names)),
        _ => (out.join(BACKBONE_CONFIG_FILE), backbone_config(run, vit, layout, &dict)),
    };
    let text = serde_json::to_vec_pretty(&text).expect("serializable");
    pipeline::shard::write_atomic(&config, &text)?;
    bar.finish_and_clear();
    Ok(ExportSummary {
        weights,
        config,
        tensors: dict.len(),
        num_classes,
        architecture: timm_architecture(vit),
        layout,
        keys: dict.iter().map(|(k, (shape, _))| (k.clone(), shape.clone())).collect(),
    })
}

/// Beside a backbone export: what it is and how to load it.
pub const BACKBONE_CONFIG_FILE: &str = "export.json";

/// The encoder under a framework's names (see [`layouts`]).
fn backbone_dict<B: Backend>(vit: &Vit<B>, cfg: &VitConfig, layout: Layout) -> NamedTensors {
    let timm = timm_state_dict(vit, cfg.patch_size);
    match layout {
        Layout::Vitdet => layouts::vitdet_dict(timm),
        Layout::Mmseg => layouts::mmseg_dict(timm),
        Layout::Timm => timm,
    }
}

/// `export.json`: the layout, the backbone's constructor arguments in the framework's terms,
/// the key the checkpoint loader reads, and every key with its shape.
fn backbone_config(run: &Path, v: &VitConfig, layout: Layout, dict: &NamedTensors) -> serde_json::Value {
    let args = match layout {
        Layout::Vitdet => serde_json::json!({
            "embed_dim": v.dim, "depth": v.depth, "num_heads": v.heads, "mlp_ratio": v.mlp_ratio,
            "patch_size": v.patch_size, "qkv_bias": true, "use_abs_pos": true,
            "pretrain_img_size": v.image_size, "pretrain_use_cls_token": true,
        }),
        _ => serde_json::json!({
            "img_size": v.image_size, "patch_size": v.patch_size, "embed_dims": v.dim,
            "num_layers": v.depth, "num_heads": v.heads, "mlp_ratio": v.mlp_ratio,
            "qkv_bias": true, "with_cls_token": true, "final_norm": true,
        }),
    };
    serde_json::json!({
        "layout": layout,
        "source_run": run,
        "checkpoint_key": layout.checkpoint_key(),
        "backbone_args": args,
        "layer_scale_folded": v.layer_scale_init.is_some(),
        "sinusoidal_pos_embed": v.sinusoidal_pos,
        "keys": dict.iter().map(|(k, (shape, _))| (k.clone(), shape.clone())).collect::<std::collections::BTreeMap<_, _>>(),
    })
}

/// An export folder shares `config.json`'s name with a run folder: exporting into a run (or
/// any folder holding a run's files) would replace the run's configuration, and the run could
/// be neither resumed nor exported again.
fn refuse_run_folder(out: &Path) -> Result<()> {
    use crate::train::run_folder::{CHECKPOINT_FILE, METRICS_FILE, RESULTS_FILE};
    let held = [CHECKPOINT_FILE, METRICS_FILE, RESULTS_FILE]
        .into_iter()
        .find(|f| out.join(f).exists());
    let foreign_config = std::fs::read(out.join(CONFIG_FILE))
        .ok()
        .is_some_and(|bytes| !is_timm_config(&bytes));
    match (held, foreign_config) {
        (None, false) => Ok(()),
        (held, _) => Err(RunFolderError {
            path: out.to_path_buf(),
            message: format!(
                "holds a run ({}): an export would replace its config.json; choose another --out",
                held.map_or("a config.json that is not timm's".to_string(), |f| format!("its {f}"))
            ),
        }
        .into()),
    }
}

/// Whether `bytes` are a timm `config.json` (an earlier export, which a new one may replace).
fn is_timm_config(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .is_ok_and(|v| v.get("architecture").is_some_and(serde_json::Value::is_string))
}

/// Writes a reference pair for checking an export in PyTorch: a seeded `input`
/// `[2, 3, size, size]` (normalized-image scale) and our model's `output` on it: the
/// encoder's tokens `[2, 1 + patches, dim]` (timm's `forward_features`) for a pre-training
/// run; for a fine-tuning run the class logits `[2, classes]` (timm's `forward`) and the
/// head's input `[2, dim]` (`forward_head(..., pre_logits=True)`).
/// `tests/python/timm_check.py` loads the export folder into timm and compares.
pub fn write_check(run: &Path, out: &Path) -> Result<()> {
    use rand::Rng;
    let device = Default::default();
    let exported = load_run::<CpuBackend>(run, &device)?;
    let s = match &exported {
        Exported::Encoder { cfg, .. } | Exported::Classifier { cfg, .. } => cfg.image_size,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let input: Vec<f32> = (0..2 * 3 * s * s).map(|_| rng.random_range(-2.0..2.0f32)).collect();
    let x = Tensor::<CpuBackend, 4>::from_data(TensorData::new(input.clone(), [2, 3, s, s]), &device);
    let host = |t: Tensor<CpuBackend, 2>| (t.dims().to_vec(), t.into_data().iter::<f32>().collect::<Vec<f32>>());
    let mut tensors = NamedTensors::new();
    tensors.insert("input".into(), (vec![2, 3, s, s], input));
    match &exported {
        Exported::Encoder { vit, .. } => {
            let f = vit.forward(x, Mode::Eval);
            tensors.insert(
                "features".into(),
                (f.dims().to_vec(), f.into_data().iter::<f32>().collect()),
            );
        }
        Exported::Classifier { model, .. } => {
            // The head's input too: a freshly fine-tuned head is near zero, its logits tiny.
            let pre = model.features(x, Mode::Eval);
            tensors.insert("pre_logits".into(), host(pre.clone()));
            tensors.insert("logits".into(), host(model.head.forward(pre)));
        }
    }
    save_tensors(out, &tensors, None)
}

/// An encoder of the configured shape whose values are about to be replaced.
#[cfg(test)]
fn skeleton<B: Backend>(cfg: &crate::model::vit::VitConfig, device: &B::Device) -> Vit<B> {
    use rand::SeedableRng;
    cfg.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0), device)
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use crate::model::vit::VitConfig;
    use std::collections::BTreeMap;

    /// timm's state dict names and shapes from `../shared/fixtures/timm`, without the classifier.
    fn timm_keys(model: &str) -> Option<BTreeMap<String, Vec<usize>>> {
        let path = schemas::shared_data::find(&format!("fixtures/timm/{model}.keys.json"))?;
        let text = std::fs::read_to_string(&path).unwrap();
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

    #[test]
    fn classifier_names_and_shapes_match_timm_with_average_pooling() {
        let device = Default::default();
        let Some(mut expected) = timm_keys("vit_small_patch16_224") else {
            return;
        };
        // timm's `global_pool='avg'` ViT: `fc_norm` where the token-pooling one has `norm`.
        for p in ["weight", "bias"] {
            let shape = expected.remove(&format!("norm.{p}")).unwrap();
            expected.insert(format!("fc_norm.{p}"), shape);
        }
        expected.insert("head.weight".into(), vec![5, 384]);
        expected.insert("head.bias".into(), vec![5]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let model =
            Classifier::<TestBackend>::new(&VitConfig::small().with_layer_scale_init(None), 5, &mut rng, &device);
        let got: BTreeMap<String, Vec<usize>> = timm_classifier_dict(&model, 16)
            .into_iter()
            .map(|(k, (s, _))| (k, s))
            .collect();
        assert_eq!(got, expected);
        // The head is transposed to `[classes, dim]`.
        let ours = named_params(&model);
        let (_, w) = &ours["head.weight"];
        let (_, t) = &timm_classifier_dict(&model, 16)["head.weight"];
        assert_eq!(t[3 * 384 + 7], w[7 * 5 + 3]);
    }

    #[test]
    fn timm_config_describes_the_exact_model() {
        let v = VitConfig::cpu_tiny();
        let names: Vec<String> = (0..3).map(|i| format!("class {i}")).collect();
        let c = timm_config(&v, 3, &names);
        assert_eq!(c["architecture"], "vit_tiny_patch16_224");
        let a = &c["model_args"];
        assert_eq!(
            (
                &a["img_size"],
                &a["patch_size"],
                &a["embed_dim"],
                &a["depth"],
                &a["num_heads"]
            ),
            (
                &serde_json::json!(64),
                &serde_json::json!(8),
                &serde_json::json!(128),
                &serde_json::json!(4),
                &serde_json::json!(4)
            )
        );
        assert_eq!(
            (&a["global_pool"], &a["fc_norm"], &a["num_classes"]),
            (
                &serde_json::json!("avg"),
                &serde_json::json!(true),
                &serde_json::json!(3)
            )
        );
        assert_eq!(c["pretrained_cfg"]["input_size"], serde_json::json!([3, 64, 64]));
        assert_eq!(c["pretrained_cfg"]["mean"], serde_json::json!([0.485, 0.456, 0.406]));
        assert_eq!(c["label_names"], serde_json::json!(names));
        // An encoder: no head, token pooling after the final norm, no label names.
        let e = timm_config(&VitConfig::base(), 0, &[]);
        assert_eq!(e["architecture"], "vit_base_patch16_224");
        assert_eq!(
            (&e["global_pool"], &e["model_args"]["fc_norm"]),
            (&serde_json::json!("token"), &serde_json::json!(false))
        );
        assert!(e.get("label_names").is_none());
    }
}

#[cfg(test)]
mod folder_tests {
    use super::*;

    /// An export may replace an earlier export, never a run's files.
    #[test]
    fn exports_go_to_new_or_export_folders_only() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = |name: &str, files: &[(&str, &str)]| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (file, text) in files {
                std::fs::write(dir.join(file), text).unwrap();
            }
            dir
        };
        assert!(refuse_run_folder(&tmp.path().join("new")).is_ok());
        assert!(refuse_run_folder(&folder("empty", &[])).is_ok());
        let timm = r#"{"architecture": "vit_small_patch16_224", "num_classes": 0}"#;
        assert!(refuse_run_folder(&folder("export", &[("config.json", timm)])).is_ok());
        let run_config = r#"{"method": "splitmask", "vit": {}}"#;
        for (name, files) in [
            ("config", vec![("config.json", run_config)]),
            ("metrics", vec![("config.json", timm), ("metrics.jsonl", "")]),
            ("checkpoint", vec![("checkpoint.safetensors", "")]),
            ("garbled", vec![("config.json", "{")]),
        ] {
            let err = refuse_run_folder(&folder(name, &files)).unwrap_err().to_string();
            assert!(err.contains("holds a run") && err.contains(name), "{name}: {err}");
        }
    }
}
