//! Attention, layer norm and log-softmax as one kernel each way when training on LibTorch.
//!
//! Under autodiff, burn 0.21 writes these three as compositions of small ops: attention as a
//! matmul, a seven-pass NaN-safe softmax and another matmul; layer norm as mean, subtract,
//! square, mean, add, sqrt, divide, scale and shift; log-softmax as max, subtract, exp, sum,
//! log and subtract. Each op is recorded and differentiated on its own, so a step makes dozens
//! of passes over `[batch, tokens, dim]` activations (and over the `[tokens, vocab]` logits)
//! where PyTorch makes one (`scaled_dot_product_attention`, `native_layer_norm`,
//! `_log_softmax`, and their backward kernels), on the CPU and on CUDA alike. For
//! `Autodiff<LibTorch<f32 | bf16>>` each function here records a single autodiff node whose
//! forward and backward are those ATen kernels; every other backend runs burn's own op, so
//! flex and CubeCL compute what they computed before.
//!
//! Mixed precision as `torch.autocast` does it: under bf16, layer norm widens to f32 here,
//! log-softmax is only called on f32 inputs (the losses widen, see `model::losses`), and
//! attention's softmax runs inside ATen's kernels with f32 accumulators.
//!
//! Tried and left out, measured in the same interleaved runs (cpu-small SplitMask, 6 pairs):
//! linear layers as one `addmm` node reading a transposed weight copy (as `nn.Linear` does),
//! and the materialised softmax instead of flash attention for sequences of up to 128 tokens
//! (faster alone in PyTorch for 33 tokens). The step was 1-2% slower with either.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, TensorPrimitive};

/// Multi-head self-attention on a fused qkv projection: `softmax(q kᵀ / sqrt(head_dim)) v`
/// per batch and head, the heads' outputs side by side.
///
/// On LibTorch (CPU or CUDA) this is one autodiff node: q, k and v are views into `qkv`, and the
/// backward writes their three gradients into one `qkv`-shaped tensor. Split into q, k and v
/// by burn's ops instead, each part's backward zero-fills a whole `qkv`-sized gradient, copies
/// its part in, and the three are added up: 3% of a BEiT step at cpu-tiny in fills alone.
///
/// # Shapes
/// - qkv: `[batch, tokens, 3 * dim]`, q, k, v in that order, each `[heads, head_dim]` inside
/// - output: `[batch, tokens, dim]`
pub fn multi_head_attention<B: Backend>(qkv: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    #[cfg(feature = "tch")]
    let qkv = match crate::kernels::libtorch::try_run::<B, libtorch::Attention>((qkv.into_primitive().tensor(), heads))
    {
        Ok(out) => return float(out),
        Err((qkv, _)) => float(qkv),
    };
    attention_by_parts(qkv, heads)
}

/// [`multi_head_attention`] with burn's ops.
fn attention_by_parts<B: Backend>(qkv: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    let [b, l, d3] = qkv.dims();
    let (h, d) = (heads, d3 / 3);
    let parts = qkv.reshape([b, l, 3, h, d / h]).permute([2, 0, 3, 1, 4]); // [3, batch, heads, tokens, head_dim]
    let mut parts = parts.chunk(3, 0).into_iter().map(|t| t.squeeze_dim::<4>(0));
    let (q, k, v) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let dtype = q.dtype();
    let out = if matches!(dtype, DType::BF16 | DType::F16) {
        // As autocast runs it: the two matmuls in the narrow type, the softmax in f32. burn's
        // autodiff attention (`attention_fallback`) decomposes in the input's type, so CubeCL
        // training in bf16 would otherwise take the softmax of scores with 8 mantissa bits.
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / ((d / h) as f64).sqrt()); // [batch, heads, tokens, tokens]
        softmax(scores.cast(DType::F32), 3).cast(dtype).matmul(v)
    } else {
        attention(q, k, v, None, None, AttentionModuleOptions::default())
    };
    out.swap_dims(1, 2).reshape([b, l, d]) // [batch, tokens, dim]
}

