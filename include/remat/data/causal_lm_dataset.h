#pragma once

/// \file
/// Causal-LM training data from text and JSONL files: tokenized once,
/// truncated or packed into blocks of `max_seq_length` tokens.
/// \code
///   remat::data::CausalLMDataset dataset(
///       {"train.jsonl"}, tokenizer_fn,
///       remat::data::CausalLMDatasetOptions().max_seq_length(1024).packing(true)
///           .eos_token_id(50256));
///   auto example = dataset.get(0);  // 1024 input_ids and labels
/// \endcode

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "remat/data/dataset.h"

namespace remat::data {

/// Turns text into token ids, without special tokens (CausalLMDataset adds
/// BOS and EOS itself). Any tokenizer wrapped in a lambda will do.
using TokenizeFn = std::function<std::vector<int64_t>(std::string_view text)>;

/// A document before tokenization: the text trained on (`completion`) and
/// an optional prompt before it whose tokens are labelled kIgnoreIndex.
/// Plain text has an empty prompt.
struct Document {
  /// Text before the completion, not trained on; empty for plain text.
  std::string prompt;
  /// The text trained on.
  std::string completion;
  /// Where it came from, for error messages: "file.jsonl:12" (file and
  /// 1-based line where the document starts), or whatever the caller likes.
  std::string source;
};

/// How files become documents and documents become examples. Names follow
/// Hugging Face (TRL's SFTConfig, the `datasets` text loader).
struct CausalLMDatasetOptions {
  /// Tokens per example: longer documents are cut to it (keeping the start),
  /// or, when packing, the length of every block. Default 1024; at least 1.
  TORCH_ARG(int64_t, max_seq_length) = 1024;

  /// Pack: concatenate all documents, each followed by EOS, and cut the
  /// stream into blocks of exactly max_seq_length tokens, dropping the
  /// incomplete last block (transformers' `group_texts`, over the whole
  /// dataset rather than per batch of 1000). Needs eos_token_id. Default false.
  TORCH_ARG(bool, packing) = false;

  /// Put before every document when set. Default unset.
  TORCH_ARG(std::optional<int64_t>, bos_token_id) = std::nullopt;

  /// Put after every document when set; required for packing. Default unset.
  TORCH_ARG(std::optional<int64_t>, eos_token_id) = std::nullopt;

  /// How a .txt file splits into documents: "paragraph" (the default:
  /// blocks of lines separated by blank lines, joined with "\n"), "line"
  /// (each non-blank line; the `datasets` text loader's default), or
  /// "document" (the whole file). Blank documents are skipped, a trailing
  /// "\r" is dropped from every line.
  TORCH_ARG(std::string, sample_by) = "paragraph";

  /// The JSONL key holding plain text. Default "text".
  TORCH_ARG(std::string, dataset_text_field) = "text";

  /// The model's vocabulary size: when set, a token id the tokenizer gives
  /// at or beyond it is an error naming the document. Default unset.
  TORCH_ARG(std::optional<int64_t>, vocab_size) = std::nullopt;
};

/// The documents of one file, by extension: `.txt` split as
/// `options.sample_by()` says; `.jsonl` one JSON object per non-blank line,
/// either `{"text": "..."}` (key `options.dataset_text_field()`) or
/// `{"prompt": "...", "completion": "..."}`; other keys are ignored. A file
/// that cannot be read, a line that is not valid JSON or lacks the keys
/// (named with file and line), or another extension is an error.
///
/// Example: `load_documents("train.jsonl")`
std::vector<Document> load_documents(const std::string& path,
                                     const CausalLMDatasetOptions& options = {});

/// Examples for causal-LM training. Each document becomes
/// `[BOS] prompt completion [EOS]` (BOS and EOS when set), labelled like
/// input_ids except that a document with a prompt has BOS and the prompt
/// labelled kIgnoreIndex. Prompt and completion are tokenized separately, so
/// the boundary between them is exact. Documents with no tokens are skipped.
/// Without packing, each document is one example, cut to max_seq_length;
/// with packing, see CausalLMDatasetOptions::packing. No example at all is
/// an error.
class CausalLMDataset : public Dataset {
 public:
  /// Reads `paths` (see load_documents) in order and tokenizes them.
  ///
  /// Example: `CausalLMDataset({"a.txt", "b.jsonl"}, tokenize,
  /// CausalLMDatasetOptions().max_seq_length(512))`
  CausalLMDataset(const std::vector<std::string>& paths, const TokenizeFn& tokenize,
                  const CausalLMDatasetOptions& options = {});

  /// From documents in memory.
  ///
  /// Example: `CausalLMDataset::from_documents({{"", "Hello world", "greeting"}}, tokenize)`
  static CausalLMDataset from_documents(const std::vector<Document>& documents,
                                        const TokenizeFn& tokenize,
                                        const CausalLMDatasetOptions& options = {});

  int64_t size() const override { return static_cast<int64_t>(offsets_.size()) - 1; }
  /// The example at `index` in [0, size()): its input_ids and labels.
  Example get(int64_t index) const override;

  /// Tokens over all examples (what the model sees per epoch).
  int64_t num_tokens() const { return offsets_.back(); }

  /// The options the dataset was built with.
  const CausalLMDatasetOptions& options() const { return options_; }

 private:
  CausalLMDataset(const CausalLMDatasetOptions& options, std::string origin);
  void add(const std::vector<Document>& documents, const TokenizeFn& tokenize);
  void finish();

  CausalLMDatasetOptions options_;
  std::string origin_;
  std::vector<int64_t> input_ids_;
  std::vector<int64_t> labels_;
  bool has_labels_ = false;  // false while every label equals its input id
  std::vector<int64_t> offsets_{0};
};

}  // namespace remat::data
