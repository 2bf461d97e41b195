//! `trainer embed`: a frozen encoder's features for every image of a split, for retrieval and
//! clustering: the class token and the mean of the patch tokens at a chosen layer, on the eval
//! view (resize + center crop), raw (not normalized). Written as Parquet parts of
//! [`PART_ROWS`] images (`id`, `label`, `cls`, `mean`), each atomically, so an interrupted run
//! resumes with the parts it has not written; a part written for another configuration is an
//! error naming it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field};
use burn::prelude::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use serde::Serialize;

use crate::data::images::ImageSet;
use crate::error::{Error, Result, RunFolderError};
use crate::eval::features::eval_images;
use crate::model::vit::{Pool, Vit};

/// Images per Parquet part: the unit a resumed run skips.
pub const PART_ROWS: usize = 4096;
/// The parts' key-value metadata holding the configuration they were written for.
const META_KEY: &str = "splitmask.embed";

/// What to embed and how.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedSpec {
    /// The encoder's source (a run folder or checkpoint), recorded in every part.
    pub source: String,
    pub split: String,
    /// Tokens after this block (1-based); `None`: after the final norm.
    pub layer: Option<usize>,
    pub image_size: usize,
    pub crop_ratio: f64,
    /// Images per forward pass (not part of what a part was written for: it changes no value).
    #[serde(skip)]
    pub batch: usize,
}

/// What [`embed`] did.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedSummary {
    pub out: PathBuf,
    pub rows: usize,
    pub dim: usize,
    pub parts: usize,
    /// Parts an earlier run had written, kept.
    pub kept_parts: usize,
    /// Images embedded by this run per second (kept parts not counted).
    pub images_per_s: f64,
}

/// Embeds every image of `set` into `out/part-NNNNN.parquet`.
pub fn embed<B: Backend>(
    encoder: &Vit<B>,
    set: &ImageSet,
    spec: &EmbedSpec,
    out: &Path,
    device: &B::Device,
) -> Result<EmbedSummary> {
    if let Some(l) = spec.layer.filter(|&l| l == 0 || l > encoder.blocks.len()) {
        return Err(crate::error::ConfigError::invalid("layer", l, format!("1..={}", encoder.blocks.len())).into());
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let n = set.samples.len();
    // What a kept part must have been written for: this spec, dataset and split size.
    let meta = serde_json::json!({"spec": spec, "data": set.dir, "images": n}).to_string();
    let parts = n.div_ceil(PART_ROWS);
    let stray = out.join(format!("part-{parts:05}.parquet"));
    if stray.exists() {
        return Err(RunFolderError {
            path: stray,
            message: format!("a part past the {parts} this split has: the folder holds another run's embeddings"),
        }
        .into());
    }
    let bar = crate::progress::pass("embedding", n as u64, "images");
    let (mut kept, mut done, started) = (0, 0, Instant::now());
    for p in 0..parts {
        let rows = p * PART_ROWS..((p + 1) * PART_ROWS).min(n);
        let path = out.join(format!("part-{p:05}.parquet"));
        if written_for(&path, &meta, rows.len())? {
            kept += 1;
            bar.inc(rows.len() as u64);
            continue;
        }
        let indices: Vec<usize> = rows.collect();
        let batch = embed_part(encoder, set, spec, &indices, device, &bar)?;
        pipeline::shard::write_table(&path, &batch, vec![KeyValue::new(META_KEY.into(), meta.clone())])?;
        done += indices.len();
    }
    bar.finish_and_clear();
    Ok(EmbedSummary {
        out: out.to_path_buf(),
        rows: n,
        dim: encoder.dim(),
        parts,
        kept_parts: kept,
        images_per_s: done as f64 / started.elapsed().as_secs_f64().max(1e-9),
    })
}

/// Whether `path` is a part written for `meta` (kept); absent is false; another
/// configuration's part is an error, not silently mixed in.
fn written_for(path: &Path, meta: &str, rows: usize) -> Result<bool> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(false);
    };
    let theirs = ParquetRecordBatchReaderBuilder::try_new(file).ok().and_then(|b| {
        let m = b.metadata().file_metadata();
        let value = m
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == META_KEY).and_then(|k| k.value.clone()));
        value.map(|v| (v, m.num_rows()))
    });
    match theirs {
        Some((t, n)) if t == meta && n == rows as i64 => Ok(true),
        _ => Err(RunFolderError {
            path: path.to_path_buf(),
            message: "holds embeddings of another encoder, split or setting (or is not a part): choose another --out"
                .into(),
        }
        .into()),
    }
}

/// One part's rows: ids, labels and both poolings.
fn embed_part<B: Backend>(
    encoder: &Vit<B>,
    set: &ImageSet,
    spec: &EmbedSpec,
    indices: &[usize],
    device: &B::Device,
    bar: &indicatif::ProgressBar,
) -> Result<RecordBatch> {
    let d = encoder.dim();
    let item = Arc::new(arrow_schema_field());
    let mut cls = FixedSizeListBuilder::new(Float32Builder::new(), d as i32).with_field(item.clone());
    let mut mean = FixedSizeListBuilder::new(Float32Builder::new(), d as i32).with_field(item);
    let mut labels = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(spec.batch.max(1)) {
        let (x, l) = eval_images::<B>(set, chunk, spec.image_size, spec.crop_ratio, device)?;
        let tokens = encoder.tokens_at(x, spec.layer);
        for (pool, builder) in [(Pool::ClassToken, &mut cls), (Pool::MeanPatches, &mut mean)] {
            let values: Vec<f32> = pool.apply(tokens.clone()).into_data().iter::<f32>().collect();
            for row in values.chunks_exact(d) {
                builder.values().append_slice(row);
                builder.append(true);
            }
        }
        labels.extend(l);
        bar.inc(chunk.len() as u64);
    }
    let ids = StringArray::from_iter_values(indices.iter().map(|&i| set.samples[i].id.as_str()));
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(ids)),
        ("label", Arc::new(Int64Array::from(labels))),
        ("cls", Arc::new(cls.finish())),
        ("mean", Arc::new(mean.finish())),
    ];
    Ok(RecordBatch::try_from_iter(columns).expect("columns of one length"))
}

fn arrow_schema_field() -> Field {
    Field::new("item", DataType::Float32, false)
}