/// Layer norm over the last dimension: `(x - mean) / sqrt(var + eps) * gamma + beta`, in f32
/// for bf16 and f16 inputs.
///
/// # Shapes
/// - x: `[..., dim]`
/// - gamma, beta: `[dim]`
/// - output: `[..., dim]`
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    if matches!(dtype, DType::BF16 | DType::F16) {
        // Statistics and normalization in f32, as autocast runs layer norm; the output back in
        // the input's type for the matmul that follows. Casts are autodiff ops, so the
        // gradients come back in the input's type too.
        let beta = beta.map(|b| b.cast(DType::F32));
        return layer_norm(x.cast(DType::F32), gamma.cast(DType::F32), beta, eps).cast(dtype);
    }
    let (x, gamma, beta) = (
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.map(|b| b.into_primitive().tensor()),
    );
    #[cfg(feature = "tch")]
    let (x, gamma, beta) = match crate::kernels::libtorch::try_run::<B, libtorch::LayerNorm>((x, gamma, beta, eps)) {
        Ok(out) => return float(out),
        Err((x, gamma, beta, _)) => (x, gamma, beta),
    };
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(x, gamma, beta, eps)))
}

/// The index of each row's largest value, the first one on ties (a flat tokenizer patch, all
/// of whose scores are 0, is token 0, as in the pipeline's tokenizer). On LibTorch this is
/// `max(dim=1)`'s index output, whose kernel is vectorized where `argmax`'s is not (3x faster
/// on a `[4096, 1024]` score matrix); other backends run burn's `argmax`.
///
/// # Shapes
/// - x: `[rows, columns]`
/// - output: `[rows]`
pub fn argmax_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 1, Int> {
    let [rows, _] = x.dims();
    #[cfg(feature = "tch")]
    let x: Tensor<B, 2> =
        match crate::kernels::libtorch::try_run::<B, libtorch::ArgmaxRows>(x.into_primitive().tensor()) {
            Ok(out) => return Tensor::<B, 2, Int>::from_primitive(out).reshape([rows]),
            Err(x) => float(x),
        };
    x.argmax(1).reshape([rows])
}

/// `x - log(sum(exp(x)))` along `dim`.
///
/// # Shapes
/// - x, output: any, the same
pub fn log_softmax<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    #[cfg(feature = "tch")]
    let x = match crate::kernels::libtorch::try_run::<B, libtorch::LogSoftmax>((x.into_primitive().tensor(), dim)) {
        Ok(out) => return float(out),
        Err((x, _)) => float(x),
    };
    burn::tensor::activation::log_softmax(x, dim)
}

