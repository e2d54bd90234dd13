#pragma once

/// \file
/// Fused elementwise pieces of the Llama block: SwiGLU, rotary embeddings
/// and RMSNorm. Each is differentiable and computes what the plain ATen
/// expression in its comment computes. On CUDA, for the dtypes and layouts
/// listed, one kernel does the forward and one the backward, with float32
/// math and one rounding per output; everywhere else (CPU, other dtypes or
/// layouts, a library built without its CUDA kernels) the plain expression
/// runs, op for op, so results are bitwise those of the unfused code.
/// \code
///   auto h = remat::nn::rms_norm(x, norm->weight, 1e-6);
///   auto q = remat::nn::rotary(q_proj(h).view({b, t, heads, head_dim}), cos, sin);
///   auto y = down_proj(remat::nn::swiglu(gate_proj(h), up_proj(h)));
/// \endcode

#include <torch/torch.h>

namespace remat::nn {

/// True when this build of remat has the fused CUDA kernels (a CUDA compiler
/// and a CUDA LibTorch were found when it was configured) and the
/// environment does not set REMAT_FUSED_KERNELS=0, which turns them off
/// for the whole process (a before/after switch). Without them
/// swiglu() and rotary() always run the plain expression; rms_norm() without
/// `dtype` uses ATen's fused CUDA kernel either way.
bool fused_kernels_available();

/// silu(gate) * up. `gate` and `up` must have the same shape (no
/// broadcasting) and device; the result has dtype result_type(gate, up).
///
/// CUDA kernel: gate and up of one dtype (float32, float16 or bfloat16),
/// both contiguous. The forward computes in float32 and rounds once (the
/// plain expression rounds silu(gate) to the dtype first); the backward
/// computes d_gate and d_up in one kernel from the saved gate and up. Only
/// gate and up are kept for the backward. Double backward runs the plain
/// formula.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);

/// Rotary position embedding: x * cos + rotate_half(x) * sin, with
/// rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2]) and cos, sin broadcast
/// over the heads.
///
/// `x` is [batch, tokens, heads, head_dim] (as `q_proj(h).view({b, t, heads,
/// head_dim})`), head_dim even; `cos` and `sin` are [batch or 1, tokens,
/// head_dim] and get no gradient. The result has dtype result_type(x, cos):
/// under autocast a bfloat16 x with float32 cos gives float32, as the plain
/// expression does. The gradient of x comes back in x's dtype.
///
/// CUDA kernel: x float32, float16 or bfloat16 with its last dimension
/// contiguous; cos and sin both of x's dtype or both float32; cos and sin not
/// requiring grad. Forward and backward are one kernel each, in float32 with
/// one rounding per output; products and sums are rounded as ATen rounds
/// them in float32, so with float32 output the forward equals the plain
/// expression bit for bit.
///
/// `dtype`, when given, is the result's dtype: the same as `.to(dtype)` on
/// the result, in one step on CUDA when it is x's dtype (say bf16 x and
/// float32 cos under autocast, whose attention casts q and k to bf16
/// anyway: the float32 result rounded to bf16, without writing it first).
torch::Tensor rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                     std::optional<at::ScalarType> dtype = std::nullopt);

/// Root-mean-square normalization over the last dimension, as transformers'
/// LlamaRMSNorm: `weight * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(x.dtype)`.
/// `weight` is [x.size(-1)].
///
/// On CUDA, when x and weight have the same dtype (float32, float16 or
/// bfloat16), ATen's fused kernel and its backward run
/// (at::_fused_rms_norm, which at::rms_norm also reaches for such inputs): float32
/// statistics, one rounding of the output, a few ulps from the plain
/// expression. Otherwise the plain expression runs.
///
/// `dtype`, when given, is the result's dtype: the result equals
/// `rms_norm(x, weight, eps).to(*dtype)` (bitwise where the plain expression
/// runs; through the CUDA kernel within one ulp of a 16-bit `dtype`, a few
/// ulps of float32). The kernel takes x and weight of one dtype (float32,
/// float16 or bfloat16), x with a unit last stride (its rows are copied
/// first when they are not dense), and `dtype` x's dtype, or bfloat16 or
/// float16 for a float32 x: the forward is one kernel, per row
/// rstd = rsqrt(mean(x^2) + eps) in float32 and `weight * (x * rstd)` in
/// float32 rounded once to `dtype` (a float32 residual stream normalized
/// straight into autocast's bfloat16, without a float32 copy in between);
/// it keeps x, weight and the float32 rstd for the backward, one kernel
/// for the gradient of x (float32 math, rounded to x's dtype) and the
/// per-block float32 sums of the gradient of weight, which a second small
/// kernel adds in a fixed order (deterministic) and rounds to weight's dtype.
/// Double backward runs the plain formula. Other inputs run the call without
/// `dtype`, then `.to(*dtype)`.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                       std::optional<at::ScalarType> dtype = std::nullopt);

}  // namespace remat::nn
