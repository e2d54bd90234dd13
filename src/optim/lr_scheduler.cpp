#include "remat/optim/lr_scheduler.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace remat::optim {
namespace {

using nlohmann::json;

constexpr double kPi = 3.141592653589793;  // Python's math.pi

// What a schedule is built from. `total` is -1 when num_training_steps is
// unset (only for types that do not need it).
struct ScheduleArgs {
  std::string name;
  int64_t warmup = 0;
  int64_t total = -1;
  json kwargs;
  double initial_lr = 0.0;
};

std::string join(const std::vector<std::string>& items) {
  std::ostringstream out;
  for (size_t i = 0; i < items.size(); ++i) out << (i ? ", " : "") << items[i];
  return items.empty() ? "(none)" : out.str();
}

// A kwarg as a number; absent and JSON null give nullopt.
std::optional<double> number_kwarg(const ScheduleArgs& args, const char* key) {
  auto it = args.kwargs.find(key);
  if (it == args.kwargs.end() || it->is_null()) return std::nullopt;
  TORCH_CHECK(it->is_number(), "lr_scheduler_kwargs[\"", key, "\"] of '", args.name,
              "' must be a number, got ", it->dump());
  return it->get<double>();
}

double number_kwarg(const ScheduleArgs& args, const char* key, double fallback) {
  return number_kwarg(args, key).value_or(fallback);
}

std::string string_kwarg(const ScheduleArgs& args, const char* key, const std::string& fallback,
                         const std::vector<std::string>& valid) {
  auto it = args.kwargs.find(key);
  if (it == args.kwargs.end() || it->is_null()) return fallback;
  TORCH_CHECK(it->is_string(), "lr_scheduler_kwargs[\"", key, "\"] of '", args.name,
              "' must be a string, got ", it->dump());
  auto value = it->get<std::string>();
  TORCH_CHECK(std::find(valid.begin(), valid.end(), value) != valid.end(), "lr_scheduler_kwargs[\"",
              key, "\"] of '", args.name, "' is \"", value, "\"; valid values: ", join(valid));
  return value;
}

// Python's float modulo: the result takes the sign of the divisor.
double python_mod(double x, double y) {
  double mod = std::fmod(x, y);
  if (mod != 0.0) {
    if ((y < 0) != (mod < 0)) mod += y;
  } else {
    mod = std::copysign(0.0, y);
  }
  return mod;
}

double linear_warmup(int64_t step, int64_t warmup) {
  return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
}

double decay_progress(int64_t step, int64_t warmup, int64_t total) {
  return static_cast<double>(step - warmup) /
         static_cast<double>(std::max<int64_t>(1, total - warmup));
}

// min_lr_rate from exactly one of min_lr (absolute) and min_lr_rate.
double min_lr_rate(const ScheduleArgs& args) {
  auto min_lr = number_kwarg(args, "min_lr");
  auto rate = number_kwarg(args, "min_lr_rate");
  TORCH_CHECK(!(min_lr && rate), "'", args.name,
              "' takes one of lr_scheduler_kwargs min_lr or min_lr_rate, got both (min_lr=",
              *min_lr, ", min_lr_rate=", *rate, ")");
  TORCH_CHECK(min_lr || rate, "'", args.name,
              "' needs one of lr_scheduler_kwargs min_lr or min_lr_rate, got neither");
  return min_lr ? *min_lr / args.initial_lr : *rate;
}

LRLambda constant(const ScheduleArgs&) {
  return [](int64_t) { return 1.0; };
}

LRLambda constant_with_warmup(const ScheduleArgs& args) {
  return [warmup = args.warmup](int64_t step) {
    return step < warmup ? linear_warmup(step, warmup) : 1.0;
  };
}

LRLambda linear(const ScheduleArgs& args) {
  return [warmup = args.warmup, total = args.total](int64_t step) {
    if (step < warmup) return linear_warmup(step, warmup);
    return std::max(0.0, static_cast<double>(total - step) /
                             static_cast<double>(std::max<int64_t>(1, total - warmup)));
  };
}

LRLambda cosine_with_floor(const ScheduleArgs& args, double floor) {
  double cycles = number_kwarg(args, "num_cycles", 0.5);
  return [warmup = args.warmup, total = args.total, cycles, floor](int64_t step) {
    if (step < warmup) return linear_warmup(step, warmup);
    double progress = decay_progress(step, warmup, total);
    double factor = 0.5 * (1.0 + std::cos(kPi * cycles * 2.0 * progress));
    return std::max(0.0, factor * (1 - floor) + floor);
  };
}

LRLambda cosine(const ScheduleArgs& args) { return cosine_with_floor(args, 0.0); }

LRLambda cosine_with_min_lr(const ScheduleArgs& args) {
  return cosine_with_floor(args, min_lr_rate(args));
}

LRLambda cosine_with_restarts(const ScheduleArgs& args) {
  double cycles = number_kwarg(args, "num_cycles", 1.0);
  return [warmup = args.warmup, total = args.total, cycles](int64_t step) {
    if (step < warmup) return linear_warmup(step, warmup);
    double progress = decay_progress(step, warmup, total);
    if (progress >= 1.0) return 0.0;
    return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * python_mod(cycles * progress, 1.0))));
  };
}

