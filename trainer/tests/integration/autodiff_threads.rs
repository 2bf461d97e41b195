//! Several threads differentiating at once, as `--devices cpu:N` and every multi-device run do.
//!
//! burn-autodiff 0.21's `backward()` ended by sweeping the graphs of *every* thread and freeing
//! the steps it judged unused. An operation that consumes its inputs (`cat` above all) holds a
//! parent's node without its reference count while it computes, so another thread's sweep could
//! free the parent's step in that window: the gradient of everything before it was then missing
//! from `Gradients`, with no error (burn #5573; seen here as a flaky
//! `a_global_batch_split_across_ranks...`). `third_party/burn-autodiff` confines each sweep to
//! the calling thread's graphs; this test fails without it.

use burn::tensor::{Distribution, Tensor};
use trainer::CpuAutodiff;

type B = CpuAutodiff;

/// Rows of each concatenated block: a bigger copy widens the window the race needs.
const ROWS: usize = 512;
const ROUNDS: usize = 150;
const VICTIMS: usize = 3;
const SWEEPERS: usize = 3;

/// One thread's training-like loop: a leaf used once per round, as a parameter is after its
/// first update (its graph entry gone, so each round's first op starts a one-node graph).
/// Returns the rounds whose gradient was missing.
fn victim(seed: u64) -> usize {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    let weight = Tensor::<B, 2>::random([64, 64], Distribution::Normal(0.0, 0.5), &device).require_grad();
    let x = Tensor::<B, 2>::random([ROWS, 64], Distribution::Default, &device);
    // A first backward consumes the leaf's own step, as the first training step does.
    let _ = weight.clone().sum().backward();
    (0..ROUNDS)
        .filter(|_| {
            let h = x.clone().matmul(weight.clone()); // [rows, 64], a one-node graph
            let joined = Tensor::cat(vec![h, x.clone()], 0); // [2 rows, 64]
            let grads = joined.sum().backward();
            weight.grad(&grads).is_none()
        })
        .count()
}

/// Backward passes in a loop: each one ends with burn's sweep of the process's graphs.
fn sweeper(stop: &std::sync::atomic::AtomicBool) {
    let device = Default::default();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let leaf = Tensor::<B, 1>::ones([4], &device).require_grad();
        let _ = (leaf * 2.0).sum().backward();
    }
}

#[test]
fn concurrent_backward_passes_keep_every_threads_gradients() {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let missing: usize = std::thread::scope(|s| {
        let sweepers: Vec<_> = (0..SWEEPERS).map(|_| s.spawn(|| sweeper(&stop))).collect();
        let victims: Vec<_> = (0..VICTIMS as u64).map(|i| s.spawn(move || victim(i))).collect();
        let missing = victims.into_iter().map(|v| v.join().unwrap()).sum();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sweepers.into_iter().for_each(|t| t.join().unwrap());
        missing
    });
    assert_eq!(
        missing,
        0,
        "{missing} of {} rounds lost the leaf's gradient to another thread's backward",
        VICTIMS * ROUNDS
    );
}
