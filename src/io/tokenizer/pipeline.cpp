#include "pipeline.h"

#include <algorithm>

#include "utf8.h"

namespace remat::io::detail {
namespace {

const Json& null_json() {
  static const Json null;
  return null;
}

const Json& field_or_null(const Json& object, const char* key) {
  const Json* value = optional_field(object, key);
  return value != nullptr ? *value : null_json();
}

const Json& model_config(const Json& root) {
  const Json& model = required_field(root, "model", "tokenizer.json");
  expect_object(model, "model");
  const Json* type = optional_field(model, "type");
  if (type == nullptr && model.contains("merges")) return model;  // files older than "type"
  const std::string name = component_type(model, "model");
  if (name != "BPE") {
    fail("unsupported model type \"" + name + "\"; supported: BPE (byte-level)");
  }
  return model;
}

}  // namespace

Pipeline::Pipeline(const Json& root) {
  expect_object(root, "tokenizer.json");
  if (const Json* version = optional_field(root, "version")) {
    if (*version != "1.0")
      fail("tokenizer.json version " + brief(*version) + " is unknown; supported: \"1.0\"");
  }
  model_ = std::make_unique<BpeModel>(model_config(root));
  normalizer_ = make_normalizer(field_or_null(root, "normalizer"));
  pre_tokenizer_ = make_pre_tokenizer(field_or_null(root, "pre_tokenizer"));
  post_processor_ = make_post_processor(field_or_null(root, "post_processor"));
  decoder_ = make_decoder(field_or_null(root, "decoder"));
  add_tokens(field_or_null(root, "added_tokens"));
  update_vocab_size();
}

void Pipeline::add_tokens(const Json& added_tokens) {
  if (added_tokens.is_null()) return;
  if (!added_tokens.is_array()) fail("added_tokens must be an array, got " + brief(added_tokens));
  for (size_t i = 0; i < added_tokens.size(); ++i) {
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    expect_object(added_tokens[i], where);
    added_.add(parse_added_token(added_tokens[i], where, false), *model_);
  }
  added_.rebuild(*model_, normalizer_.get());
}

void Pipeline::update_vocab_size() {
  vocab_size_ = model_->size();
  for (const std::string& content : added_.contents()) {
    if (!model_->token_to_id(content)) ++vocab_size_;
  }
}

std::vector<int64_t> Pipeline::encode(std::string_view text, bool add_special_tokens) const {
  check_utf8(text, "the text to encode");
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3);
  std::vector<std::string> pieces;
  for (Segment& segment : added_.split(text, normalizer_.get())) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    pieces.clear();
    pieces.push_back(std::move(segment.text));
    if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pieces);
    for (const std::string& piece : pieces) model_->tokenize(piece, ids);
  }
  if (post_processor_) post_processor_->process(ids, add_special_tokens);
  return ids;
}

std::string Pipeline::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<const std::string*> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    const std::string& token = id_to_token(id, "decode");
    if (skip_special_tokens && added_.is_special(token)) continue;
    tokens.push_back(&token);
  }
  return decoder_->decode(tokens);
}

std::optional<int64_t> Pipeline::token_to_id(std::string_view token) const {
  if (auto id = added_.token_to_id(token)) return id;
  return model_->token_to_id(token);
}

const std::string& Pipeline::id_to_token(int64_t id, std::string_view caller) const {
  if (const AddedToken* added = added_.token(id)) return added->content;
  if (const std::string* token = model_->id_to_token(id)) return *token;
  const int64_t largest = std::max(model_->max_id(), added_.max_id());
  fail(std::string(caller) + ": id " + std::to_string(id) +
       " is not in the vocabulary; valid ids are 0 to " + std::to_string(largest));
}

}  // namespace remat::io::detail