LRLambda cosine_warmup_with_min_lr(const ScheduleArgs& args) {
  double floor = min_lr_rate(args);
  double cycles = number_kwarg(args, "num_cycles", 0.5);
  auto warmup_lr_rate = number_kwarg(args, "warmup_lr_rate");
  return [warmup = static_cast<double>(args.warmup), total = static_cast<double>(args.total),
          cycles, floor, warmup_lr_rate](int64_t step_count) {
    double step = static_cast<double>(step_count);
    if (step < warmup) {
      if (!warmup_lr_rate) return (step + 1.0) / std::max(1.0, warmup);
      return *warmup_lr_rate + (1.0 - *warmup_lr_rate) * step / std::max(1.0, warmup - 1);
    }
    double progress = (step - warmup + 1.0) / std::max(1.0, total - warmup);
    double factor = 0.5 * (1.0 + std::cos(kPi * cycles * 2.0 * progress));
    return std::max(0.0, factor * (1 - floor) + floor);
  };
}

LRLambda polynomial(const ScheduleArgs& args) {
  double lr_end = number_kwarg(args, "lr_end", 1e-7);
  double power = number_kwarg(args, "power", 1.0);
  double lr_init = args.initial_lr;
  TORCH_CHECK(lr_init > lr_end, "lr_end (", lr_end, ") must be smaller than initial lr (", lr_init,
              ")");
  TORCH_CHECK(power >= 0, "lr_scheduler_kwargs[\"power\"] of 'polynomial' must be >= 0, got ",
              power);
  TORCH_CHECK(
      args.warmup != args.total,
      "'polynomial' decays over num_training_steps - num_warmup_steps steps, which must not "
      "be 0; got num_warmup_steps = num_training_steps = ",
      args.total);
  return [warmup = args.warmup, total = args.total, lr_end, power, lr_init](int64_t step) {
    if (step < warmup) return linear_warmup(step, warmup);
    if (step > total) return lr_end / lr_init;
    double pct_remaining =
        1 - static_cast<double>(step - warmup) / static_cast<double>(total - warmup);
    return ((lr_init - lr_end) * std::pow(pct_remaining, power) + lr_end) / lr_init;
  };
}

LRLambda inverse_sqrt(const ScheduleArgs& args) {
  double fallback = args.warmup ? static_cast<double>(args.warmup) : 10000.0;
  double timescale = number_kwarg(args, "timescale", fallback);
  TORCH_CHECK(timescale > 0,
              "lr_scheduler_kwargs[\"timescale\"] of 'inverse_sqrt' must be > 0, got ", timescale);
  return [warmup = args.warmup, timescale](int64_t step) {
    if (step < warmup) return linear_warmup(step, warmup);
    double shift = timescale - static_cast<double>(warmup);
    return 1.0 / std::sqrt((static_cast<double>(step) + shift) / timescale);
  };
}

// The warmup-stable-decay shapes: "linear", "cosine" or "1-sqrt" of progress in [0, 1].
double wsd_shape(const std::string& type, double progress, double cycles, bool warmup) {
  if (type == "linear") return warmup ? progress : 1.0 - progress;
  if (type == "cosine") {
    return warmup ? 0.5 * (1.0 - std::cos(kPi * progress))
                  : 0.5 * (1.0 + std::cos(kPi * cycles * 2.0 * progress));
  }
  return warmup ? 1.0 - std::sqrt(1.0 - progress) : 1.0 - std::sqrt(progress);
}

