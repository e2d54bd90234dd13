// remat::detail::clip_grad_norm, the one gradient clipping of the Trainer:
// a single process, DDP (DistributedDataParallel::clip_grad_norm_tensor
// calls it) and FSDP (its shards' squares, all-reduced, then the same
// scaling) compute the same norm and scale alike, finite or not.

#include "detail/grad_norm.h"

#include <gtest/gtest.h>

#include <limits>

#include "support.h"

namespace {

struct GradNormTest : remat::test::SeedingFixture {};

// Parameters with gradients of several scales; one without a gradient.
std::vector<torch::Tensor> parameters_with_gradients() {
  std::vector<torch::Tensor> params;
  for (double scale : {0.5, 3.0, 1e-3}) {
    auto p = torch::randn({17, 9}, torch::requires_grad());
    p.mutable_grad() = torch::randn({17, 9}) * scale;
    params.push_back(p);
  }
  params.push_back(torch::randn({4}, torch::requires_grad()));  // no gradient
  return params;
}

// Same bits, NaNs included (float32 tensors, or both undefined).
bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  return torch::equal(a.view(torch::kInt32), b.view(torch::kInt32));
}

std::vector<torch::Tensor> gradients(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) grads.push_back(p.grad().defined() ? p.grad().clone() : p.grad());
  return grads;
}

}  // namespace

// Finite gradients: the norm and the clipped gradients of PyTorch's
// clip_grad_norm_, up to its float32 sums (remat sums the squares in
// float64): the float32 norm of n elements is within gamma_n of the exact
// one, relative, and so is the coefficient the gradients are scaled by.
TEST_F(GradNormTest, FiniteGradientsAreClippedAsPyTorchDoes) {
  auto ours = parameters_with_gradients();
  std::vector<torch::Tensor> theirs;
  for (const auto& p : ours) {
    auto q = p.detach().clone().requires_grad_(true);
    if (p.grad().defined()) q.mutable_grad() = p.grad().clone();
    theirs.push_back(q);
  }
  const int64_t n = 3 * 17 * 9;
  const double gamma = remat::test::reduction_gamma(n);
  for (double max_norm : {1.0, 1e6}) {
    SCOPED_TRACE(max_norm);
    auto norm = remat::detail::clip_grad_norm(ours, max_norm, torch::kCPU);
    EXPECT_EQ(norm.scalar_type(), torch::kDouble);
    const double reference = torch::nn::utils::clip_grad_norm_(theirs, max_norm);
    EXPECT_TRUE(remat::test::within_tolerance(norm.item<double>(), reference, gamma * reference));
    for (size_t i = 0; i + 1 < ours.size(); ++i) {
      EXPECT_TRUE(remat::test::within_tolerance(ours[i].grad(), theirs[i].grad(),
                                                2 * gamma * remat::test::max_abs(theirs[i].grad())))
          << i;
    }
  }
}

// A NaN or infinite gradient: the norm says so and the gradients are left
// as they are (the Trainer then fails or skips the step), where PyTorch's
// clip_grad_norm_ would multiply every gradient by NaN or by 0.
TEST_F(GradNormTest, NonFiniteNormsLeaveTheGradientsAlone) {
  for (double bad :
       {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    SCOPED_TRACE(bad);
    auto params = parameters_with_gradients();
    params[1].mutable_grad()[3][4] = bad;
    const auto before = gradients(params);
    auto norm = remat::detail::clip_grad_norm(params, 1.0, torch::kCPU).item<double>();
    EXPECT_FALSE(std::isfinite(norm));
    EXPECT_EQ(std::isnan(norm), std::isnan(bad));
    for (size_t i = 0; i < params.size(); ++i)
      EXPECT_TRUE(same_bits(params[i].grad(), before[i])) << i;
  }
}

// An infinite max_norm (max_grad_norm 0 in TrainingArguments): the norm
// only, the gradients untouched.
TEST_F(GradNormTest, AnInfiniteMaxNormOnlyMeasures) {
  auto params = parameters_with_gradients();
  const auto before = gradients(params);
  auto norm =
      remat::detail::clip_grad_norm(params, std::numeric_limits<double>::infinity(), torch::kCPU);
  double squares = 0;
  for (const auto& g : before) {
    if (g.defined()) squares += g.to(torch::kDouble).pow(2).sum().item<double>();
  }
  EXPECT_EQ(norm.item<double>(), std::sqrt(squares));
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(remat::test::bitwise_equal(params[i].grad(), before[i])) << i;
  }
}
