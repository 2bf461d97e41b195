//! Dataset ingestion for splitmask-rs: adapters for each dataset's official layout, image
//! transcoding, Parquet shard writing and reading, manifests, inspection.
//!
//! The trainer depends on this crate for the shard reader and image views so that both sides
//! see the same pixels.

pub mod adapters;
pub mod error;
pub mod inspect;
pub mod kmeans;
pub mod matfile;
pub mod nearest;
pub mod prepare;
pub mod recipe;
pub mod shard;
pub mod tokenize;
pub mod tokenizer;
pub mod transcode;
pub mod views;
pub mod vocab;

pub use error::{PipelineError, Result};
