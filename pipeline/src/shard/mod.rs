//! Writing and reading image shards (the schema is `schemas::shard_schema`).
//!
//! Image bytes are stored uncompressed (they already are JPEG) without dictionary or
//! statistics; the small columns are zstd-compressed. Row groups are cut by size so a reader
//! streams a shard without holding it whole.
//!
//! The submodules import each other, never this file, so the re-exports below stay the only
//! path in and the import graph has no loop.

mod atomic;
mod hashing;
mod reader;
mod row;
mod writer;

pub use atomic::{tmp_path, write_atomic, write_png, TempFile};
pub use hashing::{file_sha256, HashingWriter};
pub use reader::{label_values, open_parquet, ShardReader};
pub use row::Row;
pub use writer::{parquet_write_error, write_table, writer_properties, ShardWriter};

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::Path;
    use std::sync::Arc;

    use arrow_array::{Array, ArrayRef, FixedSizeListArray, Int32Array, Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, SchemaRef};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::metadata::KeyValue;
    use schemas::shard::col;
    use schemas::{shard_schema, ShardMetadata};

    use super::writer::rows_to_batch;
    use super::*;
    use crate::error::Result;

    fn row(i: usize) -> Row {
        Row {
            id: format!("train/c/{i}.jpg"),
            split: "train".into(),
            label: (i % 3) as i32 - 1,
            image: vec![i as u8; 100 + i],
            path: format!("c/{i}.jpg"),
            width: 10 + i as i32,
            height: 20,
            bbox: i.is_multiple_of(2).then_some([1, 2, 3, i as i32]),
            coco_id: i.is_multiple_of(3).then_some(i as i64 * 1000),
            domain: i.is_multiple_of(4).then(|| "sketch".to_string()),
            mask: i.is_multiple_of(5).then(|| vec![7; i]),
            mask_path: i.is_multiple_of(5).then(|| format!("m/{i}.png")),
        }
    }

    /// A write replaces a symlink planted at its destination (rename replaces the link itself)
    /// and never writes through it; the old predictable temp name is no longer used.
    #[cfg(unix)]
    #[test]
    fn atomic_writes_do_not_follow_planted_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious.txt");
        std::fs::write(&target, "keep me").unwrap();
        let dest = dir.path().join("config.json");
        std::os::unix::fs::symlink(&target, dir.path().join("config.json.tmp")).unwrap();
        std::os::unix::fs::symlink(&target, &dest).unwrap();
        write_atomic(&dest, b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        assert_eq!(std::fs::read(&dest).unwrap(), b"{}");
        assert!(!std::fs::symlink_metadata(&dest).unwrap().file_type().is_symlink());
        let a = tmp_path(&dest);
        assert_ne!(a, tmp_path(&dest), "temp names are not predictable");
        // What a killed writer left (a random temp, the old fixed name) goes with the next
        // write of the same file; another file's temp stays.
        let planted = dir.path().join("config.json.tmp");
        assert!(
            std::fs::symlink_metadata(&planted).is_err(),
            "the planted link went as a stale temp"
        );
        let other = dir.path().join("other.json.0123456789abcdef.tmp");
        for left in [a.clone(), dir.path().join("config.json.tmp"), other.clone()] {
            std::fs::write(left, b"partial").unwrap();
        }
        write_atomic(&dest, b"{}").unwrap();
        assert!(!a.exists() && !dir.path().join("config.json.tmp").exists() && other.exists());
    }

    #[test]
    fn shard_round_trip_with_small_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("train-00000-of-00001.parquet");
        let meta = ShardMetadata {
            schema_version: schemas::SCHEMA_VERSION,
            dataset: "t".into(),
            split: "train".into(),
            class_names: vec!["a".into(), "b".into()],
        };
        let rows: Vec<Row> = (0..50).map(row).collect();
        let mut w = ShardWriter::create(&dest, &meta, 1000).unwrap();
        for chunk in rows.chunks(7) {
            w.write(chunk).unwrap();
        }
        assert!(!dest.exists(), "final name appears only on finish");
        let (n, bytes, sha) = w.finish().unwrap();
        assert_eq!(n, 50);
        assert_eq!((bytes, sha), file_sha256(&dest).unwrap());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [dest.file_name().unwrap()], "no temp file is left");

        let reader = ShardReader::open_with_batch(&dest, 8).unwrap();
        assert_eq!(reader.num_rows, 50);
        assert_eq!(reader.metadata.as_ref(), Some(&meta));
        let back: Vec<Row> = reader.collect::<Result<_>>().unwrap();
        assert_eq!(back, rows);

        let pq = parquet::file::reader::SerializedFileReader::new(File::open(&dest).unwrap()).unwrap();
        use parquet::file::reader::FileReader;
        assert!(pq.metadata().num_row_groups() > 1, "row groups are cut by size");
        let rg = pq.metadata().row_group(0);
        let image_col = rg
            .columns()
            .iter()
            .find(|c| c.column_path().string() == "image.bytes")
            .unwrap();
        assert_eq!(image_col.compression(), Compression::UNCOMPRESSED);
        let id_col = rg.columns().iter().find(|c| c.column_path().string() == "id").unwrap();
        assert!(matches!(id_col.compression(), Compression::ZSTD(_)));

        // Row groups read one at a time give the same rows, in order, and nothing else.
        let groups = ShardReader::row_group_rows(&dest).unwrap();
        assert_eq!(groups.len(), pq.metadata().num_row_groups());
        assert_eq!(groups.iter().sum::<u64>(), 50);
        let mut by_group = Vec::new();
        for (g, &n) in groups.iter().enumerate() {
            let part: Vec<Row> = ShardReader::open_row_group(&dest, g)
                .unwrap()
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(part.len() as u64, n);
            by_group.extend(part);
        }
        assert_eq!(by_group, rows);
        let err = ShardReader::open_row_group(&dest, groups.len())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&format!("row group {}", groups.len())), "{err}");
    }

    /// Writes `batch` under `schema` with a footer naming `version`, as an older (or newer)
    /// build would have.
    fn write_raw(dest: &Path, schema: SchemaRef, columns: Vec<ArrayRef>, version: u32) {
        let meta = ShardMetadata {
            schema_version: version,
            dataset: "t".into(),
            split: "train".into(),
            class_names: vec!["a".into(), "b".into()],
        };
        let kv = meta.to_kv().into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let mut w = ArrowWriter::try_new(
            File::create(dest).unwrap(),
            schema,
            Some(writer_properties(kv, 1 << 20)),
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    /// Columns of `rows` in the current schema, from the writer itself.
    fn columns(rows: &[Row]) -> Vec<ArrayRef> {
        rows_to_batch(&Arc::new(shard_schema()), rows)
            .unwrap()
            .columns()
            .to_vec()
    }

    #[test]
    fn version_1_shards_with_int32_labels_and_required_columns_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("train-00000-of-00001.parquet");
        let rows: Vec<Row> = (0..9).map(row).collect();
        // Version 1: `label` int32, the always-present columns and the bbox items non-nullable.
        let v2 = shard_schema();
        let v1 = arrow_schema::Schema::new(
            v2.fields()
                .iter()
                .map(|f| {
                    let required = schemas::shard::REQUIRED.contains(&f.name().as_str());
                    let f = f.as_ref().clone().with_nullable(!required);
                    match f.name().as_str() {
                        col::LABEL => f.with_data_type(DataType::Int32),
                        col::BBOX => f.with_data_type(DataType::FixedSizeList(
                            Arc::new(Field::new("item", DataType::Int32, false)),
                            4,
                        )),
                        _ => f,
                    }
                })
                .collect::<Vec<_>>(),
        );
        let mut cols = columns(&rows);
        cols[2] = Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.label)));
        let bbox = cols[6].as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        cols[6] = Arc::new(FixedSizeListArray::new(
            Arc::new(Field::new("item", DataType::Int32, false)),
            4,
            bbox.values().clone(),
            bbox.nulls().cloned(),
        ));
        write_raw(&dest, Arc::new(v1), cols, 1);
        let back: Vec<Row> = ShardReader::open(&dest).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(back, rows);
    }

    #[test]
    fn a_newer_schema_version_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("train-00000-of-00001.parquet");
        let rows: Vec<Row> = (0..3).map(row).collect();
        write_raw(
            &dest,
            Arc::new(shard_schema()),
            columns(&rows),
            schemas::SCHEMA_VERSION + 1,
        );
        let err = ShardReader::open(&dest).err().unwrap().to_string();
        assert!(
            err.contains("train-00000-of-00001.parquet") && err.contains("re-run `pipeline prepare`"),
            "{err}"
        );
    }

    /// A hostile shard declaring bbox lists of 3 values is an error naming the file, not an
    /// out-of-bounds panic in every reader.
    #[test]
    fn a_bbox_list_of_another_width_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("train-00000-of-00001.parquet");
        let rows: Vec<Row> = (0..8).map(row).collect();
        let item = Arc::new(Field::new("item", DataType::Int32, true));
        let schema = arrow_schema::Schema::new(
            shard_schema()
                .fields()
                .iter()
                .map(|f| match f.name().as_str() {
                    col::BBOX => f
                        .as_ref()
                        .clone()
                        .with_data_type(DataType::FixedSizeList(item.clone(), 3)),
                    _ => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
        );
        let mut cols = columns(&rows);
        let values = Int32Array::from_iter_values(0..3 * rows.len() as i32);
        cols[6] = Arc::new(FixedSizeListArray::new(item, 3, Arc::new(values), None));
        write_raw(&dest, Arc::new(schema), cols, schemas::SCHEMA_VERSION);
        let err = ShardReader::open(&dest)
            .unwrap()
            .collect::<Result<Vec<Row>>>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train-00000-of-00001.parquet") && err.contains("bbox lists of 3 values"),
            "{err}"
        );
    }

    #[test]
    fn a_null_in_a_required_column_names_the_column_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("train-00000-of-00001.parquet");
        let rows: Vec<Row> = (0..12).map(row).collect();
        let mut cols = columns(&rows);
        cols[2] = Arc::new(Int64Array::from_iter((0..12).map(|i| (i != 10).then_some(1i64))));
        write_raw(&dest, Arc::new(shard_schema()), cols, schemas::SCHEMA_VERSION);
        let err = ShardReader::open_with_batch(&dest, 4)
            .unwrap()
            .collect::<Result<Vec<Row>>>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("'label'") && err.contains("null at row 10"), "{err}");
    }

    #[test]
    fn a_column_that_inflates_like_a_bomb_is_refused_before_it_is_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("train-00000-of-00001.parquet");
        let mut rows: Vec<Row> = (0..8).map(row).collect();
        for (i, r) in rows.iter_mut().enumerate() {
            r.path = format!("{i}{}", "0".repeat(4 << 20));
        }
        write_raw(&dest, Arc::new(shard_schema()), columns(&rows), schemas::SCHEMA_VERSION);
        let stored = std::fs::metadata(&dest).unwrap().len();
        assert!(stored < 1 << 20, "{stored} bytes on disk for 32 MiB of paths");
        let Err(e) = ShardReader::open_with_batch(&dest, 4) else {
            panic!("a decompression bomb was opened")
        };
        let err = e.to_string();
        assert!(
            err.contains("column \"image.path\"") && err.contains("decompression bomb"),
            "{err}"
        );
        // The same rows with honest paths still open.
        std::fs::create_dir(dir.path().join("honest")).unwrap();
        let honest = dir.path().join("honest/train-00000-of-00001.parquet");
        let rows: Vec<Row> = (0..8).map(row).collect();
        write_raw(
            &honest,
            Arc::new(shard_schema()),
            columns(&rows),
            schemas::SCHEMA_VERSION,
        );
        assert_eq!(ShardReader::open_with_batch(&honest, 4).unwrap().count(), 8);
    }
}