#[cfg(feature = "tch")]
fn float<B: Backend, const D: usize>(t: burn::tensor::ops::FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::libtorch::{LibTorch, TchElement, TchTensor};
    use burn::prelude::Backend;
    use burn::tensor::ops::FloatTensor;

    use crate::kernels::libtorch::{attention_backward, attention_forward, layer_norm_backward, Ad, Kernel, Ran};

    type Float<B> = FloatTensor<B>;

    /// Records `$out` as one node of the autodiff graph with parents `$parents`, whose
    /// backward is `$backward` reading `$state`; untracked where no parent needs a gradient.
    /// (A macro: burn does not export the node type a function would have to name.)
    macro_rules! record {
        ($backward:expr, $parents:expr, $state:expr, $out:expr) => {
            match $backward
                .prepare::<NoCheckpointing>($parents)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish($state, $out),
                OpsKind::UnTracked(prep) => prep.finish($out),
            }
        };
    }

    /// Registers each computed gradient with its parent, where the parent wants one.
    macro_rules! register {
        ($E:ty, $grads:expr, $parents:expr, $computed:expr) => {
            for (parent, g) in $parents.into_iter().zip($computed) {
                if let (Some(node), Some(g)) = (parent, g) {
                    $grads.register::<LibTorch<$E>>(node.id, TchTensor::new(g));
                }
            }
        };
    }

    /// ATen's `scaled_dot_product_attention` forward and backward on q, k and v as views of the
    /// packed projection, on any LibTorch device: ATen picks the kernel PyTorch would (flash on
    /// the CPU; flash or memory-efficient on CUDA) and records its backward, which
    /// [`attention_backward`] runs.
    pub(super) struct Attention;

    impl Kernel for Attention {
        type On<E: TchElement> = Ad<E>;
        type Args<B: Backend> = (Float<B>, usize);
        type Out<B: Backend> = Float<B>;

        fn run<E: TchElement>((qkv, heads): Self::Args<Ad<E>>) -> Ran<Self, Ad<E>> {
            let t = &qkv.primitive.tensor;
            let [b, l, d3] = t.size()[..] else {
                unreachable!("a rank-3 burn tensor has three dimensions")
            };
            // The kernel writes the output as `[batch, tokens, heads, head_dim]` in memory, so
            // the merge is a view; it shares the output's storage record, which keeps burn from
            // overwriting it in place while the backward still needs it.
            let merge = |out: &TchTensor| {
                let merged = out.tensor.detach().transpose(1, 2).reshape([b, l, d3 / 3]); // [batch, tokens, dim]
                TchTensor::from_existing(merged, out.storage.clone())
            };
            let prep = AttentionBackward
                .prepare::<NoCheckpointing>([qkv.node.clone()])
                .compute_bound()
                .stateful();
            Ok(match prep {
                OpsKind::Tracked(prep) => {
                    let (out, leaves) = attention_forward(t, heads as i64, true);
                    let out = TchTensor::new(out);
                    let merged = merge(&out);
                    let [q, k, v] = leaves
                        .expect("a tracked forward returns its leaves")
                        .map(TchTensor::new);
                    let state = AttentionState {
                        _qkv: qkv.primitive,
                        out,
                        leaves: [q, k, v],
                    };
                    prep.finish(state, merged)
                }
                OpsKind::UnTracked(prep) => {
                    let (out, _) = attention_forward(t, heads as i64, false);
                    prep.finish(merge(&TchTensor::new(out)))
                }
            })
        }
    }

    /// The tracked output (its ATen backward node holds what the kernel saved) and the q, k, v
    /// leaves; the packed input is held only so that burn does not write over it in place.
    #[derive(Debug, Clone)]
    struct AttentionState {
        _qkv: TchTensor,
        out: TchTensor,
        leaves: [TchTensor; 3],
    }

    #[derive(Debug)]
    struct AttentionBackward;

    impl<E: TchElement> Backward<LibTorch<E>, 1> for AttentionBackward {
        type State = AttentionState;

        fn backward(self, ops: Ops<AttentionState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<LibTorch<E>>(&ops.node);
            let s = ops.state;
            let [b, h, l, dh] = s.out.tensor.size()[..] else {
                unreachable!("attention output has four dimensions")
            };
            let grad_out = grad.tensor.reshape([b, l, h, dh]).transpose(1, 2); // [batch, heads, tokens, head_dim]
            let leaves = s.leaves.map(|t| t.tensor);
            let [dq, dk, dv] = attention_backward(&s.out.tensor, &grad_out, &leaves);
            // One copy into the projection's layout: [batch, tokens, 3, heads, head_dim].
            let parts = [dq, dk, dv].map(|g| g.transpose(1, 2));
            let dqkv = tch::Tensor::stack(&parts, 2).reshape([b, l, 3 * h * dh]);
            register!(E, grads, ops.parents, [Some(dqkv)]);
        }
    }

    /// ATen's `native_layer_norm` and its backward kernel. Without a shift (no `beta`) burn's
    /// op runs: every norm of the models has one.
    pub(super) struct LayerNorm;

    impl Kernel for LayerNorm {
        type On<E: TchElement> = Ad<E>;
        type Args<B: Backend> = (Float<B>, Float<B>, Option<Float<B>>, f64);
        type Out<B: Backend> = Float<B>;

        fn run<E: TchElement>((x, gamma, beta, eps): Self::Args<Ad<E>>) -> Ran<Self, Ad<E>> {
            let Some(beta) = beta else {
                return Err((x, gamma, None, eps));
            };
            let last = *x
                .primitive
                .tensor
                .size()
                .last()
                .expect("layer norm of a tensor with dimensions");
            let (out, mean, rstd) = x.primitive.tensor.native_layer_norm(
                [last],
                Some(&gamma.primitive.tensor),
                Some(&beta.primitive.tensor),
                eps,
            );
            let out = TchTensor::new(out);
            let state = LayerNormState {
                x: x.primitive,
                mean: TchTensor::new(mean),
                rstd: TchTensor::new(rstd),
                gamma: gamma.primitive,
                beta: beta.primitive,
            };
            Ok(record!(LayerNormBackward, [x.node, gamma.node, beta.node], state, out))
        }
    }

    /// The input, the rows' mean and inverse standard deviation, and the affine parameters.
    #[derive(Debug, Clone)]
    struct LayerNormState {
        x: TchTensor,
        mean: TchTensor,
        rstd: TchTensor,
        gamma: TchTensor,
        beta: TchTensor,
    }

    #[derive(Debug)]
    struct LayerNormBackward;

    impl<E: TchElement> Backward<LibTorch<E>, 3> for LayerNormBackward {
        type State = LayerNormState;

        fn backward(self, ops: Ops<LayerNormState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<LibTorch<E>>(&ops.node);
            let s = ops.state;
            let mask = ops.parents.each_ref().map(Option::is_some);
            let computed = layer_norm_backward(
                &grad.tensor,
                &s.x.tensor,
                &s.mean.tensor,
                &s.rstd.tensor,
                Some(&s.gamma.tensor),
                Some(&s.beta.tensor),
                mask,
            );
            register!(E, grads, ops.parents, computed);
        }
    }

    /// `max(dim=1)` of a matrix without autodiff (an index has no gradient), its indices kept.
    pub(super) struct ArgmaxRows;

    impl Kernel for ArgmaxRows {
        type On<E: TchElement> = Ad<E>;
        type Args<B: Backend> = Float<B>;
        type Out<B: Backend> = burn::tensor::ops::IntTensor<B>;

        fn run<E: TchElement>(x: Float<Ad<E>>) -> Ran<Self, Ad<E>> {
            let (_, indices) = x.primitive.tensor.max_dim(1, true); // [rows, 1]
            Ok(TchTensor::new(indices))
        }
    }

    /// ATen's `_log_softmax` and `_log_softmax_backward_data`.
    pub(super) struct LogSoftmax;

    impl Kernel for LogSoftmax {
        type On<E: TchElement> = Ad<E>;
        type Args<B: Backend> = (Float<B>, usize);
        type Out<B: Backend> = Float<B>;

        fn run<E: TchElement>((x, dim): Self::Args<Ad<E>>) -> Ran<Self, Ad<E>> {
            let out = TchTensor::new(x.primitive.tensor.internal_log_softmax(dim as i64, false));
            let state = LogSoftmaxState {
                out: out.clone(),
                dim,
                kind: x.primitive.tensor.kind(),
            };
            Ok(record!(LogSoftmaxBackward, [x.node], state, out))
        }
    }

    #[derive(Debug, Clone)]
    struct LogSoftmaxState {
        out: TchTensor,
        dim: usize,
        kind: tch::Kind,
    }

    #[derive(Debug)]
    struct LogSoftmaxBackward;

    impl<E: TchElement> Backward<LibTorch<E>, 1> for LogSoftmaxBackward {
        type State = LogSoftmaxState;

        fn backward(self, ops: Ops<LogSoftmaxState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<LibTorch<E>>(&ops.node);
            let s = ops.state;
            let dx = tch::Tensor::internal_log_softmax_backward_data(&grad.tensor, &s.out.tensor, s.dim as i64, s.kind);
            register!(E, grads, ops.parents, [Some(dx)]);
        }
    }
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use burn::tensor::Distribution;
    use burn::tensor::Tolerance;

    /// `f` on a fresh leaf copy of each input: the output and the inputs' gradients under a
    /// random weighting of the output (so every output element's gradient matters).
    fn output_and_grads<const D: usize>(
        inputs: &[Tensor<TestAutodiff, D>],
        weights: &Tensor<TestAutodiff, D>,
        f: impl Fn(Vec<Tensor<TestAutodiff, D>>) -> Tensor<TestAutodiff, D>,
    ) -> (TensorData, Vec<TensorData>) {
        let leaves: Vec<_> = inputs.iter().map(|t| t.clone().detach().require_grad()).collect();
        let out = f(leaves.clone());
        let grads = (out.clone() * weights.clone()).sum().backward();
        let g = leaves.iter().map(|l| l.grad(&grads).expect("a gradient").into_data()).collect();
        (out.inner().into_data(), g)
    }

    fn assert_close(got: (TensorData, Vec<TensorData>), want: (TensorData, Vec<TensorData>), tolerance: f32) {
        let t = Tolerance::<f32>::absolute(tolerance);
        got.0.assert_approx_eq::<f32>(&want.0, t);
        for (g, w) in got.1.iter().zip(&want.1) {
            g.assert_approx_eq::<f32>(w, t);
            let mass: f32 = g.to_vec::<f32>().unwrap().iter().map(|v| v.abs()).sum();
            assert!(mass > 1e-3, "gradients reach the input");
        }
    }

    /// The fused path against burn's own ops on the same backend: the output and the gradient
    /// of the packed projection, through the layout change the encoder makes next (so the
    /// incoming gradient is a strided view, as in training). A sequence within one 32-row
    /// query block of the flash kernel, and one across two.
    #[test]
    fn fused_attention_matches_burns_ops_and_their_gradients() {
        for l in [7, 33] {
            attention_matches_on(l);
        }
    }

    fn attention_matches_on(l: usize) {
        let device = Default::default();
        let (b, h, d) = (2, 3, 8);
        let qkv = Tensor::<TestAutodiff, 3>::random([b, l, 3 * h * d], Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<TestAutodiff, 3>::random([b, h * d, l], Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            output_and_grads(std::slice::from_ref(&qkv), &weights, |x| {
                let out = if fused {
                    multi_head_attention(x[0].clone(), h)
                } else {
                    attention_by_parts(x[0].clone(), h)
                };
                out.swap_dims(1, 2) // [batch, dim, tokens]
            })
        };
        assert_close(run(true), run(false), 1e-4);
    }

    /// Each row's largest value, the first on ties: a flat row (every score 0) is index 0, as
    /// the pipeline's tokenizer makes it, on rows wide enough for vectorized kernels.
    #[test]
    fn argmax_rows_takes_the_first_of_tied_maxima() {
        let device = Default::default();
        let width = 1024;
        let mut values = vec![0f32; 4 * width];
        values[width + 700] = 3.0; // row 1: one maximum
        values[2 * width + 5] = 2.0; // row 2: maxima at 5, 600 and 1000
        values[2 * width + 600] = 2.0;
        values[2 * width + 1000] = 2.0;
        for v in &mut values[3 * width..] {
            *v = -1.0; // row 3: all tied below zero
        }
        let x = Tensor::<TestAutodiff, 2>::from_data(TensorData::new(values, [4, width]), &device);
        let got: Vec<i64> = argmax_rows(x).into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(got, vec![0, 700, 5, 0]);
    }

    /// burn's path in bf16 (CubeCL's, where LibTorch's fused kernel is absent) equals f32
    /// attention up to bf16's rounding, in bf16 with gradients in bf16. (LibTorch's own bf16
    /// softmax accumulates in f32, so no CPU backend shows what the f32 softmax saves on CubeCL.)
    #[cfg(feature = "tch")]
    #[test]
    fn burn_attention_in_bf16_matches_f32_attention() {
        use burn::backend::{Autodiff, LibTorch};
        use burn::tensor::bf16;
        type Half = Autodiff<LibTorch<bf16>>;
        let (b, l, h, hd) = (2, 33, 2, 16);
        let values: Vec<f32> = Tensor::<TestBackend, 3>::random([b, l, 3 * h * hd], Distribution::Normal(0.0, 2.5), &Default::default())
            .into_data()
            .iter::<f32>()
            .collect();
        let exact = Tensor::<LibTorch<f32>, 3>::from_data(TensorData::new(values.clone(), [b, l, 3 * h * hd]), (&Default::default(), DType::F32));
        let parts: Vec<Tensor<LibTorch<f32>, 4>> = exact
            .reshape([b, l, 3, h, hd])
            .permute([2, 0, 3, 1, 4])
            .chunk(3, 0)
            .into_iter()
            .map(|t| t.squeeze_dim::<4>(0))
            .collect();
        let (q, k, v) = (parts[0].clone(), parts[1].clone(), parts[2].clone());
        let want: Vec<f32> = attention(q, k, v, None, None, AttentionModuleOptions::default())
            .swap_dims(1, 2)
            .reshape([b, l, h * hd])
            .into_data()
            .iter::<f32>()
            .collect();
        let half = Tensor::<Half, 3>::from_data(TensorData::new(values, [b, l, 3 * h * hd]), (&Default::default(), DType::F32))
            .cast(DType::BF16)
            .require_grad();
        let got = attention_by_parts(half.clone(), h);
        assert_eq!(got.dtype(), DType::BF16);
        let grads = got.clone().sum().backward();
        assert_eq!(half.grad(&grads).unwrap().dtype(), DType::BF16);
        let got: Vec<f32> = got.cast(DType::F32).into_data().iter::<f32>().collect();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 0.05 * scale, "worst {worst} of {scale}");
    }

    /// Layer norm against the decomposition written out by hand (burn's own op on flex):
    /// output and the gradients of input, scale and shift.
    #[test]
    fn fused_layer_norm_matches_the_definition_and_its_gradients() {
        let device = Default::default();
        let x = Tensor::<TestAutodiff, 3>::random([3, 5, 16], Distribution::Normal(1.0, 2.0), &device);
        let gamma = Tensor::<TestAutodiff, 3>::random([1, 1, 16], Distribution::Normal(1.0, 0.5), &device);
        let beta = Tensor::<TestAutodiff, 3>::random([1, 1, 16], Distribution::Normal(0.0, 0.5), &device);
        let weights = Tensor::<TestAutodiff, 3>::random([3, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        let eps = 1e-6;
        let fused = output_and_grads(&[x.clone(), gamma.clone(), beta.clone()], &weights, |t| {
            layer_norm(t[0].clone(), t[1].clone().reshape([16]), Some(t[2].clone().reshape([16])), eps)
        });
        let by_hand = output_and_grads(&[x, gamma, beta], &weights, |t| {
            let mean = t[0].clone().mean_dim(2);
            let centered = t[0].clone() - mean;
            let var = centered.clone().powi_scalar(2).mean_dim(2);
            centered / (var + eps).sqrt() * t[1].clone() + t[2].clone()
        });
        assert_close(fused, by_hand, 1e-4);
    }

    /// Log-softmax against `x - logsumexp(x)` written out, on rows with a large offset (where
    /// an unshifted exp would overflow).
    #[test]
    fn fused_log_softmax_matches_the_definition_and_its_gradient() {
        let device = Default::default();
        let x = Tensor::<TestAutodiff, 2>::random([6, 40], Distribution::Normal(0.0, 3.0), &device) + 80.0;
        let weights = Tensor::<TestAutodiff, 2>::random([6, 40], Distribution::Normal(0.0, 1.0), &device);
        let fused = output_and_grads(std::slice::from_ref(&x), &weights, |t| log_softmax(t[0].clone(), 1));
        let by_hand = output_and_grads(&[x], &weights, |t| {
            let max = t[0].clone().detach().max_dim(1);
            let shifted = t[0].clone() - max;
            shifted.clone() - shifted.exp().sum_dim(1).log()
        });
        assert_close(fused, by_hand, 1e-4);
    }
}
