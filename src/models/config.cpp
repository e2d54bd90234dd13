#include "remat/models/config.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <fstream>

namespace remat::models {
namespace {

using nlohmann::json;

// No real model comes near this in any dimension; larger values are corrupt
// files (and would overflow size arithmetic).
constexpr int64_t kMaxSize = int64_t{1} << 40;

// json.value() with null treated as absent, as Hugging Face configs write
// "n_inner": null for "use the default".
// An integer field: a JSON integer within int64 (a float such as 3e44 would
// otherwise be converted with undefined behaviour).
int64_t to_int(const json& value, const char* key) {
  TORCH_CHECK(
      value.is_number_integer() && (!value.is_number_unsigned() ||
                                    value.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX)),
      "config.json: field \"", key, "\" must be an integer, got ", value.dump());
  return value.get<int64_t>();
}

template <typename T>
T get(const json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if constexpr (std::is_same_v<T, int64_t>) return to_int(*it, key);
  try {
    return it->get<T>();
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "config.json: field \"", key, "\" has the wrong type (", it->dump(),
                "): ", e.what());
  }
}

std::vector<int64_t> token_ids(const json& j, const char* key, std::vector<int64_t> fallback) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_null()) return {};
  if (it->is_number_integer()) return {it->get<int64_t>()};
  TORCH_CHECK(it->is_array(), "config.json: \"", key,
              "\" must be an integer or a list of integers, got ", it->dump());
  return it->get<std::vector<int64_t>>();
}

std::optional<int64_t> optional_id(const json& j, const char* key,
                                   std::optional<int64_t> fallback) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_null()) return std::nullopt;
  if (it->is_array()) return it->empty() ? std::nullopt : std::optional(to_int(it->at(0), key));
  return to_int(*it, key);
}

bool nonempty_object(const json& j, const char* key) {
  return j.contains(key) && j[key].is_object() && !j[key].empty();
}

// As transformers' convert_rope_params_to_dict: a (non-empty) legacy
// rope_scaling wins over rope_parameters; rope_theta comes from that dict,
// else the top level, else 10000 (every supported class's default_theta).
void parse_rope(const json& j, ModelConfig& c) {
  json params = json::object();
  if (nonempty_object(j, "rope_scaling")) {
    params = j["rope_scaling"];
  } else if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    params = j["rope_parameters"];
  }
  auto& r = c.rope;
  r.rope_theta = get<double>(params, "rope_theta", get<double>(j, "rope_theta", 10000.0));
  r.rope_type = get<std::string>(params, "rope_type", get<std::string>(params, "type", "default"));
  const std::vector<std::string> supported{"default", "linear", "dynamic", "llama3"};
  TORCH_CHECK(std::find(supported.begin(), supported.end(), r.rope_type) != supported.end(),
              "config.json: unsupported rope_type \"", r.rope_type,
              "\"; supported: default, linear, dynamic, llama3");
  TORCH_CHECK(get<double>(params, "partial_rotary_factor", 1.0) == 1.0,
              "config.json: partial_rotary_factor ", params.value("partial_rotary_factor", 1.0),
              " is not supported; only 1.0 (RoPE on the whole head)");
  r.factor = get<double>(params, "factor", 1.0);
  r.low_freq_factor = get<double>(params, "low_freq_factor", 1.0);
  r.high_freq_factor = get<double>(params, "high_freq_factor", 4.0);
  r.original_max_position_embeddings =
      get<int64_t>(params, "original_max_position_embeddings", c.max_position_embeddings);
  if (r.rope_type != "default") {
    TORCH_CHECK(r.factor >= 1.0 || r.rope_type == "linear", "config.json: rope factor ", r.factor,
                " must be at least 1 for ", r.rope_type);
  }
}

