// remat::checkpoint on CUDA: parity with the plain computation (dropout
// included, under bf16 autocast too) and the memory it saves. Skipped where
// no CUDA device is present.

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include "remat/checkpoint.h"
#include "remat/memory.h"
#include "support.h"
#include "test_models.h"

using remat::test::bitwise_equal;
using remat::test::GptStack;
using remat::test::parameter_grads;

namespace {

struct CudaCheckpointTest : remat::test::SeedingFixture {
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    SeedingFixture::SetUp();
  }
  const torch::Device cuda{torch::kCUDA, 0};
};

std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>> stack_grads(
    GptStack& model, const torch::Tensor& x, bool autocast) {
  auto run = [&](bool checkpointed) {
    if (checkpointed) remat::nn::gradient_checkpointing_enable(*model);
    torch::manual_seed(7);
    for (int step = 0; step < 2; ++step) {
      torch::Tensor loss;
      if (autocast) {
        at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, true);
        at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, at::kBFloat16);
        at::autocast::increment_nesting();
      }
      loss = model->forward(x).to(torch::kFloat).square().mean();
      if (autocast) {
        at::autocast::decrement_nesting();
        at::autocast::clear_cache();
        at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, false);
      }
      loss.backward();
    }
    auto grads = parameter_grads(*model);
    model->zero_grad();
    return grads;
  };
  auto plain = run(false);
  return {plain, run(true)};
}

}  // namespace

TEST_F(CudaCheckpointTest, GptStackWithDropoutMatchesPlain) {
  GptStack model(3, 64, 4, /*dropout=*/0.2);
  model->to(cuda);
  auto x = torch::randn({2, 16, 64}, cuda);
  auto [plain, ckpt] = stack_grads(model, x, /*autocast=*/false);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(bitwise_equal(plain[i], ckpt[i])) << i;
}

TEST_F(CudaCheckpointTest, Bf16AutocastMatchesPlainAutocast) {
  GptStack model(2, 64, 4, /*dropout=*/0.1);
  model->to(cuda);
  auto x = torch::randn({2, 16, 64}, cuda);
  auto [plain, ckpt] = stack_grads(model, x, /*autocast=*/true);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(bitwise_equal(plain[i], ckpt[i])) << i;
}

TEST_F(CudaCheckpointTest, CudaGeneratorIsRestoredAndNotAdvanced) {
  auto x = torch::randn({1024}, torch::TensorOptions(cuda).requires_grad(true));
  auto fn = [](const std::vector<torch::Tensor>& in) {
    return std::vector<torch::Tensor>{torch::dropout(in[0], 0.5, /*train=*/true)};
  };
  torch::manual_seed(3);
  auto y = remat::checkpoint(fn, {x})[0];
  y.sum().backward();
  auto after_backward = torch::rand({4}, cuda);
  // The gradient is the forward's mask (scaled): the replay drew the same one.
  EXPECT_TRUE(bitwise_equal((y != 0).to(torch::kFloat) * 2, x.grad()));
  // And the replay left the generator where the forward had left it.
  torch::manual_seed(3);
  fn({x.detach()});
  EXPECT_TRUE(bitwise_equal(after_backward, torch::rand({4}, cuda)));
}

TEST_F(CudaCheckpointTest, PeakMemoryDropsByTheActivationBytes) {
  // Blocks of h = fc(x) [B, 4D], a = gelu(h), y = x + out(a): without
  // checkpointing each block keeps h and a (gelu and out need them) until
  // backward; with it, only its input. So after the forward the checkpointed
  // stack holds N blocks' h and a less. The peaks differ by less: the plain
  // peak comes at the start of backward, the checkpointed one late in it, when
  // one block's h and a are live again in its replay and the parameter
  // gradients exist.
  const int64_t layers = 8, batch = 4096, dim = 512;
  auto fc = std::vector<torch::nn::Linear>();
  auto out = std::vector<torch::nn::Linear>();
  auto model = std::make_shared<torch::nn::Module>();
  for (int64_t i = 0; i < layers; ++i) {
    fc.push_back(model->register_module("fc" + std::to_string(i), torch::nn::Linear(dim, 4 * dim)));
    out.push_back(
        model->register_module("out" + std::to_string(i), torch::nn::Linear(4 * dim, dim)));
  }
  model->to(cuda);
  auto x = torch::randn({batch, dim}, cuda);
  int64_t held = 0;  // bytes allocated by the forward and still held after it
  auto peak = [&](bool checkpointed) {
    model->zero_grad(/*set_to_none=*/true);
    torch::cuda::synchronize();
    remat::reset_peak_memory_stats(cuda);
    const auto before = remat::memory_allocated(cuda);
    auto h = x;
    for (int64_t i = 0; i < layers; ++i) {
      auto block = [&, i](const std::vector<torch::Tensor>& in) {
        return std::vector<torch::Tensor>{in[0] + out[i](torch::gelu(fc[i](in[0])))};
      };
      std::vector<torch::Tensor> params = remat::trainable_parameters(*fc[i]);
      for (const auto& p : remat::trainable_parameters(*out[i])) params.push_back(p);
      h = checkpointed ? remat::checkpoint(block, {h}, params)[0] : block({h})[0];
    }
    held = remat::memory_allocated(cuda) - before;
    h.sum().backward();
    torch::cuda::synchronize();
    return remat::max_memory_allocated(cuda);
  };
  peak(false);  // warm up cuBLAS workspaces
  const auto plain = peak(false);
  const auto plain_held = held;
  const auto ckpt = peak(true);
  std::cout << "held after forward: plain " << (plain_held >> 20) << " MiB, checkpointed "
            << (held >> 20) << " MiB\n";
  const int64_t per_block = 2 * batch * 4 * dim * 4;  // h and a, float32
  const int64_t grad_bytes = remat::tensor_bytes(model->parameters());
  const int64_t expected_peak_saving = (layers - 1) * per_block - grad_bytes;
  RecordProperty("held_plain_mib", std::to_string(plain_held >> 20));
  RecordProperty("held_checkpointed_mib", std::to_string(held >> 20));
  RecordProperty("peak_plain_mib", std::to_string(plain >> 20));
  RecordProperty("peak_checkpointed_mib", std::to_string(ckpt >> 20));
  std::cout << "peak allocated: plain " << (plain >> 20) << " MiB, checkpointed " << (ckpt >> 20)
            << " MiB, expected saving >= " << (expected_peak_saving >> 20) << " MiB\n";
  EXPECT_GE(plain_held - held, layers * per_block);
  EXPECT_GE(plain - ckpt, expected_peak_saving);
}

