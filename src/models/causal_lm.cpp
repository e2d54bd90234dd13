#include "remat/models/causal_lm.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "factory.h"
#include "remat/flops.h"
#include "remat/io/safetensors.h"
#include "remat/logging.h"
#include "remat/nn/linear_cross_entropy.h"

namespace remat::models {

namespace fs = std::filesystem;

namespace {

// transformers shifts the labels so that tokens < n predict n; the last
// position has no target.
torch::Tensor shifted_labels(const torch::Tensor& labels, const torch::Device& device) {
  return torch::nn::functional::pad(labels,
                                    torch::nn::functional::PadFuncOptions({0, 1}).value(-100))
      .narrow(1, 1, labels.size(1))
      .to(device);
}

void check_labels(const torch::Tensor& labels, c10::IntArrayRef batch_tokens) {
  TORCH_CHECK(labels.sizes() == batch_tokens, "labels must be [batch, tokens] = ", batch_tokens,
              ", got ", labels.sizes());
}

void check_num_items(std::optional<int64_t> num_items_in_batch) {
  TORCH_CHECK(!num_items_in_batch || *num_items_in_batch > 0,
              "num_items_in_batch must be positive, got ", num_items_in_batch.value_or(0));
}

}  // namespace

torch::Tensor CausalLMImpl::causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                                           std::optional<int64_t> num_items_in_batch) {
  check_labels(labels, logits.sizes().slice(0, 2));
  check_num_items(num_items_in_batch);
  auto shifted = shifted_labels(labels, logits.device());
  auto flat_logits = logits.to(torch::kFloat).reshape({-1, logits.size(-1)});
  auto options = torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100);
  if (!num_items_in_batch)
    return torch::nn::functional::cross_entropy(flat_logits, shifted.reshape(-1), options);
  auto sum = torch::nn::functional::cross_entropy(flat_logits, shifted.reshape(-1),
                                                  options.reduction(torch::kSum));
  return sum / static_cast<double>(*num_items_in_batch);
}

torch::Tensor CausalLMImpl::chunked_causal_lm_loss(const torch::Tensor& hidden,
                                                   const torch::Tensor& head_weight,
                                                   const torch::Tensor& labels,
                                                   std::optional<int64_t> num_items_in_batch,
                                                   int64_t chunk_rows) {
  check_labels(labels, hidden.sizes().slice(0, 2));
  check_num_items(num_items_in_batch);
  auto targets = shifted_labels(labels, hidden.device()).reshape(-1);
  auto sum = nn::linear_cross_entropy(hidden.reshape({-1, hidden.size(-1)}), head_weight, targets,
                                      {}, nn::LinearCrossEntropyOptions().chunk_rows(chunk_rows));
  if (num_items_in_batch) return sum / static_cast<double>(*num_items_in_batch);
  // torch's mean reduction: over the counted targets (NaN when there are none).
  return sum / (targets != -100).sum();
}

CausalLMOutput CausalLMImpl::make_output(const torch::Tensor& hidden,
                                         const torch::Tensor& head_weight, const CausalLMInputs& in,
                                         std::optional<KVCache> cache) {
  CausalLMOutput out;
  out.past_key_values = std::move(cache);
  if (in.labels && !in.return_logits) {
    out.loss = chunked_causal_lm_loss(hidden, head_weight, *in.labels, in.num_items_in_batch,
                                      in.loss_chunk_rows);
    return out;
  }
  out.logits = torch::matmul(hidden, head_weight.t());
  if (in.labels) out.loss = causal_lm_loss(out.logits, *in.labels, in.num_items_in_batch);
  return out;
}

std::map<std::string, torch::Tensor> CausalLMImpl::hf_state_dict() const {
  std::map<std::string, torch::Tensor> result;
  for (const auto& item : named_parameters()) result[item.key()] = item.value();
  return result;
}

