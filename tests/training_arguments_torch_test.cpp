// TrainingArguments::gradient_checkpointing_options(): the options that
// gradient_checkpointing_kwargs turn into, and the key defaults that
// docs/training_arguments.md states.

#include "remat/training_arguments.h"

#include <gtest/gtest.h>

#include <map>

#include "remat/models/causal_lm.h"
#include "remat/nn/checkpointable.h"
#include "support.h"
#include "test_models.h"
#include "training_arguments_internal.h"

using json = nlohmann::json;
using remat::TrainingArguments;
using remat::test::GptStack;

namespace {

struct TrainingArgumentsTorchTest : remat::test::SeedingFixture {};

using remat::nn::Granularity;

// gradient_checkpointing_kwargs.granularity's values.
const std::map<std::string, Granularity> kGranularities = {{"block", Granularity::kBlock},
                                                           {"attention", Granularity::kAttention},
                                                           {"mlp", Granularity::kMlp},
                                                           {"mlp_up", Granularity::kMlpUp}};

std::string granularity_name(Granularity g) {
  for (const auto& [name, value] : kGranularities) {
    if (value == g) return name;
  }
  return "?";
}

std::shared_ptr<remat::models::CausalLMImpl> tiny_llama() {
  torch::manual_seed(0);
  const json config = {{"model_type", "llama"},    {"vocab_size", 64},
                       {"hidden_size", 32},        {"intermediate_size", 88},
                       {"num_hidden_layers", 3},   {"num_attention_heads", 4},
                       {"num_key_value_heads", 2}, {"max_position_embeddings", 32}};
  return remat::models::AutoModelForCausalLM::from_config(
      remat::models::ModelConfig::from_json(config));
}

std::vector<remat::nn::CheckpointableModule*> blocks_of(torch::nn::Module& model) {
  std::vector<remat::nn::CheckpointableModule*> blocks;
  for (const auto& m : model.modules()) {
    if (auto* b = dynamic_cast<remat::nn::CheckpointableModule*>(m.get())) blocks.push_back(b);
  }
  return blocks;
}

// Loss and gradients of one training step on fixed ids.
std::vector<torch::Tensor> step(remat::models::CausalLMImpl& model) {
  model.train();
  model.zero_grad();
  auto ids = torch::randint(0, 64, {2, 12}, at::detail::createCPUGenerator(7));
  remat::models::CausalLMInputs in;
  in.input_ids = ids;
  in.labels = ids;
  auto loss = model.forward(in).loss;
  loss.backward();
  std::vector<torch::Tensor> out{loss.detach()};
  for (const auto& p : model.parameters()) out.push_back(p.grad().clone());
  return out;
}

TrainingArguments parse(const std::vector<std::string>& flags) {
  std::vector<const char*> argv{"train"};
  for (const auto& f : flags) argv.push_back(f.c_str());
  return TrainingArguments::parse(static_cast<int>(argv.size()), argv.data());
}

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
      {"every_n_blocks", options.every_n_blocks()},
      {"granularity", granularity_name(options.granularity())}};
  int documented = 0;
  for (const auto& key : remat::detail::gradient_checkpointing_keys()) {
    if (key.default_value.empty()) continue;
    SCOPED_TRACE(key.name);
    ASSERT_EQ(actual.count(key.name), 1u);
    EXPECT_EQ(json::parse(key.default_value), actual.at(key.name));
    ++documented;
  }
  EXPECT_EQ(documented, 5);
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

// Every granularity can be chosen on the command line, and the run it gives
// is the API's: the same parts checkpoint, the same loss and gradients.
TEST_F(TrainingArgumentsTorchTest, EveryGranularityFromTheCommandLineIsTheApiPath) {
  for (const auto& [name, granularity] : kGranularities) {
    SCOPED_TRACE(name);
    auto args = parse({"--gradient_checkpointing", "--gradient_checkpointing_kwargs",
                       json{{"granularity", name}}.dump()});
    auto from_cli = tiny_llama();
    EXPECT_EQ(from_cli->gradient_checkpointing_enable(args.gradient_checkpointing_options()), 3);
    auto from_api = tiny_llama();
    from_api->gradient_checkpointing_enable(
        remat::nn::GradientCheckpointingOptions().granularity(granularity));
    from_cli->train();
    for (auto* block : blocks_of(*from_cli)) {
      for (const auto& [other, part] : kGranularities) {
        EXPECT_EQ(block->checkpoints(part), part == granularity) << other;
      }
    }
    const auto a = step(*from_cli), b = step(*from_api);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(remat::test::bitwise_equal(a[i], b[i])) << i;
  }
}

TEST_F(TrainingArgumentsTorchTest, LayersMarkExactlyTheseBlocks) {
  TrainingArguments args;
  args.gradient_checkpointing_kwargs = {{"layers", {0, 2}}};
  EXPECT_EQ(args.gradient_checkpointing_options().blocks(), (std::vector<int64_t>{0, 2}));
  auto model = tiny_llama();
  EXPECT_EQ(model->gradient_checkpointing_enable(args.gradient_checkpointing_options()), 2);
  const auto blocks = blocks_of(*model);
  ASSERT_EQ(blocks.size(), 3u);
  EXPECT_TRUE(blocks[0]->gradient_checkpointing());
  EXPECT_FALSE(blocks[1]->gradient_checkpointing());
  EXPECT_TRUE(blocks[2]->gradient_checkpointing());

  // A layer the model does not have is an error naming it and the count.
  args.gradient_checkpointing_kwargs = {{"layers", {0, 3}}};
  ASSERT_THROWS_WITH(model->gradient_checkpointing_enable(args.gradient_checkpointing_options()),
                     "block 3 does not exist: the model has 3 checkpointable blocks, indices 0 to "
                     "2");
}

TEST_F(TrainingArgumentsTorchTest, InvalidLayerAndGranularityKwargsAreErrors) {
  auto error_of = [](const json& kwargs) {
    TrainingArguments args;
    args.gradient_checkpointing_kwargs = kwargs;
    try {
      args.gradient_checkpointing_options();
    } catch (const remat::TrainingArgumentsError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of({{"granularity", "mlp-up"}})
                .find("gradient_checkpointing_kwargs.granularity must be one of \"block\", "
                      "\"attention\", \"mlp\", \"mlp_up\", got \"mlp-up\""),
            std::string::npos)
      << error_of({{"granularity", "mlp-up"}});
  EXPECT_NE(error_of({{"layers", {1, 1}}}).find("layers must be a list of distinct integers >= 0"),
            std::string::npos);
  EXPECT_NE(error_of({{"layers", {-1}}}).find("layers must be a list of distinct integers >= 0"),
            std::string::npos);
  EXPECT_NE(error_of({{"layers", {0}}, {"every_n_blocks", 2}})
                .find("gives both layers and every_n_blocks/every_n_layers: give one"),
            std::string::npos);
}
