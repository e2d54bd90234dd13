#pragma once

// Launchers of the fused elementwise CUDA kernels behind remat/nn/fused.h.
// Torch-free (plain pointers, element counts, a dtype tag and the stream as
// void*), so that fused_kernels.cu compiles with nvcc alone. Every launcher
// enqueues its kernel on `stream` (a cudaStream_t) of the current device and
// returns nullptr, or a message naming what went wrong (an unsupported dtype
// combination, a launch error).
//
// Outputs are dense and row-major; pointers may have any alignment (the
// kernels load 16 bytes at a time only when every pointer and row allows it).

#include <cstdint>

namespace remat::nn::kernels {

enum class DType : int { kFloat32, kFloat16, kBFloat16 };

/// out[i] = silu(gate[i]) * up[i] for i < n, in float32, rounded once to
/// `dtype` (the dtype of gate, up and out).
const char* swiglu_forward(const void* gate, const void* up, void* out, int64_t n, DType dtype,
                           void* stream);

/// The gradients of swiglu_forward: with s = sigmoid(gate),
/// grad_gate = grad_out * up * s * (1 + gate * (1 - s)) and
/// grad_up = grad_out * gate * s, in float32, each rounded once to `dtype`
/// (the dtype of every tensor).
const char* swiglu_backward(const void* grad_out, const void* gate, const void* up, void* grad_gate,
                            void* grad_up, int64_t n, DType dtype, void* stream);

/// Shapes of a rotary call. The input (x, or the output gradient) is
/// [batch, tokens, heads, head_dim] with a unit last stride and the given
/// other strides; the output is the same shape, contiguous. cos and sin are
/// [batch, tokens, head_dim] with a unit last stride and the given batch and
/// token strides (0 where broadcast), the same for both.
struct RotaryShape {
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0;
  int64_t a_batch_stride = 0, a_token_stride = 0, a_head_stride = 0;
  int64_t cs_batch_stride = 0, cs_token_stride = 0;
};

/// out = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1) over
/// the halves x1, x2 of the last dimension; float32 math, one rounding to
/// out_dtype. Takes (x, cs, out) dtypes (T, T, T) or (T, float32, float32).
const char* rotary_forward(const void* x, DType x_dtype, const void* cos, const void* sin,
                           DType cs_dtype, void* out, DType out_dtype, const RotaryShape& shape,
                           void* stream);

/// The gradient of rotary_forward with respect to x:
/// grad_x = grad_out * cos + rotate_half^T(grad_out * sin), rotate_half^T(g) =
/// cat(g2, -g1); float32 math, one rounding to gx_dtype. Takes (grad_out,
/// cs, grad_x) dtypes (T, T, T) or (float32, float32, T).
const char* rotary_backward(const void* grad_out, DType grad_dtype, const void* cos,
                            const void* sin, DType cs_dtype, void* grad_x, DType gx_dtype,
                            const RotaryShape& shape, void* stream);

}  // namespace remat::nn::kernels

namespace remat::nn::kernels {

/// Cross-entropy over the rows of `logits` [rows, vocab] (dense, row-major,
/// of `dtype`) against `targets` [rows] (int64): losses[r] (float32) =
/// logsumexp(logits[r]) - logits[r, targets[r]], 0 where targets[r] ==
/// ignore_index and NaN where a target is outside [0, vocab). With `grad`,
/// logits[r] is then replaced in place by d(sum of losses)/d(logits[r]) =
/// softmax(logits[r]) - one_hot(targets[r]) (0 on ignored rows). float32
/// math (an online max and sum in one pass), one rounding per gradient
/// element; one block per row.
const char* cross_entropy_rows(void* logits, DType dtype, const int64_t* targets, float* losses,
                               int64_t rows, int64_t vocab, int64_t ignore_index, bool grad,
                               void* stream);

}  // namespace remat::nn::kernels

namespace remat::nn::kernels {

/// RMSNorm over the rows of x [rows, hidden] (dense, row-major, of x_dtype)
/// with weight [hidden] (dense, of x_dtype): per row, in float32,
/// rstd = rsqrt(sum(x^2) / hidden + eps) and
/// out = weight * (x * rstd), rounded once to out_dtype (dense [rows, hidden]).
/// Writes rstd[row] (float32) unless `rstd` is null. One block per row.
/// Takes (x, out) dtypes (T, T) or (float32, float16 or bfloat16).
const char* rms_norm_forward(const void* x, const void* weight, DType x_dtype, void* out,
                             DType out_dtype, float* rstd, int64_t rows, int64_t hidden, float eps,
                             void* stream);

/// The number of rows of the float32 workspace rms_norm_backward needs (the
/// workspace is [rms_norm_backward_blocks(...), hidden]): the blocks of its
/// first kernel on the current device, at most `rows`.
int64_t rms_norm_backward_blocks(int64_t rows, int64_t hidden, DType x_dtype, DType out_dtype);

/// The gradients of rms_norm_forward from grad_out [rows, hidden] (dense, of
/// out_dtype), the forward's x and weight (of x_dtype) and its rstd. With
/// xh = x * rstd and g = grad_out * weight, in float32:
///   grad_x = rstd * (g - xh * mean(g * xh)), rounded once to x_dtype
///     (skipped when grad_x is null);
///   grad_weight = sum over rows of grad_out * xh, rounded once to x_dtype
///     (skipped when grad_weight is null).
/// `blocks` is rms_norm_backward_blocks(rows, hidden, x_dtype, out_dtype) and
/// `workspace` a float32 buffer of blocks * hidden elements (its contents on
/// entry do not matter): each block sums the rows it handles into its own
/// row of the workspace, then a second kernel adds the workspace's rows in a
/// fixed order, so the result does not depend on scheduling.
const char* rms_norm_backward(const void* grad_out, DType out_dtype, const void* x,
                              const void* weight, DType x_dtype, const float* rstd, void* grad_x,
                              void* grad_weight, float* workspace, int64_t blocks, int64_t rows,
                              int64_t hidden, void* stream);

}  // namespace remat::nn::kernels
