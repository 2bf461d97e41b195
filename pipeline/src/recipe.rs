//! Dataset recipes (`datasets/<name>.toml`): which adapter reads the layout, where the raw data
//! usually lives, which split models are evaluated on, prepare defaults, the paper's
//! pre-training schedule (Table 3, section 5.5) and fine-tuning recipe (Table 9).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapters::{AdapterOptions, ADAPTERS};
use crate::error::{IoContext, PipelineError, Result};

/// ImageNet-1k train images: the paper matches the number of updates of 300 epochs on it.
pub const IMAGENET_TRAIN_IMAGES: u64 = 1_281_167;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub adapter: String,
    pub description: String,
    /// Where to get the raw data.
    pub homepage: String,
    /// Default raw-data location, relative to the repository root.
    pub data_dir: PathBuf,
    /// The split fine-tuning, `trainer eval` and the k-NN monitor evaluate on: `test` for the
    /// datasets that ship train and test only (Cars, Food-101, DomainNet), else `val`.
    pub eval_split: String,
    #[serde(default)]
    pub options: AdapterOptions,
    #[serde(default)]
    pub prepare: PrepareDefaults,
    pub pretrain: PretrainDefaults,
    /// Classification fine-tuning recipe; absent for detection/segmentation sets.
    #[serde(default)]
    pub finetune: Option<FinetuneDefaults>,
    /// Semantic segmentation fine-tuning recipe (`trainer segment`); absent for sets without
    /// label maps.
    #[serde(default)]
    pub segment: Option<SegmentDefaults>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrepareDefaults {
    /// Shorter side bound in pixels; 0 keeps the source size.
    pub max_short_side: u32,
    pub quality: u8,
    pub crop_to_bbox: bool,
    /// Class-balanced share of the train split to keep (ImageNet 1% etc.).
    pub subset_fraction: Option<f64>,
    pub subset_seed: u64,
    /// When the layout has no evaluation split: the share of each class's images held out as
    /// one (`folder` datasets without split folders).
    pub val_fraction: Option<f64>,
}

impl Default for PrepareDefaults {
    fn default() -> Self {
        PrepareDefaults {
            max_short_side: 256,
            quality: 90,
            crop_to_bbox: false,
            subset_fraction: None,
            subset_seed: 0,
            val_fraction: None,
        }
    }
}

/// How many pre-training epochs: Table 3's number, or the paper's rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Epochs {
    Fixed(u32),
    Rule(EpochRule),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochRule {
    /// As many updates as 300 epochs of ImageNet at the same batch: `300 x 1,281,167 / n` for
    /// `n` prepared train images.
    EqualUpdates,
}

/// How masked positions are chosen in pre-training: the one choice the recipe, the command
/// line (`--masking`) and the run's configuration name (the model draws from its resolved
/// geometry, `MaskSpec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Masking {
    /// BEiT's block-wise masking (the paper's default for SplitMask's split too).
    Block,
    /// Every patch equally likely (section 5.5, the smallest datasets).
    Uniform,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainDefaults {
    /// Train images of the full dataset (Table 3's column, or the official list's count).
    pub train_images: u64,
    /// Pre-training epochs: Table 3's, or `"equal_updates"` for the paper's rule.
    pub epochs: Epochs,
    /// Cap on the epochs the rule gives (the paper: 5,000 for small classification sets).
    #[serde(default)]
    pub max_epochs: Option<u32>,
    #[serde(default = "block")]
    pub masking: Masking,
    /// BEiT's masked share; absent: BEiT's 75 of 196 patches (40%).
    #[serde(default)]
    pub beit_mask_ratio: Option<f64>,
    /// Share of the patches each SplitMask branch's encoder sees: 0.5 (a mask and its
    /// complement) or 0.25 (disjoint quarters, the 75% masking of section 5.5).
    #[serde(default = "half")]
    pub split_visible: f64,
    /// Grayscale, solarization, gaussian blur and color jitter on top of crop + flip.
    #[serde(default)]
    pub strong_augmentation: bool,
    /// Upper bound of the random-resized-crop area (ADE20k: 0.25).
    #[serde(default = "one")]
    pub max_crop_scale: f64,
}

fn block() -> Masking {
    Masking::Block
}

fn half() -> f64 {
    0.5
}

/// A serde default of 1 (shared with the trainer's configs).
pub fn one() -> f64 {
    1.0
}

impl PretrainDefaults {
    /// The epochs of a run on `train_images` prepared train images.
    pub fn epochs_for(&self, train_images: u64) -> u64 {
        match self.epochs {
            Epochs::Fixed(e) => e as u64,
            Epochs::Rule(EpochRule::EqualUpdates) => {
                let e = equal_update_epochs(train_images);
                self.max_epochs.map_or(e, |m| e.min(m as u64))
            }
        }
    }
}

