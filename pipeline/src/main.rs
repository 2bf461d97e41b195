//! `pipeline`: prepare datasets into Parquet shards, merge job-array parts, inspect results.
//!
//! Exit status: 0 when every input became a row, 2 when the run completed but some inputs were
//! skipped (they are listed in the manifest with reasons), 1 on error.
//!
//! Each subcommand lives in its own file under `commands/`; this file only parses the command
//! line and maps errors to the exit status.

#![warn(clippy::too_many_lines)]

mod commands;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use commands::{coco_json, inspect, merge, prepare, recipes, tokenize, vocab};

#[derive(Parser)]
#[command(
    name = "pipeline",
    version,
    about = "Image datasets -> Parquet shards for splitmask-rs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare a dataset (resumes an interrupted run in the same output folder).
    Prepare(prepare::PrepareArgs),
    /// Write the manifest from the parts of a multi-worker prepare.
    Merge(merge::MergeArgs),
    /// Verify checksums and counts, print the class histogram, draw a contact sheet.
    Inspect(inspect::InspectArgs),
    /// Build or inspect a visual vocabulary.
    #[command(subcommand)]
    Vocab(vocab::VocabCommand),
    /// Write the token grids of every image (canonical view and its flip) for a vocabulary.
    Tokenize(tokenize::TokenizeArgs),
    /// List the dataset recipes: evaluation split, pre-training epochs and fine-tuning recipe.
    Recipes(recipes::RecipesArgs),
    /// Write a prepared COCO split as a detection dataset (instances json + images) whose
    /// boxes and masks are in the stored images' pixels.
    CocoJson(coco_json::CocoJsonArgs),
}

fn run() -> Result<ExitCode> {
    match Cli::parse().command {
        Command::Prepare(args) => prepare::run(&args),
        Command::Merge(args) => merge::run(&args),
        Command::Inspect(args) => inspect::run(args),
        Command::Vocab(command) => vocab::run(command),
        Command::Tokenize(args) => tokenize::run(&args),
        Command::Recipes(args) => recipes::run(&args),
        Command::CocoJson(args) => coco_json::run(&args).map(|()| ExitCode::SUCCESS),
    }
}

fn main() -> ExitCode {
    if let Err(e) = pipeline::interrupt::install() {
        eprintln!("warning: SIGINT/SIGTERM handlers not installed ({e}): a signal stops at once");
    }
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(pipeline::PipelineError::Interrupted { .. }) = e.downcast_ref() {
                return ExitCode::from(pipeline::interrupt::EXIT_INTERRUPTED as u8);
            }
            ExitCode::FAILURE
        }
    }
}
