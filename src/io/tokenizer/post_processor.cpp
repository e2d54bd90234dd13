#include "post_processor.h"

#include <unordered_map>

#include "byte_level.h"
#include "utf8.h"

namespace remat::io::detail {
namespace {

constexpr int kMaxNesting = 32;

// ByteLevel as a post-processor only trims offsets, which remat does not
// return: the ids are unchanged.
class ByteLevelPostProcessor : public PostProcessor {
 public:
  void process(std::vector<int64_t>&, bool) const override {}
};

// A single-sequence template: the ids of special tokens, with -1 marking
// where the sequence goes.
class TemplatePostProcessor : public PostProcessor {
 public:
  explicit TemplatePostProcessor(std::vector<std::vector<int64_t>> pieces)
      : pieces_(std::move(pieces)) {}

  void process(std::vector<int64_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int64_t> out;
    for (const auto& piece : pieces_) {
      if (piece.empty()) {
        out.insert(out.end(), ids.begin(), ids.end());
      } else {
        out.insert(out.end(), piece.begin(), piece.end());
      }
    }
    ids = std::move(out);
  }

 private:
  std::vector<std::vector<int64_t>> pieces_;  // empty = the sequence
};

class SequencePostProcessor : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}

  void process(std::vector<int64_t>& ids, bool add_special_tokens) const override {
    for (const auto& step : steps_) step->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

std::vector<int64_t> special_token_ids(const Json& special_tokens, const std::string& name) {
  const Json* entry = optional_field(special_tokens, name.c_str());
  if (entry == nullptr) {
    fail("post_processor (TemplateProcessing) uses special token \"" + name +
         "\", which is not in its special_tokens");
  }
  const Json& ids = required_field(*entry, "ids", "post_processor.special_tokens." + name);
  std::vector<int64_t> out;
  if (ids.is_array()) {
    for (const Json& id : ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0) break;
      out.push_back(id.get<int64_t>());
    }
  }
  if (out.empty() || out.size() != ids.size()) {
    fail("post_processor.special_tokens." + name +
         ".ids must be a non-empty array of non-negative ids, got " + brief(ids));
  }
  return out;
}

std::unique_ptr<PostProcessor> make_template(const Json& config) {
  constexpr std::string_view kWhere = "post_processor (TemplateProcessing)";
  const Json& single = required_field(config, "single", kWhere);
  const Json& special_tokens = required_field(config, "special_tokens", kWhere);
  if (!single.is_array()) fail("post_processor.single must be an array, got " + brief(single));
  std::vector<std::vector<int64_t>> pieces;
  for (const Json& piece : single) {
    if (const Json* special = optional_field(piece, "SpecialToken")) {
      pieces.push_back(special_token_ids(special_tokens, string_field(*special, "id", kWhere)));
    } else if (const Json* sequence = optional_field(piece, "Sequence")) {
      const std::string id = string_field(*sequence, "id", kWhere);
      if (id != "A") {
        fail("post_processor.single uses sequence \"" + id +
             "\"; a single-sequence template can only use A");
      }
      pieces.emplace_back();
    } else {
      fail(
          "post_processor.single entries must be {\"SpecialToken\": ...} or {\"Sequence\": ...}, "
          "got " +
          brief(piece));
    }
  }
  return std::make_unique<TemplatePostProcessor>(std::move(pieces));
}

std::unique_ptr<PostProcessor> make_sequence(const Json& config, int depth) {
  const Json& items = required_field(config, "processors", "post_processor (Sequence)");
  if (!items.is_array()) fail("post_processor.processors must be an array, got " + brief(items));
  std::vector<std::unique_ptr<PostProcessor>> steps;
  for (const Json& item : items) {
    if (auto step = make_post_processor(item, depth + 1)) steps.push_back(std::move(step));
  }
  return std::make_unique<SequencePostProcessor>(std::move(steps));
}

// Maps byte-level characters back to bytes; a token with any other
// character (an added token such as "<|eot_id|>" has none, but " hello"
// would) is kept as its own UTF-8. Invalid UTF-8 in the result becomes
// U+FFFD.
class ByteLevelDecoder : public Decoder {
 public:
  std::string decode(const std::vector<const std::string*>& tokens) const override {
    std::string bytes;
    for (const std::string* token : tokens) append_token(*token, bytes);
    return utf8_lossy(bytes);
  }

 private:
  static void append_token(const std::string& token, std::string& bytes) {
    const size_t mark = bytes.size();
    for (size_t pos = 0; pos < token.size();) {
      const size_t length = utf8_sequence_length(token, pos);
      const int byte = length == 0 ? -1 : unicode_to_byte(decode_utf8(token, pos, length));
      if (byte < 0) {
        bytes.resize(mark);
        bytes.append(token);
        return;
      }
      bytes.push_back(static_cast<char>(byte));
      pos += length;
    }
  }
};

class JoinDecoder : public Decoder {
 public:
  std::string decode(const std::vector<const std::string*>& tokens) const override {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out.push_back(' ');
      out.append(*tokens[i]);
    }
    return out;
  }
};

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const Json& config, int depth) {
  if (config.is_null()) return nullptr;
  if (depth > kMaxNesting) fail("post_processor Sequences are nested too deeply");
  const std::string type = component_type(config, "post_processor");
  if (type == "ByteLevel") return std::make_unique<ByteLevelPostProcessor>();
  if (type == "TemplateProcessing") return make_template(config);
  if (type == "Sequence") return make_sequence(config, depth);
  fail("unsupported post_processor type \"" + type +
       "\"; supported: ByteLevel, TemplateProcessing, Sequence (of those), or null");
}

std::unique_ptr<Decoder> make_decoder(const Json& config) {
  if (config.is_null()) return std::make_unique<JoinDecoder>();
  const std::string type = component_type(config, "decoder");
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  fail("unsupported decoder type \"" + type + "\"; supported: ByteLevel, or null");
}

}  // namespace remat::io::detail
