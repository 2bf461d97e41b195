//! Data-parallel training on several devices, on burn-collective: one thread per device, each
//! a collective peer holding a copy of the model, reading its own share of every global batch
//! and all-reducing the gradients once per update (after accumulation). Several machines run
//! one process each ([`Cluster`]): the collective reduces within each process, then between
//! them through its orchestrator (hosted by node 0) and a peer-to-peer tensor service.
//! Ranks are node-major, so 2 nodes x 1 device compute what 1 node x 2 devices does.
//!
//! Ranks stay in lockstep through two small all-reduces per update besides the gradients':
//! one before the gradients', where a rank whose batch failed says so, and one at the end of
//! the update, where rank 0 (the only rank that writes) reports a stop signal or a failed
//! write. Every rank then takes the same branch, so no rank is left waiting in an all-reduce
//! its peers never join. The reduced gradients are the same on every rank, so the non-finite
//! guard and its rollback decide alike everywhere without a message of their own.

use std::sync::Mutex;
use std::time::Duration;

use burn::collective::{all_reduce, finish_collective, register, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;

use crate::data::loader::Part;
use crate::error::{Error, Result};
use crate::model::objective::Gather;

/// `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `host:port` (a `ws://` prefix is accepted).
    pub fn parse(s: &str) -> std::result::Result<Endpoint, String> {
        let bare = s.strip_prefix("ws://").unwrap_or(s);
        let (host, port) = bare.rsplit_once(':').ok_or_else(|| "expected HOST:PORT".to_string())?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("port {port:?} is not a number"))?;
        if host.is_empty() || host.contains('/') {
            return Err(format!("host {host:?} is not a host name or address"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }

    /// The collective's form of the address.
    fn ws(&self) -> String {
        format!("ws://{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Where the processes of a multi-node run meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Node 0's orchestrator.
    pub master: Endpoint,
    /// This node's tensor service, which the other nodes download from.
    pub address: Endpoint,
    /// What every connection between the nodes proves it knows before any message is read.
    pub secret: ClusterSecret,
    /// The longest a collective operation between nodes may wait (registering included).
    pub timeout: Duration,
}

/// The secret the nodes of a run share. Never printed, and not part of the run's
/// configuration (it is not written to the run folder).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(pub Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret({} bytes)", self.0.len())
    }
}

/// This process's place among the processes (nodes) of a run; each runs the same number of
/// devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub nodes: usize,
    /// This process's index; node 0 hosts the orchestrator and its first rank leads.
    pub node: usize,
    /// `None` on one machine.
    pub network: Option<Network>,
}

impl Cluster {
    /// One process: ranks are its devices.
    pub const ONE: Cluster = Cluster {
        nodes: 1,
        node: 0,
        network: None,
    };
}

/// One rank's place among the ranks of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub ranks: usize,
    /// The rank's index within its process.
    pub local: usize,
    peer: PeerId,
}

impl World {
    /// A run on one device: every collective operation is the identity.
    pub const SINGLE: World = World {
        rank: 0,
        ranks: 1,
        local: 0,
        peer: PeerId(0),
    };

    /// The rank that writes the run folder, logs and evaluates.
    pub fn leads(&self) -> bool {
        self.rank == 0
    }

    /// The rank of its process that polls for stop signals (each node's first): a signal to
    /// any node's process stops the whole run at the same step.
    pub fn polls_signals(&self) -> bool {
        self.local == 0
    }

    /// The share of each global batch this rank reads.
    pub fn part(&self) -> Part {
        Part {
            rank: self.rank,
            ranks: self.ranks,
        }
    }

    /// The mean of every rank's gradients, on every rank.
    pub fn mean_grads<B: AutodiffBackend>(&self, grads: GradientsParams) -> Result<GradientsParams> {
        if self.ranks == 1 {
            return Ok(grads);
        }
        let _armed = watchdog::arm(self.rank, "the gradients' all-reduce");
        grads
            .all_reduce::<B::InnerBackend>(self.peer, ReduceOperation::Mean)
            .map_err(|e| collective_error(self.rank, "the gradients' all-reduce", e))
    }

