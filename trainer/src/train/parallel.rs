//! Data-parallel training on several devices of one machine, on burn-collective: one thread
//! per device, each a collective peer holding a copy of the model, reading its own share of
//! every global batch and all-reducing the gradients once per update (after accumulation).
//!
//! Ranks stay in lockstep through two small all-reduces per update besides the gradients':
//! one before the gradients', where a rank whose batch failed says so, and one at the end of
//! the update, where rank 0 (the only rank that writes) reports a stop signal or a failed
//! write. Every rank then takes the same branch, so no rank is left waiting in an all-reduce
//! its peers never join. The reduced gradients are the same on every rank, so the non-finite
//! guard and its rollback decide alike everywhere without a message of their own.

use std::sync::Mutex;

use burn::collective::{all_reduce, finish_collective, register, CollectiveConfig, PeerId, ReduceOperation};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;

use crate::data::loader::Part;
use crate::error::{Error, Result};
use crate::model::objective::Gather;

/// One rank's place among the ranks of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub ranks: usize,
    peer: PeerId,
}

impl World {
    /// A run on one device: every collective operation is the identity.
    pub const SINGLE: World = World {
        rank: 0,
        ranks: 1,
        peer: PeerId(0),
    };

    /// The rank that writes the run folder, logs and evaluates.
    pub fn leads(&self) -> bool {
        self.rank == 0
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
        grads
            .all_reduce::<B::InnerBackend>(self.peer, ReduceOperation::Mean)
            .map_err(|e| collective_error(self.rank, "the gradients' all-reduce", e))
    }

    /// The sums over the ranks of a few values per rank (flags, logged scalars).
    pub fn sum<B: Backend>(&self, values: &[f64], device: &B::Device) -> Result<Vec<f64>> {
        if self.ranks == 1 {
            return Ok(values.to_vec());
        }
        let local: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let t = Tensor::<B, 1>::from_data(TensorData::new(local, [values.len()]), device);
        let reduced = all_reduce::<B>(self.peer, t.into_primitive().tensor(), ReduceOperation::Sum)
            .map_err(|e| collective_error(self.rank, "a control all-reduce", e))?;
        let t = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced));
        Ok(t.into_data().iter::<f32>().map(f64::from).collect())
    }

    /// The means over the ranks of a few values per rank.
    pub fn mean<B: Backend>(&self, values: &[f64], device: &B::Device) -> Result<Vec<f64>> {
        let n = self.ranks as f64;
        Ok(self.sum::<B>(values, device)?.into_iter().map(|v| v / n).collect())
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
}

impl<B: AutodiffBackend> WorldGather<B> {
    pub fn new(world: World, device: B::Device) -> Self {
        WorldGather { world, device }
    }
}

impl<B: AutodiffBackend> Gather<B> for WorldGather<B> {
    fn gather(&self, local: Tensor<B, 2>) -> Tensor<B, 2> {
        let [b, d] = local.dims();
        let World { rank, ranks, peer } = self.world;
        let rows = rank * b..(rank + 1) * b;
        // [ranks * b, dim]
        let padded = Tensor::<B::InnerBackend, 2>::zeros([ranks * b, d], &self.device)
            .slice_assign([rows.clone(), 0..d], local.clone().inner());
        // A forward pass cannot return an error; a failing collective is a broken run (a peer
        // gone or a mismatched call), reported as this rank's panic.
        let summed = all_reduce::<B::InnerBackend>(peer, padded.into_primitive().tensor(), ReduceOperation::Sum)
            .unwrap_or_else(|e| panic!("rank {rank}: the all-reduce of InfoNCE's negatives failed: {e:?}"));
        let all = Tensor::<B, 2>::from_inner(Tensor::from_primitive(TensorPrimitive::Float(summed)));
        all.slice_assign([rows, 0..d], local)
    }
}

fn collective_error(rank: usize, what: &str, e: burn::collective::CollectiveError) -> Error {
    Error::Collective {
        rank,
        what: what.to_string(),
        reason: format!("{e:?}"),
    }
}

/// The collective is one per process and backend: one data-parallel run at a time.
static COLLECTIVE: Mutex<()> = Mutex::new(());

/// Runs `work` once per device, each on its own thread registered as a collective peer and
/// given its own input (a replica of the model), and returns rank 0's result. Where ranks
/// fail, a rank's own error is returned before the [`Error::PeerFailed`] of a rank that only
/// heard of it. One device runs `work` on this thread with [`World::SINGLE`].
pub fn on_ranks<B, I, T, F>(devices: &[B::Device], inputs: Vec<I>, work: F) -> Result<T>
where
    B: AutodiffBackend,
    I: Send,
    T: Send,
    F: Fn(World, &B::Device, I) -> Result<T> + Sync,
{
    assert_eq!(devices.len(), inputs.len(), "one input per device");
    if devices.len() == 1 {
        let input = inputs.into_iter().next().expect("one input");
        return work(World::SINGLE, &devices[0], input);
    }
    let _one_run = COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let ranks = devices.len();
    let outcomes: Vec<Result<T>> = std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = devices
            .iter()
            .zip(inputs)
            .enumerate()
            .map(|(rank, (device, input))| {
                scope.spawn(move || {
                    let world = World {
                        rank,
                        ranks,
                        peer: PeerId::from(rank),
                    };
                    let config = CollectiveConfig::default().with_num_devices(ranks);
                    register::<B::InnerBackend>(world.peer, device.clone(), config)
                        .map_err(|e| collective_error(rank, "registering the peer", e))?;
                    let out = work(world, device, input);
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
            .map(|(rank, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Collective {
                        rank,
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
    for (rank, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(out) if rank == 0 => lead = Some(out),
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
        (None, None) => unreachable!("rank 0 returned neither a result nor an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{TestAutodiff as CpuAutodiff, TestBackend as Inner};

    #[test]
    fn ranks_sum_their_values_and_a_failing_rank_is_reported_as_itself() {
        let devices = vec![Default::default(); 3];
        let sums = on_ranks::<CpuAutodiff, _, _, _>(&devices, vec![(); 3], |world, device, ()| {
            world.sum::<Inner>(&[world.rank as f64, 1.0], device)
        })
        .unwrap();
        assert_eq!(sums, vec![3.0, 3.0]);
        let err = on_ranks::<CpuAutodiff, _, (), _>(&devices, vec![(); 3], |world, device, ()| {
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
}
