//! `pipeline tokenize`: the reusable tokenized corpus. For every image, the token grid of its
//! canonical view and of the view's horizontal flip, in Parquet shards aligned with the image
//! shards (same file names, ids and order) under `tokens-<vocab>/`, listed in the manifest with
//! the vocabulary's sha256. These are also the oracle for the trainer's on-device tokenizer.
//!
//! Resumable: a token shard is kept when the manifest's record of it matches the vocabulary,
//! the image shard and its own checksum.
//!
//! Shardable as `pipeline prepare` is: the workers of a job array (`--workers N --worker i`)
//! each write the token shards of the image shards with index % N == i and leave the manifest
//! alone; the run without `--workers` afterwards is the merge: it keeps every token shard a
//! worker finished (its footer names this vocabulary and the image shard's sha256, and every
//! row reads back), tokenizes whatever is missing and records the set.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, UInt16Builder};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use rayon::prelude::*;
use schemas::manifest::MANIFEST_FILE;
use schemas::vocab::VOCAB_HEADER_KEY;
use schemas::{Manifest, ShardEntry, TokenSet, TokenShard};

use crate::error::{IoContext, PipelineError, Result};
use crate::prepare::{load_manifest, Worker};
use std::io::Write;

use crate::shard::{
    file_sha256, parquet_write_error, write_atomic, writer_properties, HashingWriter, ShardReader, TempFile,
};
use crate::transcode::decode_upright;
use crate::vocab::tokenizer::Vocabulary;

pub const TOKENS: &str = "tokens";
pub const TOKENS_FLIP: &str = "tokens_flip";

pub fn token_schema(grid2: usize) -> Schema {
    let list = |name: &str| {
        Field::new(
            name,
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::UInt16, false)), grid2 as i32),
            false,
        )
    };
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        list(TOKENS),
        list(TOKENS_FLIP),
    ])
}

/// One row of a token shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub tokens: Vec<u16>,
    pub tokens_flip: Vec<u16>,
}

fn batch(
    schema: &SchemaRef,
    rows: &[TokenRow],
    grid2: usize,
) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.id)))];
    for flip in [false, true] {
        let mut b = FixedSizeListBuilder::new(UInt16Builder::new(), grid2 as i32).with_field(Arc::new(Field::new(
            "item",
            DataType::UInt16,
            false,
        )));
        for r in rows {
            b.values().append_slice(if flip { &r.tokens_flip } else { &r.tokens });
            b.append(true);
        }
        cols.push(Arc::new(b.finish()));
    }
    RecordBatch::try_new(schema.clone(), cols)
}

