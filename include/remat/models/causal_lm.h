#pragma once

/// \file
/// Causal language models (GPT-2 and the Llama family) that read and write
/// Hugging Face directories, compute what transformers computes, checkpoint
/// every decoder layer on request and generate with a KV cache.
/// \code
///   auto model = remat::models::AutoModelForCausalLM::from_pretrained("tiny-llama");
///   model->gradient_checkpointing_enable();
///   remat::models::CausalLMInputs inputs;
///   inputs.input_ids = ids;
///   inputs.labels = ids;
///   model->forward(inputs).loss.backward();
///   auto tokens = model->generate(prompt);
///   model->save_pretrained("out");
/// \endcode

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "remat/models/config.h"
#include "remat/nn/checkpointable.h"

namespace remat::models {

/// Keys and values of every layer for the tokens seen so far, each
/// [batch, kv_heads, tokens, head_dim].
struct KVCache {
  /// One key tensor per layer.
  std::vector<torch::Tensor> keys;
  /// One value tensor per layer.
  std::vector<torch::Tensor> values;

  /// Tokens cached (0 when empty).
  int64_t length() const { return keys.empty() ? 0 : keys.front().size(2); }
};

/// The inputs of CausalLMImpl::forward, with Hugging Face's names.
struct CausalLMInputs {
  /// [batch, tokens] int64 token ids.
  torch::Tensor input_ids;
  /// [batch, past + tokens]: 1 for real tokens, 0 for padding. Default: all 1.
  std::optional<torch::Tensor> attention_mask;
  /// [batch, tokens] positions. Default: past, past + 1, ...
  std::optional<torch::Tensor> position_ids;
  /// [batch, tokens] targets; the loss is transformers' shifted causal-LM
  /// loss, ignoring -100.
  std::optional<torch::Tensor> labels;
  /// The cache of earlier tokens (incremental decoding).
  std::optional<KVCache> past_key_values;
  /// Return the updated cache. Forced off while checkpointing in training.
  bool use_cache = false;
  /// When set, the loss is the sum over counted tokens divided by this (the
  /// Trainer passes the token count of all accumulated micro-batches).
  std::optional<int64_t> num_items_in_batch;
  /// Also return the logits when labels are given. Without labels the logits
  /// are always returned. With labels and false (the default, what training
  /// wants) the loss is computed by remat::nn::linear_cross_entropy, chunk by
  /// chunk, and the full [batch, tokens, vocab] logits never exist (in the
  /// forward or the backward); `logits` is then undefined. Same loss and
  /// gradients either way, within float rounding.
  bool return_logits = false;
  /// Rows (tokens) per chunk of that loss; 0 picks about 512 MiB of fp32
  /// logits per chunk. Larger chunks mean fewer, larger matrix products
  /// (faster) and more memory.
  int64_t loss_chunk_rows = 0;
};

/// What CausalLMImpl::forward returns.
struct CausalLMOutput {
  /// [batch, tokens, vocab] in the model's dtype; undefined when labels were
  /// given without return_logits.
  torch::Tensor logits;
  /// Scalar float32 loss when labels were given, else undefined.
  torch::Tensor loss;
  /// The updated cache when use_cache was on.
  std::optional<KVCache> past_key_values;
};

/// How generate() picks tokens; the fields and defaults of transformers'
/// GenerationConfig that remat supports.
struct GenerationConfig {
  /// The most tokens generate() appends to a row; it stops sooner once every
  /// row has produced an EOS token.
  int64_t max_new_tokens = 20;
  /// false: greedy (argmax); true: sample after temperature, top-k, top-p.
  bool do_sample = false;
  /// Divides the logits before sampling; > 0.
  double temperature = 1.0;
  /// 0 disables top-k.
  int64_t top_k = 50;
  /// Nucleus sampling: keep the smallest set of tokens with this probability; 1 disables.
  double top_p = 1.0;
  /// Seeds the global generators before sampling (as transformers.set_seed).
  std::optional<uint64_t> seed;
  /// Stop tokens; default: the model config's eos_token_id.
  std::optional<std::vector<int64_t>> eos_token_ids;
  /// Written after a sequence has finished; default: pad_token_id, else the
  /// first EOS token.
  std::optional<int64_t> pad_token_id;
  /// Decode incrementally with a KV cache (same tokens, faster).
  bool use_cache = true;
};

/// The logits processing of sampling, as transformers applies it:
/// temperature, then top-k, then top-p (filtered entries become -inf).
/// `logits` is [batch, vocab].
torch::Tensor apply_logits_warpers(torch::Tensor logits, const GenerationConfig& generation);

/// Base of remat's causal LMs: a torch module whose parameter names are
/// transformers' weight names.
class CausalLMImpl : public torch::nn::Module {
 public:
  /// A model of `config`; subclasses create the layers.
  explicit CausalLMImpl(ModelConfig config) : config_(std::move(config)) {}

