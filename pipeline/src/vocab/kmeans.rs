//! Spherical k-means (Lloyd) for visual vocabularies, fast enough for the paper's setting
//! (millions of 192-d patches, k = 8192) on an ordinary machine.
//!
//! Points and centroids are unit vectors; the assignment step is a blocked GEMM plus argmax
//! (`nearest::argmax_dot`), the update step a parallel sum of members re-normalized. As in
//! faiss, at most `max_points_per_centroid * k` points take part (a seeded subsample), init is
//! k distinct random points, and the objective reported is the sum of squared L2 distances
//! `sum ||x - c||² = sum (2 - 2 x·c)`, which never increases across iterations.

use std::borrow::Cow;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::vocab::nearest::argmax_dot;

/// Largest k seeded with k-means++ by default.
pub const PLUS_PLUS_MAX_K: usize = 1024;

/// How the first centroids are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum KmeansInit {
    /// k distinct random points (faiss's default).
    Random,
    /// k-means++ on a subsample of `16 k` points: fewer poor local optima, slow for large k
    /// (the default up to [`PLUS_PLUS_MAX_K`]).
    PlusPlus,
    /// These [k, d] centroids (to compare with another implementation from the same start).
    Given(Vec<f32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct KmeansConfig {
    pub k: usize,
    pub init: KmeansInit,
    pub iterations: u32,
    pub seed: u64,
    /// faiss's default: 256 points per centroid at most.
    pub max_points_per_centroid: usize,
    pub progress: bool,
    /// Keep the state after every iteration here, and resume from it.
    pub state: Option<KmeansState>,
}

/// Where k-means keeps its state (centroids, objective so far, RNG position) after every
/// iteration, so that a stopped run continues from there to the result an uninterrupted run
/// gets. `key` says which points and settings the state belongs to: a state with another key
/// is ignored and overwritten.
#[derive(Debug, Clone, PartialEq)]
pub struct KmeansState {
    pub path: PathBuf,
    pub key: String,
}

impl KmeansConfig {
    pub fn new(k: usize, iterations: u32, seed: u64) -> Self {
        KmeansConfig {
            k,
            // k-means++ seeding is k sequential passes over a 16 k pool: O(k²) memory traffic,
            // minutes at k = 8192. There, with up to 256 points per centroid, faiss's random
            // init is the usual choice and converges as well.
            init: if k <= PLUS_PLUS_MAX_K {
                KmeansInit::PlusPlus
            } else {
                KmeansInit::Random
            },
            iterations,
            seed,
            max_points_per_centroid: 256,
            progress: false,
            state: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KmeansResult {
    /// [k, d] unit rows.
    pub centroids: Vec<f32>,
    /// Objective at each iteration's assignment step.
    pub inertia: Vec<f64>,
    /// Points used after subsampling.
    pub points: usize,
    /// Empty clusters re-seeded, over all iterations.
    pub reseeded: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KmeansError {
    #[error("stopped by {signal} at k-means iteration {iteration} of {of}")]
    Interrupted {
        signal: &'static str,
        iteration: u32,
        of: u32,
    },
    #[error("k-means needs at least k = {k} points, got {n}")]
    TooFewPoints { n: usize, k: usize },
    #[error("{path}: k-means state: {message}")]
    State { path: PathBuf, message: String },
    #[error("k must be > 0 and the dimension > 0 (k = {k}, d = {d})")]
    BadShape { k: usize, d: usize },
}

/// Scales each row of `x` ([n, d]) to unit norm; zero rows stay zero.
pub fn normalize_rows(x: &mut [f32], d: usize) {
    x.par_chunks_mut(d).for_each(|row| {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    });
}

/// Clusters the unit rows of `x` ([n, d] row-major).
pub fn kmeans(x: &[f32], d: usize, cfg: &KmeansConfig) -> Result<KmeansResult, KmeansError> {
    let k = cfg.k;
    if k == 0 || d == 0 {
        return Err(KmeansError::BadShape { k, d });
    }
    let n_all = x.len() / d;
    if n_all < k {
        return Err(KmeansError::TooFewPoints { n: n_all, k });
    }
    // One generator, drawn from in a fixed order (subsample, init, re-seeding), so that a
    // seed fixes the result and a saved word position resumes it.
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let x = subsample(x, d, cfg.max_points_per_centroid.saturating_mul(k), &mut rng);
    let x: &[f32] = &x;
    let n = x.len() / d;
    let mut lloyd = Lloyd {
        centroids: initial_centroids(x, d, k, &cfg.init, &mut rng),
        inertia: Vec::with_capacity(cfg.iterations as usize),
        reseeded: 0,
    };
    let bar = progress_bar(cfg);
    let start = resume(cfg, k, d, &mut lloyd, &mut rng);
    bar.set_position(start as u64);
    for iteration in start..cfg.iterations {
        if let Some(signal) = crate::interrupt::safe_point("kmeans", iteration as u64) {
            bar.abandon();
            return Err(KmeansError::Interrupted {
                signal,
                iteration,
                of: cfg.iterations,
            });
        }
        let obj = lloyd.step(x, d, k, &mut rng);
        bar.set_message(format!("inertia {obj:.1}"));
        bar.inc(1);
        if let Some(st) = &cfg.state {
            save_state(st, &lloyd.saved(iteration + 1, &rng), k, d)?;
        }
    }
    bar.finish_and_clear();
    Ok(KmeansResult {
        centroids: lloyd.centroids,
        inertia: lloyd.inertia,
        points: n,
        reseeded: lloyd.reseeded,
    })
}

/// At most `cap` rows of `x`, a seeded sample kept in their original order.
fn subsample<'a>(x: &'a [f32], d: usize, cap: usize, rng: &mut ChaCha8Rng) -> Cow<'a, [f32]> {
    let n = x.len() / d;
    if n <= cap {
        return Cow::Borrowed(x);
    }
    let mut picked = sample(rng, n, cap).into_vec();
    picked.sort_unstable();
    Cow::Owned(
        picked
            .iter()
            .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
            .collect(),
    )
}

fn initial_centroids(x: &[f32], d: usize, k: usize, init: &KmeansInit, rng: &mut ChaCha8Rng) -> Vec<f32> {
    match init {
        KmeansInit::Random => sample(rng, x.len() / d, k)
            .into_iter()
            .flat_map(|i| x[i * d..(i + 1) * d].iter().copied())
            .collect(),
        KmeansInit::PlusPlus => plus_plus(x, d, k, rng),
        KmeansInit::Given(c) => {
            assert_eq!(c.len(), k * d, "given centroids must be [k, d]");
            c.clone()
        }
    }
}

fn progress_bar(cfg: &KmeansConfig) -> ProgressBar {
    let bar = if cfg.progress {
        ProgressBar::new(cfg.iterations as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("k-means {pos}/{len} [{bar:30}] {msg} eta {eta}").expect("valid template"),
    );
    bar
}

/// Loads the saved state into `lloyd` and `rng` when there is one for this run; returns the
/// iteration to start from (0 without one).
fn resume(cfg: &KmeansConfig, k: usize, d: usize, lloyd: &mut Lloyd, rng: &mut ChaCha8Rng) -> u32 {
    let Some(saved) = cfg.state.as_ref().and_then(|st| load_state(st, k, d)) else {
        return 0;
    };
    // A state from a run asked for more iterations than this one is not a prefix of it.
    if saved.iteration > cfg.iterations {
        return 0;
    }
    lloyd.centroids = saved.centroids;
    lloyd.inertia = saved.inertia;
    lloyd.reseeded = saved.reseeded;
    rng.set_word_pos(saved.word_pos);
    saved.iteration
}

/// What the iterations carry from one to the next.
struct Lloyd {
    /// [k, d] unit rows.
    centroids: Vec<f32>,
    inertia: Vec<f64>,
    reseeded: u64,
}

impl Lloyd {
    /// One iteration: assign, record the objective, move the centroids to their members'
    /// normalized mean, re-seed the empty ones. Returns the objective of the assignment.
    fn step(&mut self, x: &[f32], d: usize, k: usize, rng: &mut ChaCha8Rng) -> f64 {
        let (assign, best) = argmax_dot(x, &self.centroids, d);
        let obj: f64 = best.par_iter().map(|&b| 2.0 - 2.0 * b as f64).sum();
        self.inertia.push(obj);
        let (sums, counts) = member_sums(x, &assign, d, k);
        move_to_means(&mut self.centroids, &sums, &counts, d);
        self.reseeded += reseed_empty(x, d, &mut self.centroids, &counts, &assign, &best, rng);
        obj
    }

    fn saved(&self, iteration: u32, rng: &ChaCha8Rng) -> SavedState {
        SavedState {
            iteration,
            centroids: self.centroids.clone(),
            inertia: self.inertia.clone(),
            reseeded: self.reseeded,
            word_pos: rng.get_word_pos(),
        }
    }
}

/// Sums ([k, d], f64) and counts of the members of each centroid: per-thread partial sums,
/// then a reduction.
fn member_sums(x: &[f32], assign: &[u32], d: usize, k: usize) -> (Vec<f64>, Vec<u64>) {
    x.par_chunks(d * 4096)
        .zip(assign.par_chunks(4096))
        .fold(
            || (vec![0f64; k * d], vec![0u64; k]),
            |(mut s, mut c), (xs, a)| {
                for (row, &j) in xs.chunks(d).zip(a) {
                    let j = j as usize;
                    c[j] += 1;
                    for (acc, v) in s[j * d..(j + 1) * d].iter_mut().zip(row) {
                        *acc += *v as f64;
                    }
                }
                (s, c)
            },
        )
        .reduce(
            || (vec![0f64; k * d], vec![0u64; k]),
            |(mut s1, mut c1), (s2, c2)| {
                s1.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
                c1.iter_mut().zip(&c2).for_each(|(a, b)| *a += b);
                (s1, c1)
            },
        )
}

/// Each centroid with members becomes their sum, normalized; the others stay.
fn move_to_means(centroids: &mut [f32], sums: &[f64], counts: &[u64], d: usize) {
    for (j, &count) in counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let s = &sums[j * d..(j + 1) * d];
        let norm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            for (c, v) in centroids[j * d..(j + 1) * d].iter_mut().zip(s) {
                *c = (*v / norm) as f32;
            }
        }
    }
}

/// Empty clusters take the worst-served points of the largest clusters. The old centroids
/// stay, so the next assignment can only improve: the objective stays monotone. Returns the
/// clusters re-seeded.
fn reseed_empty(
    x: &[f32],
    d: usize,
    centroids: &mut [f32],
    counts: &[u64],
    assign: &[u32],
    best: &[f32],
    rng: &mut ChaCha8Rng,
) -> u64 {
    let empty: Vec<usize> = (0..counts.len()).filter(|&j| counts[j] == 0).collect();
    if empty.is_empty() {
        return 0;
    }
    let n = assign.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| {
        let key = |i: usize| (std::cmp::Reverse(counts[assign[i] as usize]), best[i].to_bits());
        key(a).cmp(&key(b)).then(a.cmp(&b))
    });
    let mut taken = std::collections::HashSet::new();
    let mut cursor = 0;
    for &j in &empty {
        // Skip points whose cluster would itself become empty or that were taken.
        while cursor < n && (counts[assign[order[cursor]] as usize] < 2 || taken.contains(&order[cursor])) {
            cursor += 1;
        }
        let i = if cursor < n {
            order[cursor]
        } else {
            rng.random_range(0..n)
        };
        taken.insert(i);
        centroids[j * d..(j + 1) * d].copy_from_slice(&x[i * d..(i + 1) * d]);
    }
    empty.len() as u64
}

struct SavedState {
    /// Iterations done.
    iteration: u32,
    centroids: Vec<f32>,
    inertia: Vec<f64>,
    reseeded: u64,
    word_pos: u128,
}

fn save_state(st: &KmeansState, s: &SavedState, k: usize, d: usize) -> Result<(), KmeansError> {
    use safetensors::tensor::{Dtype, TensorView};
    let err = |message: String| KmeansError::State {
        path: st.path.clone(),
        message,
    };
    let c: Vec<u8> = s.centroids.iter().flat_map(|v| v.to_le_bytes()).collect();
    let i: Vec<u8> = s.inertia.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = [
        (
            "centroids",
            TensorView::new(Dtype::F32, vec![k, d], &c).map_err(|e| err(e.to_string()))?,
        ),
        (
            "inertia",
            TensorView::new(Dtype::F64, vec![s.inertia.len()], &i).map_err(|e| err(e.to_string()))?,
        ),
    ];
    let meta: std::collections::HashMap<String, String> = [
        ("key", st.key.clone()),
        ("iteration", s.iteration.to_string()),
        ("reseeded", s.reseeded.to_string()),
        ("word_pos", s.word_pos.to_string()),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b))
    .collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(e.to_string()))?;
    crate::shard::write_atomic(&st.path, &bytes).map_err(|e| err(e.to_string()))
}

