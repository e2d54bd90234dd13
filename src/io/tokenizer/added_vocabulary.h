#pragma once

// Added tokens (special and not): registered and matched in text as Hugging
// Face tokenizers' AddedVocabulary does, before the model sees the text.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "json_util.h"

namespace remat::io::detail {

class BpeModel;
class Normalizer;

/// A token added on top of the model's vocabulary, with its matching options.
struct AddedToken {
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;

  bool operator==(const AddedToken& other) const;
};

/// Reads an added token object of tokenizer.json or tokenizer_config.json;
/// fields it lacks take Hugging Face's defaults (normalized = !special).
AddedToken parse_added_token(const Json& config, std::string_view where, bool special_default);

/// A piece of text between added tokens, or an added token (id >= 0).
struct Segment {
  std::string text;
  int64_t id = -1;
};

/// Finds, longest first, the leftmost occurrence of any of a set of strings.
class TokenTrie {
 public:
  explicit TokenTrie(const std::vector<std::string>& patterns);
  /// Calls `on_match(start, end, pattern_index)` for each non-overlapping
  /// leftmost-longest match in `text`, left to right.
  template <typename F>
  void for_each_match(std::string_view text, F&& on_match) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t pattern = -1;
  };
  int32_t child(int32_t node, unsigned char byte) const;
  std::vector<Node> nodes_;
  bool first_byte_[256] = {};
};

/// The added tokens of a tokenizer and the two tries that find them: one for
/// tokens matched in the raw text, one for tokens matched after normalization.
class AddedVocabulary {
 public:
  AddedVocabulary();
  ~AddedVocabulary();
  AddedVocabulary(AddedVocabulary&&) noexcept;
  AddedVocabulary& operator=(AddedVocabulary&&) noexcept;

  /// Registers `token` as Hugging Face's AddedVocabulary::add_tokens does: it
  /// takes the model's id for its content if there is one, else the next free
  /// id; an identical token is ignored; a changed one replaces the old.
  /// Call rebuild() after the last one.
  void add(const AddedToken& token, const BpeModel& model);

  /// Rebuilds the tries from the registered tokens.
  void rebuild(const BpeModel& model, const Normalizer* normalizer);

  /// With true, special tokens in text are not recognised but tokenized as
  /// text (transformers' split_special_tokens). Default false.
  void set_split_special_tokens(bool split) { split_special_tokens_ = split; }

  /// Splits `text` around added tokens (raw ones first), normalizing the
  /// pieces in between; empty pieces are dropped.
  std::vector<Segment> split(std::string_view text, const Normalizer* normalizer) const;

  std::optional<int64_t> token_to_id(std::string_view content) const;
  /// The added token with id `id`, or nullptr.
  const AddedToken* token(int64_t id) const;
  bool is_special(std::string_view content) const;
  /// Contents of all added tokens.
  std::vector<std::string> contents() const;
  int64_t max_id() const { return max_id_; }

 private:
  std::vector<Segment> find_matches(std::string_view text, const TokenTrie& trie,
                                    const std::vector<int64_t>& ids) const;

  std::unordered_map<std::string, int64_t> ids_;
  std::unordered_map<int64_t, AddedToken> tokens_;
  std::vector<AddedToken> added_;    // non-special, in the order added
  std::vector<AddedToken> special_;  // special, in the order added
  std::unordered_set<std::string> special_contents_;
  std::unique_ptr<TokenTrie> raw_trie_;
  std::vector<int64_t> raw_ids_;
  std::unique_ptr<TokenTrie> normalized_trie_;
  std::vector<int64_t> normalized_ids_;
  int64_t max_id_ = -1;
  bool split_special_tokens_ = false;
};

template <typename F>
void TokenTrie::for_each_match(std::string_view text, F&& on_match) const {
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    int32_t node = 0;
    size_t best_end = 0;
    int32_t best_pattern = -1;
    for (size_t i = pos; i < text.size(); ++i) {
      node = child(node, static_cast<unsigned char>(text[i]));
      if (node < 0) break;
      if (nodes_[node].pattern >= 0) {
        best_end = i + 1;
        best_pattern = nodes_[node].pattern;
      }
    }
    if (best_pattern < 0) {
      ++pos;
      continue;
    }
    on_match(pos, best_end, best_pattern);
    pos = best_end;
  }
}

}  // namespace remat::io::detail
