//! The losses: cross-entropy on visual tokens, SplitMask's symmetric InfoNCE, and the
//! soft-target cross-entropy of fine-tuning (mixup / cutmix / label smoothing).
//!
//! Every loss is computed in f32, and returned in f32, whatever the backend's float type: the
//! inputs are widened first, as `torch.autocast` runs softmax, log-softmax and the losses in
//! f32 under bf16. The widening is an autodiff cast, so the gradients reach the bf16
//! activations in bf16.

use crate::kernels::fused::log_softmax;
use burn::prelude::*;
use burn::tensor::DType;

/// `x` in f32 (a no-op where it is already).
pub fn in_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.cast(DType::F32)
}

/// Mean cross-entropy of `logits` against integer `targets`, as log-softmax + gather: the
/// vocabulary is 8192 wide, so no dense one-hot is built (burn's `CrossEntropyLoss` would).
///
/// # Shapes
/// - logits: `[n, classes]`
/// - targets: `[n]`
/// - output: `[1]`
pub fn token_cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let logp = log_softmax(in_f32(logits), 1);
    let picked = logp.gather(1, targets.reshape([n, 1])); // [n, 1]
    picked.mean().neg()
}

/// Mean over the batch of `-sum(targets * log_softmax(logits))` (timm's
/// `SoftTargetCrossEntropy`; with one-hot smoothed targets it is label-smoothing CE).
///
/// # Shapes
/// - logits, targets: `[batch, classes]`
/// - output: `[1]`
pub fn soft_cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    (log_softmax(in_f32(logits), 1) * in_f32(targets)).sum().neg() / b as f64
}

/// Symmetric InfoNCE between two views' embeddings: pair i of `a` and `b` is the positive,
/// the other images of the batch the negatives; the mean of both directions' cross-entropy.
/// Inputs are L2-normalized here.
///
/// # Shapes
/// - a, b: `[batch, dim]`
/// - output: `[1]`
pub fn info_nce<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>, temperature: f64) -> Tensor<B, 1> {
    let [n, _] = a.dims();
    let a = l2_normalize(in_f32(a));
    let b = l2_normalize(in_f32(b));
    let logits = a.matmul(b.transpose()) / temperature; // [batch, batch]
    let labels = Tensor::<B, 1, Int>::arange(0..n as i64, &logits.device());
    let ab = token_cross_entropy(logits.clone(), labels.clone());
    let ba = token_cross_entropy(logits.transpose(), labels);
    (ab + ba) / 2.0
}

/// Rows scaled to unit L2 norm (with a floor, as `F.normalize`'s eps = 1e-12).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
backend_tests! {
    #[test]
    fn soft_cross_entropy_by_hand() {
        use super::*;
        let device = Default::default();
        // logits [0, ln 3] -> p = [1/4, 3/4]; targets [0.5, 0.5] -> -(ln 1/4 + ln 3/4) / 2;
        // second row one-hot on class 0 with logits [0, 0] -> ln 2. Mean of the two.
        let logits = Tensor::<TestBackend, 2>::from_floats([[0.0, 3f32.ln()], [0.0, 0.0]], &device);
        let targets = Tensor::<TestBackend, 2>::from_floats([[0.5, 0.5], [1.0, 0.0]], &device);
        let got: f32 = soft_cross_entropy(logits, targets).into_scalar();
        let row0 = -(0.25f32.ln() + 0.75f32.ln()) / 2.0;
        let want = (row0 + 2f32.ln()) / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    use super::*;

    fn t2(v: &[f32], shape: [usize; 2]) -> Tensor<TestBackend, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }

    fn scalar(t: Tensor<TestBackend, 1>) -> f64 {
        t.into_scalar() as f64
    }

    #[test]
    fn cross_entropy_matches_hand_values() {
        // Row 0: logits (1, 2, 3), target 2: -log(e^3 / (e + e^2 + e^3)) = 0.407606.
        // Row 1: logits (0, 0, 0), target 0: log 3 = 1.098612.
        let logits = t2(&[1.0, 2.0, 3.0, 0.0, 0.0, 0.0], [2, 3]);
        let targets =
            Tensor::<TestBackend, 1, Int>::from_data(TensorData::new(vec![2i64, 0], [2]), &Default::default());
        let got = scalar(token_cross_entropy(logits, targets));
        assert!((got - (0.407606 + 1.098612) / 2.0).abs() < 1e-5, "{got}");
    }

    #[test]
    fn info_nce_matches_hand_values() {
        // a = [(1,0), (0,1)], b = [(1,0), (0.6,0.8)] (already unit), tau = 0.5.
        // Similarities s = a b^T = [[1, 0.6], [0, 0.8]], logits = s / 0.5 = [[2, 1.2], [0, 1.6]].
        // a->b: row 0 target 0: -log(e^2/(e^2+e^1.2)) = 0.371101; row 1 target 1: -log(e^1.6/(1+e^1.6)) = 0.183926.
        // b->a (columns): col 0 target 0: -log(e^2/(e^2+e^0)) = 0.126928; col 1 target 1: -log(e^1.6/(e^1.2+e^1.6)) = 0.513015.
        let a = t2(&[1.0, 0.0, 0.0, 1.0], [2, 2]);
        let b = t2(&[1.0, 0.0, 0.6, 0.8], [2, 2]);
        let got = scalar(info_nce(a, b, 0.5));
        let expect = ((0.371101 + 0.183926) / 2.0 + (0.126928 + 0.513015) / 2.0) / 2.0;
        assert!((got - expect).abs() < 1e-5, "{got} vs {expect}");
    }

    #[test]
    fn info_nce_normalizes_and_rewards_alignment() {
        // Scaling an input does not change the loss; aligned pairs beat shuffled ones.
        let a = t2(&[3.0, 0.0, 0.0, 0.5, 1.0, 1.0], [3, 2]);
        let b = t2(&[1.0, 0.1, 0.1, 1.0, 0.7, 0.7], [3, 2]);
        let base = scalar(info_nce(a.clone(), b.clone(), 0.2));
        let scaled = scalar(info_nce(a.clone() * 10.0, b.clone(), 0.2));
        assert!((base - scaled).abs() < 1e-5);
        let shuffled = t2(&[0.1, 1.0, 0.7, 0.7, 1.0, 0.1], [3, 2]);
        assert!(scalar(info_nce(a, shuffled, 0.2)) > base + 1.0);
    }
}