    /// The sums over the ranks of a few values per rank (flags, logged scalars).
    pub fn sum<B: Backend>(&self, values: &[f64], device: &B::Device) -> Result<Vec<f64>> {
        if self.ranks == 1 {
            return Ok(values.to_vec());
        }
        // The collective's Ring all-reduce between nodes splits a tensor into one slice per
        // node: a few values are padded to at least one per rank.
        let mut local: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        local.resize(values.len().max(self.ranks), 0.0);
        let n = local.len();
        let t = Tensor::<B, 1>::from_data(TensorData::new(local, [n]), device);
        let _armed = watchdog::arm(self.rank, "a control all-reduce");
        let reduced = all_reduce::<B>(self.peer, t.into_primitive().tensor(), ReduceOperation::Sum)
            .map_err(|e| collective_error(self.rank, "a control all-reduce", e))?;
        let t = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced));
        Ok(t.into_data().iter::<f32>().take(values.len()).map(f64::from).collect())
    }

    /// The means over the ranks of a few values per rank.
    pub fn mean<B: Backend>(&self, values: &[f64], device: &B::Device) -> Result<Vec<f64>> {
        let n = self.ranks as f64;
        Ok(self.sum::<B>(values, device)?.into_iter().map(|v| v / n).collect())
    }

    /// Checks that every rank was started alike: the devices the collective counted are the
    /// ranks this process expects (each node ran the same --devices), and each named value
    /// (a configuration's fingerprint, the step resumed from) is the same on every rank.
    pub fn same<B: Backend>(&self, values: &[(&str, u64)], device: &B::Device) -> Result<()> {
        if self.ranks == 1 {
            return Ok(());
        }
        // Sums of f32 are exact below 2^24: 16-bit pieces over at most 256 ranks.
        let mut local = vec![1.0];
        for &(_, v) in values {
            local.extend((0..4).map(|i| ((v >> (16 * i)) & 0xffff) as f64));
        }
        let sums = self.sum::<B>(&local, device)?;
        let disagree = |message: String| Error::Collective {
            rank: self.rank,
            what: "starting the run".into(),
            reason: message,
        };
        let check = || {
            if sums[0] != self.ranks as f64 {
                return Err(disagree(format!(
                    "the nodes hold {} devices in all where this node expects {} (--num-nodes x its --devices): every node must pass the same --devices",
                    sums[0], self.ranks
                )));
            }
            for (i, &(what, v)) in values.iter().enumerate() {
                let pieces = &sums[1 + 4 * i..5 + 4 * i];
                if pieces
                    .iter()
                    .zip(&local[1 + 4 * i..])
                    .any(|(&s, &l)| s != l * self.ranks as f64)
                {
                    return Err(disagree(format!(
                        "the ranks disagree on {what} (this rank's: {v}): every node must run the same configuration on the same run folder (shared storage for --resume)"
                    )));
                }
            }
            Ok(())
        };
        // A rank whose value is the ranks' mean would pass alone: every rank fails together.
        self.agree::<B, _>(check(), device)
    }

    /// This rank's part of an update, once every rank has said whether its part failed
    /// (every rank calls it at the same point): a rank that failed gets its own error back,
    /// the others [`Error::PeerFailed`] if any rank failed.
    pub fn agree<B: Backend, T>(&self, local: Result<T>, device: &B::Device) -> Result<T> {
        let failed = self.sum::<B>(&[f64::from(u8::from(local.is_err()))], device)?[0] > 0.0;
        match local {
            Ok(_) if failed => Err(Error::PeerFailed { rank: self.rank }),
            local => local,
        }
    }
}

/// InfoNCE's negatives from every rank. burn-collective 0.21 has no all-gather, so each rank
/// all-reduces (Sum) a global-batch-sized tensor holding its own rows and zeros elsewhere;
/// its own rows are then put back with their gradient.
pub struct WorldGather<B: AutodiffBackend> {
    world: World,
    device: B::Device,
    /// The first failed all-reduce: a forward pass cannot return an error, so the training
    /// loop collects it with [`WorldGather::failure`] after the pass.
    failed: Mutex<Option<Error>>,
}

impl<B: AutodiffBackend> WorldGather<B> {
    pub fn new(world: World, device: B::Device) -> Self {
        WorldGather {
            world,
            device,
            failed: Mutex::new(None),
        }
    }

