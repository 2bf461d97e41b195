//! `pipeline inspect`: verify a prepared dataset against its manifest (checksums, row counts,
//! labels) and draw a contact sheet of sample images per class.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{imageops, RgbImage};

use crate::error::{PipelineError, Result};
use crate::prepare::load_manifest;
use crate::shard::{file_sha256, ShardReader};
use crate::transcode::decode_upright;
use schemas::shard::col;
use schemas::Manifest;

#[derive(Debug, Clone, Default)]
pub struct InspectReport {
    /// split -> rows counted in the shards.
    pub rows: BTreeMap<String, u64>,
    /// split -> label -> rows, counted from the label column.
    pub histogram: BTreeMap<String, BTreeMap<i32, u64>>,
    pub shards_ok: usize,
    /// Human-readable problems (checksum mismatch, count mismatch, missing file).
    pub problems: Vec<String>,
}

/// Checks every shard's checksum and recounts splits and labels from the data itself.
pub fn verify(dir: &Path) -> Result<(Manifest, InspectReport)> {
    let manifest = load_manifest(dir)?;
    let mut report = InspectReport::default();
    for entry in &manifest.shards {
        let path = dir.join(&entry.file);
        match file_sha256(&path) {
            Err(e) => {
                report.problems.push(format!("{}: {e}", entry.file));
                continue;
            }
            Ok((_, sha)) if sha != entry.sha256 => {
                report.problems.push(format!(
                    "{}: sha256 {sha} but the manifest says {}",
                    entry.file, entry.sha256
                ));
                continue;
            }
            Ok(_) => {}
        }
        let (rows, hist) = count_labels(&path)?;
        if rows.values().sum::<u64>() != entry.rows {
            report.problems.push(format!(
                "{}: {} rows but the manifest says {}",
                entry.file,
                rows.values().sum::<u64>(),
                entry.rows
            ));
        }
        for (split, n) in rows {
            *report.rows.entry(split).or_insert(0) += n;
        }
        for (split, h) in hist {
            let dst = report.histogram.entry(split).or_default();
            for (l, n) in h {
                *dst.entry(l).or_insert(0) += n;
            }
        }
        report.shards_ok += 1;
    }
    for (split, stats) in &manifest.splits {
        let counted = report.rows.get(split).copied().unwrap_or(0);
        if counted != stats.images {
            report.problems.push(format!(
                "split {split}: {counted} rows in shards, {} in the manifest",
                stats.images
            ));
        }
    }
    Ok((manifest, report))
}

type SplitCounts = BTreeMap<String, u64>;
type SplitHistogram = BTreeMap<String, BTreeMap<i32, u64>>;

/// Rows and label counts per split of one shard: a lazy polars scan of its `split` and
/// `label` columns alone (the images are never read), grouped and counted.
fn count_labels(path: &Path) -> Result<(SplitCounts, SplitHistogram)> {
    use polars::prelude::{self as pl, IntoLazy as _};
    let perr = |source| PipelineError::Polars {
        path: path.to_path_buf(),
        source,
    };
    // Checked with our own reader first: polars panics on column types it was not built for,
    // and a shard is outside input. Only the schema `prepare` writes goes on to polars.
    let arrow = crate::shard::open_parquet(path)?;
    let expected = schemas::shard::shard_schema();
    let same =
        |a: &arrow_schema::Field, b: &arrow_schema::Field| a.name() == b.name() && a.data_type() == b.data_type();
    let found = arrow.schema().fields();
    if let Some(f) = found.iter().find(|f| !expected.fields().iter().any(|e| same(f, e))) {
        return Err(PipelineError::BadField {
            path: path.to_path_buf(),
            field: f.name().clone(),
            message: format!(
                "{:?} is not a column of the shard schema `pipeline prepare` writes",
                f.data_type()
            ),
        });
    }
    drop(arrow);
    let source = pl::PlRefPath::try_from_path(path).map_err(perr)?;
    let counts = pl::LazyFrame::scan_parquet(source, pl::ScanArgsParquet::default())
        .map_err(perr)?
        .select([pl::col(col::SPLIT), pl::col(col::LABEL).fill_null(pl::lit(-1i64))])
        .group_by([pl::col(col::SPLIT), pl::col(col::LABEL)])
        .agg([pl::len().alias("rows")])
        .collect()
        .map_err(perr)?
        .lazy()
        .select([
            pl::col(col::SPLIT),
            pl::col(col::LABEL).strict_cast(pl::DataType::Int32),
            pl::col("rows").cast(pl::DataType::UInt64),
        ])
        .collect()
        .map_err(perr)?;
    let bad = |message: String| PipelineError::BadField {
        path: path.to_path_buf(),
        field: "split/label".into(),
        message,
    };
    let split = counts.column(col::SPLIT).and_then(|c| c.str()).map_err(perr)?;
    let label = counts.column(col::LABEL).and_then(|c| c.i32()).map_err(perr)?;
    let n = counts.column("rows").and_then(|c| c.u64()).map_err(perr)?;
    let (mut rows, mut hist) = (BTreeMap::new(), SplitHistogram::new());
    for i in 0..counts.height() {
        let (Some(s), Some(l), Some(n)) = (split.get(i), label.get(i), n.get(i)) else {
            return Err(bad("a row without a split".into()));
        };
        *hist.entry(s.to_string()).or_default().entry(l).or_insert(0) += n;
        *rows.entry(s.to_string()).or_insert(0) += n;
    }
    Ok((rows, hist))
}

