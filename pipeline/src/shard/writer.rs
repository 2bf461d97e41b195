//! The shard writer: rows to Arrow batches to a Parquet file, written atomically and hashed on
//! the way out.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Int32Builder};
use arrow_array::{ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use schemas::shard::{col, image_struct_fields};
use schemas::{shard_schema, ShardMetadata};

use crate::error::{PipelineError, Result};
use crate::shard::atomic::TempFile;
use crate::shard::hashing::{file_sha256, HashingWriter};
use crate::shard::row::Row;

/// Writes a shard to a temp file beside `<final>` and renames it into place on `finish`, so a crash never
/// leaves a file that looks complete.
pub struct ShardWriter {
    writer: ArrowWriter<HashingWriter<BufWriter<File>>>,
    tmp: TempFile,
    schema: SchemaRef,
    rows: u64,
}

/// Row groups are cut by their encoded size rather than a row count, since rows range from a
/// few KB (thumbnails) to MBs (full-resolution photos).
pub fn writer_properties(metadata: Vec<KeyValue>, row_group_bytes: usize) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
        .set_max_row_group_row_count(None)
        .set_max_row_group_bytes(Some(row_group_bytes))
        .set_key_value_metadata(Some(metadata));
    for blob in [col::IMAGE, col::MASK] {
        let path = ColumnPath::new(vec![blob.to_string(), col::BYTES.to_string()]);
        props = props
            .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    props.build()
}

impl ShardWriter {
    pub fn create(dest: &Path, meta: &ShardMetadata, row_group_bytes: usize) -> Result<Self> {
        let tmp = TempFile::new(dest);
        let file = tmp.create()?;
        // The footer metadata goes both into the Parquet key-value metadata (duckdb, polars,
        // our reader) and into the embedded Arrow schema (pyarrow, HF `datasets`).
        let kv = meta.to_kv().into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        let schema: SchemaRef = Arc::new(
            shard_schema().with_metadata(meta.to_kv().into_iter().collect::<std::collections::HashMap<_, _>>()),
        );
        let sink = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let writer = ArrowWriter::try_new(sink, schema.clone(), Some(writer_properties(kv, row_group_bytes)))
            .map_err(|source| parquet_write_error(&tmp, source))?;
        Ok(ShardWriter {
            writer,
            tmp,
            schema,
            rows: 0,
        })
    }

    pub fn write(&mut self, rows: &[Row]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch = rows_to_batch(&self.schema, rows).map_err(|source| PipelineError::Arrow {
            path: self.tmp.dest().to_path_buf(),
            source,
        })?;
        self.writer
            .write(&batch)
            .map_err(|source| parquet_write_error(&self.tmp, source))?;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Closes, syncs and renames the file; returns (rows, bytes, sha256).
    pub fn finish(self) -> Result<(u64, u64, String)> {
        let ShardWriter { writer, tmp, rows, .. } = self;
        let mut sink = writer
            .into_inner()
            .map_err(|source| parquet_write_error(&tmp, source))?;
        sink.flush().map_err(|e| tmp.failed(e))?;
        let (file, bytes, sha) = sink.finish();
        file.get_ref().sync_all().map_err(|e| tmp.failed(e))?;
        tmp.persist()?;
        Ok((rows, bytes, sha))
    }
}

/// A Parquet writer's error: the I/O error underneath (a full disk) is reported as a failed
/// write of the file, the rest as Parquet errors naming it.
pub fn parquet_write_error(tmp: &TempFile, source: parquet::errors::ParquetError) -> PipelineError {
    match source {
        parquet::errors::ParquetError::External(e) if e.is::<std::io::Error>() => {
            tmp.failed(*e.downcast::<std::io::Error>().expect("checked"))
        }
        source => PipelineError::Parquet {
            path: tmp.dest().to_path_buf(),
            source,
        },
    }
}

/// Writes a whole record batch as one Parquet file, atomically.
pub fn write_table(dest: &Path, batch: &RecordBatch, metadata: Vec<KeyValue>) -> Result<(u64, String)> {
    let tmp = TempFile::new(dest);
    let file = tmp.create()?;
    let perr = |source| parquet_write_error(&tmp, source);
    let mut w =
        ArrowWriter::try_new(file, batch.schema(), Some(writer_properties(metadata, 64 << 20))).map_err(perr)?;
    w.write(batch).map_err(perr)?;
    let f = w.into_inner().map_err(perr)?;
    f.sync_all().map_err(|e| tmp.failed(e))?;
    let (bytes, sha) = file_sha256(tmp.path())?;
    tmp.persist()?;
    Ok((bytes, sha))
}

fn blob_struct(bytes: Vec<Option<&[u8]>>, paths: Vec<Option<&str>>, nullable: bool) -> StructArray {
    let nulls = nullable.then(|| bytes.iter().map(Option::is_some).collect::<Vec<_>>().into());
    StructArray::new(
        image_struct_fields(),
        vec![
            Arc::new(BinaryArray::from(bytes)) as ArrayRef,
            Arc::new(StringArray::from(paths)),
        ],
        nulls,
    )
}

pub(super) fn rows_to_batch(
    schema: &SchemaRef,
    rows: &[Row],
) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let mut bbox = FixedSizeListBuilder::new(Int32Builder::new(), 4).with_field(Arc::new(Field::new(
        "item",
        DataType::Int32,
        true,
    )));
    for r in rows {
        match r.bbox {
            Some(b) => {
                bbox.values().append_slice(&b);
                bbox.append(true);
            }
            None => {
                bbox.values().append_slice(&[0; 4]);
                bbox.append(false);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.id))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.split))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| i64::from(r.label)))),
        Arc::new(blob_struct(
            rows.iter().map(|r| Some(r.image.as_slice())).collect(),
            rows.iter().map(|r| Some(r.path.as_str())).collect(),
            false,
        )),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.width))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.height))),
        Arc::new(bbox.finish()),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.coco_id))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.domain.as_deref()))),
        Arc::new(blob_struct(
            rows.iter().map(|r| r.mask.as_deref()).collect(),
            rows.iter().map(|r| r.mask_path.as_deref()).collect(),
            true,
        )),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}