void parse_gpt2(const json& j, ModelConfig& c) {
  c.vocab_size = get<int64_t>(j, "vocab_size", 50257);
  c.max_position_embeddings = get<int64_t>(j, "n_positions", 1024);
  c.hidden_size = get<int64_t>(j, "n_embd", 768);
  c.num_hidden_layers = get<int64_t>(j, "n_layer", 12);
  c.num_attention_heads = get<int64_t>(j, "n_head", 12);
  c.num_key_value_heads = c.num_attention_heads;
  const bool small = c.hidden_size > 0 && c.hidden_size <= kMaxSize;
  c.intermediate_size = get<int64_t>(j, "n_inner", small ? 4 * c.hidden_size : 0);
  c.activation_function = get<std::string>(j, "activation_function", "gelu_new");
  c.resid_pdrop = get<double>(j, "resid_pdrop", 0.1);
  c.embd_pdrop = get<double>(j, "embd_pdrop", 0.1);
  c.attn_pdrop = get<double>(j, "attn_pdrop", 0.1);
  c.layer_norm_epsilon = get<double>(j, "layer_norm_epsilon", 1e-5);
  c.scale_attn_weights = get<bool>(j, "scale_attn_weights", true);
  c.scale_attn_by_inverse_layer_idx = get<bool>(j, "scale_attn_by_inverse_layer_idx", false);
  c.tie_word_embeddings = get<bool>(j, "tie_word_embeddings", true);
  c.bos_token_id = optional_id(j, "bos_token_id", 50256);
  c.eos_token_ids = token_ids(j, "eos_token_id", {50256});
  const std::vector<std::string> acts{"gelu_new", "gelu",  "gelu_pytorch_tanh", "relu",
                                      "silu",     "swish", "gelu_fast",         "quick_gelu"};
  TORCH_CHECK(
      std::find(acts.begin(), acts.end(), c.activation_function) != acts.end(),
      "config.json: unsupported activation_function \"", c.activation_function,
      "\"; supported: gelu_new, gelu, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, silu, "
      "swish");
  TORCH_CHECK(!get<bool>(j, "add_cross_attention", false),
              "config.json: add_cross_attention is not supported (decoder-only models only)");
}

void parse_llama(const json& j, ModelConfig& c, bool qwen2) {
  c.vocab_size = get<int64_t>(j, "vocab_size", qwen2 ? 151936 : 32000);
  c.hidden_size = get<int64_t>(j, "hidden_size", 4096);
  c.intermediate_size = get<int64_t>(j, "intermediate_size", qwen2 ? 22016 : 11008);
  c.num_hidden_layers = get<int64_t>(j, "num_hidden_layers", 32);
  c.num_attention_heads = get<int64_t>(j, "num_attention_heads", 32);
  // Null means num_attention_heads; absent, Qwen2Config's default is 32
  // whatever num_attention_heads is.
  const bool qwen2_default_kv = qwen2 && !j.contains("num_key_value_heads");
  c.num_key_value_heads = get<int64_t>(j, "num_key_value_heads",
                                       qwen2_default_kv ? int64_t{32} : c.num_attention_heads);
  c.max_position_embeddings = get<int64_t>(j, "max_position_embeddings", qwen2 ? 32768 : 2048);
  c.rms_norm_eps = get<double>(j, "rms_norm_eps", 1e-6);
  c.hidden_act = get<std::string>(j, "hidden_act", "silu");
  c.tie_word_embeddings = get<bool>(j, "tie_word_embeddings", false);
  c.attention_dropout = get<double>(j, "attention_dropout", 0.0);
  // Qwen2's modeling ignores attention_bias and mlp_bias (fixed biases).
  c.mlp_bias = !qwen2 && get<bool>(j, "mlp_bias", false);
  const bool attention_bias = get<bool>(j, "attention_bias", false);
  c.qkv_bias = qwen2 || attention_bias;
  c.o_bias = !qwen2 && attention_bias;
  c.bos_token_id = optional_id(j, "bos_token_id", qwen2 ? std::nullopt : std::optional<int64_t>(1));
  c.eos_token_ids =
      token_ids(j, "eos_token_id", qwen2 ? std::vector<int64_t>{} : std::vector<int64_t>{2});
  if (c.num_attention_heads > 0) {
    c.head_dim = get<int64_t>(j, "head_dim", c.hidden_size / c.num_attention_heads);
  }
  TORCH_CHECK(c.hidden_act == "silu" || c.hidden_act == "swish" || c.hidden_act == "gelu" ||
                  c.hidden_act == "gelu_pytorch_tanh" || c.hidden_act == "relu",
              "config.json: unsupported hidden_act \"", c.hidden_act,
              "\"; supported: silu, swish, gelu, gelu_pytorch_tanh, relu");
  TORCH_CHECK(!(qwen2 && get<bool>(j, "use_sliding_window", false)),
              "config.json: use_sliding_window true is not supported");
  TORCH_CHECK(get<int64_t>(j, "pretraining_tp", 1) == 1, "config.json: pretraining_tp ",
              j.value("pretraining_tp", 1), " is not supported; only 1");
  parse_rope(j, c);
}

void check_positive(const char* name, int64_t value) {
  TORCH_CHECK(value > 0 && value <= kMaxSize, "config.json: ", name, " must be in [1, ", kMaxSize,
              "], got ", value);
}