void CausalLMImpl::load_hf_state_dict(const std::map<std::string, torch::Tensor>& weights) {
  auto params = named_parameters();
  std::set<std::string> loaded;
  std::vector<std::string> unused;
  const auto tied = tied_weight_names();
  torch::NoGradGuard no_grad;
  for (const auto& [file_name, tensor] : weights) {
    auto name = canonical_name(file_name);
    if (name.empty() || std::find(tied.begin(), tied.end(), name) != tied.end()) continue;
    auto* param = params.find(name);
    if (param == nullptr) {
      unused.push_back(file_name);
      continue;
    }
    TORCH_CHECK(param->sizes() == tensor.sizes(), "weight ", file_name, " has shape ",
                tensor.sizes(), " but the model (from config.json) expects ", param->sizes());
    param->copy_(tensor);
    loaded.insert(name);
  }
  std::vector<std::string> missing;
  for (const auto& item : params) {
    if (!loaded.count(item.key())) missing.push_back(item.key());
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 8; ++i) list += (i ? ", " : "") + missing[i];
    TORCH_CHECK(false, "the weights lack ", missing.size(), " tensors the model needs: ", list,
                missing.size() > 8 ? ", ..." : "");
  }
  if (!unused.empty()) {
    logger()->warn("{} weights in the checkpoint are not used by the {} model, e.g. {}",
                   unused.size(), config_.model_type, unused.front());
  }
}

int64_t CausalLMImpl::gradient_checkpointing_enable(
    const nn::GradientCheckpointingOptions& options) {
  return nn::gradient_checkpointing_enable(*this, options);
}

void CausalLMImpl::gradient_checkpointing_disable() { nn::gradient_checkpointing_disable(*this); }

double CausalLMImpl::training_flops_per_token(int64_t seq) const {
  // Embedding tables are looked up, not multiplied: GPT-2's position table
  // always, the token table unless the LM head reuses it (tied weights).
  double matmul = 0;
  for (const auto& [name, weight] : hf_state_dict()) {
    const bool token_table =
        name == "transformer.wte.weight" || name == "model.embed_tokens.weight";
    if (name == "transformer.wpe.weight" || (token_table && !config_.tie_word_embeddings)) continue;
    matmul += static_cast<double>(weight.numel());
  }
  return remat::training_flops_per_token(matmul, config_.num_hidden_layers, config_.hidden_size,
                                         seq);
}

bool CausalLMImpl::is_gradient_checkpointing() const {
  return nn::is_gradient_checkpointing(*this);
}

torch::Tensor apply_logits_warpers(torch::Tensor logits, const GenerationConfig& g) {
  TORCH_CHECK(g.temperature > 0, "generate: temperature must be positive, got ", g.temperature);
  TORCH_CHECK(g.top_p > 0 && g.top_p <= 1, "generate: top_p must be in (0, 1], got ", g.top_p);
  TORCH_CHECK(g.top_k >= 0, "generate: top_k must be >= 0 (0 disables it), got ", g.top_k);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (g.temperature != 1.0) logits = logits / g.temperature;
  if (g.top_k > 0) {
    auto k = std::min<int64_t>(g.top_k, logits.size(-1));
    auto kth = std::get<0>(logits.topk(k)).narrow(-1, k - 1, 1);
    logits = logits.masked_fill(logits < kth, neg_inf);
  }
  if (g.top_p < 1.0) {
    // As transformers' TopPLogitsWarper: drop the tokens whose cumulative
    // probability (ascending order) stays within 1 - top_p; keep at least one.
    auto [sorted, order] = logits.sort(-1, /*descending=*/false);
    auto cumulative = sorted.softmax(-1).cumsum(-1);
    auto remove_sorted = cumulative <= (1 - g.top_p);
    remove_sorted.narrow(-1, remove_sorted.size(-1) - 1, 1).fill_(false);
    auto remove = remove_sorted.scatter(-1, order, remove_sorted);
    logits = logits.masked_fill(remove, neg_inf);
  }
  return logits;
}

namespace {

torch::Tensor select_tokens(const torch::Tensor& logits, const GenerationConfig& g) {
  if (!g.do_sample) return logits.argmax(-1);
  return torch::multinomial(apply_logits_warpers(logits, g).softmax(-1), 1).squeeze(-1);
}

}  // namespace

