#pragma once

// Pieces the model implementations share: activations, masks, attention.

#include <torch/torch.h>

#include <optional>
#include <string>

namespace remat::models::detail {

/// The activation a config names (Hugging Face ACT2FN names).
torch::Tensor activation(const std::string& name, const torch::Tensor& x);

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

}  // namespace remat::models::detail
