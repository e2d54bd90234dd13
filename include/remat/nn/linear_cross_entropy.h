#pragma once

/// \file
/// The LM head and the cross-entropy in one step, chunk by chunk: the loss of
/// `hidden @ weight^T` against `targets` without ever holding the full
/// [tokens, vocab] logits, in the forward or in the backward.
/// \code
///   // hidden [tokens, hidden_size], lm_head weight [vocab, hidden_size], targets [tokens]
///   auto sum = remat::nn::linear_cross_entropy(hidden, weight, targets);
///   auto loss = sum / (targets != -100).sum();   // torch's mean reduction
/// \endcode

#include <torch/torch.h>

#include <cstdint>

namespace remat::nn {

/// Options of linear_cross_entropy().
struct LinearCrossEntropyOptions {
  /// Rows of `hidden` per chunk; 0 (the default) picks the rows whose fp32
  /// logits take about 512 MiB (2,668 rows for a vocabulary of 50,304).
  TORCH_ARG(int64_t, chunk_rows) = 0;
  /// Targets equal to this contribute neither loss nor gradient.
  TORCH_ARG(int64_t, ignore_index) = -100;
};

/// The summed cross-entropy of the logits `hidden @ weight^T` (plus `bias`
/// when defined) against `targets`, as a float32 scalar: the same value and
/// gradients as `cross_entropy(linear(hidden, weight, bias).to(kFloat),
/// targets, reduction=sum, ignore_index)`, computed over row chunks. Under
/// autocast the logits are computed in the autocast dtype and the
/// cross-entropy in float32, as that plain expression would under autocast.
///
/// With gradients required, the forward also computes the gradients of
/// `hidden`, `weight` and `bias` chunk by chunk (the softmax of each chunk is
/// at hand) and keeps them, not the logits; the backward only scales them by
/// the incoming gradient. So memory holds one chunk's logits at a time and
/// the work is the plain path's three matrix products. Double backward is
/// not supported.
///
/// On CUDA without `bias`, one kernel per chunk takes the logits in their
/// dtype (bf16 under autocast) and writes each row's loss and, in place of
/// the logits, their gradient (float32 math, the row's logsumexp in one
/// pass): no float32 copy of the chunk. There a target outside [0, V) gives
/// a NaN sum instead of an error. `REMAT_FUSED_KERNELS=0` in the environment
/// runs the plain ops instead.
///
/// `hidden` is [N, H], `weight` [V, H], `bias` [V] or undefined, `targets`
/// [N] integers in [0, V) or ignore_index. With no counted target the sum is
/// 0.
///
/// Example: `linear_cross_entropy(h.flatten(0, 1), lm_head->weight, labels.flatten())`
torch::Tensor linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                   const torch::Tensor& targets, const torch::Tensor& bias = {},
                                   const LinearCrossEntropyOptions& options = {});

}  // namespace remat::nn
