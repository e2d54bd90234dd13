#pragma once

/// \file
/// The library's logger. remat logs through an spdlog logger named "remat",
/// registered with spdlog, so applications configure it like any other:
/// \code
///   remat::logger()->set_level(spdlog::level::off);  // silence remat
///   remat::set_logger(spdlog::basic_logger_mt("remat-file", "train.log"));  // redirect
/// \endcode

#include <spdlog/spdlog.h>

#include <atomic>
#include <memory>

namespace remat {

/// The logger remat writes to. By default a colour stderr logger named
/// "remat" at level info; if the application registered a logger named
/// "remat" before first use, that one is used.
std::shared_ptr<spdlog::logger> logger();

/// Replaces the logger remat writes to; nullptr restores the default.
void set_logger(std::shared_ptr<spdlog::logger> logger);

/// Logs a warning the first time it is called with a given flag, and does
/// nothing on later calls: for conditions that hold on every step.
template <typename... Args>
void warn_once(std::atomic<bool>& warned, spdlog::format_string_t<Args...> fmt, Args&&... args) {
  if (warned.exchange(true)) return;
  logger()->warn(fmt, std::forward<Args>(args)...);
}

}  // namespace remat