    /// The error of a gather that failed since the last call, if any.
    pub fn failure(&self) -> Result<()> {
        match self.failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<B: AutodiffBackend> Gather<B> for WorldGather<B> {
    fn gather(&self, local: Tensor<B, 2>) -> Tensor<B, 2> {
        let [b, d] = local.dims();
        let World { rank, ranks, peer, .. } = self.world;
        let rows = rank * b..(rank + 1) * b;
        // [ranks * b, dim]
        let padded = Tensor::<B::InnerBackend, 2>::zeros([ranks * b, d], &self.device)
            .slice_assign([rows.clone(), 0..d], local.clone().inner());
        let _armed = watchdog::arm(rank, "the all-reduce of InfoNCE's negatives");
        let summed =
            match all_reduce::<B::InnerBackend>(peer, padded.clone().into_primitive().tensor(), ReduceOperation::Sum) {
                Ok(summed) => Tensor::from_primitive(TensorPrimitive::Float(summed)),
                Err(e) => {
                    // A peer gone or a mismatched call: the pass goes on with this rank's rows
                    // (its result is never used) and the loop reports the error after it.
                    let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                    failed.get_or_insert(collective_error(rank, "the all-reduce of InfoNCE's negatives", e));
                    padded
                }
            };
        Tensor::<B, 2>::from_inner(summed).slice_assign([rows, 0..d], local)
    }
}

fn collective_error(rank: usize, what: &str, e: burn::collective::CollectiveError) -> Error {
    Error::Collective {
        rank,
        what: what.to_string(),
        reason: format!("{e:?}"),
    }
}

/// `module` with its parameters numbered 0, 1, ... in visit order. burn draws a parameter's
/// id at random when the module is built, and `GradientsParams::all_reduce` reduces the
/// gradients in the order of their ids: processes that built the same model with different
/// ids would add up different parameters. Numbered ids are the same in every process; a
/// checkpoint loaded later brings its own ids, and every process loads the same file.
pub fn numbered_params<B: Backend, M: Module<B>>(module: M) -> M {
    struct Numbering(u64);
    impl<B: Backend> ModuleMapper<B> for Numbering {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, tensor, mapper) = param.consume();
            self.0 += 1;
            Param::from_mapped_value(ParamId::from(self.0 - 1), tensor, mapper)
        }
    }
    module.map(&mut Numbering(0))
}

/// The collective is one per process and backend: one data-parallel run at a time.
static COLLECTIVE: Mutex<()> = Mutex::new(());

