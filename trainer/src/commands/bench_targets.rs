//! `trainer bench-targets`: does the device tokenizer, on this device and in this float type,
//! give the targets the host's tokenizer gives? One JSON line on stdout; fails when a target
//! differs by more than a near-tie.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use pipeline::vocab::tokenizer::Vocabulary;
use trainer::backend::{BackendArgs, BackendTask, Precision};
use trainer::bench::targets::{target_agreement, TargetAgreement};

#[derive(clap::Args)]
pub struct Args {
    /// A prepared dataset folder.
    #[arg(long)]
    data: PathBuf,
    /// The vocabulary file the targets come from.
    #[arg(long)]
    vocab: PathBuf,
    /// The split whose first images are tokenized.
    #[arg(long, default_value = "val")]
    split: String,
    /// Images compared.
    #[arg(long, default_value_t = 256)]
    images: usize,
    /// The ViT's patch side the token grid follows.
    #[arg(long, default_value_t = 16)]
    patch: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

struct Task<'a>(&'a Args, &'a Vocabulary);
impl BackendTask for Task<'_> {
    type Output = trainer::Result<TargetAgreement>;
    fn run<B: AutodiffBackend>(self, devices: &[B::Device]) -> Self::Output {
        let Task(a, vocab) = self;
        target_agreement::<B::InnerBackend>(&a.data, &a.split, vocab, a.patch, a.images, &devices[0])
    }
}

pub fn run(args: Args) -> Result<()> {
    let (vocab, _) = Vocabulary::load(&args.vocab).with_context(|| format!("loading {}", args.vocab.display()))?;
    // bf16 on a GPU, as pre-training runs there.
    let r = args.backend.run(Precision::Bf16, Task(&args, &vocab))??;
    let mut line = serde_json::to_value(&r)?;
    line["impl_name"] = format!("burn-{}", args.backend.describe(None, Precision::Bf16)).into();
    println!("{line}");
    if !r.agrees() {
        bail!(
            "{} of {} device targets differ from the host's, {} beyond near-ties",
            r.differ,
            r.tokens,
            r.not_near_ties
        );
    }
    Ok(())
}
