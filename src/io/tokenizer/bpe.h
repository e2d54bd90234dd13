#pragma once

// The BPE model of tokenizer.json, with Hugging Face tokenizers' merge order
// and a bounded per-word cache.

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "json_util.h"

namespace remat::io::detail {

/// Remembers the ids of recently seen words; thread-safe, bounded.
class WordCache {
 public:
  /// Appends the cached ids of `word` to `out`; false if it is not cached.
  bool lookup(std::string_view word, std::vector<int64_t>& out) const;
  void insert(std::string_view word, const std::vector<uint32_t>& ids) const;

 private:
  static constexpr size_t kShards = 16;
  static constexpr size_t kEntriesPerShard = 10000 / kShards;
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<uint32_t>> entries;
  };
  mutable std::array<Shard, kShards> shards_;
};

/// Byte-pair encoding: splits a word into characters and applies the merges
/// in rank order.
class BpeModel {
 public:
  /// Reads tokenizer.json's "model" object (type BPE); fails naming what is
  /// missing or unsupported.
  explicit BpeModel(const Json& config);
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  /// Appends the ids of `word` to `out`.
  void tokenize(std::string_view word, std::vector<int64_t>& out) const;

  std::optional<int64_t> token_to_id(std::string_view token) const;
  /// The token with id `id`, or nullptr.
  const std::string* id_to_token(int64_t id) const;
  /// Number of entries in the vocabulary.
  int64_t size() const { return static_cast<int64_t>(vocab_.size()); }
  /// Largest id in the vocabulary, -1 when it is empty.
  int64_t max_id() const { return max_id_; }

 private:
  struct Merge {
    uint32_t rank;
    uint32_t new_id;
  };

  void read_vocab(const Json& vocab);
  void read_merges(const Json& merges);
  void read_options(const Json& config);
  std::vector<uint32_t> merge_word(std::string_view word) const;
  std::vector<uint32_t> initial_symbols(std::string_view word, std::vector<size_t>& lengths) const;
  const Merge* find_merge(uint32_t left, uint32_t right) const;

  // Token strings, indexed by position in the file; vocab_ and vocab_r_ view
  // into them.
  std::vector<std::string> tokens_;
  std::unordered_map<std::string_view, uint32_t> vocab_;
  std::unordered_map<uint32_t, const std::string*> vocab_r_;
  std::unordered_map<uint64_t, Merge> merges_;
  int64_t max_id_ = -1;
  bool ignore_merges_ = false;
  std::optional<std::string> unk_token_;
  bool fuse_unk_ = false;
  std::unique_ptr<WordCache> cache_ = std::make_unique<WordCache>();
};

}  // namespace remat::io::detail
