#include "layers.h"

#include <ATen/autocast_mode.h>

#include <cmath>

namespace remat::models::detail {

torch::Tensor activation(const std::string& name, const torch::Tensor& x) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") {
    return torch::gelu(x, "tanh");
  }
  if (name == "gelu") return torch::gelu(x);
  if (name == "silu" || name == "swish") return torch::silu(x);
  if (name == "relu") return torch::relu(x);
  if (name == "quick_gelu") return x * torch::sigmoid(1.702 * x);
  TORCH_CHECK(false, "unsupported activation \"", name, "\"");
}

std::vector<torch::Tensor> trainable_parameters_of(
    std::initializer_list<const torch::nn::Module*> modules) {
  std::vector<torch::Tensor> params;
  for (const auto* m : modules) {
    auto p = remat::trainable_parameters(*m);
    params.insert(params.end(), p.begin(), p.end());
  }
  return params;
}

std::optional<at::ScalarType> autocast_dtype(const torch::Tensor& x) {
  const auto type = x.device().type();
  if (type != c10::DeviceType::CPU && type != c10::DeviceType::CUDA) return std::nullopt;
  if (!at::autocast::is_autocast_enabled(type) || !x.is_floating_point() ||
      x.scalar_type() == torch::kDouble) {
    return std::nullopt;
  }
  return at::autocast::get_autocast_dtype(type);
}

torch::Tensor autocast_input(const torch::Tensor& x) {
  const auto dtype = autocast_dtype(x);
  return !dtype || x.scalar_type() == *dtype ? x : x.to(*dtype);
}

AttentionMask make_attention_mask(const std::optional<torch::Tensor>& attention_mask, int64_t batch,
                                  int64_t past, int64_t q_len, const torch::Device& device) {
  const int64_t k_len = past + q_len;
  const bool padded = attention_mask.has_value() && !attention_mask->all().item<bool>();
  if (attention_mask) {
    TORCH_CHECK(attention_mask->dim() == 2 && attention_mask->size(0) == batch &&
                    attention_mask->size(1) == k_len,
                "attention_mask must be [batch, past + tokens] = [", batch, ", ", k_len, "], got ",
                attention_mask->sizes());
  }
  if (!padded) {
    if (past == 0) return {std::nullopt, q_len > 1};
    if (q_len == 1) return {std::nullopt, false};
  }
  auto opts = torch::TensorOptions().device(device);
  auto query_pos = torch::arange(past, k_len, opts.dtype(torch::kLong)).unsqueeze(1);
  auto key_pos = torch::arange(0, k_len, opts.dtype(torch::kLong)).unsqueeze(0);
  auto mask = (key_pos <= query_pos).unsqueeze(0).expand({batch, q_len, k_len});
  if (padded) mask = mask & attention_mask->to(device).to(torch::kBool).unsqueeze(1);
  // A padding query attends to nothing; let it attend to itself so that its
  // (ignored) output stays finite instead of NaN.
  auto empty_rows = ~mask.any(-1, /*keepdim=*/true);
  mask = mask | (empty_rows & (key_pos == query_pos).unsqueeze(0));
  return {mask.unsqueeze(1), false};
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const AttentionMask& mask, double scale, double dropout_p) {
  const bool gqa = k.size(1) != q.size(1);
  auto out =
      at::scaled_dot_product_attention(q, k, v, mask.mask, dropout_p, mask.is_causal, scale, gqa);
  return out.transpose(1, 2).flatten(2);
}

torch::Tensor default_positions(int64_t batch, int64_t past, int64_t q_len,
                                const torch::Device& device) {
  return torch::arange(past, past + q_len,
                       torch::TensorOptions().dtype(torch::kLong).device(device))
      .unsqueeze(0)
      .expand({batch, q_len});
}

}  // namespace remat::models::detail
