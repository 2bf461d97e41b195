//! The project's file-format contract: the Parquet shard schema and the manifest that describes
//! a prepared dataset. Every crate reads and writes these types, so they live here with no heavy
//! dependencies.

pub mod manifest;
pub mod shard;
pub mod shared_data;
pub mod vocab;

pub use manifest::{Manifest, ShardEntry, SkippedFile, SplitStats, TokenSet, TokenShard};
pub use shard::{shard_schema, ShardMetadata, MIN_SCHEMA_VERSION, SCHEMA_VERSION};
pub use vocab::{Preprocessing, VocabHeader, VocabKind};
