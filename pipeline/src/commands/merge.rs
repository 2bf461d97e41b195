//! `pipeline merge`: the manifest of a multi-worker prepare, from the workers' parts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use pipeline::prepare;

use super::{exit_code, print_manifest_summary};

#[derive(Args)]
pub struct MergeArgs {
    /// The output folder the workers wrote to.
    out: PathBuf,
}

pub fn run(args: &MergeArgs) -> Result<ExitCode> {
    let m = prepare::merge(&args.out)?;
    print_manifest_summary(&m);
    Ok(exit_code(&m))
}