  /// The configuration (config.json) of the model.
  const ModelConfig& config() const { return config_; }

  /// Logits, loss (with labels) and the new cache (with use_cache).
  virtual CausalLMOutput forward(const CausalLMInputs& inputs) = 0;

  /// Re-initializes every weight as transformers does for a fresh model.
  virtual void init_weights() = 0;

  /// The tensors transformers saves, by name (tied weights once).
  std::map<std::string, torch::Tensor> hf_state_dict() const;

  /// Copies `weights` (transformers' names; dtype converted) into the model.
  /// Missing weights are an error naming them; unused ones are logged.
  void load_hf_state_dict(const std::map<std::string, torch::Tensor>& weights);

  /// Appends up to `max_new_tokens` tokens to each row of `input_ids`
  /// [batch, tokens] and returns [batch, tokens + new]; rows of a batch are
  /// left-padded, with `attention_mask` marking the real tokens. As
  /// transformers, it stops early once every row has produced an EOS token
  /// (so `new` can be less than max_new_tokens); a row that finished earlier
  /// is filled with the pad token. With no EOS tokens it always appends
  /// max_new_tokens.
  torch::Tensor generate(const torch::Tensor& input_ids, const GenerationConfig& generation = {},
                         const std::optional<torch::Tensor>& attention_mask = std::nullopt);

  /// Writes config.json and model.safetensors (sharded above
  /// `max_shard_bytes`) into `dir`, plus the tokenizer files of the
  /// directory the model was loaded from, so transformers loads it back.
  void save_pretrained(const std::string& dir, int64_t max_shard_bytes = 5'000'000'000) const;

  /// Marks every decoder layer (or as `options` says) for checkpointing.
  int64_t gradient_checkpointing_enable(const nn::GradientCheckpointingOptions& options = {});
  /// Unmarks every decoder layer.
  void gradient_checkpointing_disable();
  /// Whether any decoder layer is marked for checkpointing.
  bool is_gradient_checkpointing() const;

  /// FLOPs of training one token at sequence length `seq` (forward and
  /// backward, no replay): remat::training_flops_per_token over the weights
  /// a token is multiplied by (every parameter but lookup-only embedding
  /// tables; a table tied to the LM head counts) and the attention of every
  /// layer. The one definition of MFU: the Trainer's log line, TensorBoard
  /// and remat-bench all divide it by the device's peak.
  /// Example: GPT-2 124M at 1024 tokens is about 0.85e9.
  double training_flops_per_token(int64_t seq) const;

  /// The directory from_pretrained() read, if any (tokenizer files).
  const std::string& source_dir() const { return source_dir_; }
  /// Sets the directory whose tokenizer files save_pretrained() copies.
  void set_source_dir(std::string dir) { source_dir_ = std::move(dir); }

 protected:
  /// Weight names that are aliases of another weight and not saved.
  virtual std::vector<std::string> tied_weight_names() const { return {}; }
  /// Maps a name found in a file to the model's name ("" to ignore it).
  virtual std::string canonical_name(const std::string& name) const { return name; }
  /// Loss as transformers' ForCausalLMLoss, from the full logits.
  static torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                                      std::optional<int64_t> num_items_in_batch);
  /// The same loss from the final hidden states [batch, tokens, hidden] and
  /// the LM head's weight [vocab, hidden], chunk by chunk, without the logits.
  static torch::Tensor chunked_causal_lm_loss(const torch::Tensor& hidden,
                                              const torch::Tensor& head_weight,
                                              const torch::Tensor& labels,
                                              std::optional<int64_t> num_items_in_batch,
                                              int64_t chunk_rows = 0);
  /// The output for the final hidden states and the LM head's weight: the
  /// logits unless only the loss is wanted, and the loss when `in` has labels.
  static CausalLMOutput make_output(const torch::Tensor& hidden, const torch::Tensor& head_weight,
                                    const CausalLMInputs& in, std::optional<KVCache> cache);

  ModelConfig config_;
  std::string source_dir_;
};

/// Options for AutoModelForCausalLM.
struct FromPretrainedOptions {
  /// Parameter dtype; weights are converted on load. Default float32.
  torch::Dtype dtype = torch::kFloat;
  /// Where the parameters are created. Default CPU.
  torch::Device device = torch::kCPU;
};

/// Builds the model a config.json names.
struct AutoModelForCausalLM {
  /// Reads `dir`/config.json and the safetensors weights (sharded or not).
  static std::shared_ptr<CausalLMImpl> from_pretrained(const std::string& dir,
                                                       const FromPretrainedOptions& options = {});
  /// A freshly initialized model.
  static std::shared_ptr<CausalLMImpl> from_config(const ModelConfig& config,
                                                   const FromPretrainedOptions& options = {});
};

}  // namespace remat::models
