#pragma once

// Gradient clipping, one implementation for every path of the Trainer: a
// single process, DDP (whose ranks hold the full, averaged gradients) and
// FSDP (whose ranks sum their shards' squares first). Defined in
// src/distributed/data_parallel.cpp.

#include <torch/torch.h>

#include <vector>

namespace remat::detail {

/// The sum of the squares of the gradients of `tensors`, in float64 on
/// `device` (no host synchronization); tensors without a gradient count 0.
torch::Tensor gradient_norm_squared(const std::vector<torch::Tensor>& tensors,
                                    const torch::Device& device);

/// Scales the gradients by max_norm / (norm + 1e-6), clamped at 1, as
/// torch.nn.utils.clip_grad_norm_ does. A non-finite `norm` leaves them
/// alone (the step then fails or is skipped), and so does an infinite
/// max_norm (no clipping).
void scale_gradients(const std::vector<torch::Tensor>& tensors, const torch::Tensor& norm,
                     double max_norm);

/// Both: returns the 2-norm of all the gradients (a float64 device tensor)
/// after clipping them to `max_norm` (infinite: the norm only).
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& tensors, double max_norm,
                             const torch::Device& device);

}  // namespace remat::detail
