#pragma once

// remat's own uses of the fused CUDA kernels outside remat/nn/fused.h.

#include <torch/torch.h>

namespace remat::nn::detail {

/// False when the environment sets REMAT_FUSED_KERNELS=0: the fused
/// kernels and remat::nn::linear's mixed-precision path are then off and the
/// plain ATen expressions run (a before/after switch for benchmarks).
bool fused_kernels_on();

/// For `logits` [rows, vocab] (CUDA, contiguous, float32, float16 or
/// bfloat16) and `targets` [rows] (int64, same device): returns float32
/// [rows] losses, logsumexp(row) - row[target] (0 where the target is
/// `ignore_index`, NaN where it is outside [0, vocab)), and with `grad`
/// replaces the logits in place by softmax - one_hot(target) (0 on ignored
/// rows), in one kernel. Returns an undefined tensor when the kernel does
/// not take these inputs (other devices or dtypes, no kernels built); the
/// caller then runs the plain ops.
torch::Tensor cross_entropy_rows(torch::Tensor& logits, const torch::Tensor& targets,
                                 int64_t ignore_index, bool grad);

}  // namespace remat::nn::detail
