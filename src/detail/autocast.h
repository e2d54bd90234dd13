#pragma once

// The autocast state of the calling thread, and a scope that sets one: used
// by the checkpoint replay (the forward's state) and by the Trainer (bf16).

#include <ATen/autocast_mode.h>

namespace remat::detail {

struct AutocastState {
  bool cpu_enabled = false;
  at::ScalarType cpu_dtype = at::kBFloat16;
  bool cuda_enabled = false;
  at::ScalarType cuda_dtype = at::kHalf;
  bool cache_enabled = true;

  static AutocastState current() {
    AutocastState s;
    s.cpu_enabled = at::autocast::is_autocast_enabled(c10::DeviceType::CPU);
    s.cpu_dtype = at::autocast::get_autocast_dtype(c10::DeviceType::CPU);
    s.cuda_enabled = at::autocast::is_autocast_enabled(c10::DeviceType::CUDA);
    s.cuda_dtype = at::autocast::get_autocast_dtype(c10::DeviceType::CUDA);
    s.cache_enabled = at::autocast::is_autocast_cache_enabled();
    return s;
  }

  /// The current state with autocast to `dtype` switched on for `device`.
  static AutocastState enabled_for(c10::DeviceType device, at::ScalarType dtype) {
    auto s = current();
    if (device == c10::DeviceType::CUDA) {
      s.cuda_enabled = true;
      s.cuda_dtype = dtype;
    } else {
      s.cpu_enabled = true;
      s.cpu_dtype = dtype;
    }
    return s;
  }

  void apply() const {
    at::autocast::set_autocast_enabled(c10::DeviceType::CPU, cpu_enabled);
    at::autocast::set_autocast_dtype(c10::DeviceType::CPU, cpu_dtype);
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, cuda_enabled);
    at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, cuda_dtype);
    at::autocast::set_autocast_cache_enabled(cache_enabled);
  }
};

// Sets an autocast state for its lifetime. Like entering torch.autocast in
// Python, it counts a nesting level and clears the cast cache when the
// outermost level ends, so cached low-precision weight copies never outlive
// the scope; then it puts back the state found on entry.
class AutocastGuard {
 public:
  explicit AutocastGuard(const AutocastState& state) : entry_(AutocastState::current()) {
    state.apply();
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    entry_.apply();
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  AutocastState entry_;
};

}  // namespace remat::detail
