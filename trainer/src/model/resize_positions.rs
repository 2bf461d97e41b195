//! Position embeddings of one grid resized to another (DINO's `interpolate_pos_encoding`: its
//! local crops are smaller than the grid the embeddings were learned on). PyTorch's bicubic
//! interpolation (`align_corners=False`, a = -0.75, borders clamped) written as a fixed
//! `[to², from²]` matrix: one matmul, so the gradient reaches the learned embeddings on every
//! backend without an interpolation kernel.

use burn::prelude::*;

/// PyTorch's cubic convolution coefficient.
const A: f64 = -0.75;

fn cubic(x: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// The `[to, from]` matrix of 1-D bicubic resampling from `from` samples to `to`, row-major:
/// output `i` reads source `(i + 0.5) * from / to - 0.5` from its four neighbours, indices
/// clamped to the border (as `upsample_bicubic2d`).
pub fn bicubic_matrix(from: usize, to: usize) -> Vec<f64> {
    let mut m = vec![0.0; to * from];
    let scale = from as f64 / to as f64;
    for i in 0..to {
        let src = (i as f64 + 0.5) * scale - 0.5;
        let x0 = src.floor();
        let t = src - x0;
        for k in -1..=2i64 {
            let j = (x0 as i64 + k).clamp(0, from as i64 - 1) as usize;
            m[i * from + j] += cubic(k as f64 - t);
        }
    }
    m
}

/// Grid position embeddings resized from a `from` x `from` grid to `to` x `to` (row-major
/// grids); the identity when the sizes agree.
///
/// # Shapes
/// - pos: `[from², dim]`
/// - output: `[to², dim]`
pub fn resize_grid<B: Backend>(pos: Tensor<B, 2>, from: usize, to: usize) -> Tensor<B, 2> {
    if from == to {
        return pos;
    }
    let m = bicubic_matrix(from, to);
    // The 2-D kernel is separable: row (y, x) of the output weighs source (sy, sx) by
    // m[y][sy] * m[x][sx].
    let mut w = Vec::with_capacity(to * to * from * from);
    for y in 0..to {
        for x in 0..to {
            for sy in 0..from {
                w.extend((0..from).map(|sx| (m[y * from + sy] * m[x * from + sx]) as f32));
            }
        }
    }
    let w = Tensor::<B, 2>::from_data(TensorData::new(w, [to * to, from * from]), &pos.device());
    w.matmul(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_the_same_size_is_the_identity() {
        for (from, to) in [(14, 6), (8, 3), (4, 9), (5, 5)] {
            let m = bicubic_matrix(from, to);
            for i in 0..to {
                let s: f64 = m[i * from..(i + 1) * from].iter().sum();
                assert!((s - 1.0).abs() < 1e-12, "{from}->{to} row {i}: {s}");
            }
        }
        let m = bicubic_matrix(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                assert!((m[i * 5 + j] - f64::from(u8::from(i == j))).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn matches_torch_interpolate_down_and_up() {
        // torch.nn.functional.interpolate(x, size, mode='bicubic', align_corners=False) on
        // torch 2.9: a row of 0..4 to 2; (0..64)^1.5 / 10 on an 8x8 grid to 3x3; (0..9)^2 on a
        // 3x3 grid to 5x5 (a few of its values).
        let m = bicubic_matrix(4, 2);
        let row: Vec<f64> = (0..2).map(|i| (0..4).map(|j| m[i * 4 + j] * j as f64).sum()).collect();
        assert!(
            (row[0] - 0.40625).abs() < 1e-9 && (row[1] - 2.59375).abs() < 1e-9,
            "{row:?}"
        );
        type B = crate::backend::CpuBackend;
        let device = Default::default();
        let grid = |values: Vec<f32>, n: usize| Tensor::<B, 2>::from_data(TensorData::new(values, [n, 1]), &device);
        let got = |t: Tensor<B, 2>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
        let down = got(resize_grid(
            grid((0..64).map(|i| (i as f32).powf(1.5) / 10.0).collect(), 64),
            8,
            3,
        ));
        let torch_down = [
            1.86372, 3.02357, 4.37703, 15.3734, 17.6235, 19.9745, 36.0060, 38.9580, 41.9879,
        ];
        let up = got(resize_grid(grid((0..9).map(|i| (i * i) as f32).collect(), 9), 3, 5));
        let torch_up = [(0, -0.904704), (3, 1.0740178), (12, 16.0), (17, 37.276), (24, 69.23934)];
        for (a, b) in down.iter().zip(torch_down) {
            assert!((a - b).abs() < 2e-4, "{down:?}");
        }
        for (i, b) in torch_up {
            assert!((up[i] - b).abs() < 1e-4, "{i}: {up:?}");
        }
    }
}
