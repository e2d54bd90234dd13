#include "pre_tokenizer.h"

#include <algorithm>
#include <string_view>
#include <utility>

#include "byte_level.h"
#include "regex.h"

namespace remat::io::detail {
namespace {

constexpr int kMaxNesting = 32;

// GPT-2's pattern, used by ByteLevel when use_regex is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// A run of text that the pattern matched or did not.
struct Span {
  size_t start;
  size_t end;
  bool is_match;
};

// The matches of `regex` and the text between them, covering `text`.
std::vector<Span> find_spans(const Regex& regex, std::string_view text, bool invert) {
  std::vector<Span> spans;
  size_t previous = 0;
  for (const auto& [start, end] : regex.find_all(text)) {
    if (previous != start) spans.push_back({previous, start, invert});
    spans.push_back({start, end, !invert});
    previous = end;
  }
  if (previous != text.size()) spans.push_back({previous, text.size(), invert});
  return spans;
}

// Folds each delimiter into the piece before it.
std::vector<Span> merge_with_previous(const std::vector<Span>& spans) {
  std::vector<Span> out;
  bool previous_match = false;
  for (const Span& span : spans) {
    if (span.is_match && !previous_match && !out.empty()) {
      out.back().end = span.end;
    } else {
      out.push_back(span);
    }
    previous_match = span.is_match;
  }
  return out;
}

// Folds each delimiter into the piece after it.
std::vector<Span> merge_with_next(const std::vector<Span>& spans) {
  std::vector<Span> out;
  bool previous_match = false;
  for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
    if (it->is_match && !previous_match && !out.empty()) {
      out.back().start = it->start;
    } else {
      out.push_back(*it);
    }
    previous_match = it->is_match;
  }
  std::reverse(out.begin(), out.end());
  return out;
}

// Joins neighbouring spans that are both matches or both not.
std::vector<Span> merge_contiguous(const std::vector<Span>& spans) {
  std::vector<Span> out;
  bool previous_match = false;
  for (const Span& span : spans) {
    if (span.is_match == previous_match && !out.empty()) {
      out.back().end = span.end;
    } else {
      out.push_back(span);
    }
    previous_match = span.is_match;
  }
  return out;
}

std::vector<Span> apply_behavior(std::vector<Span> spans, Behavior behavior) {
  switch (behavior) {
    case Behavior::kIsolated:
      return spans;
    case Behavior::kRemoved:
      spans.erase(
          std::remove_if(spans.begin(), spans.end(), [](const Span& s) { return s.is_match; }),
          spans.end());
      return spans;
    case Behavior::kMergedWithPrevious:
      return merge_with_previous(spans);
    case Behavior::kMergedWithNext:
      return merge_with_next(spans);
    case Behavior::kContiguous:
      return merge_contiguous(spans);
  }
  return spans;
}

// Splits every piece with `regex`, keeping the non-empty results.
void split_pieces(std::vector<std::string>& pieces, const Regex& regex, Behavior behavior,
                  bool invert) {
  std::vector<std::string> out;
  out.reserve(pieces.size());
  for (const std::string& piece : pieces) {
    for (const Span& span : apply_behavior(find_spans(regex, piece, invert), behavior)) {
      if (span.end > span.start) out.push_back(piece.substr(span.start, span.end - span.start));
    }
  }
  pieces = std::move(out);
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::string_view pattern, Behavior behavior, bool invert)
      : regex_(pattern, "pre_tokenizer (Split)"), behavior_(behavior), invert_(invert) {}

  void pre_tokenize(std::vector<std::string>& pieces) const override {
    split_pieces(pieces, regex_, behavior_, invert_);
  }

 private:
  Regex regex_;
  Behavior behavior_;
  bool invert_;
};

const Regex& gpt2_regex() {
  static const Regex regex(kGpt2Pattern, "GPT-2");
  return regex;
}

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}

  void pre_tokenize(std::vector<std::string>& pieces) const override {
    if (add_prefix_space_) {
      for (std::string& piece : pieces) {
        if (piece.empty() || piece.front() != ' ') piece.insert(piece.begin(), ' ');
      }
    }
    if (use_regex_) split_pieces(pieces, gpt2_regex(), Behavior::kIsolated, false);
    for (std::string& piece : pieces) piece = bytes_to_unicode(piece);
  }

 private:
  bool add_prefix_space_;
  bool use_regex_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}

  void pre_tokenize(std::vector<std::string>& pieces) const override {
    for (const auto& step : steps_) step->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

Behavior parse_behavior(const std::string& name) {
  if (name == "Removed") return Behavior::kRemoved;
  if (name == "Isolated") return Behavior::kIsolated;
  if (name == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::kMergedWithNext;
  if (name == "Contiguous") return Behavior::kContiguous;
  fail("pre_tokenizer (Split) has unknown behavior \"" + name +
       "\"; valid: Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
}

std::unique_ptr<PreTokenizer> make_split(const Json& config) {
  constexpr std::string_view kWhere = "pre_tokenizer (Split)";
  const Json& pattern = required_field(config, "pattern", kWhere);
  const Behavior behavior = parse_behavior(string_field(config, "behavior", kWhere));
  const bool invert = bool_field(config, "invert", kWhere, false);
  if (const Json* regex = optional_field(pattern, "Regex"); regex && regex->is_string()) {
    return std::make_unique<SplitPreTokenizer>(regex->get<std::string>(), behavior, invert);
  }
  if (const Json* literal = optional_field(pattern, "String"); literal && literal->is_string()) {
    return std::make_unique<SplitPreTokenizer>(escape_regex(literal->get<std::string>()), behavior,
                                               invert);
  }
  fail("pre_tokenizer (Split) pattern must be {\"Regex\": \"...\"} or {\"String\": \"...\"}, got " +
       brief(pattern));
}

std::unique_ptr<PreTokenizer> make_sequence(const Json& config, int depth) {
  const Json& items = required_field(config, "pretokenizers", "pre_tokenizer (Sequence)");
  if (!items.is_array()) fail("pre_tokenizer.pretokenizers must be an array, got " + brief(items));
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  for (const Json& item : items) {
    if (auto step = make_pre_tokenizer(item, depth + 1)) steps.push_back(std::move(step));
  }
  return std::make_unique<SequencePreTokenizer>(std::move(steps));
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& config, int depth) {
  if (config.is_null()) return nullptr;
  if (depth > kMaxNesting) fail("pre_tokenizer Sequences are nested too deeply");
  const std::string type = component_type(config, "pre_tokenizer");
  if (type == "ByteLevel") {
    constexpr std::string_view kWhere = "pre_tokenizer (ByteLevel)";
    return std::make_unique<ByteLevelPreTokenizer>(
        bool_field(config, "add_prefix_space", kWhere, true),
        bool_field(config, "use_regex", kWhere, true));
  }
  if (type == "Split") return make_split(config);
  if (type == "Sequence") return make_sequence(config, depth);
  fail("unsupported pre_tokenizer type \"" + type +
       "\"; supported: ByteLevel, Split, Sequence (of those), or null");
}

}  // namespace remat::io::detail
