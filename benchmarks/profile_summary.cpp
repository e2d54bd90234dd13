#include "profile_summary.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <map>
#include <utility>

namespace remat_bench {

namespace {

struct Rule {
  const char* category;
  std::vector<std::string_view> patterns;  // lower case
};

const std::vector<Rule>& rules() {
  static const std::vector<Rule> table = {
      {"attention", {"flash", "fmha", "cudnn", "attention", "sdpa"}},
      {"optimizer", {"adam", "multi_tensor_apply", "_foreach_", "lpnorm"}},
      {"gemm",
       {"gemm", "gemv", "cutlass", "nvjet", "xmma", "cublas", "splitkreduce", "sm80_", "sm90_",
        "sm100_", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
        "aten::linear"}},
      {"norm", {"layer_norm", "layernorm", "rms_norm", "rmsnorm", "gammabeta", "rowwisemoments"}},
      {"loss", {"softmax", "logsumexp", "cross_entropy", "nll"}},
      {"reduction", {"reduce_kernel"}},
      {"elementwise", {"elementwise", "vectorized", "unrolled", "index", "cat", "copy", "fill"}},
  };
  return table;
}

constexpr const char* kMemory = "memcpy/memset";
constexpr const char* kOther = "other";

bool is_device(EventKind kind) { return kind != EventKind::kCpuOp; }

// At most `chars` bytes, cut at a UTF-8 character boundary, "..." marking a cut.
std::string truncate(const std::string& name, size_t chars) {
  if (name.size() <= chars || chars < 4) return name;
  size_t end = chars - 3;
  while (end > 0 && (static_cast<unsigned char>(name[end]) & 0xC0) == 0x80) --end;
  return name.substr(0, end) + "...";
}

std::string fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  return buffer;
}

}  // namespace

const std::vector<std::string>& profile_categories() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out = {kMemory};
    for (const auto& rule : rules()) out.emplace_back(rule.category);
    out.emplace_back(kOther);
    return out;
  }();
  return names;
}

std::string categorize(std::string_view name, EventKind kind) {
  if (kind == EventKind::kMemcpy || kind == EventKind::kMemset) return kMemory;
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  // Kineto names copies and sets "Memcpy HtoD (...)", "Memset (Device)".
  if (kind == EventKind::kKernel &&
      (lower.rfind("memcpy", 0) == 0 || lower.rfind("memset", 0) == 0)) {
    return kMemory;
  }
  for (const auto& rule : rules()) {
    for (const auto pattern : rule.patterns) {
      if (lower.find(pattern) != std::string::npos) return rule.category;
    }
  }
  return kOther;
}

int64_t union_ns(std::vector<std::pair<int64_t, int64_t>> start_duration) {
  std::sort(start_duration.begin(), start_duration.end());
  int64_t covered = 0;
  bool open = false;
  int64_t begin = 0, end = 0;
  for (const auto& [start, duration] : start_duration) {
    const int64_t stop = start + std::max<int64_t>(duration, 0);
    if (open && start <= end) {
      end = std::max(end, stop);
      continue;
    }
    if (open) covered += end - begin;
    begin = start;
    end = stop;
    open = true;
  }
  if (open) covered += end - begin;
  return covered;
}

std::vector<ProfileEvent> top_level_aten_ops(const std::vector<ProfileEvent>& events) {
  std::map<uint64_t, std::vector<const ProfileEvent*>> by_thread;
  for (const auto& e : events) {
    if (e.kind == EventKind::kCpuOp && e.name.rfind("aten::", 0) == 0) {
      by_thread[e.thread].push_back(&e);
    }
  }
  std::vector<ProfileEvent> out;
  for (auto& [thread, ops] : by_thread) {
    // A parent starts no later than its children and, at the same start,
    // lasts longer.
    std::sort(ops.begin(), ops.end(), [](const ProfileEvent* a, const ProfileEvent* b) {
      if (a->start_ns != b->start_ns) return a->start_ns < b->start_ns;
      return a->duration_ns > b->duration_ns;
    });
    bool open = false;
    int64_t end = 0;
    for (const auto* op : ops) {
      if (open && op->start_ns < end) continue;  // inside the current top-level operator
      out.push_back(*op);
      end = op->start_ns + op->duration_ns;
      open = true;
    }
  }
  std::sort(out.begin(), out.end(), [](const ProfileEvent& a, const ProfileEvent& b) {
    return a.start_ns != b.start_ns ? a.start_ns < b.start_ns : a.thread < b.thread;
  });
  return out;
}

