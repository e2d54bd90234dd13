#pragma once

// Pre-tokenizers of tokenizer.json: ByteLevel, Split and Sequence, with
// Hugging Face tokenizers' splitting rules.

#include <memory>
#include <string>
#include <vector>

#include "json_util.h"

namespace remat::io::detail {

/// Splits text into the words the model tokenizes one by one.
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  /// Replaces every piece by the pieces it splits into; empty pieces are
  /// dropped, as Hugging Face's PreTokenizedString does.
  virtual void pre_tokenize(std::vector<std::string>& pieces) const = 0;
};

/// The pre-tokenizer described by tokenizer.json's "pre_tokenizer" value, or
/// nullptr for null. Fails naming an unsupported type.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& config, int depth = 0);

}  // namespace remat::io::detail
