#pragma once

/// \file
/// Batches of causal-LM examples as padded tensors.
/// \code
///   remat::data::DataCollatorForCausalLM collate(
///       remat::data::DataCollatorForCausalLMOptions(/*pad_token_id=*/0).pad_to_multiple_of(8));
///   remat::data::Batch batch = collate({dataset.get(0), dataset.get(1)});
/// \endcode

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "remat/data/dataset.h"

namespace remat::data {

/// A batch: `input_ids`, `attention_mask` (1 on tokens, 0 on padding) and
/// `labels` (kIgnoreIndex on padding), each int64 of shape [batch, length].
struct Batch {
  /// [batch, tokens] int64 token ids, padded.
  torch::Tensor input_ids;
  /// [batch, tokens] int64: 1 for real tokens, 0 for padding.
  torch::Tensor attention_mask;
  /// [batch, tokens] int64 targets; padding and masked tokens are -100.
  torch::Tensor labels;
  /// Whether any row has padding (a 0 in attention_mask). Known on the host
  /// when the batch is built, so a model given no mask for an unpadded batch
  /// attends causally without reading the mask back from the device. A
  /// collator that does not know leaves it true.
  bool has_padding = true;

  /// The same batch on `device`.
  ///
  /// Example: `batch = batch.to(torch::kCUDA, /*non_blocking=*/true);`
  Batch to(const torch::Device& device, bool non_blocking = false) const;
};

/// How DataCollatorForCausalLM pads. Names follow Hugging Face's collators.
struct DataCollatorForCausalLMOptions {
  /// The id padding positions of input_ids get (a tokenizer's pad token).
  /* implicit */ DataCollatorForCausalLMOptions(int64_t pad_token_id)
      : pad_token_id_(pad_token_id) {}

  TORCH_ARG(int64_t, pad_token_id);

  /// Pad to the longest example rounded up to a multiple of this (8 or 64
  /// suit tensor cores). Default unset: to the longest; at least 1.
  TORCH_ARG(std::optional<int64_t>, pad_to_multiple_of) = std::nullopt;

  /// "right" (the default) puts padding after the tokens, "left" before.
  TORCH_ARG(std::string, padding_side) = "right";

  /// The label of padding positions. Default kIgnoreIndex (-100).
  TORCH_ARG(int64_t, label_pad_token_id) = kIgnoreIndex;

  /// The model's vocabulary size: when set, every input id and every label
  /// but kIgnoreIndex must lie in [0, vocab_size), checked on the host as the
  /// batch is built (on the device a bad id is an assert or a NaN loss).
  /// (The Trainer checks its host batches itself.) Default unset.
  TORCH_ARG(std::optional<int64_t>, vocab_size) = std::nullopt;
};

/// Pads a list of examples to one length and stacks them: the batches of
/// transformers' DataCollatorForLanguageModeling(mlm=False) (with
/// return_attention_mask) for plain text, and of DataCollatorForSeq2Seq for
/// examples whose labels mask a prompt. Unlike DataCollatorForLanguageModeling,
/// it keeps each example's labels and masks only padding, so a real token
/// equal to pad_token_id (EOS used as padding) is still trained on.
///
/// Example: `DataCollatorForCausalLM collate(0); auto batch = collate(examples);`
class DataCollatorForCausalLM {
 public:
  /// A collator padding as `options` says.
  explicit DataCollatorForCausalLM(const DataCollatorForCausalLMOptions& options);

  /// The padded batch. `examples` must not be empty, and each must have as
  /// many labels as input_ids.
  Batch operator()(const std::vector<Example>& examples) const;

  /// The options it pads with.
  const DataCollatorForCausalLMOptions& options() const { return options_; }

 private:
  DataCollatorForCausalLMOptions options_;
};

}  // namespace remat::data