/// Runs `work` once per device, each on its own thread registered as a collective peer and
/// given its own input (a replica of the model), and returns the result of this process's
/// first rank (rank 0's on one machine). Where ranks fail, a rank's own error is returned
/// before the [`Error::PeerFailed`] of a rank that only heard of it. One device of one
/// process runs `work` on this thread with [`World::SINGLE`]. On several nodes node 0 starts
/// the orchestrator first; registering waits until every node has registered.
pub fn on_ranks<B, I, T, F>(devices: &[B::Device], cluster: &Cluster, inputs: Vec<I>, work: F) -> Result<T>
where
    B: AutodiffBackend,
    I: Send,
    T: Send,
    F: Fn(World, &B::Device, I) -> Result<T> + Sync,
{
    assert_eq!(devices.len(), inputs.len(), "one input per device");
    if devices.len() == 1 && cluster.nodes == 1 {
        let input = inputs.into_iter().next().expect("one input");
        return work(World::SINGLE, &devices[0], input);
    }
    let _one_run = COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let local = devices.len();
    let ranks = local * cluster.nodes;
    let mut config = CollectiveConfig::default().with_num_devices(local);
    if let Some(net) = &cluster.network {
        burn_communication::websocket::set_cluster_secret(&net.secret.0).map_err(|reason| Error::Collective {
            rank: cluster.node * local,
            what: "setting the cluster secret".into(),
            reason,
        })?;
        watchdog::set(net.timeout);
        if cluster.node == 0 {
            orchestrator::start(&net.master)?;
        }
        // Bound before the collective binds it, so a taken port is an error, not a hang.
        port_free(&net.address, "--node-address")?;
        eprintln!(
            "node {} of {}: {local} device(s), ranks {}..{}; tensor service on {}, orchestrator at {}",
            cluster.node,
            cluster.nodes,
            cluster.node * local,
            (cluster.node + 1) * local,
            net.address,
            net.master
        );
        config = config
            .with_num_nodes(cluster.nodes as u32)
            .with_global_address(net.master.ws().parse().expect("infallible"))
            .with_node_address(net.address.ws().parse().expect("infallible"))
            .with_data_service_port(net.address.port);
    }
    let outcomes: Vec<Result<T>> = std::thread::scope(|scope| {
        let (work, config) = (&work, &config);
        let handles: Vec<_> = devices
            .iter()
            .zip(inputs)
            .enumerate()
            .map(|(i, (device, input))| {
                scope.spawn(move || {
                    let rank = cluster.node * local + i;
                    let world = World {
                        rank,
                        ranks,
                        local: i,
                        peer: PeerId::from(rank),
                    };
                    let armed = watchdog::arm(rank, "registering with the other nodes");
                    register::<B::InnerBackend>(world.peer, device.clone(), config.clone())
                        .map_err(|e| collective_error(rank, "registering the peer", e))?;
                    drop(armed);
                    let out = world
                        .same::<B::InnerBackend>(&[], device)
                        .and_then(|()| work(world, device, input));
                    let finished = finish_collective::<B::InnerBackend>(world.peer)
                        .map_err(|e| collective_error(rank, "finishing the collective", e));
                    let out = out?;
                    finished?;
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Collective {
                        rank: cluster.node * local + i,
                        what: "training".into(),
                        reason: "the rank's thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    // A rank's own error goes before the PeerFailed of a rank that only heard of it.
    let mut errors = Vec::new();
    let mut lead = None;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(out) if i == 0 => lead = Some(out),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    if let Some(own) = errors.iter().position(|e| !matches!(e, Error::PeerFailed { .. })) {
        return Err(errors.swap_remove(own));
    }
    match (errors.into_iter().next(), lead) {
        (Some(e), _) => Err(e),
        (None, Some(out)) => Ok(out),
        (None, None) => unreachable!("the first rank returned neither a result nor an error"),
    }
}

/// Refuses an address this machine cannot listen on (in use, not its own, or not allowed).
fn port_free(at: &Endpoint, flag: &str) -> Result<()> {
    std::net::TcpListener::bind((at.host.trim_start_matches('[').trim_end_matches(']'), at.port))
        .map(drop)
        .map_err(|e| Error::Collective {
            rank: 0,
            what: format!("listening on port {} ({flag} {at})", at.port),
            reason: e.to_string(),
        })
}

/// Ends the process when a collective operation between nodes waits longer than the run's
/// --collective-timeout. burn-collective 0.21 has no timeouts and a blocked all-reduce cannot
/// be cancelled, so a node that died, hangs or was never started would otherwise hold every
/// other node forever; exiting leaves the last checkpoint to resume from.
pub mod watchdog {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// The exit status of a node that gave up waiting.
    pub const EXIT_TIMED_OUT: i32 = 3;

    struct Waits {
        timeout: Option<Duration>,
        next: u64,
        /// Each armed wait: its deadline, rank and what it waits for.
        armed: BTreeMap<u64, (Instant, usize, &'static str)>,
        watching: bool,
    }

    static WAITS: Mutex<Waits> = Mutex::new(Waits {
        timeout: None,
        next: 0,
        armed: BTreeMap::new(),
        watching: false,
    });

    fn waits() -> std::sync::MutexGuard<'static, Waits> {
        WAITS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bounds the waits armed from now on (a multi-node run's processes set it once).
    pub fn set(timeout: Duration) {
        let mut w = waits();
        w.timeout = Some(timeout);
        if !std::mem::replace(&mut w.watching, true) {
            std::thread::Builder::new()
                .name("collective-watchdog".into())
                .spawn(watch)
                .expect("a thread for the watchdog");
        }
    }

    /// A wait that ends when the returned guard drops (nothing without a timeout set).
    pub fn arm(rank: usize, what: &'static str) -> Option<Armed> {
        let mut w = waits();
        let deadline = Instant::now() + w.timeout?;
        let id = w.next;
        w.next += 1;
        w.armed.insert(id, (deadline, rank, what));
        Some(Armed(id))
    }

    pub struct Armed(u64);

    impl Drop for Armed {
        fn drop(&mut self) {
            waits().armed.remove(&self.0);
        }
    }

    fn watch() {
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let w = waits();
            let now = Instant::now();
            if let Some((_, &(_, rank, what))) = w.armed.iter().find(|(_, (deadline, ..))| *deadline <= now) {
                let secs = w.timeout.unwrap_or_default().as_secs_f64();
                eprintln!(
                    "error: rank {rank}: {what} got no answer from the other nodes in {secs:.0} s \
                     (--collective-timeout): a node died, hangs or was not started. This node stops; \
                     once every node runs again, --resume continues from the last checkpoint"
                );
                std::process::exit(EXIT_TIMED_OUT);
            }
        }
    }
}

/// burn-collective's orchestrator, which registers the nodes and hands each the others'
/// addresses; after that the nodes exchange tensors directly.
mod orchestrator {
    use std::sync::Mutex;

    use super::{port_free, Endpoint};
    use crate::error::{Error, Result};

    /// Ports an orchestrator of this process listens on (it lives as long as the process).
    static STARTED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

    /// Starts the orchestrator on `at` (the host --master names, not every interface) in a
    /// thread of its own, once per process.
    pub fn start(at: &Endpoint) -> Result<()> {
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        let port = at.port;
        if started.contains(&port) {
            return Ok(());
        }
        port_free(at, "--master")?;
        let host = at.host.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Collective {
                rank: 0,
                what: "starting the orchestrator".into(),
                reason: e.to_string(),
            })?;
        std::thread::Builder::new()
            .name("orchestrator".into())
            .spawn(move || runtime.block_on(burn_collective::start_global_orchestrator(&host, port)))
            .map_err(|e| Error::Collective {
                rank: 0,
                what: "starting the orchestrator".into(),
                reason: e.to_string(),
            })?;
        started.push(port);
        Ok(())
    }
}

#[cfg(test)]
backend_tests! {
    use super::*;

    use self::{TestAutodiff as CpuAutodiff, TestBackend as Inner};

    #[test]
    fn ranks_that_start_differently_are_refused_with_what_differs() {
        let devices = vec![Default::default(); 2];
        let same = |values: fn(usize) -> u64| {
            on_ranks::<CpuAutodiff, _, _, _>(&devices, &Cluster::ONE, vec![(); 2], |world, device, ()| {
                world.same::<Inner>(&[("the configuration", 7), ("the step", values(world.rank))], device)
            })
        };
        same(|_| u64::MAX).unwrap();
        let err = same(|rank| [0x1_0002, 0x2_0001][rank]).unwrap_err().to_string();
        assert!(err.contains("disagree on the step (this rank's: 65538)"), "{err}");
    }

    #[test]
    fn ranks_sum_their_values_and_a_failing_rank_is_reported_as_itself() {
        let devices = vec![Default::default(); 3];
        let sums = on_ranks::<CpuAutodiff, _, _, _>(&devices, &Cluster::ONE, vec![(); 3], |world, device, ()| {
            world.sum::<Inner>(&[world.rank as f64, 1.0], device)
        })
        .unwrap();
        assert_eq!(sums, vec![3.0, 3.0]);
        let err = on_ranks::<CpuAutodiff, _, (), _>(&devices, &Cluster::ONE, vec![(); 3], |world, device, ()| {
            let local = match world.rank {
                2 => Err(Error::Io {
                    path: "rank-2-file".into(),
                    source: std::io::Error::other("disk"),
                }),
                _ => Ok(()),
            };
            world.agree::<Inner, _>(local, device)
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("rank-2-file"), "{err}");
    }

    #[test]
    fn numbered_parameters_are_the_same_in_two_builds_of_a_model() {
        use burn::module::ModuleVisitor;
        use burn::nn::{Linear, LinearConfig};
        struct Ids(Vec<ParamId>);
        impl<B: Backend> ModuleVisitor<B> for Ids {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                self.0.push(param.id);
            }
        }
        let ids = |m: &Vec<Linear<Inner>>| {
            let mut v = Ids(vec![]);
            m.visit(&mut v);
            v.0
        };
        let build = || vec![LinearConfig::new(3, 4).init::<Inner>(&Default::default()); 2];
        // burn's own ids are random: two builds disagree (and two copies of one build agree).
        assert_ne!(ids(&build()), ids(&build()));
        let (a, b) = (numbered_params(build()), numbered_params(build()));
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(ids(&a), (0..4).map(ParamId::from).collect::<Vec<_>>());
    }
}