LRLambda warmup_stable_decay(const ScheduleArgs& args) {
  const std::vector<std::string> shapes = {"linear", "cosine", "1-sqrt"};
  auto decay_steps = number_kwarg(args, "num_decay_steps");
  TORCH_CHECK(decay_steps, "'warmup_stable_decay' needs lr_scheduler_kwargs[\"num_decay_steps\"]");
  auto stable_steps = number_kwarg(args, "num_stable_steps");
  TORCH_CHECK(stable_steps || args.total >= 0,
              "'warmup_stable_decay' needs num_training_steps or "
              "lr_scheduler_kwargs[\"num_stable_steps\"]");
  double warmup = static_cast<double>(args.warmup);
  double decay = *decay_steps;
  double stable = stable_steps.value_or(static_cast<double>(args.total) - warmup - decay);
  auto warmup_type = string_kwarg(args, "warmup_type", "linear", shapes);
  auto decay_type = string_kwarg(args, "decay_type", "cosine", shapes);
  double min_ratio = number_kwarg(args, "min_lr_ratio", 0.0);
  double cycles = number_kwarg(args, "num_cycles", 0.5);
  return [=](int64_t step_count) {
    double step = static_cast<double>(step_count);
    if (step < warmup) {
      double progress = step / std::max(1.0, warmup);
      double factor = wsd_shape(warmup_type, progress, cycles, /*warmup=*/true);
      return std::max(0.0, factor * (1.0 - min_ratio) + min_ratio);
    }
    if (step < warmup + stable) return 1.0;
    if (step < warmup + stable + decay) {
      double progress = (step - warmup - stable) / std::max(1.0, decay);
      double factor = wsd_shape(decay_type, progress, cycles, /*warmup=*/false);
      return std::max(0.0, factor * (1.0 - min_ratio) + min_ratio);
    }
    return min_ratio;
  };
}

struct ScheduleType {
  std::string name;
  std::vector<std::string> kwargs;
  bool needs_training_steps;
  LRLambda (*build)(const ScheduleArgs&);
};

const std::vector<ScheduleType>& schedule_table() {
  static const std::vector<ScheduleType> table = {
      {"linear", {}, true, linear},
      {"cosine", {"num_cycles"}, true, cosine},
      {"cosine_with_restarts", {"num_cycles"}, true, cosine_with_restarts},
      {"polynomial", {"lr_end", "power"}, true, polynomial},
      {"constant", {}, false, constant},
      {"constant_with_warmup", {}, false, constant_with_warmup},
      {"inverse_sqrt", {"timescale"}, false, inverse_sqrt},
      {"cosine_with_min_lr", {"num_cycles", "min_lr", "min_lr_rate"}, true, cosine_with_min_lr},
      {"cosine_warmup_with_min_lr",
       {"num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"},
       true,
       cosine_warmup_with_min_lr},
      {"warmup_stable_decay",
       {"num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio",
        "num_cycles"},
       false,
       warmup_stable_decay},
  };
  return table;
}

const ScheduleType& find_type(const std::string& name) {
  const auto& table = schedule_table();
  auto it = std::find_if(table.begin(), table.end(), [&](const auto& t) { return t.name == name; });
  if (it != table.end()) return *it;
  TORCH_CHECK(name != "reduce_lr_on_plateau" && name != "greedy", "lr_scheduler_type '", name,
              "' adapts to an evaluation metric and is not supported; valid types: ",
              join(scheduler_types()));
  TORCH_CHECK(false, "Invalid lr_scheduler_type '", name,
              "'; valid types: ", join(scheduler_types()));
}

void check_kwargs(const ScheduleType& type, const json& kwargs) {
  TORCH_CHECK(kwargs.is_object() || kwargs.is_null(),
              "lr_scheduler_kwargs must be a JSON object, got ", kwargs.dump());
  if (kwargs.is_null()) return;
  for (const auto& item : kwargs.items()) {
    bool known = std::find(type.kwargs.begin(), type.kwargs.end(), item.key()) != type.kwargs.end();
    TORCH_CHECK(known, "Unknown lr_scheduler_kwargs key \"", item.key(), "\" for '", type.name,
                "'; valid keys: ", join(type.kwargs));
  }
}

}  // namespace

