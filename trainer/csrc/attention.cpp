// Multi-head attention through ATen's `scaled_dot_product_attention`, on whichever device the
// tensors live: ATen picks its kernel (flash or memory-efficient on CUDA, flash on the CPU,
// the math path where neither applies) and records its own backward node, which the backward
// here runs through ATen's autograd engine. So one code path runs the kernels PyTorch runs, on
// every device, with no kernel-specific arguments (philox seeds, cumulative lengths) to keep in
// step with a PyTorch release. A separate file from aten_ops.cpp: the autograd headers need
// the full operator set, which aten_ops.cpp opts out of to compile quickly.
//
// Tensors cross as `at::Tensor*` (tch's `C_tensor` handles). Results are `new at::Tensor(..)`
// the Rust side adopts with `tch::Tensor::from_ptr`. No C++ exception crosses into Rust.

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include <exception>

#include "error_message.h"

extern "C" {

// Forward of attention on the packed projection `qkv` [batch, tokens, 3 * heads * head_dim].
// out[0] is the output [batch, heads, tokens, head_dim]. Where `track`, q, k and v are made
// autograd leaves (views of a detached `qkv`, so their gradients come back separately instead
// of three zero-filled `qkv`-sized sums) and out[1..4] are q, k and v, which the backward
// needs; the output then carries ATen's backward node. Otherwise out[1..4] are null.
char *sm_attention_forward(const at::Tensor *qkv, int64_t heads, bool track, at::Tensor **out) {
  try {
    const auto b = qkv->size(0), l = qkv->size(1), d3 = qkv->size(2);
    at::Tensor parts;
    {
      at::NoGradGuard no_grad;
      // [3, batch, heads, tokens, head_dim]
      parts = qkv->detach().reshape({b, l, 3, heads, d3 / 3 / heads}).permute({2, 0, 3, 1, 4});
    }
    at::Tensor q = parts.select(0, 0), k = parts.select(0, 1), v = parts.select(0, 2);
    at::Tensor result;
    if (track) {
      q.requires_grad_(true);
      k.requires_grad_(true);
      v.requires_grad_(true);
      at::AutoGradMode grad_on(true);
      result = at::scaled_dot_product_attention(q, k, v);
    } else {
      at::NoGradGuard no_grad;
      result = at::scaled_dot_product_attention(q, k, v);
    }
    out[0] = new at::Tensor(std::move(result));
    out[1] = track ? new at::Tensor(std::move(q)) : nullptr;
    out[2] = track ? new at::Tensor(std::move(k)) : nullptr;
    out[3] = track ? new at::Tensor(std::move(v)) : nullptr;
    return nullptr;
  } catch (const std::exception &e) {
    return sm_error_message(e.what());
  }
}

// Gradients of q, k and v (out[0..3]) given the gradient of the tracked forward's output. The
// recorded graph is freed by the call.
char *sm_attention_backward(const at::Tensor *output, const at::Tensor *grad_output,
                            const at::Tensor *q, const at::Tensor *k, const at::Tensor *v,
                            at::Tensor **out) {
  try {
    auto grads = torch::autograd::grad({*output}, {*q, *k, *v}, {*grad_output},
                                       /*retain_graph=*/false, /*create_graph=*/false);
    for (int i = 0; i < 3; ++i) {
      out[i] = new at::Tensor(std::move(grads[i]));
    }
    return nullptr;
  } catch (const std::exception &e) {
    return sm_error_message(e.what());
  }
}

} // extern "C"
