//! `pipeline vocab`: build a visual vocabulary, or inspect one over a dataset.

pub mod build;
pub mod inspect;

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum VocabCommand {
    /// Build a vocabulary from a prepared dataset's train split.
    Build(build::BuildArgs),
    /// Token usage over a split, perplexity, dead tokens, and a PNG of the vocabulary.
    Inspect(inspect::VocabInspectArgs),
}

pub fn run(command: VocabCommand) -> Result<ExitCode> {
    match command {
        VocabCommand::Build(args) => build::run(args),
        VocabCommand::Inspect(args) => inspect::run(args),
    }
}
