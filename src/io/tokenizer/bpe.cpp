#include "bpe.h"

#include <functional>
#include <limits>
#include <queue>

#include "utf8.h"

namespace remat::io::detail {
namespace {

// Words this long or longer are not cached, as in Hugging Face tokenizers.
constexpr size_t kMaxCachedLength = 256;

uint64_t pair_key(uint32_t left, uint32_t right) {
  return (static_cast<uint64_t>(left) << 32) | right;
}

// A symbol of a word being merged; merged-away symbols get length 0.
struct Symbol {
  uint32_t id;
  int64_t prev;
  int64_t next;
  size_t length;
};

// A candidate merge of the symbol at `pos` with its successor.
struct Candidate {
  uint32_t rank;
  size_t pos;
  uint32_t new_id;
};

// Lowest rank first, then leftmost: the order of Hugging Face's merge heap.
struct LaterCandidate {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  }
};

uint32_t parse_id(const Json& value, const std::string& token) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
      value.get<int64_t>() > std::numeric_limits<uint32_t>::max()) {
    fail("model.vocab[\"" + token + "\"] must be an integer id from 0 to 4294967295, got " +
         brief(value));
  }
  return static_cast<uint32_t>(value.get<int64_t>());
}

// One entry of model.merges: "a b" or ["a", "b"].
std::pair<std::string, std::string> parse_merge(const Json& merge, size_t index) {
  if (merge.is_string()) {
    const std::string line = merge.get<std::string>();
    const size_t space = line.find(' ');
    if (space != std::string::npos && line.find(' ', space + 1) == std::string::npos) {
      return {line.substr(0, space), line.substr(space + 1)};
    }
  } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
             merge[1].is_string()) {
    return {merge[0].get<std::string>(), merge[1].get<std::string>()};
  }
  fail("model.merges[" + std::to_string(index) +
       "] must be \"left right\" or [\"left\", \"right\"], got " + brief(merge));
}

}  // namespace

bool WordCache::lookup(std::string_view word, std::vector<int64_t>& out) const {
  Shard& shard = shards_[std::hash<std::string_view>()(word) % kShards];
  std::lock_guard<std::mutex> lock(shard.mutex);
  auto it = shard.entries.find(std::string(word));
  if (it == shard.entries.end()) return false;
  out.insert(out.end(), it->second.begin(), it->second.end());
  return true;
}

void WordCache::insert(std::string_view word, const std::vector<uint32_t>& ids) const {
  Shard& shard = shards_[std::hash<std::string_view>()(word) % kShards];
  std::lock_guard<std::mutex> lock(shard.mutex);
  if (shard.entries.size() >= kEntriesPerShard) shard.entries.clear();
  shard.entries.emplace(std::string(word), ids);
}

BpeModel::BpeModel(const Json& config) {
  expect_object(config, "model");
  read_options(config);
  read_vocab(required_field(config, "vocab", "model"));
  read_merges(required_field(config, "merges", "model"));
}

void BpeModel::read_options(const Json& config) {
  if (const Json* dropout = optional_field(config, "dropout")) {
    if (!dropout->is_number() || dropout->get<double>() != 0.0) {
      fail("model.dropout is " + brief(*dropout) +
           "; only null or 0 is supported (dropout makes encoding random)");
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const Json* value = optional_field(config, key);
    if (value != nullptr && !(value->is_string() && value->get<std::string>().empty())) {
      fail(std::string("model.") + key + " is " + brief(*value) + "; only null is supported");
    }
  }
  if (bool_field(config, "byte_fallback", "model", false)) {
    fail("model.byte_fallback is true; only false is supported (byte-level BPE)");
  }
  ignore_merges_ = bool_field(config, "ignore_merges", "model", false);
  fuse_unk_ = bool_field(config, "fuse_unk", "model", false);
  if (const Json* unk = optional_field(config, "unk_token")) {
    if (!unk->is_string()) fail("model.unk_token must be a string or null, got " + brief(*unk));
    unk_token_ = unk->get<std::string>();
  }
}

void BpeModel::read_vocab(const Json& vocab) {
  if (!vocab.is_object()) fail("model.vocab must be an object of token: id, got " + brief(vocab));
  tokens_.reserve(vocab.size());
  std::vector<uint32_t> ids;
  ids.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    ids.push_back(parse_id(id, token));
    tokens_.push_back(token);
  }
  // tokens_ no longer grows, so views into its strings stay valid.
  for (size_t i = 0; i < tokens_.size(); ++i) {
    vocab_[tokens_[i]] = ids[i];
    vocab_r_[ids[i]] = &tokens_[i];
    max_id_ = std::max<int64_t>(max_id_, ids[i]);
  }
}