/// The fine-tuning recipe, Table 9's rows. Every field is required: a recipe states the whole
/// recipe, and the trainer's flags override it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneDefaults {
    pub epochs: u32,
    /// The batch `lr` is quoted at (the trainer scales lr to batch x accum by `--lr-scaling`).
    pub batch_size: usize,
    pub lr: f64,
    /// Layer-wise learning-rate decay; 1 is none.
    pub layer_decay: f64,
    pub warmup_epochs: f64,
    /// DeiT's repeated augmentation (3 copies of an image in the same batch).
    pub repeated_aug: bool,
    pub randaug_magnitude: f64,
    pub randaug_std: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    pub drop_path: f64,
    pub mixup: f64,
    pub cutmix: f64,
    /// Global gradient-norm clip; 0 is none.
    pub clip_grad: f64,
    /// Center-crop ratio of the test view.
    pub crop_ratio: f64,
    /// Color-jitter strength (timm applies it only without RandAugment).
    pub color_jitter: f64,
}

/// The semantic segmentation recipe (BEiT's ADE20k UperNet fine-tuning in mmsegmentation,
/// which the paper's Table 5 follows). Every field but the label handling is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentDefaults {
    /// Side of the square training crop and of the sliding window, in pixels.
    pub crop: u32,
    /// Short side every image is brought to before the random rescale, and at evaluation
    /// (mmsegmentation's `img_scale` (2048, 512) for ADE20k).
    pub short_side: u32,
    /// Random rescale range around `short_side` (mmsegmentation's `ratio_range`).
    pub scale_min: f64,
    pub scale_max: f64,
    /// Sliding-window stride at evaluation.
    pub stride: u32,
    /// Updates (iterations) of the schedule.
    pub iterations: u64,
    /// The batch `lr` is quoted at.
    pub batch_size: usize,
    pub lr: f64,
    pub layer_decay: f64,
    pub weight_decay: f64,
    pub warmup_iterations: u64,
    pub drop_path: f64,
    /// Channels of UperNet's pyramid pooling and FPN.
    pub channels: usize,
    /// Label maps whose 0 means "other" (ADE20k): values shift down by one and 0 is ignored
    /// (mmsegmentation's `reduce_zero_label`).
    #[serde(default)]
    pub reduce_zero_label: bool,
    /// Classes where the manifest names none (ADE20k's 150); the manifest's `mask_classes`
    /// otherwise.
    #[serde(default)]
    pub classes: Option<usize>,
}

/// Epochs that match the updates of 300 ImageNet epochs on `train_images` images.
pub fn equal_update_epochs(train_images: u64) -> u64 {
    (300.0 * IMAGENET_TRAIN_IMAGES as f64 / train_images.max(1) as f64).round() as u64
}

impl Recipe {
    /// Loads `<dir>/<name>.toml`; relative paths in it are resolved against `dir`'s parent
    /// (the repository root).
    pub fn load(dir: &Path, name: &str) -> Result<Recipe> {
        let path = dir.join(format!("{name}.toml"));
        if !path.is_file() {
            let known = Self::names(dir).unwrap_or_default().join(", ");
            return Err(PipelineError::MissingMetadata {
                path,
                hint: format!("no recipe named {name:?}; known: {known}"),
            });
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        // Paths in a recipe are relative to the folder holding `datasets/`.
        Self::parse(&text, &path, name, dir.parent().unwrap_or(Path::new(".")))
    }

    /// A recipe from its text; `path` names it in errors, `root` is what its relative paths
    /// (`data_dir`, ...) are joined to.
    pub fn parse(text: &str, path: &Path, name: &str, root: &Path) -> Result<Recipe> {
        let path = path.to_path_buf();
        let mut r: Recipe = toml::from_str(text).map_err(|e| PipelineError::BadField {
            path: path.clone(),
            field: e
                .span()
                .map(|s| format!("bytes {}..{}", s.start, s.end))
                .unwrap_or_default(),
            message: e.message().to_string(),
        })?;
        let bad = |field: &str, message: String| PipelineError::BadField {
            path: path.clone(),
            field: field.into(),
            message,
        };
        if r.name != name {
            return Err(bad("name", format!("{:?} differs from the file name {name:?}", r.name)));
        }
        if !ADAPTERS.contains(&r.adapter.as_str()) {
            return Err(bad(
                "adapter",
                format!("unknown adapter {:?}; known: {}", r.adapter, ADAPTERS.join(", ")),
            ));
        }
        if !["train", "val", "test"].contains(&r.eval_split.as_str()) {
            return Err(bad(
                "eval_split",
                format!("{:?}: expected \"val\" or \"test\"", r.eval_split),
            ));
        }
        let p = &r.pretrain;
        if !(p.split_visible == 0.5 || p.split_visible == 0.25) {
            return Err(bad(
                "pretrain.split_visible",
                format!("{}: expected 0.5 or 0.25", p.split_visible),
            ));
        }
        if p.beit_mask_ratio.is_some_and(|m| !(m > 0.0 && m < 1.0)) {
            return Err(bad(
                "pretrain.beit_mask_ratio",
                format!("{:?}: must be in (0, 1)", p.beit_mask_ratio),
            ));
        }
        if !(p.max_crop_scale > 0.08 && p.max_crop_scale <= 1.0) {
            return Err(bad(
                "pretrain.max_crop_scale",
                format!("{}: must be in (0.08, 1]", p.max_crop_scale),
            ));
        }
        if let Some(f) = r.prepare.val_fraction {
            if !(f > 0.0 && f < 1.0) {
                return Err(bad("prepare.val_fraction", format!("{f}: must be in (0, 1)")));
            }
        }
        r.data_dir = root.join(&r.data_dir);
        r.options.synsets = r.options.synsets.map(|p| root.join(p));
        r.options.val_solution = r.options.val_solution.map(|p| root.join(p));
        Ok(r)
    }

    pub fn names(dir: &Path) -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .at(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }
}

include!(concat!(env!("OUT_DIR"), "/recipes.rs"));

/// The environment variable naming a recipe folder to use instead of the built-in recipes.
pub const RECIPES_ENV: &str = "SPLITMASK_RECIPES";

/// Where recipes come from: a folder of `<name>.toml` files, or the set built into the
/// binary from this workspace's `datasets/` (relative paths in them then start at the working
/// directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipes {
    Folder(PathBuf),
    BuiltIn,
}

