//! The crate's error type and the small errors each layer returns into it.
//!
//! This module sits at the bottom of the crate (it imports no other module of it), so every
//! layer can name its own error here without an import loop: `model` returns
//! [`TokenizerError`], `data` [`DataError`], `train` [`CheckpointError`], [`ConfigError`],
//! [`RunFolderError`] and [`InitError`], `report` [`ReportError`]. Entry points (the training
//! loops, evaluation, export, report) return [`Error`], which wraps them all with `?`.
//! Every message names the file, row or flag it is about and quotes the offending input.

use std::path::PathBuf;

/// What the library's entry points return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    RunFolder(#[from] RunFolderError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("training diverged at step {step}: {bad} non-finite updates in a row after {rollbacks} rollbacks to the last checkpoint (lower the learning rate)")]
    Diverged { step: u64, bad: u32, rollbacks: u64 },
    #[error(
        "stopped by {signal} after step {step}; the checkpoint {checkpoint} holds it: rerun with --resume to continue"
    )]
    Interrupted {
        signal: &'static str,
        step: u64,
        checkpoint: PathBuf,
    },
    #[error("rank {rank}: {what} failed: {reason}")]
    Collective { rank: usize, what: String, reason: String },
    #[error("rank {rank} stopped: another rank failed (its error is reported with it)")]
    PeerFailed { rank: usize },
    #[error("{what}: this binary was built without the `{feature}` feature (cargo build --release -p trainer --features {feature})")]
    BackendMissing { what: &'static str, feature: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Reading a split's shards and turning rows into batches.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{dir}: the manifest lists no {split:?} shards (splits: {available:?})")]
    NoSplit {
        dir: PathBuf,
        split: String,
        available: Vec<String>,
    },
    #[error("{path}{}: cannot be read ({reason}); re-run `pipeline prepare` on its folder to redo it", row.map(|r| format!(" row {r}")).unwrap_or_default())]
    Unreadable {
        path: PathBuf,
        row: Option<u64>,
        reason: String,
    },
    #[error("{dir}: --loader-memory-mb {memory_mb} holds less than row group {group} of {shard} ({group_mb:.1} MB of {split} images): raise it, use --cache ram, or prepare with a smaller --row-group-mb")]
    LoaderMemory {
        dir: PathBuf,
        split: String,
        shard: String,
        group: u32,
        group_mb: f64,
        memory_mb: u64,
    },
    #[error("{shard}: row {id:?} does not decode: {reason}")]
    Decode { shard: String, id: String, reason: String },
    #[error("{dir}: no pre-tokenized targets for the vocabulary with sha256 {vocab_sha} (run `pipeline tokenize`)")]
    NoTokens { dir: PathBuf, vocab_sha: String },
    #[error(
        "{path}: token shard missing or computed from another version of its image shard (rerun `pipeline tokenize`)"
    )]
    StaleTokens { path: PathBuf },
    #[error("{path}: row {row} has id {found:?}, the image shard has {expected:?}")]
    TokenRow {
        path: PathBuf,
        row: usize,
        expected: String,
        found: String,
    },
    #[error("{dir}: split {split:?} has {rows} images, fewer than one batch of {batch}")]
    TooSmall {
        dir: PathBuf,
        split: String,
        rows: usize,
        batch: usize,
    },
}

/// Why a vocabulary cannot serve an encoder configuration.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("ViT patch {vit_patch} px is not a multiple of the vocabulary's {token_patch} px patches")]
    PatchMismatch { vit_patch: usize, token_patch: usize },
    #[error("vocabulary normalization mean {vocab:?} / std differs from the trainer's {trainer:?}")]
    Normalization { vocab: [f32; 3], trainer: [f32; 3] },
}

/// Tensor files (checkpoints, exports) that do not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: not a readable safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: tensor {name:?} has shape {found:?}, the model expects {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: the model's parameters {missing:?} are missing from the file")]
    Missing { path: PathBuf, missing: Vec<String> },
    #[error("{path}: the file has parameters the model does not: {unexpected:?}")]
    Unexpected { path: PathBuf, unexpected: Vec<String> },
    #[error("{path}: {message}")]
    Incomplete { path: PathBuf, message: String },
}

/// A command-line value that cannot be resolved into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{field} {value:?}: {message}")]
    Invalid {
        field: &'static str,
        value: String,
        message: String,
    },
}

impl ConfigError {
    pub fn invalid(field: &'static str, value: impl ToString, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field,
            value: value.to_string(),
            message: message.into(),
        }
    }
}

/// A run folder's files (`config.json`, `results.json`) that are missing, unreadable or belong
/// to another configuration.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RunFolderError {
    pub path: PathBuf,
    pub message: String,
}

/// A pre-trained encoder that cannot initialize the model asked for.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path}: keys that are neither encoder parameters nor the heads fine-tuning drops: {keys:?}")]
    UnexpectedKeys { path: PathBuf, keys: Vec<String> },
    #[error("{path}: not a ViT this project builds: {message}")]
    Timm { path: PathBuf, message: String },
    #[error("{path}: --init takes a pre-training run, a fine-tuning run or a timm export folder; its config.json is none of them ({message})")]
    UnknownRun { path: PathBuf, message: String },
    #[error("{run}: the pre-trained encoder is {found}; the fine-tuning model is {expected} (use --model {preset} or the run's sizes)")]
    Architecture {
        run: PathBuf,
        found: String,
        expected: String,
        preset: String,
    },
}

/// Run folders that `trainer report` cannot read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {message}")]
    BadResults { path: PathBuf, message: String },
    #[error("{dir}: no run folders with metrics.jsonl or results.json")]
    Empty { dir: PathBuf },
    #[error("{what}: polars: {source}")]
    Polars {
        what: String,
        source: polars::prelude::PolarsError,
    },
}
