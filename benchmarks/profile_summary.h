// Where a training step's time goes: the events of a profiled run (device
// kernels, or CPU operators where there are none) grouped into categories by
// name, per profiled step. Pure: remat-bench converts the profiler's events,
// this summarizes them (and is unit-tested without torch).
//
// Categories, the first whose rule matches the lower-cased name:
//   memcpy/memset  a memory copy or set activity (not a kernel)
//   attention      flash, fmha, cudnn, attention, sdpa
//   optimizer      adam, multi_tensor_apply, _foreach_, lpnorm (AdamW, fused or
//                  multi-tensor, and the gradient clipping's norm)
//   gemm           gemm, gemv, cutlass, nvjet, xmma, cublas, splitkreduce, sm80_,
//                  sm90_, sm100_; on CPU aten::mm, addmm, bmm, baddbmm, matmul,
//                  linear
//   norm           layer_norm, layernorm, rms_norm, rmsnorm, gammabeta,
//                  rowwisemoments
//   loss           softmax, logsumexp, cross_entropy, nll
//   reduction      reduce_kernel
//   elementwise    elementwise, vectorized, unrolled, index, cat, copy, fill
//   other          the rest
// Attention comes before gemm because fmha and cuDNN kernel names also say
// cutlass or sm90_. Names are all there is: an operator built of generic
// kernels (the chunked loss's logsumexp on CUDA, an RMSNorm of pointwise
// operations and a mean) counts under those kernels' categories.

#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace remat_bench {

enum class EventKind {
  kKernel,  // a device kernel
  kMemcpy,  // a device memory copy
  kMemset,  // a device memory set
  kCpuOp,   // a CPU operator (aten::mm, an autograd node, ...)
};

struct ProfileEvent {
  std::string name;
  int64_t start_ns = 0;
  int64_t duration_ns = 0;
  EventKind kind = EventKind::kKernel;
  uint64_t thread = 0;  // CPU operators nest per thread
};

// The categories, in the order of the rules above.
const std::vector<std::string>& profile_categories();

// The category of a kernel or operator name (kind decides memcpy/memset).
std::string categorize(std::string_view name, EventKind kind = EventKind::kKernel);

// Nanoseconds covered by at least one of the [start, start + duration)
// intervals (overlapping intervals count once).
int64_t union_ns(std::vector<std::pair<int64_t, int64_t>> start_duration);

// The aten:: operators not inside another aten:: operator on their thread
// (autograd nodes and other wrappers are dropped; their aten:: children stay).
std::vector<ProfileEvent> top_level_aten_ops(const std::vector<ProfileEvent>& events);

struct CategoryTime {
  std::string category;
  double ms_per_step = 0;
  double percent = 0;  // of the summed time of all counted events
  double count_per_step = 0;
};

struct TopEvent {
  std::string name;  // truncated
  std::string category;
  double count_per_step = 0;
  double ms_per_step = 0;
  double mean_us = 0;
};

struct ProfileSummary {
  std::string source;  // "device" (kernels, memcpy, memset) or "cpu_ops" (top-level aten::)
  int64_t steps = 0;
  double wall_ms_per_step = 0;
  double total_ms_per_step = 0;          // summed durations of the counted events
  double busy_ms_per_step = 0;           // their union
  double idle_percent = 0;               // 100 * (1 - busy / wall), at least 0
  double launches_per_step = 0;          // counted events per step
  std::vector<CategoryTime> categories;  // every category, in profile_categories() order
  std::vector<TopEvent> top;             // by total time, longest first
};

struct SummaryOptions {
  size_t top = 15;
  size_t name_chars = 90;
};

// Summarizes the events of `steps` profiled steps that took wall_ns in all:
// the device events if there are any, else the top-level aten:: operators.
ProfileSummary summarize_profile(const std::vector<ProfileEvent>& events, int64_t steps,
                                 int64_t wall_ns, const SummaryOptions& options = {});

nlohmann::json to_json(const ProfileSummary& summary);

// The compact table remat-bench prints for one policy.
std::string format_profile(const ProfileSummary& summary);

}  // namespace remat_bench
