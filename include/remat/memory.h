#pragma once

/// \file
/// Memory measurements in bytes, for reports and benchmarks.
/// \code
///   remat::reset_peak_memory_stats(device);
///   train_step();
///   auto peak_mib = remat::max_memory_allocated(device) / (1 << 20);
/// \endcode

#include <torch/types.h>

#include <cstdint>

namespace remat {

/// Bytes currently held by tensors on `device`. CUDA: the caching
/// allocator's allocated bytes (as torch.cuda.memory_allocated). CPU: the
/// bytes in use in the C heap (all allocations of the process, tensors among
/// them), so differences between two points measure what was allocated in
/// between.
int64_t memory_allocated(const torch::Device& device);

/// Peak of memory_allocated() since the last reset_peak_memory_stats().
/// CUDA only: the C heap keeps no peak, so a CPU device is an error.
int64_t max_memory_allocated(const torch::Device& device);

/// Starts a new peak window for max_memory_allocated(). CUDA only.
void reset_peak_memory_stats(const torch::Device& device);

/// Bytes held by the storage of `tensors`, each storage counted once.
int64_t tensor_bytes(const std::vector<torch::Tensor>& tensors);

}  // namespace remat
