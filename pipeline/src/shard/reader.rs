//! The shard reader: a Parquet file's footer checked, then its record batches streamed back
//! as rows.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{
    Array, BinaryArray, FixedSizeListArray, Int32Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use schemas::shard::{col, keys};
use schemas::ShardMetadata;

use crate::error::{IoContext, PipelineError, Result};
use crate::shard::row::Row;

/// Streams the rows of one shard, a record batch at a time.
pub struct ShardReader {
    path: PathBuf,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    pending: std::vec::IntoIter<Row>,
    pub metadata: Option<ShardMetadata>,
    pub num_rows: u64,
    /// Row number (in the shard) of the first row this reader returns.
    pub first_row: u64,
    /// Rows returned by earlier batches (for row numbers in errors).
    rows_read: u64,
}

impl ShardReader {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_batch(path, 256)
    }

    pub fn open_with_batch(path: &Path, batch_size: usize) -> Result<Self> {
        Self::open_rows(path, batch_size, None)
    }

    /// The rows of row group `group` only (a streaming reader's unit of reading); row numbers
    /// in errors stay the shard's.
    pub fn open_row_group(path: &Path, group: usize) -> Result<Self> {
        Self::open_rows(path, 256, Some(group))
    }

    fn open_rows(path: &Path, batch_size: usize, group: Option<usize>) -> Result<Self> {
        let perr = |source| PipelineError::Parquet {
            path: path.to_path_buf(),
            source,
        };
        let mut builder = open_parquet(path)?;
        let mut first_row = 0;
        if let Some(g) = group {
            let groups = builder.metadata().row_groups();
            if g >= groups.len() {
                return Err(PipelineError::BadField {
                    path: path.to_path_buf(),
                    field: format!("row group {g}"),
                    message: format!("the shard has {} row groups", groups.len()),
                });
            }
            first_row = groups[..g].iter().map(|r| r.num_rows() as u64).sum();
            builder = builder.with_row_groups(vec![g]);
        }
        let file_meta = builder.metadata().file_metadata();
        let num_rows = file_meta.num_rows() as u64;
        let metadata = file_meta
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == keys::SPLITMASK))
            .and_then(|k| k.value.as_deref())
            .and_then(|v| serde_json::from_str::<ShardMetadata>(v).ok());
        if let Some(m) = &metadata {
            PipelineError::check_schema_version(path, m.schema_version)?;
        }
        let reader = builder.with_batch_size(batch_size).build().map_err(perr)?;
        Ok(ShardReader {
            path: path.to_path_buf(),
            reader,
            pending: Vec::new().into_iter(),
            metadata,
            num_rows,
            first_row,
            rows_read: first_row,
        })
    }

    /// Rows per row group, from the footer.
    pub fn row_group_rows(path: &Path) -> Result<Vec<u64>> {
        Ok(open_parquet(path)?
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as u64)
            .collect())
    }

    fn next_batch(&mut self) -> Option<Result<Vec<Row>>> {
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(source) => {
                return Some(Err(PipelineError::Arrow {
                    path: self.path.clone(),
                    source,
                }))
            }
        };
        let first = self.rows_read;
        self.rows_read += batch.num_rows() as u64;
        Some(
            batch_to_rows(&batch, first).map_err(|(field, message)| PipelineError::BadField {
                path: self.path.clone(),
                field,
                message,
            }),
        )
    }
}

/// A Parquet file's reader builder, its footer checked: every reader of shards and token
/// shards opens files through here.
pub fn open_parquet(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).at(path)?;
    let file_len = file.metadata().at(path)?.len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| PipelineError::Parquet {
        path: path.to_path_buf(),
        source,
    })?;
    check_column_chunks(path, builder.metadata(), file_len)?;
    Ok(builder)
}

/// The most a column chunk may grow by decompression: `MAX_INFLATION` x its stored size
/// plus `INFLATION_SLACK` (shards hold JPEG and PNG bytes, which do not compress, and short
/// columns of labels and splits, which the slack covers).
const MAX_INFLATION: i64 = 100;
const INFLATION_SLACK: i64 = 1 << 20;
/// The largest column chunk read, decompressed.
const MAX_CHUNK: i64 = 4 << 30;

/// parquet-rs trusts the footer's column chunk offsets and panics on negative ones
/// (`ColumnChunkMetaData::byte_range`; found by fuzzing, kept in fuzz/regressions/shard), and
/// decompresses whatever a chunk inflates to (a 21 KB zstd chunk of zeros took 1.2 GB): a
/// damaged or hostile footer is refused here first, naming the row group and column.
fn check_column_chunks(path: &Path, meta: &parquet::file::metadata::ParquetMetaData, file_len: u64) -> Result<()> {
    for (g, rg) in meta.row_groups().iter().enumerate() {
        for c in rg.columns() {
            let bad = |message: String| PipelineError::BadField {
                path: path.to_path_buf(),
                field: format!("row group {g}, column {}", c.column_path()),
                message,
            };
            let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
            let len = c.compressed_size();
            let end = start.checked_add(len);
            if start < 0 || len < 0 || end.is_none_or(|e| e as u64 > file_len) {
                return Err(bad(format!(
                    "the footer puts the column chunk at bytes {start}..+{len} of a {file_len}-byte file (a damaged footer)"
                )));
            }
            let inflated = c.uncompressed_size();
            if !(0..=MAX_CHUNK).contains(&inflated) || inflated > len.saturating_mul(MAX_INFLATION) + INFLATION_SLACK {
                return Err(bad(format!(
                    "the column chunk inflates from {len} to {inflated} bytes (a decompression bomb; at most \
                     {MAX_INFLATION}x + 1 MiB and 4 GiB are read)"
                )));
            }
        }
    }
    Ok(())
}

