// TrainingArguments::gradient_checkpointing_options(): the options that
// gradient_checkpointing_kwargs turn into, and the key defaults that
// docs/training_arguments.md states.

#include "remat/training_arguments.h"

#include <gtest/gtest.h>

#include <map>

#include "remat/nn/checkpointable.h"
#include "support.h"
#include "test_models.h"
#include "training_arguments_internal.h"

using json = nlohmann::json;
using remat::TrainingArguments;
using remat::test::GptStack;

namespace {

struct TrainingArgumentsTorchTest : remat::test::SeedingFixture {};

}  // namespace

TEST_F(TrainingArgumentsTorchTest, EmptyKwargsGiveTheDefaultOptions) {
  const auto options = TrainingArguments{}.gradient_checkpointing_options();
  const remat::nn::GradientCheckpointingOptions defaults;
  EXPECT_EQ(options.every_n_blocks(), defaults.every_n_blocks());
  EXPECT_FALSE(options.predicate());
  const auto& checkpoint = options.checkpoint_options();
  EXPECT_EQ(checkpoint.preserve_rng_state(), defaults.checkpoint_options().preserve_rng_state());
  EXPECT_EQ(checkpoint.determinism_check(), defaults.checkpoint_options().determinism_check());
  EXPECT_EQ(checkpoint.check_params(), defaults.checkpoint_options().check_params());
}

// The table of gradient_checkpointing_kwargs keys in the docs states each
// key's default; it must be what remat does when the key is absent.
TEST_F(TrainingArgumentsTorchTest, DocumentedKeyDefaultsAreRematsDefaults) {
  const auto options = TrainingArguments{}.gradient_checkpointing_options();
  const std::map<std::string, json> actual = {
      {"preserve_rng_state", options.checkpoint_options().preserve_rng_state()},
      {"determinism_check", options.checkpoint_options().determinism_check()},
      {"check_params", options.checkpoint_options().check_params()},
      {"every_n_blocks", options.every_n_blocks()}};
  int documented = 0;
  for (const auto& key : remat::detail::gradient_checkpointing_keys()) {
    if (key.default_value.empty()) continue;
    SCOPED_TRACE(key.name);
    ASSERT_EQ(actual.count(key.name), 1u);
    EXPECT_EQ(json::parse(key.default_value), actual.at(key.name));
    ++documented;
  }
  EXPECT_EQ(documented, 4);
}

TEST_F(TrainingArgumentsTorchTest, EveryKeyReachesTheOptions) {
  TrainingArguments args;
  args.gradient_checkpointing_kwargs = {{"use_reentrant", true},
                                        {"preserve_rng_state", false},
                                        {"determinism_check", "none"},
                                        {"check_params", false},
                                        {"every_n_blocks", 3}};
  const auto options = args.gradient_checkpointing_options();
  EXPECT_FALSE(options.checkpoint_options().preserve_rng_state());
  EXPECT_EQ(options.checkpoint_options().determinism_check(), "none");
  EXPECT_FALSE(options.checkpoint_options().check_params());
  EXPECT_EQ(options.every_n_blocks(), 3);

  args.gradient_checkpointing_kwargs = {{"every_n_layers", 2}};
  EXPECT_EQ(args.gradient_checkpointing_options().every_n_blocks(), 2);
}

TEST_F(TrainingArgumentsTorchTest, InvalidKwargsAreErrors) {
  TrainingArguments args;
  args.gradient_checkpointing_kwargs = {{"offload", true}};
  ASSERT_THROW(args.gradient_checkpointing_options(), remat::TrainingArgumentsError);
  args.gradient_checkpointing_kwargs = {{"every_n_blocks", 0}};
  ASSERT_THROW(args.gradient_checkpointing_options(), remat::TrainingArgumentsError);
}

TEST_F(TrainingArgumentsTorchTest, MarksTheBlocksTheCommandLineAsksFor) {
  const std::vector<const char*> argv = {"train", "--gradient_checkpointing",
                                         "--gradient_checkpointing_kwargs",
                                         R"({"every_n_blocks": 2, "preserve_rng_state": false})"};
  const auto args = TrainingArguments::parse(static_cast<int>(argv.size()), argv.data());
  GptStack model(5, 16, 2, 0.0);
  EXPECT_EQ(remat::nn::gradient_checkpointing_enable(*model, args.gradient_checkpointing_options()),
            3);
  std::vector<bool> marked;
  for (const auto& block : model->blocks) {
    marked.push_back(block->gradient_checkpointing());
    if (block->gradient_checkpointing()) {
      EXPECT_FALSE(block->checkpoint_options().preserve_rng_state());
    }
  }
  EXPECT_EQ(marked, (std::vector<bool>{true, false, true, false, true}));
}
