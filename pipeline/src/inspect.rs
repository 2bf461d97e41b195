//! `pipeline inspect`: verify a prepared dataset against its manifest (checksums, row counts,
//! labels) and draw a contact sheet of sample images per class.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::StringArray;
use image::{imageops, RgbImage};
use parquet::arrow::ProjectionMask;

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

fn count_labels(path: &Path) -> Result<(SplitCounts, SplitHistogram)> {
    let perr = |source| PipelineError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let builder = crate::shard::open_parquet(path)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), [col::SPLIT, col::LABEL]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(perr)?;
    let mut rows = BTreeMap::new();
    let mut hist: SplitHistogram = BTreeMap::new();
    for batch in reader {
        let batch = batch.map_err(|source| PipelineError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = || PipelineError::BadField {
            path: path.to_path_buf(),
            field: "split/label".into(),
            message: "unexpected column types".into(),
        };
        let split = batch
            .column_by_name(col::SPLIT)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(bad)?;
        let label = crate::shard::label_values(&batch).map_err(|message| PipelineError::BadField {
            path: path.to_path_buf(),
            field: col::LABEL.into(),
            message,
        })?;
        for (i, &l) in label.iter().enumerate() {
            let s = split.value(i).to_string();
            *hist.entry(s.clone()).or_default().entry(l).or_insert(0) += 1;
            *rows.entry(s).or_insert(0) += 1;
        }
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
