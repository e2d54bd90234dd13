// Pipeline::apply_config: what transformers does with tokenizer_config.json
// when it loads a tokenizer saved with save_pretrained.

#include <algorithm>
#include <unordered_map>

#include "pipeline.h"

namespace remat::io::detail {
namespace {

// transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order.
constexpr std::string_view kNamedTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                             "pad_token", "cls_token", "mask_token"};

bool is_named(std::string_view key) {
  return std::find(std::begin(kNamedTokens), std::end(kNamedTokens), key) != std::end(kNamedTokens);
}

bool ends_with_token(std::string_view key) {
  constexpr std::string_view kSuffix = "_token";
  return key.size() > kSuffix.size() && key.substr(key.size() - kSuffix.size()) == kSuffix;
}

// A special token given as a string (special, not normalized) or as an
// AddedToken object; nullopt for anything else.
std::optional<AddedToken> special_token(const Json& value, const std::string& where) {
  if (value.is_string()) {
    AddedToken token;
    token.content = value.get<std::string>();
    token.special = true;
    token.normalized = false;
    return token;
  }
  if (value.is_object() && value.contains("content")) return parse_added_token(value, where, true);
  return std::nullopt;
}

// The AddedTokens transformers resolves named special tokens against: the
// config's added_tokens_decoder when it has one, else tokenizer.json's.
std::unordered_map<std::string, AddedToken> known_tokens(const Json& config, const Json& root) {
  std::unordered_map<std::string, AddedToken> known;
  if (const Json* decoder = optional_field(config, "added_tokens_decoder")) {
    expect_object(*decoder, "tokenizer_config.json added_tokens_decoder");
    for (const auto& [id, token] : decoder->items()) {
      AddedToken parsed = parse_added_token(token, "added_tokens_decoder." + id, false);
      known[parsed.content] = parsed;
    }
    return known;
  }
  if (const Json* added = optional_field(root, "added_tokens"); added && added->is_array()) {
    for (const Json& token : *added) {
      AddedToken parsed = parse_added_token(token, "added_tokens", false);
      known[parsed.content] = parsed;
    }
  }
  return known;
}

// The config's added_tokens_decoder entries, in id order.
std::vector<AddedToken> decoder_tokens(const Json& config) {
  std::vector<std::pair<int64_t, AddedToken>> entries;
  if (const Json* decoder = optional_field(config, "added_tokens_decoder")) {
    for (const auto& [id, token] : decoder->items()) {
      int64_t index = 0;
      try {
        index = std::stoll(id);
      } catch (const std::exception&) {
        fail("tokenizer_config.json added_tokens_decoder key \"" + id + "\" is not an id");
      }
      entries.emplace_back(index, parse_added_token(token, "added_tokens_decoder." + id, false));
    }
  }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<AddedToken> out;
  for (auto& entry : entries) out.push_back(std::move(entry.second));
  return out;
}

// extra_special_tokens (or the older additional_special_tokens) as a list.
std::vector<AddedToken> extra_tokens(const Json& config) {
  const Json* extra = optional_field(config, "extra_special_tokens");
  if (extra == nullptr) extra = optional_field(config, "additional_special_tokens");
  std::vector<AddedToken> out;
  if (extra == nullptr) return out;
  for (const Json& value : *extra) {  // a list, or a dict of named tokens
    if (auto token = special_token(value, "extra_special_tokens")) out.push_back(*token);
  }
  return out;
}

// The *_token entries of the config, in the order transformers registers
// them: its seven named tokens, then model-specific ones in file order. A
// named token whose content is a known AddedToken takes that token's
// options. `contents` gets each key's token content.
std::vector<AddedToken> named_tokens(const Json& config, const std::vector<std::string>& key_order,
                                     const Json& root,
                                     std::unordered_map<std::string, std::string>& contents) {
  const auto known = known_tokens(config, root);
  std::vector<std::string> keys(std::begin(kNamedTokens), std::end(kNamedTokens));
  for (const std::string& key : key_order) {
    if (ends_with_token(key) && !is_named(key)) keys.push_back(key);
  }
  std::vector<AddedToken> tokens;
  for (const std::string& key : keys) {
    const Json* value = optional_field(config, key.c_str());
    if (value == nullptr) continue;
    auto token = special_token(*value, "tokenizer_config.json " + key);
    if (!token && is_named(key)) {
      fail("tokenizer_config.json " + key + " must be a string or an AddedToken object, got " +
           brief(*value));
    }
    if (!token) continue;
    if (auto it = known.find(token->content); is_named(key) && it != known.end()) {
      token = it->second;
    }
    contents[key] = token->content;
    tokens.push_back(*token);
  }
  return tokens;
}

}  // namespace

void Pipeline::apply_config(const Json& config, const std::vector<std::string>& key_order,
                            const Json& root) {
  expect_object(config, "tokenizer_config.json");
  std::unordered_map<std::string, std::string> contents;
  std::vector<AddedToken> tokens = decoder_tokens(config);
  for (AddedToken& token : named_tokens(config, key_order, root, contents)) tokens.push_back(token);
  for (AddedToken& token : extra_tokens(config)) tokens.push_back(token);
  for (const AddedToken& token : tokens) added_.add(token, *model_);
  added_.set_split_special_tokens(
      bool_field(config, "split_special_tokens", "tokenizer_config.json", false));
  added_.rebuild(*model_, normalizer_.get());
  update_vocab_size();
  const auto id_of = [&](const char* key) -> std::optional<int64_t> {
    auto it = contents.find(key);
    return it == contents.end() ? std::nullopt : token_to_id(it->second);
  };
  bos_token_id = id_of("bos_token");
  eos_token_id = id_of("eos_token");
  pad_token_id = id_of("pad_token");
}

}  // namespace remat::io::detail
