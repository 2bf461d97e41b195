//! Errors of the pipeline library. Each names the file (and line or field) it is about, so a
//! user can fix the input without reading our code.

use std::path::PathBuf;

use crate::matfile::MatError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: writing failed: {source} (the previous file, if any, is untouched; its temp file {tmp} was removed)"
    )]
    Write {
        path: PathBuf,
        tmp: PathBuf,
        source: std::io::Error,
    },
    #[error("required metadata file not found: {path} ({hint})")]
    MissingMetadata { path: PathBuf, hint: String },
    #[error("{path}:{line}: {message}: {text:?}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
        text: String,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: field '{field}': {message}")]
    BadField {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error(transparent)]
    Mat(#[from] MatError),
    #[error("{path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: polars: {source}")]
    Polars {
        path: PathBuf,
        source: polars::prelude::PolarsError,
    },
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow_schema::ArrowError,
    },
    #[error("{path}: no images found ({hint})")]
    Empty { path: PathBuf, hint: String },
    #[error(
        "{path}: written with shard schema version {found}; this build reads versions {min} to {max}: re-run `pipeline prepare` on the dataset"
    )]
    SchemaVersion {
        path: PathBuf,
        found: u32,
        min: u32,
        max: u32,
    },
    #[error(
        "{path}: another process writes this folder: {holder}; wait for it to finish (the lock goes when it exits)"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("{path}: stopped by {signal} {when}; run the same command again to continue")]
    Interrupted {
        path: PathBuf,
        signal: &'static str,
        /// Where the work stood ("after 3 of 10 shards").
        when: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl PipelineError {
    /// Checks a manifest's or shard footer's schema version against what this build reads.
    pub fn check_schema_version(path: &std::path::Path, found: u32) -> Result<()> {
        let (min, max) = (schemas::MIN_SCHEMA_VERSION, schemas::SCHEMA_VERSION);
        if (min..=max).contains(&found) {
            Ok(())
        } else {
            Err(PipelineError::SchemaVersion {
                path: path.to_path_buf(),
                found,
                min,
                max,
            })
        }
    }
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// `map_err` helper that attaches the path to an I/O error.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| PipelineError::Io {
            path: path.into(),
            source,
        })
    }
}
