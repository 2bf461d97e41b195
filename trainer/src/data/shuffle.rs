//! The order of an epoch over a split that may not fit in memory: its row groups in a seeded
//! order, their rows through a shuffle buffer bounded in bytes.
//!
//! The plan is computed from the split's row index alone (which rows each row group holds and
//! their encoded sizes, known from the load pass), never from reading images, so:
//! - it is the same whether the rows are cached in RAM or read from the shards as the epoch
//!   goes (`--cache ram` and `--cache none` train on the same batches);
//! - batch `i` of a run stays a pure function of (seed, i): a resumed run replays its epoch's
//!   plan without reading the row groups it has already consumed.
//!
//! When the whole split fits the buffer, every row group is read before the first pick and the
//! epoch is a uniform permutation; otherwise each pick is uniform over the buffer, which holds
//! rows of the most recently read groups (the usual streaming shuffle, as in tf.data or
//! WebDataset, with groups in a fresh random order each epoch).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::seed::mix;

/// A run of consecutive samples read together: the kept rows of one row group of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// First sample of the group (samples `start..start + len`).
    pub start: usize,
    pub len: usize,
    /// Encoded image bytes of those samples.
    pub bytes: u64,
}

/// One step of an epoch's plan, in the order a streaming reader performs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Read row group `g` into the buffer.
    Read(usize),
    /// Hand sample `i` out of the buffer (the next distinct row of the epoch).
    Emit(usize),
}

/// What an epoch reads and hands out, and in which order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub events: Vec<Event>,
    /// The samples of the `Emit` events, in order: distinct row `k` of the epoch.
    pub emits: Vec<usize>,
    /// The most encoded bytes the buffer holds at any point.
    pub peak_bytes: u64,
}

impl Plan {
    /// For each group, the index of its last distinct row in [`Plan::emits`] (`None`: the
    /// epoch ends before it is read). A reader starting at row `k` skips the groups whose
    /// last row comes before `k`. `groups` are in sample order, as [`epoch_plan`] takes them.
    pub fn last_emit(&self, groups: &[Group]) -> Vec<Option<usize>> {
        let mut last = vec![None; groups.len()];
        for (k, &i) in self.emits.iter().enumerate() {
            last[groups.partition_point(|g| g.start + g.len <= i)] = Some(k);
        }
        last
    }
}

