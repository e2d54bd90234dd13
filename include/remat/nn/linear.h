#pragma once

/// \file
/// A linear layer whose weight gradient comes out in float32 directly under
/// CUDA autocast. Under bf16 or fp16 autocast, a float32 weight is cast to
/// the low-precision dtype for the GEMM; autograd then computes the weight
/// gradient in that dtype and casts it to float32 in a separate kernel.
/// remat::nn::linear() computes the same forward, but its weight gradient is
/// one GEMM of the low-precision operands that writes float32 (cuBLAS
/// accumulates in float32 and rounds once, to float32): no low-precision
/// copy of the weight gradient, and no rounding of it to bf16 or fp16.
/// \code
///   auto q = remat::nn::linear(h, q_proj->weight, q_proj->bias);
///   auto qkv = remat::nn::linear(h, c_attn->weight, c_attn->bias,
///                                remat::nn::WeightLayout::kInOut);   // GPT-2's Conv1D
/// \endcode

#include <torch/torch.h>

namespace remat::nn {

/// How a linear layer stores its weight.
enum class WeightLayout {
  /// [out, in], as torch::nn::Linear: y = x W^T + b.
  kOutIn,
  /// [in, out], as transformers' Conv1D (GPT-2): y = x W + b.
  kInOut,
};

/// y = x W^T + b (kOutIn) or x W + b (kInOut) over the last dimension of
/// `x` (any number of leading dimensions). `bias` may be undefined.
///
/// The mixed-precision path runs when autocast is enabled on CUDA with
/// bfloat16 or float16, `x` is a CUDA tensor of float32, bfloat16 or float16
/// with at least two dimensions, `weight` is a float32 CUDA matrix that
/// requires grad, `bias` (if any) is float32, and grad mode is on. It casts
/// as autocast does (the weight and bias through autocast's cast cache, so a
/// weight read several times in one autocast region is cast once), runs the
/// same GEMM as the plain code (forward bitwise equal, the gradient of `x`
/// too), keeps the same low-precision copies of `x` and the weight for the
/// backward (`x` itself when it already has the autocast dtype), and
/// computes the gradients of the weight and the bias in float32 from the
/// low-precision operands. Double backward runs the formula in
/// differentiable ops.
///
/// Everywhere else (CPU, autocast off, other dtypes, no gradient wanted) it
/// runs the plain expression: torch::nn::functional::linear(x, weight, bias)
/// for kOutIn, and `addmm(bias, x2d, weight)` (`mm` without a bias) on the
/// rows of `x` for kInOut, so results are bitwise those of that code.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias = {}, WeightLayout layout = WeightLayout::kOutIn);

}  // namespace remat::nn
