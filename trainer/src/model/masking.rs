//! Masks over the patch grid: BEiT's block-wise masking, SplitMask's exact 50% split and
//! uniform random masking (the paper's choice for small datasets).
//!
//! Masks are drawn on the host from a seeded RNG, so a step's masks depend only on
//! (seed, step) and a resumed run draws the same masks as an uninterrupted one.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How masked positions are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MaskSpec {
    /// Rectangular blocks of `min_block..=max_block` patches with aspect ratio in
    /// `[min_aspect, 1 / min_aspect]`, as BEiT's `MaskingGenerator`.
    Block {
        min_block: usize,
        max_block: usize,
        min_aspect: f64,
    },
    /// Every patch equally likely (the paper's 75% setting for small datasets).
    Uniform,
}

impl MaskSpec {
    /// The BEiT / SplitMask defaults for a 14x14 grid: blocks of 16..75 patches, aspect 0.3..3.3.
    pub fn paper_block() -> Self {
        MaskSpec::Block {
            min_block: 16,
            max_block: 75,
            min_aspect: 0.3,
        }
    }

    /// Block limits scaled to a grid of `n` patches, so the CPU presets (8x8 grids) keep the
    /// same share of the image per block as 16..75 of 196.
    pub fn block_for_grid(n: usize) -> Self {
        let scale = n as f64 / 196.0;
        MaskSpec::Block {
            min_block: ((16.0 * scale).round() as usize).max(1),
            max_block: ((75.0 * scale).round() as usize).max(2),
            min_aspect: 0.3,
        }
    }
}

/// A boolean mask over a `height x width` grid, row-major; `true` = masked.
pub type Mask = Vec<bool>;

/// Draws exactly `count` masked positions on a `height x width` grid.
///
/// Block masking follows BEiT's generator (ten tries per block, a block may overlap earlier
/// ones, and it must add at least one new patch without overshooting `count`); when less than
/// a minimum block is left, it tries blocks of an area between the remainder and the minimum,
/// as BEiT's `random.uniform(min, remainder)` does. BEiT's generator stops short when no block
/// fits; here the remainder is then topped up with single random patches so every mask has
/// exactly `count` positions, which SplitMask needs (both halves must have the same length to
/// be batched) and which keeps BEiT's loss normalised by a fixed count.
pub fn draw_mask<R: Rng>(rng: &mut R, height: usize, width: usize, count: usize, spec: MaskSpec) -> Mask {
    let n = height * width;
    assert!(count <= n, "cannot mask {count} of {n} patches");
    let mut mask = vec![false; n];
    let mut masked = 0;
    if let MaskSpec::Block {
        min_block,
        max_block,
        min_aspect,
    } = spec
    {
        let log_aspect = (min_aspect.ln(), (1.0 / min_aspect).ln());
        while masked < count {
            let room = (count - masked).min(max_block);
            let added = add_block(rng, &mut mask, height, width, min_block, room, log_aspect);
            if added == 0 {
                break;
            }
            masked += added;
        }
    }
    // Top-up (or, for uniform masking, the whole mask): random unmasked positions.
    if masked < count {
        let mut free: Vec<usize> = (0..n).filter(|&i| !mask[i]).collect();
        for k in 0..count - masked {
            let j = rng.random_range(k..free.len());
            free.swap(k, j);
            mask[free[k]] = true;
        }
    }
    mask
}

fn add_block<R: Rng>(
    rng: &mut R,
    mask: &mut [bool],
    height: usize,
    width: usize,
    min_block: usize,
    room: usize,
    log_aspect: (f64, f64),
) -> usize {
    // Python's uniform(a, b) with a > b draws from [b, a]: near the end, blocks smaller than
    // the minimum still get their chance before single patches fill the rest.
    let (lo, hi) = if room < min_block {
        (room, min_block)
    } else {
        (min_block, room)
    };
    for _ in 0..10 {
        let area = rng.random_range(lo as f64..=hi as f64);
        let aspect = rng.random_range(log_aspect.0..=log_aspect.1).exp();
        let h = (area * aspect).sqrt().round() as usize;
        let w = (area / aspect).sqrt().round() as usize;
        if h == 0 || w == 0 || h >= height || w >= width {
            continue;
        }
        let top = rng.random_range(0..=height - h);
        let left = rng.random_range(0..=width - w);
        let already = (top..top + h)
            .flat_map(|y| (left..left + w).map(move |x| y * width + x))
            .filter(|&i| mask[i])
            .count();
        let new = h * w - already;
        if new > 0 && new <= room {
            for y in top..top + h {
                for x in left..left + w {
                    mask[y * width + x] = true;
                }
            }
            return new;
        }
    }
    0
}

