#pragma once

/// \file
/// Memory measurements in bytes, for reports and benchmarks.
/// \code
///   remat::reset_peak_memory_stats(device);
///   train_step();
///   auto peak_mib = remat::max_memory_allocated(device) / (1 << 20);
/// \endcode

#include <c10/util/ThreadLocalDebugInfo.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>

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

/// Tensor bytes the CPU allocator hands out on this thread while the scope
/// lives (CPU autograd runs backward on the calling thread, so a training
/// step's forward and backward are both seen). It listens on c10's
/// memory-reporting hook, the one torch.profiler's profile_memory uses, so
/// every allocation and free is counted, none sampled. The CPU counterpart
/// of max_memory_allocated():
/// \code
///   remat::CpuMemoryScope scope;
///   loss = model->forward(in).loss;
///   loss.backward();
///   auto peak_mib = scope.peak() >> 20;  // above the scope's start
/// \endcode
/// Scopes do not nest: an inner scope hides the outer one while it lives.
class CpuMemoryScope {
 public:
  CpuMemoryScope();
  ~CpuMemoryScope();
  CpuMemoryScope(const CpuMemoryScope&) = delete;
  CpuMemoryScope& operator=(const CpuMemoryScope&) = delete;

  /// Bytes allocated since the scope began minus those of them freed
  /// (freeing a tensor allocated before the scope does not count).
  int64_t current() const;
  /// Highest current() since the scope began or reset_peak().
  int64_t peak() const;
  /// Starts a new peak window at the current value.
  void reset_peak();

 private:
  class Tracker;
  std::shared_ptr<Tracker> tracker_;
  std::unique_ptr<c10::DebugInfoGuard> guard_;
};

/// Bytes held by the storage of `tensors`, each storage counted once.
int64_t tensor_bytes(const std::vector<torch::Tensor>& tensors);

}  // namespace remat
