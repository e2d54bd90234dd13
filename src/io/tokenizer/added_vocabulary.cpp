#include "added_vocabulary.h"

#include <algorithm>

#include "bpe.h"
#include "normalizer.h"
#include "regex.h"
#include "utf8.h"

namespace remat::io::detail {
namespace {

// What Rust's regex crate calls \w and \s, which Hugging Face uses for the
// single_word, lstrip and rstrip options.
const Regex& word_char() {
  static const Regex regex(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])", "word");
  return regex;
}

const Regex& space_char() {
  static const Regex regex(R"(\p{White_Space})", "whitespace");
  return regex;
}

size_t previous_char_start(std::string_view text, size_t end) {
  size_t pos = end - 1;
  while (pos > 0 && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) --pos;
  return pos;
}

size_t char_length(std::string_view text, size_t pos) {
  return std::max<size_t>(1, utf8_sequence_length(text, pos));
}

bool ends_with_word(std::string_view text) {
  if (text.empty()) return false;
  return word_char().matches_at(text, previous_char_start(text, text.size()), text.size());
}

bool starts_with_word(std::string_view text) {
  if (text.empty()) return false;
  return word_char().matches_at(text, 0, char_length(text, 0));
}

// Start of the whitespace that ends `text`.
size_t trailing_space_start(std::string_view text) {
  size_t pos = text.size();
  while (pos > 0) {
    const size_t start = previous_char_start(text, pos);
    if (!space_char().matches_at(text, start, pos)) break;
    pos = start;
  }
  return pos;
}

// Length of the whitespace that starts `text`.
size_t leading_space_length(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = pos + char_length(text, pos);
    if (!space_char().matches_at(text, pos, end)) break;
    pos = end;
  }
  return pos;
}

}  // namespace

bool AddedToken::operator==(const AddedToken& other) const {
  return content == other.content && single_word == other.single_word && lstrip == other.lstrip &&
         rstrip == other.rstrip && normalized == other.normalized && special == other.special;
}

AddedToken parse_added_token(const Json& config, std::string_view where, bool special_default) {
  AddedToken token;
  token.content = string_field(config, "content", where);
  token.special = bool_field(config, "special", where, special_default);
  token.single_word = bool_field(config, "single_word", where, false);
  token.lstrip = bool_field(config, "lstrip", where, false);
  token.rstrip = bool_field(config, "rstrip", where, false);
  token.normalized = bool_field(config, "normalized", where, !token.special);
  return token;
}

TokenTrie::TokenTrie(const std::vector<std::string>& patterns) : nodes_(1) {
  for (size_t p = 0; p < patterns.size(); ++p) {
    const std::string& pattern = patterns[p];
    if (pattern.empty()) continue;
    first_byte_[static_cast<unsigned char>(pattern[0])] = true;
    int32_t node = 0;
    for (char c : pattern) {
      const auto byte = static_cast<unsigned char>(c);
      int32_t next = child(node, byte);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(byte, next);
        nodes_.emplace_back();
      }
      node = next;
    }
    // The first of duplicate patterns wins, as in Aho-Corasick.
    if (nodes_[node].pattern < 0) nodes_[node].pattern = static_cast<int32_t>(p);
  }
}

int32_t TokenTrie::child(int32_t node, unsigned char byte) const {
  for (const auto& [b, next] : nodes_[node].children) {
    if (b == byte) return next;
  }
  return -1;
}

AddedVocabulary::AddedVocabulary()
    : raw_trie_(std::make_unique<TokenTrie>(std::vector<std::string>{})),
      normalized_trie_(std::make_unique<TokenTrie>(std::vector<std::string>{})) {}
AddedVocabulary::~AddedVocabulary() = default;
AddedVocabulary::AddedVocabulary(AddedVocabulary&&) noexcept = default;
AddedVocabulary& AddedVocabulary::operator=(AddedVocabulary&&) noexcept = default;

