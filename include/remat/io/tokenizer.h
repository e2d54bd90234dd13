#pragma once

/// \file
/// Byte-level BPE tokenization from Hugging Face tokenizer.json files (GPT-2,
/// Llama 3, Qwen2, SmolLM and the like), giving the same ids and text as
/// transformers. Needs no LibTorch: ids are plain `int64_t`.

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace remat::io {

/// The exception every remat::io::Tokenizer function throws for a bad file,
/// an unsupported tokenizer, text that is not UTF-8 or an unknown id. The
/// message names the bad value and what would be valid.
///
/// Example: `try { tok = Tokenizer::from_file(path); } catch (const remat::io::TokenizerError& e)
/// {}`
class TokenizerError : public std::runtime_error {
 public:
  /// Constructs it from the message.
  using std::runtime_error::runtime_error;
};

/// A byte-level BPE tokenizer read from a tokenizer.json, encoding and
/// decoding exactly as Hugging Face transformers does.
///
/// Supported: model type BPE (merges as "a b" strings or [a, b] pairs,
/// ignore_merges, unk_token); normalizer null, NFC or a Sequence of those;
/// pre-tokenizers ByteLevel, Split (Regex or String pattern, any behavior,
/// invert) and Sequence; added tokens, special or not, with their lstrip,
/// rstrip, single_word and normalized options; post-processors ByteLevel,
/// TemplateProcessing (single sequences) and Sequence; decoder ByteLevel or
/// null. Anything else is rejected when loading, naming what was found.
/// truncation and padding in the file are ignored, as transformers does.
///
/// A Tokenizer is immutable and safe to use from several threads at once;
/// copies are cheap and share the vocabulary and the per-word cache. A
/// moved-from Tokenizer can only be assigned to or destroyed.
///
/// Example:
/// \code
///   auto tok = remat::io::Tokenizer::from_pretrained("models/llama3");
///   std::vector<int64_t> ids = tok.encode("Hello world");   // BOS first, as the file says
///   std::string text = tok.decode(ids, /*skip_special_tokens=*/true);  // "Hello world"
/// \endcode
class Tokenizer {
 public:
  /// Reads a tokenizer.json file. Throws TokenizerError if the file cannot
  /// be read, is not valid JSON, lacks a required field or uses an
  /// unsupported component.
  ///
  /// Example: `auto tok = Tokenizer::from_file("gpt2/tokenizer.json");`
  static Tokenizer from_file(const std::string& tokenizer_json_path);

  /// Builds a tokenizer from the text of a tokenizer.json; errors as
  /// from_file.
  ///
  /// Example: `auto tok = Tokenizer::from_json(json_text);`
  static Tokenizer from_json(std::string_view tokenizer_json);

  /// Reads a directory saved by transformers' save_pretrained: its
  /// tokenizer.json, and its tokenizer_config.json when there is one, for the
  /// special tokens (bos_token, eos_token, pad_token, unk_token, the other
  /// *_token entries, extra_special_tokens / additional_special_tokens and
  /// added_tokens_decoder). A named special token missing from the vocabulary
  /// is added with the next free id, as transformers does. Like transformers
  /// 5, it leaves the adding of BOS/EOS to tokenizer.json's post-processor:
  /// add_bos_token / add_eos_token in the config are not applied.
  ///
  /// Example: `auto tok = Tokenizer::from_pretrained("checkpoints/qwen2");`
  static Tokenizer from_pretrained(const std::string& dir);

  /// The ids of `text` (UTF-8). With `add_special_tokens` (the default) the
  /// post-processor adds its special tokens (Llama 3's BOS, for instance);
  /// special tokens written in the text are always recognised. Throws
  /// TokenizerError if `text` is not valid UTF-8.
  ///
  /// Example: `tok.encode("It's 2024!", /*add_special_tokens=*/false)`
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const;

  /// encode() of every text, spread over the machine's cores for large
  /// batches; the result is in the order of `texts`.
  ///
  /// Example: `auto batch = tok.encode_batch({"first", "second"});`
  std::vector<std::vector<int64_t>> encode_batch(const std::vector<std::string>& texts,
                                                 bool add_special_tokens = true) const;

  /// The text of `ids`. With `skip_special_tokens` (default false) special
  /// tokens are left out. Byte sequences that are not valid UTF-8 (a
  /// character cut between ids) become U+FFFD, as in transformers. Throws
  /// TokenizerError naming an id that is in no vocabulary (transformers would
  /// drop it silently).
  ///
  /// Example: `tok.decode({9906, 1917})  // "Hello world"`
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

  /// Number of distinct tokens, added tokens included: `len(tokenizer)` in
  /// transformers.
  int64_t vocab_size() const;

  /// The id of `token` (added tokens first, then the model's vocabulary), or
  /// nullopt. Tokens are in the file's byte-level form: " world" is "Ġworld".
  ///
  /// Example: `tok.token_to_id("<|endoftext|>")`
  std::optional<int64_t> token_to_id(std::string_view token) const;

  /// The token with id `id`, in the file's byte-level form. Throws
  /// TokenizerError naming `id` and the valid range if no token has it.
  ///
  /// Example: `tok.id_to_token(50256)  // "<|endoftext|>" for GPT-2`
  std::string id_to_token(int64_t id) const;

  /// Id of tokenizer_config.json's bos_token; nullopt when there is none or
  /// the tokenizer was not made by from_pretrained.
  std::optional<int64_t> bos_token_id() const;

  /// Id of tokenizer_config.json's eos_token; nullopt as for bos_token_id().
  std::optional<int64_t> eos_token_id() const;

  /// Id of tokenizer_config.json's pad_token; nullopt as for bos_token_id().
  std::optional<int64_t> pad_token_id() const;

 private:
  class Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace remat::io
