//! iNaturalist 2018 / 2019: COCO-style `train20xx.json` / `val20xx.json` (and an unlabeled
//! `test20xx.json`), image paths relative to the dataset root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::listing::{read_json, require, AdapterOptions, Listing, SourceImage};
use crate::error::{PipelineError, Result};

#[derive(Deserialize)]
struct Json {
    images: Vec<Image>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    #[serde(default)]
    categories: Vec<Category>,
}

#[derive(Deserialize)]
struct Image {
    id: i64,
    file_name: String,
}

#[derive(Deserialize)]
struct Annotation {
    image_id: i64,
    category_id: i64,
}

#[derive(Deserialize)]
struct Category {
    id: i64,
    #[serde(default)]
    name: Option<serde_json::Value>,
}

pub fn list(root: &Path, opts: &AdapterOptions) -> Result<Listing> {
    let year = opts.year.unwrap_or(2019);
    if year != 2018 && year != 2019 {
        return Err(PipelineError::Invalid(format!(
            "iNaturalist year must be 2018 or 2019, got {year}"
        )));
    }
    let mut splits = Vec::new();
    for split in ["train", "val", "test"] {
        let path = root.join(format!("{split}{year}.json"));
        if path.is_file() {
            let json: Json = read_json(&path)?;
            splits.push((split, path, json));
        } else if split != "test" {
            // train may be absent (evaluate on val only) but not both.
            continue;
        }
    }
    if splits.iter().all(|(s, _, _)| *s == "test") {
        require(
            root.join(format!("train{year}.json")),
            "iNaturalist needs train/val json files",
        )?;
    }
    // Category ids are the labels' source; names come from the json or (2018) categories.json.
    let mut names: BTreeMap<i64, String> = BTreeMap::new();
    let extra = root.join("categories.json");
    let extra_cats: Vec<Category> = if extra.is_file() {
        read_json(&extra)?
    } else {
        Vec::new()
    };
    for c in splits
        .iter()
        .flat_map(|(_, _, j)| j.categories.iter())
        .chain(extra_cats.iter())
    {
        let name = match &c.name {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => c.id.to_string(),
        };
        names.insert(c.id, name);
    }
    let label_of: BTreeMap<i64, i32> = names.keys().enumerate().map(|(i, &id)| (id, i as i32)).collect();
    let mut listing = Listing::new("inat", names.values().cloned().collect());
    let mut listed_dirs = BTreeSet::new();
    for (split, path, json) in &splits {
        let mut cat_of = BTreeMap::new();
        for a in &json.annotations {
            cat_of.insert(a.image_id, a.category_id);
        }
        for img in &json.images {
            listed_dirs.insert(img.file_name.split('/').next().unwrap_or_default().to_string());
            let label = match cat_of.get(&img.id) {
                None => -1,
                Some(cat) => match label_of.get(cat) {
                    Some(&l) => l,
                    None => {
                        listing.skip(
                            img.file_name.clone(),
                            split,
                            format!("unknown category_id {cat} in {}", path.display()),
                        );
                        continue;
                    }
                },
            };
            listing
                .images
                .push(SourceImage::new(split, img.file_name.clone(), label));
        }
    }
    Ok(listing)
}
