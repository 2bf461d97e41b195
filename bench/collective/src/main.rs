//! The all-reduce that data-parallel training would do once per update, on burn-collective
//! between in-process flex workers (`--devices cpu:N`'s engine):
//! 1. a check that N workers, each the gradient of its share of a batch, Mean-reduced, hold
//!    the whole batch's gradient (a 3-layer MLP; the maximum difference is printed);
//! 2. the time of one update's all-reduce of ViT-sized gradients: the weight matrices of a
//!    ViT of the given width and depth (ViT-S/16: 384 x 12), one all-reduce per tensor, in
//!    sorted order as `GradientsParams::all_reduce` does them.
//!
//! With `--nodes 2` it is one process of burn-collective's multi-node mode (`trainer
//! --num-nodes`'s engine): node 0 hosts the orchestrator and the nodes reduce over websockets,
//! the topology of gloo's processes over loopback.
//!
//! Prints one JSON line (node 0); bench/collective/run.py runs it beside torch.distributed (gloo).
use std::time::Instant;

use burn::backend::Autodiff;
use burn::collective::{all_reduce, finish_collective, register, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{ModuleMapper, Param, ParamId};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;
use clap::Parser;

type Inner = burn_flex::Flex;
type Train = Autodiff<Inner>;

#[derive(Parser)]
struct Args {
    /// In-process workers (threads), one collective peer each.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// ViT width of the gradients to reduce.
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// ViT depth.
    #[arg(long, default_value_t = 12)]
    depth: usize,
    /// Timed updates (after one warm-up update).
    #[arg(long, default_value_t = 10)]
    updates: usize,
    /// Processes of a multi-node run (each with --workers threads).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// This process's index among --nodes.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Node 0's orchestrator port on 127.0.0.1; node r serves tensors on port + 1 + r.
    #[arg(long, default_value_t = 29600)]
    port: u16,
}

/// The collective's configuration of this process: `workers` local peers, and with several
/// nodes the addresses of the orchestrator and of this node's tensor service on loopback.
fn collective(args: &Args) -> CollectiveConfig {
    let config = CollectiveConfig::default().with_num_devices(args.workers);
    if args.nodes == 1 {
        return config;
    }
    let data_port = args.port + 1 + args.node_rank as u16;
    config
        .with_num_nodes(args.nodes as u32)
        .with_global_address(format!("ws://127.0.0.1:{}", args.port).parse().expect("address"))
        .with_node_address(format!("ws://127.0.0.1:{data_port}").parse().expect("address"))
        .with_data_service_port(data_port)
}

/// The weight shapes of a ViT/16 at 224 px: per block qkv, proj, fc1, fc2; then the patch
/// embedding and the position embedding (biases and norms are under 0.1% of the values).
fn vit_shapes(dim: usize, depth: usize) -> Vec<[usize; 2]> {
    (0..depth)
        .flat_map(|_| [[dim, 3 * dim], [dim, dim], [dim, 4 * dim], [4 * dim, dim]])
        .chain([[3 * 16 * 16, dim], [197, dim]])
        .collect()
}

/// `layers` with parameter ids 0, 1, ...: burn draws ids at random, and the gradient
/// all-reduce goes through the parameters in id order, so processes must agree on them (the
/// trainer's `numbered_params` does the same).
fn numbered(layers: Vec<Linear<Train>>) -> Vec<Linear<Train>> {
    struct Numbering(u64);
    impl ModuleMapper<Train> for Numbering {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<Train, D>>) -> Param<Tensor<Train, D>> {
            let (_, tensor, mapper) = param.consume();
            self.0 += 1;
            Param::from_mapped_value(ParamId::from(self.0 - 1), tensor, mapper)
        }
    }
    layers.map(&mut Numbering(0))
}

fn mlp_grads(layers: &[Linear<Train>], x: Tensor<Train, 2>) -> GradientsParams {
    let h = layers.iter().fold(x, |h, l| l.forward(h).tanh());
    GradientsParams::from_grads(h.powi_scalar(2).mean().backward(), &layers.to_vec())
}

fn flat(layers: &[Linear<Train>], g: &GradientsParams) -> Vec<f32> {
    layers
        .iter()
        .flat_map(|l| {
            g.get::<Inner, 2>(l.weight.id)
                .expect("every weight has a gradient")
                .into_data()
                .to_vec::<f32>()
                .expect("f32")
        })
        .collect()
}

