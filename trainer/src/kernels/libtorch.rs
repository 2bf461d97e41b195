//! LibTorch's own kernels, reached from code that is generic over the backend (`tch` feature).
//!
//! burn 0.21 runs a training step on LibTorch as burn's autodiff graph of small LibTorch ops:
//! layer norm, softmax and attention are decomposed into elementwise passes, each recorded and
//! differentiated on its own, and AdamW is a dozen passes per parameter. PyTorch runs each of
//! them as one kernel. This module lets the model and the optimizer call those kernels when
//! the backend *is* LibTorch, without a LibTorch bound on any generic function:
//!
//! - [`Kernel`] and [`try_run`]: a computation written once for `LibTorch<E>` (or its autodiff
//!   wrapper) runs when the caller's backend is that type, found by `TypeId` (burn has no
//!   specialisation); otherwise the caller gets its arguments back and runs burn's generic op.
//! - [`layer_norm_backward`] and [`fused_adamw`]: ATen operators that tch 0.22 does not bind,
//!   through the C++ shim `csrc/aten_ops.cpp` (built by `build.rs`).
//! - [`attention_forward`] and [`attention_backward`]: `scaled_dot_product_attention` with its
//!   backward run by ATen's autograd (`csrc/attention.cpp`), so whichever kernel ATen picks for
//!   the device (flash or memory-efficient on CUDA, flash on the CPU) runs both ways.

use std::any::Any;
use std::ffi::{c_char, CStr};

use burn::backend::libtorch::{LibTorch, TchElement};
use burn::backend::Autodiff;
use burn::prelude::Backend;
use burn::tensor::bf16;
use torch_sys::C_tensor;

/// Training on LibTorch with element type `E`.
pub type Ad<E> = Autodiff<LibTorch<E>>;

/// A computation with a LibTorch implementation. `Args<B>` and `Out<B>` are what the generic
/// caller holds for its backend `B` (tensors of `B`, usually in a tuple); `run` sees them for
/// `On<E>`, the LibTorch backend with float type `E`.
pub trait Kernel {
    /// The backend `run` is written for: `LibTorch<E>` or `Autodiff<LibTorch<E>>`.
    type On<E: TchElement>: Backend;
    type Args<B: Backend>: 'static;
    type Out<B: Backend>: 'static;

    /// The LibTorch computation, or the arguments back where it does not apply (a device or
    /// layout the kernel does not cover).
    fn run<E: TchElement>(args: Self::Args<Self::On<E>>) -> Ran<Self, Self::On<E>>;
}

/// What [`Kernel::run`] and [`try_run`] return for backend `B`: the output, or the arguments
/// back.
pub type Ran<K, B> = Result<<K as Kernel>::Out<B>, <K as Kernel>::Args<B>>;

/// Runs `K` when `B` is `K::On<f32>` or `K::On<bf16>`; the arguments back otherwise.
pub fn try_run<B: Backend, K: Kernel>(args: K::Args<B>) -> Ran<K, B> {
    let args = match retype::<K::Args<B>, K::Args<K::On<f32>>>(args) {
        Ok(a) => return K::run::<f32>(a).map(same).map_err(same),
        Err(args) => args,
    };
    match retype::<K::Args<B>, K::Args<K::On<bf16>>>(args) {
        Ok(a) => K::run::<bf16>(a).map(same).map_err(same),
        Err(args) => Err(args),
    }
}

/// `t` as `U` when `T` and `U` are the same type; `t` back otherwise.
fn retype<T: 'static, U: 'static>(t: T) -> Result<U, T> {
    let boxed: Box<dyn Any> = Box::new(t);
    boxed
        .downcast::<U>()
        .map(|u| *u)
        .map_err(|b| *b.downcast::<T>().expect("a box holds its own type"))
}

/// The way back from [`retype`]: only called where the types were found equal.
fn same<T: 'static, U: 'static>(t: T) -> U {
    retype(t)
        .ok()
        .expect("try_run only converts back to the type it came from")
}

