//! Every recipe in `datasets/` against the paper: Table 3's pre-training epochs and Table 9's
//! fine-tuning rows, written out here from the paper's text (not from the recipe files), and
//! the evaluation split each dataset ships.

use std::path::Path;

use pipeline::recipe::{EpochRule, Epochs, FinetuneDefaults, Masking, Recipe};

use crate::common::{tiny_jpeg, write_file};

fn recipes() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets")
}

/// A column of Table 9: (lr at batch 1024, layer decay, warmup epochs, repeated aug,
/// RandAugment magnitude); the other rows are shared.
type Column = (f64, f64, f64, bool, f64);

const INAT_FOOD: Column = (1.4e-4, 1.0, 5.0, true, 7.0);
const CARS_DOMAINNET: Column = (4e-3, 0.65, 60.0, false, 9.0);

fn assert_table9(name: &str, f: &FinetuneDefaults, column: Column) {
    let (lr, layer_decay, warmup, repeated, magnitude) = column;
    let got = (
        f.lr,
        f.layer_decay,
        f.warmup_epochs,
        f.repeated_aug,
        f.randaug_magnitude,
    );
    assert_eq!(got, (lr, layer_decay, warmup, repeated, magnitude), "{name}");
    // Shared rows: 300 epochs, batch 1024, weight decay 0.05, label smoothing 0.1, stochastic
    // depth 0.1, mixup 0.8, cutmix 1.0, RandAugment std 0.5, no gradient clipping, test crop
    // 0.875, color jitter 0.4.
    let shared = (
        f.epochs,
        f.batch_size,
        f.weight_decay,
        f.label_smoothing,
        f.drop_path,
        f.mixup,
        f.cutmix,
        f.randaug_std,
        f.clip_grad,
        f.crop_ratio,
        f.color_jitter,
    );
    assert_eq!(
        shared,
        (300, 1024, 0.05, 0.1, 0.1, 0.8, 1.0, 0.5, 0.0, 0.875, 0.4),
        "{name}"
    );
}

#[test]
fn recipes_carry_table_3_table_9_and_section_5_5() {
    let dir = recipes();
    // (recipe, Table 3 epochs, Table 9 column, smallest dataset of section 5.5, eval split)
    let paper: &[(&str, u32, Option<Column>, bool, &str)] = &[
        ("inat18", 800, Some(INAT_FOOD), false, "val"),
        ("inat19", 1400, Some(INAT_FOOD), false, "val"),
        ("food101", 5000, Some(INAT_FOOD), false, "test"),
        ("cars", 5000, Some(CARS_DOMAINNET), true, "test"),
        ("domainnet-clipart", 5000, Some(CARS_DOMAINNET), true, "test"),
        ("domainnet-painting", 5000, Some(CARS_DOMAINNET), true, "test"),
        ("domainnet-sketch", 5000, Some(CARS_DOMAINNET), true, "test"),
        ("ade20k", 21000, None, false, "val"),
        ("coco", 3000, None, false, "val"),
    ];
    for &(name, epochs, column, smallest, eval) in paper {
        let r = Recipe::load(&dir, name).unwrap();
        assert_eq!(r.pretrain.epochs, Epochs::Fixed(epochs), "{name}");
        assert_eq!(r.eval_split, eval, "{name}");
        match column {
            Some(c) => assert_table9(name, r.finetune.as_ref().expect("a [finetune] section"), c),
            None => assert!(r.finetune.is_none(), "{name}: no classification fine-tuning"),
        }
        let p = &r.pretrain;
        if smallest {
            // "a uniform masking of 75%" plus grayscale, solarization, blur and color jitter.
            assert_eq!(
                (p.masking, p.beit_mask_ratio, p.split_visible, p.strong_augmentation),
                (Masking::Uniform, Some(0.75), 0.25, true),
                "{name}"
            );
        } else {
            // Random block masking, a 50% split, crop and flip only.
            assert_eq!(
                (p.masking, p.beit_mask_ratio, p.split_visible, p.strong_augmentation),
                (Masking::Block, None, 0.5, false),
                "{name}"
            );
        }
        // Section 5.2.2: ADE20k crops cover at most 25% of the image.
        assert_eq!(p.max_crop_scale, if name == "ade20k" { 0.25 } else { 1.0 }, "{name}");
    }
    // ImageNet: 300 epochs at full size, the rule (no cap) for subsets (Table 1).
    let imagenet = Recipe::load(&dir, "imagenet").unwrap();
    assert_eq!(imagenet.pretrain.epochs, Epochs::Rule(EpochRule::EqualUpdates));
    assert_eq!(imagenet.pretrain.epochs_for(1_281_167), 300);
    assert_eq!(imagenet.pretrain.epochs_for(128_117), 3000);
    assert_eq!(imagenet.pretrain.epochs_for(12_812), 29_999);
    // Datasets outside the paper follow the rule from their own size, capped at 5,000.
    for name in ["imagenette", "folder", "parquet"] {
        let r = Recipe::load(&dir, name).unwrap();
        assert_eq!(r.pretrain.epochs_for(9_469), 5000, "{name}");
        assert_eq!(r.pretrain.epochs_for(500_000), 769, "{name}");
        assert_table9(name, r.finetune.as_ref().unwrap(), CARS_DOMAINNET);
    }
    assert_eq!(
        Recipe::load(&dir, "folder").unwrap().prepare.val_fraction,
        Some(0.1),
        "folders without split folders hold out a val split"
    );
    // Segmentation sets: the same rule; their fine-tuning is the dense recipe, not Table 9's
    // classification column.
    for name in ["camvid", "segmentation"] {
        let r = Recipe::load(&dir, name).unwrap();
        assert_eq!(r.adapter, "segmentation", "{name}");
        assert_eq!(r.pretrain.epochs_for(367), 5000, "{name}");
        assert_eq!(r.pretrain.epochs_for(500_000), 769, "{name}");
        assert!(r.finetune.is_none(), "{name}");
    }
    // No recipe is left out of the checks above.
    let mut all = Recipe::names(&dir).unwrap();
    all.sort();
    let mut checked: Vec<String> = paper.iter().map(|p| p.0.to_string()).collect();
    checked.extend(["imagenet", "imagenette", "folder", "parquet", "camvid", "segmentation"].map(String::from));
    checked.sort();
    assert_eq!(all, checked);
}