/// Runs `work(rank)` on this process's threads, each registered as a collective peer (global
/// ranks `first_id + node * workers + i`), and returns their results in rank order.
fn on_workers<T: Send + 'static>(
    args: &Args,
    first_id: usize,
    work: impl Fn(usize, PeerId) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let n = args.workers;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let work = work.clone();
            let config = collective(args);
            let rank = args.node_rank * n + i;
            std::thread::spawn(move || {
                let id = PeerId::from(first_id + rank);
                register::<Inner>(id, Default::default(), config).expect("register the peer");
                let out = work(rank, id);
                finish_collective::<Inner>(id).expect("finish the collective");
                out
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("worker")).collect()
}

fn main() {
    let args = Args::parse();
    let n = args.workers * args.nodes;
    let device = Default::default();
    if args.nodes > 1 && args.node_rank == 0 {
        let port = args.port;
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(burn_collective::start_global_orchestrator(port))
        });
    }
    // Every process draws the same layers and batch.
    <Train as Backend>::seed(&device, 7);

    // 1. N shares of a batch, reduced, against the whole batch.
    let layers: Vec<Linear<Train>> = (0..3).map(|_| LinearConfig::new(32, 32).init(&device)).collect();
    let layers = numbered(layers);
    let batch = 8 * n;
    let x = Tensor::<Train, 2>::random([batch, 32], Distribution::Normal(0.0, 1.0), &device);
    let whole = flat(&layers, &mlp_grads(&layers, x.clone()));
    let shares = {
        let (layers, x) = (layers.clone(), x.clone());
        on_workers(&args, 0, move |rank, id| {
            let share = x.clone().slice([rank * 8..(rank + 1) * 8, 0..32]);
            let g = mlp_grads(&layers, share)
                .all_reduce::<Inner>(id, ReduceOperation::Mean)
                .expect("all-reduce");
            flat(&layers, &g)
        })
    };
    assert!(
        shares.iter().all(|s| s == &shares[0]),
        "every rank holds the same reduced gradient"
    );
    let max_diff = whole
        .iter()
        .zip(&shares[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);

    // 2. One update's all-reduce of ViT-sized gradients.
    let shapes = vit_shapes(args.dim, args.depth);
    let values: usize = shapes.iter().map(|s| s[0] * s[1]).sum();
    let updates = args.updates;
    let times = on_workers(&args, 100, move |_, id| {
        let device = Default::default();
        (0..=updates)
            .map(|_| {
                let grads: Vec<Tensor<Inner, 2>> = shapes
                    .iter()
                    .map(|s| Tensor::random(*s, Distribution::Normal(0.0, 1.0), &device))
                    .collect();
                // Both peers start the clock together: a small all-reduce as a barrier, so the
                // time is the reduction's, not a wait for the slower peer's tensors. One value
                // per rank: the ring between nodes splits a tensor into one chunk per node.
                let one = Tensor::<Inner, 1>::ones([n], &device).into_primitive().tensor();
                drop(all_reduce::<Inner>(id, one, ReduceOperation::Sum).expect("barrier"));
                let t0 = Instant::now();
                for g in grads {
                    let reduced = all_reduce::<Inner>(id, g.into_primitive().tensor(), ReduceOperation::Mean)
                        .expect("all-reduce");
                    drop(reduced);
                }
                t0.elapsed().as_secs_f64()
            })
            .skip(1)
            .collect::<Vec<f64>>()
    });
    if args.node_rank > 0 {
        return;
    }
    let mut t = times[0].clone();
    t.sort_by(f64::total_cmp);
    let engine = match args.nodes {
        1 => "burn-collective 0.21 (flex, in-process threads)".to_string(),
        nodes => format!("burn-collective 0.21 multi-node ({nodes} processes, websockets)"),
    };
    println!(
        "{}",
        serde_json::json!({
            "engine": engine,
            "workers": n,
            "values": values,
            "tensors": vit_shapes(args.dim, args.depth).len(),
            "median_s": t[t.len() / 2],
            "min_s": t[0],
            "shares_vs_whole_max_diff": max_diff,
        })
    );
}