impl Recipes {
    /// `--recipes` where given, else `$SPLITMASK_RECIPES` where set, else the built-in set.
    pub fn choose(flag: Option<&Path>) -> Self {
        match (flag, std::env::var_os(RECIPES_ENV)) {
            (Some(dir), _) => Recipes::Folder(dir.to_path_buf()),
            (None, Some(dir)) if !dir.is_empty() => Recipes::Folder(dir.into()),
            _ => Recipes::BuiltIn,
        }
    }

    pub fn load(&self, name: &str) -> Result<Recipe> {
        match self {
            Recipes::Folder(dir) => Recipe::load(dir, name),
            Recipes::BuiltIn => {
                let path = PathBuf::from(format!("<built-in>/{name}.toml"));
                let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == name) else {
                    return Err(PipelineError::MissingMetadata {
                        path,
                        hint: format!(
                            "no built-in recipe named {name:?}; known: {} (--recipes <folder> or ${RECIPES_ENV} for your own)",
                            self.names()?.join(", ")
                        ),
                    });
                };
                Recipe::parse(text, &path, name, Path::new("."))
            }
        }
    }

    pub fn names(&self) -> Result<Vec<String>> {
        match self {
            Recipes::Folder(dir) => Recipe::names(dir),
            Recipes::BuiltIn => Ok(BUILT_IN.iter().map(|(n, _)| n.to_string()).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_updates_rule() {
        assert_eq!(equal_update_epochs(IMAGENET_TRAIN_IMAGES), 300);
        // Table 1: the 10% and 1% subsets get 3,000 and 30,000 epochs.
        assert_eq!(equal_update_epochs(128_117), 3000);
        assert_eq!(equal_update_epochs(12_812), 29_999);
        assert_eq!(equal_update_epochs(118_287), 3249);
        let capped = PretrainDefaults {
            train_images: 0,
            epochs: Epochs::Rule(EpochRule::EqualUpdates),
            max_epochs: Some(5000),
            masking: Masking::Block,
            beit_mask_ratio: None,
            split_visible: 0.5,
            strong_augmentation: false,
            max_crop_scale: 1.0,
        };
        assert_eq!(capped.epochs_for(8_144), 5000);
        assert_eq!(capped.epochs_for(500_000), 769);
        let fixed = PretrainDefaults {
            epochs: Epochs::Fixed(800),
            ..capped
        };
        assert_eq!(fixed.epochs_for(1), 800);
    }

    #[test]
    fn bad_recipe_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let recipes = dir.path().join("datasets");
        std::fs::create_dir(&recipes).unwrap();
        let base = "name = \"x\"\nadapter = \"folder\"\ndescription=\"\"\nhomepage=\"\"\ndata_dir=\"d\"\neval_split=\"val\"\n[pretrain]\ntrain_images=1\nepochs=5000\n";
        std::fs::write(recipes.join("x.toml"), base.replace("folder", "nope")).unwrap();
        let err = Recipe::load(&recipes, "x").unwrap_err().to_string();
        assert!(
            err.contains("x.toml") && err.contains("adapter") && err.contains("nope"),
            "{err}"
        );
        let err = Recipe::load(&recipes, "missing").unwrap_err().to_string();
        assert!(err.contains("known: x"), "{err}");
        std::fs::write(recipes.join("x.toml"), format!("{base}split_visible = 0.3\n")).unwrap();
        let err = Recipe::load(&recipes, "x").unwrap_err().to_string();
        assert!(err.contains("pretrain.split_visible") && err.contains("0.3"), "{err}");
        std::fs::write(
            recipes.join("x.toml"),
            base.replace("eval_split=\"val\"", "eval_split=\"dev\""),
        )
        .unwrap();
        let err = Recipe::load(&recipes, "x").unwrap_err().to_string();
        assert!(err.contains("eval_split") && err.contains("dev"), "{err}");
        std::fs::write(
            recipes.join("x.toml"),
            base.replace("epochs=5000", "epochs=\"forever\""),
        )
        .unwrap();
        assert!(Recipe::load(&recipes, "x").is_err());
    }
}
