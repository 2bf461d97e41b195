//! Dataset ingestion for splitmask-rs: adapters for each dataset's official layout, image
//! transcoding, Parquet shard writing and reading, manifests, visual vocabularies and
//! pre-tokenized targets, inspection.
//!
//! # Layers
//! Modules import only from their own layer or the layers below it (checked by the
//! `layering` integration test, which also refuses import loops):
//!
//! | layer | modules | what lives there |
//! |---|---|---|
//! | 0 | [`error`], [`matfile`], [`lock`], [`interrupt`], [`jpeg_entropy`], [`source`] | the crate's error type; the MATLAB v5 reader (Stanford Cars devkit); one writer per folder; SIGINT / SIGTERM; the fast walk over a baseline JPEG's Huffman data; reading the raw dataset's files inside its root |
//! | 1 | [`adapters`], [`shard`], [`transcode`], [`views`] | dataset layouts, the shard format, image decoding and views |
//! | 2 | [`prepare`], [`recipe`] | listing -> shards with a manifest; dataset recipes |
//! | 3 | [`vocab`] | visual vocabularies (random projection, random patches, k-means), the tokenizer, token shards |
//! | 4 | [`inspect`], [`coco_json`] | checks and contact sheets of a prepared dataset; a prepared COCO split as a detection dataset |
//!
//! The trainer depends on this crate for the shard reader and image views so that both sides
//! see the same pixels.

#![warn(clippy::too_many_lines)]

pub mod adapters;
pub mod coco_json;
pub mod error;
pub mod inspect;
pub mod interrupt;
pub mod jpeg_entropy;
pub mod lock;
pub mod matfile;
pub mod prepare;
pub mod recipe;
pub mod shard;
pub mod source;
pub mod transcode;
pub mod views;
pub mod vocab;

pub use error::{PipelineError, Result};
