#include "remat/callbacks.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>

#include "remat/logging.h"

namespace remat {
namespace {

// tqdm's Bar: full cells, one partial cell, then spaces.
std::string draw_bar(double fraction, int width) {
  static const char* const kEighths[] = {" ", "▏", "▎", "▍", "▌", "▋", "▊", "▉", "█"};
  fraction = std::clamp(fraction, 0.0, 1.0);
  const auto eighths = static_cast<int64_t>(fraction * width * 8);
  const int64_t full = eighths / 8, partial = eighths % 8;
  std::string bar;
  for (int64_t i = 0; i < full; ++i) bar += kEighths[8];
  if (full < width) {
    bar += kEighths[partial];
    bar.append(static_cast<size_t>(width - full - 1), ' ');
  }
  return bar;
}

std::string format_rate(int64_t n, double elapsed) {
  if (n <= 0 || elapsed <= 0.0) return "?it/s";
  const double rate = static_cast<double>(n) / elapsed;
  if (1.0 / rate > 1.0) return fmt::format("{:5.2f}s/it", 1.0 / rate);
  return fmt::format("{:5.2f}it/s", rate);
}

// Characters on the screen: UTF-8 bytes that do not continue a character.
size_t display_width(const std::string& s) {
  return static_cast<size_t>(
      std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

double steady_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string python_repr(const nlohmann::json& value) {
  if (value.is_string()) return "'" + value.get<std::string>() + "'";
  if (value.is_number_float()) return fmt::format("'{:.4g}'", value.get<double>());
  if (value.is_boolean()) return value.get<bool>() ? "True" : "False";
  if (value.is_null()) return "None";
  return value.dump();
}

}  // namespace

std::string format_interval(double seconds) {
  const auto total = static_cast<int64_t>(std::max(seconds, 0.0));
  const int64_t h = total / 3600, m = (total / 60) % 60, s = total % 60;
  if (h > 0) return fmt::format("{:d}:{:02d}:{:02d}", h, m, s);
  return fmt::format("{:02d}:{:02d}", m, s);
}

std::string format_progress(int64_t n, int64_t total, double elapsed_seconds,
                            const std::string& postfix, int bar_width) {
  const auto rate = format_rate(n, elapsed_seconds);
  const auto tail = postfix.empty() ? "" : ", " + postfix;
  if (total <= 0) {
    return fmt::format("{}it [{}, {}{}]", n, format_interval(elapsed_seconds), rate, tail);
  }
  const double fraction = static_cast<double>(n) / static_cast<double>(total);
  std::string remaining = "?";
  if (n > 0 && elapsed_seconds > 0.0) {
    const double per_step = elapsed_seconds / static_cast<double>(n);
    remaining = format_interval(static_cast<double>(total - n) * per_step);
  }
  return fmt::format("{:3.0f}%|{}| {}/{} [{}<{}, {}{}]", fraction * 100.0,
                     draw_bar(fraction, bar_width), n, total, format_interval(elapsed_seconds),
                     remaining, rate, tail);
}

std::string format_log_record(const nlohmann::json& logs) {
  std::string out = "{";
  for (const auto& [key, value] : logs.items()) {
    if (key == "total_flos") continue;
    if (out.size() > 1) out += ", ";
    out += "'" + key + "': " + python_repr(value);
  }
  return out + "}";
}

ProgressCallback::ProgressCallback() : ProgressCallback(std::cerr, ::isatty(STDERR_FILENO) == 1) {}

ProgressCallback::ProgressCallback(std::ostream& out, bool out_is_terminal, Clock clock,
                                   double min_interval_seconds)
    : out_(out),
      out_is_terminal_(out_is_terminal),
      clock_(clock ? std::move(clock) : Clock(steady_seconds)),
      min_interval_(min_interval_seconds) {}

bool ProgressCallback::enabled(const TrainingArguments& args) const {
  if (args.disable_tqdm) return !*args.disable_tqdm;
  return out_is_terminal_ && logger()->level() <= spdlog::level::warn;
}

void ProgressCallback::draw() {
  const auto postfix = last_loss_ ? fmt::format("loss={:.3g}", *last_loss_) : std::string();
  const auto line = format_progress(n_, total_, clock_() - start_, postfix);
  const auto width = display_width(line);
  out_ << '\r' << line;
  if (width < last_width_) out_ << std::string(last_width_ - width, ' ');
  out_ << std::flush;
  last_width_ = width;
  last_draw_ = clock_();
}

void ProgressCallback::write(const std::string& line) {
  if (!active_) {
    out_ << line << '\n' << std::flush;
    return;
  }
  out_ << '\r' << std::string(last_width_, ' ') << '\r' << line << '\n';
  last_width_ = 0;
  draw();
}

void ProgressCallback::on_train_begin(const TrainingArguments& args, TrainerState& state,
                                      TrainerControl&) {
  active_ = state.is_world_process_zero && enabled(args);
  if (!active_) return;
  n_ = state.global_step;
  total_ = state.max_steps;
  start_ = clock_();
  last_loss_.reset();
  last_width_ = 0;
  draw();
}

void ProgressCallback::on_step_end(const TrainingArguments&, TrainerState& state, TrainerControl&) {
  if (!active_) return;
  n_ = state.global_step;
  if (n_ == total_ || clock_() - last_draw_ >= min_interval_) draw();
}

void ProgressCallback::on_log(const TrainingArguments&, TrainerState&, TrainerControl&,
                              const nlohmann::json& logs) {
  if (!active_) return;
  if (logs.contains("loss") && logs["loss"].is_number()) last_loss_ = logs["loss"].get<double>();
  write(format_log_record(logs));
}

void ProgressCallback::on_train_end(const TrainingArguments&, TrainerState& state,
                                    TrainerControl&) {
  if (!active_) return;
  n_ = state.global_step;
  draw();
  out_ << '\n' << std::flush;
  active_ = false;
}

}  // namespace remat