/// SplitMask's two branches on a `height x width` grid: the sorted patch indices each branch's
/// encoder sees, `visible` per branch and disjoint. With `visible` = n/2, half A is a mask of
/// n/2 patches (blocks or uniform, per `spec`) and half B its complement: the paper's default.
/// With fewer, A and B are two disjoint uniform draws of `visible` patches (the "uniform masking
/// of 75%" of the paper's smallest datasets at n/4), and each branch predicts everything it did
/// not see.
pub fn draw_split<R: Rng>(
    rng: &mut R,
    height: usize,
    width: usize,
    visible: usize,
    spec: MaskSpec,
) -> (Vec<usize>, Vec<usize>) {
    let n = height * width;
    assert!(
        visible > 0 && 2 * visible <= n,
        "SplitMask branches of {visible} of {n} patches"
    );
    if 2 * visible == n {
        let mask = draw_mask(rng, height, width, visible, spec);
        let a = (0..n).filter(|&i| mask[i]).collect();
        let b = (0..n).filter(|&i| !mask[i]).collect();
        return (a, b);
    }
    assert!(
        spec == MaskSpec::Uniform,
        "branches of less than half the grid are drawn uniformly"
    );
    let mut order: Vec<usize> = (0..n).collect();
    for k in 0..2 * visible {
        let j = rng.random_range(k..n);
        order.swap(k, j);
    }
    let mut a = order[..visible].to_vec();
    let mut b = order[visible..2 * visible].to_vec();
    a.sort_unstable();
    b.sort_unstable();
    (a, b)
}

