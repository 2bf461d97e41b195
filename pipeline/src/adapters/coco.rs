//! COCO 2017: `{train,val}2017/` images described by `annotations/instances_{split}2017.json`.
//! Images are unlabeled for classification (-1) and keep their COCO id; the annotations go to a
//! side table (`annotations-<split>.parquet`), rescaled to the stored images once the shards
//! exist (`coco_pixels`), so `pipeline coco-json` writes a detection set that lines up.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float64Builder};
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde::Deserialize;

use super::listing::{read_json, require, Listing, SideTable, SourceImage};
use crate::error::{PipelineError, Result};

#[derive(Deserialize)]
struct Instances {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    #[serde(default)]
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: i64,
    file_name: String,
    /// The original image's size: the annotations' coordinate frame.
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    id: i64,
    image_id: i64,
    category_id: i64,
    bbox: Vec<f64>,
    #[serde(default)]
    area: f64,
    #[serde(default)]
    iscrowd: i64,
    #[serde(default)]
    segmentation: serde_json::Value,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: i64,
    name: String,
    #[serde(default)]
    supercategory: String,
}

pub fn list(root: &Path) -> Result<Listing> {
    let mut listing = Listing::new("coco", Vec::new());
    let mut found = false;
    for (split, year_dir, json_name) in [
        ("train", "train2017", "instances_train2017.json"),
        ("val", "val2017", "instances_val2017.json"),
        ("test", "test2017", "image_info_test2017.json"),
    ] {
        let json_path = root.join("annotations").join(json_name);
        if !json_path.is_file() {
            if split != "test" && root.join(year_dir).is_dir() {
                return Err(PipelineError::MissingMetadata {
                    path: json_path,
                    hint: format!("{year_dir}/ exists but its annotation file does not"),
                });
            }
            continue;
        }
        found = true;
        let inst: Instances = read_json(&json_path)?;
        for img in &inst.images {
            let mut s = SourceImage::new(split, format!("{year_dir}/{}", img.file_name), -1);
            s.coco_id = Some(img.id);
            listing.images.push(s);
        }
        let known: std::collections::BTreeSet<i64> = inst.images.iter().map(|i| i.id).collect();
        if let Some(a) = inst.annotations.iter().find(|a| !known.contains(&a.image_id)) {
            return Err(PipelineError::BadField {
                path: json_path,
                field: format!("annotations[id={}].image_id", a.id),
                message: format!("refers to image {} which is not in 'images'", a.image_id),
            });
        }
        if split != "test" {
            listing.side_tables.push(annotation_table(split, &json_path, &inst)?);
        }
        listing.skip_unlisted(root, &[year_dir], split, json_name)?;
    }
    if !found {
        require(
            root.join("annotations/instances_train2017.json"),
            "COCO layout needs annotations/instances_{train,val}2017.json",
        )?;
    }
    Ok(listing)
}

fn annotation_table(split: &str, json_path: &Path, inst: &Instances) -> Result<SideTable> {
    let cat_name: BTreeMap<i64, &str> = inst.categories.iter().map(|c| (c.id, c.name.as_str())).collect();
    let anns = &inst.annotations;
    let mut bbox = FixedSizeListBuilder::new(Float64Builder::new(), 4).with_field(Arc::new(Field::new(
        "item",
        DataType::Float64,
        false,
    )));
    for a in anns {
        if a.bbox.len() != 4 {
            return Err(PipelineError::BadField {
                path: json_path.to_path_buf(),
                field: format!("annotations[id={}].bbox", a.id),
                message: format!("expected 4 numbers, got {:?}", a.bbox),
            });
        }
        bbox.values().append_slice(&a.bbox);
        bbox.append(true);
    }
    let category_name: Vec<Option<&str>> = anns.iter().map(|a| cat_name.get(&a.category_id).copied()).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(anns.iter().map(|a| a.id))),
        Arc::new(Int64Array::from_iter_values(anns.iter().map(|a| a.image_id))),
        Arc::new(Int64Array::from_iter_values(anns.iter().map(|a| a.category_id))),
        Arc::new(StringArray::from(category_name)),
        Arc::new(bbox.finish()),
        Arc::new(Float64Array::from_iter_values(anns.iter().map(|a| a.area))),
        Arc::new(BooleanArray::from_iter(anns.iter().map(|a| Some(a.iscrowd != 0)))),
        // Polygons or RLE, kept verbatim: exporters re-emit them as COCO json.
        Arc::new(StringArray::from_iter_values(
            anns.iter().map(|a| a.segmentation.to_string()),
        )),
    ];
    let schema = Schema::new(vec![
        Field::new("ann_id", DataType::Int64, false),
        Field::new("coco_id", DataType::Int64, false),
        Field::new("category_id", DataType::Int64, false),
        Field::new("category_name", DataType::Utf8, true),
        Field::new(
            "bbox",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float64, false)), 4),
            false,
        ),
        Field::new("area", DataType::Float64, false),
        Field::new("iscrowd", DataType::Boolean, false),
        Field::new("segmentation", DataType::Utf8, false),
    ]);
    let batch = RecordBatch::try_new(Arc::new(schema), columns).map_err(|source| PipelineError::Arrow {
        path: json_path.to_path_buf(),
        source,
    })?;
    let categories: Vec<_> = inst
        .categories
        .iter()
        .map(|c| serde_json::json!({"id": c.id, "name": c.name, "supercategory": c.supercategory}))
        .collect();
    let mut metadata = BTreeMap::new();
    metadata.insert(
        "coco_categories".to_string(),
        serde_json::Value::from(categories).to_string(),
    );
    let mut original_sizes = BTreeMap::new();
    for img in &inst.images {
        if img.width == 0 || img.height == 0 {
            return Err(PipelineError::BadField {
                path: json_path.to_path_buf(),
                field: format!("images[id={}].width/height", img.id),
                message: "missing or zero: the annotations cannot be scaled to the stored image".into(),
            });
        }
        original_sizes.insert(img.id, [img.width, img.height]);
    }
    Ok(SideTable {
        file: format!("annotations-{split}.parquet"),
        batch,
        metadata,
        original_sizes,
    })
}
