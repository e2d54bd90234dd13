#pragma once

// The whole tokenizer: added tokens, normalizer, pre-tokenizer, BPE model,
// post-processor and decoder, in Hugging Face tokenizers' order.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "added_vocabulary.h"
#include "bpe.h"
#include "json_util.h"
#include "normalizer.h"
#include "post_processor.h"
#include "pre_tokenizer.h"

namespace remat::io::detail {

class Pipeline {
 public:
  /// Builds the pipeline that tokenizer.json's parsed `root` describes.
  explicit Pipeline(const Json& root);

  /// Applies a parsed tokenizer_config.json as transformers does when it
  /// loads a saved tokenizer: registers the named special tokens and reads
  /// their ids. `root` is the tokenizer.json it goes with.
  void apply_config(const Json& config, const std::vector<std::string>& key_order,
                    const Json& root);

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const;
  std::optional<int64_t> token_to_id(std::string_view token) const;
  /// The token with `id`; fails naming it and the range of ids.
  const std::string& id_to_token(int64_t id, std::string_view caller) const;
  int64_t vocab_size() const { return vocab_size_; }

  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
  std::optional<int64_t> pad_token_id;

 private:
  void add_tokens(const Json& added_tokens);
  void update_vocab_size();

  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  AddedVocabulary added_;
  int64_t vocab_size_ = 0;
};

}  // namespace remat::io::detail
