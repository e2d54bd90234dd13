// The speed paths on CUDA: SDPA picks a fused kernel (flash, cuDNN or
// memory-efficient) under bf16 with no mask built; the chunked LM-head loss
// equals the plain one and never holds the logits; the fused and multi-tensor
// AdamW equal torch::optim::AdamW. Skipped without CUDA.

#include <ATen/Context.h>
#include <ATen/SDPBackend.h>
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include "remat/memory.h"
#include "remat/models/causal_lm.h"
#include "remat/nn/linear_cross_entropy.h"
#include "remat/optim/adamw.h"
#include "support.h"

using remat::models::CausalLMInputs;

namespace {

double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  auto diff = (got.to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>();
  return diff / std::max(want.abs().max().item<double>(), 1e-12);
}

// The chunked and the plain loss, as tests/nn/linear_cross_entropy_test.cpp
// derives them: the same float32 sums in other orders, a logit a dot over
// the features, a row's loss a log-sum-exp over the vocabulary, the loss and
// the weight's gradient sums over the rows: 2 gamma_(features + vocab +
// rows) relative to max |reference| (worst case, any order).
double float32_tolerance(int64_t rows, int64_t features, int64_t vocab) {
  return remat::test::reduction_tolerance(features + vocab + rows, 1.0);
}
// With 16-bit logits each path rounds the same float32 logit to the dtype,
// at most one ulp (2 u |logit|) apart; a row's loss moves by at most twice
// its largest logit change: rows * 4 u max |logit|, relative to |loss|.
double low_precision_loss_tolerance(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& loss, torch::Dtype dtype) {
  torch::NoGradGuard no_grad;
  const auto logits =
      torch::nn::functional::linear(hidden.to(torch::kFloat), weight.to(torch::kFloat));
  const double rows = static_cast<double>(hidden.size(0));
  return 4 * remat::test::unit_roundoff(dtype) * rows * remat::test::max_abs(logits) /
             std::abs(loss.item<double>()) +
         float32_tolerance(hidden.size(0), hidden.size(1), weight.size(0));
}
// The gradients: three roundings to the dtype on their path (the logits,
// the logits' gradient, the result), 2 gamma_3 apart; plus the float32 orders.
double low_precision_grad_tolerance(int64_t rows, int64_t features, int64_t vocab,
                                    torch::Dtype dtype) {
  return remat::test::reduction_tolerance(3, 1.0, dtype) + float32_tolerance(rows, features, vocab);
}

class CudaPerfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    torch::manual_seed(0);
  }
};

// Turns the math (unfused) SDPA backend off for its lifetime.
class NoMathAttention {
 public:
  NoMathAttention() : before_(at::globalContext().userEnabledMathSDP()) {
    at::globalContext().setSDPUseMath(false);
  }
  ~NoMathAttention() { at::globalContext().setSDPUseMath(before_); }

 private:
  bool before_;
};

std::shared_ptr<remat::models::CausalLMImpl> tiny_model(const std::string& type) {
  nlohmann::json j = type == "gpt2"
                         ? nlohmann::json{{"model_type", "gpt2"},
                                          {"n_embd", 256},
                                          {"n_head", 4},
                                          {"n_layer", 2},
                                          {"vocab_size", 512}}
                         : nlohmann::json{{"model_type", "llama"},    {"hidden_size", 256},
                                          {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                                          {"intermediate_size", 512}, {"num_hidden_layers", 2},
                                          {"vocab_size", 512}};
  remat::models::FromPretrainedOptions options;
  options.device = torch::kCUDA;
  return remat::models::AutoModelForCausalLM::from_config(remat::models::ModelConfig::from_json(j),
                                                          options);
}

}  // namespace

// The choice SDPA makes for the models' attention shapes (head_dim 64,
// grouped heads, causal, no mask) in bf16 is a fused kernel, not math.
TEST_F(CudaPerfTest, SdpaPicksAFusedKernelForCausalBf16) {
  auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  auto q = torch::randn({4, 32, 2048, 64}, opts);
  for (int64_t kv_heads : {32, 8}) {
    auto k = torch::randn({4, kv_heads, 2048, 64}, opts);
    auto v = torch::randn({4, kv_heads, 2048, 64}, opts);
    const auto choice = static_cast<at::SDPBackend>(at::_fused_sdp_choice(
        q, k, v, std::nullopt, 0.0, /*is_causal=*/true, std::nullopt, kv_heads != 32));
    RecordProperty("backend_kv" + std::to_string(kv_heads), static_cast<int>(choice));
    EXPECT_TRUE(choice == at::SDPBackend::flash_attention ||
                choice == at::SDPBackend::cudnn_attention ||
                choice == at::SDPBackend::efficient_attention)
        << "backend " << static_cast<int>(choice) << " for " << kv_heads << " kv heads";
  }
}