/// The sorted positions of `0..n` not in `seen`.
pub fn complement(seen: &[usize], n: usize) -> Vec<usize> {
    let mut hidden = vec![true; n];
    seen.iter().for_each(|&i| hidden[i] = false);
    (0..n).filter(|&i| hidden[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Connected components (4-neighbour) of the masked positions, with their bounding boxes.
    fn components(mask: &[bool], h: usize, w: usize) -> Vec<(usize, usize, usize)> {
        let mut seen = vec![false; mask.len()];
        let mut out = Vec::new();
        for s in 0..mask.len() {
            if !mask[s] || seen[s] {
                continue;
            }
            let (mut stack, mut size) = (vec![s], 0);
            let (mut y0, mut y1, mut x0, mut x1) = (h, 0, w, 0);
            seen[s] = true;
            while let Some(i) = stack.pop() {
                size += 1;
                let (y, x) = (i / w, i % w);
                (y0, y1, x0, x1) = (y0.min(y), y1.max(y), x0.min(x), x1.max(x));
                let mut push = |j: usize| {
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                };
                if y > 0 {
                    push(i - w)
                }
                if y + 1 < h {
                    push(i + w)
                }
                if x > 0 {
                    push(i - 1)
                }
                if x + 1 < w {
                    push(i + 1)
                }
            }
            out.push((size, y1 - y0 + 1, x1 - x0 + 1));
        }
        out
    }

    #[test]
    fn block_masks_have_exact_counts() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for count in [1, 16, 75, 98, 150, 196] {
            for _ in 0..50 {
                let m = draw_mask(&mut rng, 14, 14, count, MaskSpec::paper_block());
                assert_eq!(m.iter().filter(|&&b| b).count(), count);
            }
        }
    }

    #[test]
    fn block_masks_are_blocky() {
        // Random masking of 75 patches gives ~30 components; block masking gives a few blobs.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (mut block_parts, mut uniform_parts) = (0, 0);
        for _ in 0..100 {
            let m = draw_mask(&mut rng, 14, 14, 75, MaskSpec::paper_block());
            block_parts += components(&m, 14, 14).len();
            let u = draw_mask(&mut rng, 14, 14, 75, MaskSpec::Uniform);
            uniform_parts += components(&u, 14, 14).len();
        }
        assert!(block_parts * 4 < uniform_parts, "{block_parts} vs {uniform_parts}");
    }

    #[test]
    fn single_block_respects_area_and_aspect_limits() {
        // With room for exactly one block, the mask is one rectangle within the limits
        // (the rounding of h and w lets the area drift a little, as in BEiT).
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut blocks = 0;
        for _ in 0..500 {
            let mut m = vec![false; 196];
            let added = add_block(&mut rng, &mut m, 14, 14, 16, 75, (0.3f64.ln(), (1.0 / 0.3f64).ln()));
            if added == 0 {
                continue;
            }
            blocks += 1;
            let c = components(&m, 14, 14);
            assert_eq!(c.len(), 1);
            let (size, h, w) = c[0];
            assert_eq!(size, h * w, "a single block is a full rectangle");
            assert!((9..=75).contains(&size), "area {size}");
            let aspect = h as f64 / w as f64;
            assert!((0.2..=5.0).contains(&aspect), "aspect {h}x{w}");
        }
        assert!(blocks > 400, "most tries place a block: {blocks}");
    }

    #[test]
    fn split_halves_are_disjoint_equal_and_cover_the_grid() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (h, w) in [(14, 14), (8, 8), (4, 6)] {
            let spec = MaskSpec::block_for_grid(h * w);
            for _ in 0..100 {
                let (a, b) = draw_split(&mut rng, h, w, h * w / 2, spec);
                assert_eq!(a.len(), h * w / 2);
                assert_eq!(b.len(), h * w / 2);
                let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
                all.sort();
                assert_eq!(all, (0..h * w).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn quarter_branches_are_disjoint_uniform_and_of_exact_size() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut hits = [0usize; 64];
        for _ in 0..2000 {
            let (a, b) = draw_split(&mut rng, 8, 8, 16, MaskSpec::Uniform);
            assert_eq!((a.len(), b.len()), (16, 16));
            assert!(a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]));
            assert!(a.iter().all(|i| !b.contains(i)), "disjoint");
            let hidden = complement(&a, 64);
            assert_eq!(hidden.len(), 48, "each branch predicts the 3/4 it did not see");
            assert!(b.iter().all(|i| hidden.contains(i)));
            for &i in &a {
                hits[i] += 1;
            }
        }
        // Each position is in A a quarter of the time (500 expected, sd ~19).
        assert!(hits.iter().all(|&h| (420..580).contains(&h)), "{hits:?}");
    }

    #[test]
    fn block_masks_top_up_with_small_blocks_first() {
        // With 5 patches left and a 16-patch minimum, BEiT's generator still places small blocks:
        // some tries add several patches at once, never more than the room.
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let log_aspect = (0.3f64.ln(), (1.0 / 0.3f64).ln());
        let mut several = 0;
        for _ in 0..200 {
            let mut m = vec![false; 196];
            m[..91].iter_mut().for_each(|v| *v = true);
            let added = add_block(&mut rng, &mut m, 14, 14, 16, 5, log_aspect);
            assert!(added <= 5, "{added}");
            several += (added > 1) as usize;
        }
        assert!(several > 20, "small blocks are placed: {several} of 200");
    }

    #[test]
    fn masks_are_deterministic_by_seed() {
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..10)
                .map(|_| draw_split(&mut rng, 14, 14, 98, MaskSpec::paper_block()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn uniform_masks_cover_positions_evenly() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut hits = [0usize; 64];
        for _ in 0..4000 {
            for (i, m) in draw_mask(&mut rng, 8, 8, 48, MaskSpec::Uniform).iter().enumerate() {
                hits[i] += *m as usize;
            }
        }
        // Expected 3000 per position (75%); binomial sd ~27.
        assert!(hits.iter().all(|&h| (2850..3150).contains(&h)), "{hits:?}");
    }
}