/// The saved state if it is there, readable and for these points and shapes.
fn load_state(st: &KmeansState, k: usize, d: usize) -> Option<SavedState> {
    let bytes = std::fs::read(&st.path).ok()?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let meta = header.metadata().as_ref()?;
    if meta.get("key")? != &st.key {
        return None;
    }
    let tensors = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let c = tensors.tensor("centroids").ok()?;
    let i = tensors.tensor("inertia").ok()?;
    if c.shape() != [k, d] {
        return None;
    }
    Some(SavedState {
        iteration: meta.get("iteration")?.parse().ok()?,
        centroids: c
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect(),
        inertia: i
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        reseeded: meta.get("reseeded")?.parse().ok()?,
        word_pos: meta.get("word_pos")?.parse().ok()?,
    })
}

/// k-means++ seeding (D² sampling) on a subsample of at most `16 k` points.
fn plus_plus(x: &[f32], d: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = x.len() / d;
    let m = n.min(16 * k);
    let pool: Vec<usize> = if m < n {
        sample(rng, n, m).into_vec()
    } else {
        (0..n).collect()
    };
    let row = |i: usize| &x[pool[i] * d..(pool[i] + 1) * d];
    let mut centroids = Vec::with_capacity(k * d);
    let first = rng.random_range(0..m);
    centroids.extend_from_slice(row(first));
    // Squared distance of each pool point to its nearest chosen centroid (unit vectors).
    let mut dist: Vec<f32> = (0..m).into_par_iter().map(|i| dist2(row(i), row(first))).collect();
    for _ in 1..k {
        let total: f64 = dist.par_iter().map(|&v| v as f64).sum();
        let pick = if total <= 0.0 {
            rng.random_range(0..m)
        } else {
            let mut target = rng.random_range(0.0..total);
            let mut chosen = m - 1;
            for (i, &v) in dist.iter().enumerate() {
                target -= v as f64;
                if target < 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        };
        let c = row(pick).to_vec();
        dist.par_iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = v.min(dist2(row(i), &c)));
        centroids.extend_from_slice(&c);
    }
    centroids
}

