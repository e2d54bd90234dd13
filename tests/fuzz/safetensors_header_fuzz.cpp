// Fuzzes parse_safetensors_header. For any bytes it must either return a
// header or throw std::invalid_argument: never crash, read out of bounds or
// hit undefined behaviour (the sanitizers watch). A header it accepts must
// come back unchanged from serialize_safetensors_header and a second parse.
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "remat/io/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using remat::io::parse_safetensors_header;
  remat::io::SafetensorsHeader header;
  try {
    header = parse_safetensors_header(data, size);
  } catch (const std::invalid_argument&) {
    return 0;  // rejecting malformed bytes is the expected outcome
  }
  const std::string file = remat::io::serialize_safetensors_header(header) +
                           std::string(data + header.data_offset, data + size);
  const auto again =
      parse_safetensors_header(reinterpret_cast<const uint8_t*>(file.data()), file.size());
  if (again.tensors != header.tensors || again.metadata != header.metadata) std::abort();
  return 0;
}
