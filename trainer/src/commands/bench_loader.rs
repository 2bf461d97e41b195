//! `trainer bench-loader`: time the pre-training input pipeline alone (one JSON line on
//! stdout), with the flags `trainer pretrain` takes; nothing is written to `--out`.

use anyhow::{bail, Context, Result};
use trainer::bench::loader::bench_loader;
use trainer::train::config::PretrainArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    args: Box<PretrainArgs>,
    /// Timed batches, after an untimed first one.
    #[arg(long, default_value_t = 20)]
    batches: u64,
    /// Threads decoding and augmenting (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(Args { args, batches, threads }: Args) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("setting up the decode threads")?;
    let cfg = args.resolve().context("resolving the configuration")?;
    let r = bench_loader(&cfg, batches)?;
    println!("{}", serde_json::to_string(&r)?);
    if !r.pixels_match {
        bail!("the loader's first batch differs from make_batch's for the same seed");
    }
    Ok(())
}
