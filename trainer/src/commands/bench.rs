//! `trainer bench`: time training steps on synthetic data (one JSON line per run on stdout).

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::bench::{bench_steps, BenchArgs, BenchResult, BenchSpec};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    args: BenchArgs,
    #[command(flatten)]
    backend: BackendArgs,
}

struct BenchTask<'a>(&'a BenchSpec);
impl BackendTask for BenchTask<'_> {
    type Output = BenchResult;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        let device = &devices[0];
        bench_steps::<B>(self.0, device)
    }
}

pub fn run(Args { args, backend }: Args) -> Result<()> {
    let spec = args.resolve()?;
    let mut r = backend.run(Precision::Bf16, BenchTask(&spec))?;
    r.impl_name = format!("burn-{}", backend.describe(None, Precision::Bf16));
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
