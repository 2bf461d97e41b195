//! `pipeline recipes`: every dataset recipe, as a table for people or JSON for scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use pipeline::recipe::{Epochs, FinetuneDefaults, Recipe, Recipes};

#[derive(Args)]
pub struct RecipesArgs {
    /// A folder of recipes (`<name>.toml`) to use instead of the ones built into this binary
    /// (also $SPLITMASK_RECIPES).
    #[arg(long)]
    recipes: Option<PathBuf>,
    /// Every resolved field of every recipe as one JSON object (for scripts).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &RecipesArgs) -> Result<ExitCode> {
    let source = Recipes::choose(args.recipes.as_deref());
    let all = source
        .names()?
        .iter()
        .map(|name| source.load(name))
        .collect::<pipeline::Result<Vec<_>>>()?;
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .map(|r| (r.name.clone(), serde_json::to_value(r).expect("serializable")))
            .collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &all {
        print_recipe(r);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_recipe(r: &Recipe) {
    let p = &r.pretrain;
    let epochs = match p.epochs {
        Epochs::Fixed(e) => format!("{e}"),
        Epochs::Rule(_) => match p.max_epochs {
            Some(m) => format!("rule<={m}"),
            None => "rule".to_string(),
        },
    };
    println!(
        "{:<20} {:<14} eval {:<4}  {}",
        r.name, r.adapter, r.eval_split, r.description
    );
    println!(
        "    pre-train: {epochs} epochs, {:?} masking, SplitMask sees {}%, BEiT masks {}, strong aug {}, crops <= {}",
        p.masking,
        100.0 * p.split_visible,
        p.beit_mask_ratio
            .map_or("75/196".to_string(), |m| format!("{}%", 100.0 * m)),
        p.strong_augmentation,
        p.max_crop_scale
    );
    match &r.finetune {
        Some(f) => print_finetune(f),
        None => println!("    fine-tune: - (no classification labels)"),
    }
}

fn print_finetune(f: &FinetuneDefaults) {
    println!(
        "    fine-tune: {} epochs, batch {}, lr {:e}, layer decay {}, warmup {}, repeated aug {}, RandAugment {}/{}, wd {}, smoothing {}, drop path {}, mixup {}, cutmix {}, clip {}, test crop {}",
        f.epochs,
        f.batch_size,
        f.lr,
        f.layer_decay,
        f.warmup_epochs,
        f.repeated_aug,
        f.randaug_magnitude,
        f.randaug_std,
        f.weight_decay,
        f.label_smoothing,
        f.drop_path,
        f.mixup,
        f.cutmix,
        f.clip_grad,
        f.crop_ratio
    );
}
