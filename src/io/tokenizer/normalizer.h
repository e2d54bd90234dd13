#pragma once

// Normalizers of tokenizer.json: NFC (utf8proc) and Sequence.

#include <memory>
#include <string>
#include <string_view>

#include "json_util.h"

namespace remat::io::detail {

/// Rewrites a piece of text before pre-tokenization.
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string_view text) const = 0;
};

/// The normalizer described by tokenizer.json's "normalizer" value, or
/// nullptr for null. Fails naming an unsupported type.
std::unique_ptr<Normalizer> make_normalizer(const Json& config, int depth = 0);

}  // namespace remat::io::detail
