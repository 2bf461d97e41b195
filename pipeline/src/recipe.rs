//! Dataset recipes (`datasets/<name>.toml`): which adapter reads the layout, where the raw data
//! usually lives, prepare defaults and the paper's pre-training schedule for the dataset.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapters::{AdapterOptions, ADAPTERS};
use crate::error::{IoContext, PipelineError, Result};

/// ImageNet-1k train images: the paper matches the number of updates of 300 epochs on it.
pub const IMAGENET_TRAIN_IMAGES: u64 = 1_281_167;
/// Longer schedules overfit small sets (Cars past ~5k epochs, the paper's Fig. 6).
pub const MAX_PRETRAIN_EPOCHS: u32 = 5000;

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
    #[serde(default)]
    pub options: AdapterOptions,
    #[serde(default)]
    pub prepare: PrepareDefaults,
    pub pretrain: PretrainDefaults,
    /// Classification fine-tuning schedule; absent for detection/segmentation sets.
    #[serde(default)]
    pub finetune: Option<FinetuneDefaults>,
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
}

impl Default for PrepareDefaults {
    fn default() -> Self {
        PrepareDefaults {
            max_short_side: 256,
            quality: 90,
            crop_to_bbox: false,
            subset_fraction: None,
            subset_seed: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainDefaults {
    /// Train images of the full dataset, which the epoch count is derived from.
    pub train_images: u64,
    /// Pre-training epochs (the paper's rule, see [`paper_epochs`]).
    pub epochs: u32,
    /// Small datasets use 75% uniform masking and strong augmentation.
    pub small_dataset: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneDefaults {
    pub epochs: u32,
    pub warmup_epochs: f64,
}

/// Epochs that match the updates of 300 ImageNet epochs, capped at 5000.
pub fn paper_epochs(train_images: u64) -> u32 {
    let e = (300.0 * IMAGENET_TRAIN_IMAGES as f64 / train_images.max(1) as f64).round() as u64;
    e.min(MAX_PRETRAIN_EPOCHS as u64) as u32
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
        let mut r: Recipe = toml::from_str(&text).map_err(|e| PipelineError::BadField {
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
        let root = dir.parent().unwrap_or(Path::new("."));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_rule() {
        assert_eq!(paper_epochs(IMAGENET_TRAIN_IMAGES), 300);
        assert_eq!(paper_epochs(118_287), 3249);
        assert_eq!(paper_epochs(8_144), 5000);
    }

    #[test]
    fn every_recipe_parses_and_follows_the_epoch_rule() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets");
        let names = Recipe::names(&dir).unwrap();
        for required in [
            "imagenet",
            "imagenette",
            "coco",
            "domainnet-clipart",
            "domainnet-painting",
            "domainnet-sketch",
            "inat18",
            "inat19",
            "cars",
            "food101",
            "ade20k",
            "folder",
        ] {
            assert!(names.iter().any(|n| n == required), "missing recipe {required}");
        }
        for name in names {
            let r = Recipe::load(&dir, &name).unwrap();
            assert_eq!(r.pretrain.epochs, paper_epochs(r.pretrain.train_images), "{name}");
        }
    }

    #[test]
    fn bad_recipe_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let recipes = dir.path().join("datasets");
        std::fs::create_dir(&recipes).unwrap();
        std::fs::write(recipes.join("x.toml"), "name = \"x\"\nadapter = \"nope\"\ndescription=\"\"\nhomepage=\"\"\ndata_dir=\"d\"\n[pretrain]\ntrain_images=1\nepochs=5000\nsmall_dataset=false\n").unwrap();
        let err = Recipe::load(&recipes, "x").unwrap_err().to_string();
        assert!(
            err.contains("x.toml") && err.contains("adapter") && err.contains("nope"),
            "{err}"
        );
        let err = Recipe::load(&recipes, "missing").unwrap_err().to_string();
        assert!(err.contains("known: x"), "{err}");
    }
}
