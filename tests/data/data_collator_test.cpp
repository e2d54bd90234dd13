// DataCollatorForCausalLM against transformers' collators (the data_collator
// oracle), and its errors.

#include "remat/data/data_collator.h"

#include <gtest/gtest.h>

#include "oracle.h"
#include "support.h"

using remat::data::Batch;
using remat::data::DataCollatorForCausalLM;
using remat::data::DataCollatorForCausalLMOptions;
using remat::data::Example;
using remat::data::kIgnoreIndex;

namespace {

torch::Tensor tensor_of(const nlohmann::json& rows) {
  std::vector<torch::Tensor> result;
  for (const auto& row : rows) result.push_back(torch::tensor(row.get<std::vector<int64_t>>()));
  return torch::stack(result);
}

}  // namespace

TEST(DataCollatorTest, MatchesTransformersCollators) {
  auto cases = remat::test::read_json(remat::test::oracle_dir("data_collator") + "/batches.json");
  for (const auto& c : cases) {
    auto options = DataCollatorForCausalLMOptions(c["pad_token_id"].get<int64_t>())
                       .padding_side(c["padding_side"].get<std::string>());
    if (!c["pad_to_multiple_of"].is_null()) {
      options.pad_to_multiple_of(c["pad_to_multiple_of"].get<int64_t>());
    }
    std::vector<Example> examples;
    for (const auto& e : c["examples"]) {
      examples.push_back(
          {e["input_ids"].get<std::vector<int64_t>>(), e["labels"].get<std::vector<int64_t>>()});
    }
    auto batch = DataCollatorForCausalLM(options)(examples);
    const auto& expected = c["batch"];
    auto what = c["kind"].dump() + " " + c["padding_side"].dump() + " multiple " +
                c["pad_to_multiple_of"].dump();
    EXPECT_TRUE(remat::test::bitwise_equal(batch.input_ids, tensor_of(expected["input_ids"])))
        << what;
    EXPECT_TRUE(
        remat::test::bitwise_equal(batch.attention_mask, tensor_of(expected["attention_mask"])))
        << what;
    if (expected.contains("labels")) {
      EXPECT_TRUE(remat::test::bitwise_equal(batch.labels, tensor_of(expected["labels"]))) << what;
    }
  }
}

// DataCollatorForLanguageModeling would label every token equal to the pad
// id -100, EOS included when EOS doubles as padding; only padding is masked here.
TEST(DataCollatorTest, EosUsedAsPaddingIsStillALabel) {
  const int64_t eos = 50256;
  DataCollatorForCausalLM collate(eos);
  auto batch = collate({{{1, 2, eos}, {1, 2, eos}}, {{3, eos}, {3, eos}}});
  EXPECT_TRUE(remat::test::bitwise_equal(
      batch.labels,
      torch::tensor(std::vector<int64_t>{1, 2, eos, 3, eos, kIgnoreIndex}).view({2, 3})));
  EXPECT_TRUE(remat::test::bitwise_equal(
      batch.input_ids, torch::tensor(std::vector<int64_t>{1, 2, eos, 3, eos, eos}).view({2, 3})));
}

TEST(DataCollatorTest, LabelPadIsConfigurable) {
  DataCollatorForCausalLM collate(DataCollatorForCausalLMOptions(0).label_pad_token_id(-1));
  auto batch = collate({{{4}, {4}}, {{5, 6}, {5, 6}}});
  EXPECT_TRUE(remat::test::bitwise_equal(batch.labels,
                                         torch::tensor({4, -1, 5, 6}, torch::kLong).view({2, 2})));
}

TEST(DataCollatorTest, DefaultsAndDevice) {
  DataCollatorForCausalLMOptions options(7);
  EXPECT_EQ(options.pad_token_id(), 7);
  EXPECT_FALSE(options.pad_to_multiple_of().has_value());
  EXPECT_EQ(options.padding_side(), "right");
  EXPECT_EQ(options.label_pad_token_id(), kIgnoreIndex);
  auto batch = DataCollatorForCausalLM(options)({{{1}, {1}}}).to(torch::kCPU);
  EXPECT_EQ(batch.input_ids.dtype(), torch::kLong);
  EXPECT_EQ(batch.attention_mask.dtype(), torch::kLong);
  EXPECT_EQ(batch.labels.sizes(), (std::vector<int64_t>{1, 1}));
}

// has_padding says, from the host, whether attention_mask has a 0, and
// survives the move to a device.
TEST(DataCollatorTest, HasPaddingIsKnownOnTheHost) {
  DataCollatorForCausalLM collate(0);
  auto equal = collate({{{1, 2}, {1, 2}}, {{3, 4}, {3, 4}}});
  EXPECT_FALSE(equal.has_padding);
  EXPECT_FALSE(equal.to(torch::kCPU).has_padding);
  EXPECT_TRUE(equal.attention_mask.all().item<bool>());
  auto ragged = collate({{{1, 2}, {1, 2}}, {{3}, {3}}});
  EXPECT_TRUE(ragged.has_padding);
  EXPECT_TRUE(ragged.to(torch::kCPU).has_padding);
  auto rounded = DataCollatorForCausalLM(DataCollatorForCausalLMOptions(0).pad_to_multiple_of(4))(
      {{{1, 2}, {1, 2}}, {{3, 4}, {3, 4}}});
  EXPECT_TRUE(rounded.has_padding);
  EXPECT_FALSE(rounded.attention_mask.all().item<bool>());
  EXPECT_TRUE(Batch{}.has_padding) << "a batch built elsewhere may have padding";
}

TEST(DataCollatorTest, Errors) {
  ASSERT_THROWS_WITH(DataCollatorForCausalLM(DataCollatorForCausalLMOptions(0).padding_side("up")),
                     "Invalid padding_side 'up'; valid values: right, left");
  ASSERT_THROWS_WITH(
      DataCollatorForCausalLM(DataCollatorForCausalLMOptions(0).pad_to_multiple_of(0)),
      "pad_to_multiple_of must be at least 1, got 0");
  DataCollatorForCausalLM collate(0);
  ASSERT_THROWS_WITH(collate({}), "DataCollatorForCausalLM needs at least one example");
  ASSERT_THROWS_WITH(collate({{{1, 2}, {1, 2}}, {{1, 2}, {1}}}),
                     "Example 1 has 2 input_ids but 1 labels");
}

// With vocab_size, ids and labels outside the vocabulary are errors on the
// host (on CUDA the fused loss would give NaN, the embedding a device assert).
TEST(DataCollatorTest, TokensOutsideTheVocabularyAreErrors) {
  DataCollatorForCausalLM collate(DataCollatorForCausalLMOptions(0).vocab_size(10));
  EXPECT_EQ(collate({{{1, 9}, {-100, 9}}}).input_ids.size(1), 2);
  ASSERT_THROWS_WITH(collate({{{1, 2}, {1, 2}}, {{3, 10, 4}, {3, 10, 4}}}),
                     "Example 1 of the batch has input id 10 at position 1; the model's "
                     "vocab_size is 10");
  ASSERT_THROWS_WITH(collate({{{1, 2}, {1, 12}}}),
                     "Example 0 of the batch has label 12 at position 1; the model's vocab_size "
                     "is 10");
  ASSERT_THROWS_WITH(collate({{{-3}, {-3}}}), "input id -3 at position 0");
  ASSERT_THROWS_WITH(DataCollatorForCausalLM(DataCollatorForCausalLMOptions(0).vocab_size(0)),
                     "vocab_size must be at least 1, got 0");
}
