//! A dataset as the Hugging Face Hub stores it: Parquet files with an `image` struct (`bytes`,
//! `path`) and, for labeled sets, an integer `label`, whose class names are in the files'
//! `huggingface` metadata (`info.features.label.names`, a `ClassLabel`). The split is read
//! from the file name as `datasets` writes it (`data/train-00000-of-00002.parquet`; also a
//! `train/` folder, and `validation` is `val`). The images stay inside the files: each row
//! names its file and row, and `prepare` reads them there (`source::read_embedded`).

use std::path::Path;

use arrow_array::{Array, Int64Array, StringArray, StructArray};
use parquet::arrow::ProjectionMask;

use super::listing::{walk_files, Listing, SourceImage};
use crate::error::{PipelineError, Result};

/// The split of a Hub file from its name, or `None` for a file that is not one of a split's.
pub fn split_of(rel: &str) -> Option<&'static str> {
    let name = |s: &str| match s {
        "train" => Some("train"),
        "validation" | "valid" | "val" => Some("val"),
        "test" => Some("test"),
        _ => None,
    };
    let path = Path::new(rel);
    let stem = path.file_stem()?.to_str()?;
    name(stem.split('-').next()?).or_else(|| name(path.parent()?.file_name()?.to_str()?))
}

pub fn list(root: &Path) -> Result<Listing> {
    let files: Vec<String> = walk_files(root, ".")?
        .into_iter()
        .filter(|f| f.ends_with(".parquet"))
        .map(|f| f.trim_start_matches("./").to_string())
        .collect();
    if files.is_empty() {
        return Err(PipelineError::MissingMetadata {
            path: root.to_path_buf(),
            hint: "the Hub layout needs *.parquet files with an `image` column".into(),
        });
    }
    let mut listing = Listing::new("parquet", Vec::new());
    let mut names: Option<Vec<String>> = None;
    for rel in files {
        let Some(split) = split_of(&rel) else {
            listing.skip(
                rel.clone(),
                "none",
                "not a split's file (train-*, validation-*, test-* or in such a folder)",
            );
            continue;
        };
        let (file_names, rows) = read_file(&root.join(&rel))?;
        if let (Some(have), Some(new)) = (&names, &file_names) {
            if have != new {
                return Err(PipelineError::BadField {
                    path: root.join(&rel),
                    field: "huggingface metadata: label names".into(),
                    message: "differ from another file's".into(),
                });
            }
        }
        names = names.or(file_names);
        for (row, (path, label)) in rows.into_iter().enumerate() {
            let mut img = SourceImage::new(split, rel.clone(), label);
            img.id = match path {
                Some(p) if !p.is_empty() => format!("{rel}#{row}:{p}"),
                _ => format!("{rel}#{row}"),
            };
            img.embedded_row = Some(row as u64);
            listing.images.push(img);
        }
    }
    listing.class_names = names.unwrap_or_default();
    let classes = listing.class_names.len() as i32;
    if let Some(bad) = listing.images.iter().find(|i| classes > 0 && i.label >= classes) {
        return Err(PipelineError::BadField {
            path: root.join(&bad.rel_path),
            field: format!("row {}: label", bad.embedded_row.unwrap_or(0)),
            message: format!("{} is not one of the {classes} class names", bad.label),
        });
    }
    Ok(listing)
}

type Rows = Vec<(Option<String>, i32)>;

/// A file's class names (from its `huggingface` metadata) and each row's image path and label
/// (-1 where the file has no `label` column or the value is null).
fn read_file(path: &Path) -> Result<(Option<Vec<String>>, Rows)> {
    let builder = crate::shard::open_parquet(path)?;
    let bad = |field: &str, message: String| PipelineError::BadField {
        path: path.to_path_buf(),
        field: field.into(),
        message,
    };
    let schema = builder.schema().clone();
    if schema.field_with_name("image").is_err() {
        return Err(bad("image", "no `image` column (a struct of bytes and path)".into()));
    }
    let names = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "huggingface").and_then(|k| k.value.clone()))
        .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
        .and_then(|v| v["info"]["features"]["label"]["names"].as_array().cloned())
        .map(|a| {
            a.iter()
                .map(|n| n.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| {
                    bad(
                        "huggingface metadata: label names",
                        "a class name is not a string".into(),
                    )
                })
        })
        .transpose()?;
    let mask = columns(builder.parquet_schema(), &["image.path", "label"]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|source| PipelineError::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| PipelineError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let paths = image_child::<StringArray>(&batch, "path");
        let labels = batch
            .column_by_name("label")
            .map(|c| arrow_cast_i64(c.as_ref(), path))
            .transpose()?;
        for i in 0..batch.num_rows() {
            let p = paths.as_ref().filter(|p| p.is_valid(i)).map(|p| p.value(i).to_string());
            let l = labels.as_ref().filter(|l| l.is_valid(i)).map_or(-1, |l| l.value(i));
            let l = i32::try_from(l).ok().filter(|&l| l >= -1).ok_or_else(|| {
                bad(
                    &format!("row {}: label", rows.len()),
                    format!("{l}: a class index or -1"),
                )
            })?;
            rows.push((p, l));
        }
    }
    Ok((names, rows))
}