// With the math backend off, training steps of both families still run in
// bf16 autocast: their attention goes through a fused kernel, with no mask
// materialized for unpadded batches. A padded batch (explicit mask) runs too.
TEST_F(CudaPerfTest, ModelsTrainWithTheMathAttentionBackendOff) {
  for (const std::string type : {"gpt2", "llama"}) {
    SCOPED_TRACE(type);
    auto model = tiny_model(type);
    model->train();
    auto ids = torch::randint(0, 512, {2, 128},
                              torch::TensorOptions().device(torch::kCUDA).dtype(torch::kLong));
    CausalLMInputs in;
    in.input_ids = ids;
    in.labels = ids;
    NoMathAttention no_math;
    at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, torch::kBFloat16);
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, true);
    torch::Tensor loss, padded_loss;
    EXPECT_NO_THROW(loss = model->forward(in).loss);
    auto mask = torch::ones_like(ids);
    mask.index_put_({0, torch::indexing::Slice(0, 10)}, 0);
    in.attention_mask = mask;
    EXPECT_NO_THROW(padded_loss = model->forward(in).loss);
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, false);
    at::autocast::clear_cache();
    ASSERT_TRUE(loss.defined());
    EXPECT_NO_THROW(loss.backward());
    EXPECT_TRUE(std::isfinite(loss.item<double>()));
    EXPECT_TRUE(std::isfinite(padded_loss.item<double>()));
  }
}

// Same loss and gradients as cross_entropy(linear(...)) in fp32 and under bf16
// autocast, and the peak during forward + backward stays far below the
// plain path's, which holds [rows, vocab] logits in fp32 and their gradient.
TEST_F(CudaPerfTest, ChunkedLossMatchesAndNeverHoldsTheLogits) {
  const int64_t rows = 8192, features = 256, vocab = 32000;
  auto opts = torch::TensorOptions().device(torch::kCUDA);
  auto hidden = torch::randn({rows, features}, opts).requires_grad_();
  auto weight = (torch::randn({vocab, features}, opts) * 0.05).requires_grad_();
  auto targets = torch::randint(0, vocab, {rows}, opts.dtype(torch::kLong));
  targets.index_put_({torch::arange(0, rows, 7, opts.dtype(torch::kLong))}, -100);
  for (const bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16 autocast" : "fp32");
    at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, torch::kBFloat16);
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, bf16);
    const auto device = torch::Device(torch::kCUDA);
    const int64_t base = remat::memory_allocated(device);
    remat::reset_peak_memory_stats(device);
    auto plain = torch::nn::functional::cross_entropy(
        torch::nn::functional::linear(hidden, weight).to(torch::kFloat), targets,
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    auto want = torch::autograd::grad({plain}, {hidden, weight});
    const int64_t plain_peak = remat::max_memory_allocated(device) - base;
    remat::reset_peak_memory_stats(device);
    const int64_t base2 = remat::memory_allocated(device);
    // Chunks of 1024 of the 8192 rows: the default picks larger ones.
    auto chunked = remat::nn::linear_cross_entropy(
        hidden, weight, targets, {}, remat::nn::LinearCrossEntropyOptions().chunk_rows(1024));
    auto got = torch::autograd::grad({chunked}, {hidden, weight});
    const int64_t chunked_peak = remat::max_memory_allocated(device) - base2;
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, false);
    at::autocast::clear_cache();
    const double tol = bf16 ? low_precision_grad_tolerance(rows, features, vocab, torch::kBFloat16)
                            : float32_tolerance(rows, features, vocab);
    EXPECT_LE(relative_error(chunked, plain),
              bf16 ? low_precision_loss_tolerance(hidden, weight, plain, torch::kBFloat16)
                   : float32_tolerance(rows, features, vocab));
    EXPECT_LE(relative_error(got[0], want[0]), tol);
    EXPECT_LE(relative_error(got[1], want[1]), tol);
    const int64_t logits_bytes = rows * vocab * 4;
    RecordProperty(bf16 ? "bf16_peak_mib" : "fp32_peak_mib",
                   std::to_string(chunked_peak >> 20) + " vs " + std::to_string(plain_peak >> 20));
    EXPECT_GE(plain_peak, logits_bytes);
    EXPECT_LE(chunked_peak, logits_bytes / 3);
  }
}

