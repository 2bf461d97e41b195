//! `pipeline coco-json`: a prepared COCO split as a detection dataset detectron2 and
//! mmdetection register as it is: `annotations/instances_<split>.json` whose boxes, polygons
//! and crowd masks are in the stored images' pixels, and the stored images under `<split>/`.
//! File names are written from COCO ids (`000000139.jpg`), never from the shards' paths.

use std::path::{Path, PathBuf};

use arrow_array::{
    Array, BooleanArray, FixedSizeListArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{IoContext, PipelineError, Result};
use crate::prepare::load_manifest;
use crate::shard::{write_atomic, ShardReader};

/// What [`write_coco`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CocoExport {
    pub json: PathBuf,
    pub images: usize,
    pub annotations: usize,
    pub categories: usize,
    /// Where the images went (absent with `images = false`).
    pub image_dir: Option<PathBuf>,
}

/// Writes `out/annotations/instances_<split>.json` (and, with `images`, `out/<split>/*`) for
/// the prepared COCO dataset in `data`.
pub fn write_coco(data: &Path, split: &str, out: &Path, images: bool) -> Result<CocoExport> {
    let manifest = load_manifest(data)?;
    let table = manifest.side_tables.iter().find(|t| t.split == split).ok_or_else(|| {
        PipelineError::Invalid(format!("{}: no COCO annotations for split {split:?}", data.display()))
    })?;
    let path = data.join(&table.file);
    let (batches, categories) = read_table(&path)?;
    let mut annotations = Vec::new();
    for b in &batches {
        annotations.extend(annotation_rows(b, &path)?);
    }
    let image_dir = out.join(split);
    let json_dir = out.join("annotations");
    for dir in [&json_dir, &image_dir].into_iter().take(if images { 2 } else { 1 }) {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    let mut listed = Vec::new();
    for s in manifest.shards.iter().filter(|s| s.split == split) {
        for row in ShardReader::open(&data.join(&s.file))? {
            let row = row?;
            let Some(id) = row.coco_id else { continue };
            let ext = if row.image.starts_with(b"\x89PNG") {
                "png"
            } else {
                "jpg"
            };
            let file_name = format!("{id:012}.{ext}");
            if images {
                write_atomic(&image_dir.join(&file_name), &row.image)?;
            }
            listed.push(json!({"id": id, "file_name": file_name, "width": row.width, "height": row.height}));
        }
    }
    let json_path = json_dir.join(format!("instances_{split}.json"));
    let doc = json!({"images": listed, "annotations": annotations, "categories": categories});
    write_atomic(&json_path, &serde_json::to_vec(&doc).expect("serializable"))?;
    Ok(CocoExport {
        json: json_path,
        images: listed.len(),
        annotations: annotations.len(),
        categories: categories.as_array().map_or(0, Vec::len),
        image_dir: images.then_some(image_dir),
    })
}

/// The annotation table's batches and its `coco_categories` metadata.
fn read_table(path: &Path) -> Result<(Vec<RecordBatch>, Value)> {
    let builder = crate::shard::open_parquet(path)?;
    let categories = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "coco_categories"))
        .and_then(|k| k.value.as_deref())
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
        .filter(Value::is_array)
        .ok_or_else(|| PipelineError::BadField {
            path: path.to_path_buf(),
            field: "coco_categories (file metadata)".into(),
            message: "missing or not a list".into(),
        })?;
    let reader = builder.build().map_err(|source| PipelineError::Parquet {
        path: path.to_path_buf(),
        source,
    })?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| PipelineError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((batches, categories))
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| PipelineError::BadField {
            path: path.to_path_buf(),
            field: name.into(),
            message: if name == "width" {
                "absent: this dataset was prepared before annotations were scaled to the stored images; prepare it again".into()
            } else {
                "missing or of an unexpected type".into()
            },
        })
}

/// COCO annotation objects of one batch of the table.
fn annotation_rows(b: &RecordBatch, path: &Path) -> Result<Vec<Value>> {
    column::<Int32Array>(b, "width", path)?;
    let id = column::<Int64Array>(b, "ann_id", path)?;
    let image = column::<Int64Array>(b, "coco_id", path)?;
    let category = column::<Int64Array>(b, "category_id", path)?;
    let bbox = column::<FixedSizeListArray>(b, "bbox", path)?;
    let area = column::<Float64Array>(b, "area", path)?;
    let crowd = column::<BooleanArray>(b, "iscrowd", path)?;
    let seg = column::<StringArray>(b, "segmentation", path)?;
    (0..b.num_rows())
        .map(|i| {
            let bad = |m: String| PipelineError::BadField {
                path: path.to_path_buf(),
                field: format!("annotation {}: bbox/segmentation", id.value(i)),
                message: m,
            };
            let v = bbox.value(i);
            let v = v
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| bad("bbox items are not f64".into()))?;
            let segmentation: Value = serde_json::from_str(seg.value(i)).map_err(|e| bad(e.to_string()))?;
            Ok(json!({
                "id": id.value(i), "image_id": image.value(i), "category_id": category.value(i),
                "bbox": v.values().to_vec(), "area": area.value(i), "iscrowd": u8::from(crowd.value(i)),
                "segmentation": segmentation,
            }))
        })
        .collect()
}
