#pragma once

// Reading the reference data oracle scripts write (see remat_add_oracle in
// tests/CMakeLists.txt): JSON documents, and named float32/int64 tensors
// stored as `<stem>.json` (name, dtype, shape, byte offset of each tensor)
// plus `<stem>.bin` (their raw little-endian bytes, one after the other).

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>

namespace remat::test {

/// The directory oracle `name` wrote, from the REMAT_ORACLE_DIR environment
/// variable ctest sets. Throws when it is unset: run the tests through ctest.
inline std::string oracle_dir(const std::string& name) {
  const char* root = std::getenv("REMAT_ORACLE_DIR");
  if (root == nullptr) throw std::runtime_error("REMAT_ORACLE_DIR is unset; run through ctest");
  return std::string(root) + "/" + name;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open oracle file " + path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(read_file(path));
}

/// The tensors of `<dir>/<stem>.json` + `<dir>/<stem>.bin`, by name.
inline std::map<std::string, torch::Tensor> read_tensors(const std::string& dir,
                                                         const std::string& stem) {
  auto index = read_json(dir + "/" + stem + ".json");
  auto bytes = read_file(dir + "/" + stem + ".bin");
  std::map<std::string, torch::Tensor> result;
  for (const auto& entry : index) {
    auto dtype = entry["dtype"] == "float32" ? torch::kFloat32 : torch::kInt64;
    auto shape = entry["shape"].get<std::vector<int64_t>>();
    auto offset = entry["offset"].get<size_t>();
    auto tensor = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    if (offset + tensor.nbytes() > bytes.size()) throw std::runtime_error("truncated " + stem);
    std::memcpy(tensor.data_ptr(), bytes.data() + offset, tensor.nbytes());
    result.emplace(entry["name"].get<std::string>(), tensor);
  }
  return result;
}

}  // namespace remat::test