ProfileSummary summarize_profile(const std::vector<ProfileEvent>& events, int64_t steps,
                                 int64_t wall_ns, const SummaryOptions& options) {
  ProfileSummary s;
  s.steps = std::max<int64_t>(steps, 1);
  const bool device =
      std::any_of(events.begin(), events.end(), [](const auto& e) { return is_device(e.kind); });
  s.source = device ? "device" : "cpu_ops";
  std::vector<ProfileEvent> counted;
  if (device) {
    for (const auto& e : events) {
      if (is_device(e.kind)) counted.push_back(e);
    }
  } else {
    counted = top_level_aten_ops(events);
  }

  const double per_step = static_cast<double>(s.steps);
  const auto ms = [&](double ns) { return ns / 1e6 / per_step; };
  struct Sum {
    double ns = 0;
    int64_t count = 0;
    std::string category;
  };
  std::map<std::string, Sum> by_category, by_name;
  std::vector<std::pair<int64_t, int64_t>> intervals;
  double total_ns = 0;
  for (const auto& e : counted) {
    const auto category = categorize(e.name, e.kind);
    const double ns = static_cast<double>(std::max<int64_t>(e.duration_ns, 0));
    auto& c = by_category[category];
    c.ns += ns;
    ++c.count;
    auto& n = by_name[e.name];
    n.ns += ns;
    ++n.count;
    n.category = category;
    intervals.emplace_back(e.start_ns, e.duration_ns);
    total_ns += ns;
  }
  s.wall_ms_per_step = ms(static_cast<double>(wall_ns));
  s.total_ms_per_step = ms(total_ns);
  s.busy_ms_per_step = ms(static_cast<double>(union_ns(std::move(intervals))));
  s.idle_percent =
      wall_ns > 0 ? std::max(0.0, 100.0 * (1.0 - s.busy_ms_per_step / s.wall_ms_per_step)) : 0.0;
  s.launches_per_step = static_cast<double>(counted.size()) / per_step;
  for (const auto& name : profile_categories()) {
    const auto it = by_category.find(name);
    const Sum sum = it == by_category.end() ? Sum{} : it->second;
    s.categories.push_back({name, ms(sum.ns), total_ns > 0 ? 100.0 * sum.ns / total_ns : 0.0,
                            static_cast<double>(sum.count) / per_step});
  }
  std::vector<std::pair<std::string, Sum>> names(by_name.begin(), by_name.end());
  std::stable_sort(names.begin(), names.end(),
                   [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  for (size_t i = 0; i < names.size() && i < options.top; ++i) {
    const auto& [name, sum] = names[i];
    s.top.push_back({truncate(name, options.name_chars), sum.category,
                     static_cast<double>(sum.count) / per_step, ms(sum.ns),
                     sum.count > 0 ? sum.ns / 1e3 / static_cast<double>(sum.count) : 0.0});
  }
  return s;
}

nlohmann::json to_json(const ProfileSummary& s) {
  nlohmann::json categories = nlohmann::json::array(), top = nlohmann::json::array();
  for (const auto& c : s.categories) {
    categories.push_back({{"category", c.category},
                          {"ms_per_step", c.ms_per_step},
                          {"percent", c.percent},
                          {"count_per_step", c.count_per_step}});
  }
  for (const auto& t : s.top) {
    top.push_back({{"name", t.name},
                   {"category", t.category},
                   {"count_per_step", t.count_per_step},
                   {"ms_per_step", t.ms_per_step},
                   {"mean_us", t.mean_us}});
  }
  return {{"source", s.source},
          {"steps", s.steps},
          {"wall_ms_per_step", s.wall_ms_per_step},
          {"total_ms_per_step", s.total_ms_per_step},
          {"busy_ms_per_step", s.busy_ms_per_step},
          {"idle_percent", s.idle_percent},
          {"launches_per_step", s.launches_per_step},
          {"categories", categories},
          {"top", top}};
}

std::string format_profile(const ProfileSummary& s) {
  const bool device = s.source == "device";
  std::string out;
  char line[256];
  std::snprintf(line, sizeof(line),
                "%d profiled step%s: wall %.2f ms/step, %s busy %.2f ms/step (idle %.1f%%), "
                "%s %.2f ms/step, %.0f %s/step\n",
                static_cast<int>(s.steps), s.steps == 1 ? "" : "s", s.wall_ms_per_step,
                device ? "GPU" : "CPU-op", s.busy_ms_per_step, s.idle_percent,
                device ? "kernel time" : "op time", s.total_ms_per_step, s.launches_per_step,
                device ? "launches" : "ops");
  out += line;
  std::snprintf(line, sizeof(line), "  %-14s %10s %7s %11s\n", "category", "ms/step", "%",
                "count/step");
  out += line;
  for (const auto& c : s.categories) {
    if (c.count_per_step == 0) continue;
    std::snprintf(line, sizeof(line), "  %-14s %10s %7s %11s\n", c.category.c_str(),
                  fixed(c.ms_per_step, 3).c_str(), fixed(c.percent, 1).c_str(),
                  fixed(c.count_per_step, 1).c_str());
    out += line;
  }
  std::snprintf(line, sizeof(line), "  %-11s %10s %10s %9s  %s\n", "top", "ms/step", "count/step",
                "mean us", device ? "kernel" : "operator");
  out += line;
  for (const auto& t : s.top) {
    std::snprintf(line, sizeof(line), "  %-11s %10s %10s %9s  ", t.category.c_str(),
                  fixed(t.ms_per_step, 3).c_str(), fixed(t.count_per_step, 1).c_str(),
                  fixed(t.mean_us, 1).c_str());
    out += line;
    out += t.name + "\n";
  }
  return out;
}

}  // namespace remat_bench
