//! Arrow schema of an image shard.
//!
//! One row per image. The `image` column is a struct `{bytes, path}`, the layout of
//! HuggingFace `datasets`' `Image` feature, so that polars, duckdb, pyarrow and `datasets` read
//! the shards as they are. Class names, the HF `features` JSON and the schema version live in the
//! Parquet key-value metadata.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Bumped whenever a column is added, removed or changes type or meaning. Version 2: every
/// field nullable and `label` int64, the fields HF `datasets` builds for its features
/// (version 1 shards, `label` int32 and required columns, are still read).
pub const SCHEMA_VERSION: u32 = 2;

/// The oldest shard schema the readers accept.
pub const MIN_SCHEMA_VERSION: u32 = 1;

/// Key-value metadata keys written into every shard's footer.
pub mod keys {
    /// JSON [`super::ShardMetadata`].
    pub const SPLITMASK: &str = "splitmask";
    /// HuggingFace `datasets` info (`{"info": {"features": ...}}`), read by `load_dataset`.
    pub const HUGGINGFACE: &str = "huggingface";
}

/// Column names, shared by writers and readers so a rename is a compile error.
pub mod col {
    pub const ID: &str = "id";
    pub const SPLIT: &str = "split";
    pub const LABEL: &str = "label";
    pub const IMAGE: &str = "image";
    pub const BYTES: &str = "bytes";
    pub const PATH: &str = "path";
    pub const WIDTH: &str = "width";
    pub const HEIGHT: &str = "height";
    pub const BBOX: &str = "bbox";
    pub const COCO_ID: &str = "coco_id";
    pub const DOMAIN: &str = "domain";
    pub const MASK: &str = "mask";
}

/// Fields of the HF `Image` struct: `{bytes: binary, path: string}`.
pub fn image_struct_fields() -> Fields {
    Fields::from(vec![
        Field::new(col::BYTES, DataType::Binary, true),
        Field::new(col::PATH, DataType::Utf8, true),
    ])
}

/// The schema every shard has, whatever the dataset. Source columns that a dataset lacks
/// (`bbox` outside Stanford Cars, `coco_id` outside COCO, `mask` outside ADE20k) are null, which
/// costs nothing in Parquet and keeps one reader for all datasets.
///
/// Every field is declared nullable, even those that are never null (the readers check them):
/// HF `datasets` takes a declared feature (`Image`, `ClassLabel`) only when the file's Arrow
/// field equals the one it builds for that feature, and it builds nullable fields (and int64
/// for a `ClassLabel`); a non-nullable field would come out as a plain struct or int.
pub fn shard_schema() -> Schema {
    let bbox_item = Arc::new(Field::new("item", DataType::Int32, true));
    Schema::new(vec![
        Field::new(col::ID, DataType::Utf8, true),
        Field::new(col::SPLIT, DataType::Utf8, true),
        Field::new(col::LABEL, DataType::Int64, true),
        Field::new(col::IMAGE, DataType::Struct(image_struct_fields()), true),
        Field::new(col::WIDTH, DataType::Int32, true),
        Field::new(col::HEIGHT, DataType::Int32, true),
        // [x1, y1, x2, y2] in source pixels, as the dataset's metadata gives it.
        Field::new(col::BBOX, DataType::FixedSizeList(bbox_item, 4), true),
        Field::new(col::COCO_ID, DataType::Int64, true),
        Field::new(col::DOMAIN, DataType::Utf8, true),
        // Segmentation map (PNG), resized with the image so both stay aligned.
        Field::new(col::MASK, DataType::Struct(image_struct_fields()), true),
    ])
}

/// Columns every row has a value in (nullable in the schema only for HF `datasets`).
pub const REQUIRED: [&str; 6] = [col::ID, col::SPLIT, col::LABEL, col::IMAGE, col::WIDTH, col::HEIGHT];

/// What the `splitmask` key of a shard's footer holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMetadata {
    pub schema_version: u32,
    pub dataset: String,
    pub split: String,
    /// Index = label.
    pub class_names: Vec<String>,
}

impl ShardMetadata {
    /// All key-value pairs to write into the Parquet footer.
    pub fn to_kv(&self) -> BTreeMap<String, String> {
        let mut kv = BTreeMap::new();
        kv.insert(
            keys::SPLITMASK.to_string(),
            serde_json::to_string(self).expect("metadata serializes"),
        );
        kv.insert(keys::HUGGINGFACE.to_string(), hf_info(&self.class_names).to_string());
        kv
    }
}

/// HF `datasets` features for the shard schema, each matching its Arrow field exactly. Labels
/// are a `ClassLabel` when the dataset has class names, a plain int64 otherwise (`-1` marks
/// unlabeled rows, as in `datasets`).
pub fn hf_info(class_names: &[String]) -> serde_json::Value {
    let value = |dtype: &str| json!({"dtype": dtype, "_type": "Value"});
    let label = if class_names.is_empty() {
        value("int64")
    } else {
        json!({"names": class_names, "_type": "ClassLabel"})
    };
    json!({
        "info": {
            "features": {
                col::ID: value("string"),
                col::SPLIT: value("string"),
                col::LABEL: label,
                col::IMAGE: {"_type": "Image"},
                col::WIDTH: value("int32"),
                col::HEIGHT: value("int32"),
                col::BBOX: {"feature": value("int32"), "length": 4, "_type": "Sequence"},
                col::COCO_ID: value("int64"),
                col::DOMAIN: value("string"),
                col::MASK: {"_type": "Image"},
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_features_name_every_column() {
        let info = hf_info(&["a".into()]);
        let features = info["info"]["features"].as_object().unwrap();
        let schema = shard_schema();
        let cols: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(features.len(), cols.len());
        for c in cols {
            assert!(features.contains_key(c), "column {c} missing from HF features");
        }
        assert_eq!(info["info"]["features"]["label"]["_type"], "ClassLabel");
        assert_eq!(hf_info(&[])["info"]["features"]["label"]["_type"], "Value");
    }

    #[test]
    fn metadata_round_trips() {
        let m = ShardMetadata {
            schema_version: SCHEMA_VERSION,
            dataset: "cars".into(),
            split: "train".into(),
            class_names: vec!["AM General Hummer SUV 2000".into()],
        };
        let kv = m.to_kv();
        let back: ShardMetadata = serde_json::from_str(&kv[keys::SPLITMASK]).unwrap();
        assert_eq!(back, m);
    }
}
