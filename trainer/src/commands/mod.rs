//! The `trainer` subcommands, one module each: its clap arguments and what it runs and prints.
//! Part of the binary, not of the library: they compose the library's steps and report errors
//! with `anyhow`.

pub mod bench;
pub mod bench_loader;
pub mod bench_targets;
pub mod embed;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod pretrain;
pub mod report;
pub mod segment;
pub mod visualize;
