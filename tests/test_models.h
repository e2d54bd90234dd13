#pragma once

// Small models the checkpoint tests share: a GPT-style pre-norm block (causal
// self-attention and a GELU MLP, both with dropout) and a plain MLP.

#include <torch/torch.h>

#include "remat/nn/checkpointable.h"

namespace remat::test {

struct GptBlockImpl : remat::nn::CheckpointableModule {
  GptBlockImpl(int64_t dim, int64_t heads, double dropout)
      : heads(heads),
        ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))),
        qkv(register_module("qkv", torch::nn::Linear(dim, 3 * dim))),
        proj(register_module("proj", torch::nn::Linear(dim, dim))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))),
        fc(register_module("fc", torch::nn::Linear(dim, 4 * dim))),
        out(register_module("out", torch::nn::Linear(4 * dim, dim))),
        drop(register_module("drop", torch::nn::Dropout(dropout))) {}

  torch::Tensor forward(torch::Tensor x) {
    auto b = x.size(0), t = x.size(1), d = x.size(2);
    auto q_k_v = qkv(ln1(x)).view({b, t, 3, heads, d / heads}).permute({2, 0, 3, 1, 4});
    auto q = q_k_v[0], k = q_k_v[1], v = q_k_v[2];
    auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(double(d / heads));
    auto mask =
        torch::ones({t, t}, torch::TensorOptions().dtype(torch::kBool).device(x.device())).triu(1);
    auto att = drop(torch::softmax(scores.masked_fill(mask, -1e9), -1));
    auto y = torch::matmul(att, v).transpose(1, 2).reshape({b, t, d});
    x = x + drop(proj(y));
    return x + drop(out(torch::gelu(fc(ln2(x)), "tanh")));
  }

  int64_t heads;
  torch::nn::LayerNorm ln1;
  torch::nn::Linear qkv, proj;
  torch::nn::LayerNorm ln2;
  torch::nn::Linear fc, out;
  torch::nn::Dropout drop;
};
TORCH_MODULE(GptBlock);

/// A stack of GPT blocks whose forward goes through remat::nn::forward, so
/// gradient_checkpointing_enable() switches checkpointing on.
struct GptStackImpl : torch::nn::Module {
  GptStackImpl(int64_t layers, int64_t dim, int64_t heads, double dropout) {
    auto list = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < layers; ++i) {
      blocks.emplace_back(dim, heads, dropout);
      list->push_back(blocks.back());
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& block : blocks) x = remat::nn::forward(block, x);
    return x;
  }
  std::vector<GptBlock> blocks;
};
TORCH_MODULE(GptStack);

struct MlpImpl : torch::nn::Module {
  explicit MlpImpl(int64_t dim)
      : fc1(register_module("fc1", torch::nn::Linear(dim, 4 * dim))),
        fc2(register_module("fc2", torch::nn::Linear(4 * dim, dim))) {}
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::gelu(fc1(x))); }
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(Mlp);

/// Gradients of every parameter of `module`, cloned, in registration order.
inline std::vector<torch::Tensor> parameter_grads(const torch::nn::Module& module) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : module.parameters()) {
    grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
  }
  return grads;
}

}  // namespace remat::test