void AddedVocabulary::add(const AddedToken& token, const BpeModel& model) {
  if (token.content.empty()) return;
  if (token.special && special_contents_.insert(token.content).second) special_.push_back(token);
  // Ids of known contents never change, so an identical token can only be
  // registered under its content's id.
  if (auto known = token_to_id(token.content); known && tokens_.at(*known) == token) return;
  int64_t id = 0;
  if (auto known = token_to_id(token.content)) {
    id = *known;
  } else if (auto in_model = model.token_to_id(token.content)) {
    id = *in_model;
  } else if (ids_.empty()) {
    id = model.size();
  } else {
    const int64_t largest = max_id();
    id = largest >= model.size() || model.size() == 0 ? largest + 1 : model.size();
  }
  ids_[token.content] = id;
  tokens_[id] = token;
  max_id_ = std::max(max_id_, id);
  if (special_contents_.count(token.content) == 0) added_.push_back(token);
}

void AddedVocabulary::rebuild(const BpeModel& model, const Normalizer* normalizer) {
  std::vector<std::string> raw;
  std::vector<std::string> normalized;
  raw_ids_.clear();
  normalized_ids_.clear();
  for (const auto* list : {&special_, &added_}) {
    for (const AddedToken& token : *list) {
      auto id = token_to_id(token.content);
      if (!id) id = model.token_to_id(token.content);
      if (token.normalized) {
        normalized.push_back(normalizer ? normalizer->normalize(token.content) : token.content);
        normalized_ids_.push_back(*id);
      } else {
        raw.push_back(token.content);
        raw_ids_.push_back(*id);
      }
    }
  }
  raw_trie_ = std::make_unique<TokenTrie>(raw);
  normalized_trie_ = std::make_unique<TokenTrie>(normalized);
}

// Hugging Face's AddedVocabulary::find_matches: the matches, with the
// single_word, lstrip and rstrip rules, and the text between them.
std::vector<Segment> AddedVocabulary::find_matches(std::string_view text, const TokenTrie& trie,
                                                   const std::vector<int64_t>& ids) const {
  std::vector<Segment> segments;
  size_t offset = 0;
  trie.for_each_match(text, [&](size_t start, size_t stop, int32_t pattern) {
    const int64_t id = ids[pattern];
    const AddedToken& token = tokens_.at(id);
    if (split_special_tokens_ && special_contents_.count(token.content) > 0) return;
    if (token.single_word) {
      const bool space_before = start == 0 || !ends_with_word(text.substr(0, start));
      const bool space_after = stop == text.size() || !starts_with_word(text.substr(stop));
      if (!space_before || !space_after) return;
    }
    if (token.lstrip) start = std::max(trailing_space_start(text.substr(0, start)), offset);
    if (token.rstrip) stop += leading_space_length(text.substr(stop));
    if (offset < start) segments.push_back({std::string(text.substr(offset, start - offset))});
    segments.push_back({std::string(text.substr(start, stop - start)), id});
    offset = stop;
  });
  if (offset < text.size()) segments.push_back({std::string(text.substr(offset))});
  return segments;
}

std::vector<Segment> AddedVocabulary::split(std::string_view text,
                                            const Normalizer* normalizer) const {
  std::vector<Segment> out;
  if (text.empty()) return out;
  for (Segment& segment : find_matches(text, *raw_trie_, raw_ids_)) {
    if (segment.id >= 0) {
      out.push_back(std::move(segment));
      continue;
    }
    const std::string normalized =
        normalizer ? normalizer->normalize(segment.text) : std::move(segment.text);
    for (Segment& piece : find_matches(normalized, *normalized_trie_, normalized_ids_)) {
      if (piece.id >= 0 || !piece.text.empty()) out.push_back(std::move(piece));
    }
  }
  return out;
}

std::optional<int64_t> AddedVocabulary::token_to_id(std::string_view content) const {
  auto it = ids_.find(std::string(content));
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

const AddedToken* AddedVocabulary::token(int64_t id) const {
  auto it = tokens_.find(id);
  return it == tokens_.end() ? nullptr : &it->second;
}

bool AddedVocabulary::is_special(std::string_view content) const {
  return special_contents_.count(std::string(content)) > 0;
}

std::vector<std::string> AddedVocabulary::contents() const {
  std::vector<std::string> out;
  out.reserve(ids_.size());
  for (const auto& entry : ids_) out.push_back(entry.first);
  return out;
}

}  // namespace remat::io::detail
