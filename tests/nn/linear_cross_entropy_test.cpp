// The chunked LM head + cross-entropy against the plain expression it
// replaces: cross_entropy(linear(hidden, weight, bias).float(), targets).

#include "remat/nn/linear_cross_entropy.h"

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include "support.h"

using remat::nn::linear_cross_entropy;
using remat::nn::LinearCrossEntropyOptions;

namespace {

struct Inputs {
  Inputs(int64_t rows, int64_t features, int64_t vocab, bool with_bias) {
    hidden = torch::randn({rows, features}, torch::kDouble).to(torch::kFloat).requires_grad_();
    weight = (torch::randn({vocab, features}) * 0.5).requires_grad_();
    if (with_bias) bias = torch::randn({vocab}).requires_grad_();
    targets = torch::randint(0, vocab, {rows}, torch::kLong);
    targets.index_put_({torch::arange(0, rows, 3)}, -100);
  }
  std::vector<torch::Tensor> params() const {
    std::vector<torch::Tensor> p{hidden, weight};
    if (bias.defined()) p.push_back(bias);
    return p;
  }
  torch::Tensor hidden, weight, bias, targets;
};

torch::Tensor plain_sum(const Inputs& in) {
  auto logits = torch::nn::functional::linear(in.hidden, in.weight, in.bias).to(torch::kFloat);
  return torch::nn::functional::cross_entropy(
      logits, in.targets,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
}

double relative(const torch::Tensor& got, const torch::Tensor& want) {
  auto scale = want.abs().max().item<double>();
  return (got.to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>() /
         std::max(scale, 1e-30);
}

// The chunked and the plain path compute the same float32 sums in other
// orders: a logit is a dot product over the features, a row's loss a
// log-sum-exp over the vocabulary, the loss and the weight's gradient sums
// over the rows. That is n = features + vocab + rows roundings on the longest
// path, each relative to terms of the reference's scale (unit-scale random
// inputs), so the two differ by at most 2 gamma_n relative to max |reference|.
double float32_tolerance(const torch::Tensor& hidden, const torch::Tensor& weight) {
  return remat::test::reduction_tolerance(hidden.size(1) + weight.size(0) + hidden.size(0), 1.0);
}

// In bf16 each path rounds the logits to bf16; the same float32 value rounded
// in two paths differs by at most one bf16 ulp (2 u |logit|). A row's loss
// moves by at most twice its largest logit change, so the summed loss by
// rows * 4 u max |logit|, relative to |loss|; plus the float32 orders.
double bf16_loss_tolerance(const torch::Tensor& hidden, const torch::Tensor& weight,
                           const torch::Tensor& loss) {
  const auto logits = torch::nn::functional::linear(hidden.detach(), weight.detach());
  const double rows = static_cast<double>(hidden.size(0));
  return 4 * remat::test::unit_roundoff(torch::kBFloat16) * rows * remat::test::max_abs(logits) /
             std::abs(loss.item<double>()) +
         float32_tolerance(hidden, weight);
}

// The gradients in bf16: three bf16 roundings on their path (the logits, the
// logits' gradient and the result), 2 gamma_3 relative to max |reference|;
// plus the float32 orders.
double bf16_grad_tolerance(const torch::Tensor& hidden, const torch::Tensor& weight) {
  return remat::test::reduction_tolerance(3, 1.0, torch::kBFloat16) +
         float32_tolerance(hidden, weight);
}

// Loss and gradients of both paths with the same upstream gradient.
void expect_same(const Inputs& in, const LinearCrossEntropyOptions& options, double loss_tol,
                 double grad_tol) {
  auto want = plain_sum(in);
  auto want_grads = torch::autograd::grad({want * 0.25}, in.params());
  auto got = linear_cross_entropy(in.hidden, in.weight, in.targets, in.bias, options);
  EXPECT_EQ(got.scalar_type(), torch::kFloat);
  EXPECT_EQ(got.dim(), 0);
  EXPECT_LE(relative(got, want), loss_tol) << got.item<double>() << " vs " << want.item<double>();
  auto got_grads = torch::autograd::grad({got * 0.25}, in.params());
  for (size_t i = 0; i < got_grads.size(); ++i) {
    EXPECT_EQ(got_grads[i].scalar_type(), in.params()[i].scalar_type());
    EXPECT_LE(relative(got_grads[i], want_grads[i]), grad_tol) << "input " << i;
  }
}

}  // namespace

class LinearCrossEntropyTest : public remat::test::SeedingFixture {};

TEST_F(LinearCrossEntropyTest, Float32EqualsThePlainPathForEveryChunking) {
  Inputs in(37, 16, 53, /*with_bias=*/false);
  for (int64_t rows : {0, 1, 5, 37, 100}) {
    SCOPED_TRACE("chunk_rows " + std::to_string(rows));
    const double tol = float32_tolerance(in.hidden, in.weight);
    expect_same(in, LinearCrossEntropyOptions().chunk_rows(rows), tol, tol);
  }
}

TEST_F(LinearCrossEntropyTest, BiasAndAnotherIgnoreIndex) {
  Inputs in(20, 8, 11, /*with_bias=*/true);
  const double tol = float32_tolerance(in.hidden, in.weight);
  expect_same(in, LinearCrossEntropyOptions().chunk_rows(6), tol, tol);
  auto targets = in.targets.clone();
  targets.index_put_({targets == -100}, 3);
  targets.index_put_({torch::arange(1, 20, 4)}, 7);
  auto plain = torch::nn::functional::cross_entropy(
      torch::nn::functional::linear(in.hidden, in.weight, in.bias), targets,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(7).reduction(torch::kSum));
  auto got = linear_cross_entropy(in.hidden, in.weight, targets, in.bias,
                                  LinearCrossEntropyOptions().chunk_rows(6).ignore_index(7));
  EXPECT_LE(relative(got, plain), tol);
}

// Under bf16 autocast the plain path computes the logits in bf16 and the
// cross-entropy in float32; so does the chunked one, to bf16 rounding (the
// gradient of the weight is accumulated over chunks in float32).
TEST_F(LinearCrossEntropyTest, Bf16AutocastMatchesThePlainPathUnderAutocast) {
  Inputs in(64, 32, 97, /*with_bias=*/false);
  at::autocast::set_autocast_dtype(c10::DeviceType::CPU, torch::kBFloat16);
  at::autocast::set_autocast_enabled(c10::DeviceType::CPU, true);
  auto logits = torch::nn::functional::linear(in.hidden, in.weight);
  EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);
  expect_same(in, LinearCrossEntropyOptions().chunk_rows(16),
              bf16_loss_tolerance(in.hidden, in.weight, plain_sum(in)),
              bf16_grad_tolerance(in.hidden, in.weight));
  at::autocast::set_autocast_enabled(c10::DeviceType::CPU, false);
  at::autocast::clear_cache();
  // And it differs from the float32 loss by bf16 rounding, not by nothing:
  // the autocast dtype was used.
  auto fp32 = linear_cross_entropy(in.hidden, in.weight, in.targets);
  at::autocast::set_autocast_enabled(c10::DeviceType::CPU, true);
  auto bf16 = linear_cross_entropy(in.hidden, in.weight, in.targets);
  at::autocast::set_autocast_enabled(c10::DeviceType::CPU, false);
  at::autocast::clear_cache();
  // Not by nothing: more than float32 orders could make; at most the bf16
  // rounding of the logits (one rounding, half the two-path bound).
  EXPECT_GT(relative(bf16, fp32), float32_tolerance(in.hidden, in.weight));
  EXPECT_LT(relative(bf16, fp32), bf16_loss_tolerance(in.hidden, in.weight, fp32) / 2);
}

TEST_F(LinearCrossEntropyTest, Bf16WeightsWithoutAutocast) {
  Inputs in(24, 16, 40, /*with_bias=*/false);
  auto h = in.hidden.detach().to(torch::kBFloat16).requires_grad_();
  auto w = in.weight.detach().to(torch::kBFloat16).requires_grad_();
  auto plain = torch::nn::functional::cross_entropy(
      torch::nn::functional::linear(h, w).to(torch::kFloat), in.targets,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  auto want = torch::autograd::grad({plain}, {h, w});
  auto got = linear_cross_entropy(h, w, in.targets, {}, LinearCrossEntropyOptions().chunk_rows(7));
  auto grads = torch::autograd::grad({got}, {h, w});
  EXPECT_LE(relative(got, plain), bf16_loss_tolerance(h, w, plain));
  EXPECT_EQ(grads[0].scalar_type(), torch::kBFloat16);
  EXPECT_EQ(grads[1].scalar_type(), torch::kBFloat16);
  EXPECT_LE(relative(grads[0], want[0]), bf16_grad_tolerance(h, w));
  EXPECT_LE(relative(grads[1], want[1]), bf16_grad_tolerance(h, w));
}

// Gradients go only where they are required; without grad mode no graph.
TEST_F(LinearCrossEntropyTest, FrozenInputsAndNoGradMode) {
  Inputs in(10, 4, 9, /*with_bias=*/false);
  auto frozen_hidden = in.hidden.detach();
  auto loss = linear_cross_entropy(frozen_hidden, in.weight, in.targets);
  auto grad = torch::autograd::grad({loss}, {in.weight})[0];
  auto want = torch::autograd::grad({plain_sum(in)}, {in.weight})[0];
  const double tol = float32_tolerance(in.hidden, in.weight);
  EXPECT_LE(relative(grad, want), tol);
  torch::NoGradGuard no_grad;
  auto value = linear_cross_entropy(in.hidden, in.weight, in.targets);
  EXPECT_FALSE(value.requires_grad());
  EXPECT_LE(relative(value, plain_sum(in)), tol);
}

TEST_F(LinearCrossEntropyTest, AllTargetsIgnoredGivesZero) {
  Inputs in(6, 4, 5, /*with_bias=*/false);
  auto targets = torch::full({6}, -100, torch::kLong);
  auto loss = linear_cross_entropy(in.hidden, in.weight, targets);
  EXPECT_EQ(loss.item<double>(), 0.0);
  loss.backward();
  EXPECT_EQ(in.weight.grad().abs().max().item<double>(), 0.0);
}

TEST_F(LinearCrossEntropyTest, BadShapesAreErrors) {
  Inputs in(6, 4, 5, /*with_bias=*/false);
  ASSERT_THROWS_WITH(linear_cross_entropy(in.hidden.unsqueeze(0), in.weight, in.targets),
                     "hidden must be [rows, features], got [1, 6, 4]");
  ASSERT_THROWS_WITH(linear_cross_entropy(in.hidden, in.weight.t(), in.targets),
                     "weight must be [vocab, 4], got [4, 5]");
  ASSERT_THROWS_WITH(linear_cross_entropy(in.hidden, in.weight, in.targets.narrow(0, 0, 3)),
                     "targets must be [6], got [3]");
  ASSERT_THROWS_WITH(linear_cross_entropy(in.hidden, in.weight, in.targets, {},
                                          LinearCrossEntropyOptions().chunk_rows(-1)),
                     "chunk_rows must be >= 0 (0: automatic), got -1");
}
