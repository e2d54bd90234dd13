#pragma once

/// \file
/// Learning-rate schedules with Hugging Face's names and formulas
/// (`transformers.get_scheduler`), and a scheduler that drives a
/// torch::optim::Optimizer the way torch's LambdaLR does.
/// \code
///   remat::optim::LRScheduler scheduler(
///       optimizer, remat::optim::LRSchedulerOptions("cosine").num_warmup_steps(100)
///                      .num_training_steps(10000));
///   for (int64_t step = 0; step < 10000; ++step) {
///     ...; optimizer.step();
///     scheduler.step();
///   }
/// \endcode

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace remat::optim {

/// Which schedule, over how many steps: the `lr_scheduler_type`,
/// `warmup_steps` (as a step count) and `lr_scheduler_kwargs` of Hugging
/// Face's TrainingArguments.
///
/// Example: `LRSchedulerOptions("polynomial").num_warmup_steps(10).num_training_steps(100)
///               .scheduler_specific_kwargs({{"power", 2.0}, {"lr_end", 1e-6}})`
struct LRSchedulerOptions {
  /* implicit */ LRSchedulerOptions(std::string name = "linear") : name_(std::move(name)) {}

  /// The schedule type, one of scheduler_types(). Default "linear".
  TORCH_ARG(std::string, name);

  /// Steps of linear warmup from 0 to the initial learning rate. Default 0;
  /// must be at least 0. "constant" ignores it, as in Hugging Face.
  TORCH_ARG(int64_t, num_warmup_steps) = 0;

  /// Total training steps. Required by every type but "constant",
  /// "constant_with_warmup" and "inverse_sqrt" (and "warmup_stable_decay"
  /// when its kwargs give `num_stable_steps`); at least 0. Default unset.
  TORCH_ARG(std::optional<int64_t>, num_training_steps) = std::nullopt;

  /// The type's extra arguments, a JSON object (Hugging Face's
  /// `lr_scheduler_kwargs`; `null` values count as absent). Default `{}`.
  ///   cosine, cosine_with_restarts: `num_cycles` (0.5; 1 for restarts)
  ///   cosine_with_min_lr: `num_cycles`, exactly one of `min_lr` (absolute) or
  ///     `min_lr_rate` (fraction of the optimizer's default lr)
  ///   cosine_warmup_with_min_lr: those, and `warmup_lr_rate`
  ///   polynomial: `lr_end` (1e-7, below the optimizer's default lr), `power` (1.0, >= 0)
  ///   inverse_sqrt: `timescale` (> 0; default num_warmup_steps, or 10000 if that is 0)
  ///   warmup_stable_decay: `num_decay_steps` (required), `num_stable_steps`,
  ///     `warmup_type` and `decay_type` ("linear", "cosine" or "1-sqrt"),
  ///     `min_lr_ratio` (0), `num_cycles` (0.5)
  /// A key the type does not take is an error, also for "constant" and
  /// "constant_with_warmup", which Hugging Face lets pass silently.
  TORCH_ARG(nlohmann::json, scheduler_specific_kwargs) = nlohmann::json::object();
};

/// The schedule types remat implements, in Hugging Face's order: linear,
/// cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup,
/// inverse_sqrt, cosine_with_min_lr, cosine_warmup_with_min_lr,
/// warmup_stable_decay. (Hugging Face's metric-driven reduce_lr_on_plateau
/// and greedy are not among them.)
const std::vector<std::string>& scheduler_types();

/// A schedule: the factor applied to each param group's initial learning
/// rate after `step` scheduler steps (torch's `lr_lambda`).
using LRLambda = std::function<double(int64_t step)>;

/// The multiplier of the schedule `options` describes, after checking the
/// type and its arguments. `initial_lr` is the optimizer's default learning
/// rate, which "polynomial" (`lr_end`) and "cosine_with_min_lr" (`min_lr`)
/// divide by, as Hugging Face does.
///
/// Example: `get_lr_lambda(LRSchedulerOptions("linear").num_training_steps(10), 1e-3)(5) == 0.5`
LRLambda get_lr_lambda(const LRSchedulerOptions& options, double initial_lr);

/// What LRScheduler needs to resume exactly: the steps taken and each param
/// group's initial learning rate (torch's `last_epoch` and `base_lrs`).
struct LRSchedulerState {
  int64_t last_epoch = 0;
  /// Each parameter group's initial learning rate.
  std::vector<double> base_lrs;

  /// `{"last_epoch": 3, "base_lrs": [0.001, 0.001]}`
  nlohmann::json to_json() const;
  /// Reads what to_json() wrote; a missing or mistyped key is an error.
  static LRSchedulerState from_json(const nlohmann::json& json);
};

/// Sets every param group's learning rate to its initial learning rate times
/// the schedule's multiplier, as torch.optim.lr_scheduler.LambdaLR does:
/// construction records the initial rates and applies step 0 (0 during
/// warmup); each step() moves one step on. The optimizer must outlive the
/// scheduler.
///
/// Example:
/// \code
///   LRScheduler scheduler(optimizer, LRSchedulerOptions("linear").num_training_steps(100));
///   optimizer.step();
///   scheduler.step();
///   double lr = scheduler.last_lr()[0];
/// \endcode
class LRScheduler {
 public:
  LRScheduler(torch::optim::Optimizer& optimizer, const LRSchedulerOptions& options);

  /// Advances one step and sets the param groups' learning rates.
  void step();

  /// The learning rate of each param group after the latest step
  /// (torch's `get_last_lr()`).
  const std::vector<double>& last_lr() const { return last_lr_; }

  /// Steps taken since construction (0 right after it).
  int64_t last_epoch() const { return last_epoch_; }

  /// The state to save with a checkpoint.
  LRSchedulerState state() const;

  /// Resumes from a saved state: restores the step count and initial rates
  /// and sets the param groups' learning rates for that step, so the next
  /// step() gives what the uninterrupted run would. The state must have one
  /// initial rate per param group and `last_epoch >= 0`.
  void load_state(const LRSchedulerState& state);

 private:
  void apply();

  torch::optim::Optimizer* optimizer_;
  LRLambda lr_lambda_;
  std::vector<double> base_lrs_;
  std::vector<double> last_lr_;
  int64_t last_epoch_ = 0;
};

}  // namespace remat::optim
