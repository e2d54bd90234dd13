// remat's GPT-2 and Llama-family models against transformers (the oracle in
// models_oracle.py): logits, loss, gradients with and without checkpointing,
// greedy generation, and save/load round trips.

#include "remat/models/causal_lm.h"

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "remat/io/safetensors.h"
#include "support.h"

namespace fs = std::filesystem;
using remat::models::AutoModelForCausalLM;
using remat::models::CausalLMInputs;
using remat::nn::GradientCheckpointingOptions;
using remat::nn::Granularity;

namespace {

std::string oracle_dir(const std::string& name) {
  const char* root = std::getenv("REMAT_ORACLE_DIR");
  return (fs::path(root ? root : "oracle") / "models" / name).string();
}

::testing::AssertionResult close(const torch::Tensor& got, const torch::Tensor& want, double atol,
                                 double rtol = 0.0) {
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure() << "shape " << got.sizes() << " vs " << want.sizes();
  }
  auto diff = (got.to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>();
  auto scale = want.abs().max().item<double>();
  if (diff <= atol + rtol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs difference " << diff << " (scale " << scale
                                       << ", allowed " << atol + rtol * scale << ")";
}

class ModelParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir = oracle_dir(GetParam());
    ref = remat::io::load_file((fs::path(dir) / "reference.safetensors").string());
  }
  std::shared_ptr<remat::models::CausalLMImpl> load() {
    return AutoModelForCausalLM::from_pretrained(dir);
  }
  void expect_gradients_match(remat::models::CausalLMImpl& model) {
    CausalLMInputs in;
    in.input_ids = ref.at("input_ids");
    in.labels = ref.at("labels");
    auto out = model.forward(in);
    // The loss is a mean of positive per-token terms (sum|terms| / n is the
    // loss): 2 gamma_chain relative to it; a gradient's chain is twice that.
    const int64_t chain = forward_chain(model, in.input_ids);
    EXPECT_TRUE(close(out.loss.reshape(1), ref.at("loss"), 0,
                      remat::test::reduction_tolerance(chain, 1.0)));
    out.loss.backward();
    std::ptrdiff_t compared = 0;
    for (const auto& item : model.named_parameters()) {
      auto it = ref.find("grad." + item.key());
      ASSERT_NE(it, ref.end()) << item.key() << " has no reference gradient";
      EXPECT_TRUE(close(item.value().grad(), it->second, 0,
                        remat::test::reduction_tolerance(2 * chain, 1.0)))
          << item.key();
      ++compared;
    }
    // Every gradient transformers has is compared (no parameter of its left out).
    EXPECT_EQ(compared, std::count_if(ref.begin(), ref.end(), [](const auto& r) {
                return r.first.rfind("grad.", 0) == 0;
              }));
  }
  // Float32 in another order than transformers' kernels: the forward's chain
  // of roundings (support.h's transformer_chain) for these inputs.
  static int64_t forward_chain(const remat::models::CausalLMImpl& model, const torch::Tensor& ids) {
    const auto& c = model.config();
    const int64_t head_dim = c.head_dim > 0 ? c.head_dim : c.hidden_size / c.num_attention_heads;
    return remat::test::transformer_chain(c.num_hidden_layers, c.hidden_size, c.intermediate_size,
                                          head_dim, ids.size(1), c.vocab_size, ids.numel());
  }
  // The token embedding's gradient, as named in the reference.
  static std::string embedding_name(const std::string& config) {
    return config.rfind("gpt2", 0) == 0 ? "transformer.wte.weight" : "model.embed_tokens.weight";
  }
  std::string dir;
  std::map<std::string, torch::Tensor> ref;
};

TEST_P(ModelParityTest, Logits) {
  auto model = load();
  model->eval();
  torch::NoGradGuard no_grad;
  CausalLMInputs in;
  in.input_ids = ref.at("input_ids");
  // Logits: the forward's chain, relative to max |logit|.
  EXPECT_TRUE(close(model->forward(in).logits, ref.at("logits"), 0,
                    remat::test::reduction_tolerance(forward_chain(*model, in.input_ids), 1.0)));
}

TEST_P(ModelParityTest, LogitsWithLeftPadding) {
  auto model = load();
  model->eval();
  torch::NoGradGuard no_grad;
  CausalLMInputs in;
  in.input_ids = ref.at("input_ids");
  in.attention_mask = ref.at("padded_mask");
  auto logits = model->forward(in).logits;
  auto real = ref.at("padded_mask").to(torch::kBool);
  EXPECT_TRUE(close(logits.index({real}), ref.at("logits_padded").index({real}), 0,
                    remat::test::reduction_tolerance(forward_chain(*model, in.input_ids), 1.0)));
}

TEST_P(ModelParityTest, LossAndGradients) {
  auto model = load();
  model->train();
  expect_gradients_match(*model);
}

// The inputs hold the pad token (id 0). transformers' Llama and Qwen2 build
// the embedding with padding_idx = pad_token_id, so that row's gradient is
// exactly zero (with tied weights only the LM head's part remains); GPT-2's
// embedding has no padding_idx and the row learns.
TEST_P(ModelParityTest, PadTokenEmbeddingRowGradient) {
  constexpr int64_t kPad = 0;
  ASSERT_TRUE((ref.at("input_ids") == kPad).any().item<bool>());
  auto model = load();
  model->train();
  CausalLMInputs in;
  in.input_ids = ref.at("input_ids");
  in.labels = ref.at("labels");
  model->forward(in).loss.backward();
  const auto name = embedding_name(GetParam());
  auto got = model->named_parameters()[name].grad()[kPad];
  auto want = ref.at("grad." + name)[kPad];
  const bool gpt2 = GetParam().rfind("gpt2", 0) == 0;
  if (gpt2 || model->config().tie_word_embeddings) {
    EXPECT_GT(want.abs().max().item<double>(), 0.0);
    // As LossAndGradients: a gradient's chain, relative to the gradient's scale.
    const int64_t chain = forward_chain(*model, in.input_ids);
    EXPECT_TRUE(close(got, want, 0, remat::test::reduction_tolerance(2 * chain, 1.0)));
  } else {
    EXPECT_TRUE(remat::test::bitwise_equal(want, torch::zeros_like(want)));
    EXPECT_TRUE(remat::test::bitwise_equal(got, want)) << "max |grad| " << got.abs().max();
  }
}

TEST_P(ModelParityTest, GradientsWithEveryCheckpointingPolicy) {
  const std::vector<std::pair<std::string, GradientCheckpointingOptions>> policies{
      {"block", GradientCheckpointingOptions()},
      {"attention", GradientCheckpointingOptions().granularity(Granularity::kAttention)},
      {"mlp", GradientCheckpointingOptions().granularity(Granularity::kMlp)},
      {"mlp up", GradientCheckpointingOptions().granularity(Granularity::kMlpUp)},
      {"every 2nd block", GradientCheckpointingOptions().every_n_blocks(2)},
  };
  for (const auto& [name, options] : policies) {
    SCOPED_TRACE(name);
    auto model = load();
    model->train();
    EXPECT_EQ(model->gradient_checkpointing_enable(options),
              name == "every 2nd block" ? 1 : model->config().num_hidden_layers);
    expect_gradients_match(*model);
  }
}

TEST_P(ModelParityTest, GreedyGenerateWithAndWithoutCache) {
  for (bool use_cache : {true, false}) {
    SCOPED_TRACE(use_cache ? "with cache" : "without cache");
    auto model = load();
    model->eval();
    remat::models::GenerationConfig g;
    g.max_new_tokens = 8;
    g.use_cache = use_cache;
    g.pad_token_id = 0;
    g.eos_token_ids = std::vector<int64_t>{2};
    auto out = model->generate(ref.at("generate.input_ids"), g, ref.at("generate.attention_mask"));
    EXPECT_TRUE(torch::equal(out, ref.at("generate.output"))) << out << "\nvs transformers\n"
                                                              << ref.at("generate.output");
  }
}

TEST_P(ModelParityTest, IncrementalDecodingEqualsFullRecompute) {
  // Dynamic NTK RoPE rescales every position when the sequence grows past
  // the context length, so keys cached at a shorter length differ from a full
  // recompute — in transformers as here (its generate() matches, above).
  if (GetParam() == "llama_dynamic") GTEST_SKIP() << "dynamic RoPE depends on the length";
  auto model = load();
  model->eval();
  torch::NoGradGuard no_grad;
  auto ids = ref.at("input_ids");
  const int64_t t = ids.size(1);
  CausalLMInputs full;
  full.input_ids = ids;
  auto want = model->forward(full).logits.narrow(1, t - 3, 3);

  auto fresh = load();
  fresh->eval();
  CausalLMInputs prefill;
  prefill.input_ids = ids.narrow(1, 0, t - 3);
  prefill.use_cache = true;
  auto out = fresh->forward(prefill);
  std::vector<torch::Tensor> steps;
  for (int64_t i = t - 3; i < t; ++i) {
    CausalLMInputs step;
    step.input_ids = ids.narrow(1, i, 1);
    step.past_key_values = out.past_key_values;
    step.use_cache = true;
    out = fresh->forward(step);
    steps.push_back(out.logits);
  }
  // The cached attention sums the same keys in other blocks: the forward's
  // chain, relative to max |logit|.
  EXPECT_TRUE(close(torch::cat(steps, 1), want, 0,
                    remat::test::reduction_tolerance(forward_chain(*model, ids), 1.0)));
}

TEST_P(ModelParityTest, SavePretrainedRoundTrips) {
  auto model = load();
  model->eval();
  const char* save_root = std::getenv("REMAT_MODELS_SAVE_DIR");
  auto saved = (save_root ? fs::path(save_root)
                          : fs::path(dir).parent_path().parent_path() / "models-saved") /
               GetParam();
  model->save_pretrained(saved.string());
  auto again = AutoModelForCausalLM::from_pretrained(saved.string());
  again->eval();
  torch::NoGradGuard no_grad;
  CausalLMInputs in;
  in.input_ids = ref.at("input_ids");
  auto logits = again->forward(in).logits;
  EXPECT_TRUE(remat::test::bitwise_equal(logits, model->forward(in).logits));
  // transformers loads the saved directory and compares with these logits.
  remat::io::save_file({{"input_ids", in.input_ids}, {"logits", logits}},
                       (fs::path(saved) / "remat_logits.safetensors").string());
}

// Training computes the loss chunk by chunk from the hidden states; asking
// for the logits too takes the plain path. Both give the same loss and
// gradients: float32 to rounding, bf16 autocast within bf16 rounding (the
// logits in bf16, the cross-entropy in float32 on both paths).
TEST_P(ModelParityTest, ChunkedLossEqualsLossFromLogits) {
  auto labels = ref.at("labels").clone();
  labels.index_put_({0, torch::indexing::Slice(0, 3)}, -100);
  for (const bool bf16 : {false, true}) {
    for (const std::optional<int64_t> items :
         {std::optional<int64_t>{}, std::optional<int64_t>{7}}) {
      std::vector<torch::Tensor> losses;
      std::vector<std::map<std::string, torch::Tensor>> grads;
      for (const bool return_logits : {true, false}) {
        auto model = load();
        CausalLMInputs in;
        in.input_ids = ref.at("input_ids");
        in.labels = labels;
        in.num_items_in_batch = items;
        in.return_logits = return_logits;
        remat::models::CausalLMOutput out;
        {
          at::autocast::set_autocast_enabled(c10::DeviceType::CPU, bf16);
          at::autocast::set_autocast_dtype(c10::DeviceType::CPU, torch::kBFloat16);
          out = model->forward(in);
          at::autocast::set_autocast_enabled(c10::DeviceType::CPU, false);
          at::autocast::clear_cache();
        }
        EXPECT_EQ(out.logits.defined(), return_logits);
        EXPECT_EQ(out.loss.scalar_type(), torch::kFloat);
        out.loss.backward();
        losses.push_back(out.loss.detach());
        grads.emplace_back();
        for (const auto& p : model->named_parameters()) grads.back()[p.key()] = p.value().grad();
      }
      // The paths differ only from the head on: float32 sums over the
      // hidden size, the vocabulary and the tokens in other orders; the rest of
      // the backward repeats the same operations on what differs. In bf16
      // the head's matmul rounds its inputs and output (3 roundings, one ulp
      // apart at most between the paths), and each bf16 matmul the difference
      // passes backward may round one ulp apart again (6 per layer).
      const auto c = load()->config();
      const int64_t head_chain = c.hidden_size + c.vocab_size + ref.at("input_ids").numel();
      const int64_t bf16_roundings = 3 + 6 * c.num_hidden_layers;
      const double tol = bf16 ? remat::test::reduction_tolerance(3, 1.0, torch::kBFloat16)
                              : remat::test::reduction_tolerance(head_chain, 1.0);
      const double grad_tol =
          bf16 ? remat::test::reduction_tolerance(bf16_roundings, 1.0, torch::kBFloat16) : tol;
      EXPECT_TRUE(close(losses[1], losses[0], 0, tol)) << "bf16 " << bf16;
      for (const auto& [name, want] : grads[0]) {
        EXPECT_TRUE(close(grads[1].at(name), want, 0, grad_tol)) << name << " bf16 " << bf16;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Transformers, ModelParityTest,
                         ::testing::Values("gpt2_tied", "gpt2_untied", "llama_gqa",
                                           "llama_linear_bias_tied", "llama_dynamic",
                                           "llama3_head_dim", "qwen2"));

TEST(SamplingTest, WarpersMatchTransformers) {
  // The (temperature, top_k, top_p) cases of models_oracle.py.
  const std::vector<std::tuple<double, int64_t, double>> cases{
      {0.7, 5, 0.9}, {1.0, 0, 0.5}, {1.3, 10, 1.0}, {1.0, 50, 0.95}};
  auto ref = remat::io::load_file(oracle_dir("warpers.safetensors"));
  for (size_t i = 0; i < cases.size(); ++i) {
    remat::models::GenerationConfig g;
    std::tie(g.temperature, g.top_k, g.top_p) = cases[i];
    auto got = remat::models::apply_logits_warpers(ref.at("logits"), g);
    auto want = ref.at("warped." + std::to_string(i));
    EXPECT_TRUE(torch::equal(torch::isinf(got), torch::isinf(want))) << "case " << i;
    auto finite = torch::isfinite(want);
    // Both divide the same float32 logits by the temperature and mask the
    // rest: the same operations, so bitwise.
    EXPECT_TRUE(remat::test::bitwise_equal(got.index({finite}), want.index({finite})))
        << "case " << i;
  }
}

TEST(SamplingTest, SeededSamplingIsReproducibleAndTopKOneIsGreedy) {
  auto model = AutoModelForCausalLM::from_pretrained(oracle_dir("llama_gqa"));
  model->eval();
  auto prompt = torch::randint(3, 90, {2, 5});
  remat::models::GenerationConfig g;
  g.do_sample = true;
  g.seed = 123;
  g.temperature = 0.8;
  g.top_p = 0.9;
  g.eos_token_ids = std::vector<int64_t>{};
  auto a = model->generate(prompt, g);
  auto b = model->generate(prompt, g);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_EQ(a.size(1), 5 + g.max_new_tokens);
  g.top_k = 1;
  remat::models::GenerationConfig greedy;
  greedy.eos_token_ids = std::vector<int64_t>{};
  EXPECT_TRUE(torch::equal(model->generate(prompt, g), model->generate(prompt, greedy)));
  g.temperature = 0;
  ASSERT_THROWS_WITH(model->generate(prompt, g), "temperature must be positive, got 0");
}

// generate() appends at most max_new_tokens: it stops once every row has
// produced an EOS token (as transformers), and rows that finished earlier
// are filled with the pad token.
TEST(GenerateTest, StopsWhenEveryRowHasFinished) {
  auto model = AutoModelForCausalLM::from_pretrained(oracle_dir("llama_gqa"));
  model->eval();
  auto prompt = torch::tensor({{5, 17, 40, 8}, {61, 9, 33, 70}}, torch::kLong);
  remat::models::GenerationConfig g;
  g.max_new_tokens = 6;
  g.pad_token_id = 0;
  g.eos_token_ids = std::vector<int64_t>{};
  auto full = model->generate(prompt, g);
  ASSERT_EQ(full.size(1), 4 + 6);
  const int64_t first0 = full[0][4].item<int64_t>(), first1 = full[1][4].item<int64_t>();

  // Both rows' first new token is an EOS: one step, not max_new_tokens.
  g.eos_token_ids = std::vector<int64_t>{first0, first1};
  auto stopped = model->generate(prompt, g);
  EXPECT_TRUE(torch::equal(stopped, full.narrow(1, 0, 5))) << stopped;

  // Only row 0 finishes at once (unless row 1 happens to emit that token too):
  // row 0 is padded, the output runs to max_new_tokens.
  if ((full[1].narrow(0, 4, 6) == first0).any().item<bool>()) GTEST_SKIP() << "row 1 emits it";
  g.eos_token_ids = std::vector<int64_t>{first0};
  auto one = model->generate(prompt, g);
  ASSERT_EQ(one.size(1), 4 + 6);
  EXPECT_TRUE(torch::equal(one[1], full[1]));
  EXPECT_TRUE(torch::equal(one[0].narrow(0, 5, 5), torch::zeros({5}, torch::kLong))) << one[0];
}

// The position check reads nothing from the device for default positions
// (it knows past + tokens) and still reads explicit ones.
TEST(ModelConfigTest, Gpt2PositionsBeyondNPositionsAreErrors) {
  auto config = remat::models::ModelConfig::from_json({{"model_type", "gpt2"},
                                                       {"n_embd", 8},
                                                       {"n_head", 2},
                                                       {"n_layer", 1},
                                                       {"n_positions", 4},
                                                       {"vocab_size", 16}});
  auto model = AutoModelForCausalLM::from_config(config);
  CausalLMInputs in;
  in.input_ids = torch::zeros({1, 4}, torch::kLong);
  EXPECT_EQ(model->forward(in).logits.size(1), 4);
  in.input_ids = torch::zeros({1, 5}, torch::kLong);
  ASSERT_THROWS_WITH(model->forward(in), "GPT-2 position 4 is beyond n_positions 4");
  in.input_ids = torch::zeros({1, 2}, torch::kLong);
  in.position_ids = torch::tensor({{0, 6}}, torch::kLong);
  ASSERT_THROWS_WITH(model->forward(in), "GPT-2 position 6 is beyond n_positions 4");
}

TEST(ModelConfigTest, UnsupportedModelTypeNamesTheSupportedOnes) {
  ASSERT_THROWS_WITH(remat::models::ModelConfig::from_json({{"model_type", "bert"}}),
                     "unsupported model_type \"bert\"; supported: gpt2, llama, qwen2");
}

TEST(ModelConfigTest, InconsistentShapesAreErrors) {
  nlohmann::json j = {{"model_type", "llama"},
                      {"hidden_size", 32},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 3}};
  ASSERT_THROWS_WITH(remat::models::ModelConfig::from_json(j),
                     "num_attention_heads 4 must be a multiple of num_key_value_heads 3");
  j = {{"model_type", "gpt2"}, {"n_embd", int64_t{4'000'000'000'000'000'000}}};
  ASSERT_THROWS_WITH(remat::models::ModelConfig::from_json(j),
                     "hidden_size must be in [1, 1099511627776], got 4000000000000000000");
  j = {{"model_type", "llama"}, {"num_hidden_layers", 3e44}};
  ASSERT_THROWS_WITH(remat::models::ModelConfig::from_json(j),
                     "field \"num_hidden_layers\" must be an integer, got 3e+44");
  j = {{"model_type", "llama"}, {"rope_scaling", {{"rope_type", "yarn"}, {"factor", 2.0}}}};
  ASSERT_THROWS_WITH(remat::models::ModelConfig::from_json(j), "unsupported rope_type \"yarn\"");
}

TEST(ModelLoadTest, MissingAndMisshapenWeightsAreErrors) {
  auto model = AutoModelForCausalLM::from_pretrained(oracle_dir("llama_gqa"));
  auto weights = model->hf_state_dict();
  weights.erase("model.norm.weight");
  ASSERT_THROWS_WITH(model->load_hf_state_dict(weights),
                     "lack 1 tensors the model needs: model.norm.weight");
  weights = model->hf_state_dict();
  weights["model.norm.weight"] = torch::ones({7});
  ASSERT_THROWS_WITH(
      model->load_hf_state_dict(weights),
      "weight model.norm.weight has shape [7] but the model (from config.json) expects [32]");
}

TEST(ModelCacheTest, UseCacheIsForcedOffWhileCheckpointingInTraining) {
  auto model = AutoModelForCausalLM::from_pretrained(oracle_dir("gpt2_tied"));
  model->train();
  model->gradient_checkpointing_enable();
  CausalLMInputs in;
  in.input_ids = torch::randint(3, 90, {1, 6});
  in.use_cache = true;
  EXPECT_FALSE(model->forward(in).past_key_values.has_value());
  model->eval();
  EXPECT_TRUE(model->forward(in).past_key_values.has_value());
}

// The FLOPs of a training token (the MFU numerator of the Trainer and of
// remat-bench): 6 per weight a token is multiplied by plus the attention, as
// llm.c and nanoGPT count them; GPT-2 124M at 1024 tokens is 0.85e9.
TEST(ModelFlopsTest, TrainingFlopsCountTheMultipliedWeightsAndTheAttention) {
  auto gpt2 = AutoModelForCausalLM::from_config(remat::models::ModelConfig::from_json(
      {{"model_type", "gpt2"}, {"vocab_size", 50257}, {"n_positions", 1024}}));
  double multiplied = 0;  // every weight but the position table (the token table is the head)
  for (const auto& [name, w] : gpt2->hf_state_dict()) {
    if (name != "transformer.wpe.weight") multiplied += static_cast<double>(w.numel());
  }
  EXPECT_EQ(gpt2->training_flops_per_token(1024), 6 * multiplied + 12.0 * 12 * 768 * 1024);
  EXPECT_NEAR(gpt2->training_flops_per_token(1024), 0.85e9, 0.01e9);  // the documented figure

  // Untied Llama: the token table is only looked up; its head is multiplied.
  auto llama = AutoModelForCausalLM::from_config(
      remat::models::ModelConfig::from_json({{"model_type", "llama"},
                                             {"vocab_size", 96},
                                             {"hidden_size", 32},
                                             {"intermediate_size", 88},
                                             {"num_hidden_layers", 2},
                                             {"num_attention_heads", 4},
                                             {"num_key_value_heads", 2},
                                             {"tie_word_embeddings", false}}));
  multiplied = 0;
  for (const auto& [name, w] : llama->hf_state_dict()) {
    if (name != "model.embed_tokens.weight") multiplied += static_cast<double>(w.numel());
  }
  EXPECT_EQ(llama->training_flops_per_token(64), 6 * multiplied + 12.0 * 2 * 32 * 64);
}

}  // namespace
