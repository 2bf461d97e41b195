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

/// The results a training command reports, or `None` after printing why this process has
/// none: node 0 reports for a multi-node run, and a run stopped early has none yet.
fn results_to_report<R>(
    results: Option<R>,
    cluster: &trainer::train::parallel::Cluster,
    out: &std::path::Path,
    trained: &str,
) -> Option<R> {
    if cluster.node > 0 {
        println!(
            "node {} of {}: {trained} with the other nodes; node 0 wrote {}",
            cluster.node,
            cluster.nodes,
            out.display()
        );
        return None;
    }
    if results.is_none() {
        println!("stopped before the end of the schedule; continue with --resume");
    }
    results
}
