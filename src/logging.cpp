#include "remat/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <mutex>

namespace remat {
namespace {

std::mutex& logger_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::shared_ptr<spdlog::logger>& current_logger() {
  static std::shared_ptr<spdlog::logger> logger;
  return logger;
}

std::shared_ptr<spdlog::logger> default_logger() {
  if (auto registered = spdlog::get("remat")) return registered;
  auto logger = std::make_shared<spdlog::logger>(
      "remat", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [remat] [%^%l%$] %v");
  spdlog::register_logger(logger);
  return logger;
}

}  // namespace

std::shared_ptr<spdlog::logger> logger() {
  std::lock_guard<std::mutex> lock(logger_mutex());
  auto& logger = current_logger();
  if (!logger) logger = default_logger();
  return logger;
}

void set_logger(std::shared_ptr<spdlog::logger> logger) {
  std::lock_guard<std::mutex> lock(logger_mutex());
  current_logger() = logger ? std::move(logger) : default_logger();
}

}  // namespace remat