/// Draws up to `per_class` thumbnails for each of the first `max_classes` classes (one row
/// each; unlabeled datasets get rows of arbitrary images) and writes a PNG.
pub fn contact_sheet(
    dir: &Path,
    manifest: &Manifest,
    out: &Path,
    per_class: usize,
    max_classes: usize,
) -> Result<PathBuf> {
    const THUMB: u32 = 96;
    let labeled = !manifest.class_names.is_empty();
    let n_rows = if labeled {
        manifest.class_names.len().min(max_classes)
    } else {
        max_classes
    };
    let mut cells: Vec<Vec<RgbImage>> = vec![Vec::new(); n_rows];
    let mut next_unlabeled = 0;
    'shards: for entry in &manifest.shards {
        for row in ShardReader::open(&dir.join(&entry.file))? {
            let row = row?;
            let slot = if labeled {
                if row.label < 0 || row.label as usize >= n_rows {
                    continue;
                }
                row.label as usize
            } else {
                next_unlabeled / per_class
            };
            if slot >= n_rows || cells[slot].len() >= per_class {
                if cells.iter().all(|c| c.len() >= per_class) {
                    break 'shards;
                }
                continue;
            }
            if let Ok((img, _)) = decode_upright(&row.image) {
                // Center square crop so thumbnails tile without distortion.
                let s = img.width().min(img.height());
                let sq = imageops::crop_imm(&img, (img.width() - s) / 2, (img.height() - s) / 2, s, s).to_image();
                cells[slot].push(imageops::resize(&sq, THUMB, THUMB, imageops::FilterType::Triangle));
                next_unlabeled += 1;
            }
        }
    }
    let mut sheet = RgbImage::from_pixel(
        per_class as u32 * (THUMB + 2),
        n_rows as u32 * (THUMB + 2),
        image::Rgb([255, 255, 255]),
    );
    for (r, row) in cells.iter().enumerate() {
        for (c, thumb) in row.iter().enumerate() {
            imageops::replace(
                &mut sheet,
                thumb,
                (c as u32 * (THUMB + 2)) as i64,
                (r as u32 * (THUMB + 2)) as i64,
            );
        }
    }
    crate::shard::write_png(out, &sheet)?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray};

    use super::*;

    fn write(path: &Path, columns: Vec<(&str, ArrayRef)>) {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn labels_are_counted_by_split_and_a_foreign_column_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.parquet");
        let split: ArrayRef = Arc::new(StringArray::from(vec!["train", "train", "val", "train"]));
        let label: ArrayRef = Arc::new(Int64Array::from(vec![Some(2), Some(2), Some(0), None]));
        write(&good, vec![(col::SPLIT, split.clone()), (col::LABEL, label.clone())]);
        let (rows, hist) = count_labels(&good).unwrap();
        assert_eq!((rows["train"], rows["val"]), (3, 1));
        assert_eq!(hist["train"], BTreeMap::from([(-1, 1), (2, 2)]));
        // A decimal column (a type polars panics on when built without it) is refused first.
        let bad = dir.path().join("bad.parquet");
        let weird: ArrayRef = Arc::new(Decimal128Array::from(vec![1i128, 2, 3, 4]));
        write(&bad, vec![(col::SPLIT, split), (col::LABEL, label), ("weird", weird)]);
        let err = count_labels(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.parquet") && err.contains("weird"), "{err}");
    }
}
