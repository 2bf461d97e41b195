//! Fuzz targets for every parser that reads files made by other people or other tools: the
//! dataset adapters' metadata (COCO and iNaturalist json, Food-101 and DomainNet lists, the
//! Stanford Cars devkit `.mat` files and CSV, ImageNet's `LOC_*` files), our shards' Parquet
//! footers and pages, images, vocabularies and dataset recipes.
//!
//! A target takes any bytes and must return (an error is fine) without a panic or a hang. Its
//! corpus starts from the real files in `../shared/fixtures` and `../shared/data`. Two engines
//! drive the same targets:
//! - [`mutate`]: seeded structure-aware mutation of the real files (bytes, and JSON values
//!   for the json formats), a fixed number of cases per target inside `make test`;
//! - libFuzzer (`make fuzz`): coverage-guided, built on stable Rust with LLVM's
//!   sanitizer-coverage passes (`src/bin/fuzz.rs`).
//!
//! Targets whose parser reads a folder layout write the input into a scratch copy of the
//! dataset's real layout (the other files real); a leading selector byte picks which file of
//! the layout the rest of the input replaces.

pub mod mutate;
pub mod targets;

pub use targets::{target, Target, TARGETS};