unsafe extern "C" {
    fn sm_free_error(message: *mut c_char);
    fn sm_layer_norm_backward(
        grad_out: *const C_tensor,
        input: *const C_tensor,
        mean: *const C_tensor,
        rstd: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        mask: *const bool,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn sm_fused_adamw(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avgs: *const *const C_tensor,
        exp_avg_sqs: *const *const C_tensor,
        n: i64,
        step: f64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        grad_scale: f64,
    ) -> *mut c_char;
    fn sm_attention_forward(qkv: *const C_tensor, heads: i64, track: bool, out: *mut *mut C_tensor) -> *mut c_char;
    fn sm_attention_backward(
        output: *const C_tensor,
        grad_output: *const C_tensor,
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Panics with the shim's message where it caught a C++ exception, as tch does for its own
/// operators (a shape or device mismatch: a bug in the caller, not bad input).
///
/// # Safety
/// `err` is null or a message from the shim, not yet freed.
unsafe fn check(op: &str, err: *mut c_char) {
    if err.is_null() {
        return;
    }
    // SAFETY: the shim's messages are NUL-terminated strings it allocated.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    // SAFETY: freed once, by the allocator that made it.
    unsafe { sm_free_error(err) };
    panic!("LibTorch {op}: {message}");
}

fn ptr(t: Option<&tch::Tensor>) -> *const C_tensor {
    t.map_or(std::ptr::null(), |t| t.as_ptr())
}

/// The gradients of `native_layer_norm` over the last dimension (ATen's fused backward):
/// input, weight and bias, each where `mask` asks for it. `mean` and `rstd` are the forward's
/// statistics.
pub fn layer_norm_backward(
    grad_out: &tch::Tensor,
    input: &tch::Tensor,
    mean: &tch::Tensor,
    rstd: &tch::Tensor,
    weight: Option<&tch::Tensor>,
    bias: Option<&tch::Tensor>,
    mask: [bool; 3],
) -> [Option<tch::Tensor>; 3] {
    let mut out = [std::ptr::null_mut(); 3];
    // SAFETY: every pointer is a live tensor borrowed for the call (or null where optional);
    // `out` has room for three results, each null or a tensor the shim allocated for us.
    unsafe {
        let err = sm_layer_norm_backward(
            grad_out.as_ptr(),
            input.as_ptr(),
            mean.as_ptr(),
            rstd.as_ptr(),
            ptr(weight),
            ptr(bias),
            mask.as_ptr(),
            out.as_mut_ptr(),
        );
        check("layer_norm_backward", err);
        out.map(|t| (!t.is_null()).then(|| tch::Tensor::from_ptr(t)))
    }
}

/// AdamW's hyper-parameters for one [`fused_adamw`] call.
#[derive(Debug, Clone, Copy)]
pub struct AdamwStep {
    /// The update's number, from 1 (bias correction).
    pub step: u64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
    /// Gradients are divided by it (the inverse of the clipping factor).
    pub grad_scale: f64,
}

/// One AdamW update in place, with PyTorch's fused kernel (`AdamW(fused=True)`): parameter,
/// first and second moment written in one pass over each parameter. The tensors must be
/// contiguous, of one shape per parameter, and not shared with anything that must not see the
/// update (the gradient is overwritten with its scaled value where `grad_scale != 1`).
pub fn fused_adamw(
    params: &[&tch::Tensor],
    grads: &[&tch::Tensor],
    exp_avgs: &[&tch::Tensor],
    exp_avg_sqs: &[&tch::Tensor],
    s: AdamwStep,
) {
    let n = params.len();
    assert!(
        grads.len() == n && exp_avgs.len() == n && exp_avg_sqs.len() == n,
        "fused_adamw: one gradient and two moments per parameter"
    );
    let ptrs = |ts: &[&tch::Tensor]| ts.iter().map(|t| t.as_ptr()).collect::<Vec<_>>();
    let (p, g, m, v) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs));
    // SAFETY: four arrays of `n` live tensors, borrowed for the call; the shim mutates their
    // storage, never the handles.
    unsafe {
        let err = sm_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n as i64,
            s.step as f64,
            s.lr,
            s.beta1,
            s.beta2,
            s.weight_decay,
            s.eps,
            s.grad_scale,
        );
        check("fused_adamw", err);
    }
}

/// Multi-head attention of the packed projection `qkv` through ATen's
/// `scaled_dot_product_attention`: the output, and where `track`, the q, k and v autograd
/// leaves that [`attention_backward`] differentiates against (the output then carries ATen's
/// backward node, which holds what the kernel saved).
///
/// # Shapes
/// - qkv: `[batch, tokens, 3 * dim]`, q, k, v in that order, each `[heads, head_dim]` inside
/// - output: `[batch, heads, tokens, head_dim]`; leaves: 3 x the same
pub fn attention_forward(qkv: &tch::Tensor, heads: i64, track: bool) -> (tch::Tensor, Option<[tch::Tensor; 3]>) {
    let mut out = [std::ptr::null_mut(); 4];
    // SAFETY: `qkv` is a live tensor borrowed for the call; `out` has room for the shim's four
    // results: the output, always set on success, and three leaves set exactly when `track`.
    unsafe {
        let err = sm_attention_forward(qkv.as_ptr(), heads, track, out.as_mut_ptr());
        check("scaled_dot_product_attention", err);
        let output = tch::Tensor::from_ptr(out[0]);
        let leaves = track.then(|| [1, 2, 3].map(|i| tch::Tensor::from_ptr(out[i])));
        (output, leaves)
    }
}

/// The gradients of q, k and v of a tracked [`attention_forward`], given its output's
/// gradient; ATen's autograd runs the backward kernel the forward recorded, once.
pub fn attention_backward(
    output: &tch::Tensor,
    grad_output: &tch::Tensor,
    leaves: &[tch::Tensor; 3],
) -> [tch::Tensor; 3] {
    let mut out = [std::ptr::null_mut(); 3];
    let [q, k, v] = leaves;
    // SAFETY: every pointer is a live tensor borrowed for the call; on success the shim writes
    // three tensors it allocated, which are adopted once each.
    unsafe {
        let err = sm_attention_backward(
            output.as_ptr(),
            grad_output.as_ptr(),
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            out.as_mut_ptr(),
        );
        check("scaled_dot_product_attention backward", err);
        out.map(|t| tch::Tensor::from_ptr(t))
    }
}