/// An integer label column as int64 (Hub files use int64 for a `ClassLabel`; int32 also seen).
fn arrow_cast_i64(c: &dyn Array, path: &Path) -> Result<Int64Array> {
    if let Some(a) = c.as_any().downcast_ref::<Int64Array>() {
        return Ok(a.clone());
    }
    if let Some(a) = c.as_any().downcast_ref::<arrow_array::Int32Array>() {
        return Ok(a.iter().map(|v| v.map(i64::from)).collect());
    }
    Err(PipelineError::BadField {
        path: path.to_path_buf(),
        field: "label".into(),
        message: format!("type {:?}: an integer class index is needed", c.data_type()),
    })
}

/// The image bytes of row `row` of the Hub file `root/rel`, or the skip reason. Each thread
/// keeps the last row group it read: `prepare` takes a shard's images in order, so a row group
/// is decoded once, not once per row.
pub fn read_embedded(root: &Path, rel: &str, row: u64) -> std::result::Result<Vec<u8>, String> {
    let path = crate::source::inside(root, rel)?;
    thread_local! {
        static GROUP: std::cell::RefCell<Option<Group>> = const { std::cell::RefCell::new(None) };
    }
    GROUP.with(|cache| {
        let mut cache = cache.borrow_mut();
        let hit = cache
            .as_ref()
            .is_some_and(|(p, first, rows)| *p == path && row >= *first && row < first + rows.len() as u64);
        if !hit {
            *cache = Some(read_group(&path, row).map_err(|e| e.to_string())?);
        }
        let (_, first, rows) = cache.as_ref().expect("filled above");
        rows.get((row - first) as usize)
            .cloned()
            .flatten()
            .ok_or_else(|| format!("row {row}: the image has no bytes (a path-only image is not read)"))
    })
}

/// A row group of a Hub file: the file, its first row and every row's image bytes.
type Group = (std::path::PathBuf, u64, Vec<Option<Vec<u8>>>);

/// The row group of `path` holding `row`.
fn read_group(path: &Path, row: u64) -> Result<Group> {
    let builder = crate::shard::open_parquet(path)?;
    let (mut first, mut group) = (0u64, None);
    for (g, rg) in builder.metadata().row_groups().iter().enumerate() {
        let n = u64::try_from(rg.num_rows()).map_err(|_| PipelineError::BadField {
            path: path.to_path_buf(),
            field: format!("row group {g}"),
            message: format!("{} rows in the footer", rg.num_rows()),
        })?;
        if row < first + n {
            group = Some(g);
            break;
        }
        first = first.saturating_add(n);
    }
    let group = group.ok_or_else(|| PipelineError::BadField {
        path: path.to_path_buf(),
        field: format!("row {row}"),
        message: "past the file's last row".into(),
    })?;
    let expected = builder.metadata().row_group(group).num_rows();
    let mask = columns(builder.parquet_schema(), &["image.bytes"]);
    let perr = |source| PipelineError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let reader = builder
        .with_row_groups(vec![group])
        .with_projection(mask)
        .build()
        .map_err(perr)?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| PipelineError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let bytes =
            image_child::<arrow_array::BinaryArray>(&batch, "bytes").ok_or_else(|| PipelineError::BadField {
                path: path.to_path_buf(),
                field: "image.bytes".into(),
                message: "missing or not binary".into(),
            })?;
        rows.extend((0..bytes.len()).map(|i| bytes.is_valid(i).then(|| bytes.value(i).to_vec())));
    }
    if rows.len() as i64 != expected {
        return Err(PipelineError::BadField {
            path: path.to_path_buf(),
            field: format!("row group {group}"),
            message: format!("the footer says {expected} rows, image.bytes holds {}", rows.len()),
        });
    }
    Ok((path.to_path_buf(), first, rows))
}

/// The leaf columns named (dotted paths such as `image.bytes`) that the file has.
fn columns(schema: &parquet::schema::types::SchemaDescriptor, names: &[&str]) -> ProjectionMask {
    let leaves = (0..schema.num_columns()).filter(|&i| names.contains(&schema.column(i).path().string().as_str()));
    ProjectionMask::leaves(schema, leaves)
}

/// A field of the `image` struct column, when present and of type `T`.
fn image_child<T: Clone + 'static>(batch: &arrow_array::RecordBatch, name: &str) -> Option<T> {
    batch
        .column_by_name("image")?
        .as_any()
        .downcast_ref::<StructArray>()?
        .column_by_name(name)?
        .as_any()
        .downcast_ref::<T>()
        .cloned()
}
