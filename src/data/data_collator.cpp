#include "remat/data/data_collator.h"

#include <algorithm>

namespace remat::data {

Batch Batch::to(const torch::Device& device, bool non_blocking) const {
  return {input_ids.to(device, non_blocking), attention_mask.to(device, non_blocking),
          labels.to(device, non_blocking), has_padding};
}

DataCollatorForCausalLM::DataCollatorForCausalLM(const DataCollatorForCausalLMOptions& options)
    : options_(options) {
  const auto& side = options_.padding_side();
  TORCH_CHECK(side == "right" || side == "left", "Invalid padding_side '", side,
              "'; valid values: right, left");
  TORCH_CHECK(options_.pad_to_multiple_of().value_or(1) >= 1,
              "pad_to_multiple_of must be at least 1, got ", *options_.pad_to_multiple_of());
  TORCH_CHECK(options_.vocab_size().value_or(1) >= 1, "vocab_size must be at least 1, got ",
              *options_.vocab_size());
}

namespace {

// Every input id, and every label but kIgnoreIndex, is a token of the model.
void check_vocabulary(const std::vector<Example>& examples, int64_t vocab_size) {
  auto outside = [vocab_size](int64_t id) { return id < 0 || id >= vocab_size; };
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto& e = examples[i];
    for (size_t j = 0; j < e.input_ids.size(); ++j) {
      TORCH_CHECK(!outside(e.input_ids[j]), "Example ", i, " of the batch has input id ",
                  e.input_ids[j], " at position ", j, "; the model's vocab_size is ", vocab_size,
                  ", so ids must be in [0, ", vocab_size,
                  "). Is the tokenizer the model's (a tokenizer with more tokens than the model's "
                  "embedding)?");
      TORCH_CHECK(e.labels[j] == kIgnoreIndex || !outside(e.labels[j]), "Example ", i,
                  " of the batch has label ", e.labels[j], " at position ", j,
                  "; the model's vocab_size is ", vocab_size, ", so labels must be in [0, ",
                  vocab_size, ") or ", kIgnoreIndex, " (ignored)");
    }
  }
}

}  // namespace

Batch DataCollatorForCausalLM::operator()(const std::vector<Example>& examples) const {
  TORCH_CHECK(!examples.empty(), "DataCollatorForCausalLM needs at least one example");
  int64_t length = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto& e = examples[i];
    TORCH_CHECK(e.input_ids.size() == e.labels.size(), "Example ", i, " has ", e.input_ids.size(),
                " input_ids but ", e.labels.size(), " labels");
    length = std::max(length, static_cast<int64_t>(e.input_ids.size()));
  }
  if (auto vocab_size = options_.vocab_size()) check_vocabulary(examples, *vocab_size);
  if (auto multiple = options_.pad_to_multiple_of())
    length = (length + *multiple - 1) / *multiple * *multiple;

  auto rows = static_cast<int64_t>(examples.size());
  auto input_ids = torch::full({rows, length}, options_.pad_token_id(), torch::kLong);
  auto attention_mask = torch::zeros({rows, length}, torch::kLong);
  auto labels = torch::full({rows, length}, options_.label_pad_token_id(), torch::kLong);
  auto ids = input_ids.accessor<int64_t, 2>();
  auto mask = attention_mask.accessor<int64_t, 2>();
  auto lab = labels.accessor<int64_t, 2>();
  bool left = options_.padding_side() == "left";
  for (int64_t row = 0; row < rows; ++row) {
    const auto& e = examples[row];
    auto n = static_cast<int64_t>(e.input_ids.size());
    int64_t start = left ? length - n : 0;
    for (int64_t j = 0; j < n; ++j) {
      ids[row][start + j] = e.input_ids[j];
      mask[row][start + j] = 1;
      lab[row][start + j] = e.labels[j];
    }
  }
  bool has_padding = false;
  for (const auto& e : examples) has_padding |= static_cast<int64_t>(e.input_ids.size()) < length;
  return {input_ids, attention_mask, labels, has_padding};
}

}  // namespace remat::data