/// Mixed precision on LibTorch: bf16 activations in, an f32 loss out, bf16 gradients back.
#[cfg(all(test, feature = "tch"))]
mod bf16_tests {
    use super::*;
    use crate::kernels::fused::layer_norm;
    use crate::model::objective::read_scalar;
    use burn::backend::{Autodiff, LibTorch};
    use burn::tensor::{Distribution, Tolerance};

    type Half = Autodiff<LibTorch<burn::tensor::bf16>>;
    type Full = Autodiff<LibTorch<f32>>;

    /// `t` in bf16. burn keys a device's default float type by the device type, which
    /// LibTorch<f32> and LibTorch<bf16> share: in a test process the first to use the CPU
    /// device sets it for both, so these tests name their type.
    fn bf16<const D: usize>(t: Tensor<Half, D>) -> Tensor<Half, D> {
        t.cast(DType::BF16)
    }

    /// `t`'s values on the f32 backend, as a fresh leaf.
    fn widened<const D: usize>(t: &Tensor<Half, D>) -> Tensor<Full, D> {
        Tensor::from_data(t.to_data().convert::<f32>(), (&Default::default(), DType::F32)).require_grad()
    }

    /// The token loss of bf16 logits is the f32 loss of the same values, returned in f32 (not
    /// rounded to bf16's 0.03 steps near 6), and its gradient comes back in bf16, within
    /// bf16's rounding of the f32 gradient.
    #[test]
    fn the_loss_of_bf16_logits_is_computed_and_returned_in_f32() {
        let device = Default::default();
        let logits = bf16::<2>(Tensor::random([64, 512], Distribution::Normal(0.0, 3.0), &device)).require_grad();
        let targets: Vec<i64> = (0..64).map(|i| (i * 37) % 512).collect();
        let loss = token_cross_entropy(logits.clone(), Tensor::from_data(targets.as_slice(), &device));
        assert_eq!(loss.dtype(), DType::F32);
        let full = widened(&logits);
        let want = token_cross_entropy(full.clone(), Tensor::from_data(targets.as_slice(), &device));
        let (got_v, want_v) = (read_scalar(loss.clone()), read_scalar(want.clone()));
        assert!((got_v - want_v).abs() < 1e-5, "{got_v} vs {want_v}");
        let g = logits.grad(&loss.backward()).unwrap();
        assert_eq!(g.dtype(), DType::BF16);
        let want_g = full.grad(&want.backward()).unwrap();
        g.into_data()
            .convert::<f32>()
            .assert_approx_eq::<f32>(&want_g.into_data(), Tolerance::<f32>::absolute(1e-4));
    }

    /// Layer norm of bf16 activations normalizes in f32 and hands bf16 back both ways: the
    /// output is the f32 norm rounded once, so each row's mean stays within rounding of 0.
    #[test]
    fn bf16_layer_norm_normalizes_in_f32() {
        let device = Default::default();
        // A large offset, where a bf16 mean (steps of 2 at 300) would leave rows off-centre.
        let x = bf16::<2>(Tensor::random([16, 384], Distribution::Normal(0.0, 1.0), &device) + 300.0).require_grad();
        let gamma = bf16::<1>(Tensor::ones([384], &device)).require_grad();
        let beta = bf16::<1>(Tensor::zeros([384], &device));
        let y = layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-6);
        assert_eq!(y.dtype(), DType::BF16);
        let want = layer_norm(widened(&x), widened(&gamma), Some(widened(&beta)), 1e-6);
        y.to_data()
            .convert::<f32>()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::<f32>::absolute(0.02));
        let weights = bf16::<2>(Tensor::random([16, 384], Distribution::Normal(0.0, 1.0), &device));
        let grads = (y * weights).sum().backward();
        assert_eq!(x.grad(&grads).unwrap().dtype(), DType::BF16);
        assert_eq!(gamma.grad(&grads).unwrap().dtype(), DType::BF16);
    }
}
