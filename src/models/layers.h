#pragma once

// Pieces the model implementations share: activations, masks, attention.

#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include "remat/models/causal_lm.h"

namespace remat::models::detail {

/// The activation a config names (Hugging Face ACT2FN names).
torch::Tensor activation(const std::string& name, const torch::Tensor& x);

/// `x` in the dtype autocast gives a matmul's input on `x`'s device (x itself
/// when autocast is off there or x already has it). A tensor read by several
/// projections is cast once instead of once per projection, which also keeps
/// one copy for their backward instead of several.
torch::Tensor autocast_input(const torch::Tensor& x);

/// The dtype autocast gives a matmul's floating input on `x`'s device, or
/// nullopt when autocast is off there.
std::optional<at::ScalarType> autocast_dtype(const torch::Tensor& x);

/// The trainable parameters of `modules`, in order: what a checkpointed
/// region made of these sub-modules passes as its params.
std::vector<torch::Tensor> trainable_parameters_of(
    std::initializer_list<const torch::nn::Module*> modules);

/// The mask SDPA needs for `q_len` new tokens after `past` cached ones:
/// either nothing and is_causal, or an explicit boolean mask [batch, 1,
/// q_len, past + q_len] (true = attend) when there is padding or a cache.
struct AttentionMask {
  std::optional<torch::Tensor> mask;
  bool is_causal = false;
};

AttentionMask make_attention_mask(const std::optional<torch::Tensor>& attention_mask, int64_t batch,
                                  int64_t past, int64_t q_len, const torch::Device& device);

/// Scaled dot-product attention over [batch, heads, tokens, head_dim]
/// tensors; k and v may have fewer (grouped) heads. Returns [batch, tokens,
/// heads * head_dim].
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const AttentionMask& mask, double scale, double dropout_p);

/// Default position ids: past, past + 1, ... for every row.
torch::Tensor default_positions(int64_t batch, int64_t past, int64_t q_len,
                                const torch::Device& device);

/// What a decoder's forward derives from its inputs before the layers run.
struct DecoderInputs {
  bool use_cache = false;
  std::optional<KVCache> past;
  int64_t past_len = 0;
  torch::Tensor positions;
  AttentionMask mask;
};

/// Checks the inputs and resolves use_cache: a checkpointing model in
/// training neither keeps nor reads a cache (its layers warn once).
template <typename Layer>
DecoderInputs prepare_decoder(const CausalLMInputs& in, std::vector<Layer>& layers) {
  const auto& ids = in.input_ids;
  TORCH_CHECK(ids.dim() == 2, "input_ids must be [batch, tokens], got ", ids.sizes());
  DecoderInputs d;
  d.use_cache = in.use_cache;
  d.past = in.past_key_values;
  if (d.use_cache && !layers.empty() && !layers[0]->resolve_use_cache(true)) {
    d.use_cache = false;
    d.past.reset();
  }
  const int64_t b = ids.size(0), t = ids.size(1);
  d.past_len = d.past ? d.past->length() : 0;
  d.positions =
      in.position_ids ? *in.position_ids : default_positions(b, d.past_len, t, ids.device());
  d.mask = make_attention_mask(in.attention_mask, b, d.past_len, t, ids.device());
  return d;
}

/// Runs `call(layer, x, past_k, past_v, use_cache)` (which returns {x} or
/// {x, keys, values}) for every layer; returns the last hidden states and,
/// with use_cache, the new cache.
template <typename Layer, typename Call>
std::pair<torch::Tensor, std::optional<KVCache>> run_layers(std::vector<Layer>& layers,
                                                            torch::Tensor x, const DecoderInputs& d,
                                                            Call&& call) {
  KVCache next;
  for (size_t i = 0; i < layers.size(); ++i) {
    std::optional<torch::Tensor> past_k, past_v;
    if (d.past) {
      past_k = d.past->keys.at(i);
      past_v = d.past->values.at(i);
    }
    auto out = call(layers[i], x, past_k, past_v, d.use_cache);
    x = out[0];
    if (d.use_cache) {
      next.keys.push_back(out[1]);
      next.values.push_back(out[2]);
    }
  }
  if (!d.use_cache) return {x, std::nullopt};
  return {x, std::move(next)};
}

}  // namespace remat::models::detail
