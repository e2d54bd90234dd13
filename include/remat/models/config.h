#pragma once

/// \file
/// The configuration of a causal language model, read from and written to a
/// Hugging Face `config.json`.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace remat::models {

/// The RoPE variant and its parameters (Hugging Face `rope_parameters`, or
/// the older `rope_theta` + `rope_scaling`).
struct RopeParameters {
  /// "default", "linear", "dynamic" or "llama3".
  std::string rope_type = "default";
  double rope_theta = 10000.0;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
};

/// A model configuration: the fields of Hugging Face's GPT2Config,
/// LlamaConfig and Qwen2Config that remat's models use, under their Llama
/// names (GPT-2's `n_embd`, `n_layer`, ... map onto them).
///
/// Example: `auto config = remat::models::ModelConfig::from_file("gpt2/config.json");`
struct ModelConfig {
  /// "gpt2", "llama" or "qwen2".
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  double initializer_range = 0.02;

  // GPT-2
  double layer_norm_epsilon = 1e-5;
  std::string activation_function = "gelu_new";
  double embd_pdrop = 0.0;
  double resid_pdrop = 0.0;
  double attn_pdrop = 0.0;
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;

  // Llama family
  double rms_norm_eps = 1e-6;
  std::string hidden_act = "silu";
  /// Bias on the q, k and v projections (Llama: attention_bias; Qwen2: always).
  bool qkv_bias = false;
  /// Bias on the output projection (Llama: attention_bias; Qwen2: never).
  bool o_bias = false;
  bool mlp_bias = false;
  double attention_dropout = 0.0;
  RopeParameters rope;

  /// The file's JSON as read, updated by to_json(); keeps fields remat does
  /// not use so that a saved directory round-trips.
  nlohmann::json raw = nlohmann::json::object();

  /// The model types from_json() accepts.
  static const std::vector<std::string>& supported_model_types();

  /// Parses a config.json object; unknown fields are kept but ignored. An
  /// unsupported `model_type` or an inconsistent shape is an error naming it.
  static ModelConfig from_json(const nlohmann::json& json);
  static ModelConfig from_file(const std::string& path);

  /// The config.json object, as transformers writes it for this model type.
  nlohmann::json to_json() const;
  void save(const std::string& path) const;
};

}  // namespace remat::models
