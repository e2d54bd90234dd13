#include "remat/memory.h"

#include <c10/core/CachingDeviceAllocator.h>
#include <malloc.h>

#include <algorithm>

#include <unordered_set>

namespace remat {
namespace {

c10::CachingDeviceAllocator::DeviceStats cuda_stats(const torch::Device& device) {
  auto index = device.has_index() ? device.index() : c10::DeviceIndex(0);
  return c10::getDeviceAllocator(c10::kCUDA)->getDeviceStats(index);
}

constexpr auto kAggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);

void check_cuda(const torch::Device& device, const char* what) {
  TORCH_CHECK(device.is_cuda(), "remat::", what, ": got device ", device,
              "; peak memory is tracked for CUDA devices only (the C heap keeps no peak)");
}

}  // namespace

int64_t memory_allocated(const torch::Device& device) {
  if (device.is_cuda()) return cuda_stats(device).allocated_bytes[kAggregate].current;
  TORCH_CHECK(device.is_cpu(), "remat::memory_allocated: unsupported device ", device,
              "; valid devices are cpu and cuda");
  auto info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

int64_t max_memory_allocated(const torch::Device& device) {
  check_cuda(device, "max_memory_allocated");
  return cuda_stats(device).allocated_bytes[kAggregate].peak;
}

void reset_peak_memory_stats(const torch::Device& device) {
  check_cuda(device, "reset_peak_memory_stats");
  auto index = device.has_index() ? device.index() : c10::DeviceIndex(0);
  c10::getDeviceAllocator(c10::kCUDA)->resetPeakStats(index);
}

class CpuMemoryScope::Tracker : public c10::MemoryReportingInfoBase {
 public:
  void reportMemoryUsage(void*, int64_t alloc_size, size_t, size_t, c10::Device device) override {
    if (!device.is_cpu()) return;
    current_ += alloc_size;
    peak_ = std::max(peak_, current_);
  }
  bool memoryProfilingEnabled() const override { return true; }

  int64_t current_ = 0, peak_ = 0;
};

CpuMemoryScope::CpuMemoryScope()
    : tracker_(std::make_shared<Tracker>()),
      guard_(std::make_unique<c10::DebugInfoGuard>(c10::DebugInfoKind::PROFILER_STATE, tracker_)) {}

CpuMemoryScope::~CpuMemoryScope() = default;

int64_t CpuMemoryScope::current() const { return tracker_->current_; }
int64_t CpuMemoryScope::peak() const { return tracker_->peak_; }
void CpuMemoryScope::reset_peak() { tracker_->peak_ = tracker_->current_; }

int64_t tensor_bytes(const std::vector<torch::Tensor>& tensors) {
  std::unordered_set<const void*> seen;
  int64_t total = 0;
  for (const auto& t : tensors) {
    if (!t.defined() || !t.has_storage()) continue;
    const auto& storage = t.storage();
    if (seen.insert(storage.unsafeGetStorageImpl()).second) {
      total += static_cast<int64_t>(storage.nbytes());
    }
  }
  return total;
}

}  // namespace remat