// checkpoint_without_output under bf16 autocast: a residual stack of GELU
// MLPs whose up projection and activation are the region and whose down
// projection is the consumer. Plain, each layer keeps the bf16 copy of its
// input, fc's output and GELU's output (4 + 16 + 16 MiB); here only its
// float32 input (8 MiB). Gradients agree with the plain computation.
TEST_F(CudaCheckpointTest, WithoutOutputFreesTheMlpActivationsAndMatchesPlain) {
  const int64_t rows = 4096, dim = 512, layers = 4;
  std::vector<torch::nn::Linear> fc, down;
  for (int64_t l = 0; l < layers; ++l) {
    fc.emplace_back(dim, 4 * dim);
    down.emplace_back(4 * dim, dim);
    fc.back()->to(cuda);
    down.back()->to(cuda);
  }
  auto x = torch::randn({rows, dim}, torch::TensorOptions().device(cuda)).requires_grad_();
  auto run = [&](bool without) {
    const auto before = remat::memory_allocated(cuda);
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, true);
    at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, at::kBFloat16);
    at::autocast::increment_nesting();
    auto h = x;
    for (int64_t l = 0; l < layers; ++l) {
      auto& f = fc[l];
      auto& d = down[l];
      if (without) {
        h = h + remat::checkpoint_without_output(
                    [&f](const std::vector<torch::Tensor>& in) {
                      return std::vector<torch::Tensor>{torch::gelu(f(in[0]))};
                    },
                    {h}, remat::trainable_parameters(*f),
                    [&d](const std::vector<torch::Tensor>& a) {
                      return std::vector<torch::Tensor>{d(a[0])};
                    })[0];
      } else {
        h = h + d(torch::gelu(f(h)));
      }
    }
    at::autocast::decrement_nesting();
    at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, false);
    const int64_t held = remat::memory_allocated(cuda) - before;
    h.to(torch::kFloat).square().mean().backward();
    std::vector<torch::Tensor> grads{x.grad().clone()};
    x.mutable_grad() = torch::Tensor();
    for (int64_t l = 0; l < layers; ++l) {
      for (auto* m : {static_cast<torch::nn::Module*>(fc[l].get()),
                      static_cast<torch::nn::Module*>(down[l].get())}) {
        for (auto& p : m->parameters()) {
          grads.push_back(p.grad().clone());
          p.mutable_grad() = torch::Tensor();
        }
      }
    }
    return std::make_pair(held, grads);
  };
  auto [plain_held, plain] = run(false);
  auto [held, got] = run(true);
  constexpr int64_t kMiB = 1 << 20;
  std::printf("held after forward: plain %.1f MiB, checkpoint_without_output %.1f MiB\n",
              static_cast<double>(plain_held) / kMiB, static_cast<double>(held) / kMiB);
  EXPECT_GE(plain_held - held, layers * 24 * kMiB);
  // Bitwise: the replay runs the same GEMMs and GELU on the same inputs
  // (no atomics: cuBLAS on one stream, ATen's elementwise and row-sum
  // kernels), and the residual's gradient is a sum of two terms in either
  // order, and floating-point addition commutes.
  ASSERT_EQ(plain.size(), got.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_TRUE(remat::test::bitwise_equal(plain[i], got[i])) << "gradient " << i;
  }
}