void BpeModel::read_merges(const Json& merges) {
  if (!merges.is_array()) fail("model.merges must be an array, got " + brief(merges));
  uint32_t rank = 0;
  for (size_t i = 0; i < merges.size(); ++i) {
    const Json& merge = merges[i];
    if (merge.is_string() && merge.get<std::string>().rfind("#version", 0) == 0) continue;
    const auto [left, right] = parse_merge(merge, i);
    const auto left_id = token_to_id(left);
    const auto right_id = token_to_id(right);
    const auto merged_id = token_to_id(left + right);
    if (!left_id || !right_id || !merged_id) {
      const std::string& missing = !left_id ? left : !right_id ? right : left + right;
      fail("model.merges[" + std::to_string(i) + "] uses \"" + missing +
           "\", which is not in model.vocab");
    }
    // A repeated pair keeps its last rank, as a Rust HashMap collect does.
    merges_[pair_key(static_cast<uint32_t>(*left_id), static_cast<uint32_t>(*right_id))] =
        Merge{rank++, static_cast<uint32_t>(*merged_id)};
  }
}

std::optional<int64_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int64_t id) const {
  if (id < 0 || id > max_id_) return nullptr;
  auto it = vocab_r_.find(static_cast<uint32_t>(id));
  return it == vocab_r_.end() ? nullptr : it->second;
}

const BpeModel::Merge* BpeModel::find_merge(uint32_t left, uint32_t right) const {
  auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::tokenize(std::string_view word, std::vector<int64_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = token_to_id(word)) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedLength;
  if (cacheable && cache_->lookup(word, out)) return;
  const std::vector<uint32_t> ids = merge_word(word);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) cache_->insert(word, ids);
}

// The vocabulary ids of the characters of `word` (and their byte lengths);
// unknown characters become the unknown token if there is one, else vanish.
std::vector<uint32_t> BpeModel::initial_symbols(std::string_view word,
                                                std::vector<size_t>& lengths) const {
  std::vector<uint32_t> ids;
  std::optional<std::pair<uint32_t, size_t>> unk;  // pending unknown token and its length
  const auto flush_unk = [&] {
    if (!unk) return;
    ids.push_back(unk->first);
    lengths.push_back(unk->second);
    unk.reset();
  };
  for (size_t pos = 0; pos < word.size();) {
    const size_t length = std::max<size_t>(1, utf8_sequence_length(word, pos));
    const auto id = token_to_id(word.substr(pos, length));
    if (id) {
      flush_unk();
      ids.push_back(static_cast<uint32_t>(*id));
      lengths.push_back(length);
    } else if (unk_token_) {
      const auto unk_id = token_to_id(*unk_token_);
      if (!unk_id) fail("model.unk_token \"" + *unk_token_ + "\" is not in model.vocab");
      if (unk && fuse_unk_) {
        unk->second += length;
      } else {
        flush_unk();
        unk = std::make_pair(static_cast<uint32_t>(*unk_id), length);
      }
    }
    pos += length;
  }
  flush_unk();
  return ids;
}

// Applies the merges lowest rank first, leftmost first among equals, exactly
// as Hugging Face's Word::merge_all does (dropout aside).
std::vector<uint32_t> BpeModel::merge_word(std::string_view word) const {
  std::vector<size_t> lengths;
  const std::vector<uint32_t> ids = initial_symbols(word, lengths);
  std::vector<Symbol> symbols(ids.size());
  const auto n = static_cast<int64_t>(ids.size());
  for (int64_t i = 0; i < n; ++i) {
    symbols[i] = Symbol{ids[i], i - 1, i + 1 < n ? i + 1 : -1, lengths[i]};
  }
  std::priority_queue<Candidate, std::vector<Candidate>, LaterCandidate> queue;
  // Queues the merge of the symbol at `pos` with the one after it, if any.
  const auto propose = [&](int64_t pos) {
    if (pos < 0 || symbols[pos].next == -1) return;
    if (const Merge* m = find_merge(symbols[pos].id, symbols[symbols[pos].next].id)) {
      queue.push({m->rank, static_cast<size_t>(pos), m->new_id});
    }
  };
  for (int64_t i = 0; i < n; ++i) propose(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.pos];
    if (current.length == 0 || current.next == -1) continue;
    const Symbol right = symbols[current.next];
    const Merge* still = find_merge(current.id, right.id);
    if (still == nullptr || still->new_id != top.new_id) continue;  // an expired candidate
    symbols[current.next].length = 0;
    current.id = top.new_id;
    current.length += right.length;
    current.next = right.next;
    if (right.next != -1) symbols[right.next].prev = static_cast<int64_t>(top.pos);
    propose(current.prev);
    propose(static_cast<int64_t>(top.pos));
  }
  std::vector<uint32_t> result;
  for (const Symbol& symbol : symbols) {
    if (symbol.length != 0) result.push_back(symbol.id);
  }
  return result;
}

}  // namespace remat::io::detail
