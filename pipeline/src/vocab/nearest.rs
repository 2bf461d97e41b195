//! Nearest entry by dot product: the one hot loop shared by tokenization and k-means.
//!
//! Scores for a block of rows are one GEMM (`X_block · Eᵀ`, via the `gemm` crate's
//! AVX2/AVX-512 kernels), then an argmax per row. Blocks bound the score buffer
//! (`BLOCK` x V floats) whatever the number of rows.

use rayon::prelude::*;

/// Rows scored per GEMM call: 512 x 8192 floats = 16 MB of scores.
const BLOCK: usize = 512;

/// For each row of `x` ([n, d] row-major), the index of the row of `e` ([k, d]) with the
/// largest dot product, and that product. Ties keep the lowest index, so a zero row maps to 0.
pub fn argmax_dot(x: &[f32], e: &[f32], d: usize) -> (Vec<u32>, Vec<f32>) {
    assert!(
        d > 0 && x.len().is_multiple_of(d) && e.len().is_multiple_of(d),
        "shapes: x {} e {} d {d}",
        x.len(),
        e.len()
    );
    let n = x.len() / d;
    let k = e.len() / d;
    assert!(k > 0 && k <= u32::MAX as usize);
    let mut idx = vec![0u32; n];
    let mut best = vec![0f32; n];
    // Parallel over blocks, each GEMM single-threaded: no nested pools, and every core keeps
    // its own score block hot in cache.
    idx.par_chunks_mut(BLOCK)
        .zip(best.par_chunks_mut(BLOCK))
        .enumerate()
        .for_each_init(
            || vec![0f32; BLOCK * k],
            |scores, (b, (idx, best))| {
                let rows = idx.len();
                let xb = &x[b * BLOCK * d..(b * BLOCK + rows) * d];
                scores_block(xb, e, d, &mut scores[..rows * k]);
                for r in 0..rows {
                    let s = &scores[r * k..(r + 1) * k];
                    let (mut bi, mut bv) = (0usize, s[0]);
                    for (j, &v) in s.iter().enumerate().skip(1) {
                        if v > bv {
                            bv = v;
                            bi = j;
                        }
                    }
                    idx[r] = bi as u32;
                    best[r] = bv;
                }
            },
        );
    (idx, best)
}

/// `out[r, j] = x[r] · e[j]` for a block of rows.
fn scores_block(x: &[f32], e: &[f32], d: usize, out: &mut [f32]) {
    let m = x.len() / d;
    let k = e.len() / d;
    debug_assert_eq!(out.len(), m * k);
    // SAFETY: the pointers cover m*d, k*d and m*k elements with the strides given: lhs is
    // [m, d] row-major, rhs is eᵀ read through e's [k, d] row-major storage, dst is [m, k].
    unsafe {
        gemm::gemm(
            m,
            k,
            d,
            out.as_mut_ptr(),
            1,
            k as isize,
            false,
            x.as_ptr(),
            1,
            d as isize,
            e.as_ptr(),
            d as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_a_naive_loop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (n, k, d) = (1300, 37, 12);
        let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let e: Vec<f32> = (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (idx, best) = argmax_dot(&x, &e, d);
        for r in 0..n {
            let dots: Vec<f32> = (0..k)
                .map(|j| (0..d).map(|t| x[r * d + t] * e[j * d + t]).sum())
                .collect();
            let (bj, bv) = dots
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |a, (j, &v)| if v > a.1 { (j, v) } else { a });
            assert!((best[r] - bv).abs() < 1e-4);
            assert!(idx[r] as usize == bj || (dots[idx[r] as usize] - bv).abs() < 1e-5);
        }
    }

    #[test]
    fn zero_rows_take_the_first_entry() {
        let e = vec![0.0, 1.0, 1.0, 0.0];
        let (idx, best) = argmax_dot(&[0.0, 0.0], &e, 2);
        assert_eq!((idx[0], best[0]), (0, 0.0));
    }
}