// The one-kernel loss rows: a vocabulary that is not a multiple of 8 (the
// scalar path) in float32, float16 and bfloat16 logits, ignored rows, and a
// target outside the vocabulary, which gives a NaN loss instead of a crash.
TEST_F(CudaPerfTest, ChunkedLossOnAnOddVocabularyAndABadTarget) {
  const int64_t rows = 300, features = 64, vocab = 1001;
  auto opts = torch::TensorOptions().device(torch::kCUDA);
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    auto hidden = torch::randn({rows, features}, opts.dtype(dtype)).requires_grad_();
    auto weight = (torch::randn({vocab, features}, opts.dtype(dtype)) * 0.2).requires_grad_();
    auto targets = torch::randint(0, vocab, {rows}, opts.dtype(torch::kLong));
    targets.index_put_({torch::arange(0, rows, 5, opts.dtype(torch::kLong))}, -100);
    auto plain = torch::nn::functional::cross_entropy(
        torch::nn::functional::linear(hidden, weight).to(torch::kFloat), targets,
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    auto want = torch::autograd::grad({plain}, {hidden, weight});
    auto chunked = remat::nn::linear_cross_entropy(
        hidden, weight, targets, {}, remat::nn::LinearCrossEntropyOptions().chunk_rows(128));
    auto got = torch::autograd::grad({chunked}, {hidden, weight});
    const double tol = dtype == torch::kFloat
                           ? float32_tolerance(rows, features, vocab)
                           : low_precision_grad_tolerance(rows, features, vocab, dtype);
    EXPECT_LE(relative_error(chunked, plain),
              dtype == torch::kFloat ? float32_tolerance(rows, features, vocab)
                                     : low_precision_loss_tolerance(hidden, weight, plain, dtype));
    EXPECT_LE(relative_error(got[0], want[0]), tol);
    EXPECT_LE(relative_error(got[1], want[1]), tol);

    auto bad = targets.clone();
    bad.index_put_({3}, vocab + 5);
    torch::NoGradGuard no_grad;
    auto loss = remat::nn::linear_cross_entropy(hidden, weight, bad);
    EXPECT_TRUE(std::isnan(loss.item<double>()));
  }
}

TEST_F(CudaPerfTest, FusedAndForeachAdamWEqualTorchAdamW) {
  using remat::optim::AdamWImplementation;
  for (auto implementation : {AdamWImplementation::kForeach, AdamWImplementation::kFused}) {
    torch::manual_seed(3);
    auto opts = torch::TensorOptions().device(torch::kCUDA);
    std::vector<torch::Tensor> a{torch::randn({64, 33}, opts), torch::randn({33}, opts)};
    std::vector<torch::Tensor> b{a[0].clone(), a[1].clone()};
    for (auto& t : a) t.requires_grad_();
    for (auto& t : b) t.requires_grad_();
    auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.1).betas({0.9, 0.95});
    torch::optim::AdamW expected(a, options);
    remat::optim::AdamW actual(b, options, implementation);
    for (int step = 0; step < 8; ++step) {
      for (size_t i = 0; i < a.size(); ++i) {
        auto g = torch::randn(a[i].sizes(), opts);
        a[i].mutable_grad() = g;
        b[i].mutable_grad() = g.clone();
      }
      expected.step();
      actual.step();
    }
    // The same gradients; only the order of a step's 12 roundings per
    // element differs, each relative to |p| or to the update lr m/(sqrt(v)+eps)
    // (|m|/sqrt(v) <= 1.02 for betas (0.9, 0.95)): 2 gamma_12 (|p| + lr) a
    // step, over 8 steps, relative to max |p| (at least 1 for randn).
    const double tol = 8 * remat::test::reduction_tolerance(12, 1.0) * (1 + 1.02 * options.lr());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_LE(relative_error(b[i].detach(), a[i].detach()), tol)
          << "implementation " << static_cast<int>(implementation) << ", parameter " << i;
    }
  }
}