/// The binary carries the workspace's recipes: run from a folder with no `datasets/` (as an
/// installed binary is), `pipeline recipes` lists every recipe and `pipeline prepare` finds
/// `folder`'s; `$SPLITMASK_RECIPES` and `--recipes` name a folder of one's own instead.
#[test]
fn binaries_carry_their_recipes_and_take_a_folder_of_ones_own() {
    use pipeline::recipe::{Recipes, BUILT_IN, RECIPES_ENV};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets");
    for name in Recipe::names(&dir).unwrap() {
        let text = std::fs::read_to_string(dir.join(format!("{name}.toml"))).unwrap();
        let built = BUILT_IN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
        assert_eq!(built, Some(text.as_str()), "{name} is built in as written");
    }
    assert_eq!(BUILT_IN.len(), Recipe::names(&dir).unwrap().len());
    // Built-in recipes' relative paths start at the working directory.
    let built = Recipes::BuiltIn.load("imagenette").unwrap();
    assert_eq!(
        built.data_dir,
        std::path::Path::new(".").join("../shared/data/imagenette")
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"));
        c.current_dir(elsewhere.path()).args(args).env_remove(RECIPES_ENV);
        if let Some(e) = env {
            c.env(RECIPES_ENV, e);
        }
        c.output().unwrap()
    };
    let o = run(&["recipes", "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(all.as_object().unwrap().len(), BUILT_IN.len());
    assert_eq!(all["camvid"]["adapter"], "segmentation");

    let images = elsewhere.path().join("mine");
    for (class, seed) in [("cats", 1u8), ("dogs", 2)] {
        for i in 0..3 {
            write_file(&images.join(format!("{class}/{i}.jpg")), &tiny_jpeg(40, 30, seed + i));
        }
    }
    let out = elsewhere.path().join("prepared");
    let (i, o_) = (images.display().to_string(), out.display().to_string());
    let o = run(
        &[
            "prepare",
            "--dataset",
            "folder",
            "--data-dir",
            &i,
            "--out",
            &o_,
            "--no-progress",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        pipeline::prepare::load_manifest(&out).unwrap().class_names,
        ["cats", "dogs"]
    );

    // A folder of one's own: through the environment, then the flag; a name it lacks is an
    // error listing what it has.
    let own = elsewhere.path().join("recipes");
    std::fs::create_dir(&own).unwrap();
    std::fs::write(
        own.join("mine.toml"),
        std::fs::read_to_string(dir.join("folder.toml"))
            .unwrap()
            .replace("name = \"folder\"", "name = \"mine\""),
    )
    .unwrap();
    let o = run(&["recipes", "--json"], Some(&own));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.as_object().unwrap().keys().collect::<Vec<_>>(), ["mine"]);
    let o = run(
        &[
            "prepare",
            "--dataset",
            "folder",
            "--recipes",
            &own.display().to_string(),
            "--data-dir",
            &i,
            "--out",
            &o_,
        ],
        None,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no recipe named \"folder\"") && err.contains("known: mine"),
        "{err}"
    );
}