/// Squared distance with 8 independent accumulators: a plain `sum()` of f32 is a serial
/// dependency chain the compiler may not vectorize, and k-means++ seeding calls this
/// `16 k * k` times.
fn dist2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(p, q)| (p - q) * (p - q))
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, Normal};

    /// `centers` well-separated unit vectors with `per` noisy points each.
    fn planted(centers: usize, per: usize, d: usize, noise: f32, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 1.0).unwrap();
        let mut c: Vec<f32> = (0..centers * d).map(|_| normal.sample(&mut rng)).collect();
        normalize_rows(&mut c, d);
        let mut x = Vec::with_capacity(centers * per * d);
        for i in 0..centers * per {
            let j = i % centers;
            x.extend((0..d).map(|t| c[j * d + t] + noise * normal.sample(&mut rng)));
        }
        normalize_rows(&mut x, d);
        (x, c)
    }

    #[test]
    fn recovers_planted_clusters_and_inertia_never_increases() {
        let d = 32;
        let (x, c) = planted(10, 200, d, 0.05, 1);
        let r = kmeans(&x, d, &KmeansConfig::new(10, 20, 7)).unwrap();
        for w in r.inertia.windows(2) {
            assert!(w[1] <= w[0] * (1.0 + 1e-9) + 1e-6, "inertia rose: {:?}", r.inertia);
        }
        // Every planted center has a centroid within a small angle.
        let (_, best) = argmax_dot(&c, &r.centroids, d);
        assert!(best.iter().all(|&b| b > 0.99), "{best:?}");
        // The objective is at least as good as the planted partition's.
        let planted_obj: f64 = x
            .chunks(d)
            .enumerate()
            .map(|(i, row)| {
                2.0 - 2.0
                    * row
                        .iter()
                        .zip(&c[(i % 10) * d..(i % 10 + 1) * d])
                        .map(|(a, b)| a * b)
                        .sum::<f32>() as f64
            })
            .sum();
        assert!(
            *r.inertia.last().unwrap() <= planted_obj * 1.001,
            "{:?} vs planted {planted_obj}",
            r.inertia
        );
    }

    #[test]
    fn deterministic_for_a_seed_and_reseeds_empty_clusters() {
        let d = 8;
        let (x, _) = planted(3, 50, d, 0.01, 2);
        let a = kmeans(&x, d, &KmeansConfig::new(6, 5, 3)).unwrap();
        let b = kmeans(&x, d, &KmeansConfig::new(6, 5, 3)).unwrap();
        assert_eq!(a.centroids, b.centroids);
        assert_eq!(a.inertia, b.inertia);
        let c = kmeans(&x, d, &KmeansConfig::new(6, 5, 4)).unwrap();
        assert_ne!(a.centroids, c.centroids);
        assert_eq!(
            kmeans(&x[..4 * d], d, &KmeansConfig::new(6, 5, 3)).unwrap_err(),
            KmeansError::TooFewPoints { n: 4, k: 6 }
        );
    }

    #[test]
    fn subsamples_to_the_per_centroid_cap() {
        let d = 4;
        let (x, _) = planted(2, 500, d, 0.1, 5);
        let mut cfg = KmeansConfig::new(2, 2, 0);
        cfg.max_points_per_centroid = 100;
        assert_eq!(kmeans(&x, d, &cfg).unwrap().points, 200);
    }

    #[test]
    fn agrees_with_linfa_on_a_small_problem() {
        use linfa::prelude::*;
        use linfa_clustering::KMeans;
        let d = 16;
        let (x, _) = planted(8, 150, d, 0.3, 11);
        let ours = kmeans(&x, d, &KmeansConfig::new(8, 30, 1)).unwrap();
        let ours_obj = *ours.inertia.last().unwrap();

        let arr = ndarray::Array2::from_shape_vec((x.len() / d, d), x.iter().map(|&v| v as f64).collect()).unwrap();
        let data = DatasetBase::from(arr.clone());
        let model = KMeans::params(8)
            .max_n_iterations(100)
            .tolerance(1e-8)
            .fit(&data)
            .unwrap();
        // linfa runs Euclidean k-means; on unit vectors with tight clusters the partitions
        // agree, so compare the objectives (sum of squared distances to unit centroids).
        let centers = model.centroids();
        let mut lin: Vec<f32> = centers.iter().map(|&v| v as f32).collect();
        normalize_rows(&mut lin, d);
        let (_, best) = argmax_dot(&x, &lin, d);
        let linfa_obj: f64 = best.iter().map(|&b| 2.0 - 2.0 * b as f64).sum();
        let rel = (ours_obj - linfa_obj).abs() / linfa_obj;
        assert!(rel < 0.01, "ours {ours_obj} linfa {linfa_obj}");
    }
}
