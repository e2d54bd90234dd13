// ModelConfig's parser against transformers (the oracle in
// config_defaults_oracle.py): for every config.json the oracle wrote (each
// class's defaults, a small config, and both with one field removed or with
// legacy RoPE fields) every field remat reads equals what transformers holds,
// and for the small configs remat's model has transformers' parameter names
// and shapes and its embedding the same padding_idx.

#include "remat/models/config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "remat/models/causal_lm.h"

namespace fs = std::filesystem;
using nlohmann::json;
using remat::models::ModelConfig;

namespace {

fs::path oracle_root() {
  const char* root = std::getenv("REMAT_ORACLE_DIR");
  return fs::path(root ? root : "oracle") / "model_config";
}

// remat's values under the oracle's keys.
json fields(const ModelConfig& c) {
  json j = {{"model_type", c.model_type},
            {"vocab_size", c.vocab_size},
            {"hidden_size", c.hidden_size},
            {"intermediate_size", c.intermediate_size},
            {"num_hidden_layers", c.num_hidden_layers},
            {"num_attention_heads", c.num_attention_heads},
            {"num_key_value_heads", c.num_key_value_heads},
            {"max_position_embeddings", c.max_position_embeddings},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"initializer_range", c.initializer_range},
            {"bos_token_id", c.bos_token_id ? json(*c.bos_token_id) : json(nullptr)},
            {"eos_token_ids", c.eos_token_ids},
            {"pad_token_id", c.pad_token_id ? json(*c.pad_token_id) : json(nullptr)}};
  if (c.model_type == "gpt2") {
    j["activation_function"] = c.activation_function;
    j["resid_pdrop"] = c.resid_pdrop;
    j["embd_pdrop"] = c.embd_pdrop;
    j["attn_pdrop"] = c.attn_pdrop;
    j["layer_norm_epsilon"] = c.layer_norm_epsilon;
    j["scale_attn_weights"] = c.scale_attn_weights;
    j["scale_attn_by_inverse_layer_idx"] = c.scale_attn_by_inverse_layer_idx;
    return j;
  }
  j["head_dim"] = c.head_dim;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["hidden_act"] = c.hidden_act;
  j["attention_dropout"] = c.attention_dropout;
  j["qkv_bias"] = c.qkv_bias;
  j["o_bias"] = c.o_bias;
  j["mlp_bias"] = c.mlp_bias;
  j["rope_type"] = c.rope.rope_type;
  j["rope_theta"] = c.rope.rope_theta;
  if (c.rope.rope_type != "default") j["rope_factor"] = c.rope.factor;
  if (c.rope.rope_type == "llama3") {
    j["low_freq_factor"] = c.rope.low_freq_factor;
    j["high_freq_factor"] = c.rope.high_freq_factor;
    j["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;
  }
  return j;
}

json padding_idx(const remat::models::CausalLMImpl& model) {
  for (const auto& item : model.named_modules()) {
    if (item.key() != "model.embed_tokens" && item.key() != "transformer.wte") continue;
    const auto& options = item.value()->as<torch::nn::EmbeddingImpl>()->options;
    return options.padding_idx() ? json(*options.padding_idx()) : json(nullptr);
  }
  ADD_FAILURE() << "the model has no token embedding";
  return nullptr;
}

void expect_model_matches(const ModelConfig& config, const json& want) {
  auto model = remat::models::AutoModelForCausalLM::from_config(config);
  EXPECT_EQ(padding_idx(*model), want.at("padding_idx")) << "embedding padding_idx";
  json shapes = json::object();
  for (const auto& [name, tensor] : model->hf_state_dict()) shapes[name] = tensor.sizes().vec();
  EXPECT_EQ(shapes, want.at("parameters")) << "parameter names and shapes";
}

TEST(ModelConfigDefaultsTest, EveryFieldMatchesTransformers) {
  std::ifstream in(oracle_root() / "cases.json");
  ASSERT_TRUE(in) << "no " << (oracle_root() / "cases.json");
  const auto cases = json::parse(in);
  ASSERT_GT(cases.size(), 100u);
  for (const auto& [name, want] : cases.items()) {
    SCOPED_TRACE(name);
    const auto path = (oracle_root() / name / "config.json").string();
    if (want.contains("error")) {
      EXPECT_THROW(ModelConfig::from_file(path), c10::Error) << "transformers: " << want["error"];
      continue;
    }
    ModelConfig config;
    try {
      config = ModelConfig::from_file(path);
    } catch (const c10::Error& e) {
      ADD_FAILURE() << "remat rejects a config transformers builds: " << e.what_without_backtrace();
      continue;
    }
    const auto got = fields(config);
    for (const auto& [key, value] : want.items()) {
      if (key == "parameters" || key == "padding_idx") continue;
      EXPECT_TRUE(got.contains(key)) << key << " not read by remat";
      if (got.contains(key)) EXPECT_EQ(got[key], value) << key;
    }
    for (const auto& [key, value] : got.items()) {
      EXPECT_TRUE(want.contains(key)) << key << " read by remat but not by the oracle";
    }
    if (want.contains("parameters")) expect_model_matches(config, want);
  }
}

}  // namespace
