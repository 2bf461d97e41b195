// ATen operators the trainer calls on LibTorch that tch 0.22 does not bind: the layer-norm
// backward kernel (tch leaves out operators with a bool[3] argument) and the fused AdamW
// kernel (tch binds no foreach/fused optimizer operators). Built by trainer/build.rs with the
// `tch` feature, against the same libtorch headers torch-sys builds against; called from
// src/libtorch.rs, which owns every pointer that crosses this boundary.
//
// Tensors cross as `at::Tensor*`, which is what tch's `C_tensor` handles point to. Results are
// `new at::Tensor(..)` that the Rust side adopts with `tch::Tensor::from_ptr` (freed by tch).
// No C++ exception crosses into Rust: each function returns nullptr, or a message the caller
// frees with `sm_free_error`.

#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/native_layer_norm_backward.h>
#include <ATen/ops/scalar_tensor.h>

#include <exception>
#include <vector>

#include "error_message.h"

namespace {

std::optional<at::Tensor> optional(const at::Tensor *t) {
  return t == nullptr ? std::nullopt : std::optional<at::Tensor>(*t);
}

at::Tensor *adopt(at::Tensor &&t) {
  return t.defined() ? new at::Tensor(std::move(t)) : nullptr;
}

} // namespace

extern "C" {

void sm_free_error(char *message) { std::free(message); }

// Gradients of `native_layer_norm` over the last dimension: out[0..3] = d input, d weight,
// d bias, each computed only where mask[i] and written as nullptr otherwise.
char *sm_layer_norm_backward(const at::Tensor *grad_out, const at::Tensor *input,
                             const at::Tensor *mean, const at::Tensor *rstd,
                             const at::Tensor *weight, const at::Tensor *bias,
                             const bool *mask, at::Tensor **out) {
  try {
    const int64_t last = input->size(-1);
    auto grads = at::native_layer_norm_backward(*grad_out, *input, {last}, *mean, *rstd,
                                                optional(weight), optional(bias),
                                                {mask[0], mask[1], mask[2]});
    out[0] = mask[0] ? adopt(std::move(std::get<0>(grads))) : nullptr;
    out[1] = mask[1] ? adopt(std::move(std::get<1>(grads))) : nullptr;
    out[2] = mask[2] ? adopt(std::move(std::get<2>(grads))) : nullptr;
    return nullptr;
  } catch (const std::exception &e) {
    return sm_error_message(e.what());
  }
}

// One AdamW update of `n` parameters in place (PyTorch's `AdamW(fused=True)` kernel): the
// decoupled decay p *= 1 - lr * wd, then the bias-corrected Adam step at update `step`
// (1-based). Gradients are divided by `grad_scale` inside the kernel (1 / clip factor).
char *sm_fused_adamw(at::Tensor *const *params, at::Tensor *const *grads,
                     at::Tensor *const *exp_avgs, at::Tensor *const *exp_avg_sqs, int64_t n,
                     double step, double lr, double beta1, double beta2, double weight_decay,
                     double eps, double grad_scale) {
  try {
    if (n <= 0) {
      return nullptr;
    }
    // The kernel reads the step count and the scale from tensors on the parameters' device.
    const auto on_device = at::TensorOptions().dtype(at::kFloat).device(params[0]->device());
    const at::Tensor step_count = at::scalar_tensor(step, on_device);
    std::vector<at::Tensor> p, g, m, v, steps;
    for (int64_t i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      steps.push_back(step_count);
    }
    std::optional<at::Tensor> scale;
    if (grad_scale != 1.0) {
      scale = at::scalar_tensor(grad_scale, on_device);
    }
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, scale, /*found_inf=*/std::nullopt);
    return nullptr;
  } catch (const std::exception &e) {
    return sm_error_message(e.what());
  }
}

} // extern "C"