/// The plan of `epoch`: row groups in a seeded order, each read once there is room for it
/// in a buffer of `buffer_bytes`, picks uniform over the buffer, until `take` distinct rows
/// are out (fewer than the split with repeated augmentation). A group larger than the buffer
/// is read when the buffer is empty, so the peak is `max(buffer_bytes, largest group)`.
pub fn epoch_plan(groups: &[Group], sizes: &[u32], seed: u64, epoch: u64, buffer_bytes: u64, take: usize) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, epoch, u64::MAX));
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.shuffle(&mut rng);
    let total: usize = groups.iter().map(|g| g.len).sum();
    let take = take.min(total);
    let mut events = Vec::with_capacity(groups.len() + take);
    let mut emits = Vec::with_capacity(take);
    let mut buffer: Vec<usize> = Vec::new();
    let (mut held, mut peak) = (0u64, 0u64);
    let mut emit = |buffer: &mut Vec<usize>, held: &mut u64, events: &mut Vec<Event>, emits: &mut Vec<usize>| {
        let i = buffer.swap_remove(rng.random_range(0..buffer.len()));
        *held -= u64::from(sizes[i]);
        events.push(Event::Emit(i));
        emits.push(i);
    };
    for g in order {
        while emits.len() < take && !buffer.is_empty() && held + groups[g].bytes > buffer_bytes {
            emit(&mut buffer, &mut held, &mut events, &mut emits);
        }
        if emits.len() >= take {
            break;
        }
        events.push(Event::Read(g));
        buffer.extend(groups[g].start..groups[g].start + groups[g].len);
        held += groups[g].bytes;
        peak = peak.max(held);
    }
    while emits.len() < take && !buffer.is_empty() {
        emit(&mut buffer, &mut held, &mut events, &mut emits);
    }
    Plan {
        events,
        emits,
        peak_bytes: peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` groups of varied sizes (rows of 1-9 KB), in sample order.
    fn split(n: usize, rng: &mut ChaCha8Rng) -> (Vec<Group>, Vec<u32>) {
        let (mut groups, mut sizes) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let len = rng.random_range(1..20);
            let start = sizes.len();
            sizes.extend((0..len).map(|_| rng.random_range(1_000..9_000u32)));
            let bytes = sizes[start..].iter().map(|&s| u64::from(s)).sum();
            groups.push(Group { start, len, bytes });
        }
        (groups, sizes)
    }

    #[test]
    fn an_epoch_hands_out_every_row_once_within_the_buffer() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (groups, sizes) = split(40, &mut rng);
        let total_bytes: u64 = groups.iter().map(|g| g.bytes).sum();
        let largest = groups.iter().map(|g| g.bytes).max().unwrap();
        let n = sizes.len();
        for budget in [largest, 3 * largest, total_bytes / 4, total_bytes] {
            let plan = epoch_plan(&groups, &sizes, 7, 0, budget, n);
            let mut seen = plan.emits.clone();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "budget {budget}");
            assert!(plan.peak_bytes <= budget, "{} > {budget}", plan.peak_bytes);
            // Replaying the events with real byte counts never holds more than the budget,
            // and every emitted row was read before.
            let (mut held, mut read) = (0u64, vec![false; n]);
            for e in &plan.events {
                match *e {
                    Event::Read(g) => {
                        held += groups[g].bytes;
                        (groups[g].start..groups[g].start + groups[g].len).for_each(|i| read[i] = true);
                        assert!(held <= budget);
                    }
                    Event::Emit(i) => {
                        assert!(read[i], "row {i} handed out before its group was read");
                        held -= u64::from(sizes[i]);
                    }
                }
            }
            assert_eq!(held, 0);
            let reads = plan.events.iter().filter(|e| matches!(e, Event::Read(_))).count();
            assert_eq!(reads, groups.len(), "each group is read once");
        }
        // A buffer that holds the split reads every group before the first pick.
        let plan = epoch_plan(&groups, &sizes, 7, 0, total_bytes, n);
        assert!(plan.events[..groups.len()].iter().all(|e| matches!(e, Event::Read(_))));
    }

    #[test]
    fn the_order_is_a_function_of_seed_and_epoch() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (groups, sizes) = split(30, &mut rng);
        let n = sizes.len();
        let budget = groups.iter().map(|g| g.bytes).sum::<u64>() / 5;
        let a = epoch_plan(&groups, &sizes, 1, 0, budget, n);
        assert_eq!(a, epoch_plan(&groups, &sizes, 1, 0, budget, n));
        assert_ne!(a.emits, epoch_plan(&groups, &sizes, 2, 0, budget, n).emits);
        assert_ne!(a.emits, epoch_plan(&groups, &sizes, 1, 1, budget, n).emits);
        // Streaming still mixes: the first tenth of the epoch comes from many groups.
        let last = a.last_emit(&groups);
        let early: std::collections::BTreeSet<usize> = a.emits[..n / 10]
            .iter()
            .map(|&i| groups.partition_point(|g| g.start + g.len <= i))
            .collect();
        assert!(early.len() >= 3, "{early:?}");
        // last_emit names the position of each group's last row.
        for (g, k) in last.iter().enumerate() {
            let k = k.unwrap();
            let i = a.emits[k];
            assert!((groups[g].start..groups[g].start + groups[g].len).contains(&i));
            assert!(a.emits[k + 1..]
                .iter()
                .all(|&j| !(groups[g].start..groups[g].start + groups[g].len).contains(&j)));
        }
    }

    #[test]
    fn a_partial_epoch_stops_after_take_rows() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (groups, sizes) = split(20, &mut rng);
        let budget = groups.iter().map(|g| g.bytes).max().unwrap() * 2;
        let plan = epoch_plan(&groups, &sizes, 0, 3, budget, sizes.len() / 3);
        assert_eq!(plan.emits.len(), sizes.len() / 3);
        let distinct: std::collections::HashSet<_> = plan.emits.iter().collect();
        assert_eq!(distinct.len(), plan.emits.len());
        assert!(matches!(plan.events.last(), Some(Event::Emit(_))));
        // Groups never read in this epoch have no last row.
        assert!(plan.last_emit(&groups).contains(&None));
    }
}
