#pragma once

// Post-processors of tokenizer.json (ByteLevel, TemplateProcessing,
// Sequence) and decoders (ByteLevel), for single sequences.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "json_util.h"

namespace remat::io::detail {

/// Adds special tokens around an encoded sequence.
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  /// Rewrites `ids`; adds nothing when `add_special_tokens` is false.
  virtual void process(std::vector<int64_t>& ids, bool add_special_tokens) const = 0;
};

/// The post-processor described by tokenizer.json's "post_processor" value,
/// or nullptr for null. Fails naming an unsupported type.
std::unique_ptr<PostProcessor> make_post_processor(const Json& config, int depth = 0);

/// Turns token strings back into text.
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::string decode(const std::vector<const std::string*>& tokens) const = 0;
};

/// The decoder described by tokenizer.json's "decoder" value; null gives the
/// tokenizers default, which joins the tokens with spaces.
std::unique_ptr<Decoder> make_decoder(const Json& config);

}  // namespace remat::io::detail
