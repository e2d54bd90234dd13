#pragma once

/// \file
/// Console callbacks of the Trainer: the progress bar (Hugging Face's
/// ProgressCallback, drawn as tqdm draws it).
/// \code
///   trainer.add_callback(std::make_shared<remat::ProgressCallback>());
///   //  40%|████████            | 40/100 [00:12<00:18,  3.27it/s, loss=2.31]
/// \endcode
///
/// This header does not include the torch headers.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>

#include "remat/trainer_callback.h"
#include "remat/training_arguments.h"

namespace remat {

/// A duration as tqdm prints it: `MM:SS`, or `H:MM:SS` from one hour on.
///
/// Example: `format_interval(3725.0) == "1:02:05"`
std::string format_interval(double seconds);

/// tqdm's progress line for `n` of `total` steps after `elapsed_seconds`:
/// `{percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}<{remaining}, {rate}{postfix}]`
/// with a bar of `bar_width` cells drawn with the eighth blocks ▏▎▍▌▋▊▉█,
/// the rate as `{:5.2f}it/s` (or `{:5.2f}s/it` when slower than one step per
/// second; `?it/s` before the first step), the remaining time
/// (total - n) / rate (`?` while the rate is unknown) and `, {postfix}`
/// when `postfix` is not empty. `total` <= 0 (unknown): `{n}it [{elapsed}, {rate}{postfix}]`.
///
/// Example: `format_progress(4, 10, 2.0)` is
/// ` 40%|████████            | 4/10 [00:02<00:03,  2.00it/s]`.
std::string format_progress(int64_t n, int64_t total, double elapsed_seconds,
                            const std::string& postfix = "", int bar_width = 20);

/// A log record as Hugging Face's ProgressCallback prints it above the bar:
/// a Python dict, floats as `'{:.4g}'` strings, `total_flos` left out.
///
/// Example: `{'epoch': '0.5', 'loss': '2.306', 'step': 10}`
std::string format_log_record(const nlohmann::json& logs);

/// A progress bar over the optimizer steps, redrawn in place with `\r` on a
/// terminal: percentage, bar, step/max_steps, elapsed<remaining, steps per
/// second and the last logged loss. Redraws are throttled to one per
/// `min_interval_seconds` (the last step always draws); each log record
/// (training lines, evaluations) is printed above the bar without breaking
/// it; on_train_end draws the final state and ends the line.
///
/// Whether it draws at all follows `disable_tqdm`: true, never; false,
/// always; unset, when the stream is a terminal and remat's logger level is
/// at most warning (Hugging Face hides the bar above warning). When it does
/// not draw, it writes nothing: the Trainer's log lines carry the same
/// information. Only the world's process zero draws.
///
/// Example: `trainer.add_callback(std::make_shared<remat::ProgressCallback>());`
class ProgressCallback : public TrainerCallback {
 public:
  /// Seconds on a monotonic clock.
  using Clock = std::function<double()>;

  /// Draws on stderr, which counts as a terminal when isatty() says so.
  ProgressCallback();

  /// Draws on `out`; `out_is_terminal` stands for isatty() of it. `clock`
  /// (default: std::chrono::steady_clock) times the rate and the throttle.
  ProgressCallback(std::ostream& out, bool out_is_terminal, Clock clock = nullptr,
                   double min_interval_seconds = 0.1);

  /// Whether the bar is drawn for `args` (see the class comment).
  bool enabled(const TrainingArguments& args) const;

  /// Prints `line` and a newline above the bar, then redraws the bar (as
  /// tqdm.write); with no bar showing, just prints the line.
  void write(const std::string& line);

  void on_train_begin(const TrainingArguments& args, TrainerState& state,
                      TrainerControl& control) override;
  void on_step_end(const TrainingArguments& args, TrainerState& state,
                   TrainerControl& control) override;
  void on_log(const TrainingArguments& args, TrainerState& state, TrainerControl& control,
              const nlohmann::json& logs) override;
  void on_train_end(const TrainingArguments& args, TrainerState& state,
                    TrainerControl& control) override;

 private:
  void draw();

  std::ostream& out_;
  bool out_is_terminal_;
  Clock clock_;
  double min_interval_;
  bool active_ = false;
  int64_t n_ = 0, total_ = 0;
  double start_ = 0.0, last_draw_ = 0.0;
  std::optional<double> last_loss_;
  size_t last_width_ = 0;
};

}  // namespace remat
