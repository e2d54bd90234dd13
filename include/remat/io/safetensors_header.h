#pragma once

/// \file
/// The header of a safetensors file, parsed, validated and written without
/// torch (only the standard library), so that it can be fuzzed on its own.
///
/// A safetensors file is an 8-byte little-endian header length N, N bytes of
/// UTF-8 JSON describing each tensor (dtype, shape and the byte range of its
/// data), then the data section, which the tensors tile exactly.
/// \code
///   auto header = remat::io::parse_safetensors_header(bytes.data(), bytes.size());
///   for (const auto& t : header.tensors) std::cout << t.name << " " << t.dtype << "\n";
/// \endcode
/// The torch-facing reader and writer are in remat/io/safetensors.h.

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace remat::io {

/// The largest header parse_safetensors_header accepts, in bytes: the
/// reference implementation's limit.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

/// One tensor of a safetensors file: its name, dtype name ("F32", ...), shape
/// (empty for a scalar) and the byte range [begin, end) of its data, relative
/// to the start of the data section.
/// \code
///   remat::io::TensorEntry e{"w", "F32", {2, 3}, 0, 24};
/// \endcode
struct TensorEntry {
  /// The tensor's key in the file.
  std::string name;
  /// The safetensors dtype name, e.g. "F32", "BF16", "I64".
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;

  /// Equal when every field is.
  bool operator==(const TensorEntry& other) const {
    return name == other.name && dtype == other.dtype && shape == other.shape &&
           begin == other.begin && end == other.end;
  }
};

/// A parsed safetensors header: the tensors in the order of their data in the
/// file, the string metadata stored under "__metadata__" (empty if absent),
/// and the file offset at which the data section starts (8 + header length).
/// \code
///   auto h = remat::io::parse_safetensors_header(data, size);
///   const uint8_t* first = data + h.data_offset + h.tensors.at(0).begin;
/// \endcode
struct SafetensorsHeader {
  /// The tensors, in the order of their data in the file.
  std::vector<TensorEntry> tensors;
  /// The `__metadata__` string map (empty when absent).
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;
};

/// The dtype names this library reads and writes, in the order of the
/// reference writer (widest first): I64 F64 F32 I32 BF16 F16 I16 I8 U8 BOOL.
const std::vector<std::string>& safetensors_dtypes();

/// Bytes per element of a safetensors dtype name, e.g. 4 for "F32". Throws
/// std::invalid_argument naming the dtype and listing the valid ones for any
/// other name.
/// \code
///   size_t n = remat::io::safetensors_dtype_size("BF16");  // 2
/// \endcode
size_t safetensors_dtype_size(const std::string& dtype);

/// Parses and validates the header of a whole safetensors file held in
/// `data[0, size)` (a buffer or a memory mapping). Every check of the
/// reference implementation is made: the length prefix, the header size limit
/// (kMaxSafetensorsHeaderBytes), UTF-8, JSON, each entry's dtype, shape and
/// data_offsets, that each tensor's byte size is its element count times its
/// dtype size, and that the tensors tile the data section exactly (no
/// overlap, no hole, nothing after the last tensor). Duplicate JSON keys are
/// rejected too. Throws std::invalid_argument with a message naming the
/// problem and what would be valid; never reads outside the buffer.
/// \code
///   auto header = remat::io::parse_safetensors_header(bytes.data(), bytes.size());
/// \endcode
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size);

/// The bytes of a safetensors file before its data section: the 8-byte
/// little-endian length, then the compact JSON header ("__metadata__" first,
/// omitted when empty; then the tensors in the order given) padded with
/// spaces to a multiple of 8 bytes, as the reference writer does.
/// `header.data_offset` is ignored; the offsets of the tensors are written as
/// given. Throws std::invalid_argument for an unknown dtype, a duplicate or
/// reserved ("__metadata__") tensor name, or a name or metadata string that
/// is not valid UTF-8.
/// \code
///   remat::io::SafetensorsHeader h;
///   h.tensors.push_back({"w", "F32", {2}, 0, 8});
///   h.metadata["format"] = "pt";
///   std::string prefix = remat::io::serialize_safetensors_header(h);
/// \endcode
std::string serialize_safetensors_header(const SafetensorsHeader& header);

}  // namespace remat::io
