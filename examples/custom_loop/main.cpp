// remat-custom-loop: remat::checkpoint in a plain LibTorch training loop, on
// a module of your own. Each block's activations are dropped after the
// forward and recomputed during the backward; the gradients are the same.

#include <remat/remat.h>

#include <iostream>

// An ordinary torch module: nothing remat-specific in it.
struct MlpBlockImpl : torch::nn::Module {
  explicit MlpBlockImpl(int64_t dim)
      : norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))),
        up(register_module("up", torch::nn::Linear(dim, 4 * dim))),
        down(register_module("down", torch::nn::Linear(4 * dim, dim))) {}

  torch::Tensor forward(const torch::Tensor& x) { return x + down(torch::gelu(up(norm(x)))); }

  torch::nn::LayerNorm norm;
  torch::nn::Linear up, down;
};
TORCH_MODULE(MlpBlock);

int main() {
  torch::manual_seed(0);
  const int64_t dim = 64, depth = 8;
  std::vector<MlpBlock> blocks;
  std::vector<torch::Tensor> params;
  for (int64_t i = 0; i < depth; ++i) {
    blocks.emplace_back(dim);
    for (const auto& p : blocks.back()->parameters()) params.push_back(p);
  }
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(1e-3));

  // Learn y = sin(x), elementwise.
  for (int step = 0; step <= 100; ++step) {
    auto x = torch::randn({32, dim});
    auto h = x;
    for (auto& block : blocks) {
      // remat::checkpoint(module, inputs...) runs the block without keeping
      // its activations; the backward recomputes them.
      h = remat::checkpoint(block, h);
    }
    auto loss = torch::mse_loss(h, torch::sin(x));
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (step % 25 == 0) std::cout << "step " << step << " loss " << loss.item<float>() << "\n";
  }

  // The same gradient as without checkpointing, on one batch.
  auto x = torch::randn({4, dim});
  auto plain = x, checkpointed = x;
  for (auto& block : blocks) plain = block(plain);
  auto g_plain = torch::autograd::grad({plain.square().sum()}, {params[0]})[0];
  for (auto& block : blocks) checkpointed = remat::checkpoint(block, checkpointed);
  auto g_checkpointed = torch::autograd::grad({checkpointed.square().sum()}, {params[0]})[0];
  const bool same = torch::allclose(g_plain, g_checkpointed);
  std::cout << "checkpointed gradient " << (same ? "equals" : "DIFFERS FROM") << " the plain one\n";
  return same ? 0 : 1;
}
