//! Several machines, one process each: where this node sits in a multi-node run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn_communication::websocket::MIN_SECRET_LEN;

use crate::error::{ConfigError, Result};
use crate::train::parallel::{Cluster, ClusterSecret, Endpoint, Network};

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
    /// A file holding the secret every node of the run shares (at least 16 bytes; a trailing
    /// newline is ignored), needed with --num-nodes > 1 unless $SPLITMASK_CLUSTER_SECRET holds
    /// it. Each connection between nodes proves it knows the secret before any message is
    /// read, so a stranger on the network can neither join the run nor disturb it.
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Seconds a node waits for the others in one collective operation (registering
    /// included) before it stops with an error, resumable from the last checkpoint: a node
    /// that died or hangs ends the run instead of holding it. Long enough for the slowest
    /// node's update, checkpoint and evaluation.
    #[arg(long, default_value_t = 1800.0, value_parser = crate::train::config::finite)]
    pub collective_timeout: f64,
}

/// The environment variable that holds the cluster secret where no file is given.
pub const SECRET_ENV: &str = "SPLITMASK_CLUSTER_SECRET";

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
        let secret = cluster_secret(self.cluster_secret_file.as_deref())?;
        if !(self.collective_timeout > 0.0 && self.collective_timeout <= 7.0 * 86400.0) {
            return Err(E::invalid(
                "collective-timeout",
                self.collective_timeout,
                "seconds, above 0 and at most a week",
            ));
        }
        Ok(Cluster {
            nodes,
            node,
            network: Some(Network {
                master,
                address,
                secret,
                timeout: Duration::from_secs_f64(self.collective_timeout),
            }),
        })
    }
}

/// The secret from `file`, else from [`SECRET_ENV`]: a regular file of at most 4 KiB, at
/// least [`MIN_SECRET_LEN`] bytes once a trailing newline is dropped.
fn cluster_secret(file: Option<&Path>) -> Result<ClusterSecret, ConfigError> {
    let (flag, shown, bytes) = match file {
        Some(p) => {
            let bytes = pipeline::source::read_regular(p, 4096)
                .map_err(|e| E::invalid("cluster-secret-file", p.display(), e.to_string()))?;
            ("cluster-secret-file", p.display().to_string(), bytes)
        }
        None => match std::env::var_os(SECRET_ENV) {
            Some(v) => ("cluster-secret-file", format!("${SECRET_ENV}"), v.into_encoded_bytes()),
            None => {
                return Err(E::invalid(
                    "cluster-secret-file",
                    "(none)",
                    format!(
                        "several nodes need a secret they share: --cluster-secret-file FILE or ${SECRET_ENV} \
                         (for example `openssl rand -hex 32 > secret` on shared storage)"
                    ),
                ))
            }
        },
    };
    let secret = bytes.trim_ascii_end();
    if secret.len() < MIN_SECRET_LEN {
        return Err(E::invalid(
            flag,
            shown,
            format!(
                "the secret has {} bytes; at least {MIN_SECRET_LEN} are needed",
                secret.len()
            ),
        ));
    }
    Ok(ClusterSecret(secret.to_vec()))
}
