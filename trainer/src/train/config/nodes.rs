//! Several machines, one process each: where this node sits in a multi-node run.

use crate::error::{ConfigError, Result};
use crate::train::parallel::{Cluster, Endpoint, Network};

use ConfigError as E;

/// Several machines (`--num-nodes`), one process each: burn-collective's multi-node mode.
/// Node 0 hosts the collective's orchestrator on `--master`'s port and its first device's
/// rank alone writes the run folder, which every node reads on `--resume` (shared storage).
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Processes (machines) in the run, each training on its own --devices (the same count).
    #[arg(long, default_value_t = 1)]
    pub num_nodes: usize,
    /// This process's index, 0..num-nodes (Slurm: $SLURM_NODEID).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// HOST:PORT of node 0, where the orchestrator listens (needed with --num-nodes > 1).
    #[arg(long)]
    pub master: Option<String>,
    /// HOST:PORT other nodes reach this one at, for its tensor service (default: the master's
    /// host, at the master's port + 1 + node rank; give it where nodes are separate machines).
    #[arg(long)]
    pub node_address: Option<String>,
}

impl NodeArgs {
    /// This process's place in the run: one machine without --num-nodes.
    pub fn resolve(&self) -> Result<Cluster, ConfigError> {
        let (nodes, node) = (self.num_nodes, self.node_rank);
        if nodes == 0 {
            return Err(E::invalid("num-nodes", nodes, "a run needs at least one node"));
        }
        if node >= nodes {
            return Err(E::invalid(
                "node-rank",
                node,
                format!("nodes are numbered 0..{nodes} (--num-nodes {nodes})"),
            ));
        }
        if nodes == 1 {
            return Ok(Cluster::ONE);
        }
        let master = self
            .master
            .as_deref()
            .ok_or_else(|| E::invalid("num-nodes", nodes, "several nodes need --master HOST:PORT (node 0's)"))?;
        let master = Endpoint::parse(master).map_err(|m| E::invalid("master", master, m))?;
        let address = match &self.node_address {
            Some(a) => Endpoint::parse(a).map_err(|m| E::invalid("node-address", a, m))?,
            None => Endpoint {
                host: master.host.clone(),
                port: master
                    .port
                    .checked_add(1 + node as u16)
                    .ok_or_else(|| E::invalid("master", &master, "no port left above it for the nodes"))?,
            },
        };
        Ok(Cluster {
            nodes,
            node,
            network: Some(Network { master, address }),
        })
    }
}