/// Token grids of a batch of encoded images (a failed decode is an error: the image shards
/// only hold images that decoded at prepare time).
pub fn tokenize_images(vocab: &Vocabulary, images: &[(String, Vec<u8>)]) -> std::result::Result<Vec<TokenRow>, String> {
    let views: Vec<_> = images
        .par_iter()
        .map(|(id, bytes)| {
            decode_upright(bytes)
                .map(|(img, _)| vocab.canonical_views(&img))
                .map_err(|e| format!("{id}: {e}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let flat: Vec<_> = views.into_iter().flatten().collect();
    let tokens = vocab.tokenize_views(&flat);
    let grid2 = vocab.header.preprocessing.grid().pow(2);
    Ok(images
        .iter()
        .zip(tokens.chunks(2 * grid2))
        .map(|((id, _), t)| TokenRow {
            id: id.clone(),
            tokens: t[..grid2].to_vec(),
            tokens_flip: t[grid2..].to_vec(),
        })
        .collect())
}

/// Tokenizes every image shard of the dataset in `dir` with the vocabulary at `vocab_path`
/// (which should live in `dir`) and records the token set in the manifest.
pub fn tokenize_dataset(dir: &Path, vocab_path: &Path, progress: bool) -> Result<TokenSet> {
    tokenize_shards(dir, vocab_path, Worker::ALL, progress)
}

/// [`tokenize_dataset`] as one worker of a job array: the token shards of the image shards
/// `worker` owns, not recorded in the manifest (the merge, [`Worker::ALL`], does that).
/// Returns the shards written or kept.
pub fn tokenize_shards(dir: &Path, vocab_path: &Path, worker: Worker, progress: bool) -> Result<TokenSet> {
    worker.check()?;
    let _lock = super::job_lock(dir, "tokenize", worker)?;
    let (vocab, vocab_sha) = Vocabulary::load(vocab_path)?;
    let mut manifest = load_manifest(dir)?;
    let vocab_name = vocab_path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let stem = vocab_name.trim_end_matches(".safetensors");
    let tok_dir = format!("tokens-{stem}");
    std::fs::create_dir_all(dir.join(&tok_dir)).at(dir.join(&tok_dir))?;
    let previous = manifest
        .tokens
        .iter()
        .find(|t| t.dir == tok_dir && t.vocab_sha256 == vocab_sha)
        .cloned();
    let grid2 = vocab.header.preprocessing.grid().pow(2);
    let job = TokenJob {
        dir,
        vocab: &vocab,
        vocab_sha: &vocab_sha,
        tok_dir: &tok_dir,
        schema: Arc::new(token_schema(grid2)),
        grid2,
    };
    let owned: Vec<&ShardEntry> = manifest
        .shards
        .iter()
        .enumerate()
        .filter(|(k, _)| worker.owns(*k))
        .map(|(_, s)| s)
        .collect();
    let shards = job.run(&owned, previous.as_ref(), progress)?;
    let set = TokenSet {
        vocab: vocab_name,
        vocab_sha256: vocab_sha.clone(),
        dir: tok_dir.clone(),
        shards,
    };
    if worker != Worker::ALL {
        return Ok(set);
    }
    manifest.tokens.retain(|t| t.dir != tok_dir);
    manifest.tokens.push(set.clone());
    write_manifest(dir, &manifest)?;
    Ok(set)
}

/// Workers each take their own lock; the merge takes the folder's.
/// What every token shard of one run is written with.
struct TokenJob<'a> {
    dir: &'a Path,
    vocab: &'a Vocabulary,
    vocab_sha: &'a str,
    tok_dir: &'a str,
    schema: SchemaRef,
    grid2: usize,
}

impl TokenJob<'_> {
    /// The token shards of `owned`, each kept from an earlier run when it checks out,
    /// written otherwise; `previous` is the manifest's record of this vocabulary's set.
    fn run(&self, owned: &[&ShardEntry], previous: Option<&TokenSet>, progress: bool) -> Result<Vec<TokenShard>> {
        let total: u64 = owned.iter().map(|s| s.rows).sum();
        let bar = if progress {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("tokenize [{bar:40}] {pos}/{len} images {per_sec} eta {eta}")
                .expect("valid template"),
        );
        let mut shards = Vec::new();
        for &img_shard in owned {
            if let Some(t) = self.kept(img_shard, previous) {
                bar.inc(img_shard.rows);
                shards.push(t);
                continue;
            }
            if let Some(signal) = crate::interrupt::safe_point("token-shard", shards.len() as u64) {
                bar.abandon();
                return Err(PipelineError::Interrupted {
                    path: self.dir.to_path_buf(),
                    signal,
                    when: format!(
                        "after {} of {} token shards (finished ones are kept)",
                        shards.len(),
                        owned.len()
                    ),
                });
            }
            shards.push(self.write(img_shard, &bar)?);
        }
        bar.finish_and_clear();
        Ok(shards)
    }

    /// The token shard of `img_shard` already on disk, if it can be kept.
    fn kept(&self, img_shard: &ShardEntry, previous: Option<&TokenSet>) -> Option<TokenShard> {
        let dest = self.dest(img_shard);
        let recorded = previous.and_then(|p| {
            p.shards
                .iter()
                .find(|t| t.file == img_shard.file && t.image_sha256 == img_shard.sha256)
        });
        // A shard the manifest records must match its checksum; one it does not (a worker's)
        // must say in its footer what it was computed from and read back whole.
        match recorded {
            Some(t) => matches!(file_sha256(&dest), Ok((b, s)) if b == t.bytes && s == t.sha256).then(|| t.clone()),
            None => worker_token_shard(&dest, img_shard, self.vocab_sha),
        }
    }

    fn dest(&self, img_shard: &ShardEntry) -> std::path::PathBuf {
        self.dir.join(self.tok_dir).join(&img_shard.file)
    }

    /// Tokenizes `img_shard` into its token shard, written atomically.
    fn write(&self, img_shard: &ShardEntry, bar: &ProgressBar) -> Result<TokenShard> {
        let dest = self.dest(img_shard);
        let tmp = TempFile::new(&dest);
        let perr = |source| parquet_write_error(&tmp, source);
        let kv = vec![
            KeyValue::new(
                VOCAB_HEADER_KEY.to_string(),
                serde_json::to_string(&self.vocab.header).expect("serializable"),
            ),
            KeyValue::new("vocab_sha256".to_string(), self.vocab_sha.to_string()),
            KeyValue::new("image_shard_sha256".to_string(), img_shard.sha256.clone()),
        ];
        let file = HashingWriter::new(std::io::BufWriter::new(tmp.create()?));
        let mut w =
            ArrowWriter::try_new(file, self.schema.clone(), Some(writer_properties(kv, 64 << 20))).map_err(perr)?;
        let mut reader = ShardReader::open(&self.dir.join(&img_shard.file))?;
        let mut rows = 0u64;
        loop {
            let chunk: Vec<(String, Vec<u8>)> = reader
                .by_ref()
                .take(64)
                .map(|r| r.map(|r| (r.id, r.image)))
                .collect::<Result<_>>()?;
            if chunk.is_empty() {
                break;
            }
            let toks = tokenize_images(self.vocab, &chunk).map_err(|m| PipelineError::BadField {
                path: self.dir.join(&img_shard.file),
                field: "image".into(),
                message: m,
            })?;
            let b = batch(&self.schema, &toks, self.grid2).map_err(|source| PipelineError::Arrow {
                path: dest.clone(),
                source,
            })?;
            w.write(&b).map_err(perr)?;
            rows += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
        }
        let mut sink = w.into_inner().map_err(perr)?;
        sink.flush().map_err(|e| tmp.failed(e))?;
        let (file, bytes, sha256) = sink.finish();
        file.get_ref().sync_all().map_err(|e| tmp.failed(e))?;
        tmp.persist()?;
        Ok(TokenShard {
            file: img_shard.file.clone(),
            image_sha256: img_shard.sha256.clone(),
            rows,
            bytes,
            sha256,
        })
    }
}

/// A token shard a job-array worker finished for `img_shard`: its footer names the vocabulary
/// and the image shard's sha256, and all of its rows read back with the image shard's count.
fn worker_token_shard(path: &Path, img_shard: &ShardEntry, vocab_sha: &str) -> Option<TokenShard> {
    let builder = crate::shard::open_parquet(path).ok()?;
    let kv = builder.metadata().file_metadata().key_value_metadata()?;
    let value = |key: &str| kv.iter().find(|k| k.key == key).and_then(|k| k.value.as_deref());
    if value("vocab_sha256") != Some(vocab_sha) || value("image_shard_sha256") != Some(img_shard.sha256.as_str()) {
        return None;
    }
    drop(builder);
    let rows = read_token_shard(path).ok()?.len() as u64;
    let (bytes, sha256) = file_sha256(path).ok()?;
    (rows == img_shard.rows).then(|| TokenShard {
        file: img_shard.file.clone(),
        image_sha256: img_shard.sha256.clone(),
        rows,
        bytes,
        sha256,
    })
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    write_atomic(
        &dir.join(MANIFEST_FILE),
        &serde_json::to_vec_pretty(m).expect("serializable"),
    )
}

/// Reads a token shard back.
pub fn read_token_shard(path: &Path) -> Result<Vec<TokenRow>> {
    use arrow_array::{Array, FixedSizeListArray, UInt16Array};
    let perr = |source| PipelineError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let reader = crate::shard::open_parquet(path)?.build().map_err(perr)?;
    let bad = |m: &str| PipelineError::BadField {
        path: path.to_path_buf(),
        field: "tokens".into(),
        message: m.to_string(),
    };
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|source| PipelineError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad("id is not utf8"))?;
        let lists: Vec<&FixedSizeListArray> = (1..3)
            .map(|c| {
                b.column(c)
                    .as_any()
                    .downcast_ref::<FixedSizeListArray>()
                    .ok_or_else(|| bad("not a fixed-size list"))
            })
            .collect::<Result<_>>()?;
        let vals: Vec<&UInt16Array> = lists
            .iter()
            .map(|l| {
                l.values()
                    .as_any()
                    .downcast_ref::<UInt16Array>()
                    .ok_or_else(|| bad("items are not u16"))
            })
            .collect::<Result<_>>()?;
        let g = lists[0].value_length() as usize;
        for i in 0..b.num_rows() {
            out.push(TokenRow {
                id: ids.value(i).to_string(),
                tokens: vals[0].values()[i * g..(i + 1) * g].to_vec(),
                tokens_flip: vals[1].values()[i * g..(i + 1) * g].to_vec(),
            });
        }
    }
    Ok(out)
}