torch::Tensor CausalLMImpl::generate(const torch::Tensor& input_ids, const GenerationConfig& g,
                                     const std::optional<torch::Tensor>& attention_mask) {
  TORCH_CHECK(input_ids.dim() == 2 && input_ids.size(1) > 0,
              "generate: input_ids must be [batch, tokens] with tokens > 0, got ",
              input_ids.sizes());
  TORCH_CHECK(g.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ",
              g.max_new_tokens);
  torch::NoGradGuard no_grad;
  if (g.seed) torch::manual_seed(*g.seed);
  const auto device = input_ids.device();
  auto eos = g.eos_token_ids.value_or(config_.eos_token_ids);
  int64_t pad = g.pad_token_id ? *g.pad_token_id
                               : config_.pad_token_id.value_or(eos.empty() ? 0 : eos.front());
  auto mask = attention_mask ? attention_mask->to(device).to(torch::kLong)
                             : torch::ones_like(input_ids, torch::kLong);
  TORCH_CHECK(mask.sizes() == input_ids.sizes(),
              "generate: attention_mask must have the shape of "
              "input_ids ",
              input_ids.sizes(), ", got ", mask.sizes());
  auto eos_tensor = torch::tensor(eos, torch::TensorOptions().dtype(torch::kLong).device(device));
  auto ids = input_ids.to(torch::kLong);
  auto unfinished = torch::ones({ids.size(0)}, ids.options());
  std::optional<KVCache> cache;
  for (int64_t step = 0; step < g.max_new_tokens; ++step) {
    // As transformers: positions count real tokens only (left padding).
    auto positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1);
    CausalLMInputs in;
    const int64_t fresh = cache ? 1 : ids.size(1);
    in.input_ids = ids.narrow(1, ids.size(1) - fresh, fresh);
    in.position_ids = positions.narrow(1, ids.size(1) - fresh, fresh);
    in.attention_mask = mask;
    in.past_key_values = cache;
    in.use_cache = g.use_cache;
    auto out = forward(in);
    if (g.use_cache) cache = std::move(out.past_key_values);
    auto next = select_tokens(out.logits.select(1, -1).to(torch::kFloat), g);
    next = next * unfinished + pad * (1 - unfinished);
    ids = torch::cat({ids, next.unsqueeze(1)}, 1);
    mask = torch::cat({mask, torch::ones({mask.size(0), 1}, mask.options())}, 1);
    if (eos_tensor.numel() > 0) {
      unfinished = unfinished * (~torch::isin(next, eos_tensor)).to(torch::kLong);
      if (unfinished.max().item<int64_t>() == 0) break;
    }
  }
  return ids;
}

void CausalLMImpl::save_pretrained(const std::string& dir, int64_t max_shard_bytes) const {
  fs::create_directories(dir);
  std::map<std::string, torch::Tensor> weights;
  torch::ScalarType dtype = torch::kFloat;
  for (const auto& [name, tensor] : hf_state_dict()) {
    weights[name] = tensor.detach().to(torch::kCPU).contiguous();
    dtype = tensor.scalar_type();
  }
  auto config = config_;
  config.raw["dtype"] = dtype == torch::kBFloat16 ? "bfloat16"
                        : dtype == torch::kHalf   ? "float16"
                                                  : "float32";
  config.save((fs::path(dir) / "config.json").string());
  io::save_model_weights(dir, weights, max_shard_bytes);
  if (source_dir_.empty() || fs::equivalent(fs::path(source_dir_), fs::path(dir))) return;
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "generation_config.json", "vocab.json", "merges.txt"}) {
    auto from = fs::path(source_dir_) / file;
    if (fs::exists(from)) {
      fs::copy_file(from, fs::path(dir) / file, fs::copy_options::overwrite_existing);
    }
  }
}

std::shared_ptr<CausalLMImpl> AutoModelForCausalLM::from_config(
    const ModelConfig& config, const FromPretrainedOptions& options) {
  auto model = config.model_type == "gpt2" ? detail::make_gpt2(config) : detail::make_llama(config);
  model->to(options.device, options.dtype);
  return model;
}

std::shared_ptr<CausalLMImpl> AutoModelForCausalLM::from_pretrained(
    const std::string& dir, const FromPretrainedOptions& options) {
  TORCH_CHECK(fs::is_directory(dir), "from_pretrained: ", dir, " is not a directory");
  auto config = ModelConfig::from_file((fs::path(dir) / "config.json").string());
  auto model = config.model_type == "gpt2" ? detail::make_gpt2(config) : detail::make_llama(config);
  model->load_hf_state_dict(io::load_model_weights(dir));
  model->to(options.device, options.dtype);
  model->set_source_dir(dir);
  return model;
}

}  // namespace remat::models