const std::vector<std::string>& scheduler_types() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> result;
    for (const auto& type : schedule_table()) result.push_back(type.name);
    return result;
  }();
  return names;
}

LRLambda get_lr_lambda(const LRSchedulerOptions& options, double initial_lr) {
  const auto& type = find_type(options.name());
  check_kwargs(type, options.scheduler_specific_kwargs());
  TORCH_CHECK(options.num_warmup_steps() >= 0, "num_warmup_steps must be >= 0, got ",
              options.num_warmup_steps());
  const auto& total = options.num_training_steps();
  TORCH_CHECK(!total || *total >= 0, "num_training_steps must be >= 0, got ", total.value_or(0));
  TORCH_CHECK(total || !type.needs_training_steps, "lr_scheduler_type '", type.name,
              "' needs num_training_steps");
  ScheduleArgs args;
  args.name = type.name;
  args.warmup = options.num_warmup_steps();
  args.total = total.value_or(-1);
  args.kwargs = options.scheduler_specific_kwargs().is_null() ? json::object()
                                                              : options.scheduler_specific_kwargs();
  args.initial_lr = initial_lr;
  return type.build(args);
}

json LRSchedulerState::to_json() const {
  return json{{"last_epoch", last_epoch}, {"base_lrs", base_lrs}};
}

LRSchedulerState LRSchedulerState::from_json(const json& state) {
  TORCH_CHECK(state.is_object() && state.contains("last_epoch") && state.contains("base_lrs"),
              "LRScheduler state must be a JSON object with \"last_epoch\" and \"base_lrs\", got ",
              state.dump());
  TORCH_CHECK(state["last_epoch"].is_number_integer(),
              "LRScheduler state \"last_epoch\" must be an integer, got ",
              state["last_epoch"].dump());
  const auto& base_lrs = state["base_lrs"];
  bool numbers = base_lrs.is_array() && std::all_of(base_lrs.begin(), base_lrs.end(),
                                                    [](const json& v) { return v.is_number(); });
  TORCH_CHECK(numbers, "LRScheduler state \"base_lrs\" must be an array of numbers, got ",
              base_lrs.dump());
  LRSchedulerState result;
  result.last_epoch = state["last_epoch"].get<int64_t>();
  result.base_lrs = base_lrs.get<std::vector<double>>();
  return result;
}

LRScheduler::LRScheduler(torch::optim::Optimizer& optimizer, const LRSchedulerOptions& options)
    : optimizer_(&optimizer), lr_lambda_(get_lr_lambda(options, optimizer.defaults().get_lr())) {
  for (const auto& group : optimizer.param_groups()) base_lrs_.push_back(group.options().get_lr());
  apply();
}

void LRScheduler::step() {
  ++last_epoch_;
  apply();
}

LRSchedulerState LRScheduler::state() const { return {last_epoch_, base_lrs_}; }

void LRScheduler::load_state(const LRSchedulerState& state) {
  auto groups = optimizer_->param_groups().size();
  TORCH_CHECK(state.base_lrs.size() == groups, "LRScheduler state has ", state.base_lrs.size(),
              " base_lrs but the optimizer has ", groups, " param groups");
  TORCH_CHECK(state.last_epoch >= 0, "LRScheduler state last_epoch must be >= 0, got ",
              state.last_epoch);
  last_epoch_ = state.last_epoch;
  base_lrs_ = state.base_lrs;
  apply();
}

void LRScheduler::apply() {
  double factor = lr_lambda_(last_epoch_);
  auto& groups = optimizer_->param_groups();
  TORCH_CHECK(groups.size() == base_lrs_.size(), "LRScheduler was built for ", base_lrs_.size(),
              " param groups but the optimizer now has ", groups.size());
  last_lr_.clear();
  for (size_t i = 0; i < groups.size(); ++i) {
    groups[i].options().set_lr(base_lrs_[i] * factor);
    last_lr_.push_back(base_lrs_[i] * factor);
  }
}

}  // namespace remat::optim
