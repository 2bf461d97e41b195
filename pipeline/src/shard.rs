//! Writing and reading image shards (the schema is `schemas::shard_schema`).
//!
//! Image bytes are stored uncompressed (they already are JPEG) without dictionary or
//! statistics; the small columns are zstd-compressed. Row groups are cut by size so a reader
//! streams a shard without holding it whole.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Int32Builder};
use arrow_array::{
    Array, ArrayRef, BinaryArray, FixedSizeListArray, Int32Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow_schema::{DataType, Field, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use crate::error::{IoContext, PipelineError, Result};
use schemas::shard::{col, image_struct_fields, keys};
use schemas::{shard_schema, ShardMetadata};

/// Hashes the bytes on their way to the file, so finishing a shard needs no second read.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the bytes written and their sha256 (hex).
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.written, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One row of a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub split: String,
    pub label: i32,
    pub image: Vec<u8>,
    pub path: String,
    pub width: i32,
    pub height: i32,
    pub bbox: Option<[i32; 4]>,
    pub coco_id: Option<i64>,
    pub domain: Option<String>,
    pub mask: Option<Vec<u8>>,
    pub mask_path: Option<String>,
}

/// Writes a shard to `<final>.tmp` and renames it into place on `finish`, so a crash never
/// leaves a file that looks complete.
pub struct ShardWriter {
    writer: ArrowWriter<HashingWriter<BufWriter<File>>>,
    tmp: TempFile,
    schema: SchemaRef,
    rows: u64,
}

/// `<dest>.tmp`, removed when dropped unless [`TempFile::persist`] renamed it to `dest`: a
/// write that fails (a full disk) or is abandoned (a signal) leaves neither a partial file nor
/// the space it held, and the previous `dest`, if any, stays as it was.
pub struct TempFile {
    tmp: PathBuf,
    dest: PathBuf,
    armed: bool,
}

impl TempFile {
    pub fn new(dest: &Path) -> Self {
        TempFile {
            tmp: tmp_path(dest),
            dest: dest.to_path_buf(),
            armed: true,
        }
    }

    pub fn create(&self) -> Result<File> {
        File::create(&self.tmp).map_err(|e| self.failed(e))
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// An I/O error while writing the temp file, named by the file it was to become.
    pub fn failed(&self, source: std::io::Error) -> PipelineError {
        PipelineError::Write {
            path: self.dest.clone(),
            tmp: self.tmp.clone(),
            source,
        }
    }

    /// Renames the (synced) temp file into place and syncs the folder, so the new name
    /// survives a power cut as well as the contents.
    pub fn persist(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| self.failed(e))?;
        self.armed = false;
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Some file systems refuse to sync a folder; the rename itself has happened.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
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

pub fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    dest.with_file_name(name)
}

/// Writes `bytes` to `dest` atomically (temp file, fsync, rename).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = TempFile::new(dest);
    let mut f = tmp.create()?;
    f.write_all(bytes).map_err(|e| tmp.failed(e))?;
    f.sync_all().map_err(|e| tmp.failed(e))?;
    tmp.persist()
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

pub fn file_sha256(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
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

fn rows_to_batch(schema: &SchemaRef, rows: &[Row]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
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

/// parquet-rs trusts the footer's column chunk offsets and panics on negative ones
/// (`ColumnChunkMetaData::byte_range`; found by fuzzing, kept in fuzz/regressions/shard): a
/// damaged or hostile footer is refused here first, naming the row group and column.
fn check_column_chunks(path: &Path, meta: &parquet::file::metadata::ParquetMetaData, file_len: u64) -> Result<()> {
    for (g, rg) in meta.row_groups().iter().enumerate() {
        for c in rg.columns() {
            let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
            let len = c.compressed_size();
            let end = start.checked_add(len);
            if start < 0 || len < 0 || end.is_none_or(|e| e as u64 > file_len) {
                return Err(PipelineError::BadField {
                    path: path.to_path_buf(),
                    field: format!("row group {g}, column {}", c.column_path()),
                    message: format!(
                        "the footer puts the column chunk at bytes {start}..+{len} of a {file_len}-byte file (a damaged footer)"
                    ),
                });
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!tmp_path(&dest).exists());

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
}
