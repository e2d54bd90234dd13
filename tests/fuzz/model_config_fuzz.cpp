// libFuzzer target: remat::models::ModelConfig::from_json on arbitrary
// bytes. Malformed input must end in the documented exceptions (c10::Error
// from the config checks, nlohmann::json::exception from parsing), never a
// crash, a sanitizer report or a hang.

#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>

#include "remat/models/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto json = nlohmann::json::parse(data, data + size);
    auto config = remat::models::ModelConfig::from_json(json);
    // A config that parses must serialize and parse back to the same fields.
    auto again = remat::models::ModelConfig::from_json(config.to_json());
    if (again.to_json() != config.to_json()) __builtin_trap();
  } catch (const nlohmann::json::exception&) {
  } catch (const c10::Error&) {
  }
  return 0;
}