void validate(const ModelConfig& c) {
  check_positive("vocab_size", c.vocab_size);
  check_positive("hidden_size", c.hidden_size);
  check_positive("intermediate_size", c.intermediate_size);
  check_positive("num_hidden_layers", c.num_hidden_layers);
  check_positive("num_attention_heads", c.num_attention_heads);
  check_positive("num_key_value_heads", c.num_key_value_heads);
  check_positive("max_position_embeddings", c.max_position_embeddings);
  TORCH_CHECK(c.num_attention_heads % c.num_key_value_heads == 0,
              "config.json: num_attention_heads ", c.num_attention_heads,
              " must be a multiple of num_key_value_heads ", c.num_key_value_heads);
  if (c.model_type == "gpt2") {
    TORCH_CHECK(c.hidden_size % c.num_attention_heads == 0, "config.json: n_embd ", c.hidden_size,
                " must be a multiple of n_head ", c.num_attention_heads);
  } else {
    check_positive("head_dim", c.head_dim);
    TORCH_CHECK(c.head_dim % 2 == 0, "config.json: head_dim ", c.head_dim,
                " must be even for rotary embeddings");
  }
}

}  // namespace

const std::vector<std::string>& ModelConfig::supported_model_types() {
  static const std::vector<std::string> types{"gpt2", "llama", "qwen2"};
  return types;
}

ModelConfig ModelConfig::from_json(const json& j) {
  TORCH_CHECK(j.is_object(), "config.json: expected a JSON object, got ", j.type_name());
  ModelConfig c;
  c.raw = j;
  c.model_type = get<std::string>(j, "model_type", "");
  c.initializer_range = get<double>(j, "initializer_range", 0.02);
  c.pad_token_id = optional_id(j, "pad_token_id", std::nullopt);
  if (c.model_type == "gpt2") {
    parse_gpt2(j, c);
  } else if (c.model_type == "llama" || c.model_type == "qwen2") {
    parse_llama(j, c, c.model_type == "qwen2");
  } else {
    TORCH_CHECK(false, "config.json: unsupported model_type \"", c.model_type,
                "\"; supported: gpt2, llama, qwen2");
  }
  validate(c);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in, "cannot open model config ", path);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "model config ", path, " is not valid JSON: ", e.what());
  }
  return from_json(j);
}

json ModelConfig::to_json() const {
  json j = raw;
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["initializer_range"] = initializer_range;
  j["bos_token_id"] = bos_token_id ? json(*bos_token_id) : json(nullptr);
  j["eos_token_id"] = eos_token_ids.size() == 1 ? json(eos_token_ids[0]) : json(eos_token_ids);
  j["pad_token_id"] = pad_token_id ? json(*pad_token_id) : json(nullptr);
  if (model_type == "gpt2") {
    j["architectures"] = {"GPT2LMHeadModel"};
    j["n_positions"] = max_position_embeddings;
    j["n_embd"] = hidden_size;
    j["n_layer"] = num_hidden_layers;
    j["n_head"] = num_attention_heads;
    j["n_inner"] = intermediate_size;
    j["activation_function"] = activation_function;
    j["resid_pdrop"] = resid_pdrop;
    j["embd_pdrop"] = embd_pdrop;
    j["attn_pdrop"] = attn_pdrop;
    j["layer_norm_epsilon"] = layer_norm_epsilon;
    j["scale_attn_weights"] = scale_attn_weights;
    j["scale_attn_by_inverse_layer_idx"] = scale_attn_by_inverse_layer_idx;
    return j;
  }
  j["architectures"] = {model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["hidden_act"] = hidden_act;
  j["mlp_bias"] = mlp_bias;
  j["attention_dropout"] = attention_dropout;
  if (model_type == "llama") j["attention_bias"] = qkv_bias;
  json rope_params = {{"rope_type", rope.rope_type}, {"rope_theta", rope.rope_theta}};
  if (rope.rope_type != "default") rope_params["factor"] = rope.factor;
  if (rope.rope_type == "llama3") {
    rope_params["low_freq_factor"] = rope.low_freq_factor;
    rope_params["high_freq_factor"] = rope.high_freq_factor;
    rope_params["original_max_position_embeddings"] = rope.original_max_position_embeddings;
  }
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = rope_params;
  return j;
}

void ModelConfig::save(const std::string& path) const {
  std::ofstream out(path);
  TORCH_CHECK(out, "cannot write model config ", path);
  out << to_json().dump(2) << "\n";
  TORCH_CHECK(out.good(), "writing model config ", path, " failed");
}

}  // namespace remat::models