impl Iterator for ShardReader {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.pending.next() {
                return Some(Ok(r));
            }
            match self.next_batch()? {
                Ok(rows) => self.pending = rows.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> std::result::Result<&'a T, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("missing column {name:?}"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| {
            format!(
                "column {name:?} has type {:?}",
                batch.column_by_name(name).unwrap().data_type()
            )
        })
}

fn blob_parts(s: &StructArray) -> std::result::Result<(&BinaryArray, &StringArray), String> {
    let bytes = s
        .column(0)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .ok_or("blob bytes not binary")?;
    let paths = s
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or("blob path not utf8")?;
    Ok((bytes, paths))
}

/// Label values as i32, from int64 (schema version 2) or int32 (version 1) columns.
pub fn label_values(batch: &RecordBatch) -> std::result::Result<Vec<i32>, String> {
    let c = batch
        .column_by_name(col::LABEL)
        .ok_or_else(|| format!("missing column {:?}", col::LABEL))?;
    if let Some(a) = c.as_any().downcast_ref::<Int64Array>() {
        a.values()
            .iter()
            .map(|&v| i32::try_from(v).map_err(|_| format!("label {v} is out of range")))
            .collect()
    } else if let Some(a) = c.as_any().downcast_ref::<Int32Array>() {
        Ok(a.values().to_vec())
    } else {
        Err(format!("column {:?} has type {:?}", col::LABEL, c.data_type()))
    }
}

/// Rows of a record batch whose first row is row `first` of its file; errors are
/// `(column, message)`.
fn batch_to_rows(batch: &RecordBatch, first: u64) -> std::result::Result<Vec<Row>, (String, String)> {
    let schema = |message: String| ("schema".to_string(), message);
    // Nullable in the schema (for HF `datasets`), required in every row we write.
    for name in schemas::shard::REQUIRED {
        let c = batch
            .column_by_name(name)
            .ok_or_else(|| schema(format!("missing column {name:?}")))?;
        if let Some(i) = (0..c.len()).find(|&i| c.is_null(i)) {
            return Err((name.to_string(), format!("null at row {}", first + i as u64)));
        }
    }
    let id = column::<StringArray>(batch, col::ID).map_err(schema)?;
    let split = column::<StringArray>(batch, col::SPLIT).map_err(schema)?;
    let label = label_values(batch).map_err(|m| (col::LABEL.to_string(), m))?;
    let (image, path) = blob_parts(column::<StructArray>(batch, col::IMAGE).map_err(schema)?).map_err(schema)?;
    let width = column::<Int32Array>(batch, col::WIDTH).map_err(schema)?;
    let height = column::<Int32Array>(batch, col::HEIGHT).map_err(schema)?;
    let bbox = column::<FixedSizeListArray>(batch, col::BBOX).map_err(schema)?;
    let bbox_values = bbox
        .values()
        .as_any()
        .downcast_ref::<Int32Array>()
        .ok_or_else(|| schema("bbox items not int32".into()))?;
    // A hostile file may declare another list width; rows are read 4 values at a time.
    if bbox.value_length() != 4 || bbox_values.len() < 4 * batch.num_rows() {
        return Err(schema(format!(
            "bbox lists of {} values ({} in all for {} rows): expected 4 per row",
            bbox.value_length(),
            bbox_values.len(),
            batch.num_rows()
        )));
    }
    let coco = column::<Int64Array>(batch, col::COCO_ID).map_err(schema)?;
    let domain = column::<StringArray>(batch, col::DOMAIN).map_err(schema)?;
    let mask_struct = column::<StructArray>(batch, col::MASK).map_err(schema)?;
    let (mask, mask_path) = blob_parts(mask_struct).map_err(schema)?;
    if let Some(i) = (0..batch.num_rows()).find(|&i| image.is_null(i)) {
        return Err((
            format!("{}.{}", col::IMAGE, col::BYTES),
            format!("null at row {}", first + i as u64),
        ));
    }
    Ok((0..batch.num_rows())
        .map(|i| Row {
            id: id.value(i).to_string(),
            split: split.value(i).to_string(),
            label: label[i],
            image: image.value(i).to_vec(),
            path: if path.is_valid(i) {
                path.value(i).to_string()
            } else {
                String::new()
            },
            width: width.value(i),
            height: height.value(i),
            bbox: bbox.is_valid(i).then(|| {
                let v = &bbox_values.values()[i * 4..i * 4 + 4];
                [v[0], v[1], v[2], v[3]]
            }),
            coco_id: coco.is_valid(i).then(|| coco.value(i)),
            domain: domain.is_valid(i).then(|| domain.value(i).to_string()),
            mask: mask_struct.is_valid(i).then(|| mask.value(i).to_vec()),
            mask_path: (mask_struct.is_valid(i) && mask_path.is_valid(i)).then(|| mask_path.value(i).to_string()),
        })
        .collect())
}
