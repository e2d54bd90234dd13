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
  /// The RoPE base.
  double rope_theta = 10000.0;
  /// Scaling factor of linear, dynamic and llama3 RoPE.
  double factor = 1.0;
  /// Llama 3 RoPE: low-frequency factor.
  double low_freq_factor = 1.0;
  /// Llama 3 RoPE: high-frequency factor.
  double high_freq_factor = 4.0;
  /// Llama 3 RoPE: the context length before scaling (0 when unused).
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
  /// Tokens in the vocabulary (GPT-2: `vocab_size`).
  int64_t vocab_size = 0;
  /// Width of the residual stream (GPT-2: `n_embd`).
  int64_t hidden_size = 0;
  /// Width of the MLP (GPT-2: `n_inner`, default 4 × n_embd).
  int64_t intermediate_size = 0;
  /// Decoder layers (GPT-2: `n_layer`).
  int64_t num_hidden_layers = 0;
  /// Query heads (GPT-2: `n_head`).
  int64_t num_attention_heads = 0;
  /// Key/value heads (grouped-query attention); default num_attention_heads
  /// (Qwen2: 32, Qwen2Config's default); GPT-2: n_head.
  int64_t num_key_value_heads = 0;
  /// Width of one head; default hidden_size / num_attention_heads.
  int64_t head_dim = 0;
  /// Longest sequence (GPT-2: `n_positions`).
  int64_t max_position_embeddings = 0;
  /// The LM head shares the token embedding matrix.
  bool tie_word_embeddings = false;
  /// config.json's bos_token_id.
  std::optional<int64_t> bos_token_id;
  /// config.json's eos_token_id (an int or a list).
  std::vector<int64_t> eos_token_ids;
  /// config.json's pad_token_id. Llama and Qwen2: the token embedding's
  /// padding_idx (that row gets no gradient), as in transformers.
  std::optional<int64_t> pad_token_id;
  /// Standard deviation of the weight initialization.
  double initializer_range = 0.02;

  // GPT-2
  /// GPT-2: LayerNorm epsilon.
  double layer_norm_epsilon = 1e-5;
  /// GPT-2: the MLP activation ("gelu_new", "gelu", "relu", ...).
  std::string activation_function = "gelu_new";
  /// GPT-2: dropout after the embeddings.
  double embd_pdrop = 0.0;
  /// GPT-2: dropout on the residual branches.
  double resid_pdrop = 0.0;
  /// GPT-2: dropout on the attention weights.
  double attn_pdrop = 0.0;
  /// GPT-2: divide attention scores by sqrt(head_dim).
  bool scale_attn_weights = true;
  /// GPT-2: also divide them by the layer index + 1.
  bool scale_attn_by_inverse_layer_idx = false;

  // Llama family
  /// Llama: RMSNorm epsilon.
  double rms_norm_eps = 1e-6;
  /// Llama: the MLP activation ("silu").
  std::string hidden_act = "silu";
  /// Bias on the q, k and v projections (Llama: attention_bias; Qwen2: always).
  bool qkv_bias = false;
  /// Bias on the output projection (Llama: attention_bias; Qwen2: never).
  bool o_bias = false;
  /// Bias on the MLP projections (Llama: mlp_bias; Qwen2: never).
  bool mlp_bias = false;
  /// Llama: dropout on the attention weights.
  double attention_dropout = 0.0;
  /// Llama: the rotary position embedding.
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
