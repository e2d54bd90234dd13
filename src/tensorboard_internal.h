#pragma once

// The pieces of the TensorBoard event-file format: CRC32C, the TFRecord
// framing and a protobuf encoder for the few fields an Event needs. Not
// installed; the tests check them directly.

#include <cstdint>
#include <string>
#include <string_view>

namespace remat::detail {

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `data`, as
/// TFRecord files use it.
uint32_t crc32c(std::string_view data);

/// TFRecord's masked CRC: rotated right by 15 bits plus 0xa282ead8, so that
/// the CRC of data containing CRCs stays well distributed.
uint32_t masked_crc32c(std::string_view data);

/// One TFRecord: uint64 length, masked CRC of the length, the data, masked
/// CRC of the data (integers little-endian).
std::string tfrecord(std::string_view data);

/// Appends protobuf fields to a message in wire format.
class ProtoWriter {
 public:
  /// Wire type 0 (int32/int64/enum/bool).
  ProtoWriter& varint(int field, uint64_t value);
  /// Wire type 1 (double).
  ProtoWriter& fixed64(int field, double value);
  /// Wire type 5 (float).
  ProtoWriter& fixed32(int field, float value);
  /// Wire type 2 (string, bytes, embedded message).
  ProtoWriter& bytes(int field, std::string_view value);

  const std::string& str() const { return out_; }

 private:
  void tag(int field, int wire_type);
  void raw_varint(uint64_t value);
  std::string out_;
};

}  // namespace remat::detail
